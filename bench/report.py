"""Reporting: medians over repetitions, the markdown report (goals, ratio table, raw
medians, queue pressure, 50 MB), the progress lines, and the machine and versions."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from cells import CELLS
from constants import DELAY, PRODUCT_BIN, QUEUE_CLIENTS, QUEUE_LIMIT, ROOT, WORKERS
from provision import nginx_binary, product_commit
from proxies import EXPERIMENT, OURS, PROXIES, QUEUE


# -- statistics ----------------------------------------------------------------------------
def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


METRICS = [
    "rps",
    "p50_ms",
    "p99_ms",
    "errors",
    "conns_per_1k",
    "rss_mb",
    "rss_per_worker_mb",
    "cpu_proxy_s",
    "cpu_upstream_s",
    "cpu_wrk_s",
    "requests",
]


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["cell"], r["proxy"]), []).append(r)
    for (cell, proxy), rs in groups.items():
        m = {k: med([r[k] for r in rs]) for k in METRICS}
        m["reps"] = len(rs)
        m["errors_total"] = sum(r["errors"] for r in rs)
        out.setdefault(cell, {})[proxy] = m
    return out


def paired_ratios(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """wsgiproxy beside wsgiproxy-x, repetition by repetition, per cell.

    Each repetition runs the two back to back, so their ratio in it shares that moment's
    machine; the median of those ratios is what a paired run reports (the ratio of the two
    medians mixes moments)."""
    by: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in runs:
        if r["proxy"] in (OURS, EXPERIMENT):
            by.setdefault((r["cell"], r["rep"]), {})[r["proxy"]] = r
    out: dict[str, dict[str, Any]] = {}
    for (cell, _rep), pair in sorted(by.items()):
        ours, x = pair.get(OURS), pair.get(EXPERIMENT)
        if not ours or not x or not ours["rps"] or not x["rps"]:
            continue
        entry = out.setdefault(cell, {"rps": [], "cpu_per_request": []})
        entry["rps"].append(ours["rps"] / x["rps"])
        cpu = [
            m["cpu_proxy_s"] / m["requests"] if m.get("cpu_proxy_s") and m["requests"] else None
            for m in (ours, x)
        ]
        if cpu[0] and cpu[1]:
            entry["cpu_per_request"].append(cpu[0] / cpu[1])
    return out


def queue_medians(queue_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The queue-pressure runs per proxy: medians, errors and their kinds, and the limit."""
    queue: dict[str, Any] = {}
    if queue_runs:
        queue["limit_rps"] = WORKERS * QUEUE_LIMIT / DELAY
        for proxy in QUEUE:
            rs = [r for r in queue_runs if r["proxy"] == proxy]
            if rs:
                q = {k: med([r[k] for r in rs]) for k in METRICS}
                q["errors_total"] = sum(r["errors"] for r in rs)
                kinds: dict[str, int] = {}
                for r in rs:
                    for kk, vv in r["error_detail"].items():
                        if vv:
                            kinds[kk] = kinds.get(kk, 0) + vv
                q["error_kinds"] = ", ".join(f"{k} {v}" for k, v in kinds.items()) or "none"
                queue[proxy] = q
    return queue


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "—"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def max_rss_per_worker(M: dict[str, Any], proxy: str) -> float | None:
    vals = [
        cells[proxy]["rss_per_worker_mb"]
        for cells in M.values()
        if proxy in cells and cells[proxy].get("rss_per_worker_mb")
    ]
    return max(vals) if vals else None


# -- progress ------------------------------------------------------------------------------
def progress_line(rep: int, cell: str, proxy: str, m: dict[str, Any]) -> str:
    return (
        f"  rep {rep + 1} {cell:<17} {proxy:<18} {m['rps']:>9,.0f} req/s  p50 {m['p50_ms']:>8.2f}  "
        f"p99 {m['p99_ms']:>8.2f} ms  err {m['errors']:<4} up/1k {fmt(m['conns_per_1k'], 1):>6}  "
        f"rss {fmt(m['rss_mb'], 0):>4} MB"
    )


def queue_progress_line(rep: int, clients: int, proxy: str, m: dict[str, Any]) -> str:
    return (
        f"  rep {rep + 1} {'queue c' + str(clients):<17} {proxy:<18} {m['rps']:>9,.0f} req/s  p50 {m['p50_ms']:>8.2f}  "
        f"p99 {m['p99_ms']:>8.2f} ms  err {m['errors']} {m['error_detail']}"
    )


def run_line(args: argparse.Namespace, reps_done: int, elapsed: float) -> str:
    alone = [n for n in ("failover", "reloads", "websockets") if getattr(args, n, False)]
    if alone:
        return f"the {', '.join(alone)} scenario{'s' if len(alone) > 1 else ''} only; took {elapsed / 60:.1f} min"
    return (
        f"{'quick, ' if args.quick else ''}{reps_done} repetitions x {args.duration:g} s per cell "
        f"(warm-up {args.warmup:g} s in the first), queue runs {args.queue_duration:g} s; "
        f"{WORKERS} workers per WSGI proxy; took {elapsed / 60:.1f} min"
    )


# -- the report ----------------------------------------------------------------------------
def report(
    meta: dict[str, Any],
    M: dict[str, Any],
    queue: dict[str, Any],
    memory: dict[str, Any],
    goals: list[tuple[str, str, bool | None]],
    scenarios: dict[str, dict[str, dict[str, Any]]] | None = None,
    not_started: dict[str, str] | None = None,
    paired: dict[str, dict[str, Any]] | None = None,
) -> str:
    cells = [c.name for c in CELLS if c.name in M]
    lines = [
        f"# wsgiproxy benchmark — {meta['date']}",
        "",
        f"- machine: {meta['machine']}",
        f"- versions: {meta['versions_line']}",
        f"- run: {meta['run_line']}",
        "",
        "## Goals",
        "",
    ]
    for text, shown, ok in goals:
        mark = "PASS" if ok else ("FAIL" if ok is False else "n/a")
        lines.append(f"- **{mark}** {text}: {shown}")
    if not_started:
        lines += [
            "",
            "Not measured: " + "; ".join(f"{k} {v}" for k, v in not_started.items()) + ".",
        ]
    sc = scenarios or {}
    if sc.get("failover"):
        lines += failover_table(sc["failover"])
    if sc.get("reloads"):
        lines += reloads_table(sc["reloads"])
    if sc.get("websockets"):
        lines += websockets_table(sc["websockets"])
    if not cells:
        lines += ["", "Every run: `results.json`.", ""]
        return "\n".join(lines)
    lines += [
        "",
        "## wsgiproxy against each alternative",
        "",
        "Each entry: wsgiproxy's req/s ÷ theirs, then wsgiproxy's p99 ÷ theirs "
        "(req/s above 1 and p99 below 1 favour wsgiproxy). Medians over repetitions.",
        "",
    ]
    alts = [p for p in PROXIES if p != OURS and any(p in M[c] for c in cells)]
    lines.append("| against | " + " | ".join(cells) + " |")
    lines.append("|---|" + "---|" * len(cells))
    for alt in alts:
        row = []
        for c in cells:
            o, a = M[c].get(OURS), M[c].get(alt)
            if not o or not a:
                row.append("—")
                continue
            rr, pr = ratio(o["rps"], a["rps"]), ratio(o["p99_ms"], a["p99_ms"])
            row.append(f"{fmt(rr, 2)}× / {fmt(pr, 2)}×")
        lines.append(f"| {alt} | " + " | ".join(row) + " |")
    if paired:
        lines += paired_table(paired)
    lines += [
        "",
        "## Raw medians",
        "",
        "req/s, latency (wrk --latency), errors (non-2xx + socket errors, all repetitions), "
        "upstream connections opened per 1,000 requests, proxy RSS summed over its workers, "
        "CPU seconds during the run of the proxy (all its processes), the upstream and wrk, "
        "and the proxy's CPU per request.",
        "",
        "| cell | proxy | req/s | p50 ms | p99 ms | errors | up conns/1k | RSS MB | CPU proxy s | CPU upstream s | CPU wrk s | proxy CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        for proxy in PROXIES:
            m = M[c].get(proxy)
            if not m:
                continue
            per_req = (
                (m["cpu_proxy_s"] / m["requests"] * 1e6)
                if m.get("cpu_proxy_s") is not None and m["requests"]
                else None
            )
            lines.append(
                f"| {c} | {proxy} | {fmt(m['rps'])} | {fmt(m['p50_ms'], 2)} | {fmt(m['p99_ms'], 2)} | "
                f"{m['errors_total']} | {fmt(m['conns_per_1k'], 1)} | {fmt(m['rss_mb'], 1)} | "
                f"{fmt(m['cpu_proxy_s'], 2)} | {fmt(m['cpu_upstream_s'], 2)} | {fmt(m['cpu_wrk_s'], 2)} | {fmt(per_req)} |"
            )
    if queue:
        lines += [
            "",
            f"## Queue pressure: {QUEUE_CLIENTS} clients, {QUEUE_LIMIT} upstream connections per worker "
            f"x {WORKERS} workers, {DELAY * 1000:.0f} ms upstream",
            "",
            f"Limit: {WORKERS} x {QUEUE_LIMIT} x {1 / DELAY:.0f} = {fmt(queue['limit_rps'])} req/s; "
            "queueing ideal latency = clients / throughput.",
            "",
            "| proxy | req/s | % of limit | p50 ms | p99 ms | ideal ms | p99 / ideal | errors | up conns/1k |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for proxy in QUEUE:
            q = queue.get(proxy)
            if not q:
                continue
            clients = WORKERS * QUEUE_LIMIT if proxy == "direct" else QUEUE_CLIENTS
            ideal = clients / q["rps"] * 1000 if q["rps"] else None
            label = f"upstream alone, {clients} connections" if proxy == "direct" else proxy
            lines.append(
                f"| {label} | {fmt(q['rps'])} | {fmt(q['rps'] / queue['limit_rps'] * 100, 1)}% | {fmt(q['p50_ms'])} | "
                f"{fmt(q['p99_ms'])} | {fmt(ideal)} | {fmt(ratio(q['p99_ms'], ideal), 2)} | {q['errors_total']} "
                f"({q['error_kinds']}) | {fmt(q['conns_per_1k'], 1)} |"
            )
    if memory:
        lines += [
            "",
            "## A 50 MB response",
            "",
            "Peak RSS growth of the worker that served it, over its RSS before (largest of 3 downloads).",
            "",
            "| proxy | adds MB |",
            "|---|---|",
        ]
        for proxy, mb in memory.items():
            lines.append(f"| {proxy} | {fmt(mb, 1)} |")
    lines += ["", "Chart: `chart.png` beside this file; every run: `results.json`.", ""]
    return "\n".join(lines)


def paired_table(paired: dict[str, dict[str, Any]]) -> list[str]:
    """The paired run's verdict: the median of the per-repetition ratios, and their spread."""
    lines = [
        "",
        f"## Paired: {OURS} ÷ {EXPERIMENT}, repetition by repetition",
        "",
        "Medians of the ratios within each repetition (req/s above 1: wsgiproxy serves more;"
        " CPU per request below 1: it spends less), then the lowest and highest ratio.",
        "",
        "| cell | reps | req/s ratio | range | CPU per request ratio | range |",
        "|---|---|---|---|---|---|",
    ]
    for cell, entry in paired.items():
        rps, cpu = entry["rps"], entry["cpu_per_request"]
        cpu_cells = (
            f"{statistics.median(cpu):.3f} | {min(cpu):.2f}-{max(cpu):.2f}" if cpu else "— | —"
        )
        lines.append(
            f"| {cell} | {len(rps)} | {statistics.median(rps):.3f} | "
            f"{min(rps):.2f}-{max(rps):.2f} | {cpu_cells} |"
        )
    return lines


def write_report(outdir: Path, text: str, results: dict[str, Any]) -> None:
    """A measuring mode's report.md and results.json under ``outdir``; the report printed."""
    (outdir / "report.md").write_text(text)
    (outdir / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print(text)
    print(f"bench: wrote {outdir.relative_to(ROOT)}/report.md, results.json")


def failover_table(failover: dict[str, dict[str, Any]]) -> list[str]:
    from failover import CONNS, FAULT_AT, LOAD_SECONDS, RATE, RESTORE_AT

    lines = [
        "",
        f"## Failover: three servers, one killed at {FAULT_AT:g} s and back at {RESTORE_AT:g} s",
        "",
        f"{RATE:,} req/s over {CONNS} keep-alive connections for {LOAD_SECONDS:g} s (an open-loop "
        "load; latency from each request's due time). Errors: non-2xx, connections refused, reset "
        "or closed early, and no answer in 5 s. p99 steady: requests due from 1 s until the kill; "
        "during the fault: from the kill until the server returns. Tried until: seconds from the "
        "kill to the last burst of connection attempts (SYNs) on the dead port, a proxy's health "
        "checks not counted; SYNs: every attempt while it was dead. Back: seconds from the port "
        "listening again until the server serves its first request of the load.",
        "",
        "| proxy | errors | served | p99 steady ms | p99 fault ms | fault / steady | max fault ms "
        "| tried until s | SYNs while dead | back s | served per server |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for proxy, r in failover.items():
        if "not_measured" in r:
            lines.append(f"| {proxy} | not measured: {r['not_measured']} |" + " |" * 9)
            continue
        kinds = ", ".join(f"{k} {v}" for k, v in r["error_kinds"].items())
        back = fmt(r["back_s"], 2) if r["back_s"] is not None else "never"
        note = f" ({r['tried_note']})" if r["tried_note"] else ""
        lines.append(
            f"| {proxy} | {r['errors']}{f' ({kinds})' if kinds else ''} | {fmt(r['served'])} | "
            f"{fmt(r['p99_steady_ms'], 1)} | {fmt(r['p99_fault_ms'], 1)} | "
            f"{fmt(r['p99_fault_vs_steady'], 2)} | {fmt(r['max_fault_ms'], 0)} | "
            f"{fmt(r['tried_s'], 2)}{note} | "
            f"{fmt(r['attempts'])} | {back} | {' / '.join(fmt(n) for n in r['served_per_server'])} |"
        )
    return lines


def reloads_table(reloads: dict[str, dict[str, Any]]) -> list[str]:
    from reload_load import RESPONSE_TIMEOUT
    from reloads import CONNS, INTERVAL_S, RELOADS

    lines = [
        "",
        f"## Reloads: {RELOADS} reloads under {CONNS} keep-alive connections",
        "",
        f"A reload every {INTERVAL_S:g} s, or when the previous one is done (its workers all "
        "new); wsgiproxy and gunicorn (the bare app): `kill -HUP` to the master; nginx: "
        "`nginx -s reload`. Lost: a request written whose response did not complete (reset, "
        f"closed, no whole response in {RESPONSE_TIMEOUT:g} s); a connection the server "
        "closed before the client wrote is a reconnect, not a loss. Errors: the lost by kind, "
        "non-200 statuses and refused connects.",
        "",
        "| server | lost | served | req/s | errors | reconnects | announced closes "
        "| reload s (median / max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for server, r in reloads.items():
        if "not_measured" in r:
            lines.append(f"| {server} | not measured: {r['not_measured']} |" + " |" * 6)
            continue
        kinds = ", ".join(f"{k} {v}" for k, v in r["kinds"].items()) or "none"
        done = "" if r["reloads_done"] == r["reloads"] else f" ({r['reloads_done']} done)"
        lines.append(
            f"| {server} | {r['lost']} | {fmt(r['served'])} | {fmt(r['rps'])} | {kinds} | "
            f"{fmt(r['reconnects'])} | {fmt(r['closes_announced'])} | "
            f"{fmt(r['reload_s_median'], 2)} / {fmt(r['reload_s_max'], 2)}{done} |"
        )
    return lines


def websockets_table(ws: dict[str, dict[str, Any]]) -> list[str]:
    from websockets_scenario import ECHO_INTERVAL_S, ECHO_S, ECHOERS, MESSAGE_BYTES, OPEN

    lines = [
        "",
        f"## WebSockets: {OPEN:,} open through one worker, {ECHOERS} echoing",
        "",
        f"A `websockets` echo server on 127.0.0.1; {OPEN:,} WebSockets opened through the proxy, "
        f"then {ECHOERS} of them each send a {MESSAGE_BYTES} B message every "
        f"{ECHO_INTERVAL_S * 1000:g} ms and await its echo, for {ECHO_S:g} s. RSS per "
        "WebSocket: the worker's RSS with all open (the larger of after opening and after "
        f"the echoes) minus its RSS before, over {OPEN:,}.",
        "",
        "| proxy | opened | RSS before MB | RSS open MB | RSS per WS KiB | echoes "
        "| p50 ms | p99 ms | max ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for proxy, r in ws.items():
        if "not_measured" in r:
            lines.append(f"| {proxy} | not measured: {r['not_measured']} |" + " |" * 8)
            continue
        lines.append(
            f"| {proxy} | {fmt(r['opened'])} | {fmt(r['rss_before_mb'], 1)} | "
            f"{fmt(r['rss_open_mb'], 1)} | {fmt(r['rss_per_ws_kib'], 1)} | {fmt(r['echoes'])} | "
            f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(r['max_ms'], 1)} | "
            f"{r['errors']} |"
        )
    return lines


# -- the report's head: versions and machine -----------------------------------------------
def _py_versions(bin_dir: Path, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        f"out={{'python': sys.version.split()[0]}}\n"
        f"for n in {names!r}:\n"
        "    try: out[n]=m.version(n)\n"
        "    except Exception: pass\n"
        "print(json.dumps(out))"
    )
    try:
        return json.loads(
            subprocess.run(
                [str(bin_dir / "python"), "-c", code], capture_output=True, timeout=60
            ).stdout
        )
    except Exception:
        return {}


def versions(venvs: dict[str, Path], commit: str) -> dict[str, str]:
    """Versions of what ran: the product's stack, the venvs' packages, nginx, wrk."""
    v: dict[str, str] = {}
    v.update(
        _py_versions(
            PRODUCT_BIN,
            ["flask", "werkzeug", "urllib3", "gunicorn", "gevent", "requests", "greenlet"],
        )
    )
    if "wsgiproxy2" in venvs:
        w = _py_versions(venvs["wsgiproxy2"], ["WSGIProxy2", "WebOb", "urllib3"])
        v["WSGIProxy2"] = w.get("WSGIProxy2", "?")
        v["WebOb"] = w.get("WebOb", "?")
    if "proxypy" in venvs:
        v["proxy.py"] = _py_versions(venvs["proxypy"], ["proxy.py"]).get("proxy.py", "?")
    nginx = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, timeout=10)
    v["nginx"] = (nginx.stderr or nginx.stdout).strip().rpartition("/")[2]
    w = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    v["wrk"] = (w.stdout + w.stderr).split()[1] if (w.stdout + w.stderr).split()[1:] else "?"
    v["wsgiproxy commit"] = commit or product_commit()
    return v


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    u = platform.uname()
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, {u.system} {u.release} {u.machine}, {platform.node()}"
