"""A load of real HTTP/1.1 clients, to count what a reload or a stop loses.

Two kinds of client run side by side, each in its own thread: keep-alive clients that
send request after request on one connection, and clients that open a connection per
request. Both behave as a careful real client does (urllib3, a browser), and that
decides what counts as lost:

- A connection the server closed BEFORE the client wrote its next request is not a loss:
  the client looks (a zero-timeout poll, as urllib3's ``is_connection_dropped``) and
  reconnects. Nor is a response with ``Connection: close``: the client obeys it.
- A request written whose response never completes IS a loss (reset, end of stream or a
  timeout before the whole response), and so is any status other than 200: a reload
  must not make 5xx.
- A refused connect is counted apart (``refused``): during a stop it is the right
  answer, during a reload it must not happen.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from dataclasses import dataclass, field

#: A response must complete within this; longer counts as a loss.
RESPONSE_TIMEOUT = 15.0


@dataclass
class LoadReport:
    """What the clients saw. ``lost`` holds one line per lost request."""

    completed: int = 0
    reconnects: int = 0
    closes_announced: int = 0
    refused: int = 0
    lost: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"completed={self.completed} lost={len(self.lost)} refused={self.refused} "
            f"announced_closes={self.closes_announced} reconnects={self.reconnects}"
            + ("".join(f"\n  {line}" for line in self.lost[:20]))
        )


class _Lost(Exception):
    """The request was written and its response did not complete."""


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the server has closed (or reset) this idle connection: readable with no
    byte to read, or an error. An idle HTTP/1.1 connection has nothing else to say."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _read_response(sock: socket.socket) -> tuple[int, bool]:
    """Read one whole response (Content-Length or chunked framing, or to the end when it
    has neither); return its status and whether the server announced a close."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise _Lost(f"connection ended after {len(buf)} bytes of the head")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    close = "close" in headers.get("connection", "")
    if "content-length" in headers:
        need = int(headers["content-length"])
        while len(rest) < need:
            data = sock.recv(65536)
            if not data:
                raise _Lost(f"connection ended {need - len(rest)} bytes short of the body")
            rest += data
    elif "chunked" in headers.get("transfer-encoding", ""):
        while not rest.endswith(b"0\r\n\r\n"):
            data = sock.recv(65536)
            if not data:
                raise _Lost("connection ended inside a chunked body")
            rest += data
    else:
        while sock.recv(65536):
            pass
        close = True
    return status, close


class LoadClients:
    """``keepalive`` keep-alive clients beside ``per_request`` one-connection-per-request
    clients, all sending ``GET target`` to 127.0.0.1:``port`` until ``stop()``.

    Use as a context manager, or ``start()`` then ``stop()`` (which returns the report).
    """

    def __init__(
        self, port: int, target: str = "/echo", keepalive: int = 32, per_request: int = 32
    ) -> None:
        self.port = port
        self.request_line = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._keepalive_client, args=(i,), daemon=True)
            for i in range(keepalive)
        ] + [
            threading.Thread(target=self._per_request_client, args=(i,), daemon=True)
            for i in range(per_request)
        ]

    def start(self) -> LoadClients:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> LoadReport:
        """Stop sending (each client finishes the request it is in) and report."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(RESPONSE_TIMEOUT + 5)
            assert not thread.is_alive(), f"{thread.name} did not stop"
        return self.report

    def __enter__(self) -> LoadClients:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the clients ---------------------------------------------------------------------
    def _connect(self) -> socket.socket | None:
        """A new connection, or None when refused (counted; the caller waits a little)."""
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=RESPONSE_TIMEOUT)
        except OSError:
            with self._lock:
                self.report.refused += 1
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _exchange(self, sock: socket.socket, extra: bytes, who: str) -> bool:
        """Write one request and read its whole response; return whether the connection
        may be reused. A response that does not complete, or is not a 200, is lost."""
        try:
            sock.sendall(self.request_line + extra + b"\r\n")
            status, close = _read_response(sock)
        except (OSError, _Lost, ValueError, IndexError) as exc:
            with self._lock:
                self.report.lost.append(f"{time.monotonic():.3f} {who}: {exc!r}")
            return False
        with self._lock:
            if status == 200:
                self.report.completed += 1
            else:
                self.report.lost.append(f"{time.monotonic():.3f} {who}: status {status}")
            if close:
                self.report.closes_announced += 1
        return not close

    def _keepalive_client(self, index: int) -> None:
        sock: socket.socket | None = None
        try:
            while not self._stopping.is_set():
                if sock is not None and _peer_closed(sock):
                    sock.close()
                    sock = None
                    with self._lock:
                        self.report.reconnects += 1
                if sock is None:
                    sock = self._connect()
                    if sock is None:
                        time.sleep(0.05)
                        continue
                if not self._exchange(sock, b"", f"keep-alive client {index}"):
                    sock.close()
                    sock = None
        finally:
            if sock is not None:
                sock.close()

    def _per_request_client(self, index: int) -> None:
        while not self._stopping.is_set():
            sock = self._connect()
            if sock is None:
                time.sleep(0.05)
                continue
            with contextlib.closing(sock):
                self._exchange(sock, b"Connection: close\r\n", f"per-request client {index}")


class CpuBurner:
    """Busy the machine: ``count`` processes spinning at normal priority, so that the
    server's processes are preempted at awkward moments (as on a loaded host)."""

    def __init__(self, count: int = 2) -> None:
        import subprocess
        import sys

        self._procs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)
        ]

    def stop(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> CpuBurner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
