"""One upstream connection: dialling, TLS, sending bytes, and telling whether it lives.

urllib3's ``HTTPConnection`` and ``HTTPSConnection`` do the socket work: options, the
connect timeout, and for TLS the context, SNI, certificate loading and hostname checks.
They write nothing of HTTP here: ``http1`` builds the request head and parses the
response. The subclasses below change two things, dialling an IP address without the
resolver and sending a head in one call, and ``connect_error`` turns a failed dial into
what the client sees.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import ssl
import sys
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from ..addresses import Origin, format_origin
from ..concurrency import os_poll
from ..errors import NOT_SENT, UpstreamConnectError, UpstreamError, UpstreamTimeout


class _SendOnce:
    """http.client's ``send`` for bytes: one ``send`` call, ``sendall`` only for a rest.

    A request head fits the socket buffer whole; gevent's ``sendall`` first asks the
    kernel for the buffer size (one more system call per request) and keeps a deadline.
    """

    sock: Any

    def send(self, data: Any) -> None:
        sock = self.sock
        if sock is None or type(data) is not bytes:
            super().send(data)  # type: ignore[misc]
            return
        sys.audit("http.client.send", self, data)
        sent = sock.send(data)
        if sent < len(data):
            sock.sendall(memoryview(data)[sent:])


def ip_family(host: str) -> int | None:
    """AF_INET or AF_INET6 when ``host`` is an IP address literal, else None.

    A scoped IPv6 address (``fe80::1%eth0``) is left to getaddrinfo, which resolves the
    scope to an interface index; a plain (host, port) pair would lose it."""
    if "%" in host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _DirectConnect:
    """urllib3's ``_new_conn``, without a resolver round trip for an IP address.

    gevent's default resolver hands every ``getaddrinfo`` to its thread pool, even for
    ``127.0.0.1``: a thread switch and back per new connection. Reverse upstreams are
    often IP addresses, and forward requests connect to the address the router already
    resolved and checked, so those are dialled directly; names still go through urllib3
    (and the resolver).
    """

    _dns_host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    host: str

    def _new_conn(self) -> socket.socket:
        family = ip_family(self._dns_host)
        if family is None:
            resolved: socket.socket = super()._new_conn()  # type: ignore[misc]
            return resolved
        sock: socket.socket | None = None
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            for option in self.socket_options or ():
                sock.setsockopt(*option)
            if self.timeout is not _DEFAULT_TIMEOUT:
                sock.settimeout(self.timeout)
            if self.source_address:
                sock.bind(self.source_address)
            sock.connect((self._dns_host, self.port))
        except TimeoutError as exc:
            if sock is not None:
                sock.close()
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from exc
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise NewConnectionError(
                self,  # type: ignore[arg-type]
                f"Failed to establish a new connection: {exc}",
            ) from exc
        sys.audit("http.client.connect", self, self.host, self.port)
        assert sock is not None
        return sock


class ProxyHTTPConnection(_SendOnce, _DirectConnect, HTTPConnection):
    """urllib3's connection: dials (directly for an IP address) and sends bytes."""


class ProxyHTTPSConnection(_SendOnce, _DirectConnect, HTTPSConnection):
    """urllib3's TLS connection: dials, handshakes and verifies, then sends bytes."""


_poll = os_poll()


def is_dropped(sock: Any) -> bool:
    """True when an idle connection's socket was closed by the peer, or holds bytes
    nobody asked for: either way it must not carry another request.

    One ``poll`` with a zero timeout on the OS socket (readable means EOF, an error, or
    unsolicited bytes). Under gevent, urllib3's ``wait_for_read`` goes through the hub,
    and a non-blocking ``MSG_PEEK`` that finds nothing raises BlockingIOError, which
    costs more than the system call. On a TLS socket the poll sees the raw bytes, where
    a pending close is just as visible.
    """
    try:
        fd = sock.fileno()
        if fd < 0:
            return True
        poller = _poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, TypeError, ValueError):
        return True


def peer_address(sock: Any) -> str:
    """The address a connected socket talks to ('' if it cannot say)."""
    try:
        return str(sock.getpeername()[0])
    except (OSError, IndexError, TypeError):
        return ""


def one_line(exc: BaseException) -> str:
    """An exception's text on one line, bounded, for an error body or a log line."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def connect_error(origin: Origin, connect_timeout: float, exc: BaseException) -> UpstreamError:
    """Map a failed connect to what the client sees: 504 for a timeout, else 502."""
    where = format_origin(origin)
    timed_out = UpstreamTimeout(
        f"connecting to upstream {where} took over {connect_timeout:g}s (HTTP_CONNECT_TIMEOUT)",
        stage=NOT_SENT,
    )
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2.x: test it first,
    # or refused connections would turn into 504s.
    if isinstance(exc, NameResolutionError):
        return UpstreamConnectError(f"cannot resolve upstream host of {where}", stage=NOT_SENT)
    if isinstance(exc, NewConnectionError):
        reason = exc.__cause__ or exc.__context__ or exc
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return timed_out
        return UpstreamConnectError(
            f"upstream {where} refused or unreachable: {one_line(reason)}", stage=NOT_SENT
        )
    if isinstance(exc, (ConnectTimeoutError, TimeoutError, socket.timeout)):
        return timed_out
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)) or "certificate" in str(exc).lower():
        return UpstreamConnectError(
            f"TLS handshake with upstream {where} failed: {one_line(exc)}"
            " (set HTTP_CA_BUNDLE to the CA that signed it)",
            stage=NOT_SENT,
        )
    return UpstreamConnectError(
        f"cannot connect to upstream {where}: {one_line(exc)}", stage=NOT_SENT
    )
