"""The header rules of a WebSocket handshake, without a server: which requests upgrade,
what the upstream is sent, and the 101 head the client gets."""

from __future__ import annotations

import pytest

from tests.test_headers import environ, upstream_says
from wsgiproxy.proxy.headers import request_headers, switching_head, wants_websocket

HANDSHAKE = {"HTTP_CONNECTION": "keep-alive, Upgrade", "HTTP_UPGRADE": "websocket"}


@pytest.mark.parametrize(
    ("extra", "upgrades"),
    [
        (HANDSHAKE, True),
        ({"HTTP_CONNECTION": "upgrade", "HTTP_UPGRADE": "WebSocket"}, True),
        ({"HTTP_CONNECTION": "Upgrade", "HTTP_UPGRADE": "h2c, websocket"}, True),
        ({"HTTP_CONNECTION": "Upgrade, HTTP2-Settings", "HTTP_UPGRADE": "h2c"}, False),
        ({"HTTP_UPGRADE": "websocket"}, False),  # Connection does not list upgrade
        ({"HTTP_CONNECTION": "Upgrade"}, False),
        (HANDSHAKE | {"REQUEST_METHOD": "POST"}, False),
        (HANDSHAKE | {"SERVER_PROTOCOL": "HTTP/1.0"}, False),
    ],
)
def test_which_requests_upgrade(extra: dict[str, str], upgrades: bool) -> None:
    """Only a GET over HTTP/1.1 offering websocket with Connection: upgrade is upgraded;
    anything else (h2c above all) is proxied as plain HTTP."""
    assert wants_websocket(environ(**extra)) is upgrades


def test_websocket_request_keeps_upgrade_and_connection() -> None:
    """The upstream sees the handshake: Upgrade and Connection, and the Sec-WebSocket-*
    headers; other hop-by-hop headers are still dropped."""
    env = environ(
        **HANDSHAKE,
        HTTP_SEC_WEBSOCKET_KEY="dGhlIHNhbXBsZSBub25jZQ==",
        HTTP_SEC_WEBSOCKET_VERSION="13",
        HTTP_KEEP_ALIVE="timeout=5",
    )
    headers = request_headers(env, "up.example", websocket=True)
    assert headers["Connection"] == "Upgrade"
    assert headers["Upgrade"] == "websocket"
    assert headers["Sec-Websocket-Key"] == "dGhlIHNhbXBsZSBub25jZQ=="
    assert headers["Sec-Websocket-Version"] == "13"
    assert "Keep-Alive" not in headers


def test_plain_request_still_drops_upgrade() -> None:
    """Without the websocket decision, Upgrade and Connection never go upstream."""
    headers = request_headers(environ(**HANDSHAKE), "up.example")
    assert "Upgrade" not in headers and "Connection" not in headers


def test_switching_head_keeps_the_upgrade_and_adds_via() -> None:
    """The client's 101 names the protocol, keeps end-to-end headers, drops the rest."""
    response = upstream_says(
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )
    head = switching_head(response)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert head.endswith(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[1:-2]
    assert lines == [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "Via: 1.1 wsgiproxy",
    ]
