"""HTTP/1 toward the upstream: the request head as written, and the response head parser.

The request goes out as one block for the head, the body framed as told, and a method or
target a request line cannot carry is refused before anything is sent.

``UpstreamResponse`` reads a head buffered whole in one pass and anything else line by
line. A head must give the same status, headers and body, or the same error, both ways:
otherwise what a client receives would depend on how the upstream's bytes happened to
arrive in TCP segments.
"""

from __future__ import annotations

import http.client
import io
from typing import Any

import pytest

from wsgiproxy.client.body import RequestBody
from wsgiproxy.client.exchange import Outgoing, _send_request
from wsgiproxy.client.http1 import UpstreamResponse, request_head
from wsgiproxy.errors import BadRequest


class TrickleReader(io.BufferedReader):
    """A reader whose peek sees one byte at a time, as when a head arrives in pieces."""

    def peek(self, size: int = 0) -> bytes:
        return super().peek(1)[:1]


class _Sock:
    def __init__(self, data: bytes, trickle: bool) -> None:
        self.data = data
        self.trickle = trickle

    def makefile(self, mode: str) -> io.BufferedReader:
        cls = TrickleReader if self.trickle else io.BufferedReader
        return cls(io.BytesIO(self.data))  # type: ignore[arg-type]


def parse(data: bytes, trickle: bool, method: str = "GET") -> Any:
    """(status, reason, version, headers, body) or the exception's type and text."""
    response = UpstreamResponse(_Sock(data, trickle), method=method)  # type: ignore[arg-type]
    try:
        response.begin()
        body = response.read()
    except http.client.HTTPException as exc:
        return type(exc).__name__
    return response.status, response.reason, response.version, response.headers.items(), body


OK = b"HTTP/1.1 200 OK\r\n"
END = b"Content-Length: 0\r\n\r\n"
HEADS = {
    "plain": OK + b"Server: x\r\nContent-Length: 2\r\n\r\nok",
    "no-headers": b"HTTP/1.1 204 No Content\r\n\r\n",
    "spaces-around-values": OK + b"A:  1 2 \t\r\nB:\r\nC:x\r\n" + END,
    "repeated": OK + b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n" + END,
    "latin-1-value": OK + b"X-Name: caf\xe9\r\n" + END,
    "interim-then-final": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    ),
    "obs-fold": OK + b"X-A: one\r\n two\r\n" + END,
    "bare-lf-lines": b"HTTP/1.1 200 OK\nContent-Length: 6\n\nab\r\n\r\n",
    "body-looks-like-head-end": b"HTTP/1.1 200 OK\nX: 1\nContent-Length: 4\n\n\r\n\r\n",
    "http-1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    "no-reason": b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    "bare-cr-injection": OK + b"X-Evil: a\rSet-Cookie: s=1\r\n" + END,
    "nul": OK + b"X-Evil: a\x00b\r\n" + END,
    "space-before-colon": OK + b"X-Evil : a\r\n" + END,
    "no-name": OK + b": a\r\n" + END,
    "fold-first": OK + b" folded\r\n" + END,
    "bad-status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"hello there\r\n\r\n",
    "cut-in-headers": OK + b"Content-Le",
    "too-many-headers": OK + b"X-A: 1\r\n" * 101 + b"\r\n",
    "just-enough-headers": OK + b"X-A: 1\r\n" * 99 + END,
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_whole_and_trickled_heads_parse_alike(name: str) -> None:
    assert parse(HEADS[name], trickle=False) == parse(HEADS[name], trickle=True)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("plain", (200, "OK", 11, [("Server", "x"), ("Content-Length", "2")], b"ok")),
        (
            "spaces-around-values",
            (200, "OK", 11, [("A", "1 2"), ("B", ""), ("C", "x"), ("Content-Length", "0")], b""),
        ),
        ("latin-1-value", (200, "OK", 11, [("X-Name", "café"), ("Content-Length", "0")], b"")),
        ("interim-then-final", (200, "OK", 11, [("Content-Length", "1")], b"x")),
        ("obs-fold", (200, "OK", 11, [("X-A", "one two"), ("Content-Length", "0")], b"")),
        (
            "body-looks-like-head-end",
            (200, "OK", 11, [("X", "1"), ("Content-Length", "4")], b"\r\n\r\n"),
        ),
        ("http-1.0", (200, "OK", 10, [("Content-Length", "1")], b"x")),
    ],
)
def test_heads_a_client_would_receive(name: str, expected: Any) -> None:
    assert parse(HEADS[name], trickle=False) == expected


@pytest.mark.parametrize(
    "name",
    [
        "bare-cr-injection",
        "nul",
        "space-before-colon",
        "no-name",
        "fold-first",
        "bad-status",
        "not-http",
        "cut-in-headers",
        "too-many-headers",
    ],
)
def test_malformed_heads_are_errors(name: str) -> None:
    """Each of these becomes a 502 in the proxy, never a header a client receives."""
    assert isinstance(parse(HEADS[name], trickle=False), str)


class NoReadline(io.BufferedReader):
    def readline(self, size: int | None = -1) -> bytes:
        raise AssertionError("the head was read line by line")


def test_a_plain_buffered_head_is_read_in_one_pass() -> None:
    """The fast path is taken for the common head (what every nginx response looks like)."""
    sock = _Sock(HEADS["plain"], trickle=False)
    sock.makefile = lambda mode: NoReadline(io.BytesIO(HEADS["plain"]))  # type: ignore[method-assign]
    response = UpstreamResponse(sock, method="GET")  # type: ignore[arg-type]
    response.begin()
    assert response.status == 200 and response.read() == b"ok"


# -- the request head ----------------------------------------------------------------


class Recorder:
    """Stands in for the connection: what ``send`` was given, call by call."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def outgoing(head: bytes, body: RequestBody | None) -> Outgoing:
    """A prepared request whose head and body ``_send_request`` writes."""
    return Outgoing(("http", "up", 80), None, "GET", "/", head, body)  # type: ignore[arg-type]


def test_head_goes_out_in_one_send_with_the_target_byte_for_byte() -> None:
    conn: Any = Recorder()
    head = request_head("GET", "/a%20b?q=1&r=%2F", {"Host": "up", "X-A": "1"}, chunked=False)
    _send_request(conn, outgoing(head, None))
    assert conn.sent == [b"GET /a%20b?q=1&r=%2F HTTP/1.1\r\nHost: up\r\nX-A: 1\r\n\r\n"]


def test_a_chunked_body_is_framed_and_terminated() -> None:
    conn: Any = Recorder()
    body = RequestBody(io.BytesIO(b"hello"), None, 0)
    head = request_head("POST", "/p", {"Host": "up"}, chunked=True)
    _send_request(conn, outgoing(head, body))
    assert conn.sent[0] == b"POST /p HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert b"".join(conn.sent[1:]) == b"5\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    "method, target",
    [
        ("GET", "/a b"),  # a space would split the request line
        ("GET", "/a\r\nX-Injected: 1"),
        ("GET", "/a\x00"),
        ("GET", "/\x7f"),
        ("GET", "/caf\xe9"),
        ("GE\nT", "/"),
        ("G\xc9T", "/"),  # not ASCII: would not even encode
        ("G\x7fT", "/"),
        ("GET(", "/"),  # not a token
        ("", "/"),
    ],
)
def test_unsendable_request_lines_are_refused(method: str, target: str) -> None:
    """A request line with spaces or controls would let a client smuggle a second
    request or header upstream: a 400, raised before a connection is even taken.
    (gunicorn refuses these itself today; this holds whatever the server lets through.)"""
    with pytest.raises(BadRequest):
        request_head(method, target, {"Host": "up"}, chunked=False)
