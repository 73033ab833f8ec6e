"""urllib3 glue: open, reuse and close upstream connections through our pool.

urllib3 still speaks HTTP (its ``HTTPConnection`` writes the request and parses the
response); what it no longer decides is which connection a request gets. A
``PoolManager`` subclass, the module-level entry point sized from the environment,
registers ``OriginPool`` for both schemes through ``pool_classes_by_scheme``; each
``OriginPool`` is one origin's view of the process-wide ``pool.Pool``, plugged in at
urllib3's own seams (``_get_conn``, ``_put_conn``, ``_new_conn``).

``UpstreamClient.send`` is the one way a request goes upstream. It owns the rules that
need to know whether a connection was reused: a stale idle socket is dropped before use,
and a request that fails on a reused connection before any response byte is sent once
more on a new one when the contract allows it (idempotent method, body kept whole).
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import re
import select
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from .config import Origin, Settings
from .errors import (
    BadRequest,
    BodyTooLarge,
    ClientBodyError,
    PoolExhausted,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .pool import Lease, Limits, Pool, PoolTimeout, format_origin
from .response import UpstreamResponse

log = logging.getLogger(__name__)

#: Methods whose replay cannot change the outcome (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: A body up to this size is kept while it streams, so one replay can resend it.
REPLAY_LIMIT = 64 * 1024
#: Read size for request bodies: bounded memory, few system calls.
BLOCK = 64 * 1024

# Errors that mean "the peer closed or reset the socket": on a reused connection before
# any response byte, that is the keep-alive race, not an answer from the upstream.
_STALE_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class RequestBody:
    """The client's request body, streamed once, with the start kept for one replay.

    Iterating yields the body in blocks as the client sends it, never holding more than a
    block plus the replay buffer. The first ``REPLAY_LIMIT`` bytes are kept, so iterating
    again (a replay on a new connection) yields them and then carries on reading from the
    client. Errors reading the client become ``ClientBodyError`` (400) and a body over
    ``max_body`` becomes ``BodyTooLarge`` (413): both abort the upstream exchange.
    """

    def __init__(self, stream: Any, length: int | None, max_body: int) -> None:
        self._stream = stream
        #: Declared Content-Length, or None for a chunked body read to its end.
        self.length = length
        self._max_body = max_body
        self._kept: list[bytes] | None = []
        self._read = 0
        self._eof = length == 0

    @property
    def chunked(self) -> bool:
        """True when the body is relayed with chunked framing (no Content-Length)."""
        return self.length is None

    @property
    def replayable(self) -> bool:
        """True while everything read so far is kept (at most ``REPLAY_LIMIT`` bytes)."""
        return self._kept is not None

    def prime(self) -> None:
        """Read the first block before any upstream contact.

        A body that is broken or too large from its first bytes (a bad first chunk, a
        short small body) is then refused with nothing sent upstream, not even the head;
        a small body arrives whole and is sent in one go. Raises ClientBodyError (400) or
        BodyTooLarge (413).
        """
        if not self._read and not self._eof:
            self._read_block()

    def __iter__(self) -> Iterator[bytes]:
        if self._kept:
            yield from list(self._kept)
        while not self._eof:
            data = self._read_block()
            if data:
                yield data

    def _read_block(self) -> bytes:
        """The next block from the client (b"" at the end), counted, checked and kept."""
        want = BLOCK if self.length is None else min(BLOCK, self.length - self._read)
        try:
            data: bytes = self._stream.read(want)
        except Exception as exc:  # gunicorn raises its own parse errors here
            raise ClientBodyError(
                f"request body broke off after {self._read} bytes: {exc or type(exc).__name__}"
            ) from exc
        if not data:
            if self.length is not None:
                raise ClientBodyError(
                    f"client sent {self._read} of {self.length} body bytes, then stopped"
                )
            self._eof = True
            return b""
        self._read += len(data)
        if self._max_body and self._read > self._max_body:
            raise BodyTooLarge(f"request body over {self._max_body} bytes (PROXY_MAX_BODY)")
        if self.length is not None and self._read >= self.length:
            self._eof = True
        if self._kept is not None:
            if self._read <= REPLAY_LIMIT:
                self._kept.append(data)
            else:
                self._kept = None
        return data


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


def _ip_family(host: str) -> int | None:
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
    ``127.0.0.1``: a thread switch and back per new connection (under churn, 9% of the
    worker's CPU in a profile). Reverse upstreams are often IP addresses, and forward
    requests connect to the address the router already resolved and checked, so those
    are dialled directly; names still go through urllib3 (and the resolver).
    """

    _dns_host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    host: str

    def _new_conn(self) -> socket.socket:
        family = _ip_family(self._dns_host)
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
    """urllib3's connection, reading response heads with ``UpstreamResponse``."""

    response_class = UpstreamResponse


class ProxyHTTPSConnection(_SendOnce, _DirectConnect, HTTPSConnection):
    """urllib3's TLS connection, reading response heads with ``UpstreamResponse``."""

    response_class = UpstreamResponse


class OriginPool(HTTPConnectionPool):
    """One origin's view of the shared ``Pool``: urllib3's seams, our decisions.

    ``_get_conn`` waits in the shared pool (FIFO, global limits) and hands back either a
    reused connection or a fresh, not yet connected one; ``_put_conn`` returns it (or
    closes it when it cannot be reused). The lease travels on the connection object so
    urllib3's own ``urlopen`` keeps working through the same seams.
    """

    ConnectionCls = ProxyHTTPConnection
    shared: Pool[HTTPConnection]
    reuse: bool
    origin: Origin

    def _get_conn(self, timeout: float | None = None) -> HTTPConnection:
        lease = self.shared.acquire(self.origin, timeout if timeout is not None else 5.0)
        conn = lease.conn
        if conn is None:
            conn = self._new_conn()  # type: ignore[assignment]
            assert conn is not None
        conn._wsgiproxy_lease = lease  # type: ignore[attr-defined]
        return conn

    def _put_conn(self, conn: Any) -> None:
        lease: Lease[HTTPConnection] | None = getattr(conn, "_wsgiproxy_lease", None)
        if lease is None:
            if conn is not None:
                conn.close()
            return
        conn._wsgiproxy_lease = None
        if lease.conn is None:  # opened lazily by urllib3's urlopen, or never opened
            if conn.is_closed:
                self.shared.connect_failed(lease)
                return
            self.shared.connected(lease, conn)
        self.shared.release(lease, reusable=self.reuse and not conn.is_closed)

    def close(self) -> None:
        """Called when urllib3 drops this origin from its LRU: close its idle sockets."""
        self.shared.close_idle(self.origin)


class OriginHTTPSPool(OriginPool, HTTPSConnectionPool):
    """``OriginPool`` for https origins (urllib3 builds the TLS connections)."""

    ConnectionCls = ProxyHTTPSConnection  # type: ignore[assignment]


class ProxyPoolManager(PoolManager):
    """The process's urllib3 ``PoolManager`` with every origin backed by one ``Pool``."""

    def __init__(self, shared: Pool[HTTPConnection], reuse: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.shared = shared
        self.reuse = reuse
        self.pool_classes_by_scheme = {"http": OriginPool, "https": OriginHTTPSPool}

    def _new_pool(
        self,
        scheme: str,
        host: str,
        port: int,
        request_context: dict[str, Any] | None = None,
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        assert isinstance(pool, OriginPool)
        pool.shared = self.shared
        pool.reuse = self.reuse
        pool.origin = (scheme, host.strip("[]").lower(), port)
        return pool


@dataclass
class Exchange:
    """One request in flight upstream: its response and the lease to give back."""

    response: UpstreamResponse
    conn: HTTPConnection
    lease: Lease[HTTPConnection]
    origin: Origin
    reused: bool
    #: Seconds spent getting the connection: queueing in the pool, plus the connect.
    pool_wait: float


def keepalive_timeout(value: str | None) -> float | None:
    """The ``timeout=N`` of a ``Keep-Alive`` response header, or None."""
    if not value:
        return None
    for part in value.split(","):
        name, _, number = part.strip().partition("=")
        if name.strip().lower() == "timeout":
            try:
                return float(number.strip())
            except ValueError:
                return None
    return None


def cooperative_yield() -> Callable[[], None] | None:
    """Under gevent, a way to let other greenlets run now (None under threads).

    The forwarder yields after each response: gunicorn's gevent worker reads a
    keep-alive client's next request straight after the response; when it is already
    buffered no call blocks, so one busy connection can keep the loop for many requests
    while the others wait (p99 of seconds at 256 clients). The client yields after
    handing its connection to a queued request, so that request goes upstream before
    this one writes its response to the client. Threads need neither: the OS schedules.
    """
    if "gevent" not in sys.modules:
        return None
    from gevent import monkey, sleep  # type: ignore[import-untyped]

    if not monkey.is_module_patched("socket"):
        return None
    return lambda: sleep(0)


class UpstreamClient:
    """Sends requests upstream over pooled connections; one per worker process.

    Built by ``create_app`` in the worker (after gevent has patched), never in the
    gunicorn master. ``send`` returns an ``Exchange`` whose response body the caller
    streams, then ``finish`` gives the connection back: to the pool when the response was
    read whole and the upstream keeps the connection open, closed otherwise.
    """

    def __init__(self, settings: Settings, on_decision: Any | None = None) -> None:
        self.settings = settings
        self.cooperate = cooperative_yield()
        self.pool: Pool[HTTPConnection] = Pool(
            Limits(
                max_connections=settings.max_connections,
                max_keepalive=settings.max_keepalive_connections if settings.pool_enabled else 0,
                keepalive_expiry=settings.keepalive_expiry,
            ),
            on_decision=on_decision,
        )
        tls: dict[str, Any] = {}
        if settings.tls_verify:
            tls["cert_reqs"] = "CERT_REQUIRED"
            if settings.ca_bundle:
                tls["ca_certs"] = settings.ca_bundle
        else:
            tls["cert_reqs"] = "CERT_NONE"
            tls["assert_hostname"] = False
        self._origin_pools: dict[Origin, OriginPool] = {}
        #: Failed connects since start (the health thread judges "cannot connect" by it).
        self.connect_errors = 0
        #: The module-level PoolManager (``wsgiproxy.app.pool_manager``).
        self.manager = ProxyPoolManager(
            self.pool,
            settings.pool_enabled,
            num_pools=1000,
            retries=False,
            **tls,
        )

    def origin_pool(self, origin: Origin) -> OriginPool:
        """urllib3's pool object for an origin, from the PoolManager, kept at hand.

        The PoolManager builds it (and its TLS settings) once; looking it up again on
        every request would cost a pool-key normalisation each time.
        """
        origin_pool = self._origin_pools.get(origin)
        if origin_pool is None:
            scheme, host, port = origin
            found = self.manager.connection_from_host(host, port, scheme)
            assert isinstance(found, OriginPool)
            origin_pool = self._origin_pools[origin] = found
        return origin_pool

    # -- checkout -------------------------------------------------------------------
    def _checkout(
        self,
        origin_pool: OriginPool,
        address: str | None = None,
        peer_allowed: Callable[[str], bool] | None = None,
    ) -> tuple[Lease[HTTPConnection], HTTPConnection]:
        """A live connection to the origin: reused if an idle one is still open, else new.

        A new connection goes to ``address`` when given (the address the caller checked).
        A reused one must have a peer ``peer_allowed`` accepts, or it is replaced: a
        connection opened for a client allowed to reach a private address is never
        handed to one that is not. Raises PoolExhausted (503), UpstreamConnectError
        (502) or UpstreamTimeout (504).
        """
        settings = self.settings
        try:
            lease = self.pool.acquire(origin_pool.origin, settings.pool_timeout)
        except PoolTimeout as exc:
            raise PoolExhausted(
                str(exc), headers=[("Retry-After", str(max(1, round(settings.pool_timeout))))]
            ) from exc
        conn = lease.conn
        if conn is None:
            return lease, self._connect(origin_pool, lease, address)
        sock = conn.sock
        # An idle socket that polls readable was closed by the upstream (or holds bytes
        # nobody asked for): replace it now rather than lose a request to it. The lease
        # keeps its slot, so the request does not queue again behind later arrivals.
        if (
            sock is None
            or is_dropped(sock)
            or (peer_allowed is not None and not peer_allowed(_peer(sock)))
        ):
            lease = self.pool.renew(lease)
            return lease, self._connect(origin_pool, lease, address)
        return lease, conn

    def _connect(
        self,
        origin_pool: OriginPool,
        lease: Lease[HTTPConnection],
        address: str | None = None,
    ) -> HTTPConnection:
        """Open the connection for a new slot; on failure free the slot and say why."""
        conn: HTTPConnection = origin_pool._new_conn()  # type: ignore[assignment]
        if address is not None:
            # Connect to the checked address; Host and TLS SNI/verification still use
            # the name (urllib3 keeps ``host`` for those and dials ``_dns_host``).
            conn._dns_host = address
        conn.timeout = self.settings.connect_timeout
        try:
            conn.connect()
        except BaseException as exc:
            conn.close()
            self.pool.connect_failed(lease)
            self.pool.note_error()
            self.connect_errors += 1
            raise _connect_error(origin_pool.origin, self.settings, exc) from exc
        self.pool.connected(lease, conn)
        return conn

    # -- exchange -------------------------------------------------------------------
    def send(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: dict[str, str],
        body: RequestBody | None,
        *,
        address: str | None = None,
        peer_allowed: Callable[[str], bool] | None = None,
    ) -> Exchange:
        """Send one request and read the response head; the body is left to stream.

        ``target`` goes on the request line byte for byte. ``headers`` are sent as given,
        and urllib3 adds nothing (no User-Agent or Accept-Encoding of its own). A request
        that fails on a reused connection before any response byte is sent once more, on
        a new connection, when its method is idempotent and its body was kept whole.
        """
        settings = self.settings
        origin_pool = self.origin_pool(origin)
        chunked = body is not None and body.chunked
        head = _request_head(method, target, headers, body)
        started = time.monotonic()
        lease, conn = self._checkout(origin_pool, address, peer_allowed)
        pool_wait = time.monotonic() - started
        retried = False
        while True:
            sending = True
            try:
                # The socket's own timeout is what bounds each send and each read
                # (http.client and urllib3 do not re-apply ``conn.timeout`` here).
                conn.sock.settimeout(settings.write_timeout)
                _send_request(conn, head, body, chunked)
                sending = False
                conn.sock.settimeout(settings.read_timeout)
                # The head is parsed by UpstreamResponse and the body read straight from
                # it, without urllib3's response wrapper (its header checks and per-read
                # bookkeeping cost more than the proxying).
                response = _read_response(conn, method)
            except (ClientBodyError, BodyTooLarge):
                conn.close()
                self.pool.discard(lease)
                raise
            except _STALE_ERRORS as exc:
                conn.close()
                if (
                    lease.reused
                    and not retried
                    and method in IDEMPOTENT
                    and (body is None or body.replayable)
                ):
                    retried = True
                    self.pool.note_retry()
                    log.info(
                        "reused connection to %s was closed by the upstream (%s); "
                        "sending %s %s again on a new connection",
                        format_origin(origin),
                        type(exc).__name__,
                        method,
                        target[:200],
                    )
                    lease = self.pool.renew(lease)
                    conn = self._connect(origin_pool, lease, address)
                    continue
                self.pool.discard(lease)
                self.pool.note_error()
                raise UpstreamProtocolError(
                    f"upstream {format_origin(origin)} closed the connection before answering"
                    f" ({type(exc).__name__})"
                ) from exc
            except TimeoutError as exc:
                conn.close()
                self.pool.discard(lease)
                self.pool.note_error()
                if sending:
                    message = (
                        f"upstream {format_origin(origin)} took the request body no faster than"
                        f" {settings.write_timeout:g}s per block (HTTP_WRITE_TIMEOUT)"
                    )
                else:
                    message = (
                        f"upstream {format_origin(origin)} sent no response within "
                        f"{settings.read_timeout:g}s (HTTP_READ_TIMEOUT)"
                    )
                raise UpstreamTimeout(message) from exc
            except (OSError, http.client.HTTPException, HTTPError, ValueError) as exc:
                conn.close()
                self.pool.discard(lease)
                self.pool.note_error()
                raise UpstreamProtocolError(
                    f"upstream {format_origin(origin)} sent an invalid response: {_one_line(exc)}"
                ) from exc
            return Exchange(response, conn, lease, origin, lease.reused, pool_wait)

    def finish(self, exchange: Exchange, complete: bool) -> None:
        """Give the connection back: pooled if the body was read whole and it stays open.

        Anything else (client gone, upstream reset, timeout, ``Connection: close``) closes
        it, so a half-read response can never leak into the next request.
        """
        conn = exchange.conn
        response = exchange.response
        response.close()
        if not complete or conn.is_closed or not self.settings.pool_enabled:
            conn.close()
            self.pool.discard(exchange.lease)
            return
        expires_in = keepalive_timeout(response.headers.get("keep-alive"))
        if expires_in is not None:
            # Close our side a second before the upstream says it will close its side,
            # so we never send a request into a socket it is closing.
            expires_in -= 1.0
            if expires_in <= 0:
                conn.close()
                self.pool.discard(exchange.lease)
                return
        handed_off = self.pool.release(exchange.lease, reusable=True, expires_in=expires_in)
        if handed_off and self.cooperate is not None:
            self.cooperate()  # the request just handed this connection sends first

    def probe(self, origin: Origin, target: str, host_header: str, timeout: float) -> int:
        """GET ``target`` on a connection of its own, outside the pool; the status.

        The health thread's probe: it must not wait behind a full pool, nor leave a
        connection in it. Raises the urllib3/socket error when the upstream fails.
        """
        origin_pool = self.origin_pool(origin)
        conn: HTTPConnection = origin_pool._new_conn()  # type: ignore[assignment]
        conn.timeout = timeout
        try:
            head = _request_head(
                "GET", target, {"Host": host_header, "User-Agent": "wsgiproxy-health"}, None
            )
            _send_request(conn, head, None, chunked=False)
            response = _read_response(conn, "GET")
            try:
                response.read(65536)
                return response.status
            finally:
                response.close()
        finally:
            conn.close()

    def close(self) -> None:
        """Close every idle connection; used when the worker exits."""
        self.pool.close()


def _request_head(
    method: str, target: str, headers: dict[str, str], body: RequestBody | None
) -> bytes:
    """The request line and header block, encoded once (also for a replay).

    The request line gets the checks http.client's ``putrequest`` makes; a method or
    target it cannot carry raises BadRequest (400) before any connection is taken. The
    header values come from the client's request, which gunicorn (or werkzeug) has
    already checked for CR, LF and NUL, and from this proxy itself.
    """
    if _BAD_METHOD.search(method) is not None or not method:
        raise BadRequest(f"method {method[:40]!r} is not an HTTP token")
    if _BAD_TARGET.search(target) is not None or not target.isascii():
        raise BadRequest(f"request target {target[:80]!r} has spaces, controls or non-ASCII")
    lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
    lines.extend(f"{name}: {value}".encode("latin-1", "replace") for name, value in headers.items())
    if body is not None and body.chunked:
        lines.append(b"Transfer-Encoding: chunked")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _send_request(
    conn: HTTPConnection, head: bytes, body: RequestBody | None, chunked: bool
) -> None:
    """Write the request on the connection, framing the body as given.

    The head goes out as one ``bytes`` (one ``send``): http.client's ``putrequest`` and
    ``endheaders`` (a state machine we do not use, a buffer and a join) cost more than
    the send itself.
    """
    conn.send(head)
    if body is None:
        return
    for chunk in body:
        conn.send(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
    if chunked:
        conn.send(b"0\r\n\r\n")


def _read_response(conn: HTTPConnection, method: str) -> UpstreamResponse:
    """Read the response head on ``conn``; its body is left for the caller to stream.

    What ``http.client.HTTPConnection.getresponse`` does, less the state machine
    ``_send_request`` does not use: a response that will close the connection takes
    the socket with it (``conn`` is closed, so it never goes back to the pool).
    """
    response = UpstreamResponse(conn.sock, method=method)
    try:
        response.begin()
    except ConnectionError:
        response.close()
        conn.close()
        raise
    except BaseException:
        response.close()
        raise
    if response.will_close:
        conn.close()  # the response holds its own reference to the socket
    return response


# http.client's request-line checks (``_validate_method``, ``_validate_path``).
# A method is a token (RFC 9110 5.6.2), as urllib3's ``putrequest`` required.
_BAD_METHOD = re.compile(r"[^-!#$%&'*+.^_`|~0-9a-zA-Z]")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")


def _unpatched_poll() -> Callable[[], Any]:
    """``select.poll`` as the OS has it, also where gevent replaced it with its own
    (which waits through the hub even for a zero timeout)."""
    if "gevent" in sys.modules:
        from gevent import monkey

        original: Callable[[], Any] = monkey.get_original("select", "poll")
        return original
    return select.poll


_poll = _unpatched_poll()


def is_dropped(sock: Any) -> bool:
    """True when an idle connection's socket was closed by the peer, or holds bytes
    nobody asked for: either way it must not carry another request.

    One ``poll`` with a zero timeout on the OS socket (readable means EOF, an error, or
    unsolicited bytes). Under gevent, urllib3's ``wait_for_read`` goes through the hub
    (8% of a request's CPU); a non-blocking ``MSG_PEEK`` that finds nothing raises
    BlockingIOError, which costs more than the system call (1.7 against 0.7 us). On a
    TLS socket the poll sees the raw bytes, where a pending close is just as visible.
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


def _peer(sock: Any) -> str:
    """The address a connected socket talks to ('' if it cannot say)."""
    try:
        return str(sock.getpeername()[0])
    except (OSError, IndexError, TypeError):
        return ""


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def _connect_error(origin: Origin, settings: Settings, exc: BaseException) -> Exception:
    """Map a failed connect to what the client sees: 504 for a timeout, else 502."""
    where = format_origin(origin)
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2.x: test it first,
    # or refused connections would turn into 504s.
    if isinstance(exc, NameResolutionError):
        return UpstreamConnectError(f"cannot resolve upstream host of {where}")
    if isinstance(exc, NewConnectionError):
        reason = exc.__cause__ or exc.__context__ or exc
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return UpstreamTimeout(
                f"connecting to upstream {where} took over {settings.connect_timeout:g}s"
                " (HTTP_CONNECT_TIMEOUT)"
            )
        return UpstreamConnectError(f"upstream {where} refused or unreachable: {_one_line(reason)}")
    if isinstance(exc, (ConnectTimeoutError, TimeoutError, socket.timeout)):
        return UpstreamTimeout(
            f"connecting to upstream {where} took over {settings.connect_timeout:g}s"
            " (HTTP_CONNECT_TIMEOUT)"
        )
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)) or "certificate" in str(exc).lower():
        return UpstreamConnectError(
            f"TLS handshake with upstream {where} failed: {_one_line(exc)}"
            " (set HTTP_CA_BUNDLE to the CA that signed it)"
        )
    return UpstreamConnectError(f"cannot connect to upstream {where}: {_one_line(exc)}")


__all__ = [
    "Exchange",
    "OriginPool",
    "ProxyPoolManager",
    "RequestBody",
    "UpstreamClient",
    "keepalive_timeout",
]
