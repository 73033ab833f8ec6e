"""The goals of a run, as data: each a text, a metric, a comparison and a target.

A metric (METRIC_FNS) reads the medians, the queue-pressure run and the 50 MB check, and
gives the measured value with how the report shows it, or None when what it compares
was not measured at all: the goal's line then reads ``unmeasured`` (its own text when
that is None; no line when it is "").
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from constants import QUEUE_CLIENTS, QUEUE_LIMIT, WORKERS
from proxies import GROUP_CELL, OURS, WSGI_ALTERNATIVES
from report import fmt, max_rss_per_worker, ratio


@dataclass(frozen=True)
class Goal:
    text: str
    metric: str  # a key of METRIC_FNS
    compare: str  # a key of COMPARE: measured <compare> target passes
    target: float
    cell: str = ""
    against: str = ""  # the proxy wsgiproxy is compared with
    unmeasured: str | None = None
    subject: str = OURS  # the proxy measured (a variant of ours: wsgiproxy-group3)
    key: str = ""  # scenario metrics: the key of the scenario's result (failover.analyse...)


BASELINE = "flask-urllib3"  # "the shared-PoolManager app"

# fmt: off
GOALS = [
    Goal("100 B at 64 connections: at least 1.5x the best WSGI alternative's req/s",
         "rps_vs_best", ">=", 1.5, "100B c64"),
    Goal("100 B at 64 connections: at least 3x Flask + requests per request",
         "rps_vs", ">=", 3, "100B c64", "flask-requests"),
    Goal("100 B at 64 connections: at least 0.15x nginx",
         "rps_vs", ">=", 0.15, "100B c64", "nginx"),
    Goal("100 B at 64 connections: at least 0.45x the stack's ceiling (bare WSGI app)",
         "rps_vs", ">=", 0.45, "100B c64", "bare"),
    Goal("Defaults, 100 B at 64 connections: at most 2 upstream connections opened per 1,000 requests",
         "conns_per_1k", "<=", 2, "100B c64"),
    Goal("Defaults, 100 B at 256 connections: at most 2 upstream connections opened per 1,000 requests",
         "conns_per_1k", "<=", 2, "100B c256"),
    Goal("Defaults, 100 B at 64 connections: at least 0.98x the req/s of HTTP_MAX_KEEPALIVE_CONNECTIONS=100",
         "rps_vs", ">=", 0.98, "100B c64", "wsgiproxy-keep100"),
    Goal("Defaults, 100 B at 256 connections: at least 0.98x the req/s of HTTP_MAX_KEEPALIVE_CONNECTIONS=100",
         "rps_vs", ">=", 0.98, "100B c256", "wsgiproxy-keep100"),
    Goal("Forward mode, 100 B at 64 connections: at least 0.5x proxy.py",
         "rps_vs", ">=", 0.5, "forward 100B c64", "proxypy"),
    Goal("HTTPS upstream at 64: at least 10x the new-connection-per-request baseline",
         "rps_vs", ">=", 10, "HTTPS 100B c64", "wsgiproxy-nopool"),
    Goal("1 connection (100B c1): added latency over no proxy at most half the shared-PoolManager app's",
         "added_p50_vs", "<=", 0.5, "100B c1", BASELINE,
         unmeasured="1 connection (100B c1): added latency at most half the shared-PoolManager app's"),
    Goal("1 connection (100KiB c1): added latency over no proxy at most half the shared-PoolManager app's",
         "added_p50_vs", "<=", 0.5, "100KiB c1", BASELINE,
         unmeasured="1 connection (100KiB c1): added latency at most half the shared-PoolManager app's"),
    Goal("256 connections (100B c256): p99 at most a quarter of the shared-PoolManager app's",
         "p99_vs", "<=", 0.25, "100B c256", BASELINE),
    Goal("256 connections (100KiB c256): p99 at most a quarter of the shared-PoolManager app's",
         "p99_vs", "<=", 0.25, "100KiB c256", BASELINE),
    Goal("256 connections (50ms c256): p99 at most a quarter of the shared-PoolManager app's",
         "p99_vs", "<=", 0.25, "50ms c256", BASELINE),
    Goal("Queue pressure: at least 95% of the limit's throughput",
         "queue_share_of_limit", ">=", 0.95, unmeasured="Queue pressure"),
    Goal("Queue pressure: p99 at most 1.3x the queueing ideal (clients / throughput)",
         "queue_p99_vs_ideal", "<=", 1.3, unmeasured=""),
    Goal("Queue pressure: no errors",
         "queue_errors", "==", 0, unmeasured=""),
    Goal("Memory: RSS per worker at most 1.2x the shared-PoolManager app's",
         "rss_per_worker_vs", "<=", 1.2, against=BASELINE),
    Goal("Memory: a 50 MB response adds under 5 MB",
         "big_response_mb", "<", 5),
    Goal("Group of three healthy servers, 100 B at 64 connections: at least 0.97x the req/s of one server",
         "rps_vs", ">=", 0.97, GROUP_CELL, OURS, subject="wsgiproxy-group3"),
    Goal("Failover: no client-visible errors",
         "failover_value", "==", 0, key="errors", unmeasured="Failover"),
    Goal("Failover: p99 during the fault at most 2x steady",
         "failover_value", "<=", 2, key="p99_fault_vs_steady", unmeasured=""),
    Goal("Failover: back in service at most 2 s after the server returns",
         "failover_value", "<=", 2, key="back_s", unmeasured=""),
    Goal("Failover: client-visible errors no more than HAProxy's",
         "failover_vs", "<=", 1, key="errors", against="haproxy", unmeasured=""),
    Goal("Failover: p99 during the fault over steady no worse than HAProxy's",
         "failover_vs", "<=", 1, key="p99_fault_vs_steady", against="haproxy", unmeasured=""),
    Goal("Failover: back in service no later than HAProxy",
         "failover_vs", "<=", 1, key="back_s", against="haproxy", unmeasured=""),
    Goal("Reloads: no request lost over 10 HUPs at 64 keep-alive connections",
         "scenario_value", "==", 0, key="reloads.lost", unmeasured="Reloads"),
    Goal("Reloads: no more requests lost than nginx over 10 `nginx -s reload`",
         "scenario_vs", "<=", 1, key="reloads.lost", against="nginx", unmeasured=""),
    Goal("WebSockets: RSS of the worker per open WebSocket at most 64 KiB (1,000 open)",
         "scenario_value", "<=", 64, key="websockets.rss_per_ws_kib", unmeasured="WebSockets"),
    Goal("WebSockets: echo round-trip p99 at most 2x nginx's (100 of 1,000 echoing)",
         "scenario_ratio", "<=", 2, key="websockets.p99_ms", against="nginx", unmeasured=""),
]
# fmt: on

COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass
class Measured:
    """What a run measured: medians per cell and proxy, the queue run, the 50 MB check."""

    M: dict[str, Any]
    queue: dict[str, Any]
    memory: dict[str, Any]
    failover: dict[str, dict[str, Any]]
    not_started: set[str]
    reloads: dict[str, dict[str, Any]]
    websockets: dict[str, dict[str, Any]]

    def get(self, cell: str, proxy: str, metric: str) -> float | None:
        return self.M.get(cell, {}).get(proxy, {}).get(metric)


Shown = tuple[float | None, str] | None


# -- the metrics ---------------------------------------------------------------------------
def rps_vs_best(g: Goal, m: Measured) -> Shown:
    ours = m.get(g.cell, OURS, "rps")
    alts = {
        p: m.get(g.cell, p, "rps") for p in WSGI_ALTERNATIVES if m.get(g.cell, p, "rps") is not None
    }
    best = max(alts, key=lambda p: alts[p] or 0) if alts else None
    r = ratio(ours, alts[best]) if best else None
    return r, f"{fmt(r, 2)}x ({fmt(ours)} vs {best} {fmt(alts.get(best))} req/s)" if best else ""


def rps_vs(g: Goal, m: Measured) -> Shown:
    ours, theirs = m.get(g.cell, g.subject, "rps"), m.get(g.cell, g.against, "rps")
    if g.cell in m.M and g.subject in m.not_started:
        return None, f"not measured: {g.subject} did not start"
    r = ratio(ours, theirs)
    return r, f"{fmt(r, 2)}x ({fmt(ours)} vs {fmt(theirs)} req/s)"


def added_p50_vs(g: Goal, m: Measured) -> Shown:
    """p50 added over no proxy ("direct"), ours over theirs."""
    d = m.get(g.cell, "direct", "p50_ms")
    o, f = m.get(g.cell, OURS, "p50_ms"), m.get(g.cell, g.against, "p50_ms")
    if d is None or o is None or f is None:
        return None
    added_o, added_f = o - d, f - d
    r = ratio(added_o, added_f)
    return (
        r,
        f"{fmt(r, 2)}x (p50 +{added_o * 1000:.0f} µs vs +{added_f * 1000:.0f} µs over direct {d * 1000:.0f} µs)",
    )


def conns_per_1k(g: Goal, m: Measured) -> Shown:
    """Upstream connections ours opened per 1,000 requests (the pool's churn)."""
    n = m.get(g.cell, OURS, "conns_per_1k")
    if n is None:
        return None
    keep = m.get(g.cell, "wsgiproxy-keep100", "conns_per_1k")
    return n, f"{fmt(n, 1)} per 1,000" + (
        f" (HTTP_MAX_KEEPALIVE_CONNECTIONS=100: {fmt(keep, 1)})" if keep is not None else ""
    )


def p99_vs(g: Goal, m: Measured) -> Shown:
    o, f = m.get(g.cell, OURS, "p99_ms"), m.get(g.cell, g.against, "p99_ms")
    r = ratio(o, f)
    return r, f"{fmt(r, 2)}x ({fmt(o, 1)} ms vs {fmt(f, 1)} ms)"


def queue_share_of_limit(g: Goal, m: Measured) -> Shown:
    q = m.queue.get("wsgiproxy-q8")
    if not q:
        return None
    limit = m.queue["limit_rps"]
    r = ratio(q["rps"], limit)
    alone = m.queue.get("direct")
    note = (
        (
            f"; the upstream alone with {WORKERS * QUEUE_LIMIT} connections: {fmt(alone['rps'])} = "
            f"{fmt(alone['rps'] / limit * 100, 1)}%"
        )
        if alone
        else ""
    )
    return r, f"{fmt((r or 0) * 100, 1)}% ({fmt(q['rps'])} of {fmt(limit)} req/s{note})"


def queue_p99_vs_ideal(g: Goal, m: Measured) -> Shown:
    q = m.queue.get("wsgiproxy-q8")
    if not q:
        return None
    ideal = QUEUE_CLIENTS / q["rps"] * 1000 if q["rps"] else None
    r = ratio(q["p99_ms"], ideal)
    return r, f"{fmt(r, 2)}x (p99 {fmt(q['p99_ms'])} ms, ideal {fmt(ideal)} ms)"


def queue_errors(g: Goal, m: Measured) -> Shown:
    q = m.queue.get("wsgiproxy-q8")
    if not q:
        return None
    return float(q["errors_total"]), f"{q['errors_total']} errors over all repetitions"


def rss_per_worker_vs(g: Goal, m: Measured) -> Shown:
    ours_rss = max_rss_per_worker(m.M, OURS)
    theirs_rss = max_rss_per_worker(m.M, g.against)
    r = ratio(ours_rss, theirs_rss)
    return (
        r,
        f"{fmt(r, 2)}x ({fmt(ours_rss, 1)} MB vs {fmt(theirs_rss, 1)} MB, largest cell median)",
    )


def big_response_mb(g: Goal, m: Measured) -> Shown:
    m50 = m.memory.get(OURS)
    shown = f"+{fmt(m50, 1)} MB peak RSS in the worker that served it" if m50 is not None else ""
    return m50, shown


FAILOVER_SHOWN = {
    "errors": ("{:,.0f} errors", 0),
    "p99_fault_vs_steady": ("{:.2f}x", 2),
    "back_s": ("{:.2f} s", 2),
}


def _failover(m: Measured, proxy: str, key: str) -> tuple[float | None, str]:
    r = m.failover.get(proxy)
    if r is None:
        return None, ""
    if "not_measured" in r:
        return None, f"not measured: {proxy} {r['not_measured']}"
    v = r.get(key)
    if v is None and key == "back_s":
        return float("inf"), "never, within the run"
    text = FAILOVER_SHOWN[key][0].format(v) if v is not None else "—"
    if key == "p99_fault_vs_steady" and v is not None:
        text += f" ({fmt(r['p99_fault_ms'], 1)} vs {fmt(r['p99_steady_ms'], 1)} ms)"
    return v, text


def failover_value(g: Goal, m: Measured) -> Shown:
    """One of wsgiproxy's failover figures (failover.analyse)."""
    if not m.failover:
        return None
    return _failover(m, g.subject, g.key)


def failover_vs(g: Goal, m: Measured) -> Shown:
    """wsgiproxy's failover figure against another proxy's: passes when ours minus
    theirs is at most 0 (compare "<=" with target 1 reads: no worse)."""
    if not m.failover:
        return None
    ours, shown_o = _failover(m, g.subject, g.key)
    theirs, shown_t = _failover(m, g.against, g.key)
    if ours is None:
        return None, shown_o
    if theirs is None:
        return None, shown_t or f"not measured: {g.against}"
    worse = ours > theirs
    return (2.0 if worse else 1.0), f"{shown_o} vs {g.against} {shown_t}"


SCENARIO_SHOWN = {
    "reloads.lost": "{:,.0f} lost",
    "websockets.rss_per_ws_kib": "{:.1f} KiB",
    "websockets.p99_ms": "{:.2f} ms",
}


def _scenario(m: Measured, key: str, proxy: str) -> tuple[float | None, str]:
    """``proxy``'s figure ``key`` ("scenario.figure") of a scenario run (reloads.py,
    websockets_scenario.py): value and text, or None and why not."""
    name, _, figure = key.partition(".")
    r = getattr(m, name).get(proxy)
    if r is None:
        return None, f"not measured: {proxy} not run"
    if "not_measured" in r:
        return None, f"not measured: {proxy} {r['not_measured']}"
    v = r.get(figure)
    text = SCENARIO_SHOWN[key].format(v) if v is not None else "—"
    if name == "reloads" and v is not None:
        kinds = ", ".join(f"{k} {n}" for k, n in r["kinds"].items()) or "no errors"
        text += f" ({r['served']:,} served; {kinds})"
    return (float(v) if v is not None else None), text


def scenario_value(g: Goal, m: Measured) -> Shown:
    """One of wsgiproxy's figures in a scenario (the goal's key)."""
    if not getattr(m, g.key.partition(".")[0]):
        return None
    return _scenario(m, g.key, g.subject)


def scenario_vs(g: Goal, m: Measured) -> Shown:
    """wsgiproxy's scenario figure against another's: 1 (no worse) or 2 (worse)."""
    if not getattr(m, g.key.partition(".")[0]):
        return None
    ours, shown_o = _scenario(m, g.key, g.subject)
    theirs, shown_t = _scenario(m, g.key, g.against)
    if ours is None:
        return None, shown_o
    if theirs is None:
        return None, shown_t
    return (2.0 if ours > theirs else 1.0), f"{shown_o} vs {g.against} {shown_t}"


def scenario_ratio(g: Goal, m: Measured) -> Shown:
    """wsgiproxy's scenario figure over another's."""
    if not getattr(m, g.key.partition(".")[0]):
        return None
    ours, shown_o = _scenario(m, g.key, g.subject)
    theirs, shown_t = _scenario(m, g.key, g.against)
    if ours is None:
        return None, shown_o
    if theirs is None:
        return None, shown_t
    r = ratio(ours, theirs)
    return r, f"{fmt(r, 2)}x ({shown_o} vs {g.against} {shown_t})"


METRIC_FNS: dict[str, Callable[[Goal, Measured], Shown]] = {
    f.__name__: f
    for f in (
        rps_vs_best,
        rps_vs,
        added_p50_vs,
        conns_per_1k,
        p99_vs,
        queue_share_of_limit,
        queue_p99_vs_ideal,
        queue_errors,
        rss_per_worker_vs,
        big_response_mb,
        failover_value,
        failover_vs,
        scenario_value,
        scenario_vs,
        scenario_ratio,
    )
}


def evaluate_goals(
    M: dict[str, Any],
    queue: dict[str, Any],
    memory: dict[str, Any],
    scenarios: dict[str, dict[str, dict[str, Any]]] | None = None,
    not_started: set[str] | None = None,
) -> list[tuple[str, str, bool | None]]:
    """(goal line, measured, PASS/FAIL/None=not measured). ``scenarios``: the results of
    the failover, reload and WebSocket scenarios that ran, by name."""
    sc = scenarios or {}
    measured = Measured(
        M,
        queue,
        memory,
        sc.get("failover", {}),
        not_started or set(),
        sc.get("reloads", {}),
        sc.get("websockets", {}),
    )
    out: list[tuple[str, str, bool | None]] = []
    for g in GOALS:
        got = METRIC_FNS[g.metric](g, measured)
        if got is None:
            if g.unmeasured != "":
                out.append((g.text if g.unmeasured is None else g.unmeasured, "not measured", None))
            continue
        value, shown = got
        if value is None:
            why = shown if shown.startswith("not measured") else "not measured"
            out.append((g.text, why, None))
        else:
            out.append((g.text, shown, bool(COMPARE[g.compare](value, g.target))))
    return out
