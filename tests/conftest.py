"""Fixtures: real loopback servers, real gunicorn, and small HTTP helpers.

Every server here binds 127.0.0.1 on a port the kernel picks, is stopped in ``finally``
and joined with a deadline. gunicorn is handed a socket the test already bound
(``--bind fd://N`` with ``pass_fds``), so there is no port race, and is stopped by pid.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.upstream_server import UpstreamServer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CURL = shutil.which("curl")
#: curl is what users drive the proxy with; `make test` installs it.
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is installed by `make test`")


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any PROXY_/HTTP_ setting, plus ``overrides``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PROXY_", "HTTP_", "FLASK_"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run curl as a user would, bounded in time, with no proxy variables inherited."""
    assert CURL is not None
    return subprocess.run(
        [CURL, "-sS", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=clean_env(),
    )


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A 127.0.0.1 port whose accept queue is full: further connects are never answered
    (the SYN is dropped), so a client's connect timeout is what ends them."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(full.getsockname())
                fillers.append(filler)
            yield int(full.getsockname()[1])
        finally:
            for filler in fillers:
                filler.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@dataclass
class Reply:
    """What a client received."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def request(
    port: int,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
    host: str = "127.0.0.1",
) -> Reply:
    """One request over a fresh connection with http.client (target sent as given)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, resp.getheaders(), data)
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes or ``timeout``; return all received."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


@dataclass
class Proxy:
    """A running proxy: its port and how it was started."""

    port: int
    kind: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    stopper: Callable[[], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, Any]:
        import json

        reply = request(self.port, "GET", "/_proxy/health")
        assert reply.status in (200, 503), reply
        return json.loads(reply.body)  # type: ignore[no-any-return]

    def settled(self, timeout: float = 10.0) -> dict[str, Any]:
        """Health once every request has finished and given its connection back.

        A client can hold its whole response before the server has called the body's
        close(), so figures read right after a reply may still show it active: wait (a
        leak shows up as this timing out)."""
        state: dict[str, Any] = {}

        def idle() -> bool:
            state.update(self.health())
            pool, leaks = state["pool"], state["leaks"]
            return pool["active"] == pool["connecting"] == 0 and leaks["in_flight"] == 0

        wait_until(idle, timeout, f"{self.kind} to finish its requests and release connections")
        return state

    def stop(self) -> None:
        if self.stopper is not None:
            self.stopper()


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a server and every process it started (its own process group).

    SIGTERM, gunicorn's graceful stop (started with a short --graceful-timeout). Not
    SIGINT/SIGQUIT: a gthread worker that gets SIGQUIT while submitting a request to its
    thread pool deadlocks on the pool's lock and outlives its master. Whatever is left
    after the deadline is killed, so no worker is ever orphaned."""
    try:
        group = os.getpgid(proc.pid)
    except ProcessLookupError:
        group = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if group is not None and group != os.getpgid(0):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def _wait_ready(proxy: Proxy, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{proxy.kind} exited with {proc.returncode}:\n{proxy.log()}")
        try:
            reply = request(proxy.port, "GET", "/_proxy/health", timeout=2.0)
        except OSError:
            return False
        return reply.status in (200, 403)  # 403: admin refused to this client, yet up

    wait_until(ready, timeout, f"{proxy.kind} to answer /_proxy/health")


def start_gunicorn(
    tmp_path: Path, worker_class: str = "gevent", workers: int = 1, **env: str
) -> Proxy:
    """Real ``gunicorn -c gunicorn.conf.py wsgiproxy.app:app`` on a pre-bound socket."""
    sock = _bound_socket()
    port = sock.getsockname()[1]
    log_path = tmp_path / f"gunicorn-{worker_class}-{port}.log"
    full_env = clean_env(
        PROXY_WORKER_CLASS=worker_class,
        PROXY_WORKERS=str(workers),
        PROXY_THREADS="16",
        **env,
    )
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "--bind",
                f"fd://{sock.fileno()}",
                "--no-control-socket",
                "--graceful-timeout",
                "3",
                "wsgiproxy.app:app",
            ],
            cwd=ROOT,
            env=full_env,
            pass_fds=[sock.fileno()],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sock.close()
    return _ready(Proxy(port, f"gunicorn-{worker_class}", proc, log_path), proc)


def _ready(proxy: Proxy, proc: subprocess.Popen[bytes]) -> Proxy:
    """Wait for a started proxy to answer; stop it if it does not."""
    proxy.stopper = lambda: _stop_process(proc)
    try:
        _wait_ready(proxy, proc)
    except BaseException:
        _stop_process(proc)
        raise
    return proxy


def start_flask_run(tmp_path: Path, **env: str) -> Proxy:
    """``flask --app wsgiproxy.app run`` (the threaded dev server) on a free port."""
    sock = _bound_socket()
    port = sock.getsockname()[1]
    sock.close()  # the dev server binds by number: a small window, fine for one smoke test
    log_path = tmp_path / f"flask-{port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                str(BIN / "flask"),
                "--app",
                "wsgiproxy.app",
                "run",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--no-reload",
                "--no-debugger",
            ],
            cwd=ROOT,
            env=clean_env(**env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return _ready(Proxy(port, "flask-run", proc, log_path), proc)


def serve_in_thread(app: Any) -> Proxy:
    """Serve a WSGI app in this process with werkzeug's threaded server (for fast tests)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-proxy", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(10)
        assert not thread.is_alive(), "test proxy thread did not stop"

    return Proxy(server.server_port, "in-process", stopper=stop)


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    """A fresh instrumented upstream on 127.0.0.1."""
    server = UpstreamServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[UpstreamServer]:
    """One instrumented upstream shared by a module's tests (and its proxies)."""
    server = UpstreamServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_upstream(ca: trustme.CA, tmp_path: Path) -> Iterator[tuple[UpstreamServer, Path]]:
    """An HTTPS upstream whose certificate is signed by the test CA; yields (server, CA file)."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = UpstreamServer(ssl_context=context).start()
    try:
        yield server, ca_file
    finally:
        server.stop()


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
