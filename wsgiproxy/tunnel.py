"""``CONNECT host:port`` tunnels: what ``curl -x http://proxy https://site`` sends.

WSGI has no notion of a tunnel, so this takes the client socket gunicorn puts in the
environ (``gunicorn.socket``), writes ``200 Connection Established`` itself, and relays
bytes both ways until both sides are done or the tunnel sits idle for
``HTTP_READ_TIMEOUT``. gunicorn is told the response is already sent (nothing else is
ever written to the client after the tunnel starts) and closes the connection after, as
it does for every CONNECT. Servers without such a socket (the ``flask run`` dev server)
get 501.

Tunnels obey the forward proxy's rules (``PROXY_FORWARD``, ``PROXY_ALLOW_CLIENTS``,
``PROXY_AUTH_FILE``, ``PROXY_ALLOW_HOSTS``, the private-address guard) plus
``PROXY_CONNECT_PORTS``. Under gthread a tunnel holds one thread; under gevent one
greenlet. The sync worker cannot serve tunnels longer than gunicorn's timeout.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
from typing import Any

from .config import Settings
from .errors import Forbidden, NotSupported, UpstreamConnectError, UpstreamTimeout
from .routing import Router, split_authority

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


def take_over_response(start_response: Any, status: str) -> Any | None:
    """Tell gunicorn this app writes the response to the socket itself.

    ``start_response`` is bound to gunicorn's ``Response``: recording the status keeps
    the access log right, and marking the headers sent stops gunicorn from writing a
    status line or a final chunk of its own. None when the server is not gunicorn.
    """
    response = getattr(start_response, "__self__", None)
    if response is None or not hasattr(response, "headers_sent"):
        return None
    start_response(status, [])
    response.headers_sent = True
    response.chunked = False
    return response


def _pending_client_bytes(environ: dict[str, Any]) -> bytes:
    """Bytes the client sent after the CONNECT head that gunicorn already read (a client
    that starts its TLS handshake without waiting for the 200)."""
    body = environ.get("wsgi.input")
    reader = getattr(body, "reader", None)
    unreader = getattr(reader, "unreader", None)
    buf = getattr(unreader, "buf", None)
    if buf is None or not buf.tell():
        return b""
    data: bytes = buf.getvalue()
    buf.seek(0)
    buf.truncate()
    return data


class Tunnels:
    """Opens and relays CONNECT tunnels; keeps the figures health and metrics show."""

    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self._lock = threading.Lock()
        self.active = 0
        self.opened = 0
        self.bytes_up = 0
        self.bytes_down = 0

    def stats(self) -> dict[str, int]:
        return {
            "active": self.active,
            "opened": self.opened,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }

    def open(self, environ: dict[str, Any], raw: str) -> socket.socket:
        """Check a CONNECT request and connect to its destination.

        Raises BadRequest (400), Forbidden (403), ProxyAuthRequired (407),
        NotSupported (501), UpstreamConnectError (502) or UpstreamTimeout (504).
        """
        settings = self.settings
        host, port = split_authority(raw, None)
        self.router.check_forward_client(environ)
        if port not in settings.connect_ports:
            allowed = ",".join(str(p) for p in sorted(settings.connect_ports))
            raise Forbidden(
                f"CONNECT to port {port} is not allowed (PROXY_CONNECT_PORTS={allowed})"
            )
        if environ.get("gunicorn.socket") is None:
            raise NotSupported(
                "CONNECT needs a server that hands over the client socket: run under "
                "gunicorn (gevent or gthread workers), not the dev server"
            )
        address, _ = self.router.check_destination(environ, host, port)
        timeout = settings.connect_timeout
        try:
            return socket.create_connection((address or host, port), timeout=timeout)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"connecting to {host}:{port} took over {timeout:g}s (HTTP_CONNECT_TIMEOUT)"
            ) from exc
        except OSError as exc:
            raise UpstreamConnectError(
                f"cannot connect to {host}:{port}: {exc.strerror or exc}"
            ) from exc

    def relay(
        self, environ: dict[str, Any], start_response: Any, upstream: socket.socket
    ) -> list[bytes]:
        """Answer 200 and relay until both sides are done; return what WSGI expects."""
        client: socket.socket = environ["gunicorn.socket"]
        response = take_over_response(start_response, "200 Connection Established")
        with self._lock:
            self.active += 1
            self.opened += 1
        up = down = 0
        idle = self.settings.read_timeout
        try:
            # Bound every blocking send by the idle timeout: a peer that stops reading
            # cannot pin this thread (or greenlet) forever.
            client.settimeout(idle)
            upstream.settimeout(idle)
            client.sendall(ESTABLISHED)
            pending = _pending_client_bytes(environ)
            if pending:
                upstream.sendall(pending)
                up += len(pending)
            up, down = self._pump(client, upstream, up)
        except TimeoutError:
            log.info("tunnel peer stopped reading for %.0fs (HTTP_READ_TIMEOUT): closing", idle)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                log.info("tunnel ended on %s", exc)
        finally:
            upstream.close()
            with self._lock:
                self.active -= 1
                self.bytes_up += up
                self.bytes_down += down
            if response is not None:
                response.sent = down  # the access log's byte count
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        return []

    def _pump(self, client: socket.socket, upstream: socket.socket, up: int) -> tuple[int, int]:
        """Copy bytes both ways. A side that closes has its half passed on (shutdown of
        the write side); the tunnel ends when both halves are closed, when either side
        resets, or after ``HTTP_READ_TIMEOUT`` with no byte either way."""
        down = 0
        idle = self.settings.read_timeout
        peers = {client: upstream, upstream: client}
        open_reads = {client, upstream}
        with selectors.DefaultSelector() as selector:
            for sock in open_reads:
                selector.register(sock, selectors.EVENT_READ)
            while open_reads:
                ready = selector.select(idle)
                if not ready:
                    log.info("tunnel idle for %.0fs (HTTP_READ_TIMEOUT): closing it", idle)
                    break
                for key, _ in ready:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(_CHUNK)
                    target = peers[source]
                    if not data:
                        selector.unregister(source)
                        open_reads.discard(source)
                        try:
                            target.shutdown(socket.SHUT_WR)
                        except OSError:
                            open_reads.clear()
                        continue
                    target.sendall(data)
                    if source is client:
                        up += len(data)
                    else:
                        down += len(data)
        return up, down
