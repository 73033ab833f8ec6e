"""deploy/: the alert rules, the dashboard and the systemd unit, checked with the real tools.

promtool, prometheus and systemd-analyze come from Debian's packages, installed by
``make tools`` (deploy/install-tools.sh). A test missing one runs that script itself and
skips, quoting it, only when the system package manager refuses; any other failure to
find the tool fails the test.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

import pytest

from tests.support.processes import ROOT
from wsgiproxy.metrics import Metrics

DEPLOY = ROOT / "deploy"
INSTALL = DEPLOY / "install-tools.sh"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"

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
