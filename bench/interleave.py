"""`run.py --interleave`: what request ids cost, measured inside the same workers.

A paired run starts two gunicorns, one per side. Each process has its own luck (hash
seed, memory layout, which core it lands on) that moves its req/s by a few percent,
more than the 1% this must resolve, and fresh processes per repetition (``--fresh``)
only average that luck away over many repetitions. Here the same workers serve both
sides: they switch request ids on and off in place (``switch_app.py``) while wrk keeps
64 connections busy on the 100 B file. Phases alternate in ABBA blocks (on,
off, off, on; then off, on, on, off), so a drift of the machine within a block cancels.
Per block: req/s with ids over req/s without (from the upstream's count of requests
handled), and the workers' CPU per request likewise, split into user and kernel time.
Reported: the median over blocks, and the mean with its standard error.
One gunicorn serves every block, or with ``--rounds N`` N gunicorns in turn serve a
share each, so the luck that a process keeps for life is averaged too.
``--interleave-control`` keeps ids on in both kinds of phase: what the method reads when
there is no difference.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from constants import WORKERS
from measure import cpu_split
from processes import descendants, free_port, http_get
from provision import ensure_system_tools
from proxies import Proxy
from report import write_report
from servers import Bench

#: Connections wrk keeps busy: the goal's cell, 100 B at 64 connections.
CONNECTIONS = 64
#: Each phase starts this long after the switch, so no request straddles two modes.
SETTLE_S = 0.2
#: Load before the first phase: the pool filled, the code paths warm.
WARMUP_S = 3.0
#: Request ids may cost at most this share of req/s (issue 16).
GOAL = 0.01

SWITCH = Proxy(
    "wsgiproxy-switch",
    "wsgiproxy whose request ids switch on SIGUSR2 (bench/switch_app.py)",
    "wsgiproxy",
    module="switch_app:app",
)

#: One phase: req/s, then the workers' user and kernel CPU seconds per request.
Phase = tuple[float, float, float]


def run_interleave(args: argparse.Namespace) -> int:
    """Gunicorns (one per round), ids switched on and off under a steady load; the ratios
    reported."""
    bench = Bench.for_run(args, "-interleave")
    outdir, tmp, procs = bench.outdir, bench.tmp, bench.procs
    flag = tmp / "request-ids"
    flag.write_text("1")
    try:
        ensure_system_tools()
        bench.snapshot_product()
        bench.prepare_files()
        bench.start_upstreams()
        blocks: list[dict[str, float]] = []
        share, more = divmod(args.blocks, args.rounds)  # the first `more` rounds get one more
        for n in range(args.rounds):
            blocks += _round(args, bench, flag, n, len(blocks), share + (n < more))
    finally:
        procs.stop_all()
    text, results = _summary(args, bench, blocks)
    write_report(outdir, text, results)
    return 0


def _round(
    args: argparse.Namespace, bench: Bench, flag: Path, n: int, first: int, count: int
) -> list[dict[str, float]]:
    """``count`` ABBA blocks in a gunicorn of their own, under wrk's load from start to end.

    Each round's processes draw their own luck (hash seed, memory layout, CPython's
    type-attribute cache slots), which can favour one side's code path by a percent for
    the whole life of a process; ``--rounds`` averages that luck as the blocks average
    the machine's drift."""
    procs = bench.procs
    port = free_port()
    master = bench.start_wsgiproxy(
        SWITCH, f"{SWITCH.name}-{n}", "http", port, extra={"BENCH_SWITCH_FLAG": str(flag)}
    )
    workers = _ready_workers(port, master.pid, flag)
    _check_switch(port, flag, workers)
    load_s = int(4 * count * (args.phase + SETTLE_S + 0.5) + args.warmup + 30)
    wrk = procs.start(
        f"wrk-{n}",
        [
            "wrk",
            "-t",
            "2",
            "-c",
            str(CONNECTIONS),
            "-d",
            f"{load_s}s",
            f"http://127.0.0.1:{port}/100b.bin",
        ],
    )
    time.sleep(max(args.warmup, WARMUP_S))
    blocks: list[dict[str, float]] = []
    for b in range(first, first + count):
        order = (True, False, False, True) if b % 2 == 0 else (False, True, True, False)
        block: dict[bool, list[Phase]] = {True: [], False: []}
        for ids in order:
            switch(flag, workers, ids or args.interleave_control)
            time.sleep(SETTLE_S)
            block[ids].append(_phase(bench, workers, args.phase))
        blocks.append({**_ratios(block), "round": n})
        print(_block_line(b, blocks[-1]), flush=True)
    for proc in (wrk, master):
        procs.stop_one(proc)
        procs.forget(proc)
    return blocks


def switch(flag: Path, workers: list[int], ids: bool) -> None:
    """Every worker to request ids on (or off), through the flag file and SIGUSR2."""
    flag.write_text("1" if ids else "0")
    for pid in workers:
        os.kill(pid, signal.SIGUSR2)


def _check_switch(port: int, flag: Path, workers: list[int]) -> None:
    """The switch works, or the run would compare the proxy with itself and say "free"."""
    for ids in (False, True):
        switch(flag, workers, ids)
        time.sleep(SETTLE_S)
        seen = set()
        for _ in range(4 * WORKERS):  # new connections: both workers answer some
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/100b.bin")
                reply = conn.getresponse()
                reply.read()
                seen.add(reply.getheader("X-Request-ID") is not None)
            finally:
                conn.close()
        if seen != {ids}:
            raise SystemExit(f"bench: request ids did not switch {'on' if ids else 'off'}")


def _ready_workers(port: int, master: int, flag: Path, limit_s: float = 60.0) -> list[int]:
    """The master's workers, once each can be switched and the proxy answers."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        workers = descendants(master)
        switchable = all(Path(f"{flag}.{pid}").exists() for pid in workers)
        if len(workers) == WORKERS and switchable:
            try:
                status, _ = http_get("127.0.0.1", port, "/100b.bin", timeout=2)
            except OSError:
                status = 0
            if status == 200:
                return workers
        time.sleep(0.2)
    raise SystemExit(f"bench: the switchable proxy did not answer within {limit_s:.0f}s")


def _phase(bench: Bench, workers: list[int], seconds: float) -> Phase:
    """req/s and worker CPU (user, kernel) per request over one phase of steady load."""
    handled, cpu, t = bench.upstream_handled(), cpu_split(workers), time.monotonic()
    time.sleep(seconds)
    requests = bench.upstream_handled() - handled
    elapsed = time.monotonic() - t
    if requests <= 0:
        raise SystemExit("bench: no requests reached the upstream in a phase (did wrk stop?)")
    user, kernel = cpu_split(workers)
    return requests / elapsed, (user - cpu[0]) / requests, (kernel - cpu[1]) / requests


def _ratios(block: dict[bool, list[Phase]]) -> dict[str, float]:
    """One ABBA block: the two phases of each kind together, then with ids over without."""
    on, off = block[True], block[False]
    rps_on, rps_off = sum(p[0] for p in on) / 2, sum(p[0] for p in off) / 2
    user_on, user_off = sum(p[1] for p in on) / 2, sum(p[1] for p in off) / 2
    kernel_on, kernel_off = sum(p[2] for p in on) / 2, sum(p[2] for p in off) / 2
    cpu_on, cpu_off = user_on + kernel_on, user_off + kernel_off
    return {
        "rps_on": rps_on,
        "rps_off": rps_off,
        "cpu_us_on": cpu_on * 1e6,
        "cpu_us_off": cpu_off * 1e6,
        "user_us_on": user_on * 1e6,
        "user_us_off": user_off * 1e6,
        "kernel_us_on": kernel_on * 1e6,
        "kernel_us_off": kernel_off * 1e6,
        "rps_ratio": rps_on / rps_off,
        "cpu_ratio": cpu_on / cpu_off,
    }


def _block_line(b: int, r: dict[str, float]) -> str:
    return (
        f"  block {b + 1}: {r['rps_on']:,.0f} vs {r['rps_off']:,.0f} req/s "
        f"({r['rps_ratio']:.3f}), {r['cpu_us_on']:.0f} vs {r['cpu_us_off']:.0f} µs CPU "
        f"per request ({r['cpu_ratio']:.3f})"
    )


def spread(values: list[float]) -> dict[str, float]:
    """Median, mean, its standard error (nan for one value), lowest and highest."""
    n = len(values)
    return {
        "median": statistics.median(values),
        "mean": statistics.mean(values),
        "stderr": statistics.stdev(values) / n**0.5 if n > 1 else float("nan"),
        "low": min(values),
        "high": max(values),
    }


def _summary(
    args: argparse.Namespace, bench: Bench, blocks: list[dict[str, float]]
) -> tuple[str, dict[str, Any]]:
    rps = spread([b["rps_ratio"] for b in blocks])
    cpu = spread([b["cpu_ratio"] for b in blocks])
    control = args.interleave_control
    met = rps["median"] >= 1 - GOAL
    sides = "ids on in both phases (control)" if control else "ids on ÷ ids off"
    lines = [
        f"# Request ids, interleaved in the same workers — "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- code: wsgiproxy commit {bench.product_commit}, snapshot {bench.product_digest}",
        f"- run: {len(blocks)} ABBA blocks of {args.phase:g} s phases, 100 B at "
        f"{CONNECTIONS} connections, {WORKERS} gevent workers, "
        f"{args.rounds} gunicorn{'s in turn' if args.rounds > 1 else ''}; {sides}",
        "",
        "| ratio | median | mean ± standard error | lowest | highest |",
        "|---|---|---|---|---|",
    ]
    for name, s in (("req/s", rps), ("CPU per request", cpu)):
        lines.append(
            f"| {name} | {s['median']:.3f} | {s['mean']:.3f} ± {s['stderr']:.3f} | "
            f"{s['low']:.3f} | {s['high']:.3f} |"
        )
    lines += [
        "",
        "| workers' CPU per request (µs, mean over blocks) | ids on | ids off | on − off |",
        "|---|---|---|---|",
    ]
    for part in ("user", "kernel", "cpu"):
        on_us = statistics.mean(b[f"{part}_us_on"] for b in blocks)
        off_us = statistics.mean(b[f"{part}_us_off"] for b in blocks)
        name = "both" if part == "cpu" else part
        lines.append(f"| {name} | {on_us:.1f} | {off_us:.1f} | {on_us - off_us:+.2f} |")
    rounds = sorted({b["round"] for b in blocks})
    if len(rounds) > 1:
        means = [statistics.mean(b["rps_ratio"] for b in blocks if b["round"] == r) for r in rounds]
        lines += [
            "",
            f"Each round's mean req/s ratio ({len(rounds)} gunicorns, one after another): "
            + ", ".join(f"{m:.3f}" for m in means)
            + f"; their mean {statistics.mean(means):.3f} ± "
            f"{statistics.stdev(means) / len(means) ** 0.5:.3f}",
        ]
    if not control:
        lines += [
            "",
            f"- **{'PASS' if met else 'FAIL'}** request ids cost at most {GOAL:.0%} of req/s: "
            f"{(1 - rps['median']) * 100:.1f}% fewer with ids (median of the per-block ratios;"
            " below zero: no cost this method can see)",
        ]
    results = {
        "argv": vars(args),
        "commit": bench.product_commit,
        "blocks": blocks,
        "rps_ratio": rps,
        "cpu_ratio": cpu,
        "control": control,
        "goal_met": met,
    }
    return "\n".join(lines) + "\n", results
