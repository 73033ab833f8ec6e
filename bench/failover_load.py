"""The failover scenario's load: a steady rate of GETs, every request's time and outcome.

wrk gives one latency histogram per run, and its Lua hooks have no clock finer than a
second; the scenario needs latency and errors second by second, around the moment a
server dies. This is a small asyncio client (stdlib only): ``CONNS`` keep-alive
connections, each sending its share of ``RATE`` requests per second on a fixed schedule
(an open-loop load, as wrk2 makes it). A request's latency runs from the time it was
due, not from when it was sent: a request held up behind a stalled one on its
connection counts the wait (no coordinated omission).

An error is anything but a complete 2xx response within ``TIMEOUT`` seconds: a non-2xx
status (kept as is), or no response (a negative status): a connection that could not be
made, one reset or closed before the response's end, the timeout, or a response that is
not HTTP. After an error the connection is closed and the next request opens a new one.

    python failover_load.py HOST PORT PATH RATE CONNS START_MONOTONIC SECONDS OUT.json

It starts at ``START_MONOTONIC`` (``time.monotonic()``, the same clock in every
process of the machine) and writes ``{"t0", "due", "latency_ms", "status"}`` (due
times in seconds after t0) to OUT.json.
"""

import asyncio
import json
import sys
import time

TIMEOUT = 5.0
#: the status recorded when no response came: the connection could not be made; it was
#: reset or closed before the response's end; no response within TIMEOUT; not HTTP
CONNECT, CLOSED, TIMEOUT_STATUS, INVALID = -1, -2, -3, -4


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server closes the connection) once the whole body is read."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1])
    length = None
    chunked = False
    close = parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection":
            close = value == b"close" or (close and value != b"keep-alive")
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()  # until the server closes
        close = True
    return status, close


async def connection(
    i: int,
    conns: int,
    host: str,
    port: int,
    request: bytes,
    period: float,
    t0: float,
    t_end: float,
    out: list[tuple[float, float, int]],
) -> None:
    due = t0 + period * i / conns  # the connections' requests spread evenly over a period
    reader = writer = None
    while due < t_end:
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        status = CONNECT
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), TIMEOUT
                )
            assert reader is not None
            status = CLOSED
            writer.write(request)
            status, close = await asyncio.wait_for(
                read_response(reader), max(0.001, due + TIMEOUT - time.monotonic())
            )
            if close:
                writer.close()
                reader = writer = None
        except Exception as exc:
            if isinstance(exc, TimeoutError):  # before OSError: it is one
                status = TIMEOUT_STATUS
            elif isinstance(exc, ValueError | IndexError):
                status = INVALID
            elif not isinstance(exc, OSError | EOFError | asyncio.LimitOverrunError):
                raise
            if writer is not None:
                writer.close()
            reader = writer = None
        out.append((due - t0, (time.monotonic() - due) * 1000, status))
        due += period


async def main(argv: list[str]) -> None:
    host, port, path = argv[0], int(argv[1]), argv[2]
    rate, conns = float(argv[3]), int(argv[4])
    t0, seconds, out_path = float(argv[5]), float(argv[6]), argv[7]
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    period = conns / rate
    out: list[tuple[float, float, int]] = []
    await asyncio.gather(
        *(
            connection(i, conns, host, port, request, period, t0, t0 + seconds, out)
            for i in range(conns)
        )
    )
    out.sort()
    with open(out_path, "w") as f:
        json.dump(
            {
                "t0": t0,
                "due": [round(r[0], 6) for r in out],
                "latency_ms": [round(r[1], 3) for r in out],
                "status": [r[2] for r in out],
            },
            f,
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
