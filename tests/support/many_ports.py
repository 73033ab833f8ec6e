"""Many tiny HTTP origins at once: one thread answering ``200 ok`` on N ports of 127.0.0.1.

The forward proxy keys what it remembers by origin (scheme, host, port); thousands of
distinct origins on one machine are thousands of ports. Each listener answers every
request head with a two-byte body and keeps the connection open until the peer closes it.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class ManyPorts:
    """``count`` listeners on 127.0.0.1, served by one selector thread until ``stop``."""

    def __init__(self, count: int) -> None:
        self.listeners: list[socket.socket] = []
        self.ports: list[int] = []
        self.answered = 0
        self._buffers: dict[socket.socket, bytes] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        try:
            for _ in range(count):
                sock = socket.socket()
                self.listeners.append(sock)
                sock.bind(("127.0.0.1", 0))
                sock.listen(16)
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ, "accept")
                self.ports.append(sock.getsockname()[1])
        except BaseException:
            self._close_all()
            raise
        self._thread = threading.Thread(target=self._serve, name="many-ports", daemon=True)

    def __enter__(self) -> ManyPorts:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._close_all()
        assert not alive, "the many-ports server thread did not stop"

    def open_connections(self) -> int:
        return len(self._buffers)

    def _serve(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(1.0):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if key.data == "accept":
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        self._buffers[conn] = b""
                        self._selector.register(conn, selectors.EVENT_READ, "conn")
                elif key.data == "conn":
                    self._read(sock)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._selector.unregister(conn)
            del self._buffers[conn]
            conn.close()
            return
        buffered = self._buffers[conn] + data
        while b"\r\n\r\n" in buffered:
            _, _, buffered = buffered.partition(b"\r\n\r\n")
            conn.sendall(ANSWER)  # small: fits the socket buffer
            self.answered += 1
        self._buffers[conn] = buffered

    def _close_all(self) -> None:
        for sock in [*self.listeners, *self._buffers, self._wake_r, self._wake_w]:
            sock.close()
        self._buffers.clear()
        self._selector.close()


@contextlib.contextmanager
def many_ports(count: int) -> Iterator[ManyPorts]:
    """``count`` origins answering on 127.0.0.1, stopped on the way out."""
    with ManyPorts(count) as server:
        yield server
