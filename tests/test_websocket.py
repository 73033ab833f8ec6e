"""WebSocket through the proxy, under real gunicorn gevent and gthread workers, against
the ``websockets`` library's server: messages both ways, early bytes, refusals, idle
timeout, forward mode and its rules, and the figures health and metrics show."""

from __future__ import annotations

import base64
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.client import request
from tests.support.ports import closed_port
from tests.support.proxy import Proxy, start_flask_run
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until
from tests.support.ws_upstream import (
    WsUpstream,
    eager_upstream,
    frame,
    read_frame,
    read_head,
    ws_upstream,
)
from tests.test_forward import REMOTE, basic, htpasswd

WORKERS = ["gevent", "gthread"]
TIMEOUT = 10.0


@pytest.fixture(params=WORKERS)
def worker_class(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ws() -> Iterator[WsUpstream]:
    """The ``websockets`` echo server (see ``ws_upstream``), stopped after the test."""
    with ws_upstream() as server:
        yield server


def through(proxy: Proxy, path: str = "/echo", **options: Any) -> ClientConnection:
    """A WebSocket to ``path`` through the reverse proxy."""
    options.setdefault("open_timeout", TIMEOUT)
    options.setdefault("close_timeout", TIMEOUT)
    options.setdefault("max_size", 2**21)
    client: ClientConnection = connect(f"ws://127.0.0.1:{proxy.port}{path}", proxy=None, **options)
    return client


class _AbsoluteForm(ClientConnection):
    """A client that sends its handshake in absolute form, as to a forward proxy."""

    def handshake(self, *args: Any, **kwargs: Any) -> None:
        protocol = self.protocol
        first_request = protocol.connect

        def absolute() -> Any:
            req = first_request()
            req.path = f"http://{protocol.uri.host}:{protocol.uri.port}{req.path}"
            return req

        protocol.connect = absolute  # type: ignore[method-assign]
        super().handshake(*args, **kwargs)


def forward(
    proxy: Proxy, upstream_port: int, source: str = "127.0.0.1", **options: Any
) -> ClientConnection:
    """A WebSocket to 127.0.0.1:``upstream_port`` through the forward proxy."""
    sock = socket.create_connection(
        ("127.0.0.1", proxy.port), timeout=TIMEOUT, source_address=(source, 0)
    )
    try:
        client: ClientConnection = connect(
            f"ws://127.0.0.1:{upstream_port}/echo",
            sock=sock,
            create_connection=_AbsoluteForm,
            open_timeout=TIMEOUT,
            close_timeout=TIMEOUT,
            **options,
        )
    except BaseException:
        sock.close()
        raise
    return client


def open_websockets(proxy: Proxy) -> int:
    return int(proxy.health()["tunnels"]["open"]["websocket"])


def metric(proxy: Proxy, line_start: str) -> float:
    """The value of the exposition line that starts with ``line_start``."""
    text = request(proxy.port, "GET", "/_proxy/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} in the metrics")


def settled_after_websockets(proxy: Proxy) -> dict[str, Any]:
    """Health once every WebSocket has ended and the pool is idle: no leaked lease."""
    wait_until(lambda: open_websockets(proxy) == 0, TIMEOUT, "the WebSockets to end")
    state = proxy.settled()
    assert state["leaks"]["checked_out"] == 0
    return state


# -- Messages ------------------------------------------------------------------------------
def test_messages_both_ways_through_the_reverse_proxy(
    proxies: Callable[..., Proxy], ws: WsUpstream, worker_class: str
) -> None:
    """Text, binary, a 1 MB message, 1,000 small ones in order and ping/pong all cross;
    the open WebSocket shows in health and metrics, and is gone from both after."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=ws.url)
    with through(proxy) as client:
        client.send("héllo")
        assert client.recv(TIMEOUT) == "héllo"
        client.send(b"\x00\x01\xff")
        assert client.recv(TIMEOUT) == b"\x00\x01\xff"
        big = os.urandom(1_000_000)
        client.send(big)
        assert client.recv(TIMEOUT) == big
        for i in range(1000):
            client.send(f"m{i}")
        assert [client.recv(TIMEOUT) for _ in range(1000)] == [f"m{i}" for i in range(1000)]
        assert client.ping(b"are you there").wait(TIMEOUT)
        assert open_websockets(proxy) == 1
        assert metric(proxy, 'wsgiproxy_tunnels_open{kind="websocket"}') == 1
        assert proxy.health()["tunnels"]["open"]["connect"] == 0
    assert client.close_code == 1000
    state = settled_after_websockets(proxy)
    assert state["tunnels"]["opened"] == 1 and state["tunnels"]["bytes_down"] > 1_000_000
    assert metric(proxy, 'wsgiproxy_tunnels_open{kind="websocket"}') == 0
    wait_until(lambda: ws.ended == 1, TIMEOUT, "the upstream to see the close")
    assert ws.headers_of()["upgrade"] == "websocket"
    assert ws.headers_of()["connection"] == "Upgrade"


def test_upstream_closes_first(
    proxies: Callable[..., Proxy], ws: WsUpstream, worker_class: str
) -> None:
    """The upstream's close (code and reason) reaches the client, and the relay ends."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=ws.url)
    with through(proxy, "/close") as client:
        client.send("bye")
        with pytest.raises(ConnectionClosed):
            client.recv(TIMEOUT)
    assert client.close_code == 4001 and client.close_reason == "done"
    settled_after_websockets(proxy)


def test_bytes_sent_right_after_the_handshake_reach_the_upstream(
    proxies: Callable[..., Proxy], ws: WsUpstream, worker_class: str
) -> None:
    """A client that sends its first frame with its handshake, before the 101, loses
    nothing: gunicorn may have read the frame already, and it still reaches the upstream."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=ws.url)
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(handshake + frame(0x1, b"early bird", masked=True))
        buffer = bytearray()
        head = read_head(sock, buffer)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"\r\nupgrade: websocket\r\n" in head.lower()
        assert read_frame(sock, buffer) == (0x1, b"early bird")
        sock.sendall(frame(0x8, b"\x03\xe8", masked=True))
        assert read_frame(sock, buffer)[0] == 0x8
    assert ws.received == ["early bird"]
    settled_after_websockets(proxy)


def test_bytes_the_upstream_sent_behind_its_101_reach_the_client(
    proxies: Callable[..., Proxy], worker_class: str
) -> None:
    """An upstream that writes its 101 and a first frame at once: the frame the response
    parser buffered is relayed, not lost."""
    with eager_upstream(b"welcome") as port:
        proxy = proxies(worker_class, PROXY_UPSTREAM=f"http://127.0.0.1:{port}")
        with through(proxy, "/eager") as client:
            assert client.recv(TIMEOUT) == "welcome"
    settled_after_websockets(proxy)


def test_websocket_to_a_tls_upstream(
    proxies: Callable[..., Proxy], ca: trustme.CA, tmp_path: Path, worker_class: str
) -> None:
    """Reverse to an ``https://`` upstream: the relay speaks TLS upstream, a 1 MB message
    and a burst of small ones arrive whole and in order, and the close gets through."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with ws_upstream(ssl=context) as server:
        proxy = proxies(
            worker_class,
            PROXY_UPSTREAM=f"https://127.0.0.1:{server.port}",
            HTTP_CA_BUNDLE=str(ca_file),
        )
        with through(proxy) as client:
            big = os.urandom(1_000_000)
            client.send(big)
            assert client.recv(TIMEOUT) == big
            for i in range(200):
                client.send(f"t{i}")
            assert [client.recv(TIMEOUT) for _ in range(200)] == [f"t{i}" for i in range(200)]
        assert client.close_code == 1000
        settled_after_websockets(proxy)


def test_tls_bytes_behind_the_101_reach_the_client(
    proxies: Callable[..., Proxy], ca: trustme.CA, tmp_path: Path, worker_class: str
) -> None:
    """Over TLS, a frame sent with the 101 in one record is split between the parser's
    buffer and the TLS layer (which select() cannot see): all of it is relayed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    greeting = b"w" * 10_000  # one TLS record, more than the parser's 8 KiB buffer
    with eager_upstream(greeting, context) as port:
        proxy = proxies(
            worker_class,
            PROXY_UPSTREAM=f"https://127.0.0.1:{port}",
            HTTP_CA_BUNDLE=str(ca_file),
        )
        with through(proxy, "/eager") as client:
            assert client.recv(TIMEOUT) == greeting.decode()
    settled_after_websockets(proxy)


# -- Not upgraded --------------------------------------------------------------------------
def test_a_refused_handshake_passes_through_as_a_response(
    proxies: Callable[..., Proxy], ws: WsUpstream, worker_class: str
) -> None:
    """An upstream that answers the handshake with 403 gives the client that 403 and
    body, as any response; nothing is relayed and the pool is idle after."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=ws.url)
    with pytest.raises(InvalidStatus) as refused:
        through(proxy, "/deny")
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b"denied\n"
    state = settled_after_websockets(proxy)
    assert state["tunnels"]["opened"] == 0
    assert ws.headers_of()["upgrade"] == "websocket"  # it was asked


def test_h2c_is_not_upgraded(proxies: Callable[..., Proxy], upstream: UpstreamServer) -> None:
    """``Upgrade: h2c`` is dropped as hop-by-hop: the upstream gets a plain request
    without Upgrade, Connection or what Connection listed."""
    proxy = proxies("gevent", PROXY_UPSTREAM=upstream.url)
    reply = request(
        proxy.port,
        "GET",
        "/echo?h2c",
        headers={
            "Connection": "Upgrade, HTTP2-Settings",
            "Upgrade": "h2c",
            "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA",
        },
    )
    assert reply.status == 200
    seen = upstream.requests[-1]
    assert seen.target == "/echo?h2c"
    for name in ("Upgrade", "Connection", "HTTP2-Settings"):
        assert seen.header(name) is None, name


def test_flask_run_answers_501(tmp_path: Path, ws: WsUpstream) -> None:
    """The dev server hands over no socket: a WebSocket handshake gets 501, saying to run
    under gunicorn, before anything goes upstream."""
    proxy = start_flask_run(tmp_path, PROXY_UPSTREAM=ws.url)
    try:
        reply = request(
            proxy.port,
            "GET",
            "/echo",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                "Sec-WebSocket-Version": "13",
            },
        )
    finally:
        proxy.stop()
    assert reply.status == 501
    assert reply.header("X-Proxy-Error") == "not-implemented"
    assert b"gunicorn" in reply.body
    assert ws.handshakes == []


# -- Timeouts and groups -------------------------------------------------------------------
def test_idle_websocket_is_closed_on_both_sides(
    proxies: Callable[..., Proxy], worker_class: str
) -> None:
    """Nothing moving for PROXY_TUNNEL_IDLE_TIMEOUT closes the client's and the upstream's
    connections, and the figures go back to 0."""
    with ws_upstream(ping_interval=None) as server:
        proxy = proxies(worker_class, PROXY_UPSTREAM=server.url, PROXY_TUNNEL_IDLE_TIMEOUT="1")
        with through(proxy, ping_interval=None) as client:
            assert open_websockets(proxy) == 1
            with pytest.raises(ConnectionClosed):
                client.recv(TIMEOUT)  # ends well before TIMEOUT: the proxy closed it
        wait_until(lambda: server.ended == 1, TIMEOUT, "the upstream side to be closed")
        settled_after_websockets(proxy)


def test_a_refused_server_is_skipped_as_for_a_get(
    proxies: Callable[..., Proxy], ws: WsUpstream, worker_class: str
) -> None:
    """In a group, a server that refuses the connect is skipped for the next one, as for a
    GET: the WebSocket opens, and the failure counts against the refusing server."""
    dead = f"http://127.0.0.1:{closed_port()}"
    proxy = proxies(worker_class, PROXY_UPSTREAM=f"{dead} {ws.url}")
    for _ in range(2):  # whichever the balancer picks first
        with through(proxy) as client:
            client.send("hi")
            assert client.recv(TIMEOUT) == "hi"
    servers = settled_after_websockets(proxy)["upstreams"]["/"]
    failed = next(s for s in servers if s["url"] == dead)
    assert failed["failures"] >= 1
    assert all(s["in_flight"] == 0 for s in servers)


# -- Forward mode --------------------------------------------------------------------------
def test_forward_websocket_with_absolute_form(
    proxies: Callable[..., Proxy], ws: WsUpstream, worker_class: str
) -> None:
    """``GET ws-target`` in absolute form through the forward proxy upgrades too; the
    upstream sees an origin-form target."""
    proxy = proxies(worker_class)
    with forward(proxy, ws.port) as client:
        client.send("forwarded")
        assert client.recv(TIMEOUT) == "forwarded"
        assert open_websockets(proxy) == 1
    assert ws.handshakes[-1][0] == "/echo"
    settled_after_websockets(proxy)


def test_forward_websocket_needs_credentials(
    proxies: Callable[..., Proxy], ws: WsUpstream, tmp_path: Path
) -> None:
    """With PROXY_AUTH_FILE a forward WebSocket needs Proxy-Authorization (407 without),
    which never reaches the upstream; a reverse one does not need it."""
    proxy = proxies("gevent", PROXY_AUTH_FILE=str(htpasswd(tmp_path)), PROXY_UPSTREAM=ws.url)
    with pytest.raises(InvalidStatus) as refused:
        forward(proxy, ws.port)
    assert refused.value.response.status_code == 407
    assert ws.handshakes == []
    credentials = {"Proxy-Authorization": basic("alice", "secret")}
    with forward(proxy, ws.port, additional_headers=credentials) as client:
        client.send("let in")
        assert client.recv(TIMEOUT) == "let in"
    assert "proxy-authorization" not in ws.headers_of()
    with through(proxy) as client:  # reverse: no credentials asked
        client.send("reverse")
        assert client.recv(TIMEOUT) == "reverse"
    settled_after_websockets(proxy)


def test_forward_websocket_obeys_client_and_destination_rules(
    proxies: Callable[..., Proxy], ws: WsUpstream
) -> None:
    """A remote client cannot open a forward WebSocket to a private address, nor anyone to
    a host outside PROXY_ALLOW_HOSTS: 403, and nothing reaches the upstream."""
    proxy = proxies("gevent")
    with pytest.raises(InvalidStatus) as refused:
        forward(proxy, ws.port, source=REMOTE)
    assert refused.value.response.status_code == 403
    strict = proxies("gevent", PROXY_ALLOW_HOSTS="example.com")
    with pytest.raises(InvalidStatus) as refused:
        forward(strict, ws.port)
    assert refused.value.response.status_code == 403
    assert ws.handshakes == []
