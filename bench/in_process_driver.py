"""Run under callgrind by ``run.py --instructions --in-process``: wsgiproxy's app called
directly, request ids switched on and off between phases.

Usage: in_process_driver.py PRODUCT_DIR UPSTREAM_URL REQUESTS PHASES

The app is built in this process (threads, no gunicorn, no health thread) and called
with a gunicorn-like environ for the 100 B file. Phases go in ABBA order; an ids-on
phase runs its requests under ``itertools.filterfalse`` and an ids-off phase under
``filter`` (the same call of the same function), so callgrind's
``--toggle-collect=filterfalse_next`` and ``--toggle-collect=filter_next`` count each
side apart within one process, where nothing else calls them: one memory
layout, one draw of CPython's type cache, and none of a server's timed chores (the
health thread's refresh, gunicorn's heartbeat), which are what moves a count taken in a
real worker by thousands of instructions a request.
"""

from __future__ import annotations

import collections
import gc
import io
import itertools
import os
import sys
from collections.abc import Iterable
from typing import Any

product, upstream, requests, phases = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, product)
os.environ.update(
    PROXY_UPSTREAM=upstream, PROXY_ACCESS_LOG="", PROXY_REQUEST_ID="1", PROXY_LOG_LEVEL="warning"
)

from wsgiproxy.app import create_app  # noqa: E402  (after the path and settings)

app = create_app(start_health=False)
forwarder = app.extensions["wsgiproxy"].forwarder
last_headers: list[list[tuple[str, str]]] = [[]]


def environ() -> dict[str, Any]:
    """What gunicorn gives the app for wrk's request (``GET /100b.bin`` with a lone Host)."""
    return {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/100b.bin",
        "PATH_INFO": "/100b.bin",
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "bench",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    last_headers[0] = headers


def one(env: dict[str, Any]) -> bool:
    body: Iterable[bytes] = app(env, start_response)
    for _ in body:
        pass
    body.close()  # type: ignore[attr-defined]
    return False


def drain(it: Iterable[Any]) -> None:
    collections.deque(it, maxlen=0)


def phase(ids: bool) -> None:
    forwarder.request_ids = ids
    environs = [environ() for _ in range(requests)]
    gc.collect()  # outside the count: a phase does not inherit the last one's garbage
    drain((itertools.filterfalse if ids else filter)(one, environs))
    sent = any(name == "X-Request-ID" for name, _ in last_headers[0])
    if sent != ids:
        raise SystemExit(f"in_process_driver: ids did not switch {'on' if ids else 'off'}")


for ids in (True, False) * 3:  # warm, not counted: connections, caches, code paths
    forwarder.request_ids = ids
    drain(map(one, [environ() for _ in range(200)]))
gc.collect()
gc.freeze()  # what is alive now is never collected again: no full collection in a phase
for ids in (True, False, False, True) * (phases // 4):
    phase(ids)
app.extensions["wsgiproxy"].close()
