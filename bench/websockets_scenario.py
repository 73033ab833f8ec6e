"""The WebSocket scenario: 1,000 WebSockets open through one worker, 100 echoing.

For each proxy in turn (each started fresh, with an upstream of its own): a `websockets`
echo server (ws_upstream.py, its own process on 127.0.0.1), the proxy in front of it,
and the client (ws_load.py, one asyncio process).

- ``wsgiproxy``: the product's gunicorn command with ``PROXY_WORKERS=1`` (gevent) and
  ``PROXY_WORKER_CONNECTIONS=2000`` (the default 1,000 is the worker's whole budget of
  client connections: every WebSocket holds one), ``PROXY_UPSTREAM`` the echo server.
- ``nginx``: an instance of its own, 1 worker, the standard WebSocket proxy config
  (``proxy_http_version 1.1``, ``Upgrade`` and ``Connection`` passed on).

The harness first opens, echoes on and closes WARM WebSockets (so that what a first
WebSocket loads is not counted), then reads the worker's RSS ("before"); the client
opens OPEN WebSockets (RSS read again, 1 s after the last opened), then ECHOERS of them
each send a MESSAGE_BYTES message every ECHO_INTERVAL_S and await its echo for ECHO_S
(RSS read again, all still open). RSS per WebSocket: the larger of the two readings with
all open, minus the one before, over the number open. Round trips: p50, p99, max of
every echo. Errors: handshakes that failed, echoes that failed, WebSockets closed before
the end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import provision
from constants import BENCH, PRODUCT_BIN
from measure import rss_bytes
from processes import clean_env, descendants, free_port, http_get
from proxies import SPECS
from servers import Bench

OPEN = 1000
ECHOERS = 100
ECHO_INTERVAL_S = 0.05  # each echoer: 20 messages a second, 2,000 a second in all
ECHO_S = 10.0
MESSAGE_BYTES = 32
WARM = 20
WS_PROXIES = ["nginx", "wsgiproxy"]


def _start_upstream(bench: Bench, proxy: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = bench.procs.start(
        f"ws-upstream-{proxy}",
        [str(PRODUCT_BIN / "python"), str(BENCH / "ws_upstream.py"), str(port)],
        env=clean_env(),
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proc, port
        time.sleep(0.05)
    raise OSError("the echo server did not listen within 15 s")


def _start_proxy(bench: Bench, proxy: str, port: int, upstream: int) -> subprocess.Popen[bytes]:
    if proxy == "nginx":
        name = "nginx-ws"
        return bench._nginx(name, provision.websocket_nginx_conf(bench.tmp, name, port, upstream))
    if proxy == "wsgiproxy":
        return bench.start_wsgiproxy(
            SPECS["wsgiproxy"],
            "wsgiproxy-ws",
            "http",
            port,
            upstream_urls=f"http://127.0.0.1:{upstream}",
            extra={"PROXY_WORKERS": "1", "PROXY_WORKER_CONNECTIONS": "2000"},
        )
    raise ValueError(proxy)


def _ready(proc: subprocess.Popen[bytes], port: int, limit_s: float = 30.0) -> str:
    """ "ready" once a plain GET through the proxy gets the echo server's answer (426:
    it speaks only WebSocket) and the one worker runs."""
    deadline = time.monotonic() + limit_s
    why = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "did not start"
        try:
            status, _ = http_get("127.0.0.1", port, "/", timeout=2)
            if status == 426 and len(descendants(proc.pid)) == 1:
                return "ready"
            why = f"status {status}"
        except (OSError, http.client.HTTPException) as exc:
            why = str(exc)
        time.sleep(0.1)
    return f"not ready after {limit_s:.0f} s ({why})"


def _warm(port: int) -> None:
    from websockets.sync.client import connect

    for i in range(WARM):
        with connect(
            f"ws://127.0.0.1:{port}/warm", compression=None, proxy=None, open_timeout=10
        ) as ws:
            ws.send(f"warm {i}")
            ws.recv(timeout=10)


def _wait_file(path: Path, proc: subprocess.Popen[bytes], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while not path.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            return False
        time.sleep(0.05)
    return True


def run_one(bench: Bench, proxy: str) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream, up_port = _start_upstream(bench, proxy)
        procs.append(upstream)
        port = free_port()
        procs.append(_start_proxy(bench, proxy, port, up_port))
        why = _ready(procs[-1], port)
        if why != "ready":
            print(f"  websockets {proxy:<10} not measured: {why}", flush=True)
            return {"not_measured": why}
        return _measure(bench, proxy, procs[-1], port, procs)
    except (OSError, ValueError, subprocess.SubprocessError, TimeoutError) as exc:
        print(f"  websockets {proxy:<10} not measured: {exc!r}", flush=True)
        return {"not_measured": f"failed: {exc!r}"}
    finally:
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                bench.procs.stop_one(p)


def _measure(
    bench: Bench,
    proxy: str,
    master: subprocess.Popen[bytes],
    port: int,
    procs: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    (worker,) = descendants(master.pid)
    _warm(port)
    time.sleep(0.5)
    before = rss_bytes(worker)
    work = bench.tmp / f"ws-{proxy}"
    work.mkdir()
    client = bench.procs.start(
        f"ws-load-{proxy}",
        [str(PRODUCT_BIN / "python"), str(BENCH / "ws_load.py"), f"ws://127.0.0.1:{port}/echo"]
        + [str(OPEN), str(ECHOERS), str(ECHO_INTERVAL_S), str(ECHO_S), str(MESSAGE_BYTES)]
        + [str(work)],
        env=clean_env(),
    )
    procs.append(client)
    if not _wait_file(work / "opened", client, 90):
        raise TimeoutError("the client did not open its WebSockets within 90 s")
    time.sleep(1.0)
    rss_open = [rss_bytes(worker)]
    (work / "go").touch()
    if not _wait_file(work / "result.json", client, ECHO_S + 45):
        raise TimeoutError("the client did not finish its echoes")
    rss_open.append(rss_bytes(worker))
    (work / "close").touch()
    client.wait(timeout=30)
    res = json.loads((work / "result.json").read_text())
    rtts = sorted(res["rtt_ms"])
    opened = res["opened"]
    grown = max(rss_open) - before
    r = {
        "opened": opened,
        "open_s": res["open_s"],
        "rss_before_mb": before / 2**20,
        "rss_open_mb": max(rss_open) / 2**20,
        "rss_open_readings_mb": [v / 2**20 for v in rss_open],
        "rss_per_ws_kib": grown / opened / 1024 if opened else None,
        "echoes": len(rtts),
        "p50_ms": statistics.median(rtts) if rtts else None,
        "p99_ms": rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))] if rtts else None,
        "max_ms": rtts[-1] if rtts else None,
        "errors": sum(res["errors"].values()),
        "error_kinds": res["errors"],
    }
    print(
        f"  websockets {proxy:<10} opened {opened} in {res['open_s']:.1f} s; RSS "
        f"{r['rss_before_mb']:.1f} -> {r['rss_open_mb']:.1f} MB = "
        f"{r['rss_per_ws_kib'] or 0:.1f} KiB per WS; {len(rtts):,} echoes p50 "
        f"{r['p50_ms'] or 0:.2f} p99 {r['p99_ms'] or 0:.2f} max {r['max_ms'] or 0:.1f} ms; "
        f"errors {res['errors'] or 'none'}",
        flush=True,
    )
    return r


def run_websockets(bench: Bench, proxies: list[str]) -> dict[str, dict[str, Any]]:
    print(
        f"bench: websockets: {OPEN:,} open through one worker, {ECHOERS} echoing "
        f"{MESSAGE_BYTES} B every {ECHO_INTERVAL_S * 1000:g} ms for {ECHO_S:g} s",
        flush=True,
    )
    return {p: run_one(bench, p) for p in proxies}
