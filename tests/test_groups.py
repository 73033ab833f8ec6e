"""Several servers behind one route, under real gunicorn: balancing, ejection, failover.

Each test starts its own instrumented upstreams on 127.0.0.1 and a real gunicorn; a
server "dies" by stopping (its port then refuses) and "comes back" as a new server on
the same port.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.support.client import keep_alive_gets, request
from tests.support.ports import closed_port
from tests.support.processes import children
from tests.support.proxy import Proxy
from tests.support.stress import run_concurrently
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until

WORKERS = ["gevent", "gthread"]


@contextlib.contextmanager
def upstreams(n: int) -> Iterator[list[UpstreamServer]]:
    """``n`` instrumented upstreams; each stopped at the end (also one a test restarted:
    the list holds whichever server is on that port now)."""
    servers = [UpstreamServer().start() for _ in range(n)]
    try:
        yield servers
    finally:
        for server in servers:
            with contextlib.suppress(AssertionError):
                server.stop()


def group(servers: list[UpstreamServer], *options: str) -> str:
    """``PROXY_UPSTREAM`` text: each server's URL followed by its options ('' for none)."""
    parts = []
    for index, server in enumerate(servers):
        parts.append(server.url)
        if index < len(options) and options[index]:
            parts.append(options[index])
    return " ".join(parts)


def restart(servers: list[UpstreamServer], index: int) -> UpstreamServer:
    """The server at ``index`` comes back on the port it had."""
    fresh = UpstreamServer(port=servers[index].port).start()
    servers[index] = fresh
    return fresh


def upstream_health(proxy: Proxy, route: str = "/") -> list[dict[str, object]]:
    servers: list[dict[str, object]] = proxy.health()["upstreams"][route]
    return servers


def echo_gets(port: int, count: int) -> list[int]:
    """``count`` GETs of ``/echo?i=N`` on one keep-alive connection."""
    return keep_alive_gets(port, [f"/echo?i={i}" for i in range(count)])


# --- balancing --------------------------------------------------------------------------


def test_weights_share_requests_out_smoothly(proxies: Callable[..., Proxy]) -> None:
    """Weights 1:2:3 would be ignored, or a heavy server would get long runs while the
    others idle."""
    with upstreams(3) as (a, b, c):
        proxy = proxies("gevent", 2, PROXY_UPSTREAM=group([a, b, c], "", "weight=2", "weight=3"))
        results = run_concurrently(6, lambda i: echo_gets(proxy.port, 300))
        assert all(s == [200] * 300 for s in results)
        counts = [len(a.requests), len(b.requests), len(c.requests)]
        assert sum(counts) == 1800
        for got, weight in zip(counts, (1, 2, 3), strict=True):
            assert abs(got - 1800 * weight / 6) <= 1800 * 0.03, counts
    with upstreams(3) as (a, b, c):
        one = proxies("gevent", 1, PROXY_UPSTREAM=group([a, b, c], "", "weight=2", "weight=3"))
        echo_gets(one.port, 60)  # one client, one worker: the balancer's own order
        where = {
            r.target: name for name, s in zip("abc", (a, b, c), strict=True) for r in s.requests
        }
        sequence = "".join(where[f"/echo?i={i}"] for i in range(60))
        longest = max(len(m.group(0)) for m in re.finditer(r"(.)\1*", sequence))
        assert longest <= 2, sequence  # smooth: c never three times running at 3 of 6


def test_least_conn_sends_fewer_requests_to_a_slow_server(
    proxies: Callable[..., Proxy],
) -> None:
    """A slow server would get as many requests as a fast one, or each worker would count
    only its own requests (nginx's open-source least_conn)."""
    with upstreams(2) as (slow, fast):
        slow.delay = 0.2
        proxy = proxies("gevent", 2, PROXY_UPSTREAM=group([slow, fast]), PROXY_BALANCE="least_conn")
        run_concurrently(12, lambda i: echo_gets(proxy.port, 15))
        assert len(slow.requests) + len(fast.requests) == 180
        assert len(slow.requests) * 4 < len(fast.requests), (
            len(slow.requests),
            len(fast.requests),
        )
        wait_until(
            lambda: all(s["in_flight"] == 0 for s in upstream_health(proxy)),
            10,
            "in-flight counts back to 0 in every worker",
        )


# --- failover ---------------------------------------------------------------------------


@pytest.mark.parametrize("worker_class", WORKERS)
def test_a_server_dies_under_load_and_comes_back(
    proxies: Callable[..., Proxy], worker_class: str
) -> None:
    """One of three servers dying would cost clients errors on GETs, replay a POST on a
    second server, keep being tried by some worker, or stay out once it is back."""
    with upstreams(3) as servers:
        proxy = proxies(
            worker_class,
            2,
            PROXY_UPSTREAM=group(servers),
            HTTP_HEALTH_PATH="/health",
            HTTP_HEALTH_INTERVAL="1",
            PROXY_FAIL_TIMEOUT="30",
        )
        stop = threading.Event()
        results: list[tuple[str, int, int]] = []
        lock = threading.Lock()
        counter = iter(range(10**9))

        def client(n: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
            try:
                while not stop.is_set():
                    method = "POST" if n % 3 == 0 else "GET"
                    with lock:
                        ident = next(counter)
                    conn.request(
                        method, f"/echo?id={ident}", body=b"x" if method == "POST" else None
                    )
                    reply = conn.getresponse()
                    reply.read()
                    with lock:
                        results.append((method, ident, reply.status))
                    if reply.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(6)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(results) > 150, 10, "a steady load")
            dead_port = servers[1].port
            servers[1].stop()
            killed = time.monotonic()
            wait_until(
                lambda: upstream_health(proxy)[1]["state"] == "ejected", 5, "the dead server out"
            )
            time.sleep(1.0)  # the contract's second for every worker to stop trying it
            tried_after = [
                upstream_health(proxy)[1]["requests"] for _ in range(4)
            ]  # several workers may answer health: each reads the shared counts
            wait_until(lambda: len(results) > 600, 15, "more load with one server dead")
            assert upstream_health(proxy)[1]["requests"] == tried_after[0], (
                "a worker kept trying the dead server"
            )
            assert len(set(tried_after)) == 1
            back = restart(servers, 1)
            assert back.port == dead_port
            restarted = time.monotonic()
            wait_until(lambda: len(back.requests) > 0, 5, "the server back in service")
            back_after = time.monotonic() - restarted
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert all(not t.is_alive() for t in threads)
        gets = [status for method, _, status in results if method == "GET"]
        assert gets and set(gets) == {200}, Counter(gets)
        served_by: Counter[str] = Counter()
        for server in servers:
            for req in server.requests:
                if req.method == "POST":
                    served_by[req.target] += 1
        assert max(served_by.values()) == 1, "a POST reached two servers"
        assert back_after < 3.0
        assert time.monotonic() - killed > 0


def test_retry_matrix(proxies: Callable[..., Proxy]) -> None:
    """A refused connect must move any request on; a request sent and reset before any
    response byte moves a GET on but never a POST; a response already started is never
    sent again."""
    with upstreams(1) as (good,):
        refused = f"http://127.0.0.1:{closed_port()}"
        proxy = proxies("gevent", PROXY_UPSTREAM=f"{refused} {good.url}")
        # Round robin starts with the first server: the refused one.
        post = request(proxy.port, "POST", "/echo?id=p1", body=b"data")
        assert post.status == 200 and json.loads(post.body)["body"] == "data"
        assert len(good.requests) == 1
    with upstreams(2) as (resets, good):
        resets.misbehave = "reset"
        proxy = proxies("gevent", PROXY_UPSTREAM=f"{resets.url} {good.url}")
        assert request(proxy.port, "GET", "/echo?id=g1").status == 200
        assert [r.target for r in resets.requests] == ["/echo?id=g1"]
        assert [r.target for r in good.requests] == ["/echo?id=g1"]
    with upstreams(2) as (resets, good):
        resets.misbehave = "reset"
        proxy = proxies("gevent", PROXY_UPSTREAM=f"{resets.url} {good.url}")
        post = request(proxy.port, "POST", "/echo?id=p2", body=b"once")
        assert post.status == 502 and post.header("X-Proxy-Error") == "upstream-error"
        assert [r.target for r in resets.requests] == ["/echo?id=p2"]
        assert good.requests == []
    with upstreams(2) as (a, b):
        proxy = proxies("gevent", PROXY_UPSTREAM=f"{a.url} {b.url}")
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            conn.request("GET", "/reset-mid-body?size=200000")
            reply = conn.getresponse()
            assert reply.status == 200
            with pytest.raises((http.client.IncompleteRead, ConnectionError)):
                reply.read()
        finally:
            conn.close()
        assert len(a.requests) + len(b.requests) == 1


def test_fail_statuses_backup_down_and_the_access_log(proxies: Callable[..., Proxy]) -> None:
    """A 503 listed in PROXY_FAIL_STATUSES would reach the client although another server
    was fine, a backup would take traffic from a healthy primary, a down server would
    get requests, or the access log would not say which servers were tried."""
    with upstreams(4) as (failing, good, spare, off):
        failing.status = 503
        proxy = proxies(
            "gevent",
            PROXY_UPSTREAM=group([failing, good, spare, off], "", "", "backup", "down"),
            PROXY_FAIL_STATUSES="503",
        )
        assert request(proxy.port, "GET", "/echo?id=1").status == 200
        assert len(failing.requests) == 1 and len(good.requests) == 1
        post = request(proxy.port, "POST", "/echo?id=2", body=b"b")
        assert post.status in (200, 503)  # a POST is never sent twice: whoever got it answers
        assert len(failing.requests) + len(good.requests) == 3
        assert spare.requests == [] and off.requests == []
        good.stop()
        wait_until(
            lambda: (
                request(proxy.port, "GET", "/echo?id=3").status == 200 and len(spare.requests) > 0
            ),
            10,
            "the backup to serve once no primary is left",
        )
        assert off.requests == []
        log = proxy.log()
        assert re.search(
            rf"upstream_addr=127\.0\.0\.1:{failing.port},127\.0\.0\.1:{good.port} "
            r"upstream_status=503,200",
            log,
        ), log[-2000:]
        states = [s["state"] for s in upstream_health(proxy)]
        assert states[3] == "down" and states[2] in ("backup", "up")


def test_a_group_of_one_is_never_ejected_and_all_out_is_still_tried(
    proxies: Callable[..., Proxy],
) -> None:
    """A single upstream marked out would turn a blip into minutes of 502s; with every
    server of a group out, requests would be refused instead of finding the first one back."""
    with upstreams(1) as servers:
        proxy = proxies("gevent", PROXY_UPSTREAM=servers[0].url)
        servers[0].stop()
        assert request(proxy.port, "GET", "/echo").status == 502
        assert upstream_health(proxy)[0]["state"] == "up"
        back = restart(servers, 0)
        assert request(proxy.port, "GET", "/echo").status == 200 and len(back.requests) == 1
    with upstreams(2) as servers:
        proxy = proxies("gevent", PROXY_UPSTREAM=group(servers), PROXY_FAIL_TIMEOUT="60")
        for server in servers:
            server.stop()
        assert request(proxy.port, "GET", "/echo").status == 502
        assert [s["state"] for s in upstream_health(proxy)] == ["ejected", "ejected"]
        assert proxy.health()["status"] == "unhealthy"
        back = restart(servers, 1)
        reply = request(proxy.port, "GET", "/echo")
        assert reply.status == 200 and len(back.requests) == 1


def test_metrics_of_a_group(proxies: Callable[..., Proxy]) -> None:
    """Prometheus would not show attempts per server, ejections, or who is up."""
    with upstreams(2) as (dead, good):
        dead.stop()
        proxy = proxies("gevent", PROXY_UPSTREAM=f"{dead.url} {good.url}")
        assert request(proxy.port, "GET", "/echo").status == 200

        def scrape() -> str:
            return request(proxy.port, "GET", "/_proxy/metrics").body.decode()

        dead_name = f"127.0.0.1:{dead.port}"
        wait_until(
            lambda: (
                f'wsgiproxy_upstream_ejections_total{{route="/",server="{dead_name}"}} 1.0'
                in scrape()
            ),
            5,
            "the ejection in the metrics",
        )
        text = scrape()
        assert f'wsgiproxy_upstream_up{{route="/",server="{dead_name}"}} 0.0' in text
        attempts = "wsgiproxy_upstream_requests_total"
        assert f'{attempts}{{route="/",server="{dead_name}",status_class="5xx"}} 1.0' in text
        assert 'wsgiproxy_upstream_retries_total{reason="upstream-refused"} 1.0' in text


def test_the_retry_budget_holds_while_two_of_three_servers_hang(
    proxies: Callable[..., Proxy],
) -> None:
    """Two silent servers out of three would have every timed-out request retried at
    once, doubling the load on the one server left (Envoy's retry budget)."""
    with upstreams(3) as (silent1, silent2, good):
        silent1.misbehave = silent2.misbehave = "hang"
        # The good server as backup: a retry goes to the other silent server first and
        # holds its place in the budget for the whole read timeout.
        proxy = proxies(
            "gevent",
            PROXY_UPSTREAM=group([silent1, silent2, good], "", "", "backup"),
            HTTP_READ_TIMEOUT="1",
            PROXY_MAX_FAILS="1000",  # keep them in rotation: the budget is what is tested
            PROXY_FAIL_TIMEOUT="1",
        )
        replies = run_concurrently(30, lambda i: request(proxy.port, "GET", f"/echo?id={i}"))
        statuses = Counter(r.status for r in replies)
        assert set(statuses) <= {200, 504}, statuses
        assert statuses[504] > 0, "every timed-out request was retried: no budget"
        text = request(proxy.port, "GET", "/_proxy/metrics").body.decode()
        spent = re.search(r'wsgiproxy_upstream_retries_total\{reason="budget-spent"\} (\S+)', text)
        retried = re.search(
            r'wsgiproxy_upstream_retries_total\{reason="upstream-timeout"\} (\S+)', text
        )
        assert spent is not None and float(spent.group(1)) >= statuses[504] > 0
        # Without a budget all 30 would go to the other silent server, then to the good
        # one: 60 retries, no 504. With it, at most max(3, 20% of 30) = 6 at once.
        assert retried is not None and float(retried.group(1)) <= 12
        assert statuses[200] == len(good.requests) <= 6


def test_a_worker_killed_mid_request_leaves_no_request_in_flight(
    proxies: Callable[..., Proxy],
) -> None:
    """A worker killed with requests in flight would leave them counted forever, and
    least_conn would keep steering away from a server that is in fact idle."""
    with upstreams(2) as (a, b):
        a.delay = b.delay = 30.0  # held until the worker dies
        proxy = proxies("gevent", 2, PROXY_UPSTREAM=group([a, b]), PROXY_BALANCE="least_conn")
        clients = [
            threading.Thread(target=_lost_request, args=(proxy.port,), daemon=True)
            for _ in range(6)
        ]
        for client in clients:
            client.start()
        wait_until(
            lambda: sum(int(s["in_flight"]) for s in upstream_health(proxy)) == 6,
            10,
            "six requests in flight",
        )
        assert proxy.proc is not None
        victims = children(proxy.proc.pid)
        assert len(victims) == 2
        for victim in victims:  # both: whichever of them holds the six requests
            os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: (
                set(children(proxy.proc.pid)).isdisjoint(victims)  # type: ignore[union-attr]
                and len(children(proxy.proc.pid)) == 2  # type: ignore[union-attr]
                and sum(int(s["in_flight"]) for s in upstream_health(proxy)) == 0
            ),
            20,
            "the killed workers' requests to leave the in-flight counts",
        )
        a.delay = b.delay = 0.0
        a.stop()  # ends the survivors' parked requests (the upstream closes them)
        b.stop()
        wait_until(
            lambda: sum(int(s["in_flight"]) for s in upstream_health(proxy)) == 0,
            15,
            "every count back to 0",
        )
        for client in clients:
            client.join(30)


def _lost_request(port: int) -> None:
    """A request whose answer may never come (its worker is killed): errors are expected."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        request(port, "GET", "/echo", timeout=40)
