"""Measuring: wrk runs, the CPU seconds and RSS of process trees, upstream connections
opened, and the peak RSS while a 50 MB response passes through."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from constants import BENCH, CLK_TCK, PAGE
from processes import descendants, kill_pid, stat
from servers import Bench, Instance


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of each process, its reaped children included."""
    return sum(cpu_split(pids))


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, kernel) CPU seconds of the processes, their reaped children included."""
    user = kernel = 0
    for pid in pids:
        st = stat(pid)
        if st:
            user += int(st[11]) + int(st[13])
            kernel += int(st[12]) + int(st[14])
    return user / CLK_TCK, kernel / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


# -- wrk -----------------------------------------------------------------------------------
@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    error_detail: dict[str, int]
    cpu_s: float


def wrk(
    url: str, conns: int, seconds: float, *, abs_path: str | None = None, timeout_s: float = 8.0
) -> WrkResult:
    threads = 1 if conns == 1 else 2
    argv = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(conns),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        f"{timeout_s:g}s",
        "--latency",
        "-s",
        str(BENCH / "wrk_report.lua"),
        url,
    ]
    if abs_path:
        argv += ["--", abs_path]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    killer = threading.Timer(seconds + timeout_s + 20, lambda: kill_pid(proc.pid))
    killer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        killer.cancel()
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result ({proc.returncode}): {out[-800:]}")
    d = json.loads(line[8:])
    secs = d["duration_us"] / 1e6
    detail = {k: d[k] for k in ("connect", "read", "write", "status", "timeout")}
    return WrkResult(
        requests=d["requests"],
        seconds=secs,
        rps=d["requests"] / secs if secs else 0.0,
        p50_ms=d["p50_us"] / 1000,
        p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        errors=sum(detail.values()),
        error_detail=detail,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def check_wrk_absolute_form(url_of_listener_port: int | None = None) -> str:
    """Check that wrk sends wrk.path as-is: capture the request line it sends."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        # wrk opens one connection first and closes it without a request: skip it.
        srv.settimeout(5)
        for _ in range(4):
            try:
                conn, _ = srv.accept()
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    got.append(data)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                conn.close()
                if got:
                    return
            except OSError:
                return

    t = threading.Thread(target=accept)
    t.start()
    absolute = "http://127.0.0.1:9/abs-check?x=1"
    with contextlib.suppress(RuntimeError):
        wrk(f"http://127.0.0.1:{port}/", 1, 1, abs_path=absolute, timeout_s=1)
    t.join(6)
    srv.close()
    first = got[0].split(b"\r\n", 1)[0].decode(errors="replace") if got else ""
    if (
        not first.startswith(f"GET {absolute} HTTP/1.1")
        or b"\r\nHost: 127.0.0.1:9\r\n" not in got[0]
    ):
        raise SystemExit(f"bench: wrk does not send absolute-form as set: {first!r}")
    return first


# -- one measurement -----------------------------------------------------------------------
def measure(
    bench: Bench,
    inst: Instance,
    cell_path: str,
    conns: int,
    seconds: float,
    *,
    abs_url: str | None = None,
    timeout_s: float = 8.0,
) -> dict[str, Any]:
    """One wrk run through ``inst``, with the CPU, RSS and upstream connections it cost."""
    up = inst.upstream
    up_tree = [bench.upstream_root[up]] + descendants(bench.upstream_root[up])
    proxy_tree = inst.tree()
    scheme = "https" if inst.https else "http"
    url = f"{scheme}://127.0.0.1:{inst.port}{'/' if abs_url else inst.prefix + cell_path}"
    a0 = bench.upstream_accepts(up)
    c_proxy0, c_up0 = cpu_seconds(proxy_tree), cpu_seconds(up_tree)
    res = wrk(url, conns, seconds, abs_path=abs_url, timeout_s=timeout_s)
    c_proxy1, c_up1 = cpu_seconds(proxy_tree), cpu_seconds(up_tree)
    a1 = bench.upstream_accepts(up)
    workers = inst.worker_pids()
    rss = [rss_bytes(pid) for pid in workers]
    opened = max(0, a1 - a0 - 1)
    return {
        "rps": res.rps,
        "p50_ms": res.p50_ms,
        "p90_ms": res.p90_ms,
        "p99_ms": res.p99_ms,
        "requests": res.requests,
        "seconds": res.seconds,
        "errors": res.errors,
        "error_detail": res.error_detail,
        "upstream_conns": opened,
        "conns_per_1k": opened * 1000 / res.requests if res.requests else None,
        "rss_mb": sum(rss) / 1e6 if rss else None,
        "rss_per_worker_mb": sum(rss) / len(rss) / 1e6 if rss else None,
        "workers": len(rss),
        "cpu_proxy_s": c_proxy1 - c_proxy0 if proxy_tree else None,
        "cpu_upstream_s": c_up1 - c_up0,
        "cpu_wrk_s": res.cpu_s,
    }


def big_response_growth(inst: Instance, times: int = 3) -> float:
    """Largest peak-RSS growth (MB) of any worker while a 50 MB response passes through."""
    growth = 0.0
    for _ in range(times):
        pids = inst.worker_pids()
        before = {p: rss_bytes(p) for p in pids}
        peak = dict(before)
        done = threading.Event()

        def sample(done: threading.Event, pids: list[int], peak: dict[int, int]) -> None:
            while not done.is_set():
                for p in pids:
                    peak[p] = max(peak[p], rss_bytes(p))
                time.sleep(0.005)

        t = threading.Thread(target=sample, args=(done, pids, peak))
        t.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=60)
            conn.request("GET", inst.prefix + "/50m.bin")
            resp = conn.getresponse()
            n = 0
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                n += len(chunk)
            conn.close()
            if resp.status != 200 or n != 50 << 20:
                print(
                    f"bench: 50 MB through {inst.proxy}: status {resp.status}, {n} bytes",
                    file=sys.stderr,
                )
        finally:
            done.set()
            t.join()
        growth = max(growth, max((peak[p] - before[p]) / 1e6 for p in pids))
    return growth
