"""Long-lived byte relays: ``CONNECT`` tunnels and upgraded (WebSocket) connections.

WSGI has no notion of a tunnel, so a relay takes the client socket gunicorn hands over
(``server.gunicorn.client_socket``), writes the response head itself (``200 Connection
Established`` for CONNECT, the upstream's ``101`` for an upgrade), and relays bytes both
ways until both sides are done, either side resets, or nothing moves for
``PROXY_TUNNEL_IDLE_TIMEOUT``. gunicorn is told the response is already sent (nothing else
is ever written to the client after the relay starts) and closes the connection after.
Servers without such a socket (the ``flask run`` dev server) get 501.

``CONNECT`` tunnels obey the forward proxy's rules (``PROXY_FORWARD``,
``PROXY_ALLOW_CLIENTS``, ``PROXY_AUTH_FILE``, ``PROXY_ALLOW_HOSTS``, the private-address
guard) plus ``PROXY_CONNECT_PORTS``; upgrades are checked by the router like any request
(``proxy/upgrade.py``). Under gthread a relay holds one thread; under gevent one greenlet.
The sync worker cannot serve relays longer than gunicorn's timeout.
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
#: The kinds of relay, as health (``tunnels.open``) and metrics (``kind``) name them.
KINDS = ("connect", "websocket")
#: Errors that mean a peer went away: the relay's normal end, not worth a log line.
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)


class Tunnels:
    """Opens CONNECT tunnels and runs every relay (CONNECT and upgrades); keeps the
    figures health and metrics show."""

    def __init__(self, policy: ForwardPolicy, timeouts: Timeouts, guard: ForwardGuard) -> None:
        self.connect_ports = policy.connect_ports
        self.timeouts = timeouts
        self.guard = guard
        self._lock = threading.Lock()
        #: Relays open now, by kind.
        self.open_by_kind = dict.fromkeys(KINDS, 0)
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

    @property
    def active(self) -> int:
        """Relays open now, all kinds together."""
        return sum(self.open_by_kind.values())

    def stats(self) -> dict[str, Any]:
        """The figures of ``/_proxy/health`` ``tunnels``: ``open`` by kind, plus the totals
        (``active``, ``opened``, bytes each way) of all kinds together."""
        with self._lock:
            return {
                "active": self.active,
                "open": dict(self.open_by_kind),
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
        """A CONNECT tunnel: answer 200 and relay until both sides are done."""
        return self.splice(
            environ,
            start_response,
            upstream,
            kind="connect",
            status="200 Connection Established",
            head=ESTABLISHED,
        )

    def splice(
        self,
        environ: dict[str, Any],
        start_response: Any,
        upstream: socket.socket,
        *,
        kind: str,
        status: str,
        head: bytes,
        early_down: bytes = b"",
    ) -> list[bytes]:
        """Write ``head`` to the client, then relay until the relay ends; return what WSGI
        expects. ``upstream`` is closed when it ends, whatever ends it.

        Bytes already read past the heads go first: the client's (gunicorn's read-ahead,
        e.g. a TLS hello or a WebSocket frame sent without waiting for the answer) to the
        upstream, ``early_down`` (what the upstream sent behind its 101, already in the
        response parser's buffer) to the client. Without them a peer that speaks first
        would wait forever for bytes the proxy holds.
        """
        client = client_socket(environ)
        assert client is not None  # callers refuse servers without one (501)
        response = take_over_response(start_response, status)
        with self._lock:
            self.open_by_kind[kind] += 1
            self.opened += 1
            self._open.add((client, upstream))
        up = down = 0
        idle = self.timeouts.tunnel_idle
        try:
            # Bound every blocking send by the idle timeout: a peer that stops reading
            # cannot pin this thread (or greenlet) forever.
            client.settimeout(idle)
            upstream.settimeout(idle)
            client.sendall(head + early_down)
            down += len(early_down)
            pending = pending_client_bytes(environ)
            if pending:
                upstream.sendall(pending)
                up += len(pending)
            up, down = self._pump(client, upstream, up, down)
        except TimeoutError:
            log.info(
                "%s relay peer stopped reading for %.0fs (PROXY_TUNNEL_IDLE_TIMEOUT): closing",
                kind,
                idle,
            )
        except OSError as exc:
            if exc.errno not in _GONE:
                log.info("%s relay ended on %s", kind, exc)
        finally:
            upstream.close()
            with self._lock:
                self.open_by_kind[kind] -= 1
                self._open.discard((client, upstream))
                self.bytes_up += up
                self.bytes_down += down
            if response is not None:
                response.sent = down  # the access log's byte count
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        return []

    def _pump(
        self, client: socket.socket, upstream: socket.socket, up: int, down: int
    ) -> tuple[int, int]:
        """Copy bytes both ways. A side that closes has its half passed on (shutdown of
        the write side); the relay ends when both halves are closed, when either side
        resets, or after ``PROXY_TUNNEL_IDLE_TIMEOUT`` with no byte either way.

        A TLS side (an upgrade to an ``https://`` upstream) can hold decrypted bytes the
        selector cannot see: they are drained before waiting again. It cannot be
        half-closed (``SSLSocket.shutdown`` drops TLS and would relay ciphertext), so the
        other side's end ends the whole relay.
        """
        idle = self.timeouts.tunnel_idle
        peers = {client: upstream, upstream: client}
        open_reads = {client, upstream}
        with selectors.DefaultSelector() as selector:
            for sock in open_reads:
                selector.register(sock, selectors.EVENT_READ)
            while open_reads:
                ready = selector.select(idle)
                if not ready:
                    log.info("relay idle for %.0fs (PROXY_TUNNEL_IDLE_TIMEOUT): closing it", idle)
                    break
                for key, _ in ready:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    if source not in open_reads:
                        continue  # ended by the other side's end in this round
                    target = peers[source]
                    data = source.recv(BLOCK)
                    if not data:
                        selector.unregister(source)
                        open_reads.discard(source)
                        if hasattr(target, "pending"):
                            open_reads.clear()  # TLS: no half-close (see above)
                            continue
                        try:
                            target.shutdown(socket.SHUT_WR)
                        except OSError:
                            open_reads.clear()
                        continue
                    while data:
                        target.sendall(data)
                        if source is client:
                            up += len(data)
                        else:
                            down += len(data)
                        data = source.recv(BLOCK) if tls_pending(source) else b""
        return up, down


def tls_pending(sock: socket.socket) -> bool:
    """True when a TLS socket holds decrypted bytes already (select() would not say)."""
    pending = getattr(sock, "pending", None)
    return pending is not None and bool(pending())
