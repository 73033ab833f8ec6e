"""The Flask application factory and the module-level WSGI callable.

``create_app(settings=None)`` builds one whole proxy: settings (from the environment when
none are given), the upstream client with its pool and urllib3 ``PoolManager``, the admin
endpoints and the error handlers, all hung on ``app.extensions["wsgiproxy"]``. Proxied
requests bypass Flask's routing: ``app.wsgi_app`` is wrapped so that only paths under
``PROXY_ADMIN_PREFIX`` reach Flask, and everything else goes straight to the forwarder.

gunicorn (``wsgiproxy.app:app``) imports this module in each worker, after gevent has
patched, and ``flask --app wsgiproxy.app run`` imports it in the dev server: the
module-level ``app`` and ``pool_manager`` are therefore per process, never built in the
gunicorn master (which imports only ``wsgiproxy.settings``).
"""

from __future__ import annotations

import logging
import sys

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from .admin.decisions import DecisionLog
from .admin.endpoints import admin_blueprint, plain_flask_response
from .client.exchange import UpstreamClient
from .concurrency import gevent_warnings
from .health import HealthMonitor
from .metrics import Metrics
from .proxy.auth import ProxyAuth
from .proxy.dispatch import Dispatcher
from .proxy.handler import Forwarder
from .proxy.policy import ForwardGuard
from .proxy.routing import Router
from .proxy.tunnel import Tunnels
from .settings import Settings, load_settings
from .state import ProxyState
from .upstreams.routes import Upstreams

log = logging.getLogger(__name__)


def _configure_logging(settings: Settings) -> None:
    """Make our and urllib3's log lines visible at ``PROXY_LOG_LEVEL``.

    Under gunicorn the lines go to gunicorn's error log handlers; elsewhere to stderr.
    Nothing is added when the application (or pytest) already configured logging.
    """
    level = getattr(logging, settings.server.log_level.upper(), logging.INFO)
    ours = logging.getLogger("wsgiproxy")
    ours.setLevel(level)
    if ours.handlers or logging.getLogger().handlers:
        return
    handlers: list[logging.Handler] = list(logging.getLogger("gunicorn.error").handlers)
    if not handlers:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(
            logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
        )
        handlers = [stderr]
    for logger in (ours, logging.getLogger("urllib3")):
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger("urllib3").setLevel(max(level, logging.WARNING))


def create_app(settings: Settings | None = None, *, start_health: bool = True) -> Flask:
    """Build one proxy app. With no settings, read them from the environment.

    A bad environment raises ``SystemExit(2)`` after printing one line per problem. The
    health thread starts here, in the process that will serve (gunicorn imports this in
    each worker after gevent has patched); ``start_health=False`` leaves it to the caller.
    Call ``app.extensions["wsgiproxy"].close()`` to stop it and close idle connections.
    """
    if settings is None:
        settings = load_settings()
    _configure_logging(settings)
    app = Flask(__name__)
    decisions = DecisionLog()
    client = UpstreamClient(
        settings.pool, settings.timeouts, settings.tls, on_decision=decisions.record
    )
    upstreams = Upstreams(
        settings.requests,
        settings.balancing,
        client.manager.pin,
        settings.health.path,
        # A trial request of a server back from ejection holds its lease this long at most.
        trial_lease=settings.timeouts.connect + settings.timeouts.read,
    )
    metrics = Metrics()
    policy = settings.forward
    guard = ForwardGuard(
        policy, ProxyAuth.from_file(policy.auth_file) if policy.auth_file else None
    )
    router = Router(upstreams, guard, settings.requests.preserve_host)
    tunnels = Tunnels(policy, settings.timeouts, guard)
    forwarder = Forwarder(settings.requests, settings.balancing, client, metrics, router, tunnels)
    monitor = HealthMonitor(
        settings.health,
        settings.timeouts.connect,
        client,
        upstreams,
        metrics,
        tunnels.stats,
    )
    state = ProxyState(
        settings,
        client,
        upstreams,
        forwarder,
        metrics,
        monitor,
        decisions,
        gevent_warnings=gevent_warnings(client.pool.lock),
    )
    for warning in state.gevent_warnings:
        log.warning("gevent self-check: %s", warning)
    app.extensions["wsgiproxy"] = state
    app.register_blueprint(admin_blueprint(state))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        return plain_flask_response(code, exc.description or exc.name, "admin-" + str(code))

    app.wsgi_app = Dispatcher(  # type: ignore[method-assign]
        app.wsgi_app, forwarder, settings.requests.admin_prefix
    )
    if start_health:
        monitor.start()
    return app


app = create_app()
#: The module-level urllib3 PoolManager of this process, backed by our pool.
pool_manager = app.extensions["wsgiproxy"].client.manager
