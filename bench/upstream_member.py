"""One server of the failover scenario's group of three: answers 100 bytes at once.

A small asyncio HTTP/1.1 server (stdlib only, keep-alive) that serves on a listening
socket it inherits (file descriptor ``FD``): the harness binds and listens itself, so
that it knows to the microsecond when the port accepts again, and a restored server
listens on the very port of the one killed. Every accepted connection has
``SO_LINGER`` 0: when the process is killed (SIGKILL), the kernel resets its
connections at once instead of closing them in order, as a crashed server's would be.

It tells apart the requests of the load from the proxies' health checks
(``GET HEALTH_PATH``) and answers ``GET /__stats`` at once with what it served:
``{"accepts", "requests", "health", "first_request", "last_request"}``, the two times
on the system's monotonic clock (``time.monotonic()`` in any process of the machine).

    python upstream_member.py FD HEALTH_PATH
"""

import asyncio
import json
import signal
import socket
import struct
import sys
import time

BODY = b"m" * 99 + b"\n"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(BODY)
RESPONSE = HEAD + b"\r\n" + BODY
RESPONSE_CLOSE = HEAD + b"Connection: close\r\n\r\n" + BODY
LINGER_0 = struct.pack("ii", 1, 0)

stats: dict[str, float | int | None] = {
    "accepts": 0,
    "requests": 0,
    "health": 0,
    "first_request": None,
    "last_request": None,
}


class Handler(asyncio.Protocol):
    def __init__(self, health_path: bytes) -> None:
        self.health_path = health_path
        self.buf = b""
        self.body_left = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        stats["accepts"] = int(stats["accepts"] or 0) + 1
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while True:
            if self.body_left:
                take = min(self.body_left, len(self.buf))
                self.buf = self.buf[take:]
                self.body_left -= take
                if self.body_left:
                    return
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.transport.close()
                return
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            target = parts[1] if len(parts) > 1 else b"/"
            version = parts[2] if len(parts) > 2 else b"HTTP/1.0"
            close = version == b"HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.body_left = int(value.strip() or 0)
                elif name == b"connection":
                    value = value.strip().lower()
                    close = value == b"close" or (close and value != b"keep-alive")
            if target == b"/__stats":
                body = json.dumps(stats).encode()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                continue
            if target.split(b"?", 1)[0] == self.health_path:
                stats["health"] = int(stats["health"] or 0) + 1
            else:
                now = time.monotonic()
                stats["requests"] = int(stats["requests"] or 0) + 1
                if stats["first_request"] is None:
                    stats["first_request"] = now
                stats["last_request"] = now
            self.transport.write(RESPONSE_CLOSE if close else RESPONSE)
            if close:
                self.transport.close()
                return


async def main(fd: int, health_path: bytes) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    sock = socket.socket(fileno=fd)
    server = await loop.create_server(lambda: Handler(health_path), sock=sock)
    async with server:
        await stop


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2].encode()))
