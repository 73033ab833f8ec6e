"""The reload scenario: requests lost over 10 reloads under a keep-alive load.

For each server in turn (each started fresh, on its own port): ``CONNS`` keep-alive
clients (reload_load.py, one thread each, a request after another as fast as answers
come) send ``GET /100b.bin``; WARM_S seconds in the harness reloads the server RELOADS
times, then lets the load run TAIL_S more and stops it.

- ``wsgiproxy``: the product's gunicorn command, 2 gevent workers, in front of the
  upstream nginx; ``kill -HUP`` to its master.
- ``gunicorn``: plain gunicorn running the bare app (bare_app.py, 2 gevent workers, no
  upstream); ``kill -HUP`` to its master.
- ``nginx``: an nginx instance of its own (own config and pid file) in front of the same
  upstream; ``nginx -p TMP -c ITS.conf -s reload``.

Reloads come 1 s apart, or slower when a reload takes longer: the next waits until the
previous one is done (the master's workers are all new: every old worker gone and as
many new ones as before), at most RELOAD_LIMIT_S. wsgiproxy's master waits for its new
workers to serve before it stops the old ones, so its reloads take about a worker's
boot. ``reload_s``: from each signal until that reload is done (median and max).
"""

from __future__ import annotations

import contextlib
import http.client
import statistics
import subprocess
import time
from typing import Any

import provision
from processes import descendants, free_port, http_get, stat
from proxies import SPECS
from reload_load import LOST_KINDS, LoadClients
from servers import Bench

CONNS = 64
RELOADS = 10
INTERVAL_S = 1.0
WARM_S = 1.5
TAIL_S = 2.0
RELOAD_LIMIT_S = 30.0
PATH = "/100b.bin"
#: the servers, in the order they run
SERVERS = ["nginx", "gunicorn", "wsgiproxy"]


def _start(bench: Bench, server: str, port: int) -> tuple[subprocess.Popen[bytes], Any]:
    """The server, and how to reload it (a function of no argument)."""
    if server == "nginx":
        name = "nginx-reload"
        conf = provision.reload_nginx_conf(bench.tmp, name, port, bench.ports["up_http"])
        proc = bench._nginx(name, conf)
        argv = [
            provision.nginx_binary(),
            "-p",
            str(bench.tmp),
            "-c",
            str(bench.tmp / f"{name}.conf"),
            "-e",
            str(bench.tmp / f"{name}-error.log"),
            "-s",
            "reload",
        ]
        return proc, lambda: subprocess.run(argv, check=True, capture_output=True, timeout=10)
    if server == "gunicorn":
        proc = bench.start_gunicorn_app(SPECS["bare"], "gunicorn-reload", "http", port)
    elif server == "wsgiproxy":
        proc = bench.start_wsgiproxy(SPECS["wsgiproxy"], "wsgiproxy-reload", "http", port)
    else:
        raise ValueError(server)
    return proc, lambda: proc.send_signal(1)  # SIGHUP


def _ready(proc: subprocess.Popen[bytes], port: int, limit_s: float = 30.0) -> str:
    deadline = time.monotonic() + limit_s
    why = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "did not start"
        try:
            status, _ = http_get("127.0.0.1", port, PATH, timeout=2)
            if status == 200 and len(descendants(proc.pid)) > 0:
                return "ready"
            why = f"status {status}"
        except (OSError, http.client.HTTPException) as exc:
            why = str(exc)
        time.sleep(0.1)
    return f"not ready after {limit_s:.0f} s ({why})"


def _workers(pid: int) -> set[int]:
    """The master's live children (a zombie is a worker gone)."""
    out = set()
    for p in descendants(pid):
        st = stat(p)
        if st is not None and st[0] != "Z" and int(st[1]) == pid:
            out.add(p)
    return out


def _wait_reloaded(pid: int, old: set[int], count: int) -> float | None:
    """Seconds until every old worker is gone and ``count`` new ones run; None past the
    limit."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < RELOAD_LIMIT_S:
        now = _workers(pid)
        if not (now & old) and len(now) >= count:
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def run_one(bench: Bench, server: str) -> dict[str, Any]:
    port = free_port()
    proc, reload = _start(bench, server, port)
    try:
        why = _ready(proc, port)
        if why != "ready":
            print(f"  reloads {server:<10} not measured: {why}", flush=True)
            return {"not_measured": why}
        return _measure(server, proc, reload, port)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"  reloads {server:<10} not measured: {exc!r}", flush=True)
        return {"not_measured": f"failed: {exc!r}"}
    finally:
        with contextlib.suppress(Exception):
            bench.procs.stop_one(proc)


def _measure(server: str, proc: subprocess.Popen[bytes], reload: Any, port: int) -> dict[str, Any]:
    count = len(_workers(proc.pid))
    load = LoadClients(port, PATH, CONNS).start()
    reload_s: list[float | None] = []
    t_start = time.monotonic()
    try:
        time.sleep(WARM_S)
        for _ in range(RELOADS):
            old = _workers(proc.pid)
            t_sig = time.monotonic()
            reload()
            reload_s.append(_wait_reloaded(proc.pid, old, count))
            time.sleep(max(0.0, t_sig + INTERVAL_S - time.monotonic()))
        time.sleep(TAIL_S)
    finally:
        report = load.stop()
    seconds = time.monotonic() - t_start
    done = [s for s in reload_s if s is not None]
    r = {
        "lost": report.lost,
        "served": report.served,
        "kinds": dict(sorted(report.kinds.items())),
        "reconnects": report.reconnects,
        "closes_announced": report.closes_announced,
        "reloads": RELOADS,
        "reloads_done": len(done),
        "reload_s_median": statistics.median(done) if done else None,
        "reload_s_max": max(done) if done else None,
        "seconds": seconds,
        "rps": report.served / seconds,
        "first_lost": report.first_lost,
    }
    kinds = ", ".join(f"{k} {v}" for k, v in r["kinds"].items()) or "none"
    print(
        f"  reloads {server:<10} lost {r['lost']:<4} served {r['served']:>7,} "
        f"errors: {kinds}; reconnects {r['reconnects']}, announced closes "
        f"{r['closes_announced']}; reload {r['reload_s_median'] or 0:.2f} s median, "
        f"{r['reload_s_max'] or 0:.2f} s max ({len(done)}/{RELOADS} done)",
        flush=True,
    )
    for line in report.first_lost[:5]:
        print(f"    {line}", flush=True)
    return r


def run_reloads(bench: Bench, servers: list[str]) -> dict[str, dict[str, Any]]:
    print(
        f"bench: reloads: {RELOADS} reloads {INTERVAL_S:g} s apart (or as each completes) "
        f"at {CONNS} keep-alive connections; lost = {'/'.join(LOST_KINDS)}",
        flush=True,
    )
    return {s: run_one(bench, s) for s in servers}
