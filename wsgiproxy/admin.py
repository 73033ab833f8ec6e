"""The admin endpoints under ``PROXY_ADMIN_PREFIX``: health, debug, metrics.

Served by Flask (proxied traffic never reaches it), only to ``PROXY_ALLOW_CLIENTS``.
``/health`` is cheap enough for a load balancer to poll every second: one pool snapshot
and what the health thread last found. ``/debug`` is a flight recorder of the latest pool
decisions, for "why was this request slow". ``/metrics`` is Prometheus text summed over
every worker.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .config import Settings
from .forwarding import Forwarder, plain_response
from .health import HealthMonitor
from .metrics import Metrics
from .pool import Decision, format_origin
from .upstream import UpstreamClient

log = logging.getLogger(__name__)

#: Pool decisions kept for ``/_proxy/debug``.
DEBUG_RING = 500


class DecisionLog:
    """A bounded ring of the pool's latest decisions, with wall-clock times.

    Fed by the pool's ``on_decision`` callback (after the pool unlocks). Also where the
    decisions an operator should hear about become warnings: a pool timeout, and an idle
    connection evicted to make room for another origin (the pool is too small).
    """

    def __init__(self, size: int = DEBUG_RING) -> None:
        self.entries: deque[tuple[float, Decision]] = deque(maxlen=size)

    def record(self, decision: Decision) -> None:
        self.entries.append((time.time(), decision))
        if decision.kind == "timeout":
            log.warning(
                "request for %s waited %.1fs for a connection and gave up (%d in use, %d "
                "queued): raise HTTP_MAX_CONNECTIONS or HTTP_POOL_TIMEOUT",
                format_origin(decision.origin),
                decision.waited or 0.0,
                decision.counts.active,
                decision.counts.queued,
            )
        elif decision.kind == "evict" and decision.for_origin is not None:
            log.warning(
                "pool full: closed an idle connection to %s to make room for %s; "
                "raise HTTP_MAX_CONNECTIONS if this repeats",
                format_origin(decision.origin),
                format_origin(decision.for_origin),
            )

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {
                "time": at,
                "decision": d.kind,
                "origin": format_origin(d.origin),
                "for_origin": format_origin(d.for_origin) if d.for_origin else None,
                "waited": d.waited,
                "idle": d.counts.idle,
                "active": d.counts.active,
                "queued": d.counts.queued,
            }
            for at, d in list(self.entries)
        ]


@dataclass
class ProxyState:
    """What one app holds: hung on ``app.extensions["wsgiproxy"]``."""

    settings: Settings
    client: UpstreamClient
    forwarder: Forwarder
    metrics: Metrics
    monitor: HealthMonitor
    decisions: DecisionLog
    gevent_warnings: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Stop the health thread, publish the last request tallies and close idle
        connections (the worker is exiting)."""
        self.monitor.stop()
        self.metrics.publish()
        self.client.close()

    def leaks(self) -> dict[str, Any]:
        """Connections held past their request: a lease is taken after its request
        starts, so any held since before the oldest request still in flight is a leak."""
        held = self.client.pool.held()
        in_flight = list(self.forwarder.in_flight.values())
        oldest = min(in_flight, default=float("inf"))
        now = time.monotonic()
        stale = [
            {"origin": format_origin(origin), "age_s": round(now - lent_at, 3)}
            for origin, lent_at in held
            if lent_at < oldest
        ]
        return {"checked_out": len(held), "in_flight": len(in_flight), "held_past_request": stale}


def plain_flask_response(status: int, message: str, kind: str) -> Response:
    """``forwarding.plain_response`` as a Flask response, for the admin side."""
    captured: dict[str, Any] = {}

    def start_response(status_line: str, headers: list[tuple[str, str]]) -> None:
        captured["status"] = status_line
        captured["headers"] = headers

    body = plain_response(start_response, status, message, kind=kind)
    return Response(body, status=captured["status"], headers=captured["headers"])


def admin_blueprint(state: ProxyState) -> Blueprint:
    """The admin endpoints of one app, mounted at ``PROXY_ADMIN_PREFIX``."""
    settings = state.settings
    admin = Blueprint("wsgiproxy_admin", __name__, url_prefix=settings.admin_prefix)

    @admin.before_request
    def _allowed_clients_only() -> Response | None:
        client = request.remote_addr or ""
        if client and not settings.client_allowed(client):
            return plain_flask_response(
                403,
                f"client {client} may not use the admin endpoints (PROXY_ALLOW_CLIENTS)",
                "forbidden",
            )
        return None

    @admin.get("/health")
    def health() -> Response:
        """This worker's status and pool figures: 200, or 503 when unhealthy."""
        monitor = state.monitor
        status = monitor.status()
        if state.gevent_warnings and status == "ok":
            status = "degraded"
        body = jsonify(
            status=status,
            pid=os.getpid(),
            pool_enabled=settings.pool_enabled,
            pool=state.client.pool.stats(),
            leaks=state.leaks(),
            tunnels=state.forwarder.tunnels.stats(),
            health_thread=monitor.report(),
            probes=monitor.probe_report(),
            gevent_warnings=state.gevent_warnings,
        )
        body.status_code = 503 if status == "unhealthy" else 200
        return body

    @admin.get("/debug")
    def debug() -> Response:
        """The latest pool decisions, oldest first."""
        return jsonify(pid=os.getpid(), decisions=state.decisions.as_json())

    @admin.get("/metrics")
    def metrics() -> Response:
        """Prometheus text exposition, summed over all workers."""
        state.metrics.refresh(state.client.pool.stats(), state.forwarder.tunnels.stats())
        return Response(
            state.metrics.exposition(), mimetype=None, content_type=state.metrics.content_type
        )

    return admin
