"""wsgiproxy/server/gunicorn.py inside real gunicorn workers (gevent and gthread).

gunicorn's parser refuses some requests before the app runs (Content-Length with
Transfer-Encoding, a bad request line, ...): the client must still get the proxy's
one-line text/plain answer tagged ``X-Proxy-Error``, never gunicorn's HTML page. And a
gunicorn other than the one the module was verified with must stop the server with one
line, not serve with internals that may have moved, nor respawn workers in a loop.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.client import raw_exchange
from tests.support.processes import ROOT, clean_env, stop_process
from tests.support.proxy import Proxy, bound_socket, start_gunicorn
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until
from wsgiproxy.server.gunicorn import VERIFIED_GUNICORN, version_mismatch


@pytest.fixture(scope="module", params=["gevent", "gthread"])
def proxy(
    request: pytest.FixtureRequest,
    module_upstream: UpstreamServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    started = start_gunicorn(
        tmp_path_factory.mktemp(f"refusals-{request.param}"),
        request.param,
        PROXY_UPSTREAM=module_upstream.url,
    )
    try:
        yield started
    finally:
        started.stop()


#: Requests gunicorn's parser refuses before the app is called: (raw bytes, status, kind).
#: Others of tests/requests/ (a bad chunk size, a bad absolute target) reach the app,
#: which answers them itself.
REFUSED = {
    "cl-and-te": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "bad-request",
    ),
    "te-and-cl": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        400,
        "bad-request",
    ),
    "bad-request-line": (b"GARBAGE\r\nHost: x\r\n\r\n", 400, "bad-request"),
    "asterisk-get": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad-request"),
    "invalid-header-name": (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nBad(Name): v\r\n\r\n",
        400,
        "bad-request",
    ),
    "two-content-lengths": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
        "bad-request",
    ),
    "control-in-header-value": (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
        400,
        "bad-request",
    ),
    "request-line-too-long": (
        b"GET /echo?" + b"q" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
        "bad-request",
    ),
    "unknown-transfer-coding": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo\r\n\r\n",
        501,
        "not-implemented",
    ),
}


def _parse(reply: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    head, sep, body = reply.partition(b"\r\n\r\n")
    assert sep, f"no complete head in {reply[:300]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.1 (\d{3}) [^\r\n]+", status_line)
    assert match, status_line
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.lower(), []).append(value.strip())
    return int(match.group(1)), headers, body


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_request_gunicorn_refuses_gets_the_proxys_one_line_answer(
    proxy: Proxy, module_upstream: UpstreamServer, case: str
) -> None:
    """A client (or its tooling) that tells the proxy's refusals apart by X-Proxy-Error
    and reads one line of text got an HTML page from gunicorn instead."""
    data, expected_status, kind = REFUSED[case]
    before = len(module_upstream.requests)
    log_before = proxy.log().count("Invalid request from ip=")
    reply = raw_exchange(proxy.port, data, timeout=5)
    status, headers, body = _parse(reply)
    assert status == expected_status, reply[:300]
    assert headers["content-type"] == ["text/plain; charset=utf-8"]
    assert headers["x-proxy-error"] == [kind]
    assert headers["connection"] == ["close"]
    assert headers["content-length"] == [str(len(body))]
    assert body.endswith(b"\n") and body.count(b"\n") == 1 and len(body) > 1, body
    assert b"<html" not in reply.lower() and b"Traceback" not in reply
    assert len(module_upstream.requests) == before
    # gunicorn logs each refusal it answers itself: this one never reached the app.
    wait_until(
        lambda: proxy.log().count("Invalid request from ip=") > log_before,
        5,
        f"gunicorn to log its refusal of {case}",
    )


def test_the_answer_names_what_gunicorn_found_wrong(proxy: Proxy) -> None:
    """The body carries gunicorn's own reason, so a client can see what to fix."""
    _, _, body = _parse(raw_exchange(proxy.port, REFUSED["bad-request-line"][0], timeout=5))
    assert body == b"Invalid Request Line 'Invalid HTTP request line: 'GARBAGE''\n"
    _, _, body = _parse(raw_exchange(proxy.port, REFUSED["invalid-header-name"][0], timeout=5))
    assert body == b"Invalid HTTP header name: 'Bad(Name)'\n"


# -- The version check, in a real gunicorn -----------------------------------------------------
FAKE_VERSION = "0.0.1"
#: Makes only the workers (after fork) see FAKE_VERSION: the master's own check passes.
FAKE_IN_WORKERS = (
    "from gunicorn.workers import base\n"
    "_init_process = base.Worker.init_process\n"
    "def init_process(self):\n"
    f"    gunicorn.__version__ = {FAKE_VERSION!r}\n"
    "    _init_process(self)\n"
    "base.Worker.init_process = init_process\n"
)
#: Makes master and workers see FAKE_VERSION, as an installed gunicorn of that version.
FAKE_EVERYWHERE = f"gunicorn.__version__ = {FAKE_VERSION!r}\n"


def _run_gunicorn(tmp_path: Path, worker_class: str, workers: int, fake: str) -> tuple[int, str]:
    """gunicorn's own entry point with the repo's gunicorn.conf.py, after ``fake``; waits
    for it to exit by itself (60 s at most) and returns its status and output."""
    sock = bound_socket()
    args = [
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "--bind",
        f"fd://{sock.fileno()}",
        "--no-control-socket",
        "--graceful-timeout",
        "3",
        "wsgiproxy.app:app",
    ]
    code = (
        "import sys, gunicorn\n"
        + fake
        + f"sys.argv = {args!r}\n"
        + "from gunicorn.app.wsgiapp import run\n"
        + "run()\n"
    )
    log_path = tmp_path / f"gunicorn-{worker_class}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=clean_env(
                PROXY_WORKER_CLASS=worker_class,
                PROXY_WORKERS=str(workers),
                PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
            ),
            pass_fds=[sock.fileno()],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sock.close()
    try:
        returncode = proc.wait(timeout=60)
    finally:
        stop_process(proc)
    return returncode, log_path.read_text(errors="replace")


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_another_gunicorn_version_stops_the_server_with_one_line(
    tmp_path: Path, worker_class: str
) -> None:
    """An upgraded gunicorn must not serve with internals that may have moved: the
    master exits by itself before forking, saying what to do."""
    returncode, output = _run_gunicorn(tmp_path, worker_class, 2, FAKE_EVERYWHERE)
    line = version_mismatch(FAKE_VERSION)
    assert line is not None and FAKE_VERSION != VERIFIED_GUNICORN
    assert returncode == 2, output
    assert output.count(line) == 1, output
    assert "Booting worker" not in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_a_worker_on_another_gunicorn_stops_the_server_without_respawning(
    tmp_path: Path, worker_class: str
) -> None:
    """Should a worker meet a gunicorn the master did not (the check in
    post_worker_init), it exits with gunicorn's boot-error status, which halts the
    master instead of respawning workers in a loop."""
    returncode, output = _run_gunicorn(tmp_path, worker_class, 1, FAKE_IN_WORKERS)
    line = version_mismatch(FAKE_VERSION)
    assert line is not None
    assert returncode == 3, output
    assert output.count(line) == 1, output
    assert output.count("Booting worker") == 1, "a worker was respawned:\n" + output
    assert "Worker failed to boot." in output, output
    assert "Traceback" not in output, output
