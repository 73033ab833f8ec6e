"""Reloads and stops lose nothing, under real gunicorn (gevent and gthread) and real sockets.

What counts as lost is the load client's rule (tests/support/load.py): a request
written whose response never completes, or a status other than 200. A connection the
server closed before the client wrote on it, or a response saying ``Connection:
close``, is what a real client handles by reconnecting.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.client import Reply, request
from tests.support.load import CpuBurner, LoadClients
from tests.support.ports import closed_port
from tests.support.processes import BIN, children, clean_env, group_alive
from tests.support.proxy import Proxy, _launch, start_gunicorn
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until
from wsgiproxy.server import gunicorn as adapter
from wsgiproxy.server import stopping

WORKERS = ["gevent", "gthread"]
#: --graceful-timeout that tests/support/proxy.py gives gunicorn.
GRACEFUL = 3.0


def _log_problems(proxy: Proxy) -> list[str]:
    """Log lines that mean a connection was dropped or the master broke."""
    return [
        line
        for line in proxy.log().splitlines()
        if "Socket error processing request" in line or "Unhandled exception" in line
    ]


@pytest.mark.parametrize("worker_class", WORKERS)
def test_ten_hups_under_load_on_a_busy_machine_lose_nothing(
    tmp_path: Path, upstream: UpstreamServer, worker_class: str
) -> None:
    """32 keep-alive clients and 32 connection-per-request clients, 10 HUPs 1 s apart
    with a process burning CPU: every request written is answered with a 200, and
    no connect is refused (the master keeps the socket open throughout)."""
    proxy = start_gunicorn(tmp_path, worker_class, 1, PROXY_UPSTREAM=upstream.url)
    try:
        with CpuBurner(1):
            load = LoadClients(proxy.port).start()
            try:
                time.sleep(0.5)
                assert proxy.proc is not None
                master = proxy.proc.pid
                for _ in range(10):
                    proxy.proc.send_signal(signal.SIGHUP)
                    time.sleep(1.0)
                # gunicorn handles one reload at a time (boot, then drain): keep the load
                # on until the last one is over.
                wait_until(
                    lambda: (
                        proxy.log().count("Handling signal: hup") == 10
                        and len(children(master)) == 1
                    ),
                    45,
                    "the ten reloads to be handled and the old workers gone",
                )
            finally:
                report = load.stop()
        assert not report.lost, report.summary()
        assert report.refused == 0, report.summary()
        assert report.completed > 500, report.summary()
        assert report.closes_announced > 0, report.summary()
        assert not _log_problems(proxy), _log_problems(proxy)
    finally:
        proxy.stop()


def _open_tunnel(port: int, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _connect_outcome(port: int) -> str:
    """'refused', or 'answered' when a request on a new connection got a whole response
    (any status), or 'left' when it was accepted and never answered."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        try:
            sock.sendall(b"GET /_proxy/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            return "left"
        return "answered" if data.startswith(b"HTTP/1.1 ") else "left"


@pytest.mark.parametrize("worker_class", WORKERS)
def test_term_finishes_requests_in_flight_refuses_new_ones_and_closes_tunnels(
    tmp_path: Path, upstream: UpstreamServer, worker_class: str
) -> None:
    """TERM with four requests waiting on a slow upstream and a tunnel open: the four
    complete with 200, new connections are refused (never accepted and left), the tunnel
    is closed, and gunicorn exits 0 within the graceful timeout."""
    proxy = start_gunicorn(
        tmp_path,
        worker_class,
        2,
        PROXY_UPSTREAM=upstream.url,
        PROXY_CONNECT_PORTS=str(upstream.port),
        PROXY_TUNNEL_IDLE_TIMEOUT="60",
    )
    try:
        assert proxy.proc is not None
        tunnel = _open_tunnel(proxy.port, f"127.0.0.1:{upstream.port}")
        replies: list[Reply | BaseException] = []

        def slow() -> None:
            try:
                replies.append(request(proxy.port, "GET", "/slow?delay=1.5", timeout=10))
            except BaseException as exc:  # reported by the assertion below
                replies.append(exc)

        threads = [threading.Thread(target=slow) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(
            lambda: sum(r.target.startswith("/slow") for r in upstream.requests) == 4,
            10,
            "the four slow requests to reach the upstream",
        )
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        outcomes: list[str] = []
        while time.monotonic() - started < 1.0 or outcomes[-1] != "refused":
            outcomes.append(_connect_outcome(proxy.port))
            assert time.monotonic() - started < GRACEFUL, outcomes
            time.sleep(0.05)
        assert "left" not in outcomes, outcomes
        for thread in threads:
            thread.join(10)
        assert [getattr(r, "status", r) for r in replies] == [200] * 4
        with tunnel:
            tunnel.settimeout(GRACEFUL + 2)
            assert tunnel.recv(1) == b""  # closed by the stopping worker
        returncode = proxy.proc.wait(GRACEFUL + 2)
        elapsed = time.monotonic() - started
        assert returncode == 0, proxy.log()
        assert elapsed < GRACEFUL + 0.5, elapsed
        assert "Socket error processing request" not in proxy.log()
    finally:
        proxy.stop()


def _start_on_port(tmp_path: Path, worker_class: str, workers: int, **env: str) -> Proxy:
    """gunicorn as ``start_gunicorn`` starts it, but bound to a free port by address (a
    small window in which another process could take the port: fine for one test)."""
    port = closed_port()
    return _launch(
        f"gunicorn-{worker_class}",
        port,
        [
            str(BIN / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--no-control-socket",
            "--graceful-timeout",
            str(int(GRACEFUL)),
            "wsgiproxy.app:app",
        ],
        tmp_path / f"gunicorn-{worker_class}-{port}.log",
        clean_env(
            PROXY_WORKER_CLASS=worker_class, PROXY_WORKERS=str(workers), PROXY_THREADS="16", **env
        ),
    )


@pytest.mark.parametrize("worker_class", WORKERS)
def test_usr2_then_term_of_the_old_master_loses_nothing(
    tmp_path: Path, upstream: UpstreamServer, worker_class: str
) -> None:
    """USR2 starts a new master on the same socket (gunicorn hands it over in
    GUNICORN_FD); TERM to the old one then loses nothing.

    Bound by address, not ``fd://``: gunicorn 27's new master re-reads ``--bind
    fd://N`` and fails on N, which the old master closed once it had its own copy
    (``BaseSocket.__init__``), so USR2 cannot work with an fd:// bind.
    """
    proxy = _start_on_port(tmp_path, worker_class, 2, PROXY_UPSTREAM=upstream.url)
    assert proxy.proc is not None
    old = proxy.proc
    group = os.getpgid(old.pid)
    try:
        load = LoadClients(proxy.port, keepalive=16, per_request=16).start()
        try:
            time.sleep(0.5)
            workers = set(children(old.pid))
            old.send_signal(signal.SIGUSR2)

            def new_master() -> int | None:
                masters = [pid for pid in children(old.pid) if pid not in workers]
                return next((pid for pid in masters if len(children(pid)) >= 2), None)

            wait_until(lambda: new_master() is not None, 15, "a new master with its workers")
            fresh = new_master()
            assert fresh is not None

            def new_workers_serve() -> bool:
                answer = request(proxy.port, "GET", "/_proxy/health", timeout=5)
                return int(json.loads(answer.body)["pid"]) in children(fresh)

            wait_until(new_workers_serve, 15, "the new master's workers to serve")
            old.send_signal(signal.SIGTERM)
            assert old.wait(GRACEFUL + 2) == 0
            assert request(proxy.port, "GET", "/echo").status == 200
        finally:
            report = load.stop()
        assert not report.lost, report.summary()
        assert report.refused == 0, report.summary()
        assert report.completed > 100, report.summary()
        assert proxy.log().count("Starting gunicorn") == 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL + 2
        while time.monotonic() < deadline and group_alive(group):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        proxy.stop()


@pytest.mark.parametrize("worker_class", WORKERS)
def test_max_requests_under_load_replaces_workers_and_loses_nothing(
    tmp_path: Path, upstream: UpstreamServer, worker_class: str
) -> None:
    """PROXY_MAX_REQUESTS=300 under load: workers are replaced again and again, and no
    request is lost or refused."""
    proxy = start_gunicorn(
        tmp_path, worker_class, 2, PROXY_UPSTREAM=upstream.url, PROXY_MAX_REQUESTS="300"
    )
    try:
        with LoadClients(proxy.port, keepalive=16, per_request=16) as load:
            wait_until(
                lambda: proxy.log().count("Booting worker") >= 6,
                20,
                "four workers to be replaced after their max requests",
            )
        report = load.report
        assert not report.lost, report.summary()
        assert report.refused == 0, report.summary()
        assert proxy.log().count("Autorestarting worker") >= 4
        assert not _log_problems(proxy), _log_problems(proxy)
    finally:
        proxy.stop()


# -- The master's wait for new workers, without gunicorn ------------------------------------
class _FakeTmp:
    def __init__(self) -> None:
        self.mtime = 1_700_000_000.0

    def last_update(self) -> float:
        return self.mtime


def _fake_arbiter(ages: list[int]) -> Any:
    workers = {1000 + age: SimpleNamespace(age=age, tmp=_FakeTmp()) for age in ages}
    arbiter = SimpleNamespace(WORKERS=workers, num_workers=2, killed=[])
    import queue

    arbiter.SIG_QUEUE = queue.SimpleQueue()
    arbiter.reap_workers = lambda: None
    return arbiter


def _old_killer(arbiter: Any) -> None:
    """gunicorn's manage_workers, reduced to stopping the oldest extra workers."""
    while len(arbiter.WORKERS) > arbiter.num_workers:
        pid = min(arbiter.WORKERS, key=lambda p: arbiter.WORKERS[p].age)
        arbiter.killed.append(arbiter.WORKERS.pop(pid).age)


def test_old_workers_are_stopped_only_once_new_ones_heartbeat() -> None:
    arbiter = _fake_arbiter([1, 2, 3, 4])
    manage = stopping._manage_workers_after_ready(_old_killer)
    young = [arbiter.WORKERS[1003], arbiter.WORKERS[1004]]

    def heartbeat() -> None:
        time.sleep(0.3)
        for worker in young:
            worker.tmp.mtime = 1234.5  # WorkerTmp.notify writes time.monotonic()

    beater = threading.Thread(target=heartbeat)
    started = time.monotonic()
    assert not any(stopping._ready(w) for w in young)  # the master notes their start
    beater.start()
    manage(arbiter)
    beater.join()
    assert time.monotonic() - started >= 0.3
    assert arbiter.killed == [1, 2]


def test_a_stop_signal_cuts_the_wait_short() -> None:
    arbiter = _fake_arbiter([1, 2, 3, 4])
    arbiter.SIG_QUEUE.put_nowait(signal.SIGCHLD)
    arbiter.SIG_QUEUE.put_nowait(signal.SIGTERM)
    started = time.monotonic()
    stopping._manage_workers_after_ready(_old_killer)(arbiter)
    assert time.monotonic() - started < 0.2
    assert arbiter.killed == [1, 2]
    # the signals are still there, in order, for the master's loop
    assert [arbiter.SIG_QUEUE.get_nowait() for _ in range(2)] == [signal.SIGCHLD, signal.SIGTERM]


@pytest.mark.parametrize("alive", [True, False])
def test_a_stopping_worker_answers_with_connection_close(alive: bool) -> None:
    """A request in flight when the worker begins to stop is answered with
    ``Connection: close``: the client writes its next request elsewhere."""
    stopping._worker = SimpleNamespace(alive=alive)
    try:
        req = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False)
        sent: list[bytes] = []
        sock = SimpleNamespace(
            send=lambda d: (sent.append(bytes(d)), len(d))[1], sendall=sent.append
        )
        response = adapter.CoalescingResponse(
            req, sock, SimpleNamespace(sendfile=False, is_ssl=False)
        )
        response.start_response("200 OK", [("Content-Length", "2")])
        response.write(b"ok")
        response.close()
    finally:
        stopping._worker = None
    head = b"".join(sent).split(b"\r\n\r\n")[0].lower()
    assert (b"connection: close" in head) is not alive
    assert response.should_close() is not alive
