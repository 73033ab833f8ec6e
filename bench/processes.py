"""The processes a run starts, and what /proc says about them; small socket helpers."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path


def stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from the field after the command name on; None once pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _all_ppids() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = stat(int(entry))
            if st:
                out[int(entry)] = int(st[1])
    return out


def descendants(pid: int) -> list[int]:
    """pid's children, grandchildren...; pid itself excluded."""
    ppids = _all_ppids()
    kids: dict[int, list[int]] = {}
    for child, parent in ppids.items():
        kids.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _start_time(pid: int) -> str | None:
    st = stat(pid)
    return st[19] if st else None


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Processes:
    """Every process this run starts, stopped by its pid (then its leftovers by theirs)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.items: list[tuple[str, subprocess.Popen[bytes], int]] = []
        self.lock = threading.Lock()

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGINT,
        pass_fds: tuple[int, ...] = (),
    ) -> subprocess.Popen[bytes]:
        with open(self.logdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                pass_fds=pass_fds,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
            )
        with self.lock:
            self.items.append((name, proc, stop_signal))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int, grace: float = 10.0) -> None:
        if proc.poll() is not None:
            return
        leftovers = [(p, _start_time(p)) for p in descendants(proc.pid)]
        try:
            os.kill(proc.pid, sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass  # already gone
        # Workers left behind (a master killed hard): each by its own pid, if still the
        # same process (same start time).
        deadline = time.monotonic() + 3
        for pid, started in leftovers:
            while _start_time(pid) == started and started is not None:
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.05)

    def stop_one(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """Stop one process started here, with the signal it was started with."""
        with self.lock:
            sig = next((s for _, p, s in self.items if p is proc), signal.SIGINT)
        self.stop(proc, sig, grace)

    def by_pid(self, pid: int | None) -> subprocess.Popen[bytes] | None:
        """The process started here with this pid, if any."""
        with self.lock:
            return next((p for _, p, _ in self.items if p.pid == pid), None)

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        """A process stopped for good: ``stop_all`` need not stop it again."""
        with self.lock:
            self.items = [item for item in self.items if item[1] is not proc]

    def stop_all(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        # Stop in parallel: each in its own thread (still one pid each).
        threads = [
            threading.Thread(target=self._stop_quietly, args=(proc, sig)) for _, proc, sig in items
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    def _stop_quietly(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        try:
            self.stop(proc, sig)
        except Exception as exc:  # keep stopping the others
            print(f"bench: could not stop pid {proc.pid}: {exc}", file=sys.stderr)


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment less anything that would change a proxy's behaviour."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("PROXY_", "HTTP_", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"))
        and k
        not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "UPSTREAM", "UPSTREAM_CA")
        and not k.startswith("GUNICORN_")
    }
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(
    url_host: str,
    port: int,
    path: str,
    *,
    https_ctx: ssl.SSLContext | None = None,
    timeout: float = 5.0,
    proxy_abs: bool = False,
) -> tuple[int, bytes]:
    if https_ctx is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            url_host, port, timeout=timeout, context=https_ctx
        )
    else:
        conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
