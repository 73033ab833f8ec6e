"""Prometheus metrics, summed over every gunicorn worker.

prometheus_client's multiprocess mode is the ecosystem's way to aggregate workers: each
worker writes its values to memory-mapped files under ``PROMETHEUS_MULTIPROC_DIR`` (set
by ``gunicorn.conf.py`` in the master, before any worker imports prometheus_client), and
whichever worker answers ``/_proxy/metrics`` reads them all. The gunicorn ``child_exit``
hook marks dead workers so their live gauges drop out. Without that variable (``flask
run``, tests) the same metrics live in a registry of this app alone.

The pool never imports this module: ``refresh`` is fed from ``Pool.stats()`` snapshots
(by the health thread every second, and by the worker answering a scrape), turning the
pool's plain counters into Prometheus counter increments.

Requests are tallied the same way. In multiprocess mode every Prometheus update is a
write to a memory-mapped file behind a lock and a ``getpid()`` check, too dear for each
request (bench/README.md has the figure). ``observe_request`` adds to plain per-worker
tallies instead, and ``refresh`` publishes them: a scrape sees the answering worker's
requests at once and the other workers' within a second.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"})
_POOL_STATES = ("active", "idle", "connecting")
_POOL_COUNTERS = (
    "created",
    "reused",
    "expired",
    "shed",
    "evicted",
    "closed",
    "pool_timeouts",
    "retries",
    "errors",
)


def multiprocess_dir() -> str | None:
    """The shared directory of multiprocess mode, when gunicorn set one up."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def status_class(status: int) -> str:
    """``2xx``, ``4xx``...: bounded label values, whatever the upstream sends."""
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class Metrics:
    """The metrics of one app (one worker process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shared = multiprocess_dir() is not None
        reg = self.registry
        self.requests = Counter(
            "wsgiproxy_requests",
            "Requests answered, by method and status class.",
            ["method", "status_class"],
            registry=reg,
        )
        self.duration = Histogram(
            "wsgiproxy_request_duration_seconds",
            "Time from request to the end of the response, by status class.",
            ["status_class"],
            registry=reg,
        )
        self.pool_wait = Histogram(
            "wsgiproxy_pool_wait_seconds",
            "Time a request waited for an upstream connection (the connect included).",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=reg,
        )
        self.upstream_errors = Counter(
            "wsgiproxy_upstream_errors",
            "Requests the proxy answered itself, by X-Proxy-Error kind.",
            ["kind"],
            registry=reg,
        )
        self.connections = Gauge(
            "wsgiproxy_pool_connections",
            "Upstream connections by state, summed over workers.",
            ["state"],
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.queued = Gauge(
            "wsgiproxy_pool_queued_requests",
            "Requests waiting for an upstream connection, summed over workers.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.pool_events = Counter(
            "wsgiproxy_pool_events",
            "Pool events: connections created, reused, expired, shed (surplus idle unused "
            "for its window), evicted, closed; pool timeouts, retries on a new connection, "
            "errors.",
            ["event"],
            registry=reg,
        )
        self.tunnels = Gauge(
            "wsgiproxy_tunnels_active",
            "Tunnels open now, CONNECT and WebSocket together, summed over workers.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.tunnels_open = Gauge(
            "wsgiproxy_tunnels_open",
            "Tunnels open now by kind (connect, websocket), summed over workers.",
            ["kind"],
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.tunnel_bytes = Counter(
            "wsgiproxy_tunnel_bytes",
            "Bytes relayed through CONNECT tunnels and WebSockets (up: client to upstream).",
            ["direction"],
            registry=reg,
        )
        self.upstream_requests = Counter(
            "wsgiproxy_upstream_requests",
            "Attempts sent to each upstream server, by the status each gave (a failed "
            "attempt: the status it would have given).",
            ["route", "server", "status_class"],
            registry=reg,
        )
        self.upstream_up = Gauge(
            "wsgiproxy_upstream_up",
            "1 while an upstream server may take requests (not ejected, not down).",
            ["route", "server"],
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.upstream_ejections = Counter(
            "wsgiproxy_upstream_ejections",
            "Times an upstream server was ejected after failing.",
            ["route", "server"],
            registry=reg,
        )
        self.upstream_retries = Counter(
            "wsgiproxy_upstream_retries",
            "Requests sent on to another server, by what failed (an X-Proxy-Error kind, or "
            "status for PROXY_FAIL_STATUSES); budget-spent: a retry the budget refused.",
            ["reason"],
            registry=reg,
        )
        self._seen: dict[str, int] = dict.fromkeys(_POOL_COUNTERS, 0)
        self._seen_ejections: dict[tuple[str, str], int] = {}
        self._attempts: dict[tuple[str, str, str], int] = {}
        self._retries: dict[str, int] = {}
        self._seen_tunnel = {"bytes_up": 0, "bytes_down": 0}
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._requests = _Tallies(self.duration._upper_bounds)
        self._pool_wait = _Tallies(self.pool_wait._upper_bounds)

    def observe_request(self, method: str, status: int, seconds: float) -> None:
        """One finished request (called once per request, when its response closes)."""
        with self._lock:
            self._requests.add((method, status), seconds)

    def observe_pool_wait(self, seconds: float) -> None:
        """How long one request waited for its upstream connection."""
        with self._lock:
            self._pool_wait.add(None, seconds)

    def observe_attempts(
        self, attempts: list[tuple[str, str, int]], pool_wait: float | None = None
    ) -> None:
        """A request's attempts on upstream servers (route, server, status each gave), and
        how long the one that answered waited for its connection: one lock for both."""
        tallies = self._attempts
        with self._lock:
            if pool_wait is not None:
                self._pool_wait.add(None, pool_wait)
            for route, server, status in attempts:
                key = (route, server, status_class(status))
                tallies[key] = tallies.get(key, 0) + 1

    def observe_retry(self, reason: str) -> None:
        """A request sent on to another server (or refused that by the retry budget)."""
        with self._lock:
            self._retries[reason] = self._retries.get(reason, 0) + 1

    def publish(self) -> None:
        """Move this worker's request tallies into the Prometheus metrics."""
        with self._lock:
            requests = self._requests.take()
            pool_wait = self._pool_wait.take()
            attempts, self._attempts = self._attempts, {}
            retries, self._retries = self._retries, {}
        for (route, server, label), count in attempts.items():
            self.upstream_requests.labels(route, server, label).inc(count)
        for reason, count in retries.items():
            self.upstream_retries.labels(reason).inc(count)
        for (method, status), tally in requests.items():
            label = status_class(status)
            self.requests.labels(method if method in _METHODS else "other", label).inc(tally.count)
            tally.publish(self.duration.labels(label))
        for tally in pool_wait.values():
            tally.publish(self.pool_wait)

    def refresh(
        self,
        stats: dict[str, Any],
        tunnels: dict[str, Any] | None = None,
        servers: list[tuple[str, str, bool, int]] | None = None,
    ) -> None:
        """Publish the request tallies; bring pool, tunnel and server figures up to a
        snapshot (``servers``: route, server, up, ejections this worker made).

        Called by the health thread and by a scrape, which may overlap under threads:
        the deltas against what was seen are worked out under a lock, so none counts twice.
        """
        self.publish()
        with self._refresh_lock:
            self._refresh(stats, tunnels)
            for route, server, up, ejections in servers or ():
                self.upstream_up.labels(route, server).set(1 if up else 0)
                seen = self._seen_ejections.get((route, server), 0)
                if ejections > seen:
                    self.upstream_ejections.labels(route, server).inc(ejections - seen)
                    self._seen_ejections[(route, server)] = ejections

    def _refresh(self, stats: dict[str, Any], tunnels: dict[str, Any] | None) -> None:
        if tunnels:
            self.tunnels.set(tunnels.get("active", 0))
            for kind, count in tunnels.get("open", {}).items():
                self.tunnels_open.labels(kind).set(count)
            for key, direction in (("bytes_up", "up"), ("bytes_down", "down")):
                delta = tunnels.get(key, 0) - self._seen_tunnel[key]
                if delta > 0:
                    self.tunnel_bytes.labels(direction).inc(delta)
                    self._seen_tunnel[key] += delta
        for state in _POOL_STATES:
            self.connections.labels(state).set(stats[state])
        self.queued.set(stats["queued"])
        counters = stats["counters"]
        for name in _POOL_COUNTERS:
            delta = counters[name] - self._seen[name]
            if delta > 0:
                self.pool_events.labels(name).inc(delta)
                self._seen[name] = counters[name]

    def exposition(self) -> bytes:
        """The text exposition: every worker's values in multiprocess mode, else ours."""
        if self.shared:
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class _Tally:
    """Observations of one histogram child not yet published: count, sum, per bucket."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self, size: int) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * size

    def publish(self, histogram: Any) -> None:
        """Add the tally to a prometheus_client ``Histogram`` (or labelled child).

        ``observe`` takes one value at a time; adding n to a bucket is the same update
        on the same values (``_buckets``/``_sum``, per-bucket counts as ``observe``
        keeps them). tests/test_metrics.py holds the two to identical expositions.
        """
        histogram._sum.inc(self.total)
        for index, count in enumerate(self.buckets):
            if count:
                histogram._buckets[index].inc(count)


class _Tallies:
    """Histogram tallies by key, for one set of bucket bounds."""

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = list(bounds)
        self.by_key: dict[Any, _Tally] = {}

    def add(self, key: Any, seconds: float) -> None:
        tally = self.by_key.get(key)
        if tally is None:
            tally = self.by_key[key] = _Tally(len(self.bounds))
        tally.count += 1
        tally.total += seconds
        # The first bucket whose upper bound is >= the value, as ``Histogram.observe``.
        tally.buckets[bisect_left(self.bounds, seconds)] += 1

    def take(self) -> dict[Any, _Tally]:
        taken, self.by_key = self.by_key, {}
        return taken
