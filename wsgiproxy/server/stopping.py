"""Stopping without losing a request: gunicorn workers and the master on TERM and reloads.

Part of the gunicorn adapter (``server/gunicorn.py`` checks the version and installs
these): a gevent worker takes its accepts in batches and remembers its listeners'
names, a gthread worker closes its listeners as soon as it stops accepting, a stopping
worker calls back before its graceful deadline, and on a reload the master stops old
workers only once the new ones serve.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

#: Connections a gevent worker accepts each time the listening socket is ready.
ACCEPT_BATCH = 16

#: The gunicorn worker this process runs (``install()`` is given it), None in the master
#: and outside gunicorn. One worker per process, so a module global is enough.
_worker: Any | None = None

#: Seconds before a stopping worker's graceful deadline at which ``on_stop_deadline`` runs:
#: what it closes (tunnels) must be gone before gunicorn's own deadline, when the master
#: kills the worker outright.
STOP_DEADLINE_MARGIN = 1.0

#: How often the stop watcher looks whether the worker has begun to stop.
STOP_WATCH_INTERVAL = 0.1

#: On a reload, longest wait for the new workers to serve before the old ones are
#: stopped anyway (gunicorn's own behaviour): a new worker stuck at boot must not keep
#: the master from ever finishing the reload.
NEW_WORKER_READY_TIMEOUT = 30.0


def worker_stopping() -> bool:
    """Whether this process is a gunicorn worker that has begun to stop (TERM, a reload,
    its max requests, its master gone): gunicorn sets ``alive`` False then."""
    return _worker is not None and not _worker.alive


# -- Accepts under gevent (gunicorn/workers/ggevent.py: GeventWorker.run) -------------------
def _batched_stream_server() -> type:
    """gevent's ``StreamServer``, accepting up to ``ACCEPT_BATCH`` connections per turn.

    gunicorn's gevent worker sets ``max_accept = 1`` when there are several workers, so
    that one does not take every new connection. But a busy worker goes round its whole
    event loop between two accepts, so a burst of new clients waits to be accepted with
    its requests already sent. A batch of 16 accepts them promptly and still keeps the
    workers' shares of a burst roughly even.
    """
    from gevent.server import StreamServer  # type: ignore[import-untyped]

    class BatchedStreamServer(StreamServer):  # type: ignore[misc]
        @property
        def max_accept(self) -> int:
            return ACCEPT_BATCH

        @max_accept.setter
        def max_accept(self, value: int) -> None:
            pass  # gunicorn's 1 is replaced by ACCEPT_BATCH

        def close(self) -> None:
            """Stop accepting; a stopping worker first takes what the kernel already
            accepted for it (see ``_take_accept_queue``)."""
            if not self.closed and worker_stopping():
                self._take_accept_queue()
            super().close()

        def _take_accept_queue(self) -> None:
            """Serve every connection waiting in the accept queue.

            When this is the last process holding the listening socket (a TERM: the
            master closed its copy first), closing it resets the connections the kernel
            had completed but nobody accepted yet, with their requests possibly written.
            Taking them first leaves only those that complete between the last accept
            and the close, a window of microseconds instead of the whole queue.
            """
            with contextlib.suppress(OSError):
                while True:
                    args = self.do_read()  # None once the queue is empty
                    if not args:
                        return
                    self.do_handle(*args)

    return BatchedStreamServer


class _NamedListener:
    """A listening socket whose address is read once, while it is open.

    gunicorn's gevent worker reads ``listener.getsockname()`` when a connection's
    greenlet starts. A batch of accepted connections whose greenlets start after the
    worker closed its listener (it is stopping) then fails with EBADF and is closed
    unanswered, its request lost ("Socket error processing request" in the log). With
    the address remembered, those connections are served like any other.
    """

    __slots__ = ("_name", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._name = sock.getsockname()

    def getsockname(self) -> Any:
        return self._name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _remember_listener_names(worker: Any) -> None:
    """Make the gevent worker's ``handle`` see its listeners through ``_NamedListener``
    (gunicorn/workers/base_async.py: AsyncWorker.handle; GeventWorker.run binds
    ``self.handle`` after ``post_worker_init``, so the instance attribute is used)."""
    named = {id(sock): _NamedListener(sock) for sock in worker.sockets}
    handle = worker.handle

    def handle_with_named_listener(listener: Any, client: Any, addr: Any) -> Any:
        return handle(named.get(id(listener), listener), client, addr)

    worker.handle = handle_with_named_listener


# -- Stopping under gthread (gunicorn/workers/gthread.py: ThreadWorker.run) ----------------
def _close_listeners_when_stopping(worker: Any) -> None:
    """Make a stopping gthread worker close its listeners as it stops accepting.

    gunicorn's gthread worker stops polling its listeners when it stops but keeps them
    open until it exits: on a TERM (the master has closed its copy) the kernel goes on
    completing new connections that nobody will answer for the whole drain, then resets
    them. Here the worker takes what is already in the accept queue (served like any
    other connection), then closes, so later connects are refused at once. On a reload
    the master keeps the socket open and the new workers accept.
    """
    set_accept_enabled = worker.set_accept_enabled

    def set_accept_enabled_then_close(enabled: bool) -> None:
        set_accept_enabled(enabled)
        if enabled or worker.alive:
            return  # not stopping: only too many connections for now
        for listener in worker.sockets:
            with contextlib.suppress(OSError):
                listener.setblocking(False)
                while True:
                    client, addr = listener.accept()
                    client.setblocking(True)
                    worker.nr_conns += 1
                    # What ThreadWorker.accept does with a new connection.
                    worker.enqueue_req(
                        gthread_tconn(worker.cfg, client, addr, listener.getsockname())
                    )
            listener.close()

    worker.set_accept_enabled = set_accept_enabled_then_close


def gthread_tconn(cfg: Any, client: Any, addr: Any, server: Any) -> Any:
    """gunicorn's ``TConn`` for a connection the gthread worker accepted."""
    from gunicorn.workers.gthread import TConn  # type: ignore[import-untyped]

    return TConn(cfg, client, addr, server)


# -- The graceful deadline ---------------------------------------------------------------------
def _watch_for_stop(worker: Any, on_stop_deadline: Callable[[], None]) -> None:
    """Call ``on_stop_deadline`` ``STOP_DEADLINE_MARGIN`` seconds before the worker's
    graceful deadline, once it has begun to stop.

    gunicorn has no hook for "stopping" (TERM only sets ``alive``; a reload, max requests
    or a lost master too), so a daemon thread (a greenlet under gevent) watches
    ``alive``. What must end by the deadline (CONNECT tunnels, which only end when idle)
    is closed then, so the worker finishes its drain and exits by itself rather than
    being killed by its master.
    """

    def watch() -> None:
        while worker.alive:
            time.sleep(STOP_WATCH_INTERVAL)
        time.sleep(max(0.0, float(worker.cfg.graceful_timeout) - STOP_DEADLINE_MARGIN))
        try:
            on_stop_deadline()
        except Exception:
            logging.getLogger("gunicorn.error").exception("closing at the graceful deadline")

    threading.Thread(target=watch, name="wsgiproxy-stop-watch", daemon=True).start()


# -- Reloads in the master (gunicorn/arbiter.py: Arbiter.reload, manage_workers) ---------------
def _ready(worker: Any) -> bool:
    """Whether a worker the master spawned is serving: it has sent a heartbeat.

    gunicorn's workers first touch their heartbeat file (``WorkerTmp.notify``) in their
    run loop, after their listeners are being served. The master notes the file's time
    when it first sees the worker, before that.
    """
    try:
        now = worker.tmp.last_update()
    except (OSError, ValueError):
        return False
    born = getattr(worker, "_wsgiproxy_born", None)
    if born is None:
        worker._wsgiproxy_born = born = now
    return bool(now != born)


def _stop_requested(arbiter: Any, stop_signals: set[signal.Signals]) -> bool:
    """Whether a signal that stops the master is waiting in its queue (a SimpleQueue:
    read out and put back in order; the handler only ever appends)."""
    pending: list[Any] = []
    with contextlib.suppress(queue.Empty):
        while True:
            pending.append(arbiter.SIG_QUEUE.get_nowait())
    for sig in pending:
        arbiter.SIG_QUEUE.put_nowait(sig)
    return bool(stop_signals.intersection(pending))


def _manage_workers_after_ready(manage_workers: Callable[[Any], None]) -> Callable[[Any], None]:
    """gunicorn's ``manage_workers``, which on a reload stops the old workers as soon
    as the new ones are forked, made to wait until the new ones serve.

    Until then nobody accepts: connections wait in the kernel's queue (none is lost, the
    master holds the socket) for as long as a worker takes to boot. Waiting keeps the old
    workers serving meanwhile. Bounded by ``NEW_WORKER_READY_TIMEOUT``, and cut short by
    a signal that stops the master.
    """
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}

    def manage(arbiter: Any) -> None:
        deadline = time.monotonic() + NEW_WORKER_READY_TIMEOUT
        while len(arbiter.WORKERS) > arbiter.num_workers:
            young = sorted(arbiter.WORKERS.values(), key=lambda w: w.age)[-arbiter.num_workers :]
            if all(_ready(w) for w in young) or time.monotonic() > deadline:
                break
            if _stop_requested(arbiter, stop_signals):
                break
            arbiter.reap_workers()  # a new worker that fails at boot halts, as ever
            time.sleep(0.05)
        manage_workers(arbiter)

    manage.wsgiproxy = True  # type: ignore[attr-defined]
    return manage


def install_in_master() -> None:
    """In the master (``on_starting``, after the version check): make a reload stop old
    workers only once the new ones serve. Idempotent."""
    from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]

    if not getattr(Arbiter.manage_workers, "wsgiproxy", False):
        Arbiter.manage_workers = _manage_workers_after_ready(Arbiter.manage_workers)
