"""The client side: one request over http.client, raw bytes, a parked request, curl."""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from tests.support.processes import run

if TYPE_CHECKING:
    from tests.support.upstream_server import UpstreamServer

CURL = shutil.which("curl")
#: curl is what users drive the proxy with; `make test` installs it.
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is installed by `make test`")


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run curl as a user would, bounded in time, with no proxy variables inherited."""
    assert CURL is not None
    return run([CURL, "-sS", "--max-time", "10", *args], timeout=20)


@dataclass
class Reply:
    """What a client received."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def request(
    port: int,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
    host: str = "127.0.0.1",
    source: str | None = None,
) -> Reply:
    """One request over a fresh connection with http.client (target sent as given), from
    the address ``source`` when given (127.0.0.2 is a client other than this machine)."""
    conn = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=None if source is None else (source, 0)
    )
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, resp.getheaders(), data)
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, first_reply: bool = False) -> bytes:
    """Send raw bytes, read until the server closes or ``timeout``; return all received.

    With ``first_reply``, stop as soon as one whole response with a ``Content-Length`` is
    in (a server may keep the connection open after it, as after a well-formed request
    it refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while not (first_reply and _whole_response(received)):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        return received


def _whole_response(received: bytes) -> bool:
    head, found, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    return bool(found) and length is not None and len(body) >= int(length.group(1))


@contextlib.contextmanager
def gated(
    port: int, upstream: UpstreamServer, name: str, timeout: float = 10.0
) -> Iterator[http.client.HTTPResponse]:
    """``GET /gated?name=...`` through the proxy on ``port``, in a ``with`` block.

    Yields the response once its first chunk has arrived while the upstream is parked
    (it holds its upstream connection all along); leaving the block opens the gate and
    the rest must follow. The connection is closed either way."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", f"/gated?name={name}")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read1(100) == b"first\n"  # arrives while the upstream is still parked
        yield resp
        upstream.open_gate(name)
        assert resp.read() == b"rest\n"
    finally:
        conn.close()


def keep_alive_gets(port: int, targets: list[str], timeout: float = 30.0) -> list[int]:
    """One client on one keep-alive connection: a GET of each target in a row; the
    statuses, in order."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    statuses = []
    try:
        for target in targets:
            conn.request("GET", target)
            reply = conn.getresponse()
            reply.read()
            statuses.append(reply.status)
    finally:
        conn.close()
    return statuses
