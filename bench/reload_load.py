"""The reload scenario's load: keep-alive HTTP/1.1 clients, one thread each, counting
what a reload loses (after tests/support/load.py, copied: bench/ imports nothing from
tests/).

Each client behaves as a careful real client does (urllib3, a browser), and that decides
what counts as lost:

- A connection the server closed BEFORE the client wrote its next request is not lost:
  the client looks (a zero-timeout poll, as urllib3's ``is_connection_dropped``) and
  reconnects (``reconnects``). Nor is a response with ``Connection: close``: the client
  obeys it (``closes_announced``).
- A request written whose response never completes IS lost, by kind: ``reset`` (the
  connection reset, or broken while writing), ``closed`` (the stream ended before the
  whole response), ``timeout`` (no whole response within RESPONSE_TIMEOUT), ``invalid``
  (not HTTP). A reset or close before any byte of the response is marked ``at the
  write``: the server closed the connection about when the request went out (after the
  client's look found it open), the race no HTTP/1.1 server can rule out by itself.
- Apart from the lost: ``status`` (a complete response that is not a 200: a reload must
  not make 5xx) and ``refused`` (a connect that failed: nothing was written).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field

#: A response must complete within this; longer counts as lost (timeout).
RESPONSE_TIMEOUT = 10.0
LOST_KINDS = ("reset", "reset at the write", "closed", "closed at the write", "timeout", "invalid")


@dataclass
class LoadReport:
    served: int = 0
    reconnects: int = 0
    closes_announced: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # lost kinds, status, refused
    first_lost: list[str] = field(default_factory=list)  # a few, for the log

    @property
    def lost(self) -> int:
        return sum(self.kinds.get(k, 0) for k in LOST_KINDS)


class _Lost(Exception):
    def __init__(self, kind: str, what: str) -> None:
        super().__init__(what)
        self.kind = kind


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


def _recv(sock: socket.socket, where: str, first: bool = False) -> bytes:
    """``first``: no byte of the response has come yet: a reset or close then is marked
    "at the write" (the server closed the connection about when the request went out)."""
    at = " at the write" if first else ""
    try:
        data = sock.recv(65536)
    except TimeoutError as exc:
        raise _Lost("timeout", f"{where}: {exc!r}") from exc
    except OSError as exc:
        raise _Lost("reset" + at, f"{where}: {exc!r}") from exc
    if not data:
        raise _Lost("closed" + at, f"connection ended {where}")
    return data


def read_response(sock: socket.socket) -> tuple[int, bool]:
    """One whole response (Content-Length or chunked); its status and whether the
    server announced a close."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock, f"after {len(buf)} bytes of the head", first=not buf)
    head, _, rest = buf.partition(b"\r\n\r\n")
    try:
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
    except (ValueError, IndexError) as exc:
        raise _Lost("invalid", repr(head[:80])) from exc
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    close = "close" in headers.get("connection", "")
    if "content-length" in headers:
        need = int(headers["content-length"])
        while len(rest) < need:
            rest += _recv(sock, "inside the body")
    elif "chunked" in headers.get("transfer-encoding", ""):
        while not rest.endswith(b"0\r\n\r\n"):
            rest += _recv(sock, "inside a chunked body")
    else:
        raise _Lost("invalid", "a response without a length")
    return status, close


class LoadClients:
    """``conns`` keep-alive clients sending ``GET path`` to 127.0.0.1:``port`` until
    ``stop()``, which returns the report."""

    def __init__(self, port: int, path: str, conns: int) -> None:
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(conns)
        ]

    def start(self) -> LoadClients:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadReport:
        self._stopping.set()
        for t in self._threads:
            t.join(RESPONSE_TIMEOUT + 5)
        return self.report

    def _count(self, kind: str, what: str = "") -> None:
        with self._lock:
            self.report.kinds[kind] = self.report.kinds.get(kind, 0) + 1
            if what and len(self.report.first_lost) < 20:
                self.report.first_lost.append(f"{time.monotonic():.3f} {kind}: {what}")

    def _exchange(self, sock: socket.socket) -> bool:
        """Write one request and read its whole response; whether the connection may be
        used again."""
        try:
            try:
                sock.sendall(self.request)
            except OSError as exc:  # written in part at least: the server closed on it
                raise _Lost("reset at the write", f"while writing: {exc!r}") from exc
            status, close = read_response(sock)
        except _Lost as exc:
            self._count(exc.kind, str(exc))
            return False
        with self._lock:
            if status == 200:
                self.report.served += 1
            else:
                self.report.kinds["status"] = self.report.kinds.get("status", 0) + 1
            if close:
                self.report.closes_announced += 1
        return not close

    def _client(self, index: int) -> None:
        sock: socket.socket | None = None
        try:
            while not self._stopping.is_set():
                if sock is not None and _peer_closed(sock):
                    sock.close()
                    sock = None
                    with self._lock:
                        self.report.reconnects += 1
                if sock is None:
                    try:
                        sock = socket.create_connection(
                            ("127.0.0.1", self.port), timeout=RESPONSE_TIMEOUT
                        )
                    except OSError as exc:
                        self._count("refused", repr(exc))
                        time.sleep(0.05)
                        continue
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if not self._exchange(sock):
                    sock.close()
                    sock = None
        finally:
            if sock is not None:
                sock.close()
