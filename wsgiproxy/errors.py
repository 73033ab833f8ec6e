"""The errors the proxy itself answers with.

Every refusal or failure the proxy produces is one of these. Each carries the status a
client gets and the ``X-Proxy-Error`` kind, so ``proxy/responses.py`` maps them to a
response in one place (the way h11 gives each ``ProtocolError`` an ``error_status_hint`` and
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


class ProxyAuthRequired(ProxyError):
    """Missing or wrong proxy credentials: 407 with ``Proxy-Authenticate``."""

    status = 407
    kind = "proxy-auth-required"

    #: The challenge a 407 carries.
    CHALLENGE = 'Basic realm="wsgiproxy"'

    def __init__(self, message: str) -> None:
        super().__init__(message, headers=[("Proxy-Authenticate", self.CHALLENGE)])


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


#: Where an upstream exchange failed; the layer that picks servers decides on it.
NOT_SENT = "not-sent"  # no byte of the request reached the upstream
SENT = "sent"  # request bytes went out, no response byte came back
RESPONDING = "responding"  # the response had started


class UpstreamError(ProxyError):
    """An exchange with an upstream failed; ``stage`` says how far it got.

    The client raises these and decides nothing; the handler decides whether the request
    may go again (a request never sent may; one sent only when idempotent and replayable;
    one whose response started never).
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.stage = stage


class UpstreamConnectError(UpstreamError):
    """The upstream refused the connection or could not be reached."""

    status = 502
    kind = "upstream-refused"


class UpstreamProtocolError(UpstreamError):
    """The upstream broke the exchange: reset, closed early, or sent an invalid response."""

    status = 502
    kind = "upstream-error"


class UpstreamAborted(UpstreamProtocolError):
    """The upstream's response broke off after it had started reaching the client."""

    kind = "upstream-aborted"


class StaleConnection(UpstreamProtocolError):
    """A reused idle connection was closed by the upstream before any response byte.

    The keep-alive race, not an answer from the upstream. ``retry`` is the pool slot the
    request still holds: pass it back to ``UpstreamClient.send`` to replay on a new
    connection without queueing again, or to ``UpstreamClient.abandon`` to free it.
    """

    def __init__(self, message: str, retry: object) -> None:
        super().__init__(message, stage=SENT)
        self.retry = retry


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect, accept the request, or answer in time."""

    status = 504
    kind = "upstream-timeout"


class PoolExhausted(ProxyError):
    """No pooled connection came free within ``HTTP_POOL_TIMEOUT``."""

    status = 503
    kind = "pool-timeout"
