"""`run.py --instructions`: CPU instructions per request of one real worker, counted.

Timed figures on this shared machine move by a few percent between processes and runs;
instruction counts do not, so they show a change of half a percent that no timed run
can. Each side is one gunicorn with one gevent worker (the same command as every other
instance here) under valgrind's callgrind with counting off, nginx's 100 B file behind
it. After ``WARM`` requests on one keep-alive connection, counting is switched on in the
worker for ``COUNTED`` requests and off again, and the total read from callgrind's dump:
everything the worker runs for them (gunicorn, gevent, wsgiproxy, the C libraries), but
not the kernel. wsgiproxy and, when named (``--x-tree``, ``--x-env``), wsgiproxy-x are
counted side by side, with one hash seed. Instructions are not time (cache misses and
system calls are not in them): this explains a timed difference, it does not replace it.

Each count is also given less CPython's type-attribute cache misses (``find_name_in_mro``,
with what it calls). That cache is 4,096 slots indexed by a type's version tag and the
name's address: which pairs of hot attributes evict each other is a lottery drawn anew by
any change to the order in which types are first used, and one losing draw moves a
count by 1-2% whatever the code does. The count without them is the code's own.

With ``--interleave`` (``run_switched``): one worker under callgrind, its request ids
switched on and off in place (``switch_app.py``) between counted phases in ABBA order.
Both sides then share one process, one memory layout and one draw of that lottery: the
count difference is what the ids' own code adds. A worker's timed chores (the health
thread's refresh each second, gunicorn's heartbeat) land in phases unevenly under
valgrind, so two phases of one side differ by up to 2%.
``--instructions --in-process`` (in_process.py) counts without those chores.
"""

from __future__ import annotations

import argparse
import datetime
import re
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

from interleave import SWITCH, switch
from processes import descendants, free_port
from provision import ensure_system_tools
from proxies import EXPERIMENT, OURS, SPECS
from report import write_report
from servers import Bench

#: Requests before counting starts: connections made, caches and code paths warm.
WARM = 300
#: Requests counted.
COUNTED = 400
#: The request, and the length of the 100 B file's body that answers it.
REQUEST = b"GET /100b.bin HTTP/1.1\r\nHost: bench\r\n\r\n"
BODY_LENGTH = 100
#: Each side's answer under valgrind is ~50 times slower than without.
START_LIMIT_S = 300.0
#: ``run_switched``: ids on or off in each counted phase (ABBA, four times: a phase that
#: more of the worker's timed chores land in counts thousands more a request, and the
#: median drops it).
SWITCHED_PHASES = (True, False, False, True, False, True, True, False) * 2
#: ``run_switched``: requests after each switch before counting, so no request in a
#: counted phase began in the other mode.
SWITCH_SETTLE = 20
_VALGRIND = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no"]


def run_instructions(args: argparse.Namespace, x_env: dict[str, str]) -> int:
    """Instructions per request for each side, printed with their ratio."""
    bench = Bench.for_run(args, "-instructions")
    outdir, procs = bench.outdir, bench.procs
    bench.x_env = x_env
    sides = [OURS] + ([EXPERIMENT] if args.x_tree or x_env else [])
    counts: dict[str, float] = {}
    misses: dict[str, float] = {}
    errors: list[BaseException] = []
    try:
        ensure_system_tools(valgrind=True)
        bench.snapshot_product()
        bench.prepare_files()
        bench.start_upstreams()

        def count(side: str) -> None:
            try:
                counts[side], misses[side] = _count_side(bench, side, outdir)
            except BaseException as exc:  # reported once both sides are done
                errors.append(exc)

        # Both at once: each count is the worker's own, whatever else runs.
        threads = [threading.Thread(target=count, args=(side,)) for side in sides]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    finally:
        procs.stop_all()
    lines = [
        f"# Instructions per request — {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- code: wsgiproxy commit {bench.product_commit}, snapshot {bench.product_digest}"
        + (f"; wsgiproxy-x: {bench.x_digest} (from {args.x_tree})" if bench.x_digest else "")
        + (f"; wsgiproxy-x settings: {x_env}" if x_env else ""),
        f"- run: one gevent worker, 100 B from nginx on one keep-alive connection, "
        f"{COUNTED} requests counted after {WARM}",
        "",
        "| side | instructions per request | in type-cache misses | without them |",
        "|---|---|---|---|",
        *(
            f"| {side} | {counts[side]:,.0f} | {misses[side]:,.0f} "
            f"| {counts[side] - misses[side]:,.0f} |"
            for side in sides
        ),
    ]
    if EXPERIMENT in counts:
        own = {side: counts[side] - misses[side] for side in sides}
        lines += [
            "",
            f"{OURS} ÷ {EXPERIMENT}: {counts[OURS] / counts[EXPERIMENT]:.4f}; "
            f"without type-cache misses {own[OURS] / own[EXPERIMENT]:.4f}",
        ]
    text = "\n".join(lines) + "\n"
    write_report(
        outdir,
        text,
        {"counts": counts, "type_cache_misses": misses, "warm": WARM, "counted": COUNTED},
    )
    return 0


def _count_side(bench: Bench, side: str, outdir: Path) -> tuple[float, float]:
    """One side: its worker's instructions per request over COUNTED requests, and how
    many of them went to type-attribute cache misses."""
    port = free_port()
    dump = outdir / f"callgrind.{side}"
    master = bench.start_wsgiproxy(
        SPECS[side],
        f"{side}-callgrind",
        "http",
        port,
        extra={"PROXY_WORKERS": "1", "PYTHONHASHSEED": "0"},
        wrapper=[*_VALGRIND, f"--callgrind-out-file={dump}.%p"],
    )
    sock = _first_answer(port)
    try:
        _requests(sock, WARM)
        workers = descendants(master.pid)
        if len(workers) != 1:
            raise SystemExit(f"bench: expected one worker under {side}, found {workers}")
        worker = str(workers[0])
        _callgrind_control("-i", "on", worker)
        _requests(sock, COUNTED)
        _callgrind_control("-i", "off", worker)
        _callgrind_control("-d", worker)
        dumped = Path(f"{dump}.{worker}.1")  # the first dump asked for
        total = _dumped_total(dumped)
    finally:
        sock.close()
        bench.procs.stop_one(master, grace=60)
    return total / COUNTED, _type_cache_misses(dumped) / COUNTED


def run_switched(args: argparse.Namespace) -> int:
    """Instructions per request in one worker with ids on and off by turns, and the ratio
    of the phases' medians."""
    bench = Bench.for_run(args, "-instructions-switched")
    outdir, procs = bench.outdir, bench.procs
    flag = bench.tmp / "request-ids"
    flag.write_text("1")
    dump = outdir / "callgrind.switched"
    counts: dict[bool, list[float]] = {True: [], False: []}
    try:
        ensure_system_tools(valgrind=True)
        bench.snapshot_product()
        bench.prepare_files()
        bench.start_upstreams()
        port = free_port()
        master = bench.start_wsgiproxy(
            SWITCH,
            f"{SWITCH.name}-callgrind",
            "http",
            port,
            extra={"PROXY_WORKERS": "1", "PYTHONHASHSEED": "0", "BENCH_SWITCH_FLAG": str(flag)},
            wrapper=[*_VALGRIND, f"--callgrind-out-file={dump}.%p"],
        )
        sock = _first_answer(port)
        try:
            worker = _switchable_worker(master.pid, flag)
            _requests(sock, WARM)
            for phase, ids in enumerate(SWITCHED_PHASES, start=1):
                switch(flag, [worker], ids)
                if _requests(sock, SWITCH_SETTLE) != ids:
                    raise SystemExit(f"bench: request ids did not switch {'on' if ids else 'off'}")
                _callgrind_control("-i", "on", str(worker))
                _requests(sock, COUNTED)
                _callgrind_control("-i", "off", str(worker))
                _callgrind_control("-d", str(worker))
                counts[ids].append(_dumped_total(Path(f"{dump}.{worker}.{phase}")) / COUNTED)
        finally:
            sock.close()
    finally:
        procs.stop_all()
    on, off = statistics.median(counts[True]), statistics.median(counts[False])
    lines = [
        f"# Instructions per request, ids switched in one worker — "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- code: wsgiproxy commit {bench.product_commit}, snapshot {bench.product_digest}",
        f"- run: one gevent worker under callgrind, 100 B from nginx on one keep-alive "
        f"connection; {len(SWITCHED_PHASES)} phases of {COUNTED} counted requests, ids "
        f"switched in ABBA order (bench/switch_app.py)",
        "",
        "| ids | instructions per request, each phase | median |",
        "|---|---|---|",
        *(
            f"| {'on' if ids else 'off'} | {', '.join(f'{c:,.0f}' for c in counts[ids])} "
            f"| {(on if ids else off):,.0f} |"
            for ids in (True, False)
        ),
        "",
        f"ids on ÷ off: {on / off:.4f} (+{on - off:,.0f} instructions a request)",
    ]
    write_report(
        outdir,
        "\n".join(lines) + "\n",
        {"on": counts[True], "off": counts[False], "ratio": on / off, "counted": COUNTED},
    )
    return 0


def _switchable_worker(master: int, flag: Path) -> int:
    """The one worker, once switch_app.py's handler is in place."""
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        workers = descendants(master)
        if len(workers) == 1 and Path(f"{flag}.{workers[0]}").exists():
            return workers[0]
        time.sleep(0.5)
    raise SystemExit("bench: the switchable worker did not start under valgrind")


def _dumped_total(path: Path) -> int:
    """The total of a dump callgrind_control asked for, once it is written whole."""
    deadline = time.monotonic() + 60
    while not (total := _total(path)):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: no callgrind counts in {path}")
        time.sleep(0.5)
    return total


def _first_answer(port: int) -> socket.socket:
    """A keep-alive connection that has had its first 200 (valgrind starts slowly)."""
    deadline = time.monotonic() + START_LIMIT_S
    while True:
        sock = socket.socket()
        sock.settimeout(60)
        try:
            sock.connect(("127.0.0.1", port))
            _requests(sock, 1)
            return sock
        except OSError as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"bench: no answer under valgrind in {START_LIMIT_S:.0f}s: {exc}"
                ) from exc
            time.sleep(1)


def _requests(sock: socket.socket, n: int) -> bool:
    """``n`` requests, each answered before the next is sent; whether the last answer
    carried a request id. The client is a few C calls a request whatever the response
    holds: a slower one (http.client parses each header in Python) makes the worker wait
    for the next request more often, and a wait costs the worker thousands of
    instructions of its own."""
    reply = b""
    for _ in range(n):
        sock.sendall(REQUEST)
        reply = b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise SystemExit("bench: the proxy closed the connection under valgrind")
            reply += data
            end = reply.find(b"\r\n\r\n")
            if end >= 0 and len(reply) >= end + 4 + BODY_LENGTH:
                break
        if not reply.startswith(b"HTTP/1.1 200 "):
            raise SystemExit(f"bench: {reply[:40]!r} under valgrind")
    return b"\r\nX-Request-ID: " in reply


def _callgrind_control(*argv: str) -> None:
    subprocess.run(["callgrind_control", *argv], check=True, capture_output=True, timeout=120)


def _total(path: Path) -> int:
    """The instruction total of one callgrind dump (the largest of its summary and totals
    lines: the summary line is 0 in a dump asked for); 0 while it is not written whole."""
    if not path.exists():
        return 0
    lines = path.read_text(errors="replace").splitlines()
    return max(
        (int(line.split()[1]) for line in lines if line.startswith(("summary:", "totals:"))),
        default=0,
    )


def _type_cache_misses(path: Path) -> int:
    """Instructions in ``find_name_in_mro`` and what it calls: the price of the worker's
    type-attribute cache misses (``_PyType_Lookup`` calls it on a miss only)."""
    return by_function(path, inclusive=True).get("find_name_in_mro", 0)


#: A row of ``callgrind_annotate``: the count, then file:function and the object file.
_ROW = re.compile(r"^\s*([\d,]+) \([^)]*\)\s+(\S.*)$")
#: callgrind's mark on a function's recursive calls (``'2``): one function all the same.
_RECURSION = re.compile(r"'\d+$")


def by_function(dump: Path, *, inclusive: bool) -> dict[str, int]:
    """Instructions by function name (file and object dropped) in a callgrind dump.

    A function may have several rows: its own file's, one per header whose inlined code
    it ran, and one per depth of recursion (``'2``). Exclusive counts add up; an
    inclusive count is its largest row (the others are inside it)."""
    annotated = subprocess.run(
        [
            "callgrind_annotate",
            f"--inclusive={'yes' if inclusive else 'no'}",
            "--threshold=100",
            str(dump),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    counts: dict[str, int] = {}
    for match in map(_ROW.match, annotated.splitlines()):
        if match and "PROGRAM TOTALS" not in match.group(2):
            name = _RECURSION.sub("", match.group(2).split(" [")[0].rsplit(":", 1)[-1])
            value = int(match.group(1).replace(",", ""))
            counts[name] = (
                max(counts.get(name, 0), value) if inclusive else counts.get(name, 0) + value
            )
    return counts
