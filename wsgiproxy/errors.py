"""The errors the proxy itself answers with.

Every refusal or failure the proxy produces is one of these. Each carries the status a
client gets and the ``X-Proxy-Error`` kind, so ``forwarding.py`` maps them to a response
in one place (the way h11 gives each ``ProtocolError`` an ``error_status_hint`` and
gunicorn gives its parse errors a ``code``). The message is the one-line body: it names
the thing that failed, the limit and the setting to change, never a traceback.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base of the tree: ``status`` and ``kind`` say how a client sees it."""

    status: int = 502
    kind: str = "proxy-error"

    def __init__(self, message: str, *, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Extra response headers (``Retry-After``, ``Proxy-Authenticate``...).
        self.headers = headers or []


class BadRequest(ProxyError):
    """The client's request is malformed or ambiguous; nothing reached the upstream."""

    status = 400
    kind = "bad-request"


class ClientBodyError(BadRequest):
    """The request body broke mid-stream (bad chunk, client gone).

    Raised while the body is being relayed, so the upstream connection it was going to
    is closed, never reused: the upstream saw an incomplete request, not a wrong one.
    """

    kind = "bad-request-body"


class Forbidden(ProxyError):
    """The request is well-formed but this proxy will not carry it."""

    status = 403
    kind = "forbidden"


class NoRoute(ProxyError):
    """An origin-form request whose path no upstream is configured for."""

    status = 404
    kind = "no-upstream"


class BodyTooLarge(ProxyError):
    """The request body is over ``PROXY_MAX_BODY``."""

    status = 413
    kind = "body-too-large"


class NotSupported(ProxyError):
    """A feature the proxy does not implement (a transfer coding, CONNECT here)."""

    status = 501
    kind = "not-implemented"


class UpstreamConnectError(ProxyError):
    """The upstream refused the connection or could not be reached."""

    status = 502
    kind = "upstream-refused"


class UpstreamProtocolError(ProxyError):
    """The upstream broke the exchange: reset, closed early, or sent an invalid response."""

    status = 502
    kind = "upstream-error"


class UpstreamTimeout(ProxyError):
    """The upstream did not connect, accept the request, or answer in time."""

    status = 504
    kind = "upstream-timeout"


class PoolExhausted(ProxyError):
    """No pooled connection came free within ``HTTP_POOL_TIMEOUT``."""

    status = 503
    kind = "pool-timeout"
