"""PROXY_CONFIG without gunicorn: TOML types, unknown keys, tables, the environment's
precedence, the workers' snapshot, and what the master keeps across reloads."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from wsgiproxy.config_file import Kind, layer
from wsgiproxy.master import Master
from wsgiproxy.settings import (
    SNAPSHOT_ENV,
    VARIABLES,
    ConfigError,
    Settings,
    load_settings,
    read_environment,
)
from wsgiproxy.upstreams import shared


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "proxy.toml"


def label(path: Path) -> str:
    return f"PROXY_CONFIG='{path}'"


def from_file(path: Path, text: str, **env: str) -> Settings:
    path.write_text(text)
    return Settings.from_env({"PROXY_CONFIG": str(path), **env})


def problems(path: Path, text: str, **env: str) -> list[str]:
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PROXY_CONFIG": str(path), **env})
    return info.value.lines


# --- values and their TOML types --------------------------------------------------------


def test_toml_types_reach_the_same_parsers(config: Path) -> None:
    """A TOML integer, float or boolean would be refused, or read otherwise than the same
    value written in the environment."""
    s = from_file(
        config,
        "PROXY_WORKERS = 3\n"
        "HTTP_READ_TIMEOUT = 2.5\n"
        "HTTP_CONNECT_TIMEOUT = 4\n"
        "PROXY_PRESERVE_HOST = true\n"
        "PROXY_FORWARD = false\n"
        "PROXY_CONNECT_PORTS = 8443\n"
        'PROXY_UPSTREAM = "http://10.0.0.5:8000 http://10.0.0.6:8000 backup"\n'
        'PROXY_ALLOW_HOSTS = "*.example.com"\n',
    )
    assert s.server.workers == 3
    assert s.timeouts.read == 2.5
    assert s.timeouts.connect == 4.0
    assert s.requests.preserve_host is True
    assert s.forward.enabled is False
    assert s.forward.connect_ports == frozenset({8443})
    assert s.requests.upstream is not None and len(s.requests.upstream) == 2
    assert s.requests.upstream[1].backup is True
    assert s == Settings.from_env(
        {
            "PROXY_WORKERS": "3",
            "HTTP_READ_TIMEOUT": "2.5",
            "HTTP_CONNECT_TIMEOUT": "4",
            "PROXY_PRESERVE_HOST": "1",
            "PROXY_FORWARD": "0",
            "PROXY_CONNECT_PORTS": "8443",
            "PROXY_UPSTREAM": "http://10.0.0.5:8000 http://10.0.0.6:8000 backup",
            "PROXY_ALLOW_HOSTS": "*.example.com",
        }
    )


def test_strings_are_taken_as_the_environment_would(config: Path) -> None:
    """A value quoted in the file (as copied from an env file) would be refused."""
    s = from_file(config, 'PROXY_WORKERS = "2"\nPROXY_FORWARD = "no"\nHTTP_POOL_TIMEOUT = "1.5"\n')
    assert (s.server.workers, s.forward.enabled, s.timeouts.pool) == (2, False, 1.5)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "PROXY_WORKERS = true",
            "PROXY_WORKERS = true: must be an integer or a string, not a boolean",
        ),
        ("PROXY_WORKERS = 2.0", "PROXY_WORKERS = 2.0: must be an integer or a string, not a float"),
        ("PROXY_FORWARD = 1", "PROXY_FORWARD = 1: must be true, false or a string, not an integer"),
        ("PROXY_UPSTREAM = 80", "PROXY_UPSTREAM = 80: must be a string, not an integer"),
        (
            "HTTP_READ_TIMEOUT = false",
            "HTTP_READ_TIMEOUT = false: must be a number or a string, not a boolean",
        ),
        (
            "PROXY_BIND = 1979-05-27T07:32:00Z",
            "PROXY_BIND = 1979-05-27 07:32:00+00:00: must be a string, not a date or time",
        ),
        (
            "PROXY_CONNECT_PORTS = [443, 8443]",
            "PROXY_CONNECT_PORTS = [...]: an array; must be an integer or a string"
            " (write a list as the environment does: 'a,b')",
        ),
    ],
)
def test_wrong_toml_type_gives_one_line(config: Path, text: str, line: str) -> None:
    """A TOML type the variable cannot take would be converted silently (true -> 1
    worker) or reported without saying which file and key."""
    assert problems(config, text + "\n") == [f"{label(config)}: {line}"]


def test_bad_value_from_the_file_names_the_file(config: Path) -> None:
    """An operator told `PROXY_MAX_BODY='-1'` would look for it in the environment."""
    assert problems(config, "PROXY_MAX_BODY = -1\nHTTP_POOL_TIMEOUT = 0\n") == [
        f"{label(config)}: PROXY_MAX_BODY='-1': must be a whole number, 0 or greater",
        f"{label(config)}: HTTP_POOL_TIMEOUT='0': must be a number of seconds greater than 0",
    ]


def test_nan_and_inf_are_refused_by_the_parser(config: Path) -> None:
    """A TOML inf would disable a timeout."""
    assert problems(config, "HTTP_READ_TIMEOUT = inf\n") == [
        f"{label(config)}: HTTP_READ_TIMEOUT='inf': must be a number of seconds greater than 0"
    ]


# --- keys and structure -------------------------------------------------------------------


def test_unknown_key_is_refused_with_a_suggestion(config: Path) -> None:
    """A misspelt key would be ignored, and the setting silently left at its default."""
    assert problems(config, 'PROXY_UPSTREM = "http://a"\nTIMEOUT = 3\n') == [
        f"{label(config)}: PROXY_UPSTREM: not a setting (did you mean PROXY_UPSTREAM?);"
        " the keys are the environment variables of the README",
        f"{label(config)}: TIMEOUT: not a setting; the keys are the environment variables"
        " of the README",
    ]


def test_nested_tables_are_refused(config: Path) -> None:
    """Settings under a [table] or a dotted key would be ignored."""
    text = 'PROXY.UPSTREAM = "http://a"\n[server]\nPROXY_WORKERS = 2\n'
    assert problems(config, text) == [
        f"{label(config)}: [PROXY]: a table; settings are top-level KEY = value pairs",
        f"{label(config)}: [server]: a table; settings are top-level KEY = value pairs",
    ]


def test_the_file_cannot_name_another_file(config: Path) -> None:
    """PROXY_CONFIG inside the file would look like an include that is not followed."""
    assert problems(config, 'PROXY_CONFIG = "other.toml"\n') == [
        f"{label(config)}: PROXY_CONFIG: names this file; it can only be set in the environment"
    ]


def test_invalid_toml_is_one_line(config: Path) -> None:
    """A syntax error would print a traceback or several lines."""
    assert problems(config, 'PROXY_UPSTREAM = "http://a\nPROXY_WORKERS = 2\n') == [
        f"{label(config)}: not valid TOML: Illegal character '\\n' (at line 1, column 27)"
    ]


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    """A PROXY_CONFIG path with a typo would start the proxy with the defaults."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PROXY_CONFIG": str(missing)})
    assert info.value.lines == [f"{label(missing)}: cannot be read: No such file or directory"]


def test_file_problems_come_with_the_environments(config: Path) -> None:
    """Fixing the file would reveal a bad environment only on the next try."""
    assert problems(config, "PROXY_WORKERS = true\n", HTTP_POOL_TIMEOUT="x") == [
        f"{label(config)}: PROXY_WORKERS = true: must be an integer or a string, not a boolean",
        "HTTP_POOL_TIMEOUT='x': must be a number of seconds greater than 0",
    ]


def test_empty_proxy_config_means_no_file() -> None:
    """PROXY_CONFIG='' (a blank line in an env file) would be read as a path."""
    assert Settings.from_env({"PROXY_CONFIG": " "}) == Settings.from_env({})


# --- the environment wins -----------------------------------------------------------------


def test_environment_wins_over_the_file(config: Path) -> None:
    """A variable set in the environment would be overridden by the file."""
    s = from_file(
        config,
        'PROXY_UPSTREAM = "http://file:8000"\nPROXY_WORKERS = 4\n',
        PROXY_UPSTREAM="http://env:8000",
    )
    assert s.requests.upstream is not None
    assert s.requests.upstream[0].url.host == "env"
    assert s.server.workers == 4  # not in the environment: the file's


def test_blank_environment_value_leaves_the_files(config: Path) -> None:
    """`PROXY_UPSTREAM=` in an env file would blank out the file's upstream."""
    s = from_file(config, 'PROXY_UPSTREAM = "http://file:8000"\n', PROXY_UPSTREAM="")
    assert s.requests.upstream is not None


def test_empty_access_log_in_the_environment_still_turns_it_off(config: Path) -> None:
    """PROXY_ACCESS_LOG='' in the environment (access log off) would lose to the file."""
    s = from_file(config, 'PROXY_ACCESS_LOG = "/var/log/proxy.log"\n', PROXY_ACCESS_LOG="")
    assert s.server.access_log is None


def test_bad_environment_value_is_reported_as_the_environments(config: Path) -> None:
    """A bad value in the environment would be blamed on the file it overrides."""
    assert problems(config, "PROXY_WORKERS = 2\n", PROXY_WORKERS="0") == [
        "PROXY_WORKERS='0': must be a whole number greater than 0"
    ]


def test_wrong_type_in_the_file_is_reported_even_when_the_environment_wins(
    config: Path,
) -> None:
    """A broken file hidden by the environment would break once the variable is unset."""
    assert problems(config, "PROXY_WORKERS = true\n", PROXY_WORKERS="2") == [
        f"{label(config)}: PROXY_WORKERS = true: must be an integer or a string, not a boolean"
    ]


def test_layer_lists_what_came_from_the_file(config: Path) -> None:
    """The master's snapshot would miss the file's values, or blame the wrong source."""
    config.write_text('PROXY_BIND = "0.0.0.0:80"\nPROXY_WORKERS = 2\n')
    kinds = {"PROXY_BIND": Kind.TEXT, "PROXY_WORKERS": Kind.INT}
    layered = layer({"PROXY_CONFIG": str(config), "PROXY_WORKERS": "3", "OTHER": "x"}, kinds)
    assert layered.values == {"PROXY_BIND": "0.0.0.0:80", "PROXY_WORKERS": "3"}
    assert layered.from_file == frozenset({"PROXY_BIND"})
    assert layered.problems == ()


# --- every variable, and the workers' snapshot ---------------------------------------------


class _Recording(dict[str, str]):
    """A mapping that notes every name looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


def test_variables_lists_exactly_what_settings_read() -> None:
    """A new variable missing from VARIABLES would be refused in PROXY_CONFIG as unknown,
    and left out of the workers' snapshot."""
    from wsgiproxy.settings import _Reader

    recording = _Recording()
    Settings._parse(_Reader(recording))
    assert recording.asked == set(VARIABLES)


def test_workers_read_the_snapshot_not_the_file(config: Path) -> None:
    """A worker would read a PROXY_CONFIG rewritten (unvalidated) after the master
    checked it."""
    config.write_text('PROXY_UPSTREAM = "http://validated:8000"\n')
    effective = read_environment({"PROXY_CONFIG": str(config)})
    config.write_text('PROXY_UPSTREAM = "ftp://broken"\n')
    s = load_settings({"PROXY_CONFIG": str(config), SNAPSHOT_ENV: effective.snapshot()})
    assert s == effective.settings
    assert s.requests.upstream is not None
    assert s.requests.upstream[0].url.host == "validated"


def test_bad_snapshot_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A snapshot that is not the master's would fail with a traceback in every worker."""
    with pytest.raises(SystemExit) as info:
        load_settings({SNAPSHOT_ENV: "[1, 2]"})
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        f"wsgiproxy: {SNAPSHOT_ENV}: not the settings snapshot a wsgiproxy gunicorn master writes\n"
    )


# --- the master across reloads ---------------------------------------------------------------


@pytest.fixture
def master_env(tmp_path: Path, config: Path) -> Iterator[dict[str, str]]:
    config.write_text('PROXY_UPSTREAM = "http://10.0.0.5:8000"\n')
    yield {"PROXY_CONFIG": str(config), "PROXY_WORKERS": "2"}


@pytest.fixture
def master(master_env: dict[str, str]) -> Iterator[Master]:
    made = Master(master_env)
    try:
        yield made
    finally:
        made.close()


def handed_down(env: Mapping[str, str]) -> Settings:
    """What a worker forked now would read."""
    return Settings.from_env(json.loads(env[SNAPSHOT_ENV]))


def test_first_load_hands_workers_the_snapshot_and_state(
    master: Master, master_env: dict[str, str]
) -> None:
    """Workers would read the environment and file themselves, or find no shared table."""
    first = master.load()
    assert handed_down(master_env) == first.settings
    assert master_env[shared.ENV] == first.state_file
    assert os.path.getsize(first.state_file) == shared.size_for(1, 4 * 2 + 4)
    assert master_env["PROMETHEUS_MULTIPROC_DIR"] == first.metrics_dir
    assert first.own_metrics_dir


def test_first_load_with_a_bad_file_exits_2(
    config: Path, master: Master, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad file at start would start gunicorn, or stop it with a traceback."""
    config.write_text("PROXY_MAX_BODY = -1\n")
    with pytest.raises(SystemExit) as info:
        master.load()
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        f"wsgiproxy: {label(config)}: PROXY_MAX_BODY='-1': must be a whole number, 0 or greater\n"
    )
    assert master.current is None


def test_reload_with_new_servers_makes_a_new_state_file(
    config: Path, master: Master, master_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The new workers would map a table sized for the old servers (and refuse it), or
    the old file would be left behind."""
    first = master.load()
    config.write_text('PROXY_ROUTES = "/api=http://10.0.0.6:8000 http://10.0.0.7:8000"\n')
    with caplog.at_level(logging.INFO, logger="gunicorn.error"):
        second = master.load()
    assert second.state_file != first.state_file
    assert os.path.exists(first.state_file)  # old workers may still be opening it
    assert os.path.getsize(second.state_file) == shared.size_for(2, 12)
    assert master_env[shared.ENV] == second.state_file
    assert handed_down(master_env).requests.routes[0].prefix == "/api"
    assert second.metrics_dir == first.metrics_dir
    assert caplog.messages == ["wsgiproxy: configuration reloaded (1 route, 2 servers)"]
    # gunicorn's on_reload names the workers running then; the old file goes with the last.
    master.reloading([101, 102])
    master.worker_exited(101)
    assert os.path.exists(first.state_file)
    master.worker_exited(102)
    assert not os.path.exists(first.state_file)
    assert os.path.exists(second.state_file)
    shared.forget(first.state_file, 102)  # a missing file is no error


def test_replaced_state_files_are_removed_at_exit(config: Path, master: Master) -> None:
    """A master stopped before its old workers exited would leave state files behind."""
    first = master.load()
    config.write_text('PROXY_UPSTREAM = "http://10.0.0.6:8000"\n')
    second = master.load()
    master.reloading([101])
    master.close()
    assert not os.path.exists(first.state_file)
    assert not os.path.exists(second.state_file)


def test_reload_with_the_same_servers_keeps_the_state_file(config: Path, master: Master) -> None:
    """A reload that changes only a timeout would forget every ejection."""
    first = master.load()
    config.write_text('PROXY_UPSTREAM = "http://10.0.0.5:8000"\nHTTP_READ_TIMEOUT = 5\n')
    second = master.load()
    assert second.state_file == first.state_file
    assert second.settings.timeouts.read == 5.0


def test_refused_reload_keeps_everything_and_logs_one_line(
    config: Path, master: Master, master_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A bad file on HUP would stop the master, or reach the new workers."""
    first = master.load()
    before = dict(master_env)
    config.write_text('PROXY_ROUTES = "/api=http://10.0.0.6:8000"\nPROXY_MAX_BODY = -1\nX = 1\n')
    with caplog.at_level(logging.INFO, logger="gunicorn.error"):
        again = master.load()
    assert again is first
    assert master_env == before
    assert os.path.exists(first.state_file)
    assert caplog.messages == [
        "wsgiproxy: reload refused, the previous configuration keeps serving: "
        f"{label(config)}: X: not a setting; the keys are the environment variables of the"
        f" README; {label(config)}: PROXY_MAX_BODY='-1': must be a whole number, 0 or greater"
    ]


def test_metrics_dir_is_emptied_at_start_only(
    tmp_path: Path, master_env: dict[str, str], config: Path
) -> None:
    """A reload would delete the live workers' metric files (and their counts)."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "counter_1.db").write_bytes(b"stale")
    master_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    master = Master(master_env)
    try:
        first = master.load()
        assert not first.own_metrics_dir
        assert list(metrics.iterdir()) == []
        (metrics / "counter_2.db").write_bytes(b"live")
        master.load()
        assert [p.name for p in metrics.iterdir()] == ["counter_2.db"]
    finally:
        master.close()
    assert metrics.exists()  # given by the operator: not removed


def test_a_reexecuted_master_makes_its_own_metrics_dir(
    master: Master, master_env: dict[str, str]
) -> None:
    """After `kill -USR2`, the new master would empty (and at exit remove) the directory
    the old master's workers still write to."""
    first = master.load()
    inherited = dict(master_env)  # what the new master's environment holds
    successor = Master(inherited)
    try:
        second = successor.load()
        assert second.metrics_dir != first.metrics_dir
        assert second.own_metrics_dir
        assert os.path.isdir(first.metrics_dir)
    finally:
        successor.close()
