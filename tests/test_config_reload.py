"""PROXY_CONFIG under real gunicorn: ``kill -HUP`` re-reads it, a bad file is refused and
the old configuration keeps serving, the environment wins; and ``python -m wsgiproxy
check``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.client import request
from tests.support.processes import run_python
from tests.support.proxy import Proxy
from tests.support.reloading import reaches, served_by, write_config, write_text
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until

WORKER_CLASSES = ["gevent", "gthread"]
REFUSED = "reload refused, the previous configuration keeps serving"


def replaced(proxy: Proxy, before: int) -> bool:
    """True once a worker other than ``before`` answers health."""
    try:
        pid: int = proxy.health()["pid"]
    except OSError:
        return False
    return pid != before


@contextmanager
def trickle(proxy: Proxy) -> Iterator[list[str]]:
    """Requests one after another on fresh connections while the block runs; yields the
    list of what went wrong (a status other than 200, or an error), filled when it ends."""
    problems: list[str] = []
    sent = [0]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                reply = request(proxy.port, "GET", "/x", timeout=10.0)
            except OSError as exc:
                problems.append(f"request {sent[0]}: {exc!r}")
            else:
                if reply.status != 200:
                    problems.append(f"request {sent[0]}: {reply.status} {reply.body!r}")
            sent[0] += 1

    thread = threading.Thread(target=loop, name="trickle", daemon=True)
    thread.start()
    try:
        yield problems
    finally:
        stop.set()
        thread.join(15.0)
        assert not thread.is_alive(), "the trickle of requests did not end"
    assert sent[0] > 0, "no request was sent during the reload"


@pytest.fixture
def two_upstreams() -> Iterator[tuple[str, str]]:
    """Two upstreams, as PROXY_UPSTREAM values whose base paths tell them apart."""
    with UpstreamServer() as a, UpstreamServer() as b:
        yield a.url + "/echo/a", b.url + "/echo/b"


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_hup_sends_new_requests_to_the_rewritten_upstream(
    proxies: Callable[..., Proxy],
    tmp_path: Path,
    two_upstreams: tuple[str, str],
    worker_class: str,
) -> None:
    """After rewriting PROXY_CONFIG and `kill -HUP`, requests would keep going to the old
    upstream."""
    a, b = two_upstreams
    config = tmp_path / "proxy.toml"
    write_config(config, PROXY_UPSTREAM=a)
    proxy = proxies(worker_class, workers=2, PROXY_CONFIG=str(config))
    assert served_by(proxy) == "/echo/a"

    write_config(config, PROXY_UPSTREAM=b, PROXY_ROUTES=f"/only-b={b}")
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)

    def switched() -> bool:
        # An old worker may answer for a moment after the new ones started: wait until
        # a request reaches B and health shows the new route, the new workers mapping a
        # shared state table sized for two servers.
        try:
            routes = sorted(proxy.health()["upstreams"])
        except OSError:
            return False
        return routes == ["/", "/only-b"] and reaches(proxy, "/echo/b")

    wait_until(switched, 15.0, "requests to reach upstream B and the new route")
    assert "configuration reloaded (2 routes, 2 servers)" in proxy.log()
    assert REFUSED not in proxy.log()


def test_hup_while_workers_boot_changes_servers_safely(
    proxies: Callable[..., Proxy], tmp_path: Path, two_upstreams: tuple[str, str]
) -> None:
    """Two reloads in a row that change the servers would remove the shared state file
    under workers still booting: they fail to boot, and gunicorn halts the master."""
    a, b = two_upstreams
    config = tmp_path / "proxy.toml"
    write_config(config, PROXY_UPSTREAM=a)
    proxy = proxies("gevent", workers=2, PROXY_CONFIG=str(config))
    assert proxy.proc is not None
    write_config(config, PROXY_UPSTREAM=b, PROXY_ROUTES=f"/first={a}")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in proxy.log(), 10.0, "the first reload")
    write_config(config, PROXY_UPSTREAM=b, PROXY_ROUTES=f"/second={a},/third={b}")
    proxy.proc.send_signal(signal.SIGHUP)

    def settled() -> bool:
        try:
            routes = sorted(proxy.health()["upstreams"])
        except OSError:
            return False
        return routes == ["/", "/second", "/third"] and reaches(proxy, "/echo/b")

    wait_until(settled, 15.0, "the second configuration to serve")
    assert proxy.proc.poll() is None
    assert "Exception in worker process" not in proxy.log()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_no_request_fails_during_a_config_reload(
    proxies: Callable[..., Proxy],
    tmp_path: Path,
    two_upstreams: tuple[str, str],
    worker_class: str,
) -> None:
    """Requests arriving while `kill -HUP` replaces the workers would be reset or get a
    5xx instead of a 200 from the old or the new upstream."""
    a, b = two_upstreams
    config = tmp_path / "proxy.toml"
    write_config(config, PROXY_UPSTREAM=a)
    proxy = proxies(worker_class, workers=2, PROXY_CONFIG=str(config))
    write_config(config, PROXY_UPSTREAM=b)
    with trickle(proxy) as problems:
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: reaches(proxy, "/echo/b"), 15.0, "requests to reach upstream B")
    assert problems == []


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
@pytest.mark.parametrize(
    ("broken", "line"),
    [
        (
            'PROXY_UPSTREAM = "ftp://nowhere"\n',
            "PROXY_UPSTREAM='ftp://nowhere': must be an http:// or https:// URL",
        ),
        ('PROXY_UPSTREAM = "http://127.0.0.1:1\n', "not valid TOML: "),
    ],
    ids=["bad-value", "bad-toml"],
)
def test_bad_file_on_hup_is_refused_and_the_old_configuration_serves(
    proxies: Callable[..., Proxy],
    tmp_path: Path,
    two_upstreams: tuple[str, str],
    worker_class: str,
    broken: str,
    line: str,
) -> None:
    """A PROXY_CONFIG rewritten wrong before `kill -HUP` would stop the master, or start
    workers that fail, instead of one log line and the previous configuration."""
    a, _ = two_upstreams
    config = tmp_path / "proxy.toml"
    write_config(config, PROXY_UPSTREAM=a)
    proxy = proxies(worker_class, PROXY_CONFIG=str(config))
    before = proxy.health()["pid"]

    write_text(config, broken)
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)
    # gunicorn replaces the workers even so: the new ones run the previous configuration.
    wait_until(lambda: replaced(proxy, before), 15.0, "a new worker after the HUP")

    refused = [row for row in proxy.log().splitlines() if REFUSED in row]
    assert len(refused) == 1, proxy.log()
    assert f"PROXY_CONFIG='{config}': {line}" in refused[0]
    assert proxy.proc.poll() is None
    assert served_by(proxy) == "/echo/a"
    assert request(proxy.port, "GET", "/_proxy/health").status == 200


def test_environment_wins_over_the_file(
    proxies: Callable[..., Proxy], tmp_path: Path, two_upstreams: tuple[str, str]
) -> None:
    """A variable set in the environment would be overridden by PROXY_CONFIG's value."""
    a, b = two_upstreams
    config = tmp_path / "proxy.toml"
    write_config(config, PROXY_UPSTREAM=b, PROXY_ADMIN_PREFIX="/_admin")
    proxy = proxies("gevent", PROXY_CONFIG=str(config), PROXY_UPSTREAM=a)
    assert served_by(proxy) == "/echo/a"
    # What the environment leaves unset still comes from the file.
    assert request(proxy.port, "GET", "/_admin/health").status == 200


def test_bad_file_stops_start_up_with_one_line_each(tmp_path: Path) -> None:
    """A bad PROXY_CONFIG at start would start workers that fail in a loop, or print a
    traceback, instead of a line per problem and status 2."""
    config = tmp_path / "proxy.toml"
    write_text(config, 'PROXY_WORKERS = 0\nPROXY_UPSTREM = "http://a"\n')
    proc = run_python(
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "--no-control-socket",
        "wsgiproxy.app:app",
        env={"PROXY_CONFIG": str(config), "PROXY_BIND": "127.0.0.1:1"},
        timeout=30.0,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"wsgiproxy: PROXY_CONFIG='{config}': PROXY_UPSTREM: not a setting (did you mean"
        " PROXY_UPSTREAM?); the keys are the environment variables of the README",
        f"wsgiproxy: PROXY_CONFIG='{config}': PROXY_WORKERS='0': must be a whole number"
        " greater than 0",
    ]


# --- python -m wsgiproxy check ---------------------------------------------------------


def test_check_accepts_a_good_configuration(tmp_path: Path) -> None:
    """`python -m wsgiproxy check` would refuse a configuration the proxy starts with."""
    config = tmp_path / "proxy.toml"
    write_config(
        config,
        PROXY_ROUTES="/api=http://10.0.0.5:8000 http://10.0.0.6:8000,/static=http://10.0.0.7",
        PROXY_WORKERS=2,
        PROXY_PRESERVE_HOST=True,
    )
    proc = run_python(
        "-m",
        "wsgiproxy",
        "check",
        env={"PROXY_CONFIG": str(config), "PROXY_UPSTREAM": "http://10.0.0.8"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        f"wsgiproxy: configuration OK (3 routes, 4 servers) from the environment and"
        f" PROXY_CONFIG='{config}'\n"
    )
    assert proc.stderr == ""


def test_check_without_a_file_validates_the_environment() -> None:
    """`check` would need a PROXY_CONFIG file to be of use."""
    proc = run_python("-m", "wsgiproxy", "check", env={"PROXY_UPSTREAM": "http://10.0.0.8"})
    assert (proc.returncode, proc.stdout) == (
        0,
        "wsgiproxy: configuration OK (1 route, 1 server)\n",
    )


def test_check_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    """`check` would hide problems a start-up or a reload then trips over."""
    config = tmp_path / "proxy.toml"
    write_text(config, 'PROXY_FORWARD = 1\nHTTP_READ_TIMEOUT = "soon"\n[pool]\nsize = 3\n')
    proc = run_python(
        "-m",
        "wsgiproxy",
        "check",
        env={"PROXY_CONFIG": str(config), "PROXY_MAX_BODY": "-1"},
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    label = f"PROXY_CONFIG='{config}'"
    assert proc.stderr.splitlines() == [
        f"wsgiproxy: {label}: PROXY_FORWARD = 1: must be true, false or a string, not an integer",
        f"wsgiproxy: {label}: [pool]: a table; settings are top-level KEY = value pairs",
        "wsgiproxy: PROXY_MAX_BODY='-1': must be a whole number, 0 or greater",
        f"wsgiproxy: {label}: HTTP_READ_TIMEOUT='soon': must be a number of seconds greater than 0",
    ]


def test_check_refuses_arguments() -> None:
    """`check FILE` would look like it checked FILE while reading PROXY_CONFIG."""
    proc = run_python("-m", "wsgiproxy", "check", "proxy.toml")
    assert proc.returncode == 2
    assert proc.stderr == "wsgiproxy: check takes no arguments, got 'proxy.toml'\n"


def test_usage_names_check(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m wsgiproxy --help` would not say that `check` exists."""
    from wsgiproxy.__main__ import main

    assert main(["--help"]) == 0
    assert "  check " in capsys.readouterr().out
