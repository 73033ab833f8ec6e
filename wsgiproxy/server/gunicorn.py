"""Every gunicorn internal wsgiproxy touches, checked against the gunicorn it was read from.

WSGI leaves some things out that a proxy needs, and gunicorn does some things a proxy
must not, so a few of gunicorn's internals are used or replaced here, and nowhere else:

- ``CoalescingResponse``: gunicorn's response writer, sending a small response's head in
  the same call as its first body bytes rather than one send each.
- ``http_date``: gunicorn's ``Date`` value, formatted once a second, not once a response.
- batched accepts: a gevent worker takes up to ``ACCEPT_BATCH`` new connections a turn.
- ``write_refusal``: gunicorn's answer to a request its parser refuses (CL with TE, a bad
  request line, ...) in the proxy's one-line text/plain form instead of an HTML page.
- ``take_over_response``, ``client_socket``, ``pending_client_bytes``: the socket hand-over
  a tunnel needs (WSGI has no way to say "this app writes the socket itself").
- ``keep_hop_by_hop_header``: a header gunicorn strips from WSGI responses but a proxy
  must send (``Proxy-Authenticate`` on a 407).

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
import time
from http import HTTPStatus
from typing import Any

import gunicorn  # type: ignore[import-untyped]
from gunicorn import util as gunicorn_util
from gunicorn.http import wsgi as gunicorn_wsgi  # type: ignore[import-untyped]

from ..buffers import BLOCK
from ..concurrency import gevent_patched

#: The gunicorn release this module was read against and tested with
#: (``requirements.txt`` pins the same).
VERIFIED_GUNICORN = "27.0.1"

#: The exit status that makes gunicorn's arbiter halt rather than respawn the worker
#: (``Arbiter.WORKER_BOOT_ERROR`` in gunicorn/arbiter.py; any other status at boot is
#: respawned in a loop).
WORKER_BOOT_ERROR = 3

#: Body bytes sent together with the head; a longer first write goes out separately
#: rather than being copied behind the head.
COALESCE_LIMIT = BLOCK

#: Connections a gevent worker accepts each time the listening socket is ready.
ACCEPT_BATCH = 16

#: Longest body text of a parse refusal: gunicorn's message may quote a whole request line.
REFUSAL_TEXT_LIMIT = 300

#: gunicorn's own writer class, whatever ``install()`` later puts in its place.
_GunicornResponse: Any = gunicorn_wsgi.Response
_format_date = gunicorn_util.http_date
_date_cache: tuple[int, str] = (0, "")


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


# -- The response writer (gunicorn/http/wsgi.py: Response) ----------------------------------
class _HeadCatcher:
    """Stands in for the client socket while gunicorn renders the head."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


class CoalescingResponse(_GunicornResponse):  # type: ignore[misc]
    """gunicorn's ``Response``, sending its head with the first body bytes.

    gunicorn writes a head in one ``sendall`` and its body in another; each send is a trip
    through the kernel's TCP path and a wake-up of the reader. This keeps gunicorn's
    header rendering and bookkeeping and changes only when the head goes out: it is held
    back and sent in the same call as the first body bytes, or when the response closes
    with no body. The bytes on the wire are gunicorn's, unchanged.
    """

    _pending_head: bytes | None = None
    sock: Any
    headers_sent: bool
    chunked: bool

    def send_headers(self) -> None:
        """Render the head as gunicorn does, but hold it until there is a body to send."""
        if self.headers_sent:
            return
        sock, catcher = self.sock, _HeadCatcher()
        self.sock = catcher
        try:
            super().send_headers()
        finally:
            self.sock = sock
        self._pending_head = catcher.data

    def flush_head(self) -> None:
        """Send a held head now (before bytes written to the socket some other way)."""
        head, self._pending_head = self._pending_head, None
        if head:
            self.sock.sendall(head)

    def write(self, arg: bytes) -> None:
        """gunicorn's write; an empty write also sends a held head."""
        super().write(arg)
        if not arg:
            # An empty write is how a WSGI app pushes the head out early (a stream
            # about to go quiet): send it now, as gunicorn would.
            self.flush_head()

    def _emit_body(self, data: bytes) -> None:
        head = self._pending_head
        if head is None or len(data) > COALESCE_LIMIT:
            self.flush_head()
            super()._emit_body(data)
            return
        self._pending_head = None
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data) if data else b""
        data = head + data
        # One send call: gevent's sendall would first ask the kernel for SO_SNDBUF.
        sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(memoryview(data)[sent:])

    def sendfile(self, respiter: Any) -> bool:
        """gunicorn's sendfile, with a held head sent first when it will use the socket."""
        # gunicorn's sendfile writes to the socket itself once the head is out: send the
        # head first, but only when it will get that far (else write() sends it).
        if (
            not self.cfg.is_ssl
            and self.can_sendfile()
            and gunicorn_util.has_fileno(respiter.filelike)
        ):
            self.send_headers()
            self.flush_head()
        result: bool = super().sendfile(respiter)
        return result

    def close(self) -> None:
        """End the response; a head still held (no body) goes out now."""
        if not self.headers_sent:
            self.send_headers()
        self.flush_head()
        super().close()


# -- The Date header (gunicorn/util.py: http_date) ------------------------------------------
def http_date(timestamp: float | None = None) -> str:
    """gunicorn's ``Date`` value, formatted once a second rather than once a response,
    as nginx does: the text only changes once a second."""
    global _date_cache
    if timestamp is not None:
        return str(_format_date(timestamp))
    now = time.time()
    second, text = _date_cache
    if int(now) != second:
        text = str(_format_date(now))
        _date_cache = (int(now), text)
    return text


# -- Accepts under gevent (gunicorn/workers/ggevent.py: GeventWorker.run) -------------------
def _batched_stream_server() -> type:
    """gevent's ``StreamServer``, accepting up to ``ACCEPT_BATCH`` connections per turn.

    gunicorn's gevent worker sets ``max_accept = 1`` when there are several workers, so
    that one does not take every new connection. But a busy worker goes round its whole
    event loop between two accepts, so a burst of new clients waits to be accepted with
    its requests already sent. A batch of 16 accepts them promptly and still keeps the
    workers' shares of a burst roughly even.
    """
    from gevent.server import StreamServer  # type: ignore[import-untyped]

    class BatchedStreamServer(StreamServer):  # type: ignore[misc]
        @property
        def max_accept(self) -> int:
            return ACCEPT_BATCH

        @max_accept.setter
        def max_accept(self, value: int) -> None:
            pass  # gunicorn's 1 is replaced by ACCEPT_BATCH

    return BatchedStreamServer


# -- Parse refusals (gunicorn/workers/base.py: Worker.handle_error) -------------------------
def _one_line(text: str) -> str:
    """``text`` as one short printable line: whitespace runs become one space, control
    characters are escaped, and anything past ``REFUSAL_TEXT_LIMIT`` is cut."""
    line = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in " ".join(text.split())
    )
    if len(line) > REFUSAL_TEXT_LIMIT:
        line = line[: REFUSAL_TEXT_LIMIT - 3] + "..."
    return line


_STATUS_OF_PHRASE = {status.phrase: status.value for status in HTTPStatus}


def _refusal_kind(status: int) -> str:
    """The ``X-Proxy-Error`` kind of a gunicorn refusal, named as the proxy's own are."""
    if status == 403:
        return "forbidden"
    if 400 <= status < 500:
        return "bad-request"
    if status == 501:
        return "not-implemented"
    return "internal-error"


def refusal_bytes(status: int, reason: str, message: str) -> bytes:
    """The whole response for a request gunicorn refused: the proxy's error format.

    The status and reason phrase are gunicorn's, unless the phrase belongs to another
    status (gunicorn sends "501 Bad Request"); the body is gunicorn's message made one
    line, or the phrase when it gave none (a 500).
    """
    phrase = _one_line(reason)
    if not phrase or _STATUS_OF_PHRASE.get(phrase, status) != status:
        phrase = HTTPStatus(status).phrase if status in _STATUS_OF_PHRASE.values() else "Error"
    body = (_one_line(message) or phrase) + "\n"
    data = body.encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\n"
        f"X-Proxy-Error: {_refusal_kind(status)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    return head.encode("latin-1", "replace") + data


def write_refusal(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Stands in for ``gunicorn.util.write_error``, which only ``Worker.handle_error``
    calls: same arguments and socket write, the proxy's one-line text instead of HTML."""
    gunicorn_util.write_nonblock(sock, refusal_bytes(int(status_int), reason, mesg))


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
    if not isinstance(response, _GunicornResponse):
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
    if not isinstance(response, _GunicornResponse):
        return
    if not gunicorn_wsgi.TOKEN_RE.fullmatch(name) or not gunicorn_wsgi.HEADER_VALUE_RE.fullmatch(
        value
    ):
        raise ValueError(f"cannot send header {name!r}: not a token, or a control character")
    if (name, value) not in response.headers:
        response.headers.append((name, value))


# -- Putting it in place -----------------------------------------------------------------------
def install() -> None:
    """Check the gunicorn version, then put this module's pieces in place in this worker.

    gunicorn.conf.py calls it from ``post_worker_init``: after gevent has patched and the
    app has loaded, before the worker starts serving. gunicorn builds each response
    through ``gunicorn.http.wsgi.create``, each gevent server in ``GeventWorker.run`` and
    each refusal in ``Worker.handle_error``, which look ``Response``, ``StreamServer``
    and ``util.write_error`` up when called, so replacing the module attributes is
    enough. Raises ``SystemExit(WORKER_BOOT_ERROR)`` on an unverified gunicorn.
    Idempotent.
    """
    check_gunicorn_version()
    gunicorn_wsgi.Response = CoalescingResponse
    gunicorn_util.http_date = http_date
    gunicorn_util.write_error = write_refusal
    if gevent_patched():
        from gunicorn.workers import ggevent  # type: ignore[import-untyped]

        if not getattr(ggevent.StreamServer, "batched", False):
            ggevent.StreamServer = _batched_stream_server()
            ggevent.StreamServer.batched = True
