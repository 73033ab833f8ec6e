"""The proxy's own answers: one line of plain text, tagged ``X-Proxy-Error``.

Every ``ProxyError`` reaches the client through ``plain_response``, so the format (one
line naming what failed, never a traceback) is decided in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from ..server.gunicorn import keep_hop_by_hop_header

StartResponse = Callable[..., Any]


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
    for name, value in extra:
        if name.lower() == "proxy-authenticate":
            # A 407 is useless without it, and servers drop it as hop-by-hop.
            keep_hop_by_hop_header(start_response, name, value)
    return [body]
