"""The WebSocket scenario's upstream: a `websockets` echo server on 127.0.0.1.

    python ws_upstream.py PORT

Every message is sent back as it came. No compression and no pings (nothing but the
load moves), the open-file limit raised to its hard limit (1,000 WebSockets and more).
"""

import asyncio
import resource
import sys

from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main(port: int) -> None:
    async with serve(
        echo,
        "127.0.0.1",
        port,
        compression=None,
        ping_interval=None,
        close_timeout=1,
        backlog=4096,
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(int(sys.argv[1])))
