"""Run under callgrind by ``run.py --instructions --in-process`` (in_process.py):
wsgiproxy's app called directly, request ids switched on and off between phases.

Usage: in_process_driver.py PRODUCT_DIR UPSTREAM_URL REQUESTS_A_PHASE PHASES

The app is built in this process (no gunicorn, no health thread) and called with a
gunicorn-like environ for the 100 B file. Phases go in ABBA order; an ids-on phase runs
its requests under ``itertools.filterfalse`` and an ids-off phase under ``filter``, the
same call of the same function, so callgrind's ``--toggle-collect=filterfalse_next`` and
``--toggle-collect=filter_next`` count each side apart within one process (nothing else
here calls them): one memory layout and one draw of CPython's type cache for both.
"""

from __future__ import annotations

import collections
import gc
import io
import itertools
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

#: Requests in each warm-up round, each side in turn, before anything is counted.
WARM = 200


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


def drain(items: Iterable[Any]) -> None:
    """Run an iterator to its end, keeping nothing."""
    collections.deque(items, maxlen=0)


def main(argv: list[str]) -> int:
    product, upstream, per_phase, phases = argv[0], argv[1], int(argv[2]), int(argv[3])
    if phases <= 0 or phases % 4:
        raise SystemExit("in_process_driver: PHASES must be a positive multiple of 4 (ABBA)")
    sys.path.insert(0, product)
    os.environ.update(
        PROXY_UPSTREAM=upstream,
        PROXY_ACCESS_LOG="",
        PROXY_REQUEST_ID="1",
        PROXY_LOG_LEVEL="warning",
    )
    from wsgiproxy.app import create_app  # the snapshot's, found through sys.path

    app = create_app(start_health=False)
    forwarder = app.extensions["wsgiproxy"].forwarder
    last_headers: list[tuple[str, str]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        last_headers[:] = headers
        return lambda data: None  # the WSGI write(); the proxy never calls it

    def one(env: dict[str, Any]) -> bool:
        """One whole request. False: ``filter`` drops and ``filterfalse`` passes every
        environ, so both run each one through this same call."""
        body = app(env, start_response)
        for _ in body:
            pass
        getattr(body, "close", lambda: None)()
        return False

    def phase(ids: bool) -> None:
        """One counted phase: ``per_phase`` requests under this side's toggle function."""
        forwarder.request_ids = ids
        environs = [environ() for _ in range(per_phase)]
        gc.collect()  # outside the count: no phase collects the previous one's garbage
        drain((itertools.filterfalse if ids else filter)(one, environs))
        if any(name == "X-Request-ID" for name, _ in last_headers) != ids:
            raise SystemExit(f"in_process_driver: ids did not switch {'on' if ids else 'off'}")

    for ids in (True, False) * 3:  # warm, not counted: connections, caches, code paths
        forwarder.request_ids = ids
        drain(map(one, [environ() for _ in range(WARM)]))
    gc.collect()
    gc.freeze()  # what is alive now is never traced again: no full collection in a phase
    for ids in (True, False, False, True) * (phases // 4):
        phase(ids)
    app.extensions["wsgiproxy"].close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
