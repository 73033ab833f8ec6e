"""Every gunicorn internal wsgiproxy touches, checked against the gunicorn it was read from.

WSGI leaves some things out that a proxy needs, and gunicorn does some things a proxy
must not, so a few of gunicorn's internals are used or replaced here, and nowhere else:

- ``CoalescingResponse``: gunicorn's response writer, sending a small response's head in
  the same call as its first body bytes rather than one send each.
- ``http_date``: gunicorn's ``Date`` value, formatted once a second, not once a response.
- batched accepts: a gevent worker takes up to ``ACCEPT_BATCH`` new connections a turn.
- ``write_refusal``: gunicorn's answer to a request its parser refuses (CL with TE, a bad
  request line, ...) in the proxy's one-line text/plain form instead of an HTML page.
- ``take_over_response``, ``client_socket``, ``pending_client_bytes``: the socket hand-over
  a tunnel needs (WSGI has no way to say "this app writes the socket itself").
- ``keep_hop_by_hop_header``: a header gunicorn strips from WSGI responses but a proxy
  must send (``Proxy-Authenticate`` on a 407).
- stopping without losing a request (reload, TERM, max requests): a stopping worker
  answers with ``Connection: close``, serves every connection it accepted (gevent: the
  listener's address is remembered; both: the accept queue is emptied before the
  listener closes), calls back at its graceful deadline (to close tunnels), and the
  master stops old workers on a reload only once the new ones are serving.

gunicorn promises none of these, so ``install()`` first compares the running gunicorn
with ``VERIFIED_GUNICORN`` and stops the worker with one line when they differ, as
gunicorn's own gevent worker refuses a gevent it was not written for
(``check_gunicorn_in_master`` does the same in the master, before any worker). Upgrading gunicorn
means re-reading the gunicorn code named beside each piece below, running
``tests/test_gunicorn_adapter.py``, then raising ``VERIFIED_GUNICORN``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import gunicorn  # type: ignore[import-untyped]
from gunicorn import util as gunicorn_util
from gunicorn.http import wsgi as gunicorn_wsgi  # type: ignore[import-untyped]

from ..buffers import BLOCK
from ..concurrency import gevent_patched

#: The gunicorn release this module was read against and tested with
#: (``requirements.txt`` pins the same).
VERIFIED_GUNICORN = "27.0.1"

#: The exit status that makes gunicorn's arbiter halt rather than respawn the worker
#: (``Arbiter.WORKER_BOOT_ERROR`` in gunicorn/arbiter.py; any other status at boot is
#: respawned in a loop).
WORKER_BOOT_ERROR = 3

#: Body bytes sent together with the head; a longer first write goes out separately
#: rather than being copied behind the head.
COALESCE_LIMIT = BLOCK

#: Connections a gevent worker accepts each time the listening socket is ready.
ACCEPT_BATCH = 16

#: Longest body text of a parse refusal: gunicorn's message may quote a whole request line.
REFUSAL_TEXT_LIMIT = 300

#: gunicorn's own writer class, whatever ``install()`` later puts in its place.
_GunicornResponse: Any = gunicorn_wsgi.Response
_format_date = gunicorn_util.http_date
_date_cache: tuple[int, str] = (0, "")

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


# -- The version check ---------------------------------------------------------------------
def version_mismatch(found: str | None = None) -> str | None:
    """The one line that stops a worker when gunicorn is not ``VERIFIED_GUNICORN``.

    None when ``found`` (default: the running gunicorn's version) is the verified one.
    The line says what was found, what was verified, and the two ways out.
    """
    if found is None:
        found = str(gunicorn.__version__)
    if found == VERIFIED_GUNICORN:
        return None
    return (
        f"wsgiproxy cannot run on gunicorn {found}: wsgiproxy/server/gunicorn.py uses "
        f"gunicorn internals verified with gunicorn {VERIFIED_GUNICORN} only; install "
        f"gunicorn=={VERIFIED_GUNICORN} (pip install -r requirements.txt pins it), or "
        f"re-verify wsgiproxy/server/gunicorn.py against {found} "
        f"(tests/test_gunicorn_adapter.py) and set VERIFIED_GUNICORN there"
    )


def check_gunicorn_version(exit_status: int = WORKER_BOOT_ERROR) -> None:
    """Stop this process, with one line in gunicorn's error log, on an unverified gunicorn.

    Raises ``SystemExit(exit_status)``. In a worker, the default status makes gunicorn's
    arbiter halt the whole server instead of respawning a worker that would only fail
    again. (When several workers fail at once, gunicorn's halt meets the second failure
    and prints a traceback: gunicorn.conf.py therefore also checks in the master first.)
    """
    problem = version_mismatch()
    if problem is not None:
        # gunicorn's error log under gunicorn; Python's last-resort stderr otherwise.
        logging.getLogger("gunicorn.error").error(problem)
        raise SystemExit(exit_status)


def check_gunicorn_in_master(arbiter: Any) -> None:
    """The same check from gunicorn's ``on_starting`` hook, in the master before it forks:
    one line and ``SystemExit(2)``, as a bad setting stops start-up.

    gunicorn has already written its pidfile then (``Arbiter.start``) and will not reach
    ``halt()``, which would remove it: it is removed here.
    """
    try:
        check_gunicorn_version(exit_status=2)
    except SystemExit:
        pidfile = getattr(arbiter, "pidfile", None)
        if pidfile is not None:
            pidfile.unlink()
        raise


# -- The response writer (gunicorn/http/wsgi.py: Response) ----------------------------------
class _HeadCatcher:
    """Stands in for the client socket while gunicorn renders the head."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


class CoalescingResponse(_GunicornResponse):  # type: ignore[misc]
    """gunicorn's ``Response``, sending its head with the first body bytes.

    gunicorn writes a head in one ``sendall`` and its body in another; each send is a trip
    through the kernel's TCP path and a wake-up of the reader. This keeps gunicorn's
    header rendering and bookkeeping and changes only when the head goes out: it is held
    back and sent in the same call as the first body bytes, or when the response closes
    with no body. The bytes on the wire are gunicorn's, unchanged.
    """

    _pending_head: bytes | None = None
    sock: Any
    headers_sent: bool
    chunked: bool

    def send_headers(self) -> None:
        """Render the head as gunicorn does, but hold it until there is a body to send.

        A worker that began to stop while this request was in flight says
        ``Connection: close`` (gunicorn only does so for requests that arrive after):
        the client then opens its next request elsewhere instead of writing it on a
        connection the worker is about to close, which is the one race a client cannot
        tell from a lost request.
        """
        if self.headers_sent:
            return
        if worker_stopping():
            self.force_close()
        sock, catcher = self.sock, _HeadCatcher()
        self.sock = catcher
        try:
            super().send_headers()
        finally:
            self.sock = sock
        self._pending_head = catcher.data

    def flush_head(self) -> None:
        """Send a held head now (before bytes written to the socket some other way)."""
        head, self._pending_head = self._pending_head, None
        if head:
            self.sock.sendall(head)

    def write(self, arg: bytes) -> None:
        """gunicorn's write; an empty write also sends a held head."""
        super().write(arg)
        if not arg:
            # An empty write is how a WSGI app pushes the head out early (a stream
            # about to go quiet): send it now, as gunicorn would.
            self.flush_head()

    def _emit_body(self, data: bytes) -> None:
        head = self._pending_head
        if head is None or len(data) > COALESCE_LIMIT:
            self.flush_head()
            super()._emit_body(data)
            return
        self._pending_head = None
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data) if data else b""
        data = head + data
        # One send call: gevent's sendall would first ask the kernel for SO_SNDBUF.
        sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(memoryview(data)[sent:])

    def sendfile(self, respiter: Any) -> bool:
        """gunicorn's sendfile, with a held head sent first when it will use the socket."""
        # gunicorn's sendfile writes to the socket itself once the head is out: send the
        # head first, but only when it will get that far (else write() sends it).
        if (
            not self.cfg.is_ssl
            and self.can_sendfile()
            and gunicorn_util.has_fileno(respiter.filelike)
        ):
            self.send_headers()
            self.flush_head()
        result: bool = super().sendfile(respiter)
        return result

    def close(self) -> None:
        """End the response; a head still held (no body) goes out now."""
        if not self.headers_sent:
            self.send_headers()
        self.flush_head()
        super().close()


# -- The Date header (gunicorn/util.py: http_date) ------------------------------------------
def http_date(timestamp: float | None = None) -> str:
    """gunicorn's ``Date`` value, formatted once a second rather than once a response,
    as nginx does: the text only changes once a second."""
    global _date_cache
    if timestamp is not None:
        return str(_format_date(timestamp))
    now = time.time()
    second, text = _date_cache
    if int(now) != second:
        text = str(_format_date(now))
        _date_cache = (int(now), text)
    return text


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


# -- Parse refusals (gunicorn/workers/base.py: Worker.handle_error) -------------------------
def _one_line(text: str) -> str:
    """``text`` as one short printable line: whitespace runs become one space, control
    characters are escaped, and anything past ``REFUSAL_TEXT_LIMIT`` is cut."""
    line = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in " ".join(text.split())
    )
    if len(line) > REFUSAL_TEXT_LIMIT:
        line = line[: REFUSAL_TEXT_LIMIT - 3] + "..."
    return line


_STATUS_OF_PHRASE = {status.phrase: status.value for status in HTTPStatus}


def _refusal_kind(status: int) -> str:
    """The ``X-Proxy-Error`` kind of a gunicorn refusal, named as the proxy's own are."""
    if status == 403:
        return "forbidden"
    if 400 <= status < 500:
        return "bad-request"
    if status == 501:
        return "not-implemented"
    return "internal-error"


def refusal_bytes(status: int, reason: str, message: str) -> bytes:
    """The whole response for a request gunicorn refused: the proxy's error format.

    The status and reason phrase are gunicorn's, unless the phrase belongs to another
    status (gunicorn sends "501 Bad Request"); the body is gunicorn's message made one
    line, or the phrase when it gave none (a 500).
    """
    phrase = _one_line(reason)
    if not phrase or _STATUS_OF_PHRASE.get(phrase, status) != status:
        phrase = HTTPStatus(status).phrase if status in _STATUS_OF_PHRASE.values() else "Error"
    body = (_one_line(message) or phrase) + "\n"
    data = body.encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\n"
        f"X-Proxy-Error: {_refusal_kind(status)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    return head.encode("latin-1", "replace") + data


def write_refusal(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Stands in for ``gunicorn.util.write_error``, which only ``Worker.handle_error``
    calls: same arguments and socket write, the proxy's one-line text instead of HTML."""
    gunicorn_util.write_nonblock(sock, refusal_bytes(int(status_int), reason, mesg))


# -- The socket hand-over ----------------------------------------------------------------------
def client_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The client's socket under gunicorn (``gunicorn.socket``), None on other servers."""
    sock: socket.socket | None = environ.get("gunicorn.socket")
    return sock


def take_over_response(start_response: Any, status: str) -> Any | None:
    """Tell gunicorn this app writes the response to the socket itself.

    ``start_response`` is bound to gunicorn's ``Response``: recording the status keeps
    the access log right, marking the headers sent stops gunicorn from writing a status
    line or a final chunk of its own, and the connection is closed after, never read for
    another request. Returns that response (its ``sent`` is the access log's byte count),
    or None when the server is not gunicorn.
    """
    response = getattr(start_response, "__self__", None)
    if not isinstance(response, _GunicornResponse):
        return None
    start_response(status, [])
    response.headers_sent = True
    response.chunked = False
    response.force_close()
    return response


def pending_client_bytes(environ: dict[str, Any]) -> bytes:
    """Bytes the client sent after the request head that gunicorn already read, taken
    out of its buffer (a client that starts its TLS handshake without waiting for 200).

    gunicorn keeps them in the ``Unreader`` behind ``wsgi.input``; b"" when there are
    none or the server is not gunicorn.
    """
    body = environ.get("wsgi.input")
    reader = getattr(body, "reader", None)
    unreader = getattr(reader, "unreader", None)
    take = getattr(unreader, "take_buffered", None)
    if take is None:
        return b""
    data: bytes = take()
    return data


def keep_hop_by_hop_header(start_response: Any, name: str, value: str) -> None:
    """Send a header gunicorn would drop from a WSGI response, by adding it to gunicorn's
    response directly (call after ``start_response``); a no-op on other servers.

    gunicorn strips hop-by-hop names (``util.hop_headers``), ``Proxy-Authenticate`` among
    them, but a 407 is useless without it. Raises ValueError for a name that is not a
    token or a value with control characters, which gunicorn would otherwise check.
    """
    response = getattr(start_response, "__self__", None)
    if not isinstance(response, _GunicornResponse):
        return
    if not gunicorn_wsgi.TOKEN_RE.fullmatch(name) or not gunicorn_wsgi.HEADER_VALUE_RE.fullmatch(
        value
    ):
        raise ValueError(f"cannot send header {name!r}: not a token, or a control character")
    if (name, value) not in response.headers:
        response.headers.append((name, value))


# -- Putting it in place -----------------------------------------------------------------------
def install(worker: Any | None = None, on_stop_deadline: Callable[[], None] | None = None) -> None:
    """Check the gunicorn version, then put this module's pieces in place in this worker.

    gunicorn.conf.py calls it from ``post_worker_init``: after gevent has patched and the
    app has loaded, before the worker starts serving. gunicorn builds each response
    through ``gunicorn.http.wsgi.create``, each gevent server in ``GeventWorker.run`` and
    each refusal in ``Worker.handle_error``, which look ``Response``, ``StreamServer``
    and ``util.write_error`` up when called, so replacing the module attributes is
    enough. Raises ``SystemExit(WORKER_BOOT_ERROR)`` on an unverified gunicorn.
    Idempotent.

    Given the ``worker``, it also makes stopping lose nothing (see the module's
    docstring), and calls ``on_stop_deadline`` just before the graceful deadline of a
    stopping worker.
    """
    global _worker
    check_gunicorn_version()
    if worker is not None and _worker is not worker:
        _worker = worker
        from gunicorn.workers.gthread import ThreadWorker

        if gevent_patched():
            from gunicorn.workers.ggevent import GeventWorker  # type: ignore[import-untyped]

            if isinstance(worker, GeventWorker):
                _remember_listener_names(worker)
        if isinstance(worker, ThreadWorker):
            _close_listeners_when_stopping(worker)
        if on_stop_deadline is not None:
            _watch_for_stop(worker, on_stop_deadline)
    gunicorn_wsgi.Response = CoalescingResponse
    gunicorn_util.http_date = http_date
    gunicorn_util.write_error = write_refusal
    if gevent_patched():
        from gunicorn.workers import ggevent  # type: ignore[import-untyped]

        if not getattr(ggevent.StreamServer, "batched", False):
            ggevent.StreamServer = _batched_stream_server()
            ggevent.StreamServer.batched = True
