"""Flask + one shared ``urllib3.PoolManager``: the careful user's proxy.

One PoolManager per worker process, kept-alive connections reused across requests, the
response streamed back (``preload_content=False``) and its connection released when the
WSGI server closes the response -- closed instead when the body was not read to its end
(a client gone mid-response): ``release_conn`` alone would put a connection with unread
body bytes back in the pool, and the next request on it would read them as its status
line (seen in this bench as ``BadStatusLine`` 502s).

UPSTREAM: base URL. UPSTREAM_CA: CA file for an https upstream. POOL_MAXSIZE (default
100, wsgiproxy's HTTP_MAX_CONNECTIONS default) connections kept per host; POOL_BLOCK=1
makes it a hard limit (requests wait for a free connection), as in the queue-pressure run.
"""

import os

import urllib3
from flask import Flask, Response, request

UPSTREAM = os.environ["UPSTREAM"].rstrip("/")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}

http = urllib3.PoolManager(
    maxsize=int(os.environ.get("POOL_MAXSIZE", "100")),
    block=os.environ.get("POOL_BLOCK", "0") == "1",
    ca_certs=os.environ.get("UPSTREAM_CA") or None,
    retries=False,
)

app = Flask(__name__)


@app.route("/", defaults={"path": ""}, methods=METHODS)
@app.route("/<path:path>", methods=METHODS)
def proxy(path):
    url = UPSTREAM + request.path
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    upstream = http.request(
        request.method,
        url,
        body=request.get_data() or None,
        headers={k: v for k, v in request.headers if k.lower() not in HOP_BY_HOP},
        redirect=False,
        preload_content=False,
        decode_content=False,
    )
    headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
    resp = Response(upstream.stream(64 * 1024, decode_content=False), upstream.status, headers)
    resp.call_on_close(lambda: _release(upstream))
    return resp


def _release(upstream):
    if upstream.length_remaining != 0:  # not read to its end (or no length to tell)
        upstream.close()
    upstream.release_conn()
