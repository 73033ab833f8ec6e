"""Threads or gevent: the one place that asks which this process runs on.

A gunicorn gevent worker has patched ``socket``, ``threading`` and ``select`` before the
app is imported; a gthread worker, ``flask run`` and the tests have not. The answer is
fixed once the app is built, so callers ask once and keep what they get.
"""

from __future__ import annotations

import select
import sys
from collections.abc import Callable
from typing import Any


def gevent_patched() -> bool:
    """True when gevent has patched ``socket`` in this process (a gevent worker)."""
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey  # type: ignore[import-untyped]

    return bool(monkey.is_module_patched("socket"))


def cooperative_yield() -> Callable[[], None] | None:
    """Under gevent, a way to let other greenlets run now (None under threads).

    After each response: gunicorn's gevent worker reads a keep-alive client's next
    request straight after the response; when it is already buffered no call blocks, so
    one busy connection could keep the loop for many requests while the others wait.
    After handing a connection to a queued request: that request then goes upstream
    before this one writes its response to the client. Threads need neither: the OS
    schedules them.
    """
    if not gevent_patched():
        return None
    from gevent import sleep

    return lambda: sleep(0)


def os_poll() -> Callable[[], Any]:
    """``select.poll`` as the OS has it, also where gevent replaced it with its own
    (which waits through the hub even for a zero timeout)."""
    if "gevent" in sys.modules:
        from gevent import monkey

        original: Callable[[], Any] = monkey.get_original("select", "poll")
        return original
    return select.poll


def gevent_warnings(pool_lock: object) -> list[str]:
    """Under gevent, what was set up in the wrong order, each with how to fix it.

    urllib3 or ssl imported before ``monkey.patch_all()`` keep blocking sockets and
    locks, and a pool lock that is not gevent's blocks the whole worker.
    """
    if not gevent_patched():
        return []
    from gevent import monkey

    warnings = []
    import ssl

    import urllib3.util.ssl_ as urllib3_ssl

    if urllib3_ssl.SSLContext is not ssl.SSLContext:
        warnings.append(
            "urllib3 was imported before gevent patched ssl: its TLS blocks the worker; "
            "do not import urllib3 (or wsgiproxy.app) in gunicorn.conf.py, and never preload_app"
        )
    if not monkey.is_module_patched("threading"):
        warnings.append("threading is not patched by gevent: run the gevent worker class")
    if not type(pool_lock).__module__.startswith("gevent"):
        warnings.append(
            f"the pool's lock is {type(pool_lock).__module__}.{type(pool_lock).__name__}, not "
            "gevent's: the pool was built before patching (post_fork or the master?); build "
            "it when the app loads in the worker"
        )
    return warnings
