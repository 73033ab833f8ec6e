"""The access log as JSON (PROXY_ACCESS_LOG_FORMAT=json): one parseable object a line."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.client import request
from tests.support.proxy import Proxy
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until


def json_lines(proxy: Proxy) -> list[dict[str, Any]]:
    found = []
    for line in proxy.log().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_json_access_log_has_every_field_escaped(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, worker_class: str
) -> None:
    """A log pipeline would choke on a quote in a user agent, or miss the fields the
    text format shows (upstream, pool wait, connection reuse, request id)."""
    proxy = proxies(worker_class, PROXY_UPSTREAM=upstream.url, PROXY_ACCESS_LOG_FORMAT="json")
    agent = 'tester "quoted" \\ agent'
    reply = request(proxy.port, "GET", "/echo?x=1", headers={"User-Agent": agent})
    assert reply.status == 200
    wait_until(
        lambda: any(r.get("target") == "/echo?x=1" for r in json_lines(proxy)),
        5,
        "the JSON access line",
    )
    (line,) = [r for r in json_lines(proxy) if r.get("target") == "/echo?x=1"]
    assert line["method"] == "GET" and line["status"] == 200
    assert line["client"] == "127.0.0.1" and line["user_agent"] == agent
    assert line["upstream_addr"] == f"127.0.0.1:{upstream.port}"
    assert line["upstream_status"] == "200"
    assert line["conn"] in ("new", "reused") and line["request_id"] == reply.header("X-Request-ID")
    assert isinstance(line["bytes"], int) and line["bytes"] > 0
    assert isinstance(line["duration"], float) and isinstance(line["pool_wait_ms"], float)
    assert line["time"].endswith("+00:00")


def test_text_access_log_stays_the_default(
    proxies: Callable[..., Proxy], upstream: UpstreamServer
) -> None:
    """Existing log parsers would break if the default format changed."""
    proxy = proxies("gevent", PROXY_UPSTREAM=upstream.url)
    request(proxy.port, "GET", "/echo?plain=1")
    wait_until(lambda: '"GET /echo?plain=1 HTTP/1.1" 200' in proxy.log(), 5, "the text line")
    assert json_lines(proxy) == []
