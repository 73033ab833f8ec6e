"""The pool under real gunicorn (gevent and gthread): limits, queueing, keep-alive races."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.client import Reply, gated, keep_alive_gets, request
from tests.support.proxy import Proxy
from tests.support.stress import Threads, run_concurrently
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until

WORKERS = ["gevent", "gthread"]


@pytest.mark.parametrize("worker_class", WORKERS)
def test_connection_limit_holds_under_concurrency(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """With HTTP_MAX_CONNECTIONS=2, 20 concurrent slow requests never open a third."""
    proxy = proxies(
        worker_class, PROXY_UPSTREAM=upstream.url, HTTP_MAX_CONNECTIONS="2", HTTP_POOL_TIMEOUT="30"
    )
    replies = run_concurrently(
        20, lambda i: request(proxy.port, "GET", f"/slow?delay=0.1&i={i}", timeout=30)
    )
    assert [r.status for r in replies] == [200] * 20
    assert upstream.max_open_connections <= 2
    assert upstream.connections_opened <= 2
    assert proxy.settled()["pool"]["queued"] == 0


@pytest.mark.parametrize("worker_class", WORKERS)
def test_pool_timeout_is_503_with_retry_after(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """A request that cannot get a connection in HTTP_POOL_TIMEOUT gets 503, not a hang."""
    proxy = proxies(
        worker_class, PROXY_UPSTREAM=upstream.url, HTTP_MAX_CONNECTIONS="1", HTTP_POOL_TIMEOUT="0.3"
    )
    with gated(proxy.port, upstream, f"hold-{worker_class}"):  # holds the one connection
        reply = request(proxy.port, "GET", "/echo")
        assert reply.status == 503
        assert reply.header("X-Proxy-Error") == "pool-timeout"
        assert reply.header("Retry-After") == "1"
        assert b"HTTP_POOL_TIMEOUT" in reply.body and b"1/1" in reply.body
    assert proxy.health()["pool"]["counters"]["pool_timeouts"] == 1
    assert request(proxy.port, "GET", "/echo").status == 200


@pytest.mark.parametrize("worker_class", WORKERS)
def test_queued_requests_reach_upstream_in_arrival_order(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """When the pool is full, the request that waited longest is served first."""
    proxy = proxies(
        worker_class, PROXY_UPSTREAM=upstream.url, HTTP_MAX_CONNECTIONS="1", HTTP_POOL_TIMEOUT="30"
    )
    with (
        Threads("client", deadline=30) as clients,
        gated(proxy.port, upstream, f"fifo-{worker_class}", timeout=30),  # the one connection
    ):
        for i in range(6):
            clients.start(request, proxy.port, "GET", f"/echo?order={i}", timeout=30)
            wait_until(
                lambda i=i: proxy.health()["pool"]["queued"] == i + 1, 10, f"request {i} to queue"
            )
    results = clients.results
    assert all(isinstance(r, Reply) and r.status == 200 for r in results), results
    order = [r.target for r in upstream.requests if r.target.startswith("/echo?order=")]
    assert order == [f"/echo?order={i}" for i in range(6)]


@pytest.mark.parametrize("worker_class", WORKERS)
def test_upstream_closing_idle_connections_costs_no_502(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """After the upstream closes idle keep-alive connections, the next GET and POST work."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=upstream.url)
    assert request(proxy.port, "GET", "/echo").status == 200
    wait_until(
        lambda: upstream.close_idle_connections() >= 1 or upstream.open_connections == 0,
        5,
        "the upstream to close its idle connection",
    )
    assert request(proxy.port, "GET", "/echo?after-close").status == 200
    upstream.close_idle_connections()
    assert request(proxy.port, "POST", "/echo?post", body=b"payload").status == 200
    assert upstream.requests[-1].body == b"payload"


@pytest.mark.parametrize("worker_class", WORKERS)
def test_reused_connection_dropped_mid_request_is_retried_for_get_not_post(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """The keep-alive race: a GET is replayed on a new connection, a POST gets 502."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=upstream.url)
    assert request(proxy.port, "GET", "/drop-next").status == 200
    proxy.settled()  # the marked connection is idle in the pool, ready to be reused
    reply = request(proxy.port, "GET", "/echo?replayed")
    assert reply.status == 200
    tries = [r for r in upstream.requests if r.target == "/echo?replayed"]
    assert len(tries) == 2 and tries[0].conn_id != tries[1].conn_id
    assert proxy.health()["pool"]["counters"]["retries"] == 1

    assert request(proxy.port, "GET", "/drop-next").status == 200
    proxy.settled()
    reply = request(proxy.port, "POST", "/echo?not-replayed", body=b"once")
    assert reply.status == 502 and reply.header("X-Proxy-Error") == "upstream-error"
    assert len([r for r in upstream.requests if r.target == "/echo?not-replayed"]) == 1


@pytest.mark.parametrize("worker_class", WORKERS)
def test_keep_alive_timeout_header_makes_us_close_first(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """An upstream saying Keep-Alive: timeout=1 has its idle connection closed by us."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=upstream.url)
    before = upstream.closed_by_peer
    assert request(proxy.port, "GET", "/keepalive?timeout=1").status == 200
    wait_until(lambda: upstream.closed_by_peer > before, 5, "the proxy to close the connection")
    assert proxy.health()["pool"]["idle"] == 0


@pytest.mark.parametrize("worker_class", WORKERS)
def test_fifty_aborted_clients_leave_nothing_active(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """Clients that abort mid-response never leak upstream connections."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=upstream.url)

    def abort(i: int) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=20)
        try:
            conn.request("GET", f"/big?size=5000000&i={i}")
            resp = conn.getresponse()
            resp.read(1000)
            assert conn.sock is not None
            conn.sock.shutdown(socket.SHUT_RDWR)
            return Reply(resp.status, [], b"")
        finally:
            conn.close()

    assert {r.status for r in run_concurrently(50, abort)} == {200}
    assert proxy.settled(20)["leaks"]["held_past_request"] == []
    assert request(proxy.port, "GET", "/echo").status == 200


def test_pool_disabled_opens_a_connection_per_request(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, tmp_path: Path
) -> None:
    """HTTP_POOL_ENABLED=0 (the rollback switch): every request on its own connection."""
    proxy = proxies("gevent", PROXY_UPSTREAM=upstream.url, HTTP_POOL_ENABLED="0")
    for _ in range(5):
        assert request(proxy.port, "GET", "/echo").status == 200
    assert len({r.conn_id for r in upstream.requests}) == 5
    wait_until(lambda: upstream.open_connections == 0, 5, "each connection to be closed")
    assert proxy.health()["pool"]["idle"] == 0


def _keep_alive_client(port: int, requests: int, delay: float) -> list[int]:
    """One client on one keep-alive connection: ``requests`` slow requests in a row."""
    return keep_alive_gets(port, [f"/slow?delay={delay}"] * requests)


@pytest.mark.parametrize("worker_class", WORKERS)
def test_a_steady_load_above_the_idle_limit_keeps_its_connections(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """A load of 12 requests at once with HTTP_MAX_KEEPALIVE_CONNECTIONS=2 would close 10
    connections at every release and reopen them for the next requests (churn, and a
    TLS handshake each on an https upstream); once the load stops, the surplus would
    stay open for good. It must keep what it uses, then fall back to 2 within the
    5-second surplus window."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=upstream.url, HTTP_MAX_KEEPALIVE_CONNECTIONS="2")
    clients = 12
    warm = run_concurrently(clients, lambda i: _keep_alive_client(proxy.port, 3, 0.05))
    assert all(s == [200] * 3 for s in warm)
    opened_after_warm_up = upstream.connections_opened
    steady = run_concurrently(clients, lambda i: _keep_alive_client(proxy.port, 20, 0.02))
    assert all(s == [200] * 20 for s in steady)
    assert upstream.connections_opened - opened_after_warm_up <= 2, (
        f"{upstream.connections_opened - opened_after_warm_up} connections opened by a steady"
        f" load of {clients * 20} requests"
    )
    pool = proxy.settled()["pool"]
    assert pool["idle"] > 2, "surplus idle connections were closed on release"
    wait_until(
        lambda: proxy.health()["pool"]["idle"] == 2, 5 + 3, "the surplus to be shed down to 2"
    )
    health = proxy.health()
    assert health["pool"]["counters"]["shed"] == pool["idle"] - 2
    assert health["pool"]["counters"]["evicted"] == 0
    wait_until(lambda: upstream.open_connections == 2, 5, "the upstream to see the shed closed")
