"""How users run it: `flask run`, curl through gunicorn, TLS upstreams, bad settings."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest

from tests.support.client import curl, needs_curl, request
from tests.support.ports import closed_port
from tests.support.processes import BIN, run
from tests.support.proxy import start_flask_run, start_gunicorn
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until


@needs_curl
@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_curl_reverse_forward_and_chunked_upload(
    tmp_path: Path, upstream: UpstreamServer, worker_class: str
) -> None:
    """`curl`, `curl -x` and a chunked `curl -T` upload all work through gunicorn."""
    proxy = start_gunicorn(tmp_path, worker_class, PROXY_UPSTREAM=upstream.url)
    try:
        out = curl(f"{proxy.url}/echo?via=reverse")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["target"] == "/echo?via=reverse"

        out = curl("-x", proxy.url, f"http://127.0.0.1:{upstream.port}/echo?via=forward")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["target"] == "/echo?via=forward"
        assert upstream.requests[-1].header("Via") == "1.1 wsgiproxy"  # it went through us

        payload = tmp_path / "payload.bin"
        payload.write_bytes(bytes(range(256)) * 4096)
        out = curl("-T", str(payload), "-H", "Transfer-Encoding: chunked", f"{proxy.url}/echo?up")
        assert out.returncode == 0, out.stderr
        seen = upstream.requests[-1]
        assert seen.chunked and seen.body == payload.read_bytes()

        out = curl("-w", "%{http_code}", "-o", "/dev/null", f"{proxy.url}/_proxy/health")
        assert out.stdout == "200"
    finally:
        proxy.stop()


def test_flask_run_serves_reverse_and_forward(tmp_path: Path, upstream: UpstreamServer) -> None:
    """`flask --app wsgiproxy.app run` proxies both ways; CONNECT there is 501."""
    proxy = start_flask_run(tmp_path, PROXY_UPSTREAM=upstream.url)
    try:
        reply = request(proxy.port, "GET", "/echo/a%2Fb?q=1")
        assert reply.status == 200
        assert upstream.requests[-1].target == "/echo/a%2Fb?q=1"
        reply = request(proxy.port, "GET", f"http://127.0.0.1:{upstream.port}/echo?f=1")
        assert reply.status == 200 and upstream.requests[-1].target == "/echo?f=1"
        reply = request(proxy.port, "CONNECT", "example.com:443")
        assert reply.status == 501 and reply.header("X-Proxy-Error") == "not-implemented"
    finally:
        proxy.stop()


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_https_upstream_verified_with_ca_bundle(
    tmp_path: Path, tls_upstream: tuple[UpstreamServer, Path], worker_class: str
) -> None:
    """An HTTPS upstream signed by HTTP_CA_BUNDLE is served; its connection is reused."""
    server, ca_file = tls_upstream
    proxy = start_gunicorn(
        tmp_path, worker_class, PROXY_UPSTREAM=server.url, HTTP_CA_BUNDLE=str(ca_file)
    )
    try:
        # One client connection: each response is closed (and its upstream connection
        # released) before the next request is read, so reuse is deterministic.
        client = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            for _ in range(5):
                client.request("GET", "/echo")
                response = client.getresponse()
                assert response.status == 200 and response.read()
        finally:
            client.close()
        assert server.connections_opened == 1
    finally:
        proxy.stop()


def test_https_upstream_unknown_ca_is_502_and_verify_off_works(
    tmp_path: Path, tls_upstream: tuple[UpstreamServer, Path]
) -> None:
    """Certificates are verified by default; HTTP_TLS_VERIFY=0 turns that off."""
    server, _ = tls_upstream
    proxy = start_gunicorn(tmp_path, "gevent", PROXY_UPSTREAM=server.url)
    try:
        reply = request(proxy.port, "GET", "/echo")
        assert reply.status == 502 and reply.header("X-Proxy-Error") == "upstream-refused"
        assert b"certificate" in reply.body.lower()
        assert not server.requests
    finally:
        proxy.stop()
    proxy = start_gunicorn(tmp_path, "gevent", PROXY_UPSTREAM=server.url, HTTP_TLS_VERIFY="0")
    try:
        assert request(proxy.port, "GET", "/echo").status == 200
    finally:
        proxy.stop()


def test_bad_setting_stops_gunicorn_with_one_line(tmp_path: Path) -> None:
    """A bad value stops gunicorn before any worker boots: one line, no traceback."""
    proc = run(
        [
            str(BIN / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "--no-control-socket",
            "wsgiproxy.app:app",
        ],
        env={"HTTP_POOL_TIMEOUT": "-1", "PROXY_BIND": "127.0.0.1:1"},
        timeout=30,
    )
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines == [
        "wsgiproxy: HTTP_POOL_TIMEOUT='-1': must be a number of seconds greater than 0"
    ]


def test_bad_setting_stops_flask_run_with_one_line(tmp_path: Path) -> None:
    """`flask run` with a bad value exits non-zero naming the variable, no traceback."""
    proc = run(
        [str(BIN / "flask"), "--app", "wsgiproxy.app", "run", "--port", str(closed_port())],
        env={"PROXY_WORKER_CLASS": "eventlet"},
        timeout=30,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "PROXY_WORKER_CLASS='eventlet'" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_clients_vanishing_mid_response_leave_the_pool_idle(
    tmp_path: Path, upstream: UpstreamServer, worker_class: str
) -> None:
    """Clients that hang up mid-download do not leak upstream connections."""
    proxy = start_gunicorn(tmp_path, worker_class, PROXY_UPSTREAM=upstream.url)
    try:
        for _ in range(10):
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            conn.request("GET", "/big?size=20000000")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read(65536)
            conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            conn.close()
        wait_until(
            lambda: proxy.health()["pool"]["active"] == 0,
            15,
            "the pool to return every connection after the clients left",
        )
        wait_until(lambda: upstream.open_connections <= 1, 15, "upstream sockets to close")
        assert request(proxy.port, "GET", "/echo").status == 200
    finally:
        proxy.stop()


def test_sync_worker_class_serves(tmp_path: Path, upstream: UpstreamServer) -> None:
    """PROXY_WORKER_CLASS=sync (one request at a time) proxies and pools too."""
    proxy = start_gunicorn(tmp_path, "sync", PROXY_UPSTREAM=upstream.url)
    try:
        for _ in range(3):
            assert request(proxy.port, "GET", "/echo?sync").status == 200
        assert upstream.connections_opened == 1
        assert proxy.health()["gevent_warnings"] == []
    finally:
        proxy.stop()
