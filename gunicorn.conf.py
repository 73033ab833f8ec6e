"""gunicorn settings for wsgiproxy, all from the environment (see README).

    gunicorn -c gunicorn.conf.py wsgiproxy.app:app

This file runs in the gunicorn master. It validates the whole environment first: a bad
value prints one line naming the variable and stops start-up with status 2, before any
worker exists (a worker failing at boot would be respawned in a loop). It imports only
``wsgiproxy.config`` (stdlib), under an underscore name, because gunicorn applies every
top-level name that matches one of its settings; nothing here opens a socket or starts a
thread. The pool and its threads are built when each worker imports the app, which under
the gevent worker happens after ``monkey.patch_all()``: never set ``preload_app``.
"""

from wsgiproxy.config import load_settings as _load_settings

_settings = _load_settings()

# -- Server socket ---------------------------------------------------------------------
bind = [_settings.bind]

# -- Workers ---------------------------------------------------------------------------
workers = _settings.workers
worker_class = _settings.worker_class
worker_connections = _settings.worker_connections
if _settings.worker_class == "gthread":
    # Only for gthread: gunicorn turns a "sync" worker with threads > 1 into gthread.
    threads = _settings.threads
# The heartbeat limit: a sync or gthread worker silent for this long is killed. Leave room
# for the slowest legitimate upstream exchange (connect + a full read timeout).
timeout = int(max(30, _settings.connect_timeout + _settings.read_timeout + 10))
graceful_timeout = 30
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
loglevel = _settings.log_level
accesslog = _settings.access_log
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Close the worker's idle upstream connections as it exits."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("wsgiproxy") if app is not None else None
    if state is not None:
        state.client.close()
