"""A proxy hop's header rules, both ways, without a server: what the upstream is sent
and what the client gets back."""

from __future__ import annotations

import io
from typing import Any

import pytest

from wsgiproxy.client.http1 import UpstreamResponse
from wsgiproxy.proxy.headers import HOP_BY_HOP, request_headers, response_head


def environ(**extra: str) -> dict[str, Any]:
    """A client's request as the WSGI server describes it."""
    return {
        "REQUEST_METHOD": "GET",
        "REMOTE_ADDR": "192.0.2.10",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "proxy.example",
    } | extra


class _Sock:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))  # type: ignore[arg-type]


def upstream_says(head: bytes) -> UpstreamResponse:
    """The upstream's response, its head parsed as the client parses it."""
    response = UpstreamResponse(_Sock(head), method="GET")  # type: ignore[arg-type]
    response.begin()
    return response


# --- toward the upstream ----------------------------------------------------------------


def test_request_keeps_end_to_end_headers_and_sets_host() -> None:
    """The upstream would lose the client's headers or get the proxy's own Host."""
    sent = request_headers(
        environ(HTTP_ACCEPT="*/*", HTTP_X_CUSTOM_THING="1", CONTENT_TYPE="text/plain"),
        "upstream:8000",
    )
    assert sent["Host"] == "upstream:8000"
    assert sent["Accept"] == "*/*"
    assert sent["X-Custom-Thing"] == "1"
    assert sent["Content-Type"] == "text/plain"
    assert next(iter(sent)) == "Host"


def test_request_drops_hop_by_hop_and_what_connection_lists() -> None:
    """Hop-by-hop headers (and proxy credentials) would leak to the upstream."""
    env = environ(
        HTTP_CONNECTION="keep-alive, X-Secret",
        HTTP_KEEP_ALIVE="timeout=5",
        HTTP_PROXY_CONNECTION="keep-alive",
        HTTP_PROXY_AUTHORIZATION="Basic dTpw",
        HTTP_TE="trailers",
        HTTP_TRAILER="X-T",
        HTTP_TRANSFER_ENCODING="chunked",
        HTTP_UPGRADE="h2c",
        HTTP_X_SECRET="s",
        HTTP_EXPECT="100-continue",
    )
    sent = {name.lower() for name in request_headers(env, "up")}
    assert not sent & (HOP_BY_HOP | {"x-secret", "expect"})


def test_request_forwarding_headers() -> None:
    """The upstream could not tell who asked, or would trust what the client forged."""
    sent = request_headers(
        environ(
            HTTP_X_FORWARDED_FOR="10.1.1.1",
            HTTP_X_FORWARDED_PROTO="https",
            HTTP_X_FORWARDED_HOST="forged",
            HTTP_VIA="1.1 edge",
        ),
        "up",
    )
    assert sent["X-Forwarded-For"] == "10.1.1.1, 192.0.2.10"
    assert sent["X-Forwarded-Proto"] == "http"
    assert sent["X-Forwarded-Host"] == "proxy.example"
    assert sent["Via"] == "1.1 edge, 1.1 wsgiproxy"
    alone = request_headers(environ(SERVER_PROTOCOL="HTTP/1.0"), "up")
    assert (alone["X-Forwarded-For"], alone["Via"]) == ("192.0.2.10", "1.0 wsgiproxy")


@pytest.mark.parametrize(
    ("extra", "length"),
    [
        ({"CONTENT_LENGTH": "5"}, "5"),
        ({"CONTENT_LENGTH": "5", "HTTP_TRANSFER_ENCODING": "chunked"}, None),
        ({}, None),
    ],
)
def test_request_content_length_only_without_chunking(
    extra: dict[str, str], length: str | None
) -> None:
    """Both framings at once would let the upstream read a different body (smuggling)."""
    assert request_headers(environ(**extra), "up").get("Content-Length") == length


# --- toward the client ------------------------------------------------------------------


def test_response_drops_hop_by_hop_and_keeps_repeats_in_order() -> None:
    """Hop-by-hop headers would reach the client, or Set-Cookies would merge."""
    status, headers = response_head(
        upstream_says(
            b"HTTP/1.1 200 OK\r\n"
            b"Set-Cookie: a=1\r\n"
            b"Connection: keep-alive, X-Internal\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"X-Internal: secret\r\n"
            b"Proxy-Authenticate: Basic\r\n"
            b"Upgrade: h2c\r\n"
            b"Trailer: X-T\r\n"
            b"Set-Cookie: b=2\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
    )
    assert status == "200 OK"
    assert headers == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "0"),
        ("Via", "1.1 wsgiproxy"),
    ]


def test_response_leaves_date_and_server_to_the_server_in_front() -> None:
    """The client would get two Date or two Server headers (flask run adds its own), or
    the upstream's software and clock in place of this hop's, which nginx hides too."""
    _, headers = response_head(
        upstream_says(
            b"HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
            b"Server: internal-app/1.2\r\nX-Kept: 1\r\nContent-Length: 0\r\n\r\n"
        )
    )
    assert headers == [("X-Kept", "1"), ("Content-Length", "0"), ("Via", "1.1 wsgiproxy")]


@pytest.mark.parametrize(("request_id", "seen"), [("ours", ["ours"]), (None, ["theirs"])])
def test_response_carries_this_hops_request_id_in_place_of_the_upstreams(
    request_id: str | None, seen: list[str]
) -> None:
    """The client would see two ids, or one the proxy's log never wrote; with ids off, the
    upstream's own would be lost."""
    _, headers = response_head(
        upstream_says(b"HTTP/1.1 200 OK\r\nx-request-ID: theirs\r\nContent-Length: 0\r\n\r\n"),
        request_id,
    )
    assert [v for k, v in headers if k.lower() == "x-request-id"] == seen


def test_response_via_joins_the_upstreams_own() -> None:
    """The chain of proxies a response passed would be lost or listed twice."""
    _, headers = response_head(
        upstream_says(b"HTTP/1.0 200 OK\r\nVia: 1.1 a\r\nVia: 1.1 b\r\nContent-Length: 0\r\n\r\n")
    )
    assert [v for k, v in headers if k == "Via"] == ["1.1 a, 1.1 b, 1.0 wsgiproxy"]


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"HTTP/1.1 404 Not Here", "404 Not Here"),
        (b"HTTP/1.1 404", "404 Not Found"),
        (b"HTTP/1.1 299", "299 Unknown"),
    ],
)
def test_response_status_line_keeps_the_reason_or_supplies_one(line: bytes, status: str) -> None:
    """A status line without a reason would reach the client malformed."""
    got, _ = response_head(upstream_says(line + b"\r\nContent-Length: 0\r\n\r\n"))
    assert got == status
