"""WSGI request -> upstream request -> WSGI response.

The proxying path, kept off Flask's routing so a proxied request costs only what it
must: route it to a server (or a forward destination), rewrite the headers a proxy owns,
relay the body as it arrives, and stream the response back as the upstream sends it.
Whether a failed exchange goes again is decided here, not in the client. Every
``ProxyError`` becomes a one-line plain-text response with ``X-Proxy-Error``. ``CONNECT``
and a WebSocket handshake the upstream accepts (101) end in a byte relay
(``proxy/tunnel.py``, ``proxy/upgrade.py``) instead of a streamed response.
"""

from __future__ import annotations

import errno
import http.client
import logging
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..addresses import format_origin
from ..buffers import BLOCK
from ..client.body import RequestBody
from ..client.exchange import Exchange, Outgoing, UpstreamClient
from ..client.http1 import request_framing
from ..errors import (
    RESPONDING,
    SENT,
    ProxyError,
    StaleConnection,
    UpstreamAborted,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ..metrics import Metrics
from ..settings import BalancingSettings, RequestSettings
from ..upstreams.server import Server
from . import request_id, upgrade
from .failover import IDEMPOTENT, Attempts, Failover
from .headers import request_headers, response_head, switching_head, wants_websocket
from .responses import StartResponse, plain_response
from .routing import Router, Target, raw_target
from .tunnel import Tunnels

log = logging.getLogger(__name__)


class Forwarder:
    """The WSGI callable that proxies one request; one per app.

    It also keeps the requests in flight (for leak accounting: a connection held longer
    than any request still running is a leak) and records each request's metrics once,
    when its response ends. For gunicorn's access log it leaves ``wsgiproxy.upstream_ms``,
    ``wsgiproxy.pool_wait_ms`` and ``wsgiproxy.conn`` (new/reused) in the environ.
    """

    def __init__(
        self,
        requests: RequestSettings,
        balancing: BalancingSettings,
        client: UpstreamClient,
        metrics: Metrics,
        router: Router,
        tunnels: Tunnels,
    ) -> None:
        self.max_body = requests.max_body
        self.request_ids = requests.request_id
        self.preserve_host = requests.preserve_host
        self.client = client
        self.metrics = metrics
        self.router = router
        self.tunnels = tunnels
        self.cooperate = client.cooperate  # one decision per worker: gevent or threads
        #: Requests being answered: id(environ) -> start (time.monotonic()).
        self.in_flight: dict[int, float] = {}
        self.failover = Failover(
            balancing, client, metrics, self._exchange, lambda: len(self.in_flight)
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        key = id(environ)
        method = environ.get("REQUEST_METHOD", "GET")
        raw = raw_target(environ)
        self.in_flight[key] = started
        server: Server | None = None
        exchange: Exchange | None = None
        upgraded: tuple[socket.socket, bytes, bytes, str] | None = None
        rid: str | None = None  # assigned once the request's headers are built
        try:
            if method == "CONNECT":
                if self.request_ids:
                    rid = request_id.assign(environ)
                upstream = self.tunnels.open(environ, raw)
                try:
                    return self.tunnels.relay(environ, start_response, upstream)
                finally:
                    self.done(key, method, 200, started)
            target = self.router.resolve(environ, raw)
            websocket = wants_websocket(environ)
            if websocket:
                upgrade.require_client_socket(environ)
            body = self._request_body(environ)
            headers = request_headers(environ, target.host_header, websocket=websocket)
            if self.request_ids:
                # After request_headers, whose walk of the environ need not see the id.
                rid = headers["X-Request-Id"] = request_id.assign(environ)
            if target.group is not None:
                attempts = Attempts()
                try:
                    exchange = self.failover.send(
                        target.group,
                        method,
                        raw,
                        headers,
                        body,
                        self.preserve_host and "HTTP_HOST" in environ,
                        attempts,
                    )
                except BaseException:
                    self._log_attempts(environ, attempts, None)
                    raise
                self._log_attempts(environ, attempts, exchange.pool_wait)
                server = attempts.servers[-1]  # started; ResponseBody.close finishes it
            else:
                exchange = self._forward(target, method, headers, body)
                self.metrics.observe_pool_wait(exchange.pool_wait)
            environ["wsgiproxy.pool_wait_ms"] = f"{exchange.pool_wait * 1000:.1f}"
            environ["wsgiproxy.upstream_ms"] = (
                f"{(time.monotonic() - started - exchange.pool_wait) * 1000:.1f}"
            )
            environ["wsgiproxy.conn"] = "reused" if exchange.reused else "new"
            status, response_headers = response_head(exchange.response, rid)
            if exchange.response.status == 101:
                if not websocket:
                    raise UpstreamProtocolError(
                        f"upstream {format_origin(exchange.origin)} switched protocols "
                        "unasked (101 to a request that offered no upgrade)",
                        stage=SENT,
                    )
                head = switching_head(exchange.response)
                sock, early = upgrade.detach(self.client, exchange)
                exchange = None  # out of the pool: the relay owns its socket now
                upgraded = (sock, early, head, status)
        except ProxyError as exc:
            level = logging.WARNING if exc.status >= 500 else logging.INFO
            log.log(level, "%s %s -> %d: %s", method, raw[:200], exc.status, exc.message)
            self._abandon(exchange, server, exc.kind)
            self.done(key, method, exc.status, started, exc.kind)
            if not self.request_ids:
                return plain_response(
                    start_response, exc.status, exc.message, kind=exc.kind, headers=exc.headers
                )
            rid = rid or request_id.assign(environ)  # refused before its headers were built
            return plain_response(
                start_response,
                exc.status,
                f"{exc.message} (request id {rid})",
                kind=exc.kind,
                headers=[*exc.headers, ("X-Request-ID", rid)],
            )
        except BaseException:
            # Anything else (a closed pool at shutdown, GreenletExit): the request is over
            # all the same, and must not stay in the in-flight table as a phantom leak.
            self._abandon(exchange, server, "internal-error")
            self.done(key, method, 500, started, "internal-error")
            raise
        if upgraded is not None:
            return self._relay(environ, start_response, upgraded, server, key, method, started)
        assert exchange is not None
        start_response(status, response_headers)
        return ResponseBody(self, exchange, method, raw, key, started, server)

    def _relay(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        upgraded: tuple[socket.socket, bytes, bytes, str],
        server: Server | None,
        key: int,
        method: str,
        started: float,
    ) -> list[bytes]:
        """Relay an upgraded connection until it ends; the request (and its server's
        count of requests in flight, which ``least_conn`` weighs) lasts as long."""
        sock, early, head, status = upgraded
        try:
            return self.tunnels.splice(
                environ,
                start_response,
                sock,
                kind=upgrade.KIND,
                status=status,
                head=head,
                early_down=early,
            )
        finally:
            if server is not None:
                server.finished(None)
            self.done(key, method, 101, started)

    def _abandon(self, exchange: Exchange | None, server: Server | None, error: str) -> None:
        """A request that failed after its exchange began: close it, end it on its server."""
        if exchange is not None:
            self.client.finish(exchange, complete=False)
        if server is not None:
            server.finished(error)

    def _forward(
        self, target: Target, method: str, headers: dict[str, str], body: RequestBody | None
    ) -> Exchange:
        """A forward-proxy request: one destination, no group to fail over to."""
        request = self.client.prepare(
            target.origin,
            method,
            target.path,
            headers,
            body,
            address=target.address,
            peer_allowed=target.peer_allowed,
        )
        return self._exchange(request)

    def _log_attempts(
        self, environ: dict[str, Any], attempts: Attempts, pool_wait: float | None
    ) -> None:
        """The servers tried, for the access log, and their figures for the metrics."""
        servers, statuses = attempts.servers, attempts.statuses
        if len(servers) == 1 and statuses:  # the common case: no join, no zip
            server = servers[0]
            environ["wsgiproxy.upstream_addr"] = server.address
            environ["wsgiproxy.upstream_status"] = str(statuses[0])
            self.metrics.observe_attempts([(server.route, server.address, statuses[0])], pool_wait)
            return
        environ["wsgiproxy.upstream_addr"] = attempts.addresses()
        environ["wsgiproxy.upstream_status"] = attempts.status_text()
        self.metrics.observe_attempts(
            [(s.route, s.address, status) for s, status in zip(servers, statuses, strict=False)],
            pool_wait,
        )

    def _exchange(self, request: Outgoing) -> Exchange:
        """Send the request; replay it once on a new connection when the reused one it
        went out on was closed by the upstream before answering (the keep-alive race),
        if its method is idempotent and its body was kept whole."""
        try:
            return self.client.send(request)
        except StaleConnection as stale:
            body = request.body
            if request.method not in IDEMPOTENT or (body is not None and not body.replayable):
                self.client.abandon(stale.retry)
                raise
            self.client.note_retry()
            log.info(
                "%s; sending %s %s again on a new connection",
                stale.message,
                request.method,
                request.target[:200],
            )
            return self.client.send(request, retry=stale.retry)

    def done(
        self, key: int, method: str, status: int, started: float, error: str | None = None
    ) -> None:
        """A request is over: it leaves the in-flight table and its metrics are recorded."""
        self.in_flight.pop(key, None)
        self.metrics.observe_request(method, status, time.monotonic() - started)
        if error is not None:
            self.metrics.upstream_errors.labels(error).inc()

    def _request_body(self, environ: dict[str, Any]) -> RequestBody | None:
        """The body to relay, after the framing checks that must happen before sending.

        Raises NotSupported (501), BadRequest (400) or BodyTooLarge (413); see
        ``http1.request_framing``.
        """
        length = request_framing(
            environ.get("HTTP_TRANSFER_ENCODING"),
            environ.get("CONTENT_LENGTH") or "",
            self.max_body,
        )
        if length == 0:
            return None
        body = RequestBody(environ["wsgi.input"], length, self.max_body)
        body.prime()
        return body


class ResponseBody:
    """The upstream's response body as a WSGI iterable, relayed as it arrives.

    Each step returns what the upstream has sent so far (``read1``), so a streamed
    response reaches the client chunk by chunk. If the upstream fails mid-body the
    client's connection is aborted (a truncated message, never a complete-looking one):
    raising ``ConnectionResetError`` makes gunicorn and werkzeug drop the client socket
    without writing the final chunk, and without logging a traceback. The upstream
    connection goes back to the pool as soon as the body has all arrived (before the
    last bytes are written to the client); ``close``, always called by the server,
    gives it back (or closes it) if that has not happened yet.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        exchange: Exchange,
        method: str,
        raw: str,
        key: int,
        started: float,
        server: Server | None,
    ) -> None:
        self._forwarder = forwarder
        self._exchange = exchange
        self._method = method
        self._raw = raw
        self._key = key
        self._started = started
        self._server = server
        self._complete = False
        self._given_back = False
        self._closed = False
        self._error: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._complete:
            raise StopIteration
        response = self._exchange.response
        try:
            data = response.read1(BLOCK)
            if not data and response.incomplete:
                raise http.client.IncompleteRead(b"", response.length)
        except (http.client.HTTPException, OSError, ValueError) as exc:
            failure = self._failure(exc)
            self._error = failure.kind
            log.warning(
                "%s %s: %s; aborting the client's response",
                self._method,
                self._raw[:200],
                failure.message,
            )
            self._forwarder.client.pool.note_error()
            self.close()
            # gunicorn and werkzeug drop the client socket on this, without a last chunk.
            raise ConnectionResetError(errno.ECONNRESET, "upstream response broke off") from failure
        if not data:
            self._complete = True
            self._give_back()
            raise StopIteration
        if response.length == 0:
            # The declared length has all arrived: the upstream connection is free now,
            # before these last bytes are written to a client that may be slow.
            self._complete = True
            self._give_back()
        return bytes(data)

    def _failure(self, exc: BaseException) -> UpstreamError:
        """What broke mid-body, as the typed error of a response already started."""
        where = format_origin(self._exchange.origin)
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        if isinstance(exc, TimeoutError):
            message = f"upstream {where} response timed out mid-body: {detail}"
            return UpstreamTimeout(message, stage=RESPONDING)
        return UpstreamAborted(
            f"upstream {where} response broke off mid-body: {detail}", stage=RESPONDING
        )

    def _give_back(self) -> None:
        """Return (or close) the upstream connection, once."""
        if not self._given_back:
            self._given_back = True
            self._forwarder.client.finish(self._exchange, complete=self._complete)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._give_back()
        if self._server is not None:
            self._server.finished(self._error)
        forwarder = self._forwarder
        forwarder.done(
            self._key, self._method, self._exchange.response.status, self._started, self._error
        )
        if forwarder.cooperate is not None:
            forwarder.cooperate()
