"""The admin endpoints under ``PROXY_ADMIN_PREFIX``: health, debug, metrics.

Served by Flask (proxied traffic never reaches it), only to ``PROXY_ALLOW_CLIENTS``.
``/health`` is cheap enough for a load balancer to poll every second: one pool snapshot
and what the health thread last found. ``/debug`` is a flight recorder of the latest pool
decisions, for "why was this request slow". ``/metrics`` is Prometheus text summed over
every worker.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from ..proxy.responses import plain_response
from ..state import ProxyState


def plain_flask_response(status: int, message: str, kind: str) -> Response:
    """``proxy.responses.plain_response`` as a Flask response, for the admin side."""
    captured: dict[str, Any] = {}

    def start_response(status_line: str, headers: list[tuple[str, str]]) -> None:
        captured["status"] = status_line
        captured["headers"] = headers

    body = plain_response(start_response, status, message, kind=kind)
    return Response(body, status=captured["status"], headers=captured["headers"])


def admin_blueprint(state: ProxyState) -> Blueprint:
    """The admin endpoints of one app, mounted at ``PROXY_ADMIN_PREFIX``."""
    policy = state.settings.forward
    pool_enabled = state.settings.pool.enabled
    admin = Blueprint("wsgiproxy_admin", __name__, url_prefix=state.settings.requests.admin_prefix)

    @admin.before_request
    def _allowed_clients_only() -> Response | None:
        client = request.remote_addr or ""
        if client and not policy.client_allowed(client):
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
            pool_enabled=pool_enabled,
            pool=state.client.pool.stats(),
            client=state.client.stats(),
            upstreams=state.upstreams.report(time.monotonic()),
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
        state.metrics.refresh(
            state.client.pool.stats(),
            state.forwarder.tunnels.stats(),
            state.upstreams.figures(time.monotonic()),
        )
        return Response(
            state.metrics.exposition(), mimetype=None, content_type=state.metrics.content_type
        )

    return admin
