"""wsgiproxy/server/gunicorn.py against the gunicorn it was verified with.

``CoalescingResponse`` must put on the wire exactly what gunicorn's own ``Response``
does, byte for byte, in every framing (length, chunked, no body, HEAD, a large first
write), and a small response must go out in one send. The socket hand-over, the kept
hop-by-hop header and the refusal writer are driven through gunicorn's real parser and
response objects, so a gunicorn that moved them fails here. Real workers are started in
tests/test_gunicorn_worker.py.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gunicorn
import pytest
from gunicorn import util as gunicorn_util
from gunicorn.config import Config
from gunicorn.http import get_parser
from gunicorn.http import wsgi as gunicorn_wsgi

from tests.test_headers import upstream_says
from wsgiproxy.client.http1 import response_framing_error
from wsgiproxy.proxy.headers import response_head
from wsgiproxy.server.gunicorn import (
    COALESCE_LIMIT,
    VERIFIED_GUNICORN,
    CheckedHeaders,
    CoalescingResponse,
    check_gunicorn_version,
    client_socket,
    http_date,
    keep_hop_by_hop_header,
    pending_client_bytes,
    refusal_bytes,
    take_over_response,
    version_mismatch,
    write_refusal,
)

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


def _processed(cls: Any, headers: Any) -> tuple[Any, ...]:
    """What a writer makes of the app's headers: kept headers, length, upgrade; or the
    error (its type and message) a WSGI app would get from start_response."""
    req = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False)
    response = cls(req, RecordingSocket(), SimpleNamespace(sendfile=False, is_ssl=False))
    try:
        response.start_response("200 OK", headers)
    except Exception as exc:
        return ("error", type(exc), str(exc))
    return ("ok", response.headers, response.response_length, response.upgrade)


HEADER_EDGES: dict[str, Any] = {
    "none": [],
    "plain": [("Content-Type", "text/plain"), ("X-Request-ID", "4f2c"), ("Via", "1.1 x")],
    "length": [("Content-Length", "12"), ("ETag", '"a"')],
    "length twice": [("Content-Length", "1"), ("content-length", "2")],
    "length unreadable": [("Content-Length", "twelve")],
    "date and server": [("Date", "x"), ("Server", "nginx"), ("X-A", "1")],
    "hop-by-hop": [("Connection", "upgrade"), ("Upgrade", "websocket")],
    "keep-alive": [("Keep-Alive", "timeout=5"), ("X-A", "1")],
    "empty value": [("X-Empty", ""), ("X-B", "b")],
    "edge spaces": [("X-A", " padded\t"), ("X-B", "b")],
    "inner spaces": [("X-A", "a  b\tc")],
    "latin-1": [("X-A", "caf\xe9")],
    "beyond latin-1": [("X-A", "\u20ac")],
    "newline in value": [("X-A", "a\nX-Injected: 1")],
    "cr in value": [("X-A", "a\rb")],
    "newline in name": [("X-A\nX-B", "v")],
    "space in name": [("Bad Name", "v")],
    "empty name": [("", "v")],
    "bytes name": [(b"X-A", "v")],
    "int value": [("X-A", 1)],
    "three items": [("X-A", "v", "w")],
    "lists": [["X-A", "v"], ["Content-Length", "3"]],
    "a string pair": ["ab"],
}


@pytest.mark.parametrize("case", sorted(HEADER_EDGES))
def test_the_app_headers_are_checked_as_gunicorn_checks_them(case: str) -> None:
    """A header gunicorn would refuse, strip, drop or act on must fare the same: else a
    client gets a split line, a wrong length, or an upstream's hop-by-hop header."""
    headers = HEADER_EDGES[case]
    assert _processed(CoalescingResponse, headers) == _processed(ORIGINAL_RESPONSE, headers)


def test_random_app_headers_are_checked_as_gunicorn_checks_them() -> None:
    """Many header lists drawn from tricky parts, each given to both writers."""
    names = ["X-A", "Content-Length", "Date", "Connection", "Upgrade", "Te", "Via", "a b"]
    names += ["", "X-\u20ac", "X-\n", "x-request-id", "TRAILERS", "Set-Cookie"]
    values = ["v", "", " v", "v\t", "12", "-1", "websocket", "upgrade", "a\nb", "a\rb"]
    values += ["caf\xe9", "\u20ac", "\x7f", "a b", "0"]
    draw = random.Random(16)
    for _ in range(3000):
        headers = [(draw.choice(names), draw.choice(values)) for _ in range(draw.randrange(0, 6))]
        ours = _processed(CoalescingResponse, headers)
        assert ours == _processed(ORIGINAL_RESPONSE, headers), headers


def test_the_proxys_checked_headers_are_what_gunicorn_would_keep() -> None:
    """The proxy's response headers skip the writer's checks (CheckedHeaders): a header
    the client parser lets through but gunicorn would strip, drop or act on would reach
    the client as the upstream sent it, or with the wrong length."""
    names = ["X-A", "Content-Length", "Date", "Server", "Connection", "Keep-Alive", "Te"]
    names += ["Trailers", "Trailer", "Upgrade", "Via", "x-request-id", "Proxy-Authenticate"]
    names += ["Transfer-Encoding", "Set-Cookie"]
    values = ["v", "", " v", "v\t", "\tv ", "12", " 12 ", "a  b\tc", "caf\xe9", "upgrade"]
    values += ["websocket", "X-A", "close, x-a", "1.1 up", "chunked"]
    draw = random.Random(17)
    compared = 0
    for _ in range(2000):
        lines = []
        for _ in range(draw.randrange(0, 6)):
            lines.append(f"{draw.choice(names)}:{draw.choice(values)}")
            if draw.random() < 0.1:  # obs-fold: the parser's line-by-line path
                lines.append(f" {draw.choice(values)}")
        head = "\r\n".join(["HTTP/1.1 200 OK", *lines, "", ""]).encode("latin-1")
        try:
            response = upstream_says(head)
        except Exception:
            continue  # refused by the client parser: never reaches a writer
        if response_framing_error(response.headers.index):
            continue  # refused by the proxy (502)
        for request_id in (None, "4f2c-1"):
            _, headers = response_head(response, request_id)
            assert type(headers) is CheckedHeaders
            expected = _processed(ORIGINAL_RESPONSE, list(headers))
            assert _processed(CoalescingResponse, headers) == expected, head
            compared += 1
    assert compared > 1000


def _parses(head: bytes) -> list[tuple[str, str]] | None:
    try:
        return list(upstream_says(head).headers._headers)
    except Exception:
        return None


def test_the_client_parser_lets_through_only_what_gunicorn_allows() -> None:
    """CheckedHeaders rest on this: a byte the parser took in a name or value that
    gunicorn refuses would reach the client unchecked."""
    for byte in range(256):
        char = chr(byte)
        name = _parses(b"HTTP/1.1 200 OK\r\nX" + bytes([byte]) + b"A: v\r\n\r\n")
        allowed = gunicorn_wsgi.TOKEN_RE.fullmatch(f"X{char}A") is not None
        assert (name == [(f"X{char}A", "v")]) == allowed, (byte, name)
        value = _parses(b"HTTP/1.1 200 OK\r\nX-A: a" + bytes([byte]) + b"b\r\n\r\n")
        allowed = gunicorn_wsgi.HEADER_VALUE_RE.fullmatch(f"a{char}b") is not None
        assert (value == [("X-A", f"a{char}b")]) == allowed, (byte, value)


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
    assert out.stdout.strip() == "CoalescingResponse wsgiproxy.server.writer"


# -- The version check ---------------------------------------------------------------------
def test_the_installed_gunicorn_is_the_verified_one() -> None:
    """requirements.txt pins the gunicorn the module was verified with: a mismatch here
    means every worker would refuse to start."""
    assert gunicorn.__version__ == VERIFIED_GUNICORN
    assert version_mismatch() is None
    check_gunicorn_version()  # does not raise


@pytest.mark.parametrize("found", ["27.0.2", "28.0.0", "26.0.0", "0.0.1"])
def test_another_gunicorn_gets_one_line_saying_what_to_do(found: str) -> None:
    """An operator who upgraded gunicorn learns what was found, what was verified, and
    the two ways out, in one line."""
    line = version_mismatch(found)
    assert line is not None and "\n" not in line
    assert f"gunicorn {found}" in line
    assert f"verified with gunicorn {VERIFIED_GUNICORN}" in line
    assert f"gunicorn=={VERIFIED_GUNICORN}" in line
    assert "re-verify wsgiproxy/server/gunicorn.py" in line


def test_another_gunicorn_stops_the_worker_with_the_boot_error_status(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Status 3 is what makes gunicorn's arbiter halt instead of respawning in a loop."""
    from gunicorn.arbiter import Arbiter

    monkeypatch.setattr(gunicorn, "__version__", "99.0.0")
    with pytest.raises(SystemExit) as stopped:
        check_gunicorn_version()
    assert stopped.value.code == Arbiter.WORKER_BOOT_ERROR == 3
    assert [r.getMessage() for r in caplog.records] == [version_mismatch("99.0.0")]


# -- Parse refusals ------------------------------------------------------------------------
def test_a_refusal_is_one_line_of_text_tagged_bad_request() -> None:
    """A client whose request gunicorn refuses sees the proxy's format, not an HTML page."""
    data = refusal_bytes(400, "Bad Request", "Invalid Request Line 'GARBAGE'")
    body = b"Invalid Request Line 'GARBAGE'\n"
    assert (
        data
        == (
            b"HTTP/1.1 400 Bad Request\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"X-Proxy-Error: bad-request\r\n"
            b"Connection: close\r\n"
            b"\r\n" % len(body)
        )
        + body
    )


@pytest.mark.parametrize(
    "status, reason, message, line, kind",
    [
        (
            501,
            "Bad Request",
            "Unsupported transfer coding: 'foo'",
            b"501 Not Implemented",
            "not-implemented",
        ),
        (
            414,
            "URI Too Long",
            "Request Line is too large (8192 > 4094)",
            b"414 URI Too Long",
            "bad-request",
        ),
        (
            431,
            "Request Header Fields Too Large",
            "x",
            b"431 Request Header Fields Too Large",
            "bad-request",
        ),
        (403, "Forbidden", "Request forbidden", b"403 Forbidden", "forbidden"),
        (500, "Internal Server Error", "", b"500 Internal Server Error", "internal-error"),
    ],
)
def test_gunicorns_status_is_kept_with_the_standard_phrase(
    status: int, reason: str, message: str, line: bytes, kind: str
) -> None:
    """gunicorn's code stands (it sends 501 with the phrase "Bad Request", mended here);
    a refusal without a message (a 500) names its reason."""
    data = refusal_bytes(status, reason, message)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + line + b"\r\n")
    assert f"X-Proxy-Error: {kind}".encode() in head
    assert body == ((message or reason) + "\n").encode()


def test_a_refusal_body_stays_one_printable_line() -> None:
    """gunicorn quotes the client's bytes: line breaks, controls and length must not make
    the body a page or a terminal escape."""
    data = refusal_bytes(400, "Bad Request", "Invalid header\r\n\tX: \x1b[31m\x00" + "q" * 5000)
    body = data.partition(b"\r\n\r\n")[2]
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    assert b"\x1b" not in body and b"\x00" not in body and b"\r" not in body
    assert body.startswith(b"Invalid header X: \\x1b[31m\\x00qqq")
    assert len(body) <= 301 and body.endswith(b"...\n")


def test_the_refusal_writer_takes_gunicorns_arguments_and_socket() -> None:
    """Worker.handle_error calls util.write_error(sock, status, reason, message)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.settimeout(5)
        write_refusal(ours, 400, "Bad Request", "Invalid HTTP Header: 'CONTENT-LENGTH'")
        ours.close()
        received = b""
        while chunk := theirs.recv(65536):
            received += chunk
    assert received == refusal_bytes(400, "Bad Request", "Invalid HTTP Header: 'CONTENT-LENGTH'")


# -- The socket hand-over, through gunicorn's own parser and response ------------------------
@pytest.fixture
def gunicorn_request() -> Iterator[tuple[Any, dict[str, Any], socket.socket]]:
    """A CONNECT parsed by gunicorn, with 5 bytes of TLS sent behind it before any answer;
    yields gunicorn's response, its environ and the client's end of the socket."""
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        client_end.sendall(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01hi")
        cfg = Config()
        req = next(get_parser(cfg, server_end, ("127.0.0.1", 1)))
        response, environ = gunicorn_wsgi.create(
            req, server_end, ("127.0.0.1", 1), ("127.0.0.1", 2), cfg
        )
        yield response, environ, client_end


def test_bytes_the_client_sent_early_are_handed_over_once(
    gunicorn_request: tuple[Any, dict[str, Any], socket.socket],
) -> None:
    """A client starting TLS before the 200 would lose its hello if gunicorn kept it."""
    _, environ, _ = gunicorn_request
    assert pending_client_bytes(environ) == b"\x16\x03\x01hi"
    assert pending_client_bytes(environ) == b""
    assert client_socket(environ) is environ["gunicorn.socket"]


def test_taking_over_the_response_leaves_gunicorn_nothing_to_write(
    gunicorn_request: tuple[Any, dict[str, Any], socket.socket],
) -> None:
    """gunicorn must not write a head or a last chunk into a tunnel, nor read the next
    request from it; the access log still shows the status."""
    response, _, client_end = gunicorn_request
    assert take_over_response(response.start_response, "200 Connection Established") is response
    assert response.status == "200 Connection Established"
    assert response.headers_sent and not response.chunked and response.should_close()
    response.close()
    client_end.setblocking(False)
    with pytest.raises(BlockingIOError):
        client_end.recv(1)


def test_other_servers_have_nothing_to_take_over() -> None:
    """Under `flask run` these are no-ops, so the caller can answer 501 itself."""

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        raise AssertionError("not to be called")

    environ: dict[str, Any] = {"wsgi.input": object()}
    assert take_over_response(start_response, "200 OK") is None
    assert pending_client_bytes(environ) == b""
    assert client_socket(environ) is None
    keep_hop_by_hop_header(start_response, "Proxy-Authenticate", "Basic")


def test_a_407_keeps_its_proxy_authenticate_header(
    gunicorn_request: tuple[Any, dict[str, Any], socket.socket],
) -> None:
    """gunicorn drops Proxy-Authenticate from WSGI responses: a client would never learn
    how to authenticate."""
    response, _, client_end = gunicorn_request
    challenge = 'Basic realm="wsgiproxy", charset="UTF-8"'
    response.start_response(
        "407 Proxy Authentication Required", [("Proxy-Authenticate", challenge)]
    )
    assert ("Proxy-Authenticate", challenge) not in response.headers  # what gunicorn does
    keep_hop_by_hop_header(response.start_response, "Proxy-Authenticate", challenge)
    keep_hop_by_hop_header(response.start_response, "Proxy-Authenticate", challenge)
    assert response.headers.count(("Proxy-Authenticate", challenge)) == 1
    response.send_headers()
    client_end.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client_end.recv(65536)
        assert chunk, f"closed after {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert f"\r\nProxy-Authenticate: {challenge}\r\n".encode() in head


@pytest.mark.parametrize(
    "name, value", [("Proxy-Authenticate", "Basic\r\nX-Injected: 1"), ("Bad Name", "v")]
)
def test_a_kept_header_cannot_inject_a_line(
    gunicorn_request: tuple[Any, dict[str, Any], socket.socket], name: str, value: str
) -> None:
    """Written past gunicorn's own checks, the header is checked here instead."""
    response, _, _ = gunicorn_request
    response.start_response("407 Proxy Authentication Required", [])
    with pytest.raises(ValueError):
        keep_hop_by_hop_header(response.start_response, name, value)
    assert response.headers == []
