"""`run.py --instructions --in-process`: the instructions request ids add, counted in one
process that calls the app directly.

``--instructions --interleave`` counts a real worker, where the health thread's refresh
and gunicorn's heartbeat land unevenly in phases under valgrind and move a side's count
by thousands of instructions a request. Here in_process_driver.py builds the app (no
gunicorn, no health thread) and calls it with ids switched between ABBA phases, each
side's requests run under a C function of its own, which callgrind's
``--toggle-collect`` counts apart: repeatable to tens of instructions a request. It
leaves out gunicorn's part (parsing, the response head's join). Two more runs, each
counting one side, give the difference function by function.
"""

from __future__ import annotations

import argparse
import datetime
import threading
from pathlib import Path

from constants import BENCH, PRODUCT_BIN
from instructions import by_function
from processes import clean_env
from provision import ensure_system_tools
from report import write_report
from servers import Bench

#: Requests a phase, and phases (ABBA, twice); in_process_driver.py checks the order.
REQUESTS = 500
PHASES = 8
#: The C function each side's requests run under (in_process_driver.py).
TOGGLES = {True: "filterfalse_next", False: "filter_next"}
#: A run under valgrind takes about 40 s; past this it is stopped.
RUN_LIMIT_S = 900


def run_in_process(args: argparse.Namespace) -> int:
    """What request ids add to the app's instructions a request, then where, by function."""
    bench = Bench.for_run(args, "-instructions-in-process")
    outdir, procs = bench.outdir, bench.procs
    both = outdir / "callgrind.both"
    apart = {ids: outdir / f"callgrind.{'on' if ids else 'off'}" for ids in TOGGLES}
    try:
        ensure_system_tools(valgrind=True)
        bench.snapshot_product()
        bench.prepare_files()
        bench.start_upstreams()
        driver = [
            str(PRODUCT_BIN / "python"),
            str(BENCH / "in_process_driver.py"),
            str(bench.product_dir),
            bench.upstream_url("http"),
            str(REQUESTS),
            str(PHASES),
        ]
        # The two one-side runs at once (two cores), then the run that counts both.
        _count_runs(bench, driver, [(apart[ids], [toggle]) for ids, toggle in TOGGLES.items()])
        _count_runs(bench, driver, [(both, list(TOGGLES.values()))])
    finally:
        procs.stop_all()
    per_side = REQUESTS * PHASES // 2
    inclusive = by_function(both, inclusive=True)
    per_request = {ids: inclusive[toggle] / per_side for ids, toggle in TOGGLES.items()}
    on, off = (by_function(apart[ids], inclusive=False) for ids in (True, False))
    diff = {
        name: (on.get(name, 0) - off.get(name, 0)) / per_side for name in on.keys() | off.keys()
    }
    top = sorted(diff.items(), key=lambda item: -abs(item[1]))[:20]
    added = per_request[True] - per_request[False]
    lines = [
        f"# Instructions per request, the app called in one process — "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- code: wsgiproxy commit {bench.product_commit}, snapshot {bench.product_digest}",
        f"- run: bench/in_process_driver.py under callgrind, 100 B from nginx; {PHASES} phases "
        f"of {REQUESTS} requests, ids switched in ABBA order; gunicorn's part of a request "
        "is not in these counts",
        "",
        "| ids on | ids off | on − off |",
        "|---|---|---|",
        f"| {per_request[True]:,.0f} | {per_request[False]:,.0f} | {added:+,.0f} |",
        "",
        "Where the difference goes (a run per side, each function's own instructions):",
        "",
        "| function | on − off, a request |",
        "|---|---|",
        *(f"| `{name}` | {value:+,.0f} |" for name, value in top),
    ]
    write_report(
        outdir,
        "\n".join(lines) + "\n",
        {"on": per_request[True], "off": per_request[False], "by_function": dict(top)},
    )
    return 0


def _count_runs(bench: Bench, driver: list[str], runs: list[tuple[Path, list[str]]]) -> None:
    """The driver under callgrind once per (dump, toggle functions), all at once; each
    started through the run's process list, so an interrupted run stops them too."""
    errors: list[str] = []

    def one(dump: Path, toggles: list[str]) -> None:
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            *(f"--toggle-collect={name}" for name in toggles),
            f"--callgrind-out-file={dump}",
            *driver,
        ]
        proc = bench.procs.start(dump.name, argv, env=clean_env(PYTHONHASHSEED="0"))
        try:
            code = proc.wait(timeout=RUN_LIMIT_S)
        except Exception:
            code = -1
        bench.procs.stop_one(proc)
        bench.procs.forget(proc)
        if code != 0:
            errors.append(f"{dump.name}: exit {code} (see {bench.procs.logdir / dump.name}.log)")

    threads = [threading.Thread(target=one, args=run, daemon=True) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("bench: in_process_driver failed under valgrind: " + "; ".join(errors))
