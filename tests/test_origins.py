"""A forward proxy that meets thousands of hosts keeps a bounded table of them."""

from __future__ import annotations

import http.client
import os
from collections.abc import Callable

from tests.support.many_ports import many_ports
from tests.support.proxy import Proxy
from tests.support.wait import wait_until
from wsgiproxy.client.manager import MAX_ORIGINS

ORIGINS = 2 * MAX_ORIGINS + 500
#: fds a worker opens on first use besides connections (metrics files, a client socket)
SLACK = 5


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_forward_origins_are_bounded_least_recently_used_out(
    proxies: Callable[..., Proxy],
) -> None:
    """A worker forwarding to ever more hosts would grow without bound and keep
    connections to hosts nobody asks for: origins known and open fds must stay flat."""
    proxy = proxies("gevent")
    worker = proxy.health()["pid"]
    fds_at_start = open_fds(worker)
    with many_ports(ORIGINS) as origins:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:

            def fetch(port: int) -> None:
                conn.request("GET", f"http://127.0.0.1:{port}/")
                reply = conn.getresponse()
                assert (reply.status, reply.read()) == (200, b"ok")

            for port in origins.ports:
                fetch(port)
        finally:
            conn.close()
        health = proxy.settled()
        assert health["pid"] == worker
        client, pool = health["client"], health["pool"]
        assert (client["origins"], client["max_origins"]) == (MAX_ORIGINS, MAX_ORIGINS)
        assert pool["open"] <= pool["max_connections"]
        assert open_fds(worker) <= fds_at_start + pool["max_connections"] + SLACK
        # Idle connections above the kept ones go after 5 s unused (the surplus window).
        keep = pool["max_keepalive"]
        wait_until(lambda: proxy.health()["pool"]["idle"] <= keep, 10, "the surplus to be shed")
        wait_until(
            lambda: open_fds(worker) <= fds_at_start + keep + SLACK,
            5,
            f"the worker's fds to fall back to {fds_at_start} + {keep} kept connections",
        )
        wait_until(
            lambda: origins.open_connections() <= keep,
            5,
            "upstream connections to forgotten origins to close",
        )
        assert origins.answered == ORIGINS
