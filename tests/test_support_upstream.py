"""Self-tests of the instrumented upstream (tests/support/upstream_server.py), over real sockets."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme

from tests.support.upstream_server import Request, UpstreamServer
from tests.support.wait import wait_until


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer() as srv:
        yield srv


class Raw:
    """A bare socket client that reads responses itself (no http.client smoothing)."""

    def __init__(self, srv: UpstreamServer) -> None:
        self.sock = socket.create_connection((srv.host, srv.port), timeout=5)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("server closed the connection")
        self.buf += data

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_head(self) -> tuple[int, list[tuple[str, str]]]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        return status, headers

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        status, header_list = self.read_head()
        headers = {k.lower(): v for k, v in header_list}
        if head_only or status in (204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self.read_line(), 16)
                if size == 0:
                    self.read_line()
                    return status, headers, body
                body += self.read_exact(size)
                self.read_line()
        return status, headers, self.read_exact(int(headers["content-length"]))

    def closed(self) -> bool:
        """Drain what is left; True when the server ended the connection (EOF or reset)."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True


def get(srv: UpstreamServer, target: str, method: str = "GET") -> Raw:
    raw = Raw(srv)
    raw.send(f"{method} {target} HTTP/1.1\r\nHost: upstream\r\n\r\n".encode())
    return raw


def fetch(
    srv: UpstreamServer, target: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    with get(srv, target, method) as raw:
        return raw.response(head_only=method == "HEAD")


def only(srv: UpstreamServer) -> Request:
    (req,) = srv.requests
    return req


def test_keep_alive_reuses_one_connection(server: UpstreamServer) -> None:
    """Two requests on one HTTP/1.1 connection share a conn_id and get seq 1, 2."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        for _ in range(2):
            conn.request("GET", "/echo")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()
    first, second = server.requests
    assert (first.conn_id, first.seq) == (1, 1)
    assert (second.conn_id, second.seq) == (1, 2)
    assert server.connections_opened == 1
    server.wait_for(lambda s: s.closed_by_peer == 1 and s.open_connections == 0)


def test_headers_recorded_in_order_with_case(server: UpstreamServer) -> None:
    """Headers are recorded in arrival order, original case, repeats kept."""
    with Raw(server) as raw:
        raw.send(
            b"GET /echo HTTP/1.1\r\nHost: up\r\nX-First: 1\r\nx-MiXed-case:  two \r\n"
            b"X-First: 3\r\n\r\n"
        )
        status, _, body = raw.response()
    assert status == 200
    req = only(server)
    assert req.headers == [
        ("Host", "up"),
        ("X-First", "1"),
        ("x-MiXed-case", "two"),
        ("X-First", "3"),
    ]
    assert req.header("x-first") == "1"
    assert req.header_all("X-FIRST") == ["1", "3"]
    assert req.header("absent") is None
    assert json.loads(body)["headers"] == [[k, v] for k, v in req.headers]


def test_raw_target_is_byte_exact(server: UpstreamServer) -> None:
    """The request-target is recorded exactly as sent, with no normalisation."""
    target = "/a%2fb/../c?x=%41&y"
    status, _, _ = fetch(server, target)
    assert status == 404
    assert only(server).target == target
    for echoed in ["/echo?q=%2F%zz&&x", "/echo/a%2fb/../c?x=%41&y", "/echo//double//slash/"]:
        status, _, body = fetch(server, echoed)
        assert status == 200 and json.loads(body)["target"] == echoed


def test_content_length_body_and_echo(server: UpstreamServer) -> None:
    """A Content-Length body is recorded and echoed with the request's details."""
    with Raw(server) as raw:
        raw.send(b"POST /echo?x=1 HTTP/1.1\r\nHost: up\r\nContent-Length: 5\r\n\r\nh\xe9llo")
        status, headers, body = raw.response()
    doc = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert doc["method"] == "POST" and doc["target"] == "/echo?x=1"
    assert (doc["body_len"], doc["body"], doc["chunked"]) == (5, "h\xe9llo", False)
    assert (doc["conn_id"], doc["seq"]) == (1, 1)
    assert headers["x-upstream-conn"] == "1" and headers["x-upstream-seq"] == "1"
    req = only(server)
    assert req.body == b"h\xe9llo" and req.complete and not req.chunked and not req.aborted


def test_chunked_upload_decoded(server: UpstreamServer) -> None:
    """A chunked upload is decoded (extensions, trailers ignored) and marked chunked."""
    with Raw(server) as raw:
        raw.send(
            b"POST /echo HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        status, _, body = raw.response()
        raw.send(b"GET /echo HTTP/1.1\r\nHost: up\r\n\r\n")  # framing left nothing behind
        assert raw.response()[0] == 200
    doc = json.loads(body)
    assert status == 200
    assert doc["body"] == "hello 0123456789" and doc["chunked"] is True
    req = server.requests[0]
    assert req.chunked and req.complete and req.body == b"hello 0123456789"


def test_streamed_body_visible_before_completion(server: UpstreamServer) -> None:
    """The head and the first body bytes are recorded before the body is finished."""
    with Raw(server) as raw:
        raw.send(b"PUT /echo HTTP/1.1\r\nHost: up\r\nContent-Length: 10\r\n\r\nabcd")
        server.wait_for(lambda s: s.requests[0].body == b"abcd")
        req = only(server)
        assert not req.complete and not req.aborted and not req.responded
        raw.send(b"efghij")
        status, _, body = raw.response()
    assert status == 200 and json.loads(body)["body"] == "abcdefghij"
    server.wait_for(lambda s: s.requests[0].responded)  # set once the last byte is written
    req = only(server)
    assert req.complete and req.response_status == 200


def test_chunked_body_visible_before_completion(server: UpstreamServer) -> None:
    """Chunked bodies also grow visibly while they stream in."""
    with Raw(server) as raw:
        raw.send(
            b"POST /echo HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        server.wait_for(lambda s: s.requests[0].body == b"abc")
        assert not only(server).complete
        raw.send(b"0\r\n\r\n")
        assert raw.response()[0] == 200
    assert only(server).complete


def test_peer_abort_mid_body_is_recorded(server: UpstreamServer) -> None:
    """A client closing mid-body marks the request aborted and counts closed_by_peer."""
    with Raw(server) as raw:
        raw.send(b"POST /echo HTTP/1.1\r\nHost: up\r\nContent-Length: 100\r\n\r\npartial")
        server.wait_for(lambda s: s.requests[0].body == b"partial")
    server.wait_for(lambda s: s.requests[0].aborted and s.closed_by_peer == 1)
    req = only(server)
    assert not req.complete and not req.responded
    assert server.open_connections == 0


def test_expect_100_continue(server: UpstreamServer) -> None:
    """Expect: 100-continue gets an interim 100 before the body is read."""
    with Raw(server) as raw:
        raw.send(
            b"POST /echo HTTP/1.1\r\nHost: up\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert raw.read_head()[0] == 100
        raw.send(b"ok")
        status, _, body = raw.response()
    assert status == 200 and json.loads(body)["body"] == "ok"


@pytest.mark.parametrize(
    ("target", "status", "body"),
    [
        ("/status/418", 418, b"status 418\n"),
        ("/status/500", 500, b"status 500\n"),
        ("/nowhere", 404, b"not found\n"),
        ("/status/abc", 404, b"not found\n"),
        ("/slow?delay=0.05", 200, b"slow\n"),
        ("/stream?chunks=3&size=4", 200, b"000011112222"),
        ("/drip?size=3&delay=0.01", 200, bytes([0, 1, 2])),
        ("/big?size=300", 200, bytes(i % 251 for i in range(300))),
        ("/cookies", 200, b"cookies\n"),
        ("/redirect?to=/there%3Fa%3D1&code=307", 307, b"redirect\n"),
    ],
)
def test_simple_routes(server: UpstreamServer, target: str, status: int, body: bytes) -> None:
    """Each route answers its status and body, tagged with conn and seq headers."""
    got_status, headers, got_body = fetch(server, target)
    assert (got_status, got_body) == (status, body)
    assert headers["x-upstream-conn"] == "1" and headers["x-upstream-seq"] == "1"
    assert only(server).response_status == status


def test_status_no_body_codes(server: UpstreamServer) -> None:
    """204 and 304 carry neither Content-Length nor a body; the connection stays usable."""
    with Raw(server) as raw:
        for code in (204, 304):
            raw.send(f"GET /status/{code} HTTP/1.1\r\nHost: up\r\n\r\n".encode())
            status, headers, _ = raw.response()
            assert status == code and "content-length" not in headers
        raw.send(b"GET /status/201 HTTP/1.1\r\nHost: up\r\n\r\n")
        assert raw.response()[0::2] == (201, b"status 201\n")


def test_status_1xx_is_interim_then_200(server: UpstreamServer) -> None:
    """/status/103 sends an interim 103, then a final 200."""
    with get(server, "/status/103") as raw:
        assert raw.read_head()[0] == 103
        assert raw.response()[0::2] == (200, b"status 103\n")


def test_big_body_in_blocks(server: UpstreamServer) -> None:
    """/big sends exactly N patterned bytes with Content-Length."""
    size = 1_000_003
    status, headers, body = fetch(server, f"/big?size={size}")
    assert status == 200 and headers["content-length"] == str(size)
    assert body == (bytes(range(251)) * (size // 251 + 1))[:size]


def test_stream_is_chunked_with_delays(server: UpstreamServer) -> None:
    """/stream uses Transfer-Encoding: chunked and paces its chunks."""
    started = time.monotonic()
    status, headers, body = fetch(server, "/stream?chunks=12&size=2&delay=0.01")
    assert time.monotonic() - started >= 0.1
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert body == b"".join(str(i % 10).encode() * 2 for i in range(12))


def test_gated_waits_for_open_gate(server: UpstreamServer) -> None:
    """/gated sends its first chunk, parks, and finishes only after open_gate()."""
    with get(server, "/gated?name=g1") as raw:
        status, headers = raw.read_head()
        assert status == 200
        assert raw.read_line() == b"6" and raw.read_exact(8) == b"first\n\r\n"
        raw.sock.settimeout(0.1)
        with pytest.raises(TimeoutError):
            raw.sock.recv(1)
        raw.sock.settimeout(5)
        assert not only(server).responded
        server.open_gate("g1")
        assert raw.read_line() == b"5" and raw.read_exact(7) == b"rest\n\r\n"
        assert raw.read_line() == b"0" and raw.read_line() == b""
    server.wait_for(lambda s: s.requests[0].responded)


def test_gzip_route(server: UpstreamServer) -> None:
    """/gzip is gzip-encoded JSON whatever the Accept-Encoding."""
    status, headers, body = fetch(server, "/gzip")
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(body)) == {"gzip": True}


def test_redirect_and_cookie_headers(server: UpstreamServer) -> None:
    """/redirect sets Location; /cookies sends two separate Set-Cookie headers."""
    with get(server, "/redirect?to=http%3A%2F%2Fexample.test%2Fx%3Fy%3D1") as raw:
        status, headers = raw.read_head()
    assert status == 302 and ("Location", "http://example.test/x?y=1") in headers
    with get(server, "/cookies") as raw:
        _, headers = raw.read_head()
    assert [v for k, v in headers if k == "Set-Cookie"] == ["a=1; Path=/", "b=2; Path=/"]


def test_keepalive_and_custom_headers(server: UpstreamServer) -> None:
    """/keepalive advertises Keep-Alive; /headers adds the given headers verbatim."""
    with get(server, "/keepalive?timeout=7") as raw:
        _, headers = raw.read_head()
    assert ("Keep-Alive", "timeout=7") in headers and ("Connection", "keep-alive") in headers
    with get(server, "/headers?h=Connection:X-Foo&h=X-Foo:bar&h=Proxy-Authenticate:Basic") as raw:
        status, headers = raw.read_head()
    assert status == 200
    for pair in [("Connection", "X-Foo"), ("X-Foo", "bar"), ("Proxy-Authenticate", "Basic")]:
        assert pair in headers


def test_head_has_headers_but_no_body(server: UpstreamServer) -> None:
    """HEAD gets GET's headers (Content-Length included) and no body bytes."""
    with Raw(server) as raw:
        raw.send(b"HEAD /big?size=1000 HTTP/1.1\r\nHost: up\r\n\r\n")
        status, headers, _ = raw.response(head_only=True)
        assert status == 200 and headers["content-length"] == "1000"
        raw.send(b"GET /status/202 HTTP/1.1\r\nHost: up\r\n\r\n")  # nothing was left over
        assert raw.response()[0::2] == (202, b"status 202\n")


def test_connection_close_request(server: UpstreamServer) -> None:
    """A request with Connection: close is answered with Connection: close, then FIN."""
    with Raw(server) as raw:
        raw.send(b"GET /echo HTTP/1.1\r\nHost: up\r\nConnection: close\r\n\r\n")
        _, headers, _ = raw.response()
        assert headers["connection"] == "close"
        assert raw.closed()
    server.wait_for(lambda s: s.open_connections == 0)
    assert server.closed_by_peer == 0


def test_close_route(server: UpstreamServer) -> None:
    """/close answers with Connection: close and closes the connection."""
    with get(server, "/close") as raw:
        status, headers, body = raw.response()
        assert (status, headers["connection"], body) == (200, "close", b"closing\n")
        assert raw.closed()


def test_bad_response_route(server: UpstreamServer) -> None:
    """/bad-response sends an invalid status line that http.client rejects."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request("GET", "/bad-response")
        with pytest.raises(http.client.BadStatusLine):
            conn.getresponse()
    finally:
        conn.close()


def test_reset_route(server: UpstreamServer) -> None:
    """/reset reads the request and resets the connection without answering."""
    with get(server, "/reset") as raw, pytest.raises(ConnectionResetError):
        raw.sock.recv(1)
    server.wait_for(lambda s: s.open_connections == 0)
    assert server.closed_by_peer == 0 and only(server).response_status is None


def test_reset_mid_body(server: UpstreamServer) -> None:
    """/reset-mid-body sends half the promised body, then resets."""
    with get(server, "/reset-mid-body?size=1000") as raw:
        _, headers = raw.read_head()
        assert headers[1] == ("Content-Length", "1000")
        got = raw.buf
        with pytest.raises(ConnectionResetError):
            while True:
                data = raw.sock.recv(65536)
                assert data, "expected a reset, got a FIN"
                got += data
    assert got == bytes(i % 251 for i in range(500))


def test_close_idle_connections(server: UpstreamServer) -> None:
    """close_idle_connections FINs idle connections so the next request on them fails."""
    with Raw(server) as raw, Raw(server) as busy:
        raw.send(b"GET /echo HTTP/1.1\r\nHost: up\r\n\r\n")
        raw.response()
        busy.send(b"GET /hang HTTP/1.1\r\nHost: up\r\n\r\n")
        server.wait_for(lambda s: len(s.requests) == 2)
        # The client can hold the response before the server thread marks the
        # connection idle again: poll until the close finds it.
        wait_until(lambda: server.close_idle_connections() == 1, 5, "the idle connection")
        assert server.open_connections == 1
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            raw.send(b"GET /echo HTTP/1.1\r\nHost: up\r\n\r\n")
        assert raw.closed()
        assert server.close_idle_connections() == 0
    # Only the /hang connection, closed by this client, counts as closed by the peer.
    server.wait_for(lambda s: s.open_connections == 0 and s.closed_by_peer == 1)


def test_idle_timeout_closes_connection() -> None:
    """With idle_timeout, an idle keep-alive connection is closed by the server."""
    with UpstreamServer(idle_timeout=0.1) as srv, Raw(srv) as raw:
        raw.send(b"GET /echo HTTP/1.1\r\nHost: up\r\n\r\n")
        raw.response()
        srv.wait_for(lambda s: s.open_connections == 0, timeout=3)
        assert raw.closed()
        assert srv.closed_by_peer == 0


def test_hang_then_stop_returns_promptly() -> None:
    """stop() ends a connection parked on /hang at once and leaves no threads."""
    srv = UpstreamServer().start()
    try:
        raw = get(srv, "/hang")
        srv.wait_for(lambda s: len(s.requests) == 1)
        started = time.monotonic()
    finally:
        srv.stop()
    assert time.monotonic() - started < 1
    try:
        assert raw.closed()
    finally:
        raw.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("upstream-")]


def test_hang_notices_peer_leaving(server: UpstreamServer) -> None:
    """A client giving up on /hang is seen as closed_by_peer without stop()."""
    with get(server, "/hang"):
        server.wait_for(lambda s: len(s.requests) == 1)
    server.wait_for(lambda s: s.closed_by_peer == 1 and s.open_connections == 0)


def test_slow_is_interrupted_by_stop() -> None:
    """stop() interrupts /slow's wait instead of sleeping it out."""
    srv = UpstreamServer().start()
    with get(srv, "/slow?delay=30"):
        srv.wait_for(lambda s: len(s.requests) == 1)
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 1


def test_counters_and_reset(server: UpstreamServer) -> None:
    """Connection counters track concurrency; reset() clears records and counters."""
    with Raw(server) as a, Raw(server) as b:
        server.wait_for(lambda s: s.open_connections == 2)
        a.send(b"GET /echo HTTP/1.1\r\nHost: up\r\n\r\n")
        a.response()
        b.send(b"GET /echo HTTP/1.1\r\nHost: up\r\n\r\n")
        b.response()
        assert {r.conn_id for r in server.requests} == {1, 2}
        assert server.max_open_connections == 2 and server.connections_opened == 2
        server.reset()
        assert server.requests == [] and server.connections_opened == 0
        assert server.max_open_connections == 2  # still open
        a.send(b"GET /echo HTTP/1.1\r\nHost: up\r\n\r\n")
        a.response()
        assert only(server).seq == 1
    server.wait_for(lambda s: s.closed_by_peer == 2)


def test_bad_requests_get_400(server: UpstreamServer) -> None:
    """Malformed request lines and framing get a 400 and a close."""
    for data in [
        b"NONSENSE\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]:
        with Raw(server) as raw:
            raw.send(data)
            status, headers, _ = raw.response()
            assert (status, headers["connection"]) == (400, "close")
            assert raw.closed()


def test_wait_for_timeout_describes_state(server: UpstreamServer) -> None:
    """wait_for raises AssertionError with the server's state when time runs out."""
    fetch(server, "/echo")
    with pytest.raises(AssertionError, match=r"not met within 0.05s[\s\S]*GET /echo"):
        server.wait_for(lambda s: len(s.requests) == 5, timeout=0.05)


def test_tls_with_trustme() -> None:
    """The server speaks HTTPS with a trustme certificate."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with UpstreamServer(ssl_context=server_ctx) as srv:
        assert srv.url == f"https://127.0.0.1:{srv.port}"
        conn = http.client.HTTPSConnection(srv.host, srv.port, timeout=5, context=client_ctx)
        try:
            for _ in range(2):
                conn.request("POST", "/echo", body=b"secret")
                resp = conn.getresponse()
                doc = json.loads(resp.read())
                assert resp.status == 200 and doc["body"] == "secret"
            assert srv.close_idle_connections() == 1
        finally:
            conn.close()
        assert [r.conn_id for r in srv.requests] == [1, 1]


def test_stop_leaves_no_threads() -> None:
    """After stop(), no upstream thread is alive, even with connections open."""
    srv = UpstreamServer().start()
    with Raw(srv) as raw, get(srv, "/gated?name=never") as gated:
        raw.send(b"GET /echo HTTP/1.1\r\nHost: up\r\n\r\n")
        raw.response()
        srv.wait_for(lambda s: len(s.requests) == 2)
        srv.stop()
        assert raw.closed() and gated.closed()
    assert srv.open_connections == 0
    assert not [t.name for t in threading.enumerate() if t.name.startswith("upstream-")]
