"""X-Request-ID: one id per request, seen by the client, the upstream and the logs."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import pytest

from tests.support.client import request
from tests.support.ports import closed_port
from tests.support.proxy import Proxy
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until
from wsgiproxy.proxy import request_id

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_a_request_id_is_kept_replaced_or_made_and_seen_everywhere(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """A user could not quote one id that the proxy's log, the upstream and their own
    client all show, or a client could smuggle a broken id into every log."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=upstream.url)
    kept = request(proxy.port, "GET", "/echo?n=1", headers={"X-Request-ID": "client-abc 1"})
    assert kept.header("X-Request-ID") == "client-abc 1"
    made = request(proxy.port, "GET", "/echo?n=2")
    replaced = request(proxy.port, "GET", "/echo?n=3", headers={"X-Request-ID": "x" * 201})
    ids = [made.header("X-Request-ID"), replaced.header("X-Request-ID")]
    assert all(i is not None and HEX32.fullmatch(i) for i in ids), ids
    assert ids[0] != ids[1]
    seen = {r.target: r.header_all("X-Request-Id") for r in upstream.requests}
    assert seen == {"/echo?n=1": ["client-abc 1"], "/echo?n=2": [ids[0]], "/echo?n=3": [ids[1]]}
    wait_until(lambda: f"request_id={ids[0]}" in proxy.log(), 5, "the id in the access log")


def test_the_proxys_own_errors_carry_the_id(proxies: Callable[..., Proxy]) -> None:
    """A user given a 502 could not quote anything that finds its log line."""
    proxy = proxies("gevent", PROXY_UPSTREAM=f"http://127.0.0.1:{closed_port()}")
    reply = request(proxy.port, "GET", "/x", headers={"X-Request-ID": "quote-me"})
    assert reply.status == 502 and reply.header("X-Request-ID") == "quote-me"
    assert reply.body.endswith(b"(request id quote-me)\n") and reply.body.count(b"\n") == 1


def test_a_request_refused_before_it_is_sent_carries_a_new_id(
    proxies: Callable[..., Proxy], upstream: UpstreamServer
) -> None:
    """A 413 answered before the request's headers were built would have no id to quote."""
    proxy = proxies("gevent", PROXY_UPSTREAM=upstream.url, PROXY_MAX_BODY="10")
    reply = request(proxy.port, "POST", "/echo", body=b"x" * 100)
    rid = reply.header("X-Request-ID")
    assert reply.status == 413 and rid is not None and HEX32.fullmatch(rid), reply
    assert reply.body.endswith(f"(request id {rid})\n".encode())
    assert upstream.requests == []
    wait_until(lambda: f"request_id={rid}" in proxy.log(), 5, "the id in the access log")


@pytest.mark.parametrize("drawn_ahead", [True, False], ids=["ids-left", "none-left"])
def test_a_forked_worker_does_not_repeat_its_parents_ids(
    drawn_ahead: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers forked from one process (gunicorn --preload) would hand out the same ids:
    the ones the parent drew ahead, or those its generator draws next."""
    monkeypatch.setattr(request_id, "_drawn", [])  # a known start: nothing drawn ahead
    if drawn_ahead:
        request_id.assign({})  # draws a batch, takes one: the rest is left at the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write_end, " ".join(request_id.assign({}) for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    parent = [request_id.assign({}) for _ in range(3)]
    assert len(child) == 3 and all(HEX32.fullmatch(i) for i in child)
    assert not set(child) & set(parent), (child, parent)


def test_ids_stay_unique_and_well_formed_across_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids are drawn many at a time; a slip at a batch's edge would repeat or cut one."""
    monkeypatch.setattr(request_id, "_drawn", [])
    request_id.assign({})
    assert len(request_id._drawn) == request_id.BATCH - 1  # one draw: a whole batch, one taken
    ids = [request_id.assign({}) for _ in range(3 * request_id.BATCH + 5)]
    assert all(HEX32.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_request_ids_can_be_turned_off(
    proxies: Callable[..., Proxy], upstream: UpstreamServer
) -> None:
    """PROXY_REQUEST_ID=0 would still add headers a deployment handles elsewhere."""
    proxy = proxies("gevent", PROXY_UPSTREAM=upstream.url, PROXY_REQUEST_ID="0")
    reply = request(proxy.port, "GET", "/echo")
    assert reply.header("X-Request-ID") is None
    assert upstream.requests[-1].header("X-Request-Id") is None
    passed = request(proxy.port, "GET", "/echo", headers={"X-Request-ID": "theirs"})
    assert upstream.requests[-1].header("X-Request-Id") == "theirs"
    assert passed.header("X-Request-ID") is None
