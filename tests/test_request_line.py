"""The request as written upstream: one block for the head, the body framed as told,
and a method or target a request line cannot carry refused before anything is sent."""

from __future__ import annotations

import io
from typing import Any

import pytest

from wsgiproxy.errors import BadRequest
from wsgiproxy.upstream import RequestBody, _request_head, _send_request


class Recorder:
    """Stands in for the connection: what ``send`` was given, call by call."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def test_head_goes_out_in_one_send_with_the_target_byte_for_byte() -> None:
    conn: Any = Recorder()
    head = _request_head("GET", "/a%20b?q=1&r=%2F", {"Host": "up", "X-A": "1"}, None)
    _send_request(conn, head, None, False)
    assert conn.sent == [b"GET /a%20b?q=1&r=%2F HTTP/1.1\r\nHost: up\r\nX-A: 1\r\n\r\n"]


def test_a_chunked_body_is_framed_and_terminated() -> None:
    conn: Any = Recorder()
    body = RequestBody(io.BytesIO(b"hello"), None, 0)
    head = _request_head("POST", "/p", {"Host": "up"}, body)
    _send_request(conn, head, body, True)
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
        _request_head(method, target, {"Host": "up"}, None)
