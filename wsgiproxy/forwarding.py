"""WSGI request -> upstream request -> WSGI response.

The proxying path, kept off Flask's routing so a proxied request costs only what it
must: resolve the destination, rewrite the headers a proxy owns (hop-by-hop removed,
``X-Forwarded-*`` and ``Via`` set), relay the body as it arrives, and stream the response
back as the upstream sends it. Every ``ProxyError`` becomes a one-line plain-text
response with ``X-Proxy-Error`` here, in one place.
"""

from __future__ import annotations

import errno
import functools
import http.client
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

from .auth import ProxyAuth
from .config import Settings
from .errors import (
    BadRequest,
    BodyTooLarge,
    NotSupported,
    ProxyError,
    UpstreamProtocolError,
)
from .metrics import Metrics
from .pool import format_origin
from .routing import Router, raw_target
from .tunnel import Tunnels
from .upstream import Exchange, RequestBody, UpstreamClient

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]

#: Hop-by-hop headers (RFC 9110 7.6.1), plus the proxy-only ones: never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Request headers this hop writes itself (or has already acted on).
_REPLACED = frozenset({"host", "expect", "x-forwarded-proto", "x-forwarded-host", "via"})
_READ_SIZE = 64 * 1024


def _connection_tokens(value: str | None) -> frozenset[str]:
    """The header names a ``Connection`` header lists: also hop-by-hop for this message."""
    if not value:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


@functools.lru_cache(maxsize=1024)
def _header_name(key: str) -> tuple[str, str]:
    """``HTTP_X_FORWARDED_FOR`` -> (``X-Forwarded-For``, ``x-forwarded-for``).

    Cached: the same few dozen header names come with every request."""
    name = "-".join(part.capitalize() for part in key[5:].split("_"))
    return name, name.lower()


def _append(existing: str | None, value: str) -> str:
    return f"{existing}, {value}" if existing else value


def plain_response(
    start_response: StartResponse,
    status: int,
    message: str,
    *,
    kind: str,
    headers: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    """A one-line ``text/plain`` response naming what failed, tagged ``X-Proxy-Error``."""
    body = (" ".join(message.split()) + "\n").encode("utf-8", "replace")
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    extra = list(headers)
    start_response(
        f"{status} {phrase}",
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("X-Proxy-Error", kind),
            *extra,
        ],
    )
    # gunicorn silently drops hop-by-hop headers from WSGI responses, Proxy-Authenticate
    # among them, yet a 407 is useless without it: put it on gunicorn's response directly.
    server_response = getattr(start_response, "__self__", None)
    server_headers = getattr(server_response, "headers", None)
    if isinstance(server_headers, list):
        for name, value in extra:
            if name.lower() == "proxy-authenticate" and (name, value) not in server_headers:
                server_headers.append((name, value))
    return [body]


class Forwarder:
    """The WSGI callable that proxies one request; one per app.

    It also keeps the requests in flight (for leak accounting: a connection held longer
    than any request still running is a leak) and records each request's metrics once,
    when its response ends. For gunicorn's access log it leaves ``wsgiproxy.upstream_ms``,
    ``wsgiproxy.pool_wait_ms`` and ``wsgiproxy.conn`` (new/reused) in the environ.
    """

    def __init__(
        self,
        settings: Settings,
        client: UpstreamClient,
        metrics: Metrics,
        auth: ProxyAuth | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.router = Router(settings, auth)
        self.tunnels = Tunnels(settings, self.router)
        self.cooperate = client.cooperate  # one decision per worker: gevent or threads
        self.via = "wsgiproxy"
        #: Requests being answered: id(environ) -> start (time.monotonic()).
        self.in_flight: dict[int, float] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        key = id(environ)
        self.in_flight[key] = started
        method = environ.get("REQUEST_METHOD", "GET")
        raw = raw_target(environ)
        try:
            if method == "CONNECT":
                upstream = self.tunnels.open(environ, raw)
                try:
                    return self.tunnels.relay(environ, start_response, upstream)
                finally:
                    self.done(key, method, 200, started)
            target = self.router.resolve(environ, raw)
            body = self._request_body(environ)
            headers = self._request_headers(environ, target.host_header)
            exchange = self.client.send(
                target.origin,
                method,
                target.path,
                headers,
                body,
                address=target.address,
                peer_allowed=target.peer_allowed,
            )
            self.metrics.observe_pool_wait(exchange.pool_wait)
            environ["wsgiproxy.pool_wait_ms"] = f"{exchange.pool_wait * 1000:.1f}"
            environ["wsgiproxy.upstream_ms"] = (
                f"{(time.monotonic() - started - exchange.pool_wait) * 1000:.1f}"
            )
            environ["wsgiproxy.conn"] = "reused" if exchange.reused else "new"
            try:
                status, response_headers = self._response_head(exchange)
            except ProxyError:
                self.client.finish(exchange, complete=False)
                raise
        except ProxyError as exc:
            level = logging.WARNING if exc.status >= 500 else logging.INFO
            log.log(level, "%s %s -> %d: %s", method, raw[:200], exc.status, exc.message)
            self.done(key, method, exc.status, started, exc.kind)
            return plain_response(
                start_response, exc.status, exc.message, kind=exc.kind, headers=exc.headers
            )
        start_response(status, response_headers)
        return ResponseBody(self, exchange, method, raw, key, started)

    def done(
        self, key: int, method: str, status: int, started: float, error: str | None = None
    ) -> None:
        """A request is over: it leaves the in-flight table and its metrics are recorded."""
        self.in_flight.pop(key, None)
        self.metrics.observe_request(method, status, time.monotonic() - started)
        if error is not None:
            self.metrics.upstream_errors.labels(error).inc()

    # -- request ----------------------------------------------------------------------
    def _request_body(self, environ: dict[str, Any]) -> RequestBody | None:
        """The body to relay, after the framing checks that must happen before sending.

        Raises NotSupported (501) for a transfer coding other than ``chunked`` alone,
        BadRequest (400) for an unreadable length, BodyTooLarge (413) over the limit.
        """
        coding = environ.get("HTTP_TRANSFER_ENCODING")
        length_text = environ.get("CONTENT_LENGTH") or ""
        max_body = self.settings.max_body
        if coding is not None:
            if coding.strip().lower() != "chunked":
                raise NotSupported(
                    f"Transfer-Encoding {coding[:60]!r} is not supported; only chunked is"
                )
            if length_text:
                raise BadRequest("request has both Content-Length and Transfer-Encoding")
            body = RequestBody(environ["wsgi.input"], None, max_body)
            body.prime()
            return body
        if not length_text:
            return None
        if not length_text.isdigit():
            raise BadRequest(f"bad Content-Length {length_text[:40]!r}")
        length = int(length_text)
        if max_body and length > max_body:
            raise BodyTooLarge(
                f"request body of {length} bytes is over {max_body} (PROXY_MAX_BODY)"
            )
        body = RequestBody(environ["wsgi.input"], length, max_body)
        body.prime()
        return body

    def _request_headers(self, environ: dict[str, Any], host_header: str) -> dict[str, str]:
        """Headers for the upstream: the client's, less hop-by-hop, plus this hop's own."""
        dropped = _connection_tokens(environ.get("HTTP_CONNECTION"))
        headers: dict[str, str] = {"Host": host_header}
        for key, value in environ.items():
            if not key.startswith("HTTP_"):
                continue
            name, lowered = _header_name(key)
            if lowered in HOP_BY_HOP or lowered in _REPLACED or lowered in dropped:
                continue
            headers[name] = value
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        if environ.get("CONTENT_LENGTH") and "HTTP_TRANSFER_ENCODING" not in environ:
            headers["Content-Length"] = environ["CONTENT_LENGTH"]
        client = environ.get("REMOTE_ADDR")
        if client:
            headers["X-Forwarded-For"] = _append(headers.get("X-Forwarded-For"), client)
        headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
        if environ.get("HTTP_HOST"):
            headers["X-Forwarded-Host"] = environ["HTTP_HOST"]
        version = environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2] or "1.1"
        headers["Via"] = _append(environ.get("HTTP_VIA"), f"{version} {self.via}")
        return headers

    # -- response ---------------------------------------------------------------------
    def _response_head(self, exchange: Exchange) -> tuple[str, list[tuple[str, str]]]:
        """Status line and headers for the client: hop-by-hop removed, ``Via`` added.

        Raises UpstreamProtocolError (502) for a header a client must not receive.
        """
        response = exchange.response
        where = format_origin(exchange.origin)
        index = response.headers.index
        if "transfer-encoding" in index and "content-length" in index:
            # Which framing did the client's side see? Ambiguous, so refused (as nginx).
            raise UpstreamProtocolError(
                f"upstream {where} sent both Content-Length and Transfer-Encoding"
            )
        lengths = set(index.get("content-length", ()))
        if len(lengths) > 1 or (len(lengths) == 1 and "," in next(iter(lengths))):
            raise UpstreamProtocolError(f"upstream {where} sent conflicting Content-Lengths")
        connection = index.get("connection")
        dropped = _connection_tokens(",".join(connection)) if connection else frozenset()
        headers: list[tuple[str, str]] = []
        via: str | None = None
        for name, value in response.headers._headers:
            lowered = name.lower()
            if lowered in HOP_BY_HOP or lowered in dropped:
                continue
            if lowered == "via":
                via = _append(via, value)
                continue
            headers.append((name, value))
        version = "1.0" if response.version == 10 else "1.1"
        headers.append(("Via", _append(via, f"{version} {self.via}")))
        reason = response.reason or (
            HTTPStatus(response.status).phrase
            if response.status in HTTPStatus._value2member_map_
            else "Unknown"
        )
        return f"{response.status} {reason}", headers


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
    ) -> None:
        self._forwarder = forwarder
        self._exchange = exchange
        self._method = method
        self._raw = raw
        self._key = key
        self._started = started
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
            data = response.read1(_READ_SIZE)
            if not data and response.incomplete:
                raise http.client.IncompleteRead(b"", response.length)
        except (http.client.HTTPException, OSError, ValueError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            self._error = "upstream-timeout" if timed_out else "upstream-aborted"
            log.warning(
                "%s %s: upstream %s response %s mid-body: %s; aborting the client's response",
                self._method,
                self._raw[:200],
                format_origin(self._exchange.origin),
                "timed out" if timed_out else "broke off",
                " ".join(str(exc).split())[:200],
            )
            self._forwarder.client.pool.note_error()
            self.close()
            raise ConnectionResetError(errno.ECONNRESET, "upstream response broke off") from exc
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
        forwarder = self._forwarder
        forwarder.done(
            self._key, self._method, self._exchange.response.status, self._started, self._error
        )
        if forwarder.cooperate is not None:
            forwarder.cooperate()
