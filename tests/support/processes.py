"""Child processes: the environment they get, how one is run to its end, how a server
is stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The repository: every child runs from here, as `make test` does.
ROOT = Path(__file__).resolve().parent.parent.parent
#: The virtualenv's scripts (gunicorn, flask), beside the interpreter running the tests.
BIN = Path(sys.executable).parent


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


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    check: bool = False,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end from ``cwd`` (the repository unless told) with a clean
    environment (plus ``env``), bounded by ``timeout``; its output is captured as text."""
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def run_python(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter given ``args`` (``"-c", code`` or ``"-m", module, ...``), run as
    :func:`run` runs a command: for what must not happen in the pytest process (gevent's
    patching, a clean import, a real start-up)."""
    return run([sys.executable, *args], env=env, timeout=timeout, check=check)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
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


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (none once it is gone)."""
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(child) for child in text.split()]
    return []


def group_alive(group: int) -> bool:
    """True while any process of the process group ``group`` exists (zombies included)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
