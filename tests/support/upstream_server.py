"""A scriptable HTTP/1.1 upstream server over raw sockets, for the proxy's tests.

It records exactly what arrived (request line, headers in order and case, the decoded
body as it streams in) and answers from a fixed set of routes, some of which break the
protocol on purpose (resets, bad status lines, hangs).  Each connection is served by its
own daemon thread; ``stop()`` ends them all and checks that they did end.

Stdlib only, so that it can run anywhere the tests run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import http
import json
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

__all__ = ["Request", "UpstreamServer"]

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
RECV_SIZE = 256 * 1024
WRITE_SIZE = 64 * 1024
PARK_POLL = 0.05  # how often a parked route looks whether the peer went away

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
# bytes(i % 251 for i in range(N)) for any window of up to WRITE_SIZE bytes, by slicing.
_PATTERN = bytes(range(251)) * (WRITE_SIZE // 251 + 2)


def pattern_bytes(offset: int, length: int) -> bytes:
    """Return bytes(i % 251 for i in range(offset, offset + length)); length <= 64 KiB."""
    start = offset % 251
    return _PATTERN[start : start + length]


@dataclass
class Request:
    """One request as the upstream received it (a snapshot; see UpstreamServer.requests)."""

    conn_id: int
    seq: int
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool
    complete: bool
    aborted: bool
    # Additions beyond the agreed API (defaults keep positional construction working):
    response_status: int | None = None  # status of the final response head sent, if any
    responded: bool = False  # the whole response was written

    def header(self, name: str) -> str | None:
        """First value of header `name` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in arrival order."""
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]


class _Ended(Exception):
    """The connection is over; by_peer says whether the client ended it."""

    def __init__(self, by_peer: bool) -> None:
        super().__init__("peer closed" if by_peer else "server closed")
        self.by_peer = by_peer


class _BadRequest(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class _Record:
    req: Request
    buf: bytearray = field(default_factory=bytearray)
    snapshot_body: bytes = b""


class _Conn:
    def __init__(self, conn_id: int, sock: socket.socket) -> None:
        self.conn_id = conn_id
        self.sock = sock
        self.buf = bytearray()
        self.state = "new"  # new, handshake, idle, busy, closed
        self.server_closed = False  # the server decided to end it (stop, idle close, route)
        self.closed = False
        self.reset = False  # close with SO_LINGER 0 (RST)
        self.drop_next = False  # /drop-next: the next request here is read, then dropped
        self.thread: threading.Thread | None = None


@dataclass
class _Ctx:
    conn: _Conn
    rec: _Record
    method: str
    path: str
    query: dict[str, list[str]]
    version: str
    keep_alive: bool

    @property
    def head_only(self) -> bool:
        return self.method == "HEAD"

    def arg(self, name: str, default: str) -> str:
        values = self.query.get(name)
        return values[0] if values else default


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class UpstreamServer:
    """A real HTTP/1.1 server on 127.0.0.1 that records what it receives."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float | None = None,
        port: int = 0,
    ) -> None:
        self.host = "127.0.0.1"
        #: Seconds every request waits before its route runs (a slow server of a group).
        self.delay = 0.0
        #: When set, every request is answered with this status (a failing server).
        self.status: int | None = None
        #: "reset": every request is read, then its connection reset without an answer;
        #: "hang": every request is read and never answered (a server gone silent).
        self.misbehave: str | None = None
        #: What `/health` answers; a test sets 500 to make the upstream fail its checks.
        self.health_status = 200
        #: `/raw/<name>` sends these bytes verbatim, then closes (resets if the name ends
        #: in "-reset"): malformed responses on demand.
        self.raw_responses: dict[str, bytes] = {}
        self.port = port
        self._ssl_context = ssl_context
        self._idle_timeout = idle_timeout
        self._cond = threading.Condition(threading.RLock())
        self._records: list[_Record] = []
        self._conns: dict[int, _Conn] = {}
        self._threads: list[threading.Thread] = []
        self._gates: set[str] = set()
        self._errors: list[str] = []
        self._next_conn_id = 0
        self._seq = 0
        self._connections_opened = 0
        self._open_connections = 0
        self._max_open_connections = 0
        self._closed_by_peer = 0
        self._stopping = False
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> UpstreamServer:
        """Bind 127.0.0.1 on a free port and start accepting."""
        if self._listener is not None:
            raise RuntimeError("already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # A server restarted on the port a stopped one used (a backend coming back).
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"upstream-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection, and join every thread.

        Raises AssertionError naming the threads still alive after `timeout`, or
        describing any unexpected exception raised inside the server.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            for conn in list(self._conns.values()):
                self._shutdown(conn)
            self._cond.notify_all()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        alive: list[str] = []
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
            if self._accept_thread.is_alive():
                alive.append(self._accept_thread.name)
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                alive.append(thread.name)
        if not alive:
            for sock in (self._wake_r, self._wake_w):
                if sock is not None:
                    sock.close()
            self._wake_r = self._wake_w = None
        if alive:
            raise AssertionError(
                f"upstream threads still alive {timeout}s after stop(): {', '.join(alive)}"
            )
        with self._cond:
            errors, self._errors = self._errors, []
        if errors:
            raise AssertionError("upstream server raised unexpectedly:\n" + "\n".join(errors))

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ observation

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def requests(self) -> list[Request]:
        """A snapshot of every recorded request, in arrival order of their heads."""
        with self._cond:
            out = []
            for rec in self._records:
                if len(rec.snapshot_body) != len(rec.buf):
                    rec.snapshot_body = bytes(rec.buf)
                out.append(
                    dataclasses.replace(
                        rec.req, body=rec.snapshot_body, headers=list(rec.req.headers)
                    )
                )
            return out

    @property
    def connections_opened(self) -> int:
        with self._cond:
            return self._connections_opened

    @property
    def open_connections(self) -> int:
        with self._cond:
            return self._open_connections

    @property
    def max_open_connections(self) -> int:
        with self._cond:
            return self._max_open_connections

    @property
    def closed_by_peer(self) -> int:
        with self._cond:
            return self._closed_by_peer

    def wait_for(self, predicate: Callable[[UpstreamServer], bool], timeout: float = 5.0) -> None:
        """Wait until predicate(self) is true; an exception in it counts as false.

        Raises AssertionError describing the predicate and the server's state on timeout.
        """
        last_error: list[BaseException] = []

        def check() -> bool:
            try:
                return bool(predicate(self))
            except Exception as exc:
                last_error[:] = [exc]
                return False

        with self._cond:
            if self._cond.wait_for(check, timeout):
                return
            state = self._describe()
        name = getattr(predicate, "__qualname__", repr(predicate))
        code = getattr(predicate, "__code__", None)
        where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
        error = f"; last exception: {last_error[0]!r}" if last_error else ""
        raise AssertionError(
            f"upstream: condition {name}{where} not met within {timeout}s{error}\n{state}"
        )

    def _describe(self) -> str:
        lines = [
            f"connections_opened={self._connections_opened} "
            f"open_connections={self._open_connections} "
            f"max_open_connections={self._max_open_connections} "
            f"closed_by_peer={self._closed_by_peer}"
        ]
        for conn in self._conns.values():
            lines.append(f"  conn {conn.conn_id}: {conn.state}")
        for rec in self._records:
            r = rec.req
            lines.append(
                f"  #{r.seq} conn={r.conn_id} {r.method} {r.target} body={len(rec.buf)}B "
                f"chunked={r.chunked} complete={r.complete} aborted={r.aborted} "
                f"status={r.response_status} responded={r.responded}"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ control

    def close_idle_connections(self) -> int:
        """Close (FIN) every connection idle between requests; return how many.

        Returns once those connections are fully closed, so what follows is deterministic.
        """
        with self._cond:
            idle = [c for c in self._conns.values() if c.state == "idle"]
            for conn in idle:
                self._shutdown(conn)
            self._cond.wait_for(lambda: all(c.closed for c in idle), 5.0)
            return len(idle)

    def open_gate(self, name: str) -> None:
        """Release the requests parked on /gated?name=`name` (and any later ones)."""
        with self._cond:
            self._gates.add(name)
            self._cond.notify_all()

    def reset(self) -> None:
        """Forget recorded requests, counters and opened gates (open connections stay)."""
        with self._cond:
            self._records.clear()
            self._seq = 0
            self._connections_opened = 0
            self._max_open_connections = self._open_connections
            self._closed_by_peer = 0
            self._gates.clear()
            self._cond.notify_all()

    # ------------------------------------------------------------------ accepting

    def _accept_loop(self) -> None:
        listener, wake_r = self._listener, self._wake_r
        assert listener is not None and wake_r is not None
        try:
            while True:
                readable, _, _ = select.select([listener, wake_r], [], [])
                if wake_r in readable:
                    return
                try:
                    sock, _addr = listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                sock.setblocking(True)
                # As gunicorn and nginx do: a head and a body sent apart would otherwise
                # wait for the proxy's delayed ACK (40 ms) on a reused connection.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._register(sock)
        except Exception as exc:  # pragma: no cover - a bug in the server
            with self._cond:
                self._errors.append(f"accept loop: {exc!r}")
        finally:
            listener.close()

    def _register(self, sock: socket.socket) -> None:
        with self._cond:
            if self._stopping:
                sock.close()
                return
            self._next_conn_id += 1
            conn = _Conn(self._next_conn_id, sock)
            self._conns[conn.conn_id] = conn
            self._connections_opened += 1
            self._open_connections += 1
            self._max_open_connections = max(self._max_open_connections, self._open_connections)
            thread = threading.Thread(
                target=self._serve_conn,
                args=(conn,),
                name=f"upstream-{self.port}-conn-{conn.conn_id}",
                daemon=True,
            )
            conn.thread = thread
            self._threads.append(thread)
            thread.start()
            self._cond.notify_all()

    def _shutdown(self, conn: _Conn) -> None:
        """Mark `conn` as ended by the server and wake its thread (FIN). Hold the lock."""
        if conn.closed:
            return
        conn.server_closed = True
        # The plain socket method, also on an SSLSocket: only the fd is touched, so this
        # is safe while the connection's thread is blocked in a read or write.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)

    # ------------------------------------------------------------------ a connection

    def _serve_conn(self, conn: _Conn) -> None:
        by_peer = False
        try:
            if self._ssl_context is not None:
                self._handshake(conn, self._ssl_context)
            while self._serve_one(conn):
                pass
        except _Ended as ended:
            by_peer = ended.by_peer
        except OSError:
            by_peer = not conn.server_closed
        except Exception as exc:  # a bug in the server: reported by stop()
            with self._cond:
                self._errors.append(f"conn {conn.conn_id}: {exc!r}")
        finally:
            self._close(conn, by_peer)

    def _close(self, conn: _Conn, by_peer: bool) -> None:
        with self._cond:
            if conn.closed:
                return
            if conn.reset:
                with contextlib.suppress(OSError):
                    conn.sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
            conn.sock.close()
            conn.closed = True
            conn.state = "closed"
            del self._conns[conn.conn_id]
            self._open_connections -= 1
            if by_peer and not conn.server_closed:
                self._closed_by_peer += 1
            self._cond.notify_all()

    def _handshake(self, conn: _Conn, context: ssl.SSLContext) -> None:
        with self._cond:
            if conn.server_closed:
                raise _Ended(False)
            conn.state = "handshake"
            tls = context.wrap_socket(conn.sock, server_side=True, do_handshake_on_connect=False)
            conn.sock = tls
        try:
            tls.do_handshake()
        except OSError:
            raise _Ended(not conn.server_closed) from None

    def _recv(self, conn: _Conn) -> bytes:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except TimeoutError:
            raise
        except OSError:
            raise _Ended(not conn.server_closed) from None
        if not data:
            raise _Ended(not conn.server_closed)
        return data

    def _send(self, conn: _Conn, data: bytes) -> None:
        try:
            conn.sock.sendall(data)
        except OSError:
            raise _Ended(not conn.server_closed) from None

    def _wait_head(self, conn: _Conn) -> bytes:
        """Return the next request head (without its final CRLFCRLF)."""
        while True:
            while conn.buf.startswith(b"\r\n"):  # RFC 9112 2.2: ignore leading empty lines
                del conn.buf[:2]
            end = conn.buf.find(b"\r\n\r\n")
            if end > MAX_HEAD or (end < 0 and len(conn.buf) > MAX_HEAD):
                raise _BadRequest(431, "request head too large")
            if end >= 0:
                head = bytes(conn.buf[:end])
                del conn.buf[: end + 4]
                return head
            idle = not conn.buf
            with self._cond:
                if conn.server_closed:
                    raise _Ended(False)
                conn.state = "idle" if idle else "busy"
            timed = idle and self._idle_timeout is not None
            if timed:
                conn.sock.settimeout(self._idle_timeout)
            try:
                data = self._recv(conn)
            except TimeoutError:
                with self._cond:  # our idle timeout: the server closes the connection
                    conn.server_closed = True
                raise _Ended(False) from None
            finally:
                if timed:
                    conn.sock.settimeout(None)
            with self._cond:
                if conn.server_closed:  # close_idle_connections() won the race
                    raise _Ended(False)
                conn.state = "busy"
            conn.buf += data

    def _serve_one(self, conn: _Conn) -> bool:
        """Serve one request; return whether to keep the connection open."""
        try:
            head = self._wait_head(conn)
            method, target, version, headers = self._parse_head(head)
        except _BadRequest as bad:
            self._send_error(conn, bad.status)
            return False

        chunked = False
        length = 0
        te = [v for k, v in headers if k.lower() == "transfer-encoding"]
        cl = [v for k, v in headers if k.lower() == "content-length"]
        tokens = {
            t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")
        }
        keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
        framing_error: _BadRequest | None = None
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
            if not codings or codings[-1] != "chunked":
                framing_error = _BadRequest(400, "transfer-encoding without final chunked")
            chunked = True
            if cl:
                keep_alive = False  # RFC 9112 6.3: TE overrides CL; then close
        elif cl:
            values = {c.strip() for v in cl for c in v.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                framing_error = _BadRequest(400, "invalid content-length")
            else:
                length = int(next(iter(values)))

        with self._cond:
            self._seq += 1
            rec = _Record(
                Request(
                    conn_id=conn.conn_id,
                    seq=self._seq,
                    method=method,
                    target=target,
                    version=version,
                    headers=headers,
                    body=b"",
                    chunked=chunked,
                    complete=framing_error is None and not chunked and length == 0,
                    aborted=False,
                )
            )
            self._records.append(rec)
            self._cond.notify_all()

        if framing_error is not None:
            self._send_error(conn, framing_error.status, rec)
            return False

        expect = {v.strip().lower() for k, v in headers if k.lower() == "expect"}
        if version == "HTTP/1.1" and "100-continue" in expect and (chunked or length):
            self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")

        try:
            if chunked:
                self._read_chunked(conn, rec)
            else:
                self._read_fixed(conn, rec, length)
        except _Ended as ended:
            with self._cond:
                rec.req.aborted = ended.by_peer
                self._cond.notify_all()
            raise
        except _BadRequest as bad:
            self._send_error(conn, bad.status, rec)
            return False

        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            path, query = parts.path or "/", parts.query
        else:
            path, _, query = target.partition("?")
        ctx = _Ctx(
            conn=conn,
            rec=rec,
            method=method,
            path=path,
            query=parse_qs(query, keep_blank_values=True),
            version=version,
            keep_alive=keep_alive,
        )
        keep = self._dispatch(ctx)
        with self._cond:
            rec.req.responded = True
            self._cond.notify_all()
        return keep and ctx.keep_alive

    def _parse_head(self, head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            raise _BadRequest(400, "bad request line")
        method, target, version = parts
        if not _TOKEN.fullmatch(method) or not target or not _VERSION.fullmatch(version):
            raise _BadRequest(400, "bad request line")
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise _BadRequest(505, "unsupported version")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not _TOKEN.fullmatch(name):  # also rejects obs-fold
                raise _BadRequest(400, "bad header line")
            headers.append((name, value.strip(" \t")))
        return method, target, version, headers

    def _append_body(self, rec: _Record, data: bytes | bytearray) -> None:
        with self._cond:
            rec.buf += data
            self._cond.notify_all()

    def _read_fixed(self, conn: _Conn, rec: _Record, length: int) -> None:
        remaining = length
        while remaining:
            if not conn.buf:
                conn.buf += self._recv(conn)
            take = conn.buf[:remaining]
            del conn.buf[: len(take)]
            remaining -= len(take)
            self._append_body(rec, take)
        with self._cond:
            rec.req.complete = True
            self._cond.notify_all()

    def _read_line(self, conn: _Conn, limit: int) -> bytes:
        while True:
            end = conn.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(conn.buf[:end])
                del conn.buf[: end + 2]
                return line
            if len(conn.buf) > limit:
                raise _BadRequest(400, "line too long")
            conn.buf += self._recv(conn)

    def _read_chunked(self, conn: _Conn, rec: _Record) -> None:
        while True:
            size_field = self._read_line(conn, MAX_CHUNK_LINE).split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size_field):
                raise _BadRequest(400, "bad chunk size")
            size = int(size_field, 16)
            if size == 0:
                break
            while size:
                if not conn.buf:
                    conn.buf += self._recv(conn)
                take = conn.buf[:size]
                del conn.buf[: len(take)]
                size -= len(take)
                self._append_body(rec, take)
            while len(conn.buf) < 2:
                conn.buf += self._recv(conn)
            if conn.buf[:2] != b"\r\n":
                raise _BadRequest(400, "chunk not followed by CRLF")
            del conn.buf[:2]
        trailer_bytes = 0
        while True:  # trailers: read and ignored
            line = self._read_line(conn, MAX_HEAD)
            if not line:
                break
            trailer_bytes += len(line) + 2
            if trailer_bytes > MAX_HEAD:
                raise _BadRequest(431, "trailers too large")
        with self._cond:
            rec.req.complete = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ responses

    def _send_error(self, conn: _Conn, status: int, rec: _Record | None = None) -> None:
        body = f"{_reason(status)}\n".encode()
        lines = [
            f"HTTP/1.1 {status} {_reason(status)}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            f"X-Upstream-Conn: {conn.conn_id}",
        ]
        if rec is not None:
            lines.append(f"X-Upstream-Seq: {rec.req.seq}")
            with self._cond:
                rec.req.response_status = status
        lines.append("Connection: close")
        self._send(conn, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        if rec is not None:
            with self._cond:
                rec.req.responded = True
                self._cond.notify_all()

    def _head(
        self,
        ctx: _Ctx,
        status: int,
        headers: list[tuple[str, str]],
        *,
        length: int | None = None,
        chunked: bool = False,
    ) -> None:
        """Send a response head; Connection: close is added when the connection ends."""
        hdrs = list(headers)
        if length is not None:
            hdrs.append(("Content-Length", str(length)))
        if chunked:
            hdrs.append(("Transfer-Encoding", "chunked"))
        hdrs.append(("X-Upstream-Conn", str(ctx.conn.conn_id)))
        hdrs.append(("X-Upstream-Seq", str(ctx.rec.req.seq)))
        has_connection = any(k.lower() == "connection" for k, _ in headers)
        if not ctx.keep_alive:
            hdrs.append(("Connection", "close"))
        elif ctx.version == "HTTP/1.0" and not has_connection:
            hdrs.append(("Connection", "keep-alive"))
        lines = [f"HTTP/1.1 {status} {_reason(status)}"] + [f"{k}: {v}" for k, v in hdrs]
        with self._cond:
            ctx.rec.req.response_status = status
        self._send(ctx.conn, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _simple(
        self,
        ctx: _Ctx,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> bool:
        hdrs = [("Content-Type", content_type), *(headers or [])]
        self._head(ctx, status, hdrs, length=len(body))
        if not ctx.head_only and body:
            self._send(ctx.conn, body)
        return True

    def _park(self, ctx: _Ctx, until: Callable[[], bool] | None, timeout: float | None) -> None:
        """Wait until `until()` or `timeout`; raise _Ended on stop() or if the peer left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = ctx.conn
        while True:
            with self._cond:
                while True:
                    if self._stopping or conn.server_closed:
                        raise _Ended(False)
                    if until is not None and until():
                        return
                    remaining = PARK_POLL
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return
                        remaining = min(left, PARK_POLL)
                    if not self._cond.wait(remaining):
                        break  # a poll interval passed: look at the peer
            if self._peer_gone(conn):
                raise _Ended(True)

    def _peer_gone(self, conn: _Conn) -> bool:
        try:
            readable, _, _ = select.select([conn.sock], [], [], 0)
            if not readable:
                return False
            # Peek on the fd itself (also under TLS): b"" means the peer sent FIN.
            flags = socket.MSG_PEEK | socket.MSG_DONTWAIT
            return socket.socket.recv(conn.sock, 1, flags) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def _sleep(self, ctx: _Ctx, seconds: float) -> None:
        if seconds > 0:
            self._park(ctx, None, seconds)

    # ------------------------------------------------------------------ routes

    def _dispatch(self, ctx: _Ctx) -> bool:
        path = ctx.path
        if self.delay:
            self._sleep(ctx, self.delay)
        if self.status is not None and path != "/health":
            return self._simple(ctx, self.status, b"as set\n")
        if self.misbehave == "reset" and path != "/health":
            return self._route_reset(ctx)
        if self.misbehave == "hang" and path != "/health":
            return self._route_hang(ctx)
        if ctx.conn.drop_next:
            # The keep-alive race, on demand: the connection was idle in the client's pool
            # and we close it just as a request arrives on it, without a response byte.
            return False
        if path.startswith("/echo/"):  # /echo/<anything> echoes too
            return self._route_echo(ctx)
        if path.startswith("/status/"):
            return self._route_status(ctx, path[len("/status/") :])
        if path.startswith("/raw/"):
            return self._route_raw(ctx, path[len("/raw/") :])
        route = {
            "/echo": self._route_echo,
            "/slow": self._route_slow,
            "/stream": self._route_stream,
            "/gated": self._route_gated,
            "/drip": self._route_drip,
            "/gzip": self._route_gzip,
            "/redirect": self._route_redirect,
            "/cookies": self._route_cookies,
            "/big": self._route_big,
            "/close": self._route_close,
            "/reset": self._route_reset,
            "/reset-mid-body": self._route_reset_mid_body,
            "/bad-response": self._route_bad_response,
            "/hang": self._route_hang,
            "/keepalive": self._route_keepalive,
            "/headers": self._route_headers,
            "/drop-next": self._route_drop_next,
            "/health": self._route_health,
        }.get(path)
        if route is None:
            return self._simple(ctx, 404, b"not found\n")
        try:
            return route(ctx)
        except ValueError:  # a malformed query argument, found before anything was sent
            ctx.keep_alive = False
            self._send_error(ctx.conn, 400, ctx.rec)
            return False

    def _route_echo(self, ctx: _Ctx) -> bool:
        with self._cond:
            req = ctx.rec.req
            body = bytes(ctx.rec.buf)
            doc = {
                "method": req.method,
                "target": req.target,
                "headers": [[k, v] for k, v in req.headers],
                "body_len": len(body),
                "body": body.decode("latin-1"),
                "conn_id": req.conn_id,
                "seq": req.seq,
                "chunked": req.chunked,
            }
        return self._simple(ctx, 200, json.dumps(doc).encode(), content_type="application/json")

    def _route_status(self, ctx: _Ctx, code_text: str) -> bool:
        if not code_text.isdigit() or not 100 <= int(code_text) <= 999:
            return self._simple(ctx, 404, b"not found\n")
        code = int(code_text)
        if code == 101:  # no upgrade actually happens: send the head, then close
            ctx.keep_alive = False
            self._head(ctx, code, [])
            return False
        if 100 <= code < 200:
            # An interim response, then a final 200 (a 1xx cannot end an exchange).
            lines = [
                f"HTTP/1.1 {code} {_reason(code)}",
                f"X-Upstream-Conn: {ctx.conn.conn_id}",
                f"X-Upstream-Seq: {ctx.rec.req.seq}",
            ]
            self._send(ctx.conn, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            return self._simple(ctx, 200, f"status {code}\n".encode())
        if code in (204, 304):
            self._head(ctx, code, [])
            return True
        return self._simple(ctx, code, f"status {code}\n".encode())

    def _route_slow(self, ctx: _Ctx) -> bool:
        self._sleep(ctx, float(ctx.arg("delay", "1")))
        return self._simple(ctx, 200, b"slow\n")

    def _route_stream(self, ctx: _Ctx) -> bool:
        chunks = int(ctx.arg("chunks", "3"))
        size = int(ctx.arg("size", "10"))
        delay = float(ctx.arg("delay", "0"))
        chunked = ctx.version == "HTTP/1.1"
        if not chunked:
            ctx.keep_alive = False  # HTTP/1.0: the body is delimited by the close
        self._head(ctx, 200, [("Content-Type", "text/plain")], chunked=chunked)
        if ctx.head_only:
            return True
        for i in range(chunks):
            if i:
                self._sleep(ctx, delay)
            if size:
                data = str(i % 10).encode() * size
                self._send(ctx.conn, b"%x\r\n%s\r\n" % (size, data) if chunked else data)
        if chunked:
            self._send(ctx.conn, b"0\r\n\r\n")
        return True

    def _route_gated(self, ctx: _Ctx) -> bool:
        name = ctx.arg("name", "")
        self._head(ctx, 200, [("Content-Type", "text/plain")], chunked=True)
        if ctx.head_only:
            return True
        self._send(ctx.conn, b"6\r\nfirst\n\r\n")
        self._park(ctx, lambda: name in self._gates, None)
        self._send(ctx.conn, b"5\r\nrest\n\r\n0\r\n\r\n")
        return True

    def _route_drip(self, ctx: _Ctx) -> bool:
        size = int(ctx.arg("size", "10"))
        delay = float(ctx.arg("delay", "0.1"))
        self._head(ctx, 200, [("Content-Type", "application/octet-stream")], length=size)
        if ctx.head_only:
            return True
        for i in range(size):
            if i:
                self._sleep(ctx, delay)
            self._send(ctx.conn, pattern_bytes(i, 1))
        return True

    def _route_gzip(self, ctx: _Ctx) -> bool:
        body = gzip.compress(json.dumps({"gzip": True}).encode(), mtime=0)
        return self._simple(
            ctx, 200, body, [("Content-Encoding", "gzip")], content_type="application/json"
        )

    def _route_redirect(self, ctx: _Ctx) -> bool:
        code = int(ctx.arg("code", "302"))
        return self._simple(ctx, code, b"redirect\n", [("Location", ctx.arg("to", "/"))])

    def _route_cookies(self, ctx: _Ctx) -> bool:
        cookies = [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")]
        return self._simple(ctx, 200, b"cookies\n", cookies)

    def _route_big(self, ctx: _Ctx) -> bool:
        size = int(ctx.arg("size", "0"))
        self._head(ctx, 200, [("Content-Type", "application/octet-stream")], length=size)
        if ctx.head_only:
            return True
        for offset in range(0, size, WRITE_SIZE):
            self._send(ctx.conn, pattern_bytes(offset, min(WRITE_SIZE, size - offset)))
        return True

    def _route_close(self, ctx: _Ctx) -> bool:
        ctx.keep_alive = False
        self._simple(ctx, 200, b"closing\n")
        return False

    def _route_raw(self, ctx: _Ctx, name: str) -> bool:
        self._send(ctx.conn, self.raw_responses[name])
        ctx.conn.reset = name.endswith("-reset")
        return False

    def _route_health(self, ctx: _Ctx) -> bool:
        """Answers ``health_status`` (settable by the test): an upstream that fails its
        health checks and recovers on demand."""
        status = self.health_status
        return self._simple(ctx, status, b"healthy\n" if status < 500 else b"failing\n")

    def _route_drop_next(self, ctx: _Ctx) -> bool:
        """200 now; the next request on this connection is read, then the connection is
        closed with no response (what a client sees when it reuses a connection the
        server is closing for idleness)."""
        self._simple(ctx, 200, b"ok\n")
        ctx.conn.drop_next = True
        return True

    def _route_reset(self, ctx: _Ctx) -> bool:
        ctx.conn.reset = True
        return False

    def _route_reset_mid_body(self, ctx: _Ctx) -> bool:
        size = int(ctx.arg("size", "100"))
        self._head(ctx, 200, [("Content-Type", "application/octet-stream")], length=size)
        for offset in range(0, size // 2, WRITE_SIZE):
            self._send(ctx.conn, pattern_bytes(offset, min(WRITE_SIZE, size // 2 - offset)))
        ctx.conn.reset = True
        return False

    def _route_bad_response(self, ctx: _Ctx) -> bool:
        with self._cond:
            ctx.rec.req.response_status = None
        self._send(ctx.conn, b"HTTP/1.1 abc\r\n\r\n")
        return False

    def _route_hang(self, ctx: _Ctx) -> bool:
        self._park(ctx, None, None)  # only stop() or the peer leaving ends this
        return False  # pragma: no cover

    def _route_keepalive(self, ctx: _Ctx) -> bool:
        timeout = ctx.arg("timeout", "5")
        headers = [("Keep-Alive", f"timeout={timeout}"), ("Connection", "keep-alive")]
        return self._simple(ctx, 200, b"ok\n", headers)

    def _route_headers(self, ctx: _Ctx) -> bool:
        headers = []
        for item in ctx.query.get("h", []):
            name, _, value = item.partition(":")
            headers.append((name.strip(), value.strip()))
        return self._simple(ctx, 200, b"ok\n", headers)
