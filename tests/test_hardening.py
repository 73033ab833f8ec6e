"""Bad input from both sides, over raw sockets to real gunicorn workers.

`tests/requests/*.http` holds one malformed request per file (in the manner of gunicorn's
tests/requests/): the first line says the status expected (`# expect 400`, or `4xx`),
the rest is the raw request with `\\r\\n` written out. Each is sent to gevent and
gthread workers; the client gets a 4xx/501 and the instrumented upstream proves that
nothing, not even a partial request, reached it.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.client import raw_exchange, request
from tests.support.proxy import Proxy, start_gunicorn
from tests.support.upstream_server import UpstreamServer

CORPUS = sorted((Path(__file__).parent / "requests").glob("*.http"))


@pytest.fixture(scope="module")
def up(module_upstream: UpstreamServer) -> UpstreamServer:
    return module_upstream


@pytest.fixture(scope="module", params=["gevent", "gthread"])
def proxy(
    request: pytest.FixtureRequest, up: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    proc = start_gunicorn(
        tmp_path_factory.mktemp(f"hardening-{request.param}"),
        request.param,
        PROXY_UPSTREAM=up.url,
        HTTP_READ_TIMEOUT="2",
    )
    try:
        yield proc
    finally:
        proc.stop()


def load(path: Path, up: UpstreamServer) -> tuple[str, bytes]:
    first, _, rest = path.read_text().partition("\n")
    expect = first.removeprefix("# expect ").strip()
    text = rest.rstrip("\n").format(
        upstream_port=up.port,
        long_query="q" * 10000,
        huge_headers="".join(f"X-H{i}: {'v' * 100}\\r\\n" for i in range(1000)),
    )
    return expect, codecs.decode(text, "unicode_escape").encode("latin-1")


@pytest.mark.parametrize("case", CORPUS, ids=[p.stem for p in CORPUS])
def test_malformed_request_is_refused_and_never_reaches_upstream(
    proxy: Proxy, up: UpstreamServer, case: Path
) -> None:
    """Smuggling-shaped, malformed or unsupported requests get 4xx/501 and never a partial
    request upstream."""
    expect, data = load(case, up)
    before = len(up.requests)
    opened = up.connections_opened
    # The absolute-form refusals are well-formed requests, answered on a connection the
    # proxy keeps: read their one reply. The rest end with a close, which is awaited.
    first_reply = case.stem.startswith("absolute_")
    reply = raw_exchange(proxy.port, data, timeout=5, first_reply=first_reply)
    status = re.match(rb"HTTP/1\.[01] (\d{3}) ", reply)
    assert status, f"no status line in {reply[:200]!r}"
    code = status.group(1).decode()
    if expect.endswith("xx"):
        assert code[0] == expect[0], (code, reply[:300])
    else:
        assert code == expect, (code, reply[:300])
    assert b"Traceback" not in reply
    assert len(up.requests) == before, up.requests[before:]
    assert up.connections_opened == opened, "the upstream saw a connection for a bad request"


# -- bad upstream responses ---------------------------------------------------------------
BAD_RESPONSES = {
    "bad-status-line": (b"HTTP/1.1 abc Nope\r\nContent-Length: 0\r\n\r\n", "502"),
    "no-status-at-all": (b"hello there\r\n\r\n", "502"),
    "cl-and-te": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        "502",
    ),
    "short-body": (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", "truncated"),
    "bad-chunk": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        "truncated",
    ),
    "header-injection": (
        b"HTTP/1.1 200 OK\r\nX-Evil: a\rSet-Cookie: stolen=1\r\nContent-Length: 2\r\n\r\nok",
        "no-injection",  # a bare CR must not start a header line
    ),
    "nul-in-header": (b"HTTP/1.1 200 OK\r\nX-Evil: a\x00b\r\nContent-Length: 2\r\n\r\nok", "502"),
    "reset-mid-headers-reset": (b"HTTP/1.1 200 OK\r\nContent-Le", "502"),
}


@pytest.mark.parametrize("name", sorted(BAD_RESPONSES))
def test_bad_upstream_response_is_502_or_truncated_and_never_pooled(
    proxy: Proxy, up: UpstreamServer, name: str
) -> None:
    """A malformed upstream response gives 502 or a visibly truncated body, no injected
    header reaches the client, and its connection is discarded, never reused."""
    raw, outcome = BAD_RESPONSES[name]
    up.raw_responses[name] = raw
    data = raw_exchange(
        proxy.port, f"GET /raw/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    head, _, body = data.partition(b"\r\n\r\n")
    status = head[9:12].decode()
    assert b"Traceback" not in data
    if outcome == "502":
        assert status == "502", data[:300]
    elif outcome == "truncated":
        assert status in ("200", "502"), data[:300]
        if status == "200":
            complete = (
                b"\r\n0\r\n\r\n" in body
                if b"chunked" in head.lower()
                else (b"Content-Length: 100" not in head or len(body) >= 100)
            )
            assert not complete, f"a broken body reached the client looking complete: {data!r}"
    elif outcome == "no-injection":
        assert status == "502", data[:300]
        assert b"stolen" not in data, data
    # Whatever happened, that connection is not reused: the next request gets another.
    proxy.settled()
    reply = request(proxy.port, "GET", "/echo?after-bad-response")
    assert reply.status == 200
    bad = [r for r in up.requests if r.target == f"/raw/{name}"][-1]
    assert json.loads(reply.body)["conn_id"] != bad.conn_id
