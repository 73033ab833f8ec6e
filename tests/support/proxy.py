"""The proxy as users run it: real gunicorn on a socket the test bound, or `flask run`.

gunicorn is handed a socket the test already bound (``--bind fd://N`` with
``pass_fds``), so there is no port race, and is stopped with its whole process group.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.client import request
from tests.support.ports import closed_port
from tests.support.processes import BIN, ROOT, clean_env, stop_process
from tests.support.wait import wait_until


@dataclass
class Proxy:
    """A running proxy: its port and how it was started."""

    port: int
    kind: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    stopper: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, Any]:
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


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def wait_ready(proxy: Proxy, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until the proxy answers /_proxy/health; fail at once, with its log, if it exits."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{proxy.kind} exited with {proc.returncode}:\n{proxy.log()}")
        try:
            reply = request(proxy.port, "GET", "/_proxy/health", timeout=2.0)
        except OSError:
            return False
        return reply.status in (200, 403)  # 403: admin refused to this client, yet up

    wait_until(ready, timeout, f"{proxy.kind} to answer /_proxy/health")


def _launch(
    kind: str,
    port: int,
    argv: list[str],
    log_path: Path,
    env: dict[str, str],
    listener: socket.socket | None = None,
    cwd: Path = ROOT,
) -> Proxy:
    """Start ``argv`` from ``cwd`` in its own process group, its output to ``log_path``,
    and wait for the proxy to answer on ``port``; stop it if it does not. ``listener`` is
    handed to the child and closed here once it has it."""
    try:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                pass_fds=() if listener is None else (listener.fileno(),),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    finally:
        if listener is not None:
            listener.close()
    proxy = Proxy(port, kind, proc, log_path, stopper=lambda: stop_process(proc))
    try:
        wait_ready(proxy, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proxy


def start_gunicorn(
    tmp_path: Path, worker_class: str = "gevent", workers: int = 1, **env: str
) -> Proxy:
    """Real ``gunicorn -c gunicorn.conf.py wsgiproxy.app:app`` on a pre-bound socket."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    return _launch(
        f"gunicorn-{worker_class}",
        port,
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
        tmp_path / f"gunicorn-{worker_class}-{port}.log",
        clean_env(
            PROXY_WORKER_CLASS=worker_class, PROXY_WORKERS=str(workers), PROXY_THREADS="16", **env
        ),
        listener=sock,
    )


def start_command(
    tmp_path: Path, argv: list[str], cwd: Path = ROOT, by_address: bool = False, **env: str
) -> Proxy:
    """``argv`` (``wsgiproxy run`` as installed, or ``python -m wsgiproxy run``) plus
    gunicorn options for a pre-bound socket and a short graceful stop, run from ``cwd``.

    ``by_address`` binds a free port by number instead (USR2 cannot hand an ``fd://``
    bind to the new master; a small window in which another process could take it)."""
    sock = None if by_address else bound_socket()
    port = closed_port() if sock is None else sock.getsockname()[1]
    return _launch(
        "wsgiproxy-run",
        port,
        [
            *argv,
            "--bind",
            f"127.0.0.1:{port}" if sock is None else f"fd://{sock.fileno()}",
            "--no-control-socket",
            "--graceful-timeout",
            "3",
        ],
        tmp_path / f"wsgiproxy-run-{port}.log",
        clean_env(**env),
        listener=sock,
        cwd=cwd,
    )


def start_flask_run(tmp_path: Path, **env: str) -> Proxy:
    """``flask --app wsgiproxy.app run`` (the threaded dev server) on a free port."""
    port = closed_port()  # the dev server binds by number: a small window, fine for one test
    return _launch(
        "flask-run",
        port,
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
        tmp_path / f"flask-{port}.log",
        clean_env(**env),
    )
