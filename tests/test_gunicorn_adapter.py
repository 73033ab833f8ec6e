"""gunicorn's response writer in a wsgiproxy worker: the same bytes, fewer sends.

``CoalescingResponse`` must put on the wire exactly what gunicorn's own ``Response``
does, byte for byte, in every framing (length, chunked, no body, HEAD, a large first
write), and a small response must go out in one send. The whole suite runs through it
under real gunicorn workers as well; these tests pin the bytes and the send count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn import util as gunicorn_util
from gunicorn.http import wsgi as gunicorn_wsgi

from wsgiproxy.server.gunicorn import COALESCE_LIMIT, CoalescingResponse, http_date

ROOT = Path(__file__).resolve().parent.parent
ORIGINAL_RESPONSE = gunicorn_wsgi.Response


class RecordingSocket:
    """Records each send: what a client would receive, and in how many calls. ``limit``
    makes ``send`` take only that many bytes, as a full socket buffer does."""

    def __init__(self, limit: int | None = None) -> None:
        self.sends: list[bytes] = []
        self.limit = limit

    def send(self, data: bytes) -> int:
        taken = bytes(data[: self.limit] if self.limit else data)
        self.sends.append(taken)
        return len(taken)

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    @property
    def wire(self) -> bytes:
        return b"".join(self.sends)


def _serve(
    cls: Any,
    status: str,
    headers: list[tuple[str, str]],
    body: list[bytes],
    method: str = "GET",
    limit: int | None = None,
) -> RecordingSocket:
    """Drive a response the way gunicorn's workers do: start_response, write each
    chunk, close."""
    req = SimpleNamespace(version=(1, 1), method=method, should_close=lambda: False)
    cfg = SimpleNamespace(sendfile=False, is_ssl=False)
    sock = RecordingSocket(limit)
    response = cls(req, sock, cfg)
    response.start_response(status, headers)
    for chunk in body:
        response.write(chunk)
    response.close()
    return sock


ORIGINAL_HTTP_DATE = gunicorn_util.http_date


def test_the_cached_date_is_gunicorns_date() -> None:
    """The Date a client sees is what gunicorn would write, now and for a given time."""
    for _ in range(3):
        before, ours, after = ORIGINAL_HTTP_DATE(), http_date(), ORIGINAL_HTTP_DATE()
        if before == after:  # not across a second boundary
            break
    assert ours == before == after
    assert http_date(0) == ORIGINAL_HTTP_DATE(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


@pytest.fixture(autouse=True)
def _fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both writers must render the same Date for a byte-for-byte comparison.
    monkeypatch.setattr(gunicorn_util, "http_date", lambda *a: "Mon, 23 Nov 2026 00:00:00 GMT")


CASES = {
    "length": ("200 OK", [("Content-Length", "5")], [b"hello"], "GET"),
    "length-in-parts": ("200 OK", [("Content-Length", "10")], [b"hello", b"world"], "GET"),
    "chunked": ("200 OK", [("Content-Type", "text/plain")], [b"abc", b"", b"defg"], "GET"),
    "chunked-empty": ("200 OK", [], [], "GET"),
    "no-content": ("204 No Content", [("X-A", "1")], [], "GET"),
    "not-modified": ("304 Not Modified", [("ETag", '"x"')], [b""], "GET"),
    "head": ("200 OK", [("Content-Length", "100")], [b""], "HEAD"),
    "empty-length": ("200 OK", [("Content-Length", "0")], [b""], "GET"),
    "large": (
        "200 OK",
        [("Content-Length", str(COALESCE_LIMIT + 1))],
        [b"x" * (COALESCE_LIMIT + 1)],
        "GET",
    ),
    "large-chunked": ("200 OK", [], [b"y" * (COALESCE_LIMIT + 1), b"z"], "GET"),
    "over-length": ("200 OK", [("Content-Length", "3")], [b"abcdef", b"gh"], "GET"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_client_receives_exactly_what_gunicorn_would_send(case: str) -> None:
    status, headers, body, method = CASES[case]
    ours = _serve(CoalescingResponse, status, headers, body, method)
    theirs = _serve(ORIGINAL_RESPONSE, status, headers, body, method)
    assert ours.wire == theirs.wire
    assert len(ours.sends) <= len(theirs.sends)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_send_that_takes_part_is_completed(case: str) -> None:
    status, headers, body, method = CASES[case]
    ours = _serve(CoalescingResponse, status, headers, body, method, limit=7)
    theirs = _serve(ORIGINAL_RESPONSE, status, headers, body, method)
    assert ours.wire == theirs.wire


def test_a_small_response_goes_out_in_one_send() -> None:
    body = b"x" * 100
    sock = _serve(CoalescingResponse, "200 OK", [("Content-Length", "100")], [body])
    assert len(sock.sends) == 1
    assert sock.sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert sock.sends[0].endswith(b"\r\n\r\n" + body)


def test_an_empty_first_write_sends_the_head_at_once() -> None:
    """A WSGI app yields b"" to push the head out before a quiet stream: the client must
    see it then, not when the first data comes."""
    req = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False)
    sock = RecordingSocket()
    response = CoalescingResponse(req, sock, SimpleNamespace(sendfile=False, is_ssl=False))
    response.start_response("200 OK", [("Content-Type", "text/event-stream")])
    response.write(b"")
    assert len(sock.sends) == 1 and sock.sends[0].endswith(b"\r\n\r\n")
    response.write(b"data: 1\n\n")
    response.close()
    assert (
        sock.wire
        == _serve(
            ORIGINAL_RESPONSE,
            "200 OK",
            [("Content-Type", "text/event-stream")],
            [b"", b"data: 1\n\n"],
        ).wire
    )


def test_a_bodyless_response_sends_its_head_when_it_closes() -> None:
    sock = _serve(CoalescingResponse, "204 No Content", [], [])
    assert len(sock.sends) == 1
    assert sock.sends[0].startswith(b"HTTP/1.1 204 No Content\r\n")


def test_a_streamed_response_sends_its_head_with_the_first_chunk_then_each_chunk() -> None:
    sock = _serve(CoalescingResponse, "200 OK", [], [b"first", b"second"])
    assert sock.sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert sock.sends[0].endswith(b"\r\n\r\n5\r\nfirst\r\n")
    assert sock.sends[1:] == [b"6\r\nsecond\r\n", b"0\r\n\r\n"]


def test_a_gevent_worker_accepts_in_batches() -> None:
    """With gunicorn's max_accept of 1, a busy worker took up to a second to accept a
    burst of new clients (whose requests waited unread meanwhile)."""
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import socket\n"
        "from wsgiproxy.server.gunicorn import ACCEPT_BATCH, install\n"
        "install(); install()\n"
        "import gevent.server\nfrom gunicorn.workers import ggevent\n"
        "listener = socket.socket(); listener.bind(('127.0.0.1', 0)); listener.listen()\n"
        "server = ggevent.StreamServer(listener, handle=lambda *a: None)\n"
        "server.max_accept = 1  # what gunicorn's GeventWorker.run does with 2+ workers\n"
        "assert ACCEPT_BATCH > 1 and server.max_accept == ACCEPT_BATCH, server.max_accept\n"
        "assert ggevent.StreamServer.__mro__[1] is gevent.server.StreamServer  # patched once\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_gunicorn_conf_installs_it_in_the_worker_hook(tmp_path: Path) -> None:
    # In a fresh interpreter: the master must not patch (the hook runs in each worker).
    code = (
        "import runpy, gunicorn.http.wsgi as w\n"
        "conf = runpy.run_path('gunicorn.conf.py')\n"
        "assert w.Response.__name__ == 'Response', 'patched in the master'\n"
        "conf['post_worker_init'](None)\n"
        "import gunicorn.util as u\n"
        "print(w.Response.__name__, u.http_date.__module__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "HTTP_"))}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CoalescingResponse wsgiproxy.server.gunicorn"
