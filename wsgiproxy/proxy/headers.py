"""The header rules of a proxy hop, both ways (RFC 9110 7.6).

Toward the upstream: the client's headers less hop-by-hop ones, with ``Host``,
``X-Forwarded-*`` and ``Via`` written by this hop. Toward the client: the upstream's
headers less hop-by-hop ones and its ``Date`` and ``Server`` (the server in front writes
its own, as nginx does), ``Via`` extended. One exception both ways: a WebSocket
handshake keeps ``Connection: Upgrade`` and ``Upgrade: websocket``, and its ``101`` keeps
them too, since the upgrade is what both ends asked of each other through this hop
(RFC 9110 7.8). Pure functions of their inputs, so the rules are tested without a server.
"""

from __future__ import annotations

import functools
from http import HTTPStatus
from typing import Any

from ..client.http1 import UpstreamResponse
from ..server.gunicorn import DROPPED_BY_GUNICORN, CheckedHeaders

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
#: Response headers the client gets from this hop, not the upstream: hop-by-hop ones,
#: and ``Date`` and ``Server``, which the server in front writes (nginx hides the
#: upstream's by default too). Whatever else gunicorn drops goes too, so that the
#: headers are ``CheckedHeaders``.
_NOT_RELAYED = HOP_BY_HOP | {"date", "server"} | DROPPED_BY_GUNICORN
#: The same, when this hop answers with its own ``X-Request-ID``.
_NOT_RELAYED_WITH_ID = _NOT_RELAYED | {"x-request-id"}
#: Request headers this hop writes itself (or has already acted on).
_REPLACED = frozenset({"host", "expect", "x-forwarded-proto", "x-forwarded-host", "via"})
#: This hop's name in ``Via``.
VIA = "wsgiproxy"


def connection_tokens(value: str | None) -> frozenset[str]:
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


def wants_websocket(environ: dict[str, Any]) -> bool:
    """Does this request ask to switch the connection to WebSocket (RFC 6455 4.1)?

    A GET over HTTP/1.1 whose ``Connection`` lists ``upgrade`` and whose ``Upgrade``
    offers ``websocket``. Anything else with an ``Upgrade`` header (``h2c``, ``TLS/1.2``,
    a WebSocket offer on POST or HTTP/1.0) is proxied as a plain request, the header
    dropped as hop-by-hop: this hop relays no protocol but WebSocket.
    """
    upgrade = environ.get("HTTP_UPGRADE")
    if not upgrade or environ.get("REQUEST_METHOD") != "GET":
        return False
    if environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        return False
    if "upgrade" not in connection_tokens(environ.get("HTTP_CONNECTION")):
        return False
    return any(
        token.strip().partition("/")[0].lower() == "websocket" for token in upgrade.split(",")
    )


def request_headers(
    environ: dict[str, Any], host_header: str, *, websocket: bool = False
) -> dict[str, str]:
    """Headers for the upstream: the client's, less hop-by-hop, plus this hop's own.

    ``websocket`` (``wants_websocket`` said yes): ``Connection: Upgrade`` and ``Upgrade:
    websocket`` go too, the only hop-by-hop headers ever forwarded.
    """
    dropped = connection_tokens(environ.get("HTTP_CONNECTION"))
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
    headers["Via"] = _append(environ.get("HTTP_VIA"), f"{version} {VIA}")
    if websocket:
        headers["Connection"] = "Upgrade"
        headers["Upgrade"] = "websocket"
    return headers


def response_head(
    response: UpstreamResponse, request_id: str | None = None
) -> tuple[str, CheckedHeaders]:
    """Status line and headers for the client: hop-by-hop, ``Date`` and ``Server``
    removed, ``Via`` added; with a ``request_id``, the upstream's ``X-Request-ID`` is
    replaced by it, so the client sees the one id every hop logged.

    The caller has refused a head with ambiguous framing (``http1.response_framing_error``).
    The headers are ``CheckedHeaders``: the client parser let through only token names
    and values without control characters (but tab) or edge whitespace, ``Via`` joins
    such values, and a request id is printable ASCII without edge spaces
    (``request_id.assign``).
    """
    index = response.headers.index
    connection = index.get("connection")
    dropped = connection_tokens(",".join(connection)) if connection else frozenset()
    not_relayed = _NOT_RELAYED if request_id is None else _NOT_RELAYED_WITH_ID
    headers = CheckedHeaders()
    via: str | None = None
    for name, value in response.headers._headers:
        lowered = name.lower()
        if lowered in not_relayed or lowered in dropped:
            continue
        if lowered == "via":
            via = _append(via, value)
            continue
        if lowered == "content-length":
            headers.content_length = value
        headers.append((name, value))
    version = "1.0" if response.version == 10 else "1.1"
    headers.append(("Via", _append(via, f"{version} {VIA}")))
    if request_id is not None:
        headers.append(("X-Request-ID", request_id))
    status = response.status
    reason = response.reason or (
        HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Unknown"
    )
    return f"{status} {reason}", headers


def switching_head(response: UpstreamResponse) -> bytes:
    """The ``101 Switching Protocols`` head for the client, written to its socket as is.

    The upstream's headers less hop-by-hop ones, ``Via`` extended (as ``response_head``),
    plus the two an upgrade needs: ``Connection: Upgrade`` and the upstream's ``Upgrade``
    (the protocol it switched to). The client reads frames right after this head, so it is
    complete and nothing else (no ``Date``, no ``Server``) is added.
    """
    status, headers = response_head(response)
    upgrade = response.headers.get("upgrade") or "websocket"
    lines = [f"HTTP/1.1 {status}", "Connection: Upgrade", f"Upgrade: {upgrade}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
