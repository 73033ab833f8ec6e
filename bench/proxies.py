"""The proxies a run measures: their names and labels, and which run in the reverse-proxy cells."""

from __future__ import annotations

OURS = "wsgiproxy"
#: name -> (label for the README, in which cells it runs)
PROXIES: dict[str, str] = {
    "wsgiproxy": "wsgiproxy, gevent x2, pool on (defaults but HTTP_MAX_KEEPALIVE_CONNECTIONS=100)",
    "wsgiproxy-nopool": "wsgiproxy, HTTP_POOL_ENABLED=0: a new upstream connection per request",
    "wsgiproxy-gthread": "wsgiproxy under gthread x2 (32 threads each)",
    "flask-requests": "Flask + requests.request per request (gevent x2)",
    "flask-urllib3": "Flask + one shared urllib3.PoolManager per worker (gevent x2)",
    "werkzeug": "werkzeug ProxyMiddleware (http.client per request, gevent x2)",
    "wsgiproxy2": "WSGIProxy2 HostProxy, urllib3 client (own venv, gevent x2)",
    "nginx": "nginx reverse proxy, 1 worker, upstream keepalive 32",
    "direct": "no proxy: wrk straight to the upstream",
    "bare": "bare WSGI app answering 100 B (gevent x2): the stack's ceiling",
    "proxypy": "proxy.py forward proxy (2 workers, 2 acceptors; own venv)",
    "wsgiproxy-x": "wsgiproxy with --x-env settings (an experiment; only when named in --only)",
}
WSGI_ALTERNATIVES = ["flask-requests", "flask-urllib3", "werkzeug", "wsgiproxy2"]
REVERSE = [
    "wsgiproxy",
    "wsgiproxy-nopool",
    "wsgiproxy-gthread",
    "flask-requests",
    "flask-urllib3",
    "werkzeug",
    "wsgiproxy2",
    "nginx",
    "direct",
]
