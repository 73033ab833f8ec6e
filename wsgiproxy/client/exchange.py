"""One request on a pooled upstream connection: take one, send, read the head, give back.

``UpstreamClient`` is the one way a request goes upstream. It decides nothing about
retries: when an exchange fails it raises an ``UpstreamError`` whose ``stage`` says how
far it got (not sent / sent, no response byte / responding), and ``StaleConnection`` when
a reused idle connection turns out closed by the upstream before any response byte (the
keep-alive race). The handler above decides whether and where the request goes again.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from urllib3.connection import HTTPConnection
from urllib3.exceptions import HTTPError

from ..addresses import Origin, format_origin
from ..buffers import BLOCK
from ..concurrency import cooperative_yield
from ..errors import (
    SENT,
    BodyTooLarge,
    ClientBodyError,
    PoolExhausted,
    StaleConnection,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ..settings import PoolSettings, Timeouts, TLSSettings
from .body import RequestBody
from .http1 import (
    LAST_CHUNK,
    UpstreamResponse,
    chunk,
    keepalive_timeout,
    request_head,
    response_framing_error,
)
from .manager import MAX_ORIGINS, OriginPool, ProxyPoolManager
from .pool import Decision, Lease, Limits, Pool, PoolTimeout
from .transport import connect_error, is_dropped, one_line, peer_address

log = logging.getLogger(__name__)

# Errors that mean "the peer closed or reset the socket": on a reused connection before
# any response byte, that is the keep-alive race, not an answer from the upstream.
_STALE_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


@dataclass
class Outgoing:
    """A request ready to go upstream: its head encoded once, for a replay too.

    ``address``, when given, is the address new connections dial (the one the forward
    policy checked); ``peer_allowed`` is that check, applied to a reused connection.
    """

    origin: Origin
    origin_pool: OriginPool
    method: str
    target: str
    head: bytes
    body: RequestBody | None
    address: str | None = None
    peer_allowed: Callable[[str], bool] | None = None


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


class UpstreamClient:
    """Sends requests upstream over pooled connections; one per worker process.

    Built by ``create_app`` in the worker (after gevent has patched), never in the
    gunicorn master. ``send`` returns an ``Exchange`` whose response body the caller
    streams, then ``finish`` gives the connection back: to the pool when the response was
    read whole and the upstream keeps the connection open, closed otherwise.
    """

    def __init__(
        self,
        limits: PoolSettings,
        timeouts: Timeouts,
        tls: TLSSettings,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        self.timeouts = timeouts
        self.reuse = limits.enabled
        self.cooperate = cooperative_yield()
        self.pool: Pool[HTTPConnection] = Pool(
            Limits(
                max_connections=limits.max_connections,
                max_keepalive=limits.max_keepalive if limits.enabled else 0,
                keepalive_expiry=limits.keepalive_expiry,
            ),
            on_decision=on_decision,
        )
        tls_kw: dict[str, Any] = {}
        if tls.verify:
            tls_kw["cert_reqs"] = "CERT_REQUIRED"
            if tls.ca_bundle:
                tls_kw["ca_certs"] = tls.ca_bundle
        else:
            tls_kw["cert_reqs"] = "CERT_NONE"
            tls_kw["assert_hostname"] = False
        #: Failed connects since start (the health thread judges "cannot connect" by it).
        self.connect_errors = 0
        #: The module-level PoolManager (``wsgiproxy.app.pool_manager``).
        self.manager = ProxyPoolManager(self.pool, MAX_ORIGINS, **tls_kw)

    def prepare(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: dict[str, str],
        body: RequestBody | None,
        *,
        origin_pool: OriginPool | None = None,
        address: str | None = None,
        peer_allowed: Callable[[str], bool] | None = None,
    ) -> Outgoing:
        """The request as it will go out. ``target`` goes on the request line byte for
        byte; ``headers`` are sent as given. Raises BadRequest (400) for a method or
        target the request line cannot carry, before any connection is taken."""
        head = request_head(method, target, headers, body is not None and body.chunked)
        if origin_pool is None:
            origin_pool = self.manager.origin_pool(origin)
        return Outgoing(origin, origin_pool, method, target, head, body, address, peer_allowed)

    # -- checkout ---------------------------------------------------------------------
    def _checkout(self, request: Outgoing) -> tuple[Lease[HTTPConnection], HTTPConnection]:
        """A live connection to the origin: reused if an idle one is still open, else new.

        A reused one must have a peer ``peer_allowed`` accepts, or it is replaced: a
        connection opened for a client allowed to reach a private address is never
        handed to one that is not. Raises PoolExhausted (503), UpstreamConnectError
        (502) or UpstreamTimeout (504).
        """
        timeout = self.timeouts.pool
        try:
            lease = self.pool.acquire(request.origin, timeout)
        except PoolTimeout as exc:
            raise PoolExhausted(
                str(exc), headers=[("Retry-After", str(max(1, round(timeout))))]
            ) from exc
        conn = lease.conn
        if conn is None:
            return lease, self._connect(request, lease)
        sock = conn.sock
        # An idle socket that polls readable was closed by the upstream (or holds bytes
        # nobody asked for): replace it now rather than lose a request to it. The lease
        # keeps its slot, so the request does not queue again behind later arrivals.
        allowed = request.peer_allowed
        if (
            sock is None
            or is_dropped(sock)
            or (allowed is not None and not allowed(peer_address(sock)))
        ):
            lease = self.pool.renew(lease)
            return lease, self._connect(request, lease)
        return lease, conn

    def _connect(self, request: Outgoing, lease: Lease[HTTPConnection]) -> HTTPConnection:
        """Open the connection for a new slot; on failure free the slot and say why."""
        conn: HTTPConnection = request.origin_pool._new_conn()  # type: ignore[assignment]
        if request.address is not None:
            # Connect to the checked address; Host and TLS SNI/verification still use
            # the name (urllib3 keeps ``host`` for those and dials ``_dns_host``).
            conn._dns_host = request.address
        conn.timeout = self.timeouts.connect
        try:
            conn.connect()
        except BaseException as exc:
            conn.close()
            self.pool.connect_failed(lease)
            self.pool.note_error()
            self.connect_errors += 1
            raise connect_error(request.origin, self.timeouts.connect, exc) from exc
        self.pool.connected(lease, conn)
        return conn

    # -- exchange ---------------------------------------------------------------------
    def send(self, request: Outgoing, retry: object = None) -> Exchange:
        """Send the request and read the response head; the body is left to stream.

        ``retry``: the slot a ``StaleConnection`` carried; the request then goes out on a
        new connection in that slot, without queueing again. Raises PoolExhausted (503),
        BadRequest/ClientBodyError (400) or BodyTooLarge (413) from the client's body,
        StaleConnection, or another UpstreamError with its stage.
        """
        started = time.monotonic()
        if retry is None:
            lease, conn = self._checkout(request)
        else:
            assert isinstance(retry, Lease)
            lease = self.pool.renew(retry)
            conn = self._connect(request, lease)
        pool_wait = time.monotonic() - started
        timeouts = self.timeouts
        where = request.origin
        sending = True
        try:
            # The socket's own timeout is what bounds each send and each read
            # (http.client and urllib3 do not re-apply ``conn.timeout`` here).
            conn.sock.settimeout(timeouts.write)
            _send_request(conn, request)
            sending = False
            conn.sock.settimeout(timeouts.read)
            response = _read_response(conn, request.method)
        except (ClientBodyError, BodyTooLarge):
            conn.close()
            self.pool.discard(lease)
            raise
        except _STALE_ERRORS as exc:
            conn.close()
            message = (
                f"upstream {format_origin(where)} closed the connection before answering"
                f" ({type(exc).__name__})"
            )
            if lease.reused:
                # The slot stays held: the caller replays on it or abandons it.
                raise StaleConnection(message, retry=lease) from exc
            self.pool.discard(lease)
            self.pool.note_error()
            raise UpstreamProtocolError(message, stage=SENT) from exc
        except TimeoutError as exc:
            conn.close()
            self.pool.discard(lease)
            self.pool.note_error()
            if sending:
                message = (
                    f"upstream {format_origin(where)} took the request body no faster than"
                    f" {timeouts.write:g}s per block (HTTP_WRITE_TIMEOUT)"
                )
            else:
                message = (
                    f"upstream {format_origin(where)} sent no response within "
                    f"{timeouts.read:g}s (HTTP_READ_TIMEOUT)"
                )
            raise UpstreamTimeout(message, stage=SENT) from exc
        except (OSError, http.client.HTTPException, HTTPError, ValueError) as exc:
            conn.close()
            self.pool.discard(lease)
            self.pool.note_error()
            raise UpstreamProtocolError(
                f"upstream {format_origin(where)} sent an invalid response: {one_line(exc)}",
                stage=SENT,
            ) from exc
        except BaseException:
            # GreenletExit, KeyboardInterrupt...: the slot must not outlive the request.
            conn.close()
            self.pool.discard(lease)
            raise
        problem = response_framing_error(response.headers.index)
        if problem is not None:
            # Which framing would the client's side see? Ambiguous, so refused (as nginx).
            response.close()
            conn.close()
            self.pool.discard(lease)
            self.pool.note_error()
            raise UpstreamProtocolError(f"upstream {format_origin(where)} {problem}", stage=SENT)
        return Exchange(response, conn, lease, where, lease.reused, pool_wait)

    def abandon(self, retry: object) -> None:
        """Free the slot a ``StaleConnection`` carried, when the request will not replay."""
        assert isinstance(retry, Lease)
        self.pool.discard(retry)
        self.pool.note_error()

    def note_retry(self) -> None:
        """Count a request sent again (the pool's ``retries`` figure)."""
        self.pool.note_retry()

    def finish(self, exchange: Exchange, complete: bool) -> None:
        """Give the connection back: pooled if the body was read whole and it stays open.

        Anything else (client gone, upstream reset, timeout, ``Connection: close``) closes
        it, so a half-read response can never leak into the next request.
        """
        conn = exchange.conn
        response = exchange.response
        response.close()
        if not complete or conn.is_closed or not self.reuse:
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

    def probe(self, origin_pool: OriginPool, target: str, host_header: str, timeout: float) -> int:
        """GET ``target`` on a connection of its own, outside the pool; the status.

        The health thread's probe: it must not wait behind a full pool, nor leave a
        connection in it. Raises the urllib3/socket error when the upstream fails.
        """
        conn: HTTPConnection = origin_pool._new_conn()  # type: ignore[assignment]
        conn.timeout = timeout
        try:
            head = request_head(
                "GET", target, {"Host": host_header, "User-Agent": "wsgiproxy-health"}, False
            )
            conn.send(head)
            response = _read_response(conn, "GET")
            try:
                response.read(BLOCK)
                return response.status
            finally:
                response.close()
        finally:
            conn.close()

    def stats(self) -> dict[str, int]:
        """The client's own figures beside the pool's: origins known, failed connects."""
        return {
            "origins": self.manager.origins(),
            "max_origins": self.manager.max_origins,
            "connect_errors": self.connect_errors,
        }

    def close(self) -> None:
        """Close every idle connection; used when the worker exits."""
        self.pool.close()


def _send_request(conn: HTTPConnection, request: Outgoing) -> None:
    """Write the request on the connection, framing the body as its head says.

    The head goes out as one ``bytes`` (one ``send``): http.client's ``putrequest`` and
    ``endheaders`` (a state machine we do not use, a buffer and a join) cost more than
    the send itself.
    """
    conn.send(request.head)
    body = request.body
    if body is None:
        return
    if body.chunked:
        for data in body:
            conn.send(chunk(data))
        conn.send(LAST_CHUNK)
    else:
        for data in body:
            conn.send(data)


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


__all__ = ["Exchange", "Outgoing", "RequestBody", "UpstreamClient"]
