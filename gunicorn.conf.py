"""gunicorn settings for wsgiproxy, all from the environment (see README).

    gunicorn -c gunicorn.conf.py wsgiproxy.app:app

This file runs in the gunicorn master. It validates the whole environment first: a bad
value prints one line naming the variable and stops start-up with status 2, before any
worker exists (a worker failing at boot would be respawned in a loop). It imports only
``wsgiproxy.settings`` (stdlib), under an underscore name, because gunicorn applies every
top-level name that matches one of its settings; nothing here opens a socket or starts a
thread. The pool and its threads are built when each worker imports the app, which under
the gevent worker happens after ``monkey.patch_all()``: never set ``preload_app``.
"""

import contextlib as _contextlib
import glob as _glob
import os as _os
import shutil as _shutil
import tempfile as _tempfile

from wsgiproxy.settings import load_settings as _load_settings
from wsgiproxy.upstreams import shared as _shared

_settings = _load_settings()

# -- Metrics across workers ------------------------------------------------------------
# prometheus_client's multiprocess mode: each worker writes its figures under this
# directory and /_proxy/metrics sums them. It must be set before any worker imports
# prometheus_client, so it is set here, in the master, and inherited. Stale files from an
# earlier run would be summed in: start from an empty directory.
_metrics_dir = _os.environ.get("PROMETHEUS_MULTIPROC_DIR")
_own_metrics_dir = not _metrics_dir
if _own_metrics_dir:
    _metrics_dir = _tempfile.mkdtemp(prefix="wsgiproxy-metrics-")
    _os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
else:
    _os.makedirs(_metrics_dir, exist_ok=True)
    for _stale in _glob.glob(_os.path.join(_metrics_dir, "*.db")):
        _os.remove(_stale)

# -- Upstream state across workers -----------------------------------------------------
# Ejections and requests in flight per upstream server are shared by every worker through
# one small mapped file (wsgiproxy/upstreams/shared.py), made here, before any fork, and
# handed down in the environment. Workers replaced later (max requests, a crash, a
# reload) take a free slot of their own: room for four generations of workers.
_state_fd, _state_file = _tempfile.mkstemp(prefix="wsgiproxy-upstreams-")
_os.close(_state_fd)
_shared.create(
    _state_file,
    servers=_settings.requests.server_count(),
    slots=4 * _settings.server.workers + 4,
)
_os.environ[_shared.ENV] = _state_file

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


# -- Hooks -----------------------------------------------------------------------------
# The pool and the health thread are built when the worker imports wsgiproxy.app (after
# gevent patched); post_fork runs before patching, so nothing is built there.


def on_starting(server):  # type: ignore[no-untyped-def]
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


def _proxy_state(worker):  # type: ignore[no-untyped-def]
    """The worker's app state (``app.extensions["wsgiproxy"]``), None before it loaded."""
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("wsgiproxy") if app is not None else None


def _close_tunnels(worker):  # type: ignore[no-untyped-def]
    """Close the worker's CONNECT tunnels: they relay until idle, so a stopping worker
    would otherwise wait for them past its graceful deadline."""
    state = _proxy_state(worker)
    if state is not None:
        state.forwarder.tunnels.close_all()


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """In each worker, once gevent has patched and the app has loaded: check that this
    gunicorn is the one wsgiproxy/server/gunicorn.py was verified with (another stops the
    server with one line), then put its response writer, accept batching, one-line 400s
    for gunicorn's parse refusals and lossless stopping in place. Tunnels are closed just
    before the graceful deadline of a stopping worker."""
    from wsgiproxy.server.gunicorn import install

    install(worker, on_stop_deadline=lambda: _close_tunnels(worker))


def worker_int(worker):  # type: ignore[no-untyped-def]
    """INT or QUIT (a quick stop): close tunnels now, or a gthread worker's exit would
    wait for their threads until they go idle."""
    _close_tunnels(worker)


def worker_abort(worker):  # type: ignore[no-untyped-def]
    """ABRT (the heartbeat timeout): as ``worker_int``."""
    _close_tunnels(worker)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Close the worker's tunnels, stop its health thread and close its idle upstream
    connections."""
    state = _proxy_state(worker)
    if state is not None:
        state.forwarder.tunnels.close_all()
        state.close()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """In the master: drop a dead worker's live gauges from the metric sums, and its
    requests in flight from the upstream servers' counts (least_conn would avoid them)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    _shared.forget(_state_file, worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the metrics directory and the upstream state file this file made."""
    if _own_metrics_dir and _metrics_dir:
        _shutil.rmtree(_metrics_dir, ignore_errors=True)
    with _contextlib.suppress(OSError):
        _os.remove(_state_file)
