"""The delayed upstream: answers every request with 100 bytes after DELAY seconds.

A small asyncio HTTP/1.1 server (stdlib only) with keep-alive, so that it holds
thousands of waiting requests with one thread and little CPU. It counts the connections
it accepts: ``GET /__stats`` answers at once with ``{"accepts": N, "requests": M}``
(the stats connection itself included), which the harness turns into upstream
connections opened per 1,000 requests.

    python upstream_delay.py PORT [DELAY_SECONDS]
"""

import asyncio
import json
import signal
import sys

BODY = b"d" * 99 + b"\n"
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n"
)
RESPONSE = HEAD + b"\r\n" + BODY
RESPONSE_CLOSE = HEAD + b"Connection: close\r\n\r\n" + BODY

stats = {"accepts": 0, "requests": 0}


class Handler(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buf = b""
        self.body_left = 0
        self.transport = None
        self.closing = False

    def connection_made(self, transport):
        stats["accepts"] += 1
        self.transport = transport

    def data_received(self, data):
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
            stats["requests"] += 1
            if target == b"/__stats":
                body = json.dumps(stats).encode()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                continue
            asyncio.get_running_loop().call_later(self.delay, self.respond, close)
            if close:
                self.closing = True
                return

    def respond(self, close):
        if self.transport.is_closing():
            return
        self.transport.write(RESPONSE_CLOSE if close else RESPONSE)
        if close:
            self.transport.close()

    def connection_lost(self, exc):
        self.transport = self.transport  # nothing held


async def main(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(
        lambda: Handler(delay), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    async with server:
        await stop


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.05))
