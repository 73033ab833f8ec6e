"""`python -m wsgiproxy status`: the terminal view, with `responses` standing in for the
admin endpoint (the code under test talks through `requests`), plus one real run."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import requests
import responses

from tests.support.processes import run_python
from tests.support.proxy import Proxy
from tests.support.upstream_server import UpstreamServer
from wsgiproxy.__main__ import main as cli_main
from wsgiproxy.status import health_url, main

HEALTH: dict[str, Any] = {
    "status": "degraded",
    "pid": 4242,
    "pool_enabled": True,
    "pool": {
        "active": 3,
        "idle": 2,
        "connecting": 1,
        "queued": 7,
        "max_connections": 100,
        "max_keepalive": 20,
        "by_origin": {"http://10.0.0.5:80": {"active": 3, "idle": 2, "connecting": 1}},
        "counters": {"created": 6, "reused": 40, "pool_timeouts": 1},
    },
    "probes": [
        {
            "url": "http://10.0.0.5:80/healthz",
            "ok": False,
            "error": "answered 500",
            "failures_in_a_row": 1,
        }
    ],
    "leaks": {"checked_out": 4, "in_flight": 4, "held_past_request": []},
    "gevent_warnings": [],
}
URL = "http://127.0.0.1:8080/_proxy/health"


@responses.activate
def test_status_prints_pool_figures_probes_and_leaks() -> None:
    """An operator sees status, pid, pool figures per origin, failing probes and leaks."""
    responses.get(URL, json=HEALTH)
    out = io.StringIO()
    assert main([], out=out) == 0
    text = out.getvalue()
    assert "status  degraded" in text and "worker pid 4242" in text
    assert "active 3  idle 2  connecting 1  queued 7" in text
    assert "http://10.0.0.5:80  active 3  idle 2  connecting 1" in text
    assert "FAILED (answered 500), 1 failure(s) in a row" in text
    assert "leaks   0 held past their request (4 checked out, 4 in flight)" in text


@responses.activate
def test_unhealthy_proxy_exits_1_and_still_shows_why() -> None:
    """A script using the tool can tell an unhealthy proxy (503) from a healthy one."""
    responses.get(URL, json=dict(HEALTH, status="unhealthy"), status=503)
    out = io.StringIO()
    assert main(["http://127.0.0.1:8080"], out=out) == 1
    assert "status  unhealthy" in out.getvalue()


@responses.activate
def test_unreachable_proxy_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A proxy that is down gives one line naming the URL, not a traceback."""
    responses.get(URL, body=requests.ConnectionError("refused"))
    assert main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"wsgiproxy status: cannot reach the proxy at {URL}")
    assert len(err.strip().splitlines()) == 1


@responses.activate
def test_watch_refreshes_each_interval() -> None:
    """--watch redraws with fresh figures; the sleep between views is the interval."""
    responses.get(URL, json=HEALTH)
    responses.get(URL, json=dict(HEALTH, pid=5151))
    out = io.StringIO()
    sleeps: list[float] = []
    assert main(["--watch", "--count", "2"], out=out, sleep=sleeps.append) == 0
    text = out.getvalue()
    assert text.count("\x1b[H\x1b[2J") == 2 and "4242" in text and "5151" in text
    assert sleeps == [1.0]


@responses.activate
def test_not_a_wsgiproxy_is_said_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    """Pointing the tool at something else says so instead of crashing on the JSON."""
    responses.get(URL, body="<html>hello</html>", status=200)
    assert main([]) == 1
    assert "did not answer JSON" in capsys.readouterr().err


def test_health_url_accepts_base_or_full_url() -> None:
    """Both the proxy's base URL and the health URL itself work, with a custom prefix."""
    assert health_url("http://h:1/", "/_proxy") == "http://h:1/_proxy/health"
    assert health_url("http://h:1/_proxy/health", "/_proxy") == "http://h:1/_proxy/health"
    assert health_url("http://h:1", "/admin") == "http://h:1/admin/health"


def test_cli_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m wsgiproxy` with an unknown command says what exists."""
    assert cli_main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_status_against_a_real_proxy(
    proxies: Callable[..., Proxy], upstream: UpstreamServer
) -> None:
    """`python -m wsgiproxy status URL` reads a running gunicorn proxy."""
    proxy = proxies("gevent", PROXY_UPSTREAM=upstream.url)
    out = run_python("-m", "wsgiproxy", "status", proxy.url, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("status  ok")
    assert f"worker pid {proxy.health()['pid']}" in out.stdout
