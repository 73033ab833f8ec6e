"""What one running proxy app holds, and the figures only the whole can tell."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .addresses import format_origin
from .admin.decisions import DecisionLog
from .client.exchange import UpstreamClient
from .health import HealthMonitor
from .metrics import Metrics
from .proxy.handler import Forwarder
from .settings import Settings
from .upstreams.routes import Upstreams


@dataclass
class ProxyState:
    """One app's parts: hung on ``app.extensions["wsgiproxy"]``."""

    settings: Settings
    client: UpstreamClient
    upstreams: Upstreams
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
        # The shared upstream table stays mapped: under gthread, request threads may still
        # be finishing and counting on it; the mapping goes with the process.

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
