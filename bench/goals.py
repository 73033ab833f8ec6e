"""The goals of a run and how each is judged from the medians."""

from __future__ import annotations

from typing import Any

from constants import QUEUE_CLIENTS, QUEUE_LIMIT, WORKERS
from proxies import OURS, WSGI_ALTERNATIVES
from report import fmt, max_rss_per_worker, ratio


def evaluate_goals(
    M: dict[str, Any], queue: dict[str, Any], memory: dict[str, Any]
) -> list[tuple[str, str, bool | None]]:
    """(goal line, measured, PASS/FAIL/None=not measured)."""
    goals: list[tuple[str, str, bool | None]] = []

    def get(cell: str, proxy: str, metric: str) -> float | None:
        return M.get(cell, {}).get(proxy, {}).get(metric)

    def add(text: str, value: float | None, passes: Any, shown: str) -> None:
        goals.append(
            (
                text,
                shown if value is not None else "not measured",
                None if value is None else bool(passes(value)),
            )
        )

    c64 = "100B c64"
    ours = get(c64, OURS, "rps")
    alts = {p: get(c64, p, "rps") for p in WSGI_ALTERNATIVES if get(c64, p, "rps") is not None}
    best = max(alts, key=lambda p: alts[p] or 0) if alts else None
    r = ratio(ours, alts[best]) if best else None
    add(
        "100 B at 64 connections: at least 1.5x the best WSGI alternative's req/s",
        r,
        lambda x: x >= 1.5,
        f"{fmt(r, 2)}x ({fmt(ours)} vs {best} {fmt(alts.get(best))} req/s)" if best else "",
    )
    r = ratio(ours, get(c64, "flask-requests", "rps"))
    add(
        "100 B at 64 connections: at least 3x Flask + requests per request",
        r,
        lambda x: x >= 3,
        f"{fmt(r, 2)}x ({fmt(ours)} vs {fmt(get(c64, 'flask-requests', 'rps'))} req/s)",
    )
    r = ratio(ours, get(c64, "nginx", "rps"))
    add(
        "100 B at 64 connections: at least 0.15x nginx",
        r,
        lambda x: x >= 0.15,
        f"{fmt(r, 2)}x ({fmt(ours)} vs {fmt(get(c64, 'nginx', 'rps'))} req/s)",
    )
    r = ratio(ours, get(c64, "bare", "rps"))
    add(
        "100 B at 64 connections: at least 0.45x the stack's ceiling (bare WSGI app)",
        r,
        lambda x: x >= 0.45,
        f"{fmt(r, 2)}x ({fmt(ours)} vs {fmt(get(c64, 'bare', 'rps'))} req/s)",
    )
    fw = "forward 100B c64"
    r = ratio(get(fw, OURS, "rps"), get(fw, "proxypy", "rps"))
    add(
        "Forward mode, 100 B at 64 connections: at least 0.5x proxy.py",
        r,
        lambda x: x >= 0.5,
        f"{fmt(r, 2)}x ({fmt(get(fw, OURS, 'rps'))} vs {fmt(get(fw, 'proxypy', 'rps'))} req/s)",
    )
    hs = "HTTPS 100B c64"
    r = ratio(get(hs, OURS, "rps"), get(hs, "wsgiproxy-nopool", "rps"))
    add(
        "HTTPS upstream at 64: at least 10x the new-connection-per-request baseline",
        r,
        lambda x: x >= 10,
        f"{fmt(r, 2)}x ({fmt(get(hs, OURS, 'rps'))} vs {fmt(get(hs, 'wsgiproxy-nopool', 'rps'))} req/s)",
    )
    for cell in ("100B c1", "100KiB c1"):
        d = get(cell, "direct", "p50_ms")
        o, f = get(cell, OURS, "p50_ms"), get(cell, "flask-urllib3", "p50_ms")
        if None not in (d, o, f):
            added_o, added_f = o - d, f - d  # type: ignore[operator]
            r = ratio(added_o, added_f)
            add(
                f"1 connection ({cell}): added latency over no proxy at most half the shared-PoolManager app's",
                r,
                lambda x: x <= 0.5,
                f"{fmt(r, 2)}x (p50 +{added_o * 1000:.0f} µs vs +{added_f * 1000:.0f} µs over direct {d * 1000:.0f} µs)",
            )
        else:
            add(
                f"1 connection ({cell}): added latency at most half the shared-PoolManager app's",
                None,
                None,
                "",
            )
    for cell in ("100B c256", "100KiB c256", "50ms c256"):
        o, f = get(cell, OURS, "p99_ms"), get(cell, "flask-urllib3", "p99_ms")
        r = ratio(o, f)
        add(
            f"256 connections ({cell}): p99 at most a quarter of the shared-PoolManager app's",
            r,
            lambda x: x <= 0.25,
            f"{fmt(r, 2)}x ({fmt(o, 1)} ms vs {fmt(f, 1)} ms)",
        )
    q = queue.get("wsgiproxy-q8")
    if q:
        limit = queue["limit_rps"]
        r = ratio(q["rps"], limit)
        alone = queue.get("direct")
        note = (
            (
                f"; the upstream alone with {WORKERS * QUEUE_LIMIT} connections: {fmt(alone['rps'])} = "
                f"{fmt(alone['rps'] / limit * 100, 1)}%"
            )
            if alone
            else ""
        )
        add(
            "Queue pressure: at least 95% of the limit's throughput",
            r,
            lambda x: x >= 0.95,
            f"{fmt((r or 0) * 100, 1)}% ({fmt(q['rps'])} of {fmt(limit)} req/s{note})",
        )
        ideal = QUEUE_CLIENTS / q["rps"] * 1000 if q["rps"] else None
        r = ratio(q["p99_ms"], ideal)
        add(
            "Queue pressure: p99 at most 1.3x the queueing ideal (clients / throughput)",
            r,
            lambda x: x <= 1.3,
            f"{fmt(r, 2)}x (p99 {fmt(q['p99_ms'])} ms, ideal {fmt(ideal)} ms)",
        )
        add(
            "Queue pressure: no errors",
            float(q["errors_total"]),
            lambda x: x == 0,
            f"{q['errors_total']} errors over all repetitions",
        )
    else:
        add("Queue pressure", None, None, "")
    ours_rss = max_rss_per_worker(M, OURS)
    theirs_rss = max_rss_per_worker(M, "flask-urllib3")
    r = ratio(ours_rss, theirs_rss)
    add(
        "Memory: RSS per worker at most 1.2x the shared-PoolManager app's",
        r,
        lambda x: x <= 1.2,
        f"{fmt(r, 2)}x ({fmt(ours_rss, 1)} MB vs {fmt(theirs_rss, 1)} MB, largest cell median)",
    )
    m50 = memory.get(OURS)
    add(
        "Memory: a 50 MB response adds under 5 MB",
        m50,
        lambda x: x < 5,
        f"+{fmt(m50, 1)} MB peak RSS in the worker that served it" if m50 is not None else "",
    )
    return goals
