"""The WebSocket scenario's client: OPEN WebSockets in one asyncio process, ECHOERS of
them echoing small messages, each round trip timed.

    python ws_load.py URL OPEN ECHOERS INTERVAL_S ECHO_S MESSAGE_BYTES DIR

It opens OPEN WebSockets to URL (at most 50 handshakes at a time), writes DIR/opened
(how many opened) and waits for DIR/go; then ECHOERS of them each send a message every
INTERVAL_S seconds and await its echo for ECHO_S seconds (a message is due on a fixed
schedule; its round trip runs from when it was sent), writes DIR/result.json and waits
for DIR/close before closing them all. Each wait is bounded (60 s). No compression and
no pings; the open-file limit is raised to its hard limit.
"""

import asyncio
import json
import resource
import sys
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

WAIT_S = 60.0


async def open_one(url: str, sem: asyncio.Semaphore, errors: dict[str, int]):
    async with sem:
        try:
            return await connect(
                url,
                compression=None,
                ping_interval=None,
                proxy=None,
                open_timeout=15,
                close_timeout=1,
                max_queue=4,
            )
        except Exception as exc:
            kind = f"open: {type(exc).__name__}"
            errors[kind] = errors.get(kind, 0) + 1
            return None


async def echo(
    ws: ClientConnection,
    message: str,
    index: int,
    echoers: int,
    interval: float,
    t_end: float,
    rtts: list[float],
    errors: dict[str, int],
) -> None:
    due = time.monotonic() + interval * index / echoers
    while due < t_end:
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t0 = time.perf_counter()
        try:
            await ws.send(message)
            got = await asyncio.wait_for(ws.recv(), 10)
        except Exception as exc:
            kind = f"echo: {type(exc).__name__}"
            errors[kind] = errors.get(kind, 0) + 1
            return
        if got != message:
            errors["echo: wrong message"] = errors.get("echo: wrong message", 0) + 1
        rtts.append((time.perf_counter() - t0) * 1000)
        due += interval


async def wait_for(path: Path) -> bool:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def main(argv: list[str]) -> None:
    url, total, echoers = argv[0], int(argv[1]), int(argv[2])
    interval, seconds, size, out = float(argv[3]), float(argv[4]), int(argv[5]), Path(argv[6])
    errors: dict[str, int] = {}
    sem = asyncio.Semaphore(50)
    t_open = time.monotonic()
    conns = await asyncio.gather(*(open_one(url, sem, errors) for _ in range(total)))
    open_s = time.monotonic() - t_open
    opened = [c for c in conns if c is not None]
    (out / "opened").write_text(str(len(opened)))
    rtts: list[float] = []
    if await wait_for(out / "go"):
        t_end = time.monotonic() + seconds
        await asyncio.gather(
            *(
                echo(ws, f"{i:04d}".ljust(size, "x"), i, echoers, interval, t_end, rtts, errors)
                for i, ws in enumerate(opened[:echoers])
            )
        )
    # still open: which ones closed under us?
    closed = sum(1 for ws in opened if ws.close_code is not None)
    if closed:
        errors["closed before the end"] = closed
    (out / "result.json").write_text(
        json.dumps({"opened": len(opened), "open_s": open_s, "rtt_ms": rtts, "errors": errors})
    )
    await wait_for(out / "close")
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(sys.argv[1:]))
