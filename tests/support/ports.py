"""Loopback ports that misbehave on purpose: refused, or never answered."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def closed_port() -> int:
    """A 127.0.0.1 port that was free a moment ago: connects to it are refused until
    something binds it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A 127.0.0.1 port whose accept queue is full: further connects are never answered
    (the SYN is dropped), so a client's connect timeout is what ends them."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(full.getsockname())
                fillers.append(filler)
            yield int(full.getsockname()[1])
        finally:
            for filler in fillers:
                filler.close()
