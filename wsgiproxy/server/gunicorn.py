"""Every gunicorn internal wsgiproxy touches, checked against the gunicorn it was read from.

WSGI leaves some things out that a proxy needs, and gunicorn does some things a proxy
must not, so a few of gunicorn's internals are used or replaced in this package, and
nowhere else: this module (the version check, the socket hand-over, ``install``),
``writer.py`` (response writer, Date, parse refusals) and ``stopping.py`` (accepts,
stops and reloads). The whole list:

- ``CoalescingResponse``: gunicorn's response writer, sending a small response's head in
  the same call as its first body bytes rather than one send each, and taking
  ``CheckedHeaders`` (the proxy's, from heads its parser checked) without checking again.
- ``http_date``: gunicorn's ``Date`` value, formatted once a second, not once a response.
- batched accepts: a gevent worker takes up to ``ACCEPT_BATCH`` new connections a turn.
- ``write_refusal``: gunicorn's answer to a request its parser refuses (CL with TE, a bad
  request line, ...) in the proxy's one-line text/plain form instead of an HTML page.
- ``take_over_response``, ``client_socket``, ``pending_client_bytes``: the socket hand-over
  a tunnel needs (WSGI has no way to say "this app writes the socket itself").
- ``keep_hop_by_hop_header``: a header gunicorn strips from WSGI responses but a proxy
  must send (``Proxy-Authenticate`` on a 407).
- stopping without losing a request (reload, TERM, max requests): a stopping worker
  answers with ``Connection: close``, serves every connection it accepted (gevent: the
  listener's address is remembered; both: the accept queue is emptied before the
  listener closes), calls back at its graceful deadline (to close tunnels), and the
  master stops old workers on a reload only once the new ones are serving.

gunicorn promises none of these, so ``install()`` first compares the running gunicorn
with ``VERIFIED_GUNICORN`` and stops the worker with one line when they differ, as
gunicorn's own gevent worker refuses a gevent it was not written for
(``check_gunicorn_in_master`` does the same in the master, before any worker). Upgrading gunicorn
means re-reading the gunicorn code named beside each piece below, running
``tests/test_gunicorn_adapter.py``, then raising ``VERIFIED_GUNICORN``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import gunicorn  # type: ignore[import-untyped]
from gunicorn import util as gunicorn_util
from gunicorn.http import wsgi as gunicorn_wsgi  # type: ignore[import-untyped]

from ..concurrency import gevent_patched
from . import stopping
from .stopping import (
    ACCEPT_BATCH,
    _batched_stream_server,
    _close_listeners_when_stopping,
    _remember_listener_names,
    _watch_for_stop,
    install_in_master,
    worker_stopping,
)
from .writer import (
    COALESCE_LIMIT,
    DROPPED_BY_GUNICORN,
    GUNICORN_RESPONSE,
    REFUSAL_TEXT_LIMIT,
    CheckedHeaders,
    CoalescingResponse,
    http_date,
    refusal_bytes,
    write_refusal,
)

#: The gunicorn release this module was read against and tested with
#: (``requirements.txt`` pins the same).
VERIFIED_GUNICORN = "27.0.1"

#: The exit status that makes gunicorn's arbiter halt rather than respawn the worker
#: (``Arbiter.WORKER_BOOT_ERROR`` in gunicorn/arbiter.py; any other status at boot is
#: respawned in a loop).
WORKER_BOOT_ERROR = 3


# -- The version check ---------------------------------------------------------------------
def version_mismatch(found: str | None = None) -> str | None:
    """The one line that stops a worker when gunicorn is not ``VERIFIED_GUNICORN``.

    None when ``found`` (default: the running gunicorn's version) is the verified one.
    The line says what was found, what was verified, and the two ways out.
    """
    if found is None:
        found = str(gunicorn.__version__)
    if found == VERIFIED_GUNICORN:
        return None
    return (
        f"wsgiproxy cannot run on gunicorn {found}: wsgiproxy/server/gunicorn.py uses "
        f"gunicorn internals verified with gunicorn {VERIFIED_GUNICORN} only; install "
        f"gunicorn=={VERIFIED_GUNICORN} (pip install -r requirements.txt pins it), or "
        f"re-verify wsgiproxy/server/gunicorn.py against {found} "
        f"(tests/test_gunicorn_adapter.py) and set VERIFIED_GUNICORN there"
    )


def check_gunicorn_version(exit_status: int = WORKER_BOOT_ERROR) -> None:
    """Stop this process, with one line in gunicorn's error log, on an unverified gunicorn.

    Raises ``SystemExit(exit_status)``. In a worker, the default status makes gunicorn's
    arbiter halt the whole server instead of respawning a worker that would only fail
    again. (When several workers fail at once, gunicorn's halt meets the second failure
    and prints a traceback: gunicorn.conf.py therefore also checks in the master first.)
    """
    problem = version_mismatch()
    if problem is not None:
        # gunicorn's error log under gunicorn; Python's last-resort stderr otherwise.
        logging.getLogger("gunicorn.error").error(problem)
        raise SystemExit(exit_status)


def check_gunicorn_in_master(arbiter: Any) -> None:
    """The same check from gunicorn's ``on_starting`` hook, in the master before it forks:
    one line and ``SystemExit(2)``, as a bad setting stops start-up.

    gunicorn has already written its pidfile then (``Arbiter.start``) and will not reach
    ``halt()``, which would remove it: it is removed here.
    """
    try:
        check_gunicorn_version(exit_status=2)
    except SystemExit:
        pidfile = getattr(arbiter, "pidfile", None)
        if pidfile is not None:
            pidfile.unlink()
        raise


# -- The socket hand-over ----------------------------------------------------------------------
def client_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The client's socket under gunicorn (``gunicorn.socket``), None on other servers."""
    sock: socket.socket | None = environ.get("gunicorn.socket")
    return sock


def take_over_response(start_response: Any, status: str) -> Any | None:
    """Tell gunicorn this app writes the response to the socket itself.

    ``start_response`` is bound to gunicorn's ``Response``: recording the status keeps
    the access log right, marking the headers sent stops gunicorn from writing a status
    line or a final chunk of its own, and the connection is closed after, never read for
    another request. Returns that response (its ``sent`` is the access log's byte count),
    or None when the server is not gunicorn.
    """
    response = getattr(start_response, "__self__", None)
    if not isinstance(response, GUNICORN_RESPONSE):
        return None
    start_response(status, [])
    response.headers_sent = True
    response.chunked = False
    response.force_close()
    return response


def pending_client_bytes(environ: dict[str, Any]) -> bytes:
    """Bytes the client sent after the request head that gunicorn already read, taken
    out of its buffer (a client that starts its TLS handshake without waiting for 200).

    gunicorn keeps them in the ``Unreader`` behind ``wsgi.input``; b"" when there are
    none or the server is not gunicorn.
    """
    body = environ.get("wsgi.input")
    reader = getattr(body, "reader", None)
    unreader = getattr(reader, "unreader", None)
    take = getattr(unreader, "take_buffered", None)
    if take is None:
        return b""
    data: bytes = take()
    return data


def keep_hop_by_hop_header(start_response: Any, name: str, value: str) -> None:
    """Send a header gunicorn would drop from a WSGI response, by adding it to gunicorn's
    response directly (call after ``start_response``); a no-op on other servers.

    gunicorn strips hop-by-hop names (``util.hop_headers``), ``Proxy-Authenticate`` among
    them, but a 407 is useless without it. Raises ValueError for a name that is not a
    token or a value with control characters, which gunicorn would otherwise check.
    """
    response = getattr(start_response, "__self__", None)
    if not isinstance(response, GUNICORN_RESPONSE):
        return
    if not gunicorn_wsgi.TOKEN_RE.fullmatch(name) or not gunicorn_wsgi.HEADER_VALUE_RE.fullmatch(
        value
    ):
        raise ValueError(f"cannot send header {name!r}: not a token, or a control character")
    if (name, value) not in response.headers:
        response.headers.append((name, value))


# -- Putting it in place -----------------------------------------------------------------------
def install(worker: Any | None = None, on_stop_deadline: Callable[[], None] | None = None) -> None:
    """Check the gunicorn version, then put this module's pieces in place in this worker.

    gunicorn.conf.py calls it from ``post_worker_init``: after gevent has patched and the
    app has loaded, before the worker starts serving. gunicorn builds each response
    through ``gunicorn.http.wsgi.create``, each gevent server in ``GeventWorker.run`` and
    each refusal in ``Worker.handle_error``, which look ``Response``, ``StreamServer``
    and ``util.write_error`` up when called, so replacing the module attributes is
    enough. Raises ``SystemExit(WORKER_BOOT_ERROR)`` on an unverified gunicorn.
    Idempotent.

    Given the ``worker``, it also makes stopping lose nothing (see the module's
    docstring), and calls ``on_stop_deadline`` just before the graceful deadline of a
    stopping worker.
    """
    check_gunicorn_version()
    if worker is not None and stopping._worker is not worker:
        stopping._worker = worker
        from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]

        if gevent_patched():
            from gunicorn.workers.ggevent import GeventWorker  # type: ignore[import-untyped]

            if isinstance(worker, GeventWorker):
                _remember_listener_names(worker)
        if isinstance(worker, ThreadWorker):
            _close_listeners_when_stopping(worker)
        if on_stop_deadline is not None:
            _watch_for_stop(worker, on_stop_deadline)
    gunicorn_wsgi.Response = CoalescingResponse
    gunicorn_util.http_date = http_date
    gunicorn_util.write_error = write_refusal
    if gevent_patched():
        from gunicorn.workers import ggevent  # type: ignore[import-untyped]

        if not getattr(ggevent.StreamServer, "batched", False):
            ggevent.StreamServer = _batched_stream_server()
            ggevent.StreamServer.batched = True


__all__ = [
    "ACCEPT_BATCH",
    "COALESCE_LIMIT",
    "DROPPED_BY_GUNICORN",
    "REFUSAL_TEXT_LIMIT",
    "VERIFIED_GUNICORN",
    "WORKER_BOOT_ERROR",
    "CheckedHeaders",
    "CoalescingResponse",
    "check_gunicorn_in_master",
    "check_gunicorn_version",
    "client_socket",
    "http_date",
    "install",
    "install_in_master",
    "keep_hop_by_hop_header",
    "pending_client_bytes",
    "refusal_bytes",
    "take_over_response",
    "version_mismatch",
    "worker_stopping",
    "write_refusal",
]
