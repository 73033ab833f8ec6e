"""Fixtures: real loopback upstreams and real gunicorn proxies.

Every server here binds 127.0.0.1 on a port the kernel picks and is stopped when the
test ends, joined with a deadline. What they are built from lives in ``tests/support/``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.proxy import Proxy, start_gunicorn
from tests.support.upstream_server import UpstreamServer


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    """A fresh instrumented upstream on 127.0.0.1."""
    with UpstreamServer() as server:
        yield server


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[UpstreamServer]:
    """One instrumented upstream shared by a module's tests (and its proxies)."""
    with UpstreamServer() as server:
        yield server


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_upstream(ca: trustme.CA, tmp_path: Path) -> Iterator[tuple[UpstreamServer, Path]]:
    """An HTTPS upstream whose certificate is signed by the test CA; yields (server, CA file)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with UpstreamServer(ssl_context=context) as server:
        yield server, ca_file


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """Factory: ``proxies("gevent", PROXY_UPSTREAM=...)`` starts gunicorn; all stopped after."""
    started: list[Proxy] = []

    def start(worker_class: str = "gevent", workers: int = 1, **env: str) -> Proxy:
        proxy = start_gunicorn(tmp_path, worker_class, workers, **env)
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
