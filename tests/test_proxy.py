"""The proxy end to end: real gunicorn (gevent and gthread workers) over loopback.

One gunicorn per worker class serves the whole module, in front of instrumented
upstreams that record what arrived on which connection. Each test states what a user
would see break.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.client import Reply, gated, raw_exchange, request
from tests.support.ports import closed_port, unanswered_port
from tests.support.proxy import Proxy, start_gunicorn
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until

MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module")
def up(module_upstream: UpstreamServer) -> UpstreamServer:
    return module_upstream


@pytest.fixture(scope="module")
def up_api() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["gevent", "gthread"])
def proxy(
    request: pytest.FixtureRequest,
    up: UpstreamServer,
    up_api: UpstreamServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    routes = (
        f"/api={up_api.url}/base,/api/v2={up_api.url}/v2base,/dead=http://127.0.0.1:{closed_port()}"
    )
    proc = start_gunicorn(
        tmp_path_factory.mktemp(request.param),
        request.param,
        PROXY_UPSTREAM=up.url,
        PROXY_ROUTES=routes,
        HTTP_READ_TIMEOUT="1.5",
        PROXY_MAX_BODY=str(MAX_BODY),
    )
    try:
        yield proc
    finally:
        proc.stop()


def get(proxy: Proxy, target: str, **kw: object) -> Reply:
    return request(proxy.port, "GET", target, **kw)  # type: ignore[arg-type]


def last_request(up: UpstreamServer):  # type: ignore[no-untyped-def]
    return up.requests[-1]


def refused(proxy: Proxy, up: UpstreamServer, data: bytes, status: int) -> bytes:
    """Send raw ``data``: the answer must be ``status``, and nothing may reach the upstream."""
    before = len(up.requests)
    reply = raw_exchange(proxy.port, data)
    assert reply.startswith(b"HTTP/1.1 %d" % status), reply[:200]
    assert len(up.requests) == before
    return reply


def assert_proxy_error(reply: Reply, status: int, kind: str) -> None:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.header("X-Proxy-Error") == kind, reply.headers
    assert reply.header(
        "Content-Type",
    ).startswith("text/plain")  # type: ignore[union-attr]
    text = reply.body.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert "Traceback" not in text


# -- reverse proxying ------------------------------------------------------------------
def test_reverse_get_reaches_upstream(proxy: Proxy, up: UpstreamServer) -> None:
    """A plain GET through the reverse proxy gets the upstream's answer."""
    reply = get(proxy, "/echo?x=1")
    assert reply.status == 200
    seen = json.loads(reply.body)
    assert seen["method"] == "GET" and seen["target"] == "/echo?x=1"


@pytest.mark.parametrize(
    "target",
    ["/echo/a%2fb/../c?x=%41&y=%zz&z", "/echo//double//slash/?q=a+b&q=%2B", "/echo?%00=%ff;x"],
)
def test_path_and_query_reach_upstream_byte_exact(
    proxy: Proxy, up: UpstreamServer, target: str
) -> None:
    """Encoded slashes, dot segments and odd escapes are not normalised on the way."""
    reply = get(proxy, target)
    assert reply.status == 200
    assert last_request(up).target == target


def test_hop_by_hop_request_headers_are_not_forwarded(proxy: Proxy, up: UpstreamServer) -> None:
    """Connection-scoped headers (and those Connection names) stop at the proxy."""
    reply = get(
        proxy,
        "/echo",
        headers={
            "Connection": "keep-alive, X-Private",
            "X-Private": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Proxy-Connection": "keep-alive",
            "TE": "trailers",
            "Upgrade": "something",
            "X-Kept": "yes",
        },
    )
    assert reply.status == 200
    names = {name.lower() for name, _ in last_request(up).headers}
    for hop in (
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "upgrade",
    ):
        assert hop not in names, hop
    assert "x-kept" in names
    assert last_request(up).header("Connection") in (None, "keep-alive")


def test_hop_by_hop_response_headers_are_not_forwarded(proxy: Proxy) -> None:
    """The upstream's connection-scoped headers never reach the client."""
    reply = get(
        proxy,
        "/headers?h=Connection:X-Secret&h=X-Secret:1&h=Proxy-Authenticate:Basic"
        "&h=Trailer:X-T&h=X-Visible:yes",
    )
    assert reply.status == 200
    assert reply.header("X-Visible") == "yes"
    assert reply.header("X-Secret") is None
    assert reply.header("Proxy-Authenticate") is None
    assert reply.header("Trailer") is None


def test_forwarding_headers_and_via(proxy: Proxy, up: UpstreamServer) -> None:
    """X-Forwarded-For is appended to, -Proto/-Host are this hop's, Via both ways."""
    reply = get(
        proxy,
        "/echo",
        headers={
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "spoofed.example",
            "Host": "public.example:8443",
            "Via": "1.1 edge",
        },
    )
    assert reply.status == 200
    seen = last_request(up)
    assert seen.header("X-Forwarded-For") == "203.0.113.7, 127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == "public.example:8443"
    assert seen.header("Via") == "1.1 edge, 1.1 wsgiproxy"
    assert seen.header("Host") == f"127.0.0.1:{up.port}"
    assert "wsgiproxy" in (reply.header("Via") or "")


def test_routes_pick_longest_whole_segment_prefix(
    proxy: Proxy, up: UpstreamServer, up_api: UpstreamServer
) -> None:
    """PROXY_ROUTES: longest prefix on whole segments, path appended to the URL's path."""
    assert get(proxy, "/api/v2/items?id=3").status == 404  # the upstream's own 404
    assert up_api.requests[-1].target == "/v2base/api/v2/items?id=3"
    get(proxy, "/api")
    assert up_api.requests[-1].target == "/base/api"
    before = len(up_api.requests)
    assert get(proxy, "/apiary").status == 404
    assert len(up_api.requests) == before
    assert up.requests[-1].target == "/apiary"


def test_content_is_not_decoded(proxy: Proxy) -> None:
    """gzip from the upstream stays gzip: the proxy never decompresses."""
    reply = get(proxy, "/gzip", headers={"Accept-Encoding": "gzip"})
    assert reply.header("Content-Encoding") == "gzip"
    assert json.loads(gzip.decompress(reply.body)) == {"gzip": True}


def test_redirects_pass_through(proxy: Proxy, up: UpstreamServer) -> None:
    """A 302 reaches the client as a 302; the proxy does not follow it."""
    before = len(up.requests)
    reply = get(proxy, "/redirect?to=http://elsewhere.invalid/next&code=302")
    assert reply.status == 302
    assert reply.header("Location") == "http://elsewhere.invalid/next"
    assert len(up.requests) == before + 1


def test_repeated_set_cookie_stay_separate(proxy: Proxy) -> None:
    """Two Set-Cookie headers are not merged into one (which browsers would misread)."""
    reply = get(proxy, "/cookies")
    assert reply.header_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_head_204_304_have_no_body_and_keep_the_connection_usable(proxy: Proxy) -> None:
    """Bodiless responses carry no bytes, so the next response on the connection parses."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("HEAD", "/big?size=1000")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length") == "1000"
        assert resp.read() == b""
        for code in (204, 304):
            conn.request("GET", f"/status/{code}")
            resp = conn.getresponse()
            assert resp.status == code and resp.read() == b""
        conn.request("GET", "/big?size=10")
        resp = conn.getresponse()
        assert resp.read() == bytes(range(10))
    finally:
        conn.close()


def test_keep_alive_reuse_is_visible_upstream(proxy: Proxy, up: UpstreamServer) -> None:
    """200 sequential requests reach the upstream over a handful of connections."""
    up.reset()
    opened = up.connections_opened
    for i in range(200):
        assert get(proxy, f"/echo?i={i}").status == 200
    conn_ids = {r.conn_id for r in up.requests}
    assert len(up.requests) == 200
    assert len(conn_ids) <= 3, conn_ids
    assert up.connections_opened - opened <= 3


# -- streaming ---------------------------------------------------------------------------
def test_response_streams_before_upstream_finishes(proxy: Proxy, up: UpstreamServer) -> None:
    """Time to first byte does not wait for the upstream to finish the body."""
    with gated(proxy.port, up, f"ttfb-{proxy.kind}"):
        pass  # the first chunk arrived before the gate opens


def test_chunked_upload_streams_to_upstream(proxy: Proxy, up: UpstreamServer) -> None:
    """A chunked upload starts reaching the upstream before the client has finished."""
    block = b"z" * 65536
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo?upload=%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            % proxy.kind.encode()
        )
        for _ in range(4):
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        wait_until(
            lambda: any(
                r.target.endswith(proxy.kind) and len(r.body) >= 65536 for r in up.requests
            ),
            10,
            "the first part of the upload to reach the upstream",
        )
        assert not [r for r in up.requests if r.target.endswith(proxy.kind)][-1].complete
        for _ in range(4):
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        sock.sendall(b"0\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    seen = [r for r in up.requests if r.target.endswith(proxy.kind)][-1]
    assert seen.complete and seen.chunked and seen.body == block * 8


def test_content_length_upload_is_relayed(proxy: Proxy, up: UpstreamServer) -> None:
    """A body with Content-Length arrives whole, with the same length."""
    payload = bytes(range(256)) * 1000
    reply = request(proxy.port, "PUT", "/echo?put", body=payload)
    assert reply.status == 200
    seen = last_request(up)
    assert seen.body == payload and not seen.chunked
    assert seen.header("Content-Length") == str(len(payload))


# -- refusals and failures ---------------------------------------------------------------
def test_content_length_with_transfer_encoding_is_refused(proxy: Proxy, up: UpstreamServer) -> None:
    """CL + TE (request smuggling's favourite) gets 400 and never reaches the upstream."""
    refused(
        proxy,
        up,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    )


def test_conflicting_content_lengths_are_refused(proxy: Proxy, up: UpstreamServer) -> None:
    """Two different Content-Lengths get 400 and never reach the upstream."""
    refused(
        proxy,
        up,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    )


def test_transfer_coding_other_than_chunked_is_501(proxy: Proxy, up: UpstreamServer) -> None:
    """`gzip, chunked` is not relayed as if it were plain chunked: 501, nothing upstream."""
    data = refused(
        proxy,
        up,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        501,
    )
    assert b"X-Proxy-Error: not-implemented" in data


def test_body_over_limit_declared_is_413(proxy: Proxy, up: UpstreamServer) -> None:
    """A Content-Length over PROXY_MAX_BODY gets 413 before anything is sent upstream."""
    refused(
        proxy,
        up,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (MAX_BODY + 1),
        413,
    )


def test_chunked_body_over_limit_is_413_and_upstream_connection_closed(
    proxy: Proxy, up: UpstreamServer
) -> None:
    """A chunked body that grows past the limit gets 413; the upstream sees it cut off."""
    block = b"q" * 65536
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo?toolarge=%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            % proxy.kind.encode()
        )
        sent = 0
        data = b""
        sock.settimeout(10)
        try:
            while sent <= MAX_BODY + 2 * len(block):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
                sent += len(block)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the proxy may close on us once it has answered
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    break
        except OSError:
            pass
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    wait_until(
        lambda: any(r.target.endswith(proxy.kind) and r.aborted for r in up.requests),
        10,
        "the upstream to see the oversized upload cut off",
    )


def test_refused_upstream_is_502(proxy: Proxy) -> None:
    """An upstream that refuses connections gives 502 upstream-refused, one line."""
    assert_proxy_error(get(proxy, "/dead/x"), 502, "upstream-refused")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_upstream_by_address_or_by_name(tmp_path: Path, up: UpstreamServer, host: str) -> None:
    """An IP address is dialled directly, a name through the resolver: both must reach
    the upstream, and both give 502 when refused and 504 when never answered."""
    with unanswered_port() as silent:
        routes = f"/ok=http://{host}:{up.port}/echo,/dead=http://{host}:{closed_port()}"
        routes += f",/silent=http://{host}:{silent}"
        proxy = start_gunicorn(tmp_path, "gevent", PROXY_ROUTES=routes, HTTP_CONNECT_TIMEOUT="0.5")
        try:
            reply = get(proxy, "/ok")
            assert reply.status == 200, reply.body
            assert_proxy_error(get(proxy, "/dead/x"), 502, "upstream-refused")
            assert_proxy_error(get(proxy, "/silent/x"), 504, "upstream-timeout")
            assert proxy.settled()["pool"]["active"] == 0
        finally:
            proxy.stop()


def test_upstream_that_stops_reading_the_body_is_504_after_the_write_timeout(
    tmp_path: Path,
) -> None:
    """HTTP_WRITE_TIMEOUT bounds each send: an upstream that accepts but never reads
    would otherwise hold the upload (and its pooled connection) for HTTP_READ_TIMEOUT."""
    with socket.socket() as deaf:  # the kernel accepts and buffers; nobody reads
        deaf.bind(("127.0.0.1", 0))
        deaf.listen(4)
        port = deaf.getsockname()[1]
        proxy = start_gunicorn(
            tmp_path,
            "gevent",
            PROXY_UPSTREAM=f"http://127.0.0.1:{port}",
            HTTP_WRITE_TIMEOUT="0.5",
            HTTP_READ_TIMEOUT="60",
            HTTP_CONNECT_TIMEOUT="60",  # neither of the others may stand in for it
        )
        try:
            size = 64 * 1024 * 1024  # far more than the socket buffers on the way hold
            client = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            client.sendall(
                f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
            )
            block = b"u" * 65536
            reply = b""
            try:
                for _ in range(size // len(block)):
                    client.sendall(block)  # stalls once the proxy stops reading
            except OSError:
                pass  # the proxy gave up and closed (or, were it broken, our 10 s ran out)
            try:
                reply = client.recv(65536)
            except OSError:
                pass
            finally:
                client.close()
            if reply:  # when the reset did not swallow it
                assert reply.startswith(b"HTTP/1.1 504"), reply[:200]
                assert b"HTTP_WRITE_TIMEOUT" in reply
            wait_until(
                lambda: (
                    'kind="upstream-timeout"} 1.0'
                    in request(proxy.port, "GET", "/_proxy/metrics").body.decode()
                ),
                15,
                "the proxy to count one upstream timeout",
            )
            assert proxy.settled()["pool"]["active"] == 0
        finally:
            proxy.stop()


def test_upstream_read_timeout_is_504(proxy: Proxy) -> None:
    """An upstream slower than HTTP_READ_TIMEOUT gives 504 upstream-timeout."""
    assert_proxy_error(get(proxy, "/slow?delay=4"), 504, "upstream-timeout")


def test_invalid_upstream_response_is_502(proxy: Proxy) -> None:
    """A garbage status line from the upstream gives 502, not a crash."""
    reply = get(proxy, "/bad-response")
    assert reply.status == 502 and reply.header("X-Proxy-Error")


def test_upstream_reset_before_response_is_502(proxy: Proxy) -> None:
    """An upstream that resets instead of answering gives 502."""
    reply = get(proxy, "/reset")
    assert reply.status == 502 and reply.header("X-Proxy-Error")


def test_upstream_dying_mid_body_truncates_the_response(proxy: Proxy) -> None:
    """The client sees a short body, never a complete-looking response."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("GET", "/reset-mid-body?size=200000")
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
    finally:
        conn.close()
    assert get(proxy, "/echo").status == 200  # the worker carries on


def test_no_upstream_for_path_is_404_saying_what_to_set(tmp_path: Path, up: UpstreamServer) -> None:
    """Without PROXY_UPSTREAM an origin-form request gets 404 naming the settings."""
    proxy = start_gunicorn(tmp_path, "gevent")
    try:
        reply = get(proxy, "/anything")
        assert_proxy_error(reply, 404, "no-upstream")
        assert b"PROXY_UPSTREAM" in reply.body
    finally:
        proxy.stop()


# -- forward proxying --------------------------------------------------------------------
def test_forward_proxy_absolute_form(proxy: Proxy, up: UpstreamServer) -> None:
    """`curl -x` style absolute-form requests reach the named host in origin-form."""
    reply = get(proxy, f"http://127.0.0.1:{up.port}/echo?fwd=1")
    assert reply.status == 200
    seen = last_request(up)
    assert seen.target == "/echo?fwd=1"
    assert seen.header("Host") == f"127.0.0.1:{up.port}"


def test_forward_proxy_refusals(tmp_path: Path, up: UpstreamServer) -> None:
    """PROXY_FORWARD=0, a client outside PROXY_ALLOW_CLIENTS, a host outside
    PROXY_ALLOW_HOSTS: each gets 403 and nothing reaches the upstream."""
    target = f"http://127.0.0.1:{up.port}/echo"
    before = len(up.requests)
    for env in (
        {"PROXY_FORWARD": "0"},
        {"PROXY_ALLOW_CLIENTS": "10.0.0.0/8"},
        {"PROXY_ALLOW_HOSTS": "api.example.com,*.example.org,192.0.2.0/24"},
    ):
        proxy = start_gunicorn(tmp_path, "gevent", **env)
        try:
            assert_proxy_error(get(proxy, target), 403, "forbidden")
        finally:
            proxy.stop()
    assert len(up.requests) == before
    proxy = start_gunicorn(tmp_path, "gevent", PROXY_ALLOW_HOSTS="127.0.0.0/8")
    try:
        assert get(proxy, target).status == 200
    finally:
        proxy.stop()


def test_preserve_host(tmp_path: Path, up: UpstreamServer) -> None:
    """PROXY_PRESERVE_HOST=1 sends the client's Host upstream instead of the upstream's."""
    proxy = start_gunicorn(tmp_path, "gthread", PROXY_UPSTREAM=up.url, PROXY_PRESERVE_HOST="1")
    try:
        assert get(proxy, "/echo", headers={"Host": "app.example"}).status == 200
        assert last_request(up).header("Host") == "app.example"
    finally:
        proxy.stop()


# -- admin -------------------------------------------------------------------------------
def test_health_shows_worker_and_pool(proxy: Proxy) -> None:
    """/_proxy/health answers JSON with the worker pid and idle/active/queued figures."""
    health = proxy.health()
    assert health["status"] == "ok" and isinstance(health["pid"], int)
    for key in ("active", "idle", "queued"):
        assert key in health["pool"]


def test_admin_refused_outside_allowed_clients(tmp_path: Path) -> None:
    """Admin endpoints answer 403 to clients outside PROXY_ALLOW_CLIENTS."""
    proxy = start_gunicorn(tmp_path, "gevent", PROXY_ALLOW_CLIENTS="10.0.0.0/8")
    try:
        assert_proxy_error(get(proxy, "/_proxy/health"), 403, "forbidden")
    finally:
        proxy.stop()


def _upload_then(proxy: Proxy, tag: str, head: bytes, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(head % tag.encode() + first)
    return sock


def test_malformed_chunk_mid_body_is_400_and_upstream_connection_closed(
    proxy: Proxy, up: UpstreamServer
) -> None:
    """A bad chunk size mid-upload gets 400; the upstream sees the request cut off."""
    tag = f"badchunk-{proxy.kind}"
    block = b"c" * 70000
    head = b"POST /echo?%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with _upload_then(proxy, tag, head, b"%x\r\n%s\r\n" % (len(block), block)) as sock:
        wait_until(
            lambda: any(r.target.endswith(tag) and r.body for r in up.requests),
            10,
            "the upload to start reaching the upstream",
        )
        sock.sendall(b"zz\r\nnot a chunk\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert b"X-Proxy-Error: bad-request-body" in data
    wait_until(
        lambda: any(r.target.endswith(tag) and r.aborted for r in up.requests),
        5,
        "the upstream connection of the broken upload to be closed",
    )


def test_client_stopping_mid_body_closes_upstream_connection_at_once(
    proxy: Proxy, up: UpstreamServer
) -> None:
    """A client that vanishes mid-upload does not hold an upstream connection open."""
    tag = f"vanish-{proxy.kind}"
    head = b"PUT /echo?%s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    with _upload_then(proxy, tag, head, b"v" * 200000):
        wait_until(
            lambda: any(r.target.endswith(tag) and r.body for r in up.requests),
            10,
            "the upload to start reaching the upstream",
        )
    wait_until(
        lambda: any(r.target.endswith(tag) and r.aborted for r in up.requests),
        5,  # far below any timeout: the proxy must notice the client is gone
        "the upstream connection of the abandoned upload to be closed",
    )
    proxy.settled(5)
