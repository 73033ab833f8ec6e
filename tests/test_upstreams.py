"""Upstream groups without a server: the shared table, ejection, and who gets picked.

Time is passed in (``now``), so nothing here sleeps; the shared table is a real mapped
file, opened twice as two workers would."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from wsgiproxy.settings import Settings
from wsgiproxy.upstreams import shared
from wsgiproxy.upstreams.balance import LeastConn, SmoothRoundRobin
from wsgiproxy.upstreams.routes import Group, Upstreams
from wsgiproxy.upstreams.server import Server
from wsgiproxy.upstreams.shared import SharedState


def upstreams(path: str | None = None, **env: str) -> Upstreams:
    settings = Settings.from_env(env)
    return Upstreams(
        settings.requests,
        settings.balancing,
        lambda origin: ("pool", origin),  # type: ignore[arg-type,return-value]
        shared_path=path,
    )


def group(text: str, **env: str) -> Group:
    found = upstreams(PROXY_UPSTREAM=text, **env).fallback
    assert found is not None
    return found


def names(servers: list[Server | None]) -> str:
    return "".join(s.url.host if s is not None else "-" for s in servers)


# --- balancing --------------------------------------------------------------------------


def test_smooth_round_robin_spreads_by_weight_without_runs() -> None:
    """Weights 5:1:1 would send five requests in a row to one server (nginx's example)."""
    g = group("http://a weight=5 http://b http://c")
    picked = [g.pick(0.0) for _ in range(7)]
    assert names(picked) == "aabacaa"
    many = Counter(s.url.host for s in (g.pick(0.0) for _ in range(700)) if s is not None)
    assert many == {"a": 500, "b": 100, "c": 100}


def test_least_conn_prefers_the_least_loaded_per_weight() -> None:
    """A slow server would get as many requests as a fast one."""
    g = group("http://a http://b weight=2 http://c", PROXY_BALANCE="least_conn")
    a, b, c = g.servers
    for server, load in ((a, 3), (b, 2), (c, 2)):
        for _ in range(load):
            server.started()
    assert g.pick(0.0) is b  # 2 in flight at weight 2: 1 per unit, against 3 and 2
    c.finished()
    c.finished()
    assert g.pick(0.0) is c  # now idle
    tied = LeastConn()
    a.finished()  # a: 2, b: 2/2 = 1, c: 0 -> c; then ties between equals go round robin
    b.finished()
    b.finished()
    picks = names([tied.pick([b, c]) for _ in range(6)])  # both idle: tied
    assert (picks.count("b"), picks.count("c")) == (4, 2)  # round robin by weight 2:1


def test_round_robin_skips_what_is_not_a_candidate() -> None:
    """An ejected server would keep its turn and get requests anyway."""
    rr = SmoothRoundRobin()
    g = group("http://a http://b http://c")
    a, b, c = g.servers
    assert names([rr.pick([a, c]) for _ in range(4)]) == "acac"


# --- ejection ---------------------------------------------------------------------------


def test_failures_eject_with_backoff_and_a_trial_restores() -> None:
    """A dead server would keep getting requests, a flapping one would come back at once,
    or a recovered one would stay out."""
    g = group("http://a http://b", PROXY_FAIL_TIMEOUT="10", PROXY_MAX_EJECTION="35")
    a, b = g.servers
    assert a.failed(100.0) is True  # PROXY_MAX_FAILS=1
    assert a.state(100.0) == "ejected" and names([g.pick(105.0) for _ in range(3)]) == "bbb"
    assert g.pick(110.0) is a  # the ejection ended: one trial...
    assert g.pick(110.0) is b  # ...at a time
    assert a.failed(111.0) is True  # the trial failed: out for twice as long
    assert a.shared.record(a.index).ejected_until == 131.0
    assert g.pick(131.0) is a and a.failed(131.5)  # and again: 40 s, capped at 35
    assert a.shared.record(a.index).ejected_until == 166.5
    assert g.pick(166.5) is a
    a.succeeded(166.6)
    assert a.state(166.6) == "up" and a.shared.record(a.index).ejections_in_row == 0
    assert a.shared.record(a.index).ejections == 3


def test_max_fails_counts_within_fail_timeout() -> None:
    """Scattered failures hours apart would eject a healthy server."""
    g = group("http://a max_fails=3 fail_timeout=10 http://b")
    a = g.servers[0]
    assert not a.failed(0.0) and not a.failed(5.0)
    assert not a.failed(20.0)  # the window moved on: this is the first again
    assert not a.failed(21.0) and a.failed(22.0)


def test_a_server_alone_or_with_max_fails_0_is_never_ejected() -> None:
    """A single upstream would be marked out and every request refused."""
    alone = group("http://a").servers[0]
    assert not alone.failed(0.0) and alone.state(0.0) == "up"
    uncounted = group("http://a max_fails=0 http://b").servers[0]
    assert not any(uncounted.failed(float(t)) for t in range(10))


def test_backup_only_while_every_primary_is_out_and_down_never() -> None:
    """A backup would take traffic from healthy primaries, or a down server get some."""
    g = group("http://a http://b backup http://c down")
    a, b, c = g.servers
    assert names([g.pick(0.0) for _ in range(3)]) == "aaa"
    a.failed(0.0)
    assert names([g.pick(1.0) for _ in range(3)]) == "bbb"
    assert [s.state(1.0) for s in g.servers] == ["ejected", "backup", "down"]


def test_when_every_server_is_out_the_one_back_soonest_is_tried() -> None:
    """With every server marked, requests would be refused instead of tried."""
    g = group("http://a http://b")
    a, b = g.servers
    a.failed(0.0)  # out until 10
    b.failed(5.0)  # out until 15
    assert g.pick(6.0) is a
    assert g.pick(6.0, [a]) is b
    assert g.pick(6.0, [a, b]) is None
    assert not g.up(6.0) and g.up(10.0)


# --- the shared table -------------------------------------------------------------------


def test_two_workers_share_ejection_and_in_flight(tmp_path: Path) -> None:
    """A server ejected by one worker would still get the other's requests, and
    least_conn would count only its own worker's requests."""
    path = str(tmp_path / "state")
    shared.create(path, servers=2, slots=4)
    env = {"PROXY_UPSTREAM": "http://a http://b"}
    one = upstreams(path, **env)
    two_state = SharedState(path, 2, pid=os.getppid())  # another live process's slot
    assert two_state.slot != one.shared.slot
    a1 = one.servers[0]
    a1.failed(50.0)
    assert two_state.record(0).ejected_until == 60.0
    a1.started()
    two_state.started(0)
    two_state.started(0)
    assert a1.in_flight() == 3 and two_state.in_flight(0) == 3
    shared.forget(path, os.getppid())  # the master reaped the second worker
    assert a1.in_flight() == 1 and a1.shared.counts(0) == (1, 1, 0)
    two_state.close()
    one.close()


def test_a_worker_beyond_the_tables_slots_serves_with_its_own_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """More workers than the master sized the table for (gunicorn's -w, kill -TTIN):
    failing would stop the worker booting, and gunicorn would stop the whole server."""
    path = str(tmp_path / "state")
    shared.create(path, servers=2, slots=1)
    taken = SharedState(path, 2, pid=os.getppid())  # a live process holds the only slot
    with caplog.at_level(logging.WARNING, logger="wsgiproxy"):
        ups = upstreams(path, PROXY_UPSTREAM="http://a http://b")
    assert "has no free worker slot of 1" in caplog.text
    assert "set PROXY_WORKERS" in caplog.text
    assert ups.servers[0].failed(50.0)
    assert ups.servers[0].ejected_now(55.0)
    assert taken.record(0).ejected_until == 0.0  # its own state, not the full table
    ups.close()
    taken.close()


def test_a_table_made_for_another_configuration_is_refused(tmp_path: Path) -> None:
    """A worker would read another configuration's servers as its own."""
    path = str(tmp_path / "state")
    shared.create(path, servers=3, slots=2)
    with pytest.raises(RuntimeError, match="holds 3 servers, this worker has 2"):
        upstreams(path, PROXY_UPSTREAM="http://a http://b")


def test_health_report_of_a_group(tmp_path: Path) -> None:
    """An operator could not see which server is out, for how long, or why."""
    ups = upstreams(PROXY_ROUTES="/api=http://a http://b weight=3")
    a, b = ups.servers
    a.started()
    a.finished("upstream-refused")
    a.failed(1000.0)
    report: Any = ups.report(1004.0)
    first, second = report["/api"]
    assert (first["url"], first["state"], first["ejections"]) == ("http://a", "ejected", 1)
    assert first["ejected_until"] is not None
    assert (first["requests"], first["failures"], first["last_error"]) == (
        1,
        1,
        "upstream-refused",
    )
    assert (second["state"], second["weight"], second["ejected_until"]) == ("up", 3, None)
    assert ups.trouble(1004.0) == ([], ["/api http://a"])
