"""WebSocket upstreams for the proxy's tests: the ``websockets`` library's own server, and
a raw one that answers in a shape no library chooses (101 and a frame in one write).

Both bind 127.0.0.1 on a port the kernel picks, serve from threads, and are stopped (their
threads joined with a deadline) when their ``with`` block ends.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

#: RFC 6455 1.3: what Sec-WebSocket-Accept is derived with.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
JOIN_TIMEOUT = 5.0


@dataclass
class WsUpstream:
    """A running ``websockets`` server and what it saw.

    Paths: ``/deny...`` answers 403 (no upgrade); ``/close`` takes one message, then
    closes with 4001; ``/greet`` sends ``hello`` first; anything else echoes each message.
    """

    server: Server
    port: int
    #: (path, headers as (name, value) pairs) of every handshake, in arrival order.
    handshakes: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    #: Messages received, in order, over all connections.
    received: list[str | bytes] = field(default_factory=list)
    #: Connections whose handler has ended (the peer closed or went away).
    ended: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers_of(self, index: int = -1) -> dict[str, str]:
        """One handshake's headers, names lower-cased."""
        return {name.lower(): value for name, value in self.handshakes[index][1]}


@contextlib.contextmanager
def ws_upstream(**options: Any) -> Iterator[WsUpstream]:
    """The ``websockets`` server in a thread; ``options`` go to ``serve``."""
    state: WsUpstream | None = None

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        assert state is not None
        with state.lock:
            state.handshakes.append((request.path, list(request.headers.raw_items())))
        if request.path.startswith("/deny"):
            return connection.respond(HTTPStatus.FORBIDDEN, "denied\n")
        return None

    def handler(connection: ServerConnection) -> None:
        assert state is not None
        path = connection.request.path if connection.request else ""
        try:
            if path == "/greet":
                connection.send("hello")
            for message in connection:
                with state.lock:
                    state.received.append(message)
                if path == "/close":
                    connection.close(4001, "done")
                    break
                connection.send(message)
        except ConnectionClosed:
            pass
        finally:
            with state.lock:
                state.ended += 1

    options.setdefault("max_size", 2**21)
    server = serve(handler, "127.0.0.1", 0, process_request=process_request, **options)
    state = WsUpstream(server, server.socket.getsockname()[1])
    thread = threading.Thread(target=server.serve_forever, name="ws-upstream", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive(), "the WebSocket upstream did not stop"


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    """One final frame (RFC 6455 5.2); a client's is masked, a server's is not."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, (0x80 if masked else 0) | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, (0x80 if masked else 0) | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, (0x80 if masked else 0) | 127, length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _exactly(sock: socket.socket, size: int, buffer: bytearray) -> bytes:
    while len(buffer) < size:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(buffer)} of {size} bytes")
        buffer += chunk
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


def read_head(sock: socket.socket, buffer: bytearray) -> bytes:
    """An HTTP head off ``sock``; what came behind it stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the end of the head: {bytes(buffer)!r}")
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


def read_frame(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    """(opcode, payload) of the next frame; ``buffer`` holds bytes already received."""
    first, second = _exactly(sock, 2, buffer)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", _exactly(sock, 2, buffer))
    elif length == 127:
        (length,) = struct.unpack("!Q", _exactly(sock, 8, buffer))
    mask = _exactly(sock, 4, buffer) if second & 0x80 else b""
    payload = _exactly(sock, length, buffer)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


@contextlib.contextmanager
def eager_upstream(greeting: bytes, context: ssl.SSLContext | None = None) -> Iterator[int]:
    """A raw WebSocket upstream that sends its 101 and a text frame ``greeting`` in one
    write, so the proxy's response parser has the frame buffered behind the head (over TLS
    with ``context``: one record, partly left in the TLS layer). It then answers the
    client's close frame with its own and closes. Yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(JOIN_TIMEOUT)
    failures: list[BaseException] = []

    def serve_one() -> None:
        try:
            conn, _ = listener.accept()
            if context is not None:
                conn = context.wrap_socket(conn, server_side=True)
            with conn:
                conn.settimeout(JOIN_TIMEOUT)
                buffer = bytearray()
                head = read_head(conn, buffer).decode("latin-1")
                key = next(
                    line.partition(":")[2].strip()
                    for line in head.split("\r\n")
                    if line.lower().startswith("sec-websocket-key:")
                )
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                    + accept_key(key).encode()
                    + b"\r\n\r\n"
                    + frame(0x1, greeting, masked=False)
                )
                opcode, payload = read_frame(conn, buffer)
                assert opcode == 0x8, opcode  # the client's close
                conn.sendall(frame(0x8, payload, masked=False))
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=serve_one, name="eager-upstream", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(JOIN_TIMEOUT)
        listener.close()
        assert not thread.is_alive(), "the raw WebSocket upstream did not stop"
        if failures:
            raise failures[0]
