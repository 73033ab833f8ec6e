"""How gunicorn serves in a wsgiproxy worker: one send per small response, batched accepts.

gunicorn 27 writes every response's head in one ``sendall`` and its body in another.
On loopback, and to any client near the proxy, each send is a trip through the kernel's
whole TCP path (and a wake-up of the reader), so a small proxied response cost three
sends where two do: measured under ``make bench``, the head's own send was about 7% of
a proxied request's CPU. ``CoalescingResponse`` keeps gunicorn's header rendering and
bookkeeping and changes only when the head goes out: it is held back and sent in the
same call as the first body bytes, or when the response closes with no body.

It also formats gunicorn's ``Date`` header once a second instead of once a response, and
lets a gevent worker accept up to ``ACCEPT_BATCH`` connections at a time (see
``_batched_stream_server``).

``install()`` puts these in place for the gunicorn worker it runs in (gunicorn.conf.py
calls it from ``post_worker_init``, after gevent has patched and before the worker starts
its server). gunicorn builds each response through ``gunicorn.http.wsgi.create`` and each
gevent server in ``gunicorn.workers.ggevent.GeventWorker.run``, which look ``Response``
and ``StreamServer`` up in their modules. These are gunicorn internals: gunicorn is pinned,
and the tests check each piece against the pinned version.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from gunicorn import util as gunicorn_util  # type: ignore[import-untyped]
from gunicorn.http import wsgi as gunicorn_wsgi  # type: ignore[import-untyped]

#: Body bytes sent together with the head; a longer first write goes out separately
#: rather than being copied behind the head.
COALESCE_LIMIT = 64 * 1024


class _HeadCatcher:
    """Stands in for the client socket while gunicorn renders the head."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


class CoalescingResponse(gunicorn_wsgi.Response):  # type: ignore[misc]
    """gunicorn's ``Response``, sending its head with the first body bytes."""

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
        if not self.headers_sent:
            self.send_headers()
        self.flush_head()
        super().close()


_format_date = gunicorn_util.http_date
_date_cache: tuple[int, str] = (0, "")


def http_date(timestamp: float | None = None) -> str:
    """gunicorn's ``Date`` value, formatted once a second rather than once a response
    (as nginx does): ``email.utils`` formatting cost 1% of a proxied request."""
    global _date_cache
    if timestamp is not None:
        return str(_format_date(timestamp))
    now = time.time()
    second, text = _date_cache
    if int(now) != second:
        text = str(_format_date(now))
        _date_cache = (int(now), text)
    return text


#: Connections a gevent worker accepts each time the listening socket is ready.
ACCEPT_BATCH = 16


def _batched_stream_server() -> type:
    """gevent's ``StreamServer``, accepting up to ``ACCEPT_BATCH`` connections per turn.

    gunicorn's gevent worker sets ``max_accept = 1`` when there are several workers, so
    that one does not take every new connection. But a busy worker goes round its whole
    event loop between two accepts: 256 clients connecting at once waited up to a second
    to be accepted (their requests already sent), which was the p99 of every gunicorn app
    under ``make bench``, the bare one included. Measured at 256 clients on 2 workers:
    p99 720 ms with 1, 80 ms with 8, 16 or 32, the same requests per second. 16 keeps
    the workers' shares of a burst of new connections roughly even.
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


def install() -> None:
    """Make gunicorn build ``CoalescingResponse`` and date responses with the cached
    ``http_date`` in this process, and under gevent accept in batches (idempotent)."""
    gunicorn_wsgi.Response = CoalescingResponse
    gunicorn_util.http_date = http_date
    if "gevent" in sys.modules:
        from gunicorn.workers import ggevent  # type: ignore[import-untyped]

        if not getattr(ggevent.StreamServer, "batched", False):
            ggevent.StreamServer = _batched_stream_server()
            ggevent.StreamServer.batched = True
