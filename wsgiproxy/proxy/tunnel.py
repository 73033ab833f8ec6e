"""``CONNECT host:port`` tunnels: what ``curl -x http://proxy https://site`` sends.

WSGI has no notion of a tunnel, so this takes the client socket gunicorn hands over
(``server.gunicorn.client_socket``), writes ``200 Connection Established`` itself, and relays
bytes both ways until both sides are done or the tunnel sits idle for
``PROXY_TUNNEL_IDLE_TIMEOUT``. gunicorn is told the response is already sent (nothing else is
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

from ..buffers import BLOCK
from ..errors import NOT_SENT, Forbidden, NotSupported, UpstreamConnectError, UpstreamTimeout
from ..server.gunicorn import client_socket, pending_client_bytes, take_over_response
from ..settings import ForwardPolicy, Timeouts
from .policy import ForwardGuard
from .routing import split_authority

log = logging.getLogger(__name__)

ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


class Tunnels:
    """Opens and relays CONNECT tunnels; keeps the figures health and metrics show."""

    def __init__(self, policy: ForwardPolicy, timeouts: Timeouts, guard: ForwardGuard) -> None:
        self.connect_ports = policy.connect_ports
        self.timeouts = timeouts
        self.guard = guard
        self._lock = threading.Lock()
        self.active = 0
        self.opened = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._open: set[tuple[socket.socket, socket.socket]] = set()

    def close_all(self) -> None:
        """End every open tunnel now (the worker is stopping): both sockets are shut
        down, which wakes the relay, which then closes them."""
        with self._lock:
            pairs = list(self._open)
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

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
        host, port = split_authority(raw, None)
        self.guard.check_client(environ)
        if port not in self.connect_ports:
            allowed = ",".join(str(p) for p in sorted(self.connect_ports))
            raise Forbidden(
                f"CONNECT to port {port} is not allowed (PROXY_CONNECT_PORTS={allowed})"
            )
        if client_socket(environ) is None:
            raise NotSupported(
                "CONNECT needs a server that hands over the client socket: run under "
                "gunicorn (gevent or gthread workers), not the dev server"
            )
        address, _ = self.guard.check_destination(environ, host, port)
        timeout = self.timeouts.connect
        try:
            return socket.create_connection((address or host, port), timeout=timeout)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"connecting to {host}:{port} took over {timeout:g}s (HTTP_CONNECT_TIMEOUT)",
                stage=NOT_SENT,
            ) from exc
        except OSError as exc:
            raise UpstreamConnectError(
                f"cannot connect to {host}:{port}: {exc.strerror or exc}", stage=NOT_SENT
            ) from exc

    def relay(
        self, environ: dict[str, Any], start_response: Any, upstream: socket.socket
    ) -> list[bytes]:
        """Answer 200 and relay until both sides are done; return what WSGI expects."""
        client = client_socket(environ)
        assert client is not None  # open() refused servers without one
        response = take_over_response(start_response, "200 Connection Established")
        with self._lock:
            self.active += 1
            self.opened += 1
            self._open.add((client, upstream))
        up = down = 0
        idle = self.timeouts.tunnel_idle
        try:
            # Bound every blocking send by the idle timeout: a peer that stops reading
            # cannot pin this thread (or greenlet) forever.
            client.settimeout(idle)
            upstream.settimeout(idle)
            client.sendall(ESTABLISHED)
            pending = pending_client_bytes(environ)
            if pending:
                upstream.sendall(pending)
                up += len(pending)
            up, down = self._pump(client, upstream, up)
        except TimeoutError:
            log.info(
                "tunnel peer stopped reading for %.0fs (PROXY_TUNNEL_IDLE_TIMEOUT): closing", idle
            )
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                log.info("tunnel ended on %s", exc)
        finally:
            upstream.close()
            with self._lock:
                self._open.discard((client, upstream))
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
        resets, or after ``PROXY_TUNNEL_IDLE_TIMEOUT`` with no byte either way."""
        down = 0
        idle = self.timeouts.tunnel_idle
        peers = {client: upstream, upstream: client}
        open_reads = {client, upstream}
        with selectors.DefaultSelector() as selector:
            for sock in open_reads:
                selector.register(sock, selectors.EVENT_READ)
            while open_reads:
                ready = selector.select(idle)
                if not ready:
                    log.info("tunnel idle for %.0fs (PROXY_TUNNEL_IDLE_TIMEOUT): closing it", idle)
                    break
                for key, _ in ready:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(BLOCK)
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
