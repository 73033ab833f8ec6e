"""``pip install .`` into a fresh virtualenv, and the ``wsgiproxy`` command it installs,
run from a directory that holds no checkout: what an operator who installs the proxy gets.
Also ``python -m wsgiproxy run`` from the checkout, and what pyproject.toml declares."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.ports import closed_port
from tests.support.processes import ROOT, children, clean_env, group_alive, run, run_python
from tests.support.proxy import Proxy, start_command, wait_ready
from tests.support.reloading import reaches, served_by, write_config
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until

# Installing takes seconds from the package index, the first test pays for it.
pytestmark = pytest.mark.timeout(300)


def package_files(root: Path) -> set[str]:
    """The package's .py files, relative to the directory that holds ``wsgiproxy/``."""
    return {
        str(path.relative_to(root))
        for path in (root / "wsgiproxy").rglob("*.py")
        if "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the checkout installed as ``pip install .`` installs it.

    The install reads a copy of the checkout's files, so the build's leftovers (build/,
    *.egg-info) do not land in the checkout."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "wsgiproxy", source / "wsgiproxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    made = run([sys.executable, "-m", "venv", str(root / "venv")], timeout=120)
    assert made.returncode == 0, made.stderr
    # The versions `make` pins and the suite runs with (a constraint may not name extras).
    constraints = root / "constraints.txt"
    constraints.write_text(
        re.sub(r"\[[^\]]*\]", "", (ROOT / "requirements.txt").read_text()), encoding="utf-8"
    )
    python = root / "venv" / "bin" / "python"
    installed = run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(constraints), str(source)],
        timeout=280,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return root / "venv"


def outside(venv: Path, tmp_path: Path, *argv: str, **env: str) -> tuple[int, str, str]:
    """Run one of the venv's programs from ``tmp_path``, where no checkout is importable."""
    program, *args = argv
    result = run([str(venv / "bin" / program), *args], env={"PYTHONPATH": "", **env}, cwd=tmp_path)
    return result.returncode, result.stdout, result.stderr


def test_pip_install_gives_the_command_the_whole_package_and_runtime_deps_only(
    venv: Path, tmp_path: Path
) -> None:
    status, out, err = outside(venv, tmp_path, "wsgiproxy", "--version")
    assert (status, out, err) == (0, f"wsgiproxy {version()}\n", "")

    code = (
        "import importlib.util, pathlib, wsgiproxy\n"
        "print(pathlib.Path(wsgiproxy.__file__).parent.parent)\n"
        "print(importlib.util.find_spec('pytest') is None)\n"
    )
    status, out, err = outside(venv, tmp_path, "python", "-c", code)
    assert status == 0, err
    site, no_pytest = out.split()
    # The installed copy, not the checkout, and every module of it (none left behind by
    # the package list), the gunicorn config file included.
    assert Path(site).is_relative_to(venv), site
    assert package_files(Path(site)) == package_files(ROOT)
    assert no_pytest == "True", "the tests' dependencies were installed with the proxy"

    status, out, err = outside(venv, tmp_path, "python", "-m", "pip", "check")
    assert status == 0, out + err


def test_check_answers_as_python_m_wsgiproxy_does_and_run_refuses_the_same(
    venv: Path, tmp_path: Path, upstream: UpstreamServer
) -> None:
    """The installed ``wsgiproxy check`` says what the checkout's ``python -m wsgiproxy
    check`` says, word for word, on a good configuration and on a bad file; ``wsgiproxy
    run`` refuses the bad file with the same line and status, before serving anything."""
    config = tmp_path / "proxy.toml"
    for text in (f'PROXY_UPSTREAM = "{upstream.url}"\n', 'PROXY_UPSTREAM = "ftp://x"\n'):
        config.write_text(text)
        env = {"PROXY_CONFIG": str(config)}
        installed = outside(venv, tmp_path, "wsgiproxy", "check", **env)
        checkout = run_python("-m", "wsgiproxy", "check", env=env)
        assert installed == (checkout.returncode, checkout.stdout, checkout.stderr)
    assert installed[0] == 2 and "PROXY_UPSTREAM='ftp://x'" in installed[2]
    assert outside(venv, tmp_path, "wsgiproxy", "run", **env) == installed


def test_run_serves_with_the_settings_reloads_on_hup_and_stops_on_term(
    venv: Path, tmp_path: Path, upstream: UpstreamServer
) -> None:
    """``wsgiproxy run`` reads the environment and PROXY_CONFIG as gunicorn.conf.py does,
    re-reads the file on HUP, answers ``wsgiproxy status``, and stops cleanly on TERM."""
    config = tmp_path / "proxy.toml"
    write_config(config, PROXY_UPSTREAM=f"{upstream.url}/echo/first")
    proxy = start_command(
        tmp_path,
        [str(venv / "bin" / "wsgiproxy"), "run"],
        cwd=tmp_path,
        PYTHONPATH="",
        PROXY_CONFIG=str(config),
        PROXY_WORKERS="2",
    )
    try:
        assert served_by(proxy) == "/echo/first"
        assert "wsgiproxy: configuration" not in proxy.log()  # said on reload only
        status, out, err = outside(venv, tmp_path, "wsgiproxy", "status", proxy.url)
        assert status == 0 and re.match(r"status\s+ok\s+worker pid \d+", out), out + err

        write_config(config, PROXY_UPSTREAM=f"{upstream.url}/echo/second")
        assert proxy.proc is not None
        os.kill(proxy.proc.pid, signal.SIGHUP)
        wait_until(lambda: reaches(proxy, "/echo/second"), 30, "the reloaded upstream to serve")
        assert "wsgiproxy: configuration reloaded (1 route, 1 server)" in proxy.log()
    finally:
        proxy.stop()
    assert proxy.proc.returncode == 0, proxy.log()[-3000:]
    assert "Shutting down: Master" in proxy.log()


def test_python_m_wsgiproxy_run_from_the_checkout(tmp_path: Path, upstream: UpstreamServer) -> None:
    """The same command without installing; a gunicorn option after ``run`` wins over the
    file (here the access log, which the settings leave on)."""
    proxy = start_command(
        tmp_path,
        [sys.executable, "-m", "wsgiproxy", "run", "--access-logfile", str(tmp_path / "acc")],
        PROXY_UPSTREAM=f"{upstream.url}/echo",
    )
    try:
        assert served_by(proxy) == "/echo"
        wait_until(
            lambda: '"GET /x HTTP/1.1" 200' in (tmp_path / "acc").read_text(),
            10,
            "the request in the access log named on the command line",
        )
    finally:
        proxy.stop()
    assert proxy.proc is not None and proxy.proc.returncode == 0, proxy.log()[-3000:]


def test_usr2_re_executes_the_same_command(tmp_path: Path, upstream: UpstreamServer) -> None:
    """USR2 makes gunicorn run ``sys.argv`` again: the new master must be ``python -m
    wsgiproxy run`` too (the gunicorn arguments run.py parses are not left there), and
    serve once the old master has gone."""
    proxy = start_command(
        tmp_path,
        [sys.executable, "-m", "wsgiproxy", "run"],
        by_address=True,
        PROXY_UPSTREAM=f"{upstream.url}/echo",
    )
    assert proxy.proc is not None
    old = proxy.proc
    group = os.getpgid(old.pid)
    try:
        workers = set(children(old.pid))
        old.send_signal(signal.SIGUSR2)

        def new_master() -> int | None:
            return next((p for p in children(old.pid) if p not in workers and children(p)), None)

        wait_until(lambda: new_master() is not None, 30, "a new master with its worker")
        fresh = new_master()
        assert fresh is not None
        argv = Path(f"/proc/{fresh}/cmdline").read_bytes().split(b"\0")
        assert argv[1:4] == [b"-m", b"wsgiproxy", b"run"], argv
        old.send_signal(signal.SIGTERM)
        assert old.wait(10) == 0
        wait_until(lambda: proxy.health()["pid"] in children(fresh), 30, "the new workers")
        assert served_by(proxy) == "/echo"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not group_alive(group), 15, "both masters to stop")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        proxy.stop()


def test_run_with_more_workers_than_proxy_workers_still_serves(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """gunicorn's -w after ``run`` wins over PROXY_WORKERS (1: a shared upstream table of
    8 worker slots). The ninth worker serves with state of its own and says so, where it
    used to fail to boot and take the whole server down with it."""
    proxy = start_command(
        tmp_path,
        [sys.executable, "-m", "wsgiproxy", "run", "-w", "9"],
        PROXY_UPSTREAM=f"{upstream.url}/echo",
        PROXY_WORKERS="1",
    )
    warning = re.compile(r"\[(\d+)\] \[WARNING\] wsgiproxy: .* has no free worker slot of 8")
    try:
        wait_until(
            lambda: warning.search(proxy.log()) is not None,
            60,
            "the ninth worker to say it has no slot of the shared table",
        )
        match = warning.search(proxy.log())
        assert match is not None
        slotless = int(match.group(1))
        # Fresh connections land on any of the nine workers: this one answers too.
        wait_until(lambda: proxy.health()["pid"] == slotless, 30, "the slotless worker")
        assert served_by(proxy) == "/echo"
        assert "Worker failed to boot" not in proxy.log()
    finally:
        proxy.stop()


def test_make_run_serves_on_the_bind_it_is_given(tmp_path: Path, upstream: UpstreamServer) -> None:
    """``make run``, the README's first command, still starts gunicorn with gevent workers
    from the checkout's gunicorn.conf.py (here on a free port instead of 8080)."""
    port = closed_port()
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "-s", "run"],
            cwd=ROOT,
            # gunicorn's control socket goes under XDG_RUNTIME_DIR: not the user's own.
            env=clean_env(
                PROXY_BIND=f"127.0.0.1:{port}",
                PROXY_UPSTREAM=f"{upstream.url}/echo",
                XDG_RUNTIME_DIR=str(tmp_path),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proxy = Proxy(port, "make-run", proc, log)
    try:
        wait_ready(proxy, proc, timeout=60)
        assert served_by(proxy) == "/echo"
        assert "Using worker: gevent" in proxy.log()
    finally:
        # make, gunicorn and its workers share the group: TERM is gunicorn's graceful stop,
        # and make waits for its child before it exits.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
            left = group_alive(proc.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert not left, "a process of make run outlived it"
    assert "Shutting down: Master" in proxy.log()


def test_run_refuses_a_gunicorn_config_file_of_its_own(venv: Path, tmp_path: Path) -> None:
    """gunicorn reads one config file: another would drop every proxy setting and hook."""
    for options in (["-c", "mine.py"], ["--config=mine.py"], ["-cmine.py"]):
        status, out, err = outside(venv, tmp_path, "wsgiproxy", "run", *options)
        assert status == 2 and not out, (options, out, err)
        assert err.startswith("wsgiproxy: run reads its own gunicorn config file"), err
        assert len(err.splitlines()) == 1, err


def test_a_namesake_in_the_environment_is_refused(tmp_path: Path) -> None:
    """WSGIProxy2 (and the older WSGIProxy) install an import package named ``wsgiproxy``
    too: with one of them installed beside it the command says so instead of failing
    somewhere inside the other's files."""
    dist_info = tmp_path / "WSGIProxy2-0.5.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: WSGIProxy2\nVersion: 0.5.1\n")
    result = run_python("-m", "wsgiproxy", "check", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.startswith("wsgiproxy: WSGIProxy2 is installed in this environment")
    assert len(result.stderr.splitlines()) == 1 and not result.stdout


def test_pyproject_declares_what_requirements_txt_pins() -> None:
    """The runtime and test dependencies are declared apart, by the same names, and the
    versions `make` installs and tests satisfy what pyproject.toml asks of an install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        "runtime": [Requirement(line) for line in project["dependencies"]],
        "test": [Requirement(line) for line in project["optional-dependencies"]["test"]],
    }
    pinned: dict[str, list[Requirement]] = {"runtime": [], "test": []}
    part = "runtime"
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() == "# Tests":
            part = "test"
        elif line.strip() and not line.startswith("#"):
            pinned[part].append(Requirement(line))
    for part, requirements in declared.items():
        pins = {pin.name.lower(): pin for pin in pinned[part]}
        assert {r.name.lower() for r in requirements} == set(pins), part
        for requirement in requirements:
            pin = pins[requirement.name.lower()]
            assert requirement.extras == pin.extras, requirement
            (version,) = [spec.version for spec in pin.specifier]
            assert requirement.specifier.contains(version), (requirement, version)


def version() -> str:
    return run_python("-m", "wsgiproxy", "--version").stdout.split()[1]
