"""gunicorn settings for wsgiproxy, from the environment and PROXY_CONFIG (see README).

    wsgiproxy run                                       # the installed command
    gunicorn -c gunicorn.conf.py wsgiproxy.app:app      # from a checkout

Both read this file: ``wsgiproxy run`` names it to gunicorn (wsgiproxy/server/run.py), and
the checkout's top-level gunicorn.conf.py executes it. It is a gunicorn config file, not a
module to import: gunicorn executes it afresh at start and on every ``kill -HUP``.

It validates the environment and the PROXY_CONFIG file first (wsgiproxy/master.py): at
start a bad value prints one line naming the variable and stops start-up with status 2,
before any worker exists (a worker failing at boot would be respawned in a loop); on a
reload a bad file is refused with one log line and everything below is built from the
previous configuration, so the master keeps serving with it. The workers get the
validated values, the shared upstream-state file and the metrics directory through the
environment they inherit. It imports only ``wsgiproxy.master`` (stdlib and
``wsgiproxy.settings``), under an underscore name, because gunicorn applies every
top-level name that matches one of its settings; nothing here opens a socket or starts a
thread. The pool and its threads are built when each worker imports the app, which under
the gevent worker happens after ``monkey.patch_all()``: never set ``preload_app``.
"""

import typing as _t

from wsgiproxy import master as _master

# Validated settings (exit 2 at start on a bad one; the previous ones on a refused reload).
_generation = _master.MASTER.load()
_settings = _generation.settings

# -- Metrics across workers ------------------------------------------------------------
# prometheus_client's multiprocess mode: each worker writes its figures under this
# directory (PROMETHEUS_MULTIPROC_DIR, made or emptied at start, kept across reloads) and
# /_proxy/metrics sums them. The master sets it up in MASTER.load() above.

# -- Upstream state across workers -----------------------------------------------------
# Ejections and requests in flight per upstream server are shared by every worker through
# one small mapped file (wsgiproxy/upstreams/shared.py), made before any fork, handed down
# in the environment (WSGIPROXY_SHARED_STATE), and made anew by a reload that changes the
# servers; MASTER.worker_exited (child_exit) and MASTER.reloading (on_reload) manage it.

# -- Server socket ---------------------------------------------------------------------
bind = [_settings.server.bind]

# -- Workers ---------------------------------------------------------------------------
workers = _settings.server.workers
worker_class = _settings.server.worker_class
worker_connections = _settings.server.worker_connections
if _settings.server.worker_class == "gthread":
    # Only for gthread: gunicorn turns a "sync" worker with threads > 1 into gthread.
    threads = _settings.server.threads
# The heartbeat limit: a sync or gthread worker silent for this long is killed. Leave room
# for the slowest legitimate upstream exchange (connect + a full read timeout).
timeout = int(max(30, _settings.timeouts.connect + _settings.timeouts.read + 10))
graceful_timeout = max(1, round(_settings.server.graceful_timeout))  # gunicorn takes whole seconds
# A worker replaced after this many requests (0: never), each at its own count so the
# workers do not all restart at once.
max_requests = _settings.server.max_requests
max_requests_jitter = max(1, _settings.server.max_requests // 10) if max_requests else 0
# Seconds an idle client keep-alive connection is held open.
keepalive = 15
# gevent imports urllib3/ssl in each worker after patching; preloading would import them
# in the master first (gunicorn#1566, #2796).
preload_app = False

# -- Proxy headers ---------------------------------------------------------------------
# Trust no client's X-Forwarded-Proto/-For to rewrite wsgi.url_scheme or REMOTE_ADDR: the
# proxy reports this hop's own values upstream. (gunicorn trusts 127.0.0.1 by default.)
forwarded_allow_ips = ""

# -- Logging ---------------------------------------------------------------------------
loglevel = _settings.server.log_level
accesslog = _settings.server.access_log
errorlog = "-"
# Adds, per request: time to the upstream's response head, time spent getting a pooled
# connection (queueing plus connect), whether that connection was new or reused, and the
# servers tried in order with the status each gave (a failed attempt: the status it
# would have given).
access_log_format = (
    '%(h)s "%(r)s" %(s)s %(b)s %(M)sms upstream=%({wsgiproxy.upstream_ms}e)sms '
    "pool_wait=%({wsgiproxy.pool_wait_ms}e)sms conn=%({wsgiproxy.conn}e)s "
    "upstream_addr=%({wsgiproxy.upstream_addr}e)s "
    "upstream_status=%({wsgiproxy.upstream_status}e)s "
    'request_id=%({wsgiproxy.request_id}e)s "%(a)s"'
)
if _settings.server.access_log_format == "json":
    # One JSON object a line, escaped by json (wsgiproxy/server/access_log.py).
    logger_class = "wsgiproxy.server.access_log.JsonAccessLogger"


# -- Hooks -----------------------------------------------------------------------------
# The pool and the health thread are built when the worker imports wsgiproxy.app (after
# gevent patched); post_fork runs before patching, so nothing is built there.


def on_starting(server: _t.Any) -> None:
    """In the master, before any worker exists: stop with one line (status 2) on a
    gunicorn that wsgiproxy/server/gunicorn.py was not verified with. Each worker checks
    again, but several failing at once make gunicorn print a traceback as it halts.
    Then make a reload (HUP) stop the old workers only once the new ones serve."""
    from wsgiproxy.server.gunicorn import check_gunicorn_in_master, install_in_master

    try:
        check_gunicorn_in_master(server)
    except SystemExit:
        on_exit(server)  # gunicorn calls on_exit only once it has started
        raise
    install_in_master()


def _proxy_state(worker: _t.Any) -> _t.Any:
    """The worker's app state (``app.extensions["wsgiproxy"]``), None before it loaded."""
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("wsgiproxy") if app is not None else None


def _close_tunnels(worker: _t.Any) -> None:
    """Close the worker's CONNECT tunnels: they relay until idle, so a stopping worker
    would otherwise wait for them past its graceful deadline."""
    state = _proxy_state(worker)
    if state is not None:
        state.forwarder.tunnels.close_all()


def post_worker_init(worker: _t.Any) -> None:
    """In each worker, once gevent has patched and the app has loaded: check that this
    gunicorn is the one wsgiproxy/server/gunicorn.py was verified with (another stops the
    server with one line), then put its response writer, accept batching, one-line 400s
    for gunicorn's parse refusals and lossless stopping in place. Tunnels are closed just
    before the graceful deadline of a stopping worker."""
    from wsgiproxy.server.gunicorn import install

    install(worker, on_stop_deadline=lambda: _close_tunnels(worker))


def worker_int(worker: _t.Any) -> None:
    """INT or QUIT (a quick stop): close tunnels now, or a gthread worker's exit would
    wait for their threads until they go idle."""
    _close_tunnels(worker)


def worker_abort(worker: _t.Any) -> None:
    """ABRT (the heartbeat timeout): as ``worker_int``."""
    _close_tunnels(worker)


def worker_exit(server: _t.Any, worker: _t.Any) -> None:
    """Close the worker's tunnels, stop its health thread and close its idle upstream
    connections."""
    state = _proxy_state(worker)
    if state is not None:
        state.forwarder.tunnels.close_all()
        state.close()


def child_exit(server: _t.Any, worker: _t.Any) -> None:
    """In the master: drop a dead worker's live gauges from the metric sums, and its
    requests in flight from the upstream servers' counts (least_conn would avoid them)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
    _master.MASTER.worker_exited(worker.pid)


def on_reload(server: _t.Any) -> None:
    """In the master, on HUP, after this file was read again and before the new workers
    are forked: the workers running now may still use a state file the reload replaced,
    which is removed once they have all exited."""
    _master.MASTER.reloading(list(server.WORKERS))


def on_exit(server: _t.Any) -> None:
    """Remove the metrics directory (if the master made it) and the upstream state file."""
    _master.MASTER.close()
