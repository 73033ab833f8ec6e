"""Cost of one pool event against queue depth: our pool beside httpcore 1.0.9's.

M = 100 connections to one origin, all active, N requests queued; the event is one more
request arriving, or one connection released (the head of the queue gets it). Compared, on
the same fake connections: `wsgiproxy.client.pool.PoolState` and `Pool`, httpcore 1.0.9's
`ConnectionPool._assign_requests_to_connections`, and PR #974's single-pass rewrite of it.
`make bench-pool` runs it in bench/.venv-httpcore (made if missing), prints one markdown
table, writes it to bench/results/, and exits 1 when a goal line says FAIL. See
bench/README_pool.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = BENCH / ".venv-httpcore"
HTTPCORE = "1.0.9"
M = 100
DEPTHS = (10, 100, 1_000, 10_000)
SCENARIOS = ARRIVAL, RELEASE = "all busy, arrival", "one free, release"
IMPLS = ("ours", "ours via Pool", "PR #974 rewrite", "httpcore 1.0.9")
OURS, LOCKED, PR974, HTTPCORE_POOL = IMPLS
ORIGIN = ("http", "example.com", 80)
URL = "http://example.com/"
ROUNDS = 10
NOW = 1.0  # our pool takes the time as an argument: a fixed one, so nothing expires


def reexec_in_bench_venv() -> None:
    """Run this script again in bench/.venv-httpcore, creating it and installing httpcore
    1.0.9 first if needed: httpcore never goes into the project's own venv."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = str(VENV / "bin" / "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = f"import importlib.metadata as m; assert m.version('httpcore') == '{HTTPCORE}'"
    if subprocess.run([python, "-c", probe], capture_output=True).returncode:
        pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, f"httpcore=={HTTPCORE}"], check=True)
    os.execv(python, [python, __file__, *sys.argv[1:]])


class FakeConn:
    """An HTTP/1.1 connection without a socket: what httpcore's pool asks of one (ours only
    asks `close`). As in httpcore, it is available only while idle, and turns active when a
    request starts using it, not when the pool assigns it to one."""

    def __init__(self, origin: Any, name: str, idle: bool = False) -> None:
        self.origin, self.name, self.idle = origin, name, idle
        self.closed = self.expired = False

    def can_handle_request(self, origin: Any) -> bool:
        return bool(origin == self.origin)

    def is_idle(self) -> bool:
        return self.idle

    is_available = is_idle

    def has_expired(self) -> bool:
        return self.expired

    def is_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def assign_single_pass(pool: Any) -> list[Any]:
    """`_assign_requests_to_connections` rewritten as PR #974 describes: one walk drops
    closed connections and collects expired ones, idle ones are counted once and the surplus
    evicted in one pass, and the available ones are snapshotted once before the loop over
    queued requests. Behaviour is kept, down to giving one HTTP/1.1 connection to several
    queued requests (an assigned connection stays in the snapshot)."""
    closing: list[Any] = []
    kept: list[Any] = []
    for conn in pool._connections:
        if not conn.is_closed():
            (closing if conn.has_expired() else kept).append(conn)
    idle = [conn for conn in kept if conn.is_idle()]
    surplus = len(idle) - pool._max_keepalive_connections
    if surplus > 0:
        evicted, idle = set(idle[:surplus]), idle[surplus:]
        closing += [conn for conn in kept if conn in evicted]
        kept = [conn for conn in kept if conn not in evicted]
    pool._connections = kept
    available = [conn for conn in kept if conn.is_available()]
    for pool_request in [r for r in pool._requests if r.is_queued()]:
        origin = pool_request.request.url.origin
        conn = next((c for c in available if c.can_handle_request(origin)), None)
        if conn is None and len(kept) >= pool._max_connections:
            if not idle:
                continue
            oldest = idle.pop(0)  # close an idle connection to another origin, make room
            kept.remove(oldest)
            closing.append(oldest)
            if oldest in available:
                available.remove(oldest)
        if conn is None:
            conn = pool.create_connection(origin)
            kept.append(conn)
        pool_request.assign_to_connection(conn)
    return closing


@dataclass
class Case:
    """One implementation in one situation. `event` is timed; `restore` (untimed) brings
    the situation back; `served` counts queued requests now holding a connection."""

    event: Callable[[], object]
    restore: Callable[[], object]
    served: Callable[[], int]
    steps: Callable[[], int] = lambda: 0  # records and waiters our pool has examined


def ours_case(scenario: str, n: int, locked: bool) -> Case:
    """`PoolState`, or `Pool`, with M active connections and n waiters queued."""
    from wsgiproxy.client.pool import Limits, Pool, PoolState, PoolTimeout

    limits = Limits(max_connections=M, max_keepalive=M, keepalive_expiry=3600.0)
    pool: Pool[FakeConn] = Pool(limits, clock=lambda: NOW)
    # Set up through the state: queueing n waiters with Pool.acquire would take n threads.
    state: PoolState[FakeConn] = pool._state if locked else PoolState(limits)
    leases: deque[Any] = deque()
    for i in range(M):
        leases.append(state.acquire(ORIGIN, NOW)[0].lease)
        state.connected(leases[-1], FakeConn(ORIGIN, f"c{i}"))
    queue: deque[Any] = deque()
    arrived: list[Any] = []

    def enqueue() -> None:
        queue.append(state.acquire(ORIGIN, NOW, threading.Event() if locked else None)[0])

    for _ in range(n):
        enqueue()

    def served() -> int:
        return sum(w.state == "served" for w in [*queue, *arrived])

    def arrive() -> None:
        if not locked:
            arrived.append(state.acquire(ORIGIN, NOW)[0])
            return
        with contextlib.suppress(PoolTimeout):  # arrival, no wait, cancel, PoolTimeout
            pool.acquire(ORIGIN, 0.0)

    def release() -> None:
        if locked:
            pool.release(leases[0], reusable=True)
        else:
            state.release(leases[0], NOW, reusable=True)

    def requeue() -> None:  # the head holds the connection now; one more waits at the tail
        leases.popleft()
        leases.append(queue.popleft().lease)
        with pool._lock if locked else contextlib.nullcontext():
            enqueue()

    if scenario == ARRIVAL:
        depart = (lambda: None) if locked else (lambda: state.cancel(arrived.pop(), None))
        return Case(arrive, depart, served, lambda: state.steps)
    return Case(release, requeue, served, lambda: state.steps)


def httpcore_case(scenario: str, n: int, assign: Callable[[Any], list[Any]]) -> Case:
    """httpcore's pool with M active fake connections, their M requests and n queued
    requests; an event is the state change, then one call of `assign` on the pool."""
    from httpcore import ConnectionPool, Request
    from httpcore._sync.connection_pool import PoolRequest

    pool = ConnectionPool(max_connections=M, max_keepalive_connections=M)
    origin = Request("GET", URL).url.origin
    pool._connections = [FakeConn(origin, f"c{i}") for i in range(M)]
    for conn in pool._connections:
        pool._requests.append(PoolRequest(Request("GET", URL)))
        pool._requests[-1].assign_to_connection(conn)
    queued = [PoolRequest(Request("GET", URL)) for _ in range(n)]
    pool._requests.extend(queued)
    newcomer = PoolRequest(Request("GET", URL))
    first, done = pool._connections[0], pool._requests[0]

    def served() -> int:
        return sum(r.connection is not None for r in [*queued, newcomer])

    def clear() -> None:
        for request in [*queued, newcomer]:
            if request.connection is not None:
                request.clear_connection()

    def arrive() -> None:  # as in handle_request
        pool._requests.append(newcomer)
        assign(pool)

    def depart() -> None:
        assert pool._requests.pop() is newcomer
        clear()

    def release() -> None:  # the response was read to its end: as PoolByteStream.close
        first.idle = True
        pool._requests.remove(done)
        assign(pool)

    def reset() -> None:
        first.idle = False
        pool._requests.insert(0, done)
        clear()

    return Case(arrive, depart, served) if scenario == ARRIVAL else Case(release, reset, served)


def build(impl: str, scenario: str, n: int) -> Case:
    from httpcore import ConnectionPool

    if impl in (OURS, LOCKED):
        return ours_case(scenario, n, locked=impl == LOCKED)
    if impl == HTTPCORE_POOL:
        return httpcore_case(scenario, n, ConnectionPool._assign_requests_to_connections)
    return httpcore_case(scenario, n, assign_single_pass)


def check_rewrite_matches() -> None:
    """The rewrite decides as 1.0.9 does on a mixed pool: closed, expired and idle
    connections, two origins, room made by closing idle ones. (Keep-alive limit at the
    maximum: 1.0.9 counts all connections against it, encode/httpcore#1035.)"""
    from httpcore import ConnectionPool, Request
    from httpcore._sync.connection_pool import PoolRequest

    def name(conn: Any) -> str:
        return getattr(conn, "name", None) or f"new {conn._origin}"

    def run(assign: Callable[[Any], list[Any]]) -> list[str]:
        pool = ConnectionPool(max_connections=5)
        for i, spec in enumerate(["a closed", "a expired", "a idle", "a ", "b idle", "b "]):
            host, _, how = spec.partition(" ")
            conn = FakeConn(Request("GET", f"http://{host}/").url.origin, f"{host}{i}")
            conn.idle, conn.closed, conn.expired = how == "idle", how == "closed", how == "expired"
            pool._connections.append(conn)
        requests = [PoolRequest(Request("GET", f"http://{h}/")) for h in "acbada"]
        pool._requests = list(requests)
        closing = assign(pool)
        return [name(c) for c in [*closing, *pool._connections, *(r.connection for r in requests)]]

    mine, theirs = run(assign_single_pass), run(ConnectionPool._assign_requests_to_connections)
    assert mine == theirs, f"the PR #974 rewrite decides differently:\n{mine}\n{theirs}"


def check(notes: list[str]) -> None:
    """Before timing: each event serves what it should, `restore` undoes it, and our pool
    examines as many records and waiters per event at N=10,000 as at N=10."""
    check_rewrite_matches()
    for impl in IMPLS:
        ours = impl in (OURS, LOCKED)
        for scenario in SCENARIOS:
            steps: list[int] = []
            for n in (10, 10_000) if ours else (10,):
                case = build(impl, scenario, n)
                for _ in range(2):
                    before = case.steps()
                    case.event()
                    steps.append(case.steps() - before)
                    got = case.served()
                    case.restore()
                    assert case.served() == 0, f"{impl}, {scenario}: restore left one served"
            want = 1 if scenario == RELEASE else 0
            assert got == want or not ours, f"{impl}, {scenario}: {got} served"
            assert len(set(steps)) == 1, f"{impl}, {scenario}: steps per event {steps}"
            if got != want:
                notes.append(
                    f"{impl}, {scenario}, N=10: the event gave the one free connection to {got}"
                    f" queued requests, not {want} (pydantic/httpx2#1075)"
                )


def sample(case: Case, budget_s: float, min_reps: int, into: list[int]) -> None:
    """Time single events until the budget is spent (at least min_reps, at most 20,000),
    restoring the situation after each one, with the garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        deadline = time.perf_counter_ns() + int(budget_s * 1e9)
        for rep in range(20_000):
            if rep >= min_reps and time.perf_counter_ns() >= deadline:
                break
            start = time.perf_counter_ns()
            case.event()
            into.append(time.perf_counter_ns() - start)
            case.restore()
    finally:
        gc.enable()


def report(results: dict[tuple[str, str, int], float], notes: list[str]) -> tuple[str, bool]:
    """The markdown table, the goal lines and the notes; and whether every goal passed."""

    def us(x: float) -> str:
        return f"{x:.2f}" if x < 100 else f"{x:,.0f}"

    head = ["scenario", "N", *(f"{i} (µs/event)" for i in IMPLS), "httpcore / ours"]
    rows = [[*head, "PR974 / ours"], ["---"] * (len(head) + 1)]
    for scenario in SCENARIOS:
        for n in DEPTHS:
            cells = [results[impl, scenario, n] for impl in IMPLS]
            ours, _, pr, hc = cells
            rows.append(
                [scenario, f"{n:,}", *map(us, cells), f"{hc / ours:,.0f}x", f"{pr / ours:,.0f}x"]
            )
    goals: list[tuple[str, bool]] = []
    for scenario in SCENARIOS:
        growth = results[OURS, scenario, 10_000] / results[OURS, scenario, 10]
        goal = f"ours at N=10,000 within 2x of N=10 ({scenario}): {growth:.2f}x"
        goals.append((goal, growth <= 2))
    below = min(results[HTTPCORE_POOL, s, 10_000] / results[OURS, s, 10_000] for s in SCENARIOS)
    goal = f"ours at least 1,000x below httpcore 1.0.9 at N=10,000: {below:,.0f}x (lower scenario)"
    goals.append((goal, below >= 1_000))
    lines = [
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "ours = `PoolState` (no lock); ours via Pool = `Pool` with its lock and events (its "
        "arrival is `acquire(timeout=0)`: arrival, zero wait, cancel, PoolTimeout raised). "
        f"Medians of single events; M = {M} connections to one origin.",
        "",
        *(f"- {text}: {'PASS' if ok else 'FAIL'}" for text, ok in goals),
        *(f"- note: {note}" for note in notes),
    ]
    return "\n".join(lines), all(ok for _, ok in goals)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per cell, all rounds")
    args = parser.parse_args()
    reexec_in_bench_venv()
    sys.path.insert(0, str(ROOT))
    import httpcore

    started, load = time.monotonic(), os.getloadavg()[0]
    notes: list[str] = []
    check(notes)
    # Every cell is timed in each of ROUNDS rounds, so that load from other processes
    # spreads over all cells instead of skewing the ones timed while it lasted.
    cases = {(i, s, n): build(i, s, n) for s in SCENARIOS for n in DEPTHS for i in IMPLS}
    samples: dict[tuple[str, str, int], list[int]] = {key: [] for key in cases}
    gc.freeze()  # the cases live to the end: keep them out of every collection
    for case in cases.values():
        sample(case, 0, 2, [])  # warm up
    for _ in range(ROUNDS):
        for key, case in cases.items():
            slow = key[0] == HTTPCORE_POOL and key[2] >= 1_000
            sample(case, args.budget / ROUNDS, 1 if slow else 10, samples[key])
    results = {key: statistics.median(times) / 1000 for key, times in samples.items()}
    out, ok = report(results, notes)
    print(out)

    now = datetime.datetime.now(datetime.UTC)
    dirty = git("status", "--porcelain", "wsgiproxy/client/pool.py")
    header = [
        f"# Pool benchmark, {now:%Y-%m-%d %H:%M} UTC\n",
        f"- machine: {platform.platform()}, nproc {len(os.sched_getaffinity(0))}, "
        f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after",
        f"- Python {platform.python_version()}, httpcore {httpcore.__version__}",
        f"- wsgiproxy at {git('log', '-1', '--format=%h %s').strip()}"
        + (" (wsgiproxy/client/pool.py modified)" if dirty else ""),
        f"- the run took {time.monotonic() - started:.0f} s (`make bench-pool`)\n\n",
    ]
    path = BENCH / "results" / f"pool-{now:%Y-%m-%d}.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(header) + out + "\n")
    print(f"\nwritten to {path.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
