"""deploy/: the alert rules, the dashboard and the systemd unit, checked with the real tools.

promtool, prometheus and systemd-analyze come from Debian's packages, installed by
``make tools`` (deploy/install-tools.sh). A test missing one runs that script itself and
skips, quoting it, only when the system package manager refuses; any other failure to
find the tool fails the test.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import gated, request
from tests.support.ports import closed_port
from tests.support.processes import ROOT, stop_process
from tests.support.proxy import Proxy, start_gunicorn
from tests.support.upstream_server import UpstreamServer
from tests.support.wait import wait_until
from wsgiproxy.metrics import Metrics

DEPLOY = ROOT / "deploy"
INSTALL = DEPLOY / "install-tools.sh"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "wsgiproxy.json"
UNIT = DEPLOY / "wsgiproxy.service"

#: Installing a package may take minutes on a fresh machine.
needs_install_time = pytest.mark.timeout(900)


@functools.cache
def _install() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(INSTALL)], cwd=ROOT, capture_output=True, text=True, timeout=850
    )


def tool(name: str) -> str:
    """The path of ``name``, installed by deploy/install-tools.sh when missing; a skip
    only when the package manager refused (its message quoted)."""
    path = shutil.which(name)
    if path is None:
        result = _install()
        path = shutil.which(name)
        if path is None and result.returncode != 0:
            pytest.skip(f"{name} missing and the system package manager refused: {result.stderr}")
        assert path is not None, f"{INSTALL} succeeded and left no {name}: {result.stderr}"
    return path


def exported_names() -> set[str]:
    """Every sample name /_proxy/metrics can carry, from the proxy's own registry:
    ``_total`` for counters, ``_bucket``/``_sum``/``_count`` for histograms. (Multiprocess
    mode exports no ``_created``.)"""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


# -- PromQL: the metric names an expression reads ------------------------------------------

_PROMQL_WORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
    ]
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()")


def promql_metrics(expr: str) -> set[str]:
    """The metric names ``expr`` selects: identifiers that are not functions, keywords,
    label names (inside ``{}``, ``by (...)``...), durations, or Grafana variables."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)
    return {name for name in _NAME.findall(text) if name not in _PROMQL_WORDS}


def test_promql_metrics_finds_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, status_class) (rate(wsgiproxy_x_bucket{a="b c",'
        ' d=~"$instance"}[$__rate_interval]))) / on (instance) group_left (route) up offset 5m'
        " and ignoring(event) count(foo:bar) > bool 1e3"
    )
    assert promql_metrics(expr) == {"wsgiproxy_x_bucket", "up", "foo:bar"}


# -- Alert rules -----------------------------------------------------------------------------


def _alert_exprs() -> list[str]:
    """The ``expr`` of every rule in alerts.yml (folded ``>-`` blocks joined)."""
    exprs: list[str] = []
    lines = ALERTS.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not match:
            continue
        indent, rest = len(match.group(1)), match.group(2)
        if rest not in (">-", ">", "|", "|-"):
            exprs.append(rest)
            continue
        block = []
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        exprs.append(" ".join(block))
    return exprs


@needs_install_time
def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    """promtool parses every rule, and each fires on the series in alerts_test.yml that
    should page and stays quiet on their look-alikes."""
    promtool = tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", ALERTS_TEST.name],
        cwd=ALERTS_TEST.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_install_time
def test_example_prometheus_config_is_valid() -> None:
    """deploy/prometheus/prometheus.yml, the one-Prometheus-over-all-instances config,
    loads with its rule file."""
    promtool = tool("promtool")
    config = DEPLOY / "prometheus" / "prometheus.yml"
    checked = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout


def test_alert_rules_read_only_metrics_the_proxy_exports() -> None:
    """A renamed metric would leave its alert silent forever: every name an alert reads
    is one the proxy exports, or ``up`` (made by Prometheus for each scrape)."""
    exprs = _alert_exprs()
    assert len(exprs) == 6
    known = exported_names() | {"up"}
    for expr in exprs:
        names = promql_metrics(expr)
        assert names, expr
        assert names <= known, (names - known, expr)
    # Every rule the issue asks for is there.
    text = ALERTS.read_text()
    for alert in (
        "WsgiproxyRouteNoServerUp",
        "WsgiproxyServerEjected",
        "WsgiproxyPoolTimeouts",
        "WsgiproxyOwn5xxRatio",
        "WsgiproxyUpstreamsUnreachable",
    ):
        assert f"alert: {alert}\n" in text


# -- Grafana dashboard ---------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, rows' nested panels included, and every
    templating query."""
    board = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []
    pending = list(board["panels"])
    while pending:
        panel = pending.pop(0)
        pending.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            found.append((f"variable {variable['name']}", inner.group(1) if inner else query))
    return found


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Grafana sends it, for one job and every instance."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$job", "wsgiproxy")
        .replace("$instance", ".*")
    )


def test_dashboard_queries_read_only_metrics_the_proxy_exports() -> None:
    """Every metric name in every panel's query (and in the variables) is one the proxy
    exports: a typo or a rename would leave a panel empty with no error."""
    known = exported_names()
    queries = dashboard_queries()
    assert len(queries) >= 20
    used: set[str] = set()
    for where, expr in queries:
        names = promql_metrics(expr)
        assert names, (where, expr)
        assert names <= known, (where, names - known)
        used |= names
    # What the dashboard is for: requests and errors by class, latency quantiles, pool
    # wait, pool connections by state, servers up and ejected, retries, open tunnels.
    assert {
        "wsgiproxy_requests_total",
        "wsgiproxy_upstream_errors_total",
        "wsgiproxy_request_duration_seconds_bucket",
        "wsgiproxy_pool_wait_seconds_bucket",
        "wsgiproxy_pool_connections",
        "wsgiproxy_upstream_up",
        "wsgiproxy_upstream_ejections_total",
        "wsgiproxy_upstream_retries_total",
        "wsgiproxy_tunnels_active",
    } <= used
    texts = [expr for _, expr in queries]
    assert any("histogram_quantile(0.99" in e and "request_duration" in e for e in texts)
    assert any("histogram_quantile" in e and "pool_wait" in e for e in texts)


def test_dashboard_is_importable_grafana_json() -> None:
    """The JSON Grafana imports: unique panel ids, every query panel on the data source
    variable and filtered to the chosen job and instances, panels that do not overlap."""
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "wsgiproxy" and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']!r} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'job="$job", instance=~"$instance"' in target["expr"], target["expr"]


# -- A real scrape -----------------------------------------------------------------------------


def scrape(proxy: Proxy) -> str:
    reply = request(proxy.port, "GET", "/_proxy/metrics")
    assert reply.status == 200, reply
    return reply.body.decode()


def sample_names(text: str) -> set[str]:
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def tunnel_once(proxy: Proxy, upstream: UpstreamServer) -> None:
    """CONNECT to the upstream and one request through the tunnel."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        target = f"127.0.0.1:{upstream.port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 200"), received
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        while chunk := sock.recv(65536):
            received += chunk
        assert b"HTTP/1.1 200" in received.split(b"\r\n\r\n", 1)[1], received


def exercise(proxy: Proxy, upstream: UpstreamServer) -> None:
    """Traffic that makes every family appear: requests of each class, a server of a
    group ejected and retried past, a pool timeout, a CONNECT tunnel."""
    for _ in range(6):
        assert request(proxy.port, "GET", "/echo/a").status == 200
    assert request(proxy.port, "POST", "/status/404", body=b"x").status == 404
    with gated(proxy.port, upstream, "hold"):
        # The only connection (HTTP_MAX_CONNECTIONS=1) is held: this one times out.
        reply = request(proxy.port, "GET", "/status/200")
        assert reply.status == 503 and reply.header("X-Proxy-Error") == "pool-timeout", reply
    tunnel_once(proxy, upstream)


@contextmanager
def exercised_proxy(proxies: Callable[..., Proxy], upstream: UpstreamServer) -> Iterator[Proxy]:
    dead = closed_port()
    proxy = proxies(
        "gevent",
        1,
        PROXY_UPSTREAM=upstream.url,
        PROXY_ROUTES=f"/echo={upstream.url} http://127.0.0.1:{dead}",
        PROXY_CONNECT_PORTS=str(upstream.port),
        HTTP_MAX_CONNECTIONS="1",
        HTTP_POOL_TIMEOUT="0.3",
    )
    exercise(proxy, upstream)
    yield proxy


@needs_install_time
def test_a_real_scrape_carries_every_family_and_promtool_finds_it_clean(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, tmp_path: Path
) -> None:
    """Real gunicorn, real traffic: the scrape holds every sample name the proxy
    defines and no other, and `promtool check metrics` has nothing to say about it."""
    promtool = tool("promtool")
    expected = exported_names()
    with exercised_proxy(proxies, upstream) as proxy:
        state: dict[str, str] = {}

        def complete() -> bool:
            state["text"] = scrape(proxy)
            return sample_names(state["text"]) == expected

        try:
            wait_until(complete, 15, "every metric family in /_proxy/metrics")
        except AssertionError:
            names = sample_names(state["text"])
            raise AssertionError(
                f"missing {sorted(expected - names)}, unknown {sorted(names - expected)}"
            ) from None
    text = state["text"]
    (tmp_path / "scrape.txt").write_text(text)
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), (
        lint.stdout + lint.stderr
    )


# -- A real Prometheus -------------------------------------------------------------------------

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def prometheus_api(port: int, path: str, **params: str) -> Any:
    """GET Prometheus's HTTP API (never through a proxy from the environment)."""
    url = f"http://127.0.0.1:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with _NO_PROXY.open(url, timeout=5) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    return body["data"]


@contextmanager
def running_prometheus(tmp_path: Path, target_port: int) -> Iterator[int]:
    """Debian's prometheus on 127.0.0.1 with its own storage, scraping
    ``127.0.0.1:target_port/_proxy/metrics`` every second and evaluating alerts.yml;
    yields its port and stops it (and its process group) after."""
    binary = tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(  # JSON is YAML
        json.dumps(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "wsgiproxy",
                        "metrics_path": "/_proxy/metrics",
                        "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                    }
                ],
            }
        )
    )
    port = closed_port()  # prometheus binds by number: a small window, fine here
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            try:
                with _NO_PROXY.open(f"http://127.0.0.1:{port}/-/ready", timeout=2) as reply:
                    return bool(reply.status == 200)
            except OSError:
                return False

        wait_until(ready, 30, "prometheus to be ready")
        yield port
    except BaseException:
        print(log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        stop_process(proc)


def query(port: int, promql: str) -> dict[str, float]:
    """An instant query: each series' labels (as text) to its value."""
    data = prometheus_api(port, "/api/v1/query", query=promql)
    return {
        ",".join(f"{k}={v}" for k, v in sorted(item["metric"].items())): float(item["value"][1])
        for item in data["result"]
    }


@needs_install_time
def test_prometheus_counts_what_was_sent(
    proxies: Callable[..., Proxy], upstream: UpstreamServer, tmp_path: Path
) -> None:
    """A real Prometheus scraping two gunicorn workers every second sees exactly the
    requests sent, by status class, and evaluates every alert rule without error."""
    proxy = proxies("gevent", 2, PROXY_UPSTREAM=upstream.url)
    sent = {"2xx": 0, "4xx": 0, "5xx": 0}
    with running_prometheus(tmp_path, proxy.port) as port:
        for index in range(40):
            assert request(proxy.port, "GET", f"/echo?i={index}").status == 200
            sent["2xx"] += 1
        for _ in range(5):
            assert request(proxy.port, "POST", "/echo", body=b"hello").status == 200
            sent["2xx"] += 1
        for _ in range(4):
            assert request(proxy.port, "GET", "/status/404").status == 404
            sent["4xx"] += 1
        for _ in range(3):
            assert request(proxy.port, "GET", "/status/503").status == 503
            sent["5xx"] += 1
        total = sum(sent.values())
        seen: dict[str, dict[str, float]] = {}

        def counted() -> bool:
            seen["total"] = query(port, 'sum(wsgiproxy_requests_total{job="wsgiproxy"})')
            return list(seen["total"].values()) == [total]

        wait_until(counted, 30, f"Prometheus to see {total} requests (saw {seen})")
        by_class = query(port, "sum by (status_class) (wsgiproxy_requests_total)")
        assert by_class == {f"status_class={k}": float(v) for k, v in sent.items()}
        by_method = query(port, "sum by (method) (wsgiproxy_requests_total)")
        assert by_method == {"method=GET": 47.0, "method=POST": 5.0}
        assert query(port, "sum(wsgiproxy_request_duration_seconds_count)") == {"": total}
        # Its own scrapes (admin requests) are not counted: still the same a scrape later.
        targets = prometheus_api(port, "/api/v1/targets")["activeTargets"]
        assert [t["health"] for t in targets] == ["up"], targets

        def rules_evaluated() -> bool:
            groups = prometheus_api(port, "/api/v1/rules")["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            seen["rules"] = {rule["name"]: rule["health"] for rule in rules}
            return len(rules) == 6 and all(rule["health"] == "ok" for rule in rules)

        wait_until(rules_evaluated, 15, f"every alert rule evaluated cleanly ({seen})")

        def scraped_again() -> bool:
            seen["scrapes"] = query(port, 'count_over_time(up{job="wsgiproxy"}[1m])')
            return list(seen["scrapes"].values())[0] >= 3

        wait_until(scraped_again, 15, f"three scrapes ({seen})")
        assert query(port, 'sum(wsgiproxy_requests_total{job="wsgiproxy"})') == {"": total}
        firing = prometheus_api(port, "/api/v1/alerts")["alerts"]
        assert [a for a in firing if a["state"] == "firing"] == []

        # Every dashboard query is PromQL this Prometheus accepts, and the first panel
        # shows the three classes sent.
        for where, expr in dashboard_queries():
            try:
                prometheus_api(port, "/api/v1/query", query=grafana_to_promql(expr))
            except urllib.error.HTTPError as error:
                raise AssertionError(f"{where}: {error.read().decode()}") from None
        first = dashboard_queries()[0][1]
        assert len(query(port, grafana_to_promql(first))) == 3, first


# -- The systemd unit --------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    """Each ``Key=value`` of the unit, in order, under its key (``Environment`` repeats)."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line.strip() and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_environment() -> dict[str, str]:
    return dict(item.split("=", 1) for item in unit_settings()["Environment"])


@needs_install_time
def test_systemd_unit_verifies_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` has nothing to say, the unit pointed at this checkout
    (it checks that ExecStart's program exists). A warning (an unknown key) fails too."""
    analyze = tool("systemd-analyze")
    here = tmp_path / "wsgiproxy.service"
    here.write_text(UNIT.read_text().replace("/opt/wsgiproxy", str(ROOT)))
    if not (ROOT / ".venv" / "bin" / "gunicorn").exists():
        pytest.fail("the unit runs .venv/bin/gunicorn: `make test` builds .venv")
    result = subprocess.run(
        [analyze, "verify", str(here)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_systemd_unit_reloads_with_hup_and_outwaits_the_graceful_stop() -> None:
    """What the issue asks of the unit, read from the file itself."""
    settings = unit_settings()
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["KillSignal"] == ["SIGTERM"]
    # SIGTERM to the master only: it stops its workers gracefully itself.
    assert settings["KillMode"] == ["mixed"]
    graceful = float(unit_environment()["PROXY_GRACEFUL_TIMEOUT"])
    assert float(settings["TimeoutStopSec"][0]) > graceful
    assert settings["Type"] == ["notify"]
    argv = settings["ExecStart"][0].split()
    assert argv[0].endswith("/.venv/bin/gunicorn") and argv[-1] == "wsgiproxy.app:app"
    assert argv[1:3] == ["-c", "gunicorn.conf.py"]


def test_gunicorn_as_the_unit_runs_it_notifies_ready_and_survives_reload(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """Type=notify: gunicorn sends READY=1 on $NOTIFY_SOCKET. ExecReload: after SIGHUP
    the master has new workers, serves throughout, and /_proxy/metrics still answers."""
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    env = {k: v for k, v in unit_environment().items() if k != "PROXY_BIND"}
    proxy = start_gunicorn(
        tmp_path, "gevent", 2, PROXY_UPSTREAM=upstream.url, NOTIFY_SOCKET=str(notify_path), **env
    )
    try:
        assert b"READY=1" in notify.recv(4096)
        assert proxy.proc is not None
        before = {proxy.health()["pid"] for _ in range(20)}
        assert request(proxy.port, "GET", "/echo").status == 200
        os.kill(proxy.proc.pid, signal.SIGHUP)

        def replaced() -> bool:
            assert request(proxy.port, "GET", "/echo").status == 200
            return not {proxy.health()["pid"] for _ in range(10)} & before

        wait_until(replaced, 30, "the workers to be replaced after SIGHUP")
        assert proxy.proc.poll() is None

        def counted() -> bool:
            reply = request(proxy.port, "GET", "/_proxy/metrics")
            assert reply.status == 200
            return b"wsgiproxy_requests_total" in reply.body

        # A scrape shows its own worker's requests at once and the others' within a
        # second (metrics.py): right after the HUP, the answering worker may have none.
        wait_until(counted, 10, "the requests counted in /_proxy/metrics after the reload")
    finally:
        notify.close()
        proxy.stop()
    assert proxy.proc.returncode == 0, proxy.log()[-3000:]
