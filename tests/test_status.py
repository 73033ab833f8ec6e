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
from wsgiproxy.status import health_url, main, render

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


def server(url: str, state: str = "up", **fields: Any) -> dict[str, Any]:
    """One server of ``upstreams`` as the proxy reports it before ejections were added."""
    figures: dict[str, Any] = {"weight": 1, "in_flight": 0, "requests": 0, "failures": 0}
    base = {"url": url, "state": state, **figures, "last_error": None, "last_probe": None}
    return base | fields


def routes_block(text: str) -> list[str]:
    """The ``routes`` heading and the lines under it."""
    lines = text.splitlines()
    start = lines.index("routes")
    end = start + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    return lines[start:end]


UPSTREAMS: dict[str, Any] = {
    "/api": [
        server("http://10.0.0.5:8000", in_flight=3, requests=1200, ejections=0, ejected_until=None),
        server(
            "http://10.0.0.6:8000",
            "ejected",
            requests=40,
            failures=3,
            ejections=2,
            ejected_until=12.3,
            last_error="upstream-refused",
        ),
        server("http://10.0.0.7:8000", "backup", weight=3, ejections=0, ejected_until=None),
    ],
    "/": [
        server("http://10.0.0.8:80", "down", weight=10, ejections=0, ejected_until=None),
        server(
            "http://10.0.0.9:80",
            "ejected",
            requests=7,
            failures=7,
            ejections=1,
            ejected_until=0,
            last_error="upstream-timeout",
        ),
        server(
            "http://10.0.0.10:80",
            in_flight=12,
            requests=5,
            failures=1,
            ejections=0,
            ejected_until=None,
            last_error="upstream-reset",
        ),
    ],
}


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
def test_routes_show_each_server_state_and_figures_aligned() -> None:
    """An operator sees which server of which route is up, ejected, down or a backup,
    its load and failures, when an ejected one is tried again and its last error."""
    responses.get(URL, json=dict(HEALTH, upstreams=UPSTREAMS))
    out = io.StringIO()
    assert main([], out=out) == 0
    assert routes_block(out.getvalue()) == [
        "routes",
        "  /api  http://10.0.0.5:8000  up       w1   in flight 3   requests 1200  failures 0",
        "        http://10.0.0.6:8000  ejected  w1   in flight 0   requests 40    failures 3",
        "                              ejections 2 (retry in 13s)  last error upstream-refused",
        "        http://10.0.0.7:8000  backup   w3   in flight 0   requests 0     failures 0",
        "  /     http://10.0.0.8:80    down     w10  in flight 0   requests 0     failures 0",
        "        http://10.0.0.9:80    ejected  w1   in flight 0   requests 7     failures 7",
        "                              ejections 1 (retry due)  last error upstream-timeout",
        "        http://10.0.0.10:80   up       w1   in flight 12  requests 5     failures 1",
        "                              last error upstream-reset",
    ]
    assert all(len(line) <= 100 for line in out.getvalue().splitlines())
    # The lines around the new block are where they were.
    assert "probe   http://10.0.0.5:80/healthz: FAILED (answered 500)" in out.getvalue()


def test_routes_without_ejection_fields_as_todays_proxy_reports_them() -> None:
    """A proxy that reports no ``ejections``/``ejected_until`` still shows every server,
    and a short line keeps its last error on it."""
    upstreams = {
        "/": [
            server("http://a:8000", requests=9),
            server("http://b:8000", "down", last_error="upstream-refused"),
        ]
    }
    assert routes_block(render(dict(HEALTH, upstreams=upstreams))) == [
        "routes",
        "  /  http://a:8000  up    w1  in flight 0  requests 9  failures 0",
        "     http://b:8000  down  w1  in flight 0  requests 0  failures 0  "
        "last error upstream-refused",
    ]


@pytest.mark.parametrize(
    ("state", "ejected_until", "shown"),
    [
        ("ejected", 0.2, "  ejections 3 (retry in 1s)"),
        ("ejected", 125, "  ejections 3 (retry in 2m05s)"),
        ("ejected", 1_800_000_040.5, "  ejections 3 (retry in 41s)"),  # clock time: now + 40.5
        ("ejected", 1_799_999_999.0, "  ejections 3 (retry due)"),
        ("ejected", None, "  ejections 3"),
        ("up", 0, "  ejections 3"),  # back up: its ejection being over is no news
        ("up", None, "  ejections 3"),
    ],
)
def test_ejection_end_in_seconds_left_or_clock_time(
    state: str, ejected_until: Any, shown: str
) -> None:
    """When an ejected server gets its next try reads right whether the proxy gives
    seconds left or a wall-clock time."""
    upstreams = {"/": [server("http://a:1", state, ejections=3, ejected_until=ejected_until)]}
    text = render(dict(HEALTH, upstreams=upstreams), now=1_800_000_000.0)
    assert routes_block(text)[1].endswith(f"failures 0{shown}")


def test_no_upstreams_no_routes_heading() -> None:
    """An older proxy without ``upstreams`` shows the view as before, with no empty heading."""
    assert "routes" not in render(HEALTH).splitlines()
    assert routes_block(render(dict(HEALTH, upstreams={"/api": []}))) == [
        "routes",
        "  /api  (no servers)",
    ]


@responses.activate
def test_route_with_no_server_up_exits_1() -> None:
    """An unhealthy proxy (a route with no server up) exits 1 and shows that route's servers."""
    upstreams = {"/api": [server("http://a:1", "ejected", ejections=1, ejected_until=5)]}
    responses.get(URL, json=dict(HEALTH, status="unhealthy", upstreams=upstreams), status=503)
    out = io.StringIO()
    assert main([], out=out) == 1
    assert routes_block(out.getvalue())[1] == (
        "  /api  http://a:1  ejected  w1  in flight 0  requests 0  failures 0  "
        "ejections 1 (retry in 5s)"
    )


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
    line = next(line for line in out.stdout.splitlines() if line.startswith("  /  "))
    assert line.split()[1:3] == [upstream.url.rstrip("/"), "up"], out.stdout
    assert "requests " in line and "failures " in line
