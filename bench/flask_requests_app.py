"""Flask + ``requests.request`` per request: the proxy most tutorials show.

Written the way the well-known answer to "proxy a request with Flask" writes it: each
request calls ``requests.request`` (a new Session, so a new upstream connection), the
whole response is read (``resp.content``) and handed to a Flask ``Response``.

UPSTREAM: base URL. A private CA for an https upstream goes where requests users put it,
in ``REQUESTS_CA_BUNDLE`` (read by requests itself).
"""

import os

import requests
from flask import Flask, Response, request

UPSTREAM = os.environ["UPSTREAM"].rstrip("/")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
EXCLUDED = {"content-encoding", "content-length", "transfer-encoding", "connection"}

app = Flask(__name__)


@app.route("/", defaults={"path": ""}, methods=METHODS)
@app.route("/<path:path>", methods=METHODS)
def proxy(path):
    resp = requests.request(
        method=request.method,
        url=request.url.replace(request.host_url, UPSTREAM + "/"),
        headers={k: v for k, v in request.headers if k.lower() != "host"},
        data=request.get_data(),
        cookies=request.cookies,
        allow_redirects=False,
    )
    headers = [(k, v) for k, v in resp.raw.headers.items() if k.lower() not in EXCLUDED]
    return Response(resp.content, resp.status_code, headers)
