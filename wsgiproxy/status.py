"""``python -m wsgiproxy status [URL]``: a terminal view of a running proxy.

Reads ``/_proxy/health`` of the proxy at URL (``http://127.0.0.1:8080`` by default) and
prints the answering worker's status, pool figures, each route's servers, probes and
leaks; ``--watch`` refreshes it every second. Each request is answered by one worker, so
with several workers successive refreshes may show different pids and figures: that is
each worker's own pool and counts.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:8080"
WIDTH = 100
"""A server's line longer than this moves its ejections and last error to a line below."""
EPOCH = 1e9
"""An ``ejected_until`` above this is a wall-clock time, not seconds left: an ejection
lasts at most PROXY_MAX_EJECTION seconds, and 1e9 seconds is 31 years."""


def health_url(url: str, prefix: str) -> str:
    """The health endpoint for a proxy base URL (a full health URL is kept as it is)."""
    url = url.rstrip("/")
    if url.endswith(f"{prefix}/health"):
        return url
    return f"{url}{prefix}/health"


def fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The health JSON; 503 (unhealthy) still carries it. Raises RuntimeError otherwise."""
    try:
        response = requests.get(url, timeout=timeout, proxies={"http": "", "https": ""})
    except requests.RequestException as exc:
        raise RuntimeError(f"cannot reach the proxy at {url}: {exc}") from exc
    if response.status_code not in (200, 503):
        line = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        raise RuntimeError(f"{url} answered {response.status_code}: {line}")
    try:
        data: dict[str, Any] = response.json()
    except ValueError as exc:
        raise RuntimeError(f"{url} did not answer JSON: is it a wsgiproxy?") from exc
    return data


def _seconds_left(ejected_until: Any, now: float) -> float | None:
    """Seconds until an ejection ends, from ``ejected_until`` given either way."""
    if isinstance(ejected_until, bool) or not isinstance(ejected_until, int | float):
        return None
    return ejected_until - now if ejected_until > EPOCH else float(ejected_until)


def _server_extras(server: dict[str, Any], now: float) -> list[str]:
    """What only some servers have to say: ejections so far, when the ejection ends, the
    last error. Absent fields (a proxy from before ejections), zero ejections and an
    ejection already over on a server no longer ejected say nothing."""
    retry = ""
    left = _seconds_left(server.get("ejected_until"), now)
    if left is not None and left > 0:
        seconds = math.ceil(left)
        retry = (
            f"retry in {seconds}s"
            if seconds < 60
            else f"retry in {seconds // 60}m{seconds % 60:02d}s"
        )
    elif left is not None and server.get("state") == "ejected":
        retry = "retry due"  # the ejection is over: the next request it gets is the trial
    extras = []
    ejections = server.get("ejections")
    if ejections:
        extras.append(f"ejections {ejections}" + (f" ({retry})" if retry else ""))
    elif retry:
        extras.append(retry)
    if server.get("last_error"):
        extras.append(f"last error {server['last_error']}")
    return extras


def _routes(upstreams: dict[str, Any], now: float) -> list[str]:
    """``upstreams`` as one line per server under a ``routes`` heading, servers in the
    order given, every column aligned across all routes."""
    rows: list[tuple[list[str], list[str]]] = []
    for prefix, servers in upstreams.items():
        if not servers:
            rows.append(([prefix, "(no servers)"], []))
        for index, server in enumerate(servers or []):
            cells = [
                prefix if index == 0 else "",
                str(server.get("url", "?")),
                str(server.get("state", "?")),
                f"w{server.get('weight', '?')}",
                f"in flight {server.get('in_flight', '?')}",
                f"requests {server.get('requests', '?')}",
                f"failures {server.get('failures', '?')}",
            ]
            rows.append((cells, _server_extras(server, now)))
    widths = [max((len(c[i]) for c, _ in rows if len(c) > i), default=0) for i in range(7)]
    lines = ["routes"]
    for cells, extras in rows:
        fixed = "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False))
        line = "  ".join([fixed.rstrip(), *extras])
        if len(line) > WIDTH:
            # Under the state column: the URL stays readable, the extras below it.
            lines += [fixed.rstrip(), " " * (6 + widths[0] + widths[1]) + "  ".join(extras)]
        else:
            lines.append(line)
    return lines


def render(health: dict[str, Any], now: float | None = None) -> str:
    """The health JSON as a few aligned lines of text.

    ``now`` (default: the clock) turns an ``ejected_until`` given as a wall-clock time
    into seconds left; one given as seconds left does not need it.
    """
    pool = health.get("pool", {})
    counters = pool.get("counters", {})
    lines = [
        f"status  {health.get('status', '?'):<10} worker pid {health.get('pid', '?')}"
        + ("" if health.get("pool_enabled", True) else "   (pool disabled)"),
        f"pool    active {pool.get('active', 0)}  idle {pool.get('idle', 0)}  "
        f"connecting {pool.get('connecting', 0)}  queued {pool.get('queued', 0)}  "
        f"(max {pool.get('max_connections', '?')}, keep {pool.get('max_keepalive', '?')} idle)",
        "counts  " + "  ".join(f"{name} {value}" for name, value in counters.items()),
    ]
    by_origin = pool.get("by_origin", {})
    if by_origin:
        lines.append("origins")
        width = max(len(origin) for origin in by_origin)
        for origin, figures in sorted(by_origin.items()):
            lines.append(
                f"  {origin:<{width}}  active {figures.get('active', 0)}  "
                f"idle {figures.get('idle', 0)}  connecting {figures.get('connecting', 0)}"
            )
    upstreams = health.get("upstreams")
    if upstreams:
        lines += _routes(upstreams, time.time() if now is None else now)
    for probe in health.get("probes", []):
        result = "ok" if probe.get("ok") else f"FAILED ({probe.get('error')})"
        if probe.get("ok") is None:
            result = "not probed yet"
        lines.append(
            f"probe   {probe.get('url')}: {result}, {probe.get('failures_in_a_row', 0)} "
            "failure(s) in a row"
        )
    leaks = health.get("leaks", {})
    held = leaks.get("held_past_request", [])
    lines.append(
        f"leaks   {len(held)} held past their request "
        f"({leaks.get('checked_out', 0)} checked out, {leaks.get('in_flight', 0)} in flight)"
    )
    for item in held:
        lines.append(f"  {item.get('origin')} held {item.get('age_s')}s")
    for warning in health.get("gevent_warnings", []):
        lines.append(f"warning {warning}")
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None,
    *,
    out: Any = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Entry point of ``python -m wsgiproxy status``; returns the exit status.

    0: healthy or degraded; 1: unhealthy or unreachable (so scripts can use it).
    """
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m wsgiproxy status", description=__doc__)
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help="proxy base URL")
    parser.add_argument("--prefix", default="/_proxy", help="PROXY_ADMIN_PREFIX of the proxy")
    parser.add_argument("--watch", action="store_true", help="refresh every second")
    parser.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help="with --watch: stop after N views")
    args = parser.parse_args(argv)
    url = health_url(args.url, args.prefix)
    shown = 0
    status = 0
    while True:
        try:
            health = fetch(url)
        except RuntimeError as exc:
            print(f"wsgiproxy status: {exc}", file=out if args.watch else sys.stderr)
            status = 1
            if not args.watch:
                return status
        else:
            if args.watch:
                out.write("\x1b[H\x1b[2J")  # home and clear: redraw in place
            print(render(health), file=out)
            status = 1 if health.get("status") == "unhealthy" else 0
        shown += 1
        if not args.watch or (args.count and shown >= args.count):
            return status
        out.flush()
        try:
            sleep(args.interval)
        except KeyboardInterrupt:
            return status
