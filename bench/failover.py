"""The failover scenario: three servers behind each proxy, one killed and restored.

For each proxy in turn (nginx, HAProxy, wsgiproxy; each started fresh, so that no state
carries over): three small upstream servers (``upstream_member.py``) on ports of their
own, the proxy in front of them, and a steady load (``failover_load.py``: RATE requests
per second over CONNS keep-alive connections, LOAD_SECONDS long). FAULT_AT seconds into
the load the second server is killed (SIGKILL: its listener closes, its connections are
reset, the port refuses connections); RESTORE_AT seconds in, a new server listens on the
same port again.

What it measures, per proxy:

- ``errors``: requests the client saw fail (a non-2xx status, a connection refused, reset
  or closed before the response's end, or no response within 5 s); ``served``: 2xx.
- ``p99_steady_ms``: p99 latency of the requests due from 1 s in until the kill;
  ``p99_fault_ms``: of those due from the kill until the restore (and their max).
- ``tried_s``: seconds from the kill until the dead server is no longer tried. The
  harness counts, with a raw socket and a BPF filter, every SYN sent to the dead port
  (the port refuses, so nothing there can log a request). A proxy's own probes (a health
  check every second, or the one request nginx sends when ``fail_timeout`` ends) are at
  most CHECK_ALLOWANCE per BUCKET seconds and are not "trying" it: ``tried_s`` is the
  time of the last SYN in the last BUCKET with more than that. ``attempts`` is every SYN
  while it was dead, probes included.
- ``back_s``: seconds from the moment the port listens again until the restored server
  serves its first request of the load (health checks do not count).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import provision
from constants import BENCH, PRODUCT_BIN
from processes import clean_env, free_port, http_get, stat
from proxies import SPECS
from servers import Bench

RATE = 1500  # requests per second, all connections together
CONNS = 24
LOAD_SECONDS = 22.0
STEADY_FROM = 1.0  # the first second is the load's own start
FAULT_AT = 5.0  # seconds into the load: the second server is killed
RESTORE_AT = 12.0  # ...and a new one listens on its port
KILLED = 1  # which of the three
HEALTH_PATH = "/health"
PATH = "/fo.bin"
BUCKET = 0.25  # seconds
CHECK_ALLOWANCE = 2  # SYNs per BUCKET that are a proxy's probes, not tries
#: failover_load.py's statuses for a request that got no response
ERROR_KINDS = {-1: "connect", -2: "closed", -3: "timeout", -4: "invalid"}


# -- the servers ---------------------------------------------------------------------------
def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def start_member(bench: Bench, name: str, port: int) -> tuple[subprocess.Popen[bytes], float]:
    """An upstream server on ``port`` (listening from the moment returned)."""
    sock = _listen(port)
    t_listen = time.monotonic()
    try:
        proc = bench.procs.start(
            name,
            [str(PRODUCT_BIN / "python"), str(BENCH / "upstream_member.py"), str(sock.fileno())]
            + [HEALTH_PATH],
            env=clean_env(),
            pass_fds=(sock.fileno(),),
        )
    finally:
        sock.close()  # the child holds it now: when it dies, the port refuses
    return proc, t_listen


def member_stats(port: int) -> dict[str, Any]:
    _, body = http_get("127.0.0.1", port, "/__stats", timeout=3)
    return dict(json.loads(body))


# -- connection attempts on a port that refuses them ---------------------------------------
class SynCounter:
    """The times of the SYNs sent to one port on loopback (root: a raw socket with a BPF
    filter that passes only a SYN without ACK to that port; the kernel still refuses)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.times: list[float] = []
        self.error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._prog: Any = None

    def start(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        except OSError as exc:  # not root
            self.error = f"raw socket: {exc}"
            return
        ld, ldx, jmp, ret, alu = 0x00, 0x01, 0x05, 0x06, 0x04
        b, h, ind, msh, jeq, and_ = 0x10, 0x08, 0x40, 0xA0, 0x10, 0x50
        prog = [
            (ldx | b | msh, 0, 0, 0),  # X = IP header length
            (ld | h | ind, 0, 0, 2),  # A = TCP destination port
            (jmp | jeq, 0, 4, self.port),
            (ld | b | ind, 0, 0, 13),  # A = TCP flags
            (alu | and_, 0, 0, 0x12),  # SYN | ACK
            (jmp | jeq, 0, 1, 0x02),  # SYN alone
            (ret, 0, 0, 0xFFFF),
            (ret, 0, 0, 0),
        ]
        self._prog = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
        fprog = struct.pack("HL", len(prog), ctypes.addressof(self._prog))
        sock.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                pkt = self._sock.recv(256)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) >= ihl + 14:  # the filter may let a packet through before it is set
                dport = struct.unpack("!H", pkt[ihl + 2 : ihl + 4])[0]
                to_loopback = pkt[16:20] == b"\x7f\x00\x00\x01"
                if dport == self.port and to_loopback and pkt[ihl + 13] & 0x12 == 0x02:
                    self.times.append(now)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        if self._sock:
            self._sock.close()


# -- the proxies ---------------------------------------------------------------------------
def start_proxy(bench: Bench, proxy: str, port: int, servers: list[int]) -> subprocess.Popen[bytes]:
    if proxy == "nginx":
        conf = provision.failover_nginx_conf(bench.tmp, "nginx-failover", port, servers)
        return bench._nginx("nginx-failover", conf)
    if proxy == "haproxy":
        cfg = bench.outdir / "haproxy-failover.cfg"  # kept with the results
        cfg.write_text(provision.failover_haproxy_conf(port, servers, HEALTH_PATH))
        return bench.procs.start(
            "haproxy-failover", [provision.haproxy_binary(), "-f", str(cfg), "-db"], cwd=bench.tmp
        )
    if proxy == "wsgiproxy":
        return bench.start_wsgiproxy(
            SPECS["wsgiproxy"],
            "wsgiproxy-failover",
            "http",
            port,
            upstream_urls=" ".join(f"http://127.0.0.1:{s}" for s in servers),
            extra={
                "HTTP_HEALTH_PATH": HEALTH_PATH,
                "HTTP_HEALTH_INTERVAL": "1",
                "PROXY_MAX_FAILS": "1",
                "PROXY_FAIL_TIMEOUT": "10",  # as nginx's fail_timeout
            },
        )
    raise ValueError(proxy)


def _ready(proc: subprocess.Popen[bytes], port: int, servers: list[int], limit_s: float) -> str:
    """ "ready" once the proxy answers 200 and every server has served a request through
    it; else why not."""
    deadline = time.monotonic() + limit_s
    why = "no answer"
    while time.monotonic() < deadline:
        if stat(proc.pid) is None or proc.poll() is not None:
            return "did not start"
        try:
            status, _ = http_get("127.0.0.1", port, PATH, timeout=2)
            why = f"status {status}"
            if status == 200 and all(member_stats(s)["requests"] > 0 for s in servers):
                return "ready"
        except (OSError, http.client.HTTPException) as exc:
            why = str(exc)
        time.sleep(0.05)
    return f"not ready after {limit_s:.0f} s ({why})"


# -- one proxy's run -----------------------------------------------------------------------
def run_one(bench: Bench, proxy: str) -> dict[str, Any]:
    servers = [free_port() for _ in range(3)]
    members = [
        start_member(bench, f"failover-{proxy}-up{i + 1}", p)[0] for i, p in enumerate(servers)
    ]
    port = free_port()
    proc = start_proxy(bench, proxy, port, servers)
    try:
        why = _ready(proc, port, servers, 30)
        if why != "ready":
            print(f"  failover {proxy:<10} not measured: {why}", flush=True)
            return {"not_measured": why}
        time.sleep(1.0)  # a round of health checks on the three
        return _measure(bench, proxy, port, servers, members)
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        # one proxy's failed run is reported; the others still run
        print(f"  failover {proxy:<10} not measured: {exc!r}", flush=True)
        return {"not_measured": f"failed: {exc!r}"}
    finally:
        for p in [proc, *members]:
            with contextlib.suppress(Exception):
                bench.procs.stop_one(p)


def _measure(
    bench: Bench, proxy: str, port: int, servers: list[int], members: list[subprocess.Popen[bytes]]
) -> dict[str, Any]:
    dead = servers[KILLED]
    out = bench.tmp / f"failover-{proxy}.json"
    syns = SynCounter(dead)
    syns.start()
    t0 = time.monotonic() + 0.5
    load = bench.procs.start(
        f"failover-load-{proxy}",
        [str(PRODUCT_BIN / "python"), str(BENCH / "failover_load.py"), "127.0.0.1", str(port)]
        + [PATH, str(RATE), str(CONNS), f"{t0:.6f}", str(LOAD_SECONDS), str(out)],
        env=clean_env(),
    )
    try:
        time.sleep(max(0.0, t0 + FAULT_AT - time.monotonic()))
        bench.procs.stop(members[KILLED], 9)  # SIGKILL: listener closed, connections reset
        t_kill = time.monotonic()
        time.sleep(max(0.0, t0 + RESTORE_AT - time.monotonic()))
        restored, t_back = start_member(bench, f"failover-{proxy}-up{KILLED + 1}-restored", dead)
        members.append(restored)
        load.wait(timeout=LOAD_SECONDS + 15)
    finally:
        syns.stop()
        if load.poll() is None:
            bench.procs.stop(load, 9)
    stats = [member_stats(s) for s in servers]  # the restored server's for the dead port
    return analyse(proxy, json.loads(Path(out).read_text()), syns, t_kill, t_back, stats)


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(0.99 * len(v)))]


def analyse(
    proxy: str,
    load: dict[str, Any],
    syns: SynCounter,
    t_kill: float,
    t_back: float,
    stats: list[dict[str, Any]],
) -> dict[str, Any]:
    t0 = load["t0"]
    kill, back = t_kill - t0, t_back - t0
    rows = list(zip(load["due"], load["latency_ms"], load["status"], strict=True))
    ok = [200 <= s < 300 for _, _, s in rows]
    steady = [lat for d, lat, _ in rows if STEADY_FROM <= d < kill]
    fault = [lat for d, lat, _ in rows if kill <= d < back]
    per_second = []
    for sec in range(int(LOAD_SECONDS)):
        lats = [lat for d, lat, _ in rows if sec <= d < sec + 1]
        errs = sum(1 for d, _, s in rows if sec <= d < sec + 1 and not 200 <= s < 300)
        per_second.append({"s": sec, "requests": len(lats), "errors": errs, "p99_ms": _p99(lats)})
    statuses: dict[str, int] = {}
    for (_, _, s), good in zip(rows, ok, strict=True):
        if not good:
            kind = ERROR_KINDS.get(s, str(s))
            statuses[kind] = statuses.get(kind, 0) + 1
    tried_s: float | None = None
    attempts = None
    if not syns.error:
        dead_syns = [t - t_kill for t in syns.times if t_kill <= t < t_back]
        attempts = len(dead_syns)
        buckets: dict[int, list[float]] = {}
        for t in dead_syns:
            buckets.setdefault(int(t / BUCKET), []).append(t)
        busy = [ts for ts in buckets.values() if len(ts) > CHECK_ALLOWANCE]
        tried_s = max(busy[-1]) if busy else (dead_syns[0] if dead_syns else 0.0)
    first = stats[KILLED].get("first_request")
    back_s = first - t_back if first is not None else None
    p99_s, p99_f = _p99(steady), _p99(fault)
    r = {
        "errors": sum(1 for g in ok if not g),
        "error_kinds": statuses,
        "served": sum(ok),
        "p99_steady_ms": p99_s,
        "p99_fault_ms": p99_f,
        "p99_fault_vs_steady": p99_f / p99_s if p99_s and p99_f is not None else None,
        "max_fault_ms": max(fault) if fault else None,
        "attempts": attempts,
        "tried_s": tried_s,
        "tried_note": syns.error,
        "back_s": back_s,
        "kill_at_s": kill,
        "restore_at_s": back,
        "served_per_server": [s["requests"] for s in stats],
        "health_per_server": [s["health"] for s in stats],
        "per_second": per_second,
    }
    print(
        f"  failover {proxy:<10} err {r['errors']:<5} served {r['served']:>6}  "
        f"p99 steady {_f(p99_s)} ms, fault {_f(p99_f)} ms  "
        f"tried {_f(tried_s, 2)} s ({attempts} SYNs)  back {_f(back_s, 2)} s",
        flush=True,
    )
    return r


def _f(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def run_failover(bench: Bench, proxies: list[str]) -> dict[str, dict[str, Any]]:
    """Each proxy's run, in turn; a proxy that does not start is "not measured"."""
    print(
        f"bench: failover: {RATE} req/s over {CONNS} connections for {LOAD_SECONDS:g} s; "
        f"server {KILLED + 1} of 3 killed at {FAULT_AT:g} s, back at {RESTORE_AT:g} s",
        flush=True,
    )
    return {p: run_one(bench, p) for p in proxies}
