#!/usr/bin/env python3
"""`make bench`: wsgiproxy beside nginx and the Python proxies people use instead.

Everything runs on 127.0.0.1 in one go, side by side: the upstreams (nginx with a 100 B
body and a 100 KiB file, the same nginx over HTTPS with a CA made here, and a 50 ms
delayed upstream), every proxy (each a long-running instance per upstream, so the cells
of one repetition can alternate between proxies without restarting them), and wrk. Per
cell and proxy it measures req/s, p50/p99, errors, upstream connections opened per 1,000
requests, the proxy's RSS (sum over workers) and the CPU seconds of proxy, upstream and
wrk; then the queue-pressure run and the 50 MB memory check. It writes a markdown report
(goals, ratio table, raw medians), the raw results as JSON and a PNG chart under
bench/results/<date>/, and prints the report.

    .venv/bin/python bench/run.py            # the full run (make bench), < 20 min
    .venv/bin/python bench/run.py --quick    # one short repetition (make bench-quick), < 3 min
    .venv/bin/python bench/run.py --only wsgiproxy,flask-urllib3 --reps 5 --duration 5
    .venv/bin/python bench/run.py --profile  # py-spy of wsgiproxy's workers under load
    # a change beside its before, new processes each repetition (bench/README.md):
    .venv/bin/python bench/run.py --only wsgiproxy-x --x-tree /tmp/before --fresh \
        --cells "100B c64" --reps 16 --duration 4 --no-queue --no-memory

Every process started here is stopped by its pid when the run ends, however it ends
(finally, atexit, SIGTERM/SIGHUP), and every step is bounded in time. What the harness
needs and the product does not is installed here: wrk and nginx from the system packages
when missing, and virtualenvs bench/.venv-wsgiproxy2, bench/.venv-proxypy and
bench/.venv-tools (matplotlib, py-spy) from bench/requirements-*.txt.

The parts, by what they hold: proxies.py (the proxies as a table of specs), cells.py
(the cells), goals.py (the goals as data), provision.py (apt, virtualenvs, files,
certificates, nginx configs, the product's snapshot), processes.py (starting and stopping
processes, /proc), servers.py (the upstreams and proxies of a run), measure.py (wrk, CPU,
RSS), report.py (medians and the report), profiling.py (--profile), interleave.py and
switch_app.py (--interleave), instructions.py (--instructions), in_process.py and
in_process_driver.py (--instructions --in-process); this file runs them.
pool_interleave.py, run by hand, pools several --interleave runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cells import CELLS, Cell
from constants import BENCH, PRODUCT_BIN, QUEUE_CLIENTS, QUEUE_LIMIT, RESULTS, ROOT, WORKERS
from failover import run_failover
from goals import evaluate_goals
from in_process import run_in_process
from instructions import run_instructions, run_switched
from interleave import run_interleave
from measure import big_response_growth, check_wrk_absolute_form, measure
from profiling import run_profile
from provision import ensure_system_tools, ensure_venv
from proxies import (
    EXPERIMENT,
    FAILOVER,
    GROUP_CELL,
    KEEPALIVE_CELLS,
    MEMORY,
    OURS,
    PROXIES,
    QUEUE,
    TABLE,
)
from reloads import SERVERS as RELOAD_SERVERS
from reloads import run_reloads
from report import (
    machine,
    medians,
    paired_ratios,
    progress_line,
    queue_medians,
    queue_progress_line,
    report,
    run_line,
    versions,
)
from servers import Bench
from websockets_scenario import WS_PROXIES, run_websockets


def parse_x_env(args: argparse.Namespace) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in args.x_env.split(",") if kv) if args.x_env else {}


def run_bench(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    bench = Bench.for_run(args, "-quick" if args.quick else "")
    outdir, tmp, procs, stamp = bench.outdir, bench.tmp, bench.procs, bench.outdir.name
    try:
        return _run(bench, args, outdir, stamp, t_start)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def _run(bench: Bench, args: argparse.Namespace, outdir: Path, stamp: str, t_start: float) -> int:
    only = set(args.only.split(",")) if args.only else None
    if only:
        unknown = only - set(PROXIES) - {"queue", "memory", "haproxy", "gunicorn"}
        if unknown:
            raise SystemExit(
                f"bench: unknown --only {sorted(unknown)}; choose from {', '.join(PROXIES)}"
            )
        only.add(OURS)

    def want(p: str) -> bool:
        return (only is None and p != EXPERIMENT) or (only is not None and p in only)

    bench.x_env = parse_x_env(args)
    cells = [c for c in CELLS if not args.cells or c.name in args.cells]
    alone = scenarios_alone(args)
    if alone:  # the scenarios named, alone
        cells = []
    do_queue = (
        not args.no_queue
        and not alone
        and (only is None or "queue" in only or "flask-urllib3" in only)
    )
    # The full run ends with the scenarios; a focused run (--only, --cells) or --quick
    # only when asked.
    full = not (args.quick or only is not None or args.cells or alone)
    do_failover = args.failover or (full and not args.no_failover)
    do_reloads = args.reloads or (full and not args.no_reloads)
    do_websockets = args.websockets or (full and not args.no_websockets)
    failover_proxies = [p for p in FAILOVER if want(p)]
    reload_servers = [p for p in RELOAD_SERVERS if only is None or p in only]
    ws_proxies = [p for p in WS_PROXIES if only is None or p in only]
    _set_up(bench, cells, want, do_queue, outdir, haproxy=do_failover)

    runs, queue_runs, reps_done = _measure_cells(bench, args, cells, want, do_queue, t_start)

    memory: dict[str, float] = {}
    if not args.no_memory and not alone:
        for proxy in MEMORY:
            if (proxy, "http") in bench.inst:
                memory[proxy] = big_response_growth(bench.inst[(proxy, "http")])
                print(f"  50 MB response through {proxy}: +{memory[proxy]:.1f} MB", flush=True)

    scenarios: dict[str, dict[str, dict[str, Any]]] = {}
    if do_failover:
        scenarios["failover"] = run_failover(bench, failover_proxies)
    if do_reloads:
        scenarios["reloads"] = run_reloads(bench, reload_servers)
    if do_websockets:
        scenarios["websockets"] = run_websockets(bench, ws_proxies)

    return _write_results(
        bench, args, cells, runs, queue_runs, memory, scenarios, reps_done, outdir, stamp, t_start
    )


#: the scenarios a flag runs alone, and the prefix of their goals' lines
SCENARIOS = {"failover": "Failover", "reloads": "Reloads", "websockets": "WebSockets"}


def scenarios_alone(args: argparse.Namespace) -> list[str]:
    """The scenarios named by their flags (--failover, --reloads, --websockets): run
    alone, without the cells."""
    return [name for name in SCENARIOS if getattr(args, name)]


def _set_up(
    bench: Bench,
    cells: list[Cell],
    want: Callable[[str], bool],
    do_queue: bool,
    outdir: Path,
    haproxy: bool = False,
) -> None:
    """Tools, venvs, files, the upstreams and every instance the cells need, ready."""
    ensure_system_tools(haproxy=haproxy)
    for spec in TABLE:
        if spec.venv and want(spec.name):
            bench.venv[spec.venv] = ensure_venv(spec.venv)
    bench.venv["tools"] = ensure_venv("tools")
    abs_line = check_wrk_absolute_form()
    t_setup = time.monotonic()

    bench.snapshot_product()
    bench.prepare_files()
    bench.start_upstreams()
    bench.start_nginx_proxy()
    needed: set[tuple[str, str]] = set()
    for c in cells:
        for p in c.proxies:
            if want(p):
                needed.add((p, c.upstream))
    if do_queue:
        needed |= {(p, "delay") for p in QUEUE}
    for p, u in sorted(needed):
        bench.start_proxy(p, u)
    print(
        f"bench: {len(needed)} instances starting (results: {outdir.relative_to(ROOT)})", flush=True
    )
    bench.wait_ready()
    print(
        f"bench: ready in {time.monotonic() - t_setup:.1f}s; wrk absolute-form check: {abs_line!r}",
        flush=True,
    )


def _measure_cells(
    bench: Bench,
    args: argparse.Namespace,
    cells: list[Cell],
    want: Callable[[str], bool],
    do_queue: bool,
    t_start: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """The repetitions: every cell through every proxy, then the queue-pressure runs."""
    runs: list[dict[str, Any]] = []
    queue_runs: list[dict[str, Any]] = []
    deadline = t_start + args.budget * 60
    reps_done = 0
    for rep in range(args.reps):
        if rep > 0 and time.monotonic() > deadline:
            print(f"bench: time budget reached; stopping after {rep} repetitions", flush=True)
            break
        if args.fresh and rep > 0:
            bench.restart_wsgiproxies()
        for cell in cells:
            order = [p for p in cell.proxies if want(p)]
            # Rotate every other repetition and reverse the odd ones: each proxy runs in
            # each place equally often (two proxies alternate first and second; three go
            # through all six orders), so none is always first or last, the measured
            # effect of both a pair's order.
            k = (rep // 2) % len(order)
            order = order[k:] + order[:k]
            if rep % 2:
                order.reverse()
            for proxy in order:
                inst = bench.inst.get((proxy, cell.upstream))
                if inst is None:  # did not start (bench.not_started says why)
                    continue
                abs_url = f"{bench.upstream_url('http')}{cell.path}" if cell.forward else None
                # Churn is a goal about a steady load, and between two runs of one proxy the
                # others run for longer than the pool's surplus window: in those cells every
                # repetition warms every proxy, so each run starts from what its load keeps.
                warm = (
                    rep == 0
                    or args.fresh
                    or cell.name in KEEPALIVE_CELLS
                    or cell.name == GROUP_CELL
                )
                if warm and args.warmup > 0:
                    measure(bench, inst, cell.path, cell.conns, args.warmup, abs_url=abs_url)
                m = measure(bench, inst, cell.path, cell.conns, args.duration, abs_url=abs_url)
                m.update(cell=cell.name, proxy=proxy, rep=rep)
                runs.append(m)
                print(progress_line(rep, cell.name, proxy, m), flush=True)
        if do_queue:
            # "direct": wrk alone on the upstream with as many connections as the proxies
            # may open (workers x 8): what the limit comes to on this machine.
            order = list(QUEUE)
            if rep % 2:
                order.reverse()
            for proxy in order:
                inst = bench.inst[(proxy, "delay")]
                bench.wait_upstream_quiet("delay")  # the previous run's queue has drained
                clients = WORKERS * QUEUE_LIMIT if proxy == "direct" else QUEUE_CLIENTS
                m = measure(bench, inst, "/delay", clients, args.queue_duration, timeout_s=20)
                m.update(cell="queue", proxy=proxy, rep=rep)
                queue_runs.append(m)
                print(queue_progress_line(rep, clients, proxy, m), flush=True)
        reps_done = rep + 1
    return runs, queue_runs, reps_done


def _write_results(
    bench: Bench,
    args: argparse.Namespace,
    cells: list[Cell],
    runs: list[dict[str, Any]],
    queue_runs: list[dict[str, Any]],
    memory: dict[str, float],
    scenarios: dict[str, dict[str, dict[str, Any]]],
    reps_done: int,
    outdir: Path,
    stamp: str,
    t_start: float,
) -> int:
    """report.md, results.json and chart.png under outdir; the report printed."""
    M = medians(runs)
    queue = queue_medians(queue_runs)
    not_started = {f"{p} ({u})": why for (p, u), why in bench.not_started.items()}
    goals = evaluate_goals(M, queue, memory, scenarios, {p for p, _ in bench.not_started})
    alone = scenarios_alone(args)
    if alone:  # the scenarios alone: the other goals were not measured at all
        goals = [g for g in goals if g[0].startswith(tuple(SCENARIOS[n] for n in alone))]
    elapsed = time.monotonic() - t_start
    vers = versions(bench.venv, bench.product_commit)
    if bench.product_digest:
        vers["wsgiproxy snapshot"] = bench.product_digest
    if bench.x_digest:
        vers["wsgiproxy-x snapshot"] = f"{bench.x_digest} (from {bench.args.x_tree})"
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "versions": vers,
        "versions_line": ", ".join(f"{k} {v}" for k, v in vers.items()),
        "run_line": run_line(args, reps_done, elapsed),
        "argv": sys.argv[1:],
    }
    text = report(meta, M, queue, memory, goals, scenarios, not_started, paired_ratios(runs))
    (outdir / "report.md").write_text(text)
    (outdir / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "cell_order": [c.name for c in cells],
                "runs": runs,
                "queue_runs": queue_runs,
                "memory_mb": memory,
                **scenarios,
                "not_started": not_started,
                "medians": M,
                "queue": queue,
                "goals": goals,
                "proxies": PROXIES,
            },
            indent=1,
        )
    )
    if runs:  # a chart of the cells (none in a failover-only run)
        chart = subprocess.run(
            [
                str(bench.venv["tools"] / "python"),
                str(BENCH / "chart.py"),
                str(outdir / "results.json"),
                str(outdir / "chart.png"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if chart.returncode != 0:
            print(f"bench: chart failed: {chart.stderr[-1500:]}", file=sys.stderr)
    kind = "latest-" + "-".join(alone) if alone else "latest-quick" if args.quick else "latest"
    latest = RESULTS / kind
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(stamp)
    print()
    print(text)
    print(
        f"bench: wrote {outdir.relative_to(ROOT)}/report.md, results.json"
        f"{', chart.png' if runs else ''} "
        f"in {elapsed / 60:.1f} min"
    )
    return 0


# -- main ----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="one short repetition (< 3 min)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3; quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per measured run (default 3; quick 1)")
    ap.add_argument(
        "--warmup",
        type=int,
        help="seconds of warm-up per proxy and cell in the first repetition (in every one in"
        " the cells where connection churn is a goal)",
    )
    ap.add_argument(
        "--queue-duration",
        type=int,
        help="seconds of each queue-pressure run (default 10; quick 5)",
    )
    ap.add_argument(
        "--only",
        help=f"comma-separated proxies to run besides wsgiproxy ({', '.join(PROXIES)}; 'queue')",
    )
    ap.add_argument("--cells", help="comma-separated cell names, e.g. '100B c64,HTTPS 100B c64'")
    ap.add_argument(
        "--x-tree",
        help="run wsgiproxy-x from this tree's wsgiproxy/ (e.g. a git worktree of another commit)",
    )
    ap.add_argument(
        "--x-env",
        default="",
        help="K=V,... settings of the wsgiproxy-x experiment (name it in --only)",
    )
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="start every wsgiproxy instance anew before each repetition (and warm it):"
        " a paired run (--x-tree, --x-env) then resolves differences of about 1%%",
    )
    ap.add_argument("--no-queue", action="store_true", help="skip the queue-pressure run")
    ap.add_argument("--no-memory", action="store_true", help="skip the 50 MB response check")
    ap.add_argument(
        "--failover",
        action="store_true",
        help="run only the failover scenario (nginx, HAProxy, wsgiproxy; about 1.5 min)",
    )
    ap.add_argument(
        "--no-failover",
        action="store_true",
        help="skip the failover scenario (--quick, --only and --cells skip it unless --failover)",
    )
    ap.add_argument(
        "--reloads",
        action="store_true",
        help="run only the reload scenario (10 HUPs under load: nginx, gunicorn, wsgiproxy;"
        " about 1 min; with --websockets or --failover, those too)",
    )
    ap.add_argument("--no-reloads", action="store_true", help="skip the reload scenario")
    ap.add_argument(
        "--websockets",
        action="store_true",
        help="run only the WebSocket scenario (1,000 open, 100 echoing: nginx, wsgiproxy;"
        " about 1 min)",
    )
    ap.add_argument("--no-websockets", action="store_true", help="skip the WebSocket scenario")
    ap.add_argument(
        "--budget",
        type=float,
        help="minutes after which no new repetition starts (default 17; quick 2.5)",
    )
    ap.add_argument(
        "--live-tree",
        action="store_true",
        help="run wsgiproxy from the work tree, not a snapshot of it",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="profile wsgiproxy's workers with py-spy under load instead",
    )
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="measure what request ids cost inside one gunicorn, switching them on and off"
        " under load (bench/interleave.py; about 4 min)",
    )
    ap.add_argument(
        "--interleave-control",
        action="store_true",
        help="with --interleave: ids on in both kinds of phase (the method's noise)",
    )
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count a worker's instructions per request under valgrind, wsgiproxy and"
        " (with --x-tree or --x-env) wsgiproxy-x (bench/instructions.py; about 3 min);"
        " with --interleave, ids switched on and off in one worker",
    )
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="with --instructions: the ids' instructions counted in one process that calls"
        " the app directly (bench/in_process_driver.py; about 2 min)",
    )
    ap.add_argument("--blocks", type=int, default=30, help="--interleave: ABBA blocks")
    ap.add_argument("--phase", type=float, default=1.5, help="--interleave: seconds a phase")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="--interleave: a new gunicorn for each of this many shares of the blocks",
    )
    ap.add_argument("--profile-proxy", default="wsgiproxy")
    ap.add_argument(
        "--profile-cell",
        default="100b",
        help="100b, 100k, https or forward (all at 64 connections)",
    )
    ap.add_argument("--profile-seconds", type=float, default=12)
    args = ap.parse_args()
    interleaving = (args.interleave or args.interleave_control) and not args.instructions
    if args.in_process and not args.instructions:
        ap.error("--in-process counts instructions: use it with --instructions")
    if args.rounds != 1 and not interleaving:
        ap.error("--rounds applies to --interleave (timed), not to other modes")
    if not 1 <= args.rounds <= args.blocks:
        ap.error(f"--rounds must be from 1 to --blocks ({args.blocks}), not {args.rounds}")
    q = args.quick
    args.reps = args.reps or (1 if q else 3)
    args.duration = args.duration or (1 if q else 3)  # wrk takes whole seconds
    args.warmup = args.warmup if args.warmup is not None else (0 if q else 1)
    args.queue_duration = args.queue_duration or (5 if q else 10)
    args.budget = args.budget or (2.5 if q else 17.0)
    args.cells = [c.strip() for c in args.cells.split(",")] if args.cells else None

    if not (PRODUCT_BIN / "gunicorn").exists():
        raise SystemExit(
            "bench: .venv missing: run `make bench` (it creates .venv from requirements.txt)"
        )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 20000):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    # Whatever happens, the run ends: past this the finally blocks stop everything.
    hard_limit = int((args.budget + 10) * 60) if not args.profile else 600
    signal.signal(
        signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("bench: hard time limit"))
    )
    signal.alarm(hard_limit)
    if args.profile:
        return run_profile(args, parse_x_env(args))
    if args.instructions and args.in_process:
        return run_in_process(args)
    if args.instructions and args.interleave:
        return run_switched(args)
    if args.interleave or args.interleave_control:
        return run_interleave(args)
    if args.instructions:
        return run_instructions(args, parse_x_env(args))
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
