"""The forward proxy in full: CONNECT tunnels, proxy authentication, destination rules.

A client bound to 127.0.0.2 (inside the default PROXY_ALLOW_CLIENTS) stands in for a
remote client: only 127.0.0.1 and ::1 count as the machine itself.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from tests.support.client import Reply, curl, needs_curl, request
from tests.support.ports import unanswered_port
from tests.support.proxy import Proxy, start_flask_run
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until

WORKERS = ["gevent", "gthread"]
REMOTE = "127.0.0.2"


def from_remote(port: int, method: str, target: str) -> Reply:
    """A request from 127.0.0.2: a client other than the machine itself."""
    return request(port, method, target, source=REMOTE)


def open_tunnel(
    port: int, target: str, headers: str = "", source: str = "127.0.0.1"
) -> tuple[socket.socket, bytes]:
    """Send CONNECT; return the socket and the response head the proxy sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def htpasswd(tmp_path: Path) -> Path:
    """An htpasswd file as `htpasswd -B` writes it: alice / secret."""
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).replace(b"$2b$", b"$2y$")
    path = tmp_path / "htpasswd"
    path.write_bytes(b"# proxy users\nalice:" + hashed + b"\n")
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- CONNECT -----------------------------------------------------------------------------
@needs_curl
@pytest.mark.parametrize("worker_class", WORKERS)
def test_curl_https_through_connect_tunnel(
    proxies: Callable[..., Proxy],
    tls_upstream: tuple[UpstreamServer, Path],
    worker_class: str,
) -> None:
    """`curl -x http://proxy https://site` works: CONNECT, then TLS end to end."""
    server, ca_file = tls_upstream
    proxy = proxies(worker_class, PROXY_CONNECT_PORTS=str(server.port))
    out = curl("-x", proxy.url, "--cacert", str(ca_file), f"{server.url}/echo?tunnelled")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["target"] == "/echo?tunnelled"
    wait_until(lambda: proxy.health()["tunnels"]["active"] == 0, 10, "the tunnel to end")
    tunnels = proxy.health()["tunnels"]
    assert tunnels["opened"] == 1 and tunnels["bytes_up"] > 0 and tunnels["bytes_down"] > 0


@pytest.mark.parametrize("worker_class", WORKERS)
def test_plain_http_through_a_tunnel(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """After `200 Connection Established` the bytes are the client's and upstream's alone."""
    proxy = proxies(worker_class, PROXY_CONNECT_PORTS=str(upstream.port))
    sock, head = open_tunnel(proxy.port, f"127.0.0.1:{upstream.port}")
    with sock:
        assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n"
        for i in range(2):  # keep-alive inside the tunnel
            sock.sendall(f"GET /echo?in-tunnel={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            wait_until(
                lambda i=i: any(
                    r.target == f"/echo?in-tunnel={i}" and r.responded for r in upstream.requests
                ),
                10,
                "the tunnelled request",
            )
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2, data[:500]
    assert b"wsgiproxy" not in data  # nothing of the proxy's own inside the tunnel
    assert len({r.conn_id for r in upstream.requests}) == 1


@pytest.mark.parametrize("worker_class", WORKERS)
def test_connect_refusals(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """Ports outside PROXY_CONNECT_PORTS and hosts outside PROXY_ALLOW_HOSTS get 403;
    an unreachable destination 502."""
    proxy = proxies(
        worker_class,
        PROXY_CONNECT_PORTS=f"443,{upstream.port},9",
        PROXY_ALLOW_HOSTS="*.example.com,127.0.0.3",
    )
    sock, head = open_tunnel(proxy.port, "127.0.0.3:8443")
    sock.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    sock, head = open_tunnel(proxy.port, f"127.0.0.1:{upstream.port}")
    sock.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    sock, head = open_tunnel(proxy.port, "127.0.0.3:9")
    sock.close()
    assert head.startswith(b"HTTP/1.1 502"), head
    assert upstream.connections_opened == 0


@pytest.mark.parametrize("worker_class", WORKERS)
def test_connect_timeout_is_504(proxies: Callable[..., Proxy], worker_class: str) -> None:
    """A destination that never accepts gives 504 after HTTP_CONNECT_TIMEOUT."""
    with unanswered_port() as port:
        proxy = proxies(worker_class, PROXY_CONNECT_PORTS=str(port), HTTP_CONNECT_TIMEOUT="0.5")
        sock, head = open_tunnel(proxy.port, f"127.0.0.1:{port}")
        sock.close()
    assert head.startswith(b"HTTP/1.1 504"), head


@pytest.mark.parametrize("worker_class", WORKERS)
def test_client_vanishing_mid_tunnel_frees_its_slot(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """A client that disappears mid-tunnel closes the upstream side and ends the tunnel."""
    proxy = proxies(worker_class, PROXY_CONNECT_PORTS=str(upstream.port))
    sock, head = open_tunnel(proxy.port, f"127.0.0.1:{upstream.port}")
    assert head.startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_until(lambda: any(r.target == "/hang" for r in upstream.requests), 10, "the hang")
    assert proxy.health()["tunnels"]["active"] == 1
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # reset
    wait_until(lambda: proxy.health()["tunnels"]["active"] == 0, 10, "the tunnel to end")
    wait_until(lambda: upstream.open_connections == 0, 10, "the upstream side to close")


# -- proxy authentication ----------------------------------------------------------------
@pytest.mark.parametrize("worker_class", WORKERS)
def test_proxy_auth_required_for_forwarding_not_for_reverse(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str, tmp_path: Path
) -> None:
    """With PROXY_AUTH_FILE, forward requests need credentials (407 + Proxy-Authenticate),
    the header never reaches the upstream, and reverse traffic needs none."""
    proxy = proxies(
        worker_class, PROXY_UPSTREAM=upstream.url, PROXY_AUTH_FILE=str(htpasswd(tmp_path))
    )
    target = f"http://127.0.0.1:{upstream.port}/echo?auth"
    for headers in (
        {},
        {"Proxy-Authorization": basic("alice", "wrong")},
        {"Proxy-Authorization": basic("mallory", "secret")},
        {"Proxy-Authorization": "Bearer abc"},
    ):
        reply = request(proxy.port, "GET", target, headers=headers)
        assert reply.status == 407, (headers, reply)
        assert reply.header("Proxy-Authenticate") == 'Basic realm="wsgiproxy"'
        assert reply.header("X-Proxy-Error") == "proxy-auth-required"
    assert not upstream.requests
    reply = request(
        proxy.port, "GET", target, headers={"Proxy-Authorization": basic("alice", "secret")}
    )
    assert reply.status == 200
    assert upstream.requests[-1].header("Proxy-Authorization") is None
    assert request(proxy.port, "GET", "/echo?reverse").status == 200


@needs_curl
def test_curl_with_proxy_user_through_tunnel(
    proxies: Callable[..., Proxy], tls_upstream: tuple[UpstreamServer, Path], tmp_path: Path
) -> None:
    """`curl -x ... --proxy-user alice:secret https://...` tunnels; without it, 407."""
    server, ca_file = tls_upstream
    proxy = proxies(
        "gevent", PROXY_CONNECT_PORTS=str(server.port), PROXY_AUTH_FILE=str(htpasswd(tmp_path))
    )
    out = curl("-x", proxy.url, "--cacert", str(ca_file), f"{server.url}/echo")
    assert out.returncode != 0 and "407" in out.stderr
    out = curl(
        "-x",
        proxy.url,
        "--proxy-user",
        "alice:secret",
        "--cacert",
        str(ca_file),
        f"{server.url}/echo",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["target"] == "/echo"


def test_flask_run_sends_proxy_authenticate_too(tmp_path: Path, upstream: UpstreamServer) -> None:
    """The dev server's 407 carries the challenge as well."""
    proxy = start_flask_run(tmp_path, PROXY_AUTH_FILE=str(htpasswd(tmp_path)))
    try:
        reply = request(proxy.port, "GET", f"http://127.0.0.1:{upstream.port}/echo")
        assert reply.status == 407
        assert reply.header("Proxy-Authenticate") == 'Basic realm="wsgiproxy"'
    finally:
        proxy.stop()


# -- destinations (SSRF) -----------------------------------------------------------------
@pytest.mark.parametrize("worker_class", WORKERS)
def test_remote_clients_cannot_reach_private_addresses(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """A client other than the machine itself cannot forward or tunnel to loopback
    (by IP, by name, or IPv4-mapped IPv6); the machine itself can."""
    proxy = proxies(worker_class, PROXY_CONNECT_PORTS=str(upstream.port))
    for target in (
        f"http://127.0.0.1:{upstream.port}/echo",
        f"http://localhost:{upstream.port}/echo",
        f"http://[::ffff:127.0.0.1]:{upstream.port}/echo",
    ):
        reply = from_remote(proxy.port, "GET", target)
        assert reply.status == 403, (target, reply)
        assert b"PROXY_ALLOW_PRIVATE" in reply.body
    sock, head = open_tunnel(proxy.port, f"127.0.0.1:{upstream.port}", source=REMOTE)
    sock.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert not upstream.requests and upstream.connections_opened == 0
    assert request(proxy.port, "GET", f"http://127.0.0.1:{upstream.port}/echo").status == 200


@pytest.mark.parametrize("worker_class", WORKERS)
def test_allow_private_lets_remote_clients_through(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """PROXY_ALLOW_PRIVATE=1 lifts the guard, for proxies in front of private networks."""
    proxy = proxies(worker_class, PROXY_ALLOW_PRIVATE="1")
    assert from_remote(proxy.port, "GET", f"http://localhost:{upstream.port}/echo").status == 200


@pytest.mark.parametrize("worker_class", WORKERS)
def test_pooled_connection_is_not_reused_past_the_private_guard(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """A connection the machine itself opened to a private address never carries a remote
    client's request there."""
    proxy = proxies(worker_class)
    target = f"http://127.0.0.1:{upstream.port}/echo"
    assert request(proxy.port, "GET", target).status == 200
    proxy.settled()
    assert from_remote(proxy.port, "GET", target).status == 403
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("worker_class", WORKERS)
def test_forwarding_to_the_proxy_itself_does_not_loop(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """An absolute-form request for the proxy's own address (admin prefix included) is
    refused instead of looping."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=upstream.url)
    for target in (f"{proxy.url}/_proxy/health", f"http://localhost:{proxy.port}/echo"):
        reply = request(proxy.port, "GET", target)
        assert reply.status == 403 and b"itself" in reply.body, (target, reply)
    assert not upstream.requests
