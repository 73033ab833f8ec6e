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
"""

from __future__ import annotations

import os
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
            "Pool events: connections created, reused, expired, evicted, closed; pool "
            "timeouts, retries on a new connection, errors.",
            ["event"],
            registry=reg,
        )
        self.tunnels = Gauge(
            "wsgiproxy_tunnels_active",
            "CONNECT tunnels open now, summed over workers.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.tunnel_bytes = Counter(
            "wsgiproxy_tunnel_bytes",
            "Bytes relayed through CONNECT tunnels (up: client to destination).",
            ["direction"],
            registry=reg,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._seen: dict[str, int] = dict.fromkeys(_POOL_COUNTERS, 0)
        self._seen_tunnel = {"bytes_up": 0, "bytes_down": 0}

    def observe_request(self, method: str, status: int, seconds: float) -> None:
        """One finished request (called once per request, when its response closes).

        Labelled children are kept at hand: ``labels()`` takes a lock and builds a key on
        every call, a cost paid per request otherwise."""
        key = (method, status)
        children = self._children.get(key)
        if children is None:
            label = status_class(status)
            children = self._children[key] = (
                self.requests.labels(method if method in _METHODS else "other", label),
                self.duration.labels(label),
            )
        children[0].inc()
        children[1].observe(seconds)

    def refresh(self, stats: dict[str, Any], tunnels: dict[str, int] | None = None) -> None:
        """Bring the pool (and tunnel) gauges and counters up to a snapshot."""
        if tunnels:
            self.tunnels.set(tunnels.get("active", 0))
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


def mark_worker_dead(pid: int) -> None:
    """gunicorn ``child_exit``: drop a dead worker's live gauges from the sums."""
    if multiprocess_dir() is not None:
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
