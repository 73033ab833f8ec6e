"""The health thread, admin endpoints, metrics and access log, over real gunicorn."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import request
from tests.support.processes import run_python
from tests.support.proxy import Proxy
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until
from wsgiproxy.app import create_app
from wsgiproxy.settings import Settings

WORKERS = ["gevent", "gthread"]


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` of a Prometheus text exposition (0 when absent)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.mark.parametrize("worker_class", WORKERS)
def test_health_thread_closes_expired_idle_connections_without_traffic(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """Idle upstream sockets do not linger past HTTP_KEEPALIVE_EXPIRY when no request comes."""
    proxy = proxies(
        worker_class,
        PROXY_UPSTREAM=upstream.url,
        HTTP_KEEPALIVE_EXPIRY="0.5",
        HTTP_HEALTH_INTERVAL="0.3",
    )
    assert request(proxy.port, "GET", "/echo").status == 200
    wait_until(lambda: upstream.closed_by_peer >= 1, 10, "the proxy to close the idle connection")
    health = proxy.health()
    assert health["pool"]["idle"] == 0 and health["pool"]["counters"]["expired"] >= 1


@pytest.mark.parametrize("worker_class", WORKERS)
def test_health_thread_closes_connections_the_upstream_dropped(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """Idle connections the upstream closed are cleaned up by the thread, not by a request."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=upstream.url, HTTP_HEALTH_INTERVAL="0.3")
    assert request(proxy.port, "GET", "/echo").status == 200
    assert proxy.settled()["pool"]["idle"] == 1
    assert upstream.close_idle_connections() == 1
    wait_until(lambda: proxy.health()["pool"]["idle"] == 0, 10, "the dropped connection to go")


@pytest.mark.parametrize("worker_class", WORKERS)
def test_failing_probe_degrades_then_unhealthy_then_recovers(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """HTTP_HEALTH_PATH failing: degraded, then unhealthy (503) after 3, then ok again."""
    proxy = proxies(
        worker_class,
        PROXY_UPSTREAM=upstream.url,
        HTTP_HEALTH_PATH="/health",
        HTTP_HEALTH_INTERVAL="0.2",
    )
    wait_until(lambda: proxy.health()["probes"][0]["ok"] is True, 10, "a first good probe")
    assert request(proxy.port, "GET", "/_proxy/health").status == 200
    upstream.health_status = 500
    wait_until(lambda: proxy.health()["status"] in ("degraded", "unhealthy"), 10, "degraded")
    wait_until(lambda: proxy.health()["status"] == "unhealthy", 10, "unhealthy")
    reply = request(proxy.port, "GET", "/_proxy/health")
    assert reply.status == 503
    probe = json.loads(reply.body)["probes"][0]
    assert probe["failures_in_a_row"] >= 3 and probe["status"] == 500
    assert probe["url"] == f"{upstream.url}/health"
    upstream.health_status = 200
    wait_until(lambda: proxy.health()["status"] == "ok", 10, "recovery to ok")
    assert request(proxy.port, "GET", "/_proxy/health").status == 200


def test_metrics_are_prometheus_text_summed_over_two_workers(
    proxies: Callable[..., Proxy], upstream: UpstreamServer
) -> None:
    """/_proxy/metrics counts every worker's requests, whichever worker answers."""
    proxy = proxies("gevent", workers=2, PROXY_UPSTREAM=upstream.url)
    sent = 0
    served_by: dict[int, int] = {}
    for _ in range(20):  # bounded: until both workers have served traffic
        for _ in range(10):
            assert request(proxy.port, "GET", "/echo").status == 200
            sent += 1
        for _ in range(10):
            health = proxy.health()
            pool = health["pool"]["counters"]
            served_by[health["pid"]] = pool["created"] + pool["reused"]
        if len(served_by) == 2 and all(served_by.values()):
            break
    assert len(served_by) == 2 and all(served_by.values()), served_by
    assert request(proxy.port, "GET", "/status/503").status == 503

    def scrape() -> str:
        return request(proxy.port, "GET", "/_proxy/metrics").body.decode()

    # The answering worker publishes its own tallies for the scrape; the other worker's
    # (and both pools' counters) reach the shared files within a second.
    wait_until(
        lambda: (
            metric_value(scrape(), "wsgiproxy_request_duration_seconds_count") >= sent + 1
            and metric_value(scrape(), "wsgiproxy_pool_events_total", event="created") >= 2
        ),
        5,
        "both workers' requests and pool counters in the metrics",
    )
    text = scrape()
    assert metric_value(text, "wsgiproxy_requests_total", method="GET", status_class="2xx") == sent
    assert metric_value(text, "wsgiproxy_requests_total", status_class="5xx") == 1
    # Admin requests (the scrapes, /_proxy/health) are not proxied traffic: not counted.
    assert metric_value(text, "wsgiproxy_pool_wait_seconds_count") == sent + 1
    assert metric_value(text, "wsgiproxy_request_duration_seconds_count") == sent + 1


def test_upstream_errors_are_counted_by_kind(
    proxies: Callable[..., Proxy], upstream: UpstreamServer
) -> None:
    """A refused upstream shows in the metrics under its X-Proxy-Error kind."""
    proxy = proxies("gthread", PROXY_ROUTES="/dead=http://127.0.0.1:9")
    assert request(proxy.port, "GET", "/dead").status == 502
    text = request(proxy.port, "GET", "/_proxy/metrics").body.decode()
    assert metric_value(text, "wsgiproxy_upstream_errors_total", kind="upstream-refused") == 1


@pytest.mark.parametrize("worker_class", WORKERS)
def test_health_thread_runs_in_each_worker_never_in_the_master(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """The master stays single-threaded; each worker runs exactly one health thread."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=upstream.url)
    assert proxy.proc is not None
    tasks = list(Path(f"/proc/{proxy.proc.pid}/task").iterdir())
    assert len(tasks) == 1, f"the gunicorn master runs {len(tasks)} threads"
    thread = proxy.health()["health_thread"]
    assert thread["running"] is True and thread["threads"] == 1


def test_debug_shows_recent_pool_decisions(
    proxies: Callable[..., Proxy], upstream: UpstreamServer
) -> None:
    """/_proxy/debug explains what the pool did for recent requests, with times."""
    proxy = proxies("gevent", PROXY_UPSTREAM=upstream.url)
    for _ in range(3):
        assert request(proxy.port, "GET", "/echo").status == 200
        proxy.settled()  # released before the next request arrives
    decisions = json.loads(request(proxy.port, "GET", "/_proxy/debug").body)["decisions"]
    assert [d["decision"] for d in decisions][:3] == ["create", "reuse", "reuse"]
    assert all(d["origin"] == upstream.url and d["time"] > 0 for d in decisions)


def test_access_log_shows_upstream_time_pool_wait_and_reuse(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, tmp_path: Path
) -> None:
    """Each access log line says how long the upstream took and if the connection was reused."""
    log_file = tmp_path / "access.log"
    proxy = proxies("gevent", PROXY_UPSTREAM=upstream.url, PROXY_ACCESS_LOG=str(log_file))
    request(proxy.port, "GET", "/echo?first")
    proxy.settled()
    request(proxy.port, "GET", "/echo?second")
    wait_until(lambda: "second" in log_file.read_text(), 5, "the access log lines")
    lines = [line for line in log_file.read_text().splitlines() if "/echo?" in line]
    assert "conn=new" in lines[0] and "conn=reused" in lines[1]
    for line in lines:
        assert " upstream=" in line and "ms pool_wait=" in line and "=-ms" not in line


def test_no_leaks_after_resets_hangs_and_aborts(
    proxies: Callable[..., Proxy], upstream: UpstreamServer
) -> None:
    """After resets, timeouts and errors, no connection is held past its request."""
    proxy = proxies("gthread", PROXY_UPSTREAM=upstream.url, HTTP_READ_TIMEOUT="0.5")
    assert request(proxy.port, "GET", "/reset").status == 502
    assert request(proxy.port, "GET", "/hang").status == 504
    assert request(proxy.port, "GET", "/bad-response").status == 502
    health = proxy.settled()
    assert health["leaks"] == {"checked_out": 0, "in_flight": 0, "held_past_request": []}


def test_gevent_worker_passes_its_self_check(
    proxies: Callable[..., Proxy], upstream: UpstreamServer
) -> None:
    """Under gevent the pool's lock and urllib3's TLS are gevent's: no warning in health."""
    proxy = proxies("gevent", PROXY_UPSTREAM=upstream.url)
    assert proxy.health()["gevent_warnings"] == []
    assert "gevent self-check" not in proxy.log()


def test_gevent_self_check_names_wrong_import_order() -> None:
    """urllib3 imported before patching is reported with how to fix it."""
    code = (
        "import urllib3\n"
        "from gevent import monkey; monkey.patch_all()\n"
        "from wsgiproxy.app import create_app\n"
        "from wsgiproxy.settings import Settings\n"
        "app = create_app(Settings.from_env({}), start_health=False)\n"
        "print(app.extensions['wsgiproxy'].gevent_warnings)\n"
    )
    out = run_python("-c", code)
    assert out.returncode == 0, out.stderr
    assert "urllib3 was imported before gevent patched ssl" in out.stdout


def test_a_failing_check_does_not_stop_later_checks() -> None:
    """An exception inside one check is logged and the thread carries on."""
    app = create_app(
        Settings.from_env({"HTTP_HEALTH_INTERVAL": "0.05", "PROXY_UPSTREAM": "http://127.0.0.1:9"}),
        start_health=False,
    )
    state = app.extensions["wsgiproxy"]
    monitor = state.monitor
    ran = threading.Event()

    def broken() -> None:
        raise RuntimeError("boom")

    def later() -> None:
        ran.set()

    monitor.close_expired = broken  # type: ignore[method-assign]
    monitor.close_dropped = later  # type: ignore[method-assign]
    monitor.start()
    try:
        assert ran.wait(5), "the step after the failing one never ran"
        wait_until(lambda: monitor.checks >= 2, 5, "a second round of checks")
        assert monitor.check_errors >= 2 and monitor.running
        assert monitor.report()["last_result"] == "1 step(s) failed"
    finally:
        state.close()
    assert not monitor.running


def test_a_request_that_dies_unexpectedly_leaves_no_phantom_leak() -> None:
    """A request ended by something other than a proxy error (here the pool closed under
    it, as at shutdown) would stay "in flight" forever, and /_proxy/health would report
    every connection held since as a leak."""
    from werkzeug.test import Client

    app = create_app(
        Settings.from_env({"PROXY_UPSTREAM": "http://127.0.0.1:9"}), start_health=False
    )
    state = app.extensions["wsgiproxy"]
    state.client.close()  # later acquires raise RuntimeError: the pool is closed
    client = Client(app)
    with pytest.raises(RuntimeError, match="closed"):
        client.get("/anything")
    health = client.get("/_proxy/health").get_json()
    assert health["leaks"] == {"checked_out": 0, "in_flight": 0, "held_past_request": []}
    (server,) = health["upstreams"]["/"]
    assert (server["in_flight"], server["requests"]) == (0, 1)
    assert health["pool"]["active"] == health["pool"]["connecting"] == 0
    state.close()
