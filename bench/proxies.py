"""The proxies a run measures, as a table: what each is and how it starts.

Every entry starts one way, by its ``kind``:

- ``wsgiproxy``: ours, ``gunicorn -c gunicorn.conf.py wsgiproxy.app:app`` from the
  snapshot of the work tree (``--x-tree``'s copy for the experiment), with ``env`` over
  the bench's settings (servers.Servers.start_wsgiproxy).
- ``gunicorn``: a baseline WSGI app from bench/ (``module``) under gevent workers, from
  the product's .venv or ``venv``; the upstream's URL in ``UPSTREAM``, the CA in
  ``ca_var`` for the HTTPS upstream.
- ``proxypy``: proxy.py's own command from its venv (a forward proxy).
- ``nginx``: the one nginx reverse proxy started for every upstream at once.
- ``direct``: nothing: wrk goes straight to the upstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from constants import QUEUE_LIMIT


@dataclass(frozen=True)
class Proxy:
    name: str
    label: str  # for the README and results.json
    kind: str  # "wsgiproxy", "gunicorn", "proxypy", "nginx" or "direct" (above)
    env: dict[str, str] = field(default_factory=dict)  # settings of this variant
    module: str = ""  # the WSGI app (bench/*_app.py); wsgiproxy: a wrapper of wsgiproxy.app
    venv: str = ""  # "" runs from the product's .venv; else bench/.venv-NAME
    upstream_var: str = "UPSTREAM"  # gunicorn: where the app reads the upstream's URL
    ca_var: str = "UPSTREAM_CA"  # gunicorn: where the app reads the HTTPS upstream's CA
    prefix: str = ""  # path prefix it serves the upstream under (werkzeug: /up)
    root_is_worker: bool = False  # its RSS counts the process we start, not only children
    experiment: bool = False  # runs --x-tree's code with --x-env's settings
    queue_only: bool = False  # only in the queue-pressure run; not among PROXIES
    group: bool = False  # wsgiproxy: PROXY_UPSTREAM lists three servers (Bench.group_urls)
    may_fail_to_start: bool = False  # exiting at start is reported ("did not start"), not fatal


OURS = "wsgiproxy"
#: The experiment (--x-tree, --x-env), paired with OURS in every repetition.
EXPERIMENT = "wsgiproxy-x"

TABLE = [
    Proxy("wsgiproxy", "wsgiproxy, gevent x2, pool on, default settings", "wsgiproxy"),
    Proxy(
        "wsgiproxy-keep100",
        "wsgiproxy with HTTP_MAX_KEEPALIVE_CONNECTIONS=100 (the flask-urllib3 baseline's"
        " idle capacity): what the defaults must keep up with",
        "wsgiproxy",
        env={"HTTP_MAX_KEEPALIVE_CONNECTIONS": "100"},
    ),
    Proxy(
        "wsgiproxy-nopool",
        "wsgiproxy, HTTP_POOL_ENABLED=0: a new upstream connection per request",
        "wsgiproxy",
        env={"HTTP_POOL_ENABLED": "0"},
    ),
    Proxy(
        "wsgiproxy-gthread",
        "wsgiproxy under gthread x2 (32 threads each)",
        "wsgiproxy",
        env={"PROXY_WORKER_CLASS": "gthread"},
    ),
    Proxy(
        "flask-requests",
        "Flask + requests.request per request (gevent x2)",
        "gunicorn",
        module="flask_requests_app:app",
        ca_var="REQUESTS_CA_BUNDLE",
    ),
    Proxy(
        "flask-urllib3",
        "Flask + one shared urllib3.PoolManager per worker (gevent x2)",
        "gunicorn",
        module="flask_urllib3_app:app",
    ),
    Proxy(
        "werkzeug",
        "werkzeug ProxyMiddleware (http.client per request, gevent x2)",
        "gunicorn",
        module="werkzeug_app:app",
        prefix="/up",
    ),
    Proxy(
        "wsgiproxy2",
        "WSGIProxy2 HostProxy, urllib3 client (own venv, gevent x2)",
        "gunicorn",
        module="wsgiproxy2_app:app",
        venv="wsgiproxy2",
    ),
    Proxy("nginx", "nginx reverse proxy, 1 worker, upstream keepalive 32", "nginx"),
    Proxy("direct", "no proxy: wrk straight to the upstream", "direct"),
    Proxy(
        "bare",
        "bare WSGI app answering 100 B (gevent x2): the stack's ceiling",
        "gunicorn",
        module="bare_app:app",
        upstream_var="",
        ca_var="",
    ),
    Proxy(
        "proxypy",
        "proxy.py forward proxy (2 workers, 2 acceptors; own venv)",
        "proxypy",
        venv="proxypy",
        root_is_worker=True,
    ),
    Proxy(
        "wsgiproxy-group3",
        "wsgiproxy with three healthy servers in PROXY_UPSTREAM (the same files on three"
        " ports of the upstream nginx): the price of balancing",
        "wsgiproxy",
        group=True,
        may_fail_to_start=True,
    ),
    Proxy(
        EXPERIMENT,
        "wsgiproxy with --x-env settings (an experiment; only when named in --only)",
        "wsgiproxy",
        experiment=True,
    ),
    Proxy(
        "wsgiproxy-q8",
        f"wsgiproxy, HTTP_MAX_CONNECTIONS={QUEUE_LIMIT} (queue pressure)",
        "wsgiproxy",
        env={"HTTP_MAX_CONNECTIONS": str(QUEUE_LIMIT)},
        queue_only=True,
    ),
    Proxy(
        "flask-urllib3-q8",
        f"Flask + urllib3.PoolManager(maxsize={QUEUE_LIMIT}, block=True) (queue pressure)",
        "gunicorn",
        module="flask_urllib3_app:app",
        env={"POOL_MAXSIZE": str(QUEUE_LIMIT), "POOL_BLOCK": "1"},
        queue_only=True,
    ),
]
SPECS = {p.name: p for p in TABLE}

#: name -> label: the proxies of the cells (--only names these), in the report's order
PROXIES: dict[str, str] = {p.name: p.label for p in TABLE if not p.queue_only}
WSGI_ALTERNATIVES = ["flask-requests", "flask-urllib3", "werkzeug", "wsgiproxy2"]
#: the proxies of every reverse-proxy cell, in the order a repetition starts from
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
#: the cells where the defaults are measured beside HTTP_MAX_KEEPALIVE_CONNECTIONS=100
KEEPALIVE_CELLS = ["100B c64", "100B c256"]
#: the cell where a group of three servers runs beside the single server, and its proxies
GROUP_CELL = "100B c64 group3"
GROUP = ["wsgiproxy", "wsgiproxy-group3"]
#: the failover scenario's proxies (each in front of three servers, one killed and restored)
FAILOVER = ["nginx", "haproxy", "wsgiproxy"]
#: the proxies of the forward-proxy cell
FORWARD = [OURS, EXPERIMENT, "proxypy"]
#: the queue-pressure run: "direct" is wrk alone on the upstream
QUEUE = ["wsgiproxy-q8", "flask-urllib3-q8", "direct"]
#: the 50 MB response check, in this order
MEMORY = [
    "wsgiproxy",
    "flask-urllib3",
    "werkzeug",
    "wsgiproxy2",
    "flask-requests",
    "wsgiproxy-gthread",
]
