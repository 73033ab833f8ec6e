"""The per-worker health thread, and the judgement ``/_proxy/health`` reports.

One thread per worker process (a greenlet under gevent, through the patched
``threading``), started when the app is built in the worker and stopped when the worker
exits. Every second it runs the pool's pass (so surplus idle connections are shed, and
idle ones past their expiry closed, when no request comes) and brings the metrics up to
date; every ``HTTP_HEALTH_INTERVAL`` it runs the checks: close idle connections the
upstream has dropped, and, with
``HTTP_HEALTH_PATH`` set, probe each upstream. A check that raises is logged and counted;
the next check runs all the same.

Status: ``ok``; ``degraded`` while a server is ejected, when a probe failed, or since the
last check the pool timed out requests or failed to connect; ``unhealthy`` while some
route has no server up, when a probe failed three times in a row, or no connection could
be opened at all since the last check. A failing probe also closes
that origin's idle connections, so the next requests start on fresh ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .client.exchange import UpstreamClient
from .client.transport import is_dropped, one_line
from .metrics import Metrics
from .settings import HealthSettings
from .upstreams.routes import Upstreams
from .upstreams.server import Server

log = logging.getLogger(__name__)

#: Probe failures in a row that make a worker unhealthy.
UNHEALTHY_AFTER = 3
#: Seconds between metric refreshes (cheap: one pool snapshot).
REFRESH_EVERY = 1.0


def _dead(conn: Any) -> bool:
    """An idle connection the upstream closed (or that holds bytes nobody asked for)."""
    sock = getattr(conn, "sock", None)
    return sock is None or is_dropped(sock)


class HealthMonitor:
    """Runs the checks of one worker and keeps their results for the admin endpoint."""

    def __init__(
        self,
        health: HealthSettings,
        connect_timeout: float,
        client: UpstreamClient,
        upstreams: Upstreams,
        metrics: Metrics,
        tunnel_stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.tunnel_stats = tunnel_stats or dict
        self.client = client
        self.metrics = metrics
        self.interval = health.interval
        self.probe_timeout = min(5.0, connect_timeout, health.interval)
        self.upstreams = upstreams
        #: The servers the thread probes, by probe URL (all when HTTP_HEALTH_PATH is set).
        self.probed = upstreams.probe_groups()
        self.last_check: float | None = None
        self.last_result = "not run yet"
        self.checks = 0
        self.check_errors = 0
        self.trouble: str | None = None
        self.unreachable = False
        self._seen = dict(client.pool.stats()["counters"], connect_errors=0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (once); called where the worker builds its app."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wsgiproxy-health", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (the worker is exiting)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        next_check = time.monotonic() + self.interval
        while not self._stop.wait(min(REFRESH_EVERY, max(0.0, next_check - time.monotonic()))):
            self._guarded(self.close_expired)
            self._guarded(self.refresh_metrics)
            if time.monotonic() >= next_check:
                self.check_once()
                next_check = time.monotonic() + self.interval

    def _guarded(self, step: Callable[[], Any]) -> None:
        try:
            step()
        except Exception:
            # Logged with its traceback and counted; the thread never dies of it.
            self.check_errors += 1
            log.exception("health check step %s failed; carrying on", step.__name__)

    # -- the checks ------------------------------------------------------------------
    def check_once(self) -> None:
        """One round of checks; each step is guarded so one failure does not stop the rest."""
        errors_before = self.check_errors
        for step in (self.close_expired, self.close_dropped, self.probe_all, self.judge):
            self._guarded(step)
        self.checks += 1
        self.last_check = time.time()
        failed = self.check_errors - errors_before
        self.last_result = f"{failed} step(s) failed" if failed else self.status()

    def refresh_metrics(self) -> None:
        self.metrics.refresh(
            self.client.pool.stats(),
            self.tunnel_stats(),
            self.upstreams.figures(time.monotonic()),
        )

    def close_expired(self) -> None:
        """The pool's pass: expired idle connections closed, surplus idle ones shed."""
        closed = self.client.pool.close_expired()
        if closed:
            log.debug("health thread closed %d expired or surplus idle connection(s)", closed)

    def close_dropped(self) -> None:
        closed = self.client.pool.close_dead_idle(_dead)
        if closed:
            log.info("health thread closed %d idle connection(s) the upstream dropped", closed)

    def probe_all(self) -> None:
        for servers in self.probed:
            self._guarded(lambda s=servers: self._probe(s))  # type: ignore[misc]

    def _probe(self, servers: list[Server]) -> None:
        """GET the health path on a connection of its own (never a pooled one).

        A failed probe counts as a failure of each server at that URL; a passing probe
        restores an ejected one at once."""
        server = servers[0]
        assert server.probe_target is not None
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            status = self.client.probe(
                server.origin_pool, server.probe_target, server.host_header, self.probe_timeout
            )
            if status >= 500:
                error = f"answered {status}"
        except Exception as exc:
            error = one_line(exc)[:200]
        latency = time.monotonic() - started
        now = time.monotonic()
        for each in servers:
            each.probed(status, error, latency)
            if error is None:
                each.restore()
            elif each.failed(now):
                log.warning(
                    "upstream %s of route %s ejected: its probe failed", each.url.url, each.route
                )
        if error is None:
            return
        closed = self.client.pool.close_idle(server.origin)
        log.warning(
            "health probe of %s failed (%s), %d in a row; closed %d idle connection(s) to it",
            server.probe.url,
            error,
            server.probe.failures_in_a_row,
            closed,
        )

    def judge(self) -> None:
        """Compare the pool's counters with the last check: what went wrong since."""
        counters = dict(
            self.client.pool.stats()["counters"], connect_errors=self.client.connect_errors
        )
        delta = {name: counters[name] - self._seen.get(name, 0) for name in counters}
        self._seen = counters
        problems = []
        if delta["pool_timeouts"]:
            problems.append(f"{delta['pool_timeouts']} pool timeout(s)")
        if delta["connect_errors"]:
            problems.append(f"{delta['connect_errors']} upstream connect error(s)")
        self.trouble = ", ".join(problems) + " since the last check" if problems else None
        self.unreachable = bool(delta["connect_errors"]) and not delta["created"]

    def status(self) -> str:
        """``ok``, ``degraded`` or ``unhealthy`` (see the module docstring)."""
        probes = [servers[0].probe for servers in self.probed]
        dead, ejected = self.upstreams.trouble(time.monotonic())
        if dead or self.unreachable:
            return "unhealthy"
        if any(p.failures_in_a_row >= UNHEALTHY_AFTER for p in probes):
            return "unhealthy"
        if ejected or self.trouble or any(p.failures_in_a_row for p in probes):
            return "degraded"
        return "ok"

    def report(self) -> dict[str, Any]:
        """The thread's part of ``/_proxy/health``."""
        return {
            "running": self.running,
            "interval": self.interval,
            "checks": self.checks,
            "check_errors": self.check_errors,
            "last_check": self.last_check,
            "last_result": self.last_result,
            "trouble": self.trouble,
            "threads": sum(t.name == "wsgiproxy-health" for t in threading.enumerate()),
        }

    def probe_report(self) -> list[dict[str, Any]]:
        """Each upstream probe's latest result."""
        return [asdict(servers[0].probe) for servers in self.probed]
