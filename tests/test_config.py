"""Settings from the environment: defaults, parsing, one-line errors, routing helpers."""

from __future__ import annotations

import dataclasses
import os
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import run_python
from wsgiproxy.server_lists import Route, ServerSpec
from wsgiproxy.settings import BalancingSettings, ConfigError, Settings, load_settings
from wsgiproxy.values import HostPatterns, UpstreamURL

URL_HINT = "must be an http:// or https:// URL with a host, like http://10.0.0.5:8000"


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def field(s: Settings, dotted: str) -> object:
    """``field(s, "timeouts.pool")`` is ``s.timeouts.pool``."""
    value: object = s
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def problems(**env: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return info.value.lines


# --- defaults ---------------------------------------------------------------------------


def test_defaults_from_empty_environment() -> None:
    """With nothing set, the proxy would not start with the documented defaults."""
    s = Settings.from_env({})
    assert s.server.bind == "127.0.0.1:8080"
    assert s.server.workers == (os.cpu_count() or 1)
    assert s.server.worker_class == "gevent"
    assert s.server.worker_connections == 1000
    assert s.server.threads == 32
    assert s.requests.upstream is None
    assert s.requests.routes == ()
    assert s.requests.preserve_host is False
    assert s.forward.enabled is True
    assert s.forward.allow_clients == (ip_network("127.0.0.0/8"), ip_network("::1"))
    assert s.forward.allow_hosts == HostPatterns(True, frozenset(), (), ())
    assert s.requests.max_body == 0
    assert s.requests.admin_prefix == "/_proxy"
    assert s.forward.connect_ports == frozenset({443})
    assert s.forward.allow_private is False
    assert s.forward.auth_file is None
    assert s.server.log_level == "info"
    assert s.server.access_log == "-"
    assert s.pool.max_connections == 100
    assert s.pool.max_keepalive == 20
    assert s.pool.keepalive_expiry == 300.0
    assert s.timeouts.connect == 10.0
    assert s.timeouts.read == 30.0
    assert s.timeouts.write == 10.0
    assert s.timeouts.pool == 5.0
    assert s.pool.enabled is True
    assert s.health.interval == 60.0
    assert s.health.path is None
    assert s.tls.verify is True
    assert s.tls.ca_bundle is None
    assert s.balancing == BalancingSettings(
        balance="round_robin",
        fail_statuses=frozenset(),
        max_fails=1,
        fail_timeout=10.0,
        max_ejection=300.0,
        next_upstream_tries=3,
    )


def test_settings_are_frozen() -> None:
    """Code could change a setting after start-up and workers would disagree."""
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.timeouts.pool = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "attr", "default"),
    [
        ("PROXY_BIND", "server.bind", "127.0.0.1:8080"),
        ("PROXY_WORKER_CLASS", "server.worker_class", "gevent"),
        ("PROXY_THREADS", "server.threads", 32),
        ("PROXY_UPSTREAM", "requests.upstream", None),
        ("PROXY_ROUTES", "requests.routes", ()),
        ("PROXY_FORWARD", "forward.enabled", True),
        ("PROXY_CONNECT_PORTS", "forward.connect_ports", frozenset({443})),
        ("PROXY_AUTH_FILE", "forward.auth_file", None),
        ("PROXY_LOG_LEVEL", "server.log_level", "info"),
        ("HTTP_POOL_TIMEOUT", "timeouts.pool", 5.0),
        ("HTTP_HEALTH_PATH", "health.path", None),
        ("HTTP_CA_BUNDLE", "tls.ca_bundle", None),
        ("PROXY_BALANCE", "balancing.balance", "round_robin"),
        ("PROXY_FAIL_STATUSES", "balancing.fail_statuses", frozenset()),
        ("PROXY_MAX_FAILS", "balancing.max_fails", 1),
        ("PROXY_FAIL_TIMEOUT", "balancing.fail_timeout", 10.0),
        ("PROXY_MAX_EJECTION", "balancing.max_ejection", 300.0),
        ("PROXY_NEXT_UPSTREAM_TRIES", "balancing.next_upstream_tries", 3),
    ],
)
@pytest.mark.parametrize("empty", ["", "  "])
def test_empty_value_means_default(name: str, attr: str, default: object, empty: str) -> None:
    """`FOO=` in a compose file or systemd unit would stop start-up instead of using the default."""
    assert field(Settings.from_env({name: empty}), attr) == default


def test_empty_access_log_turns_it_off() -> None:
    """PROXY_ACCESS_LOG= could not switch off gunicorn's access log."""
    assert settings(PROXY_ACCESS_LOG="").server.access_log is None
    assert settings(PROXY_ACCESS_LOG="/var/log/proxy.log").server.access_log == "/var/log/proxy.log"


# --- good values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "attr", "expected"),
    [
        ("PROXY_BIND", "0.0.0.0:9000", "server.bind", "0.0.0.0:9000"),
        ("PROXY_BIND", "localhost:80", "server.bind", "localhost:80"),
        ("PROXY_BIND", "[::]:8080", "server.bind", "[::]:8080"),
        ("PROXY_BIND", "unix:/run/proxy.sock", "server.bind", "unix:/run/proxy.sock"),
        ("PROXY_BIND", "fd://3", "server.bind", "fd://3"),
        ("PROXY_WORKERS", "4", "server.workers", 4),
        ("PROXY_WORKER_CLASS", "gthread", "server.worker_class", "gthread"),
        ("PROXY_WORKER_CLASS", "SYNC", "server.worker_class", "sync"),
        ("PROXY_WORKER_CONNECTIONS", "50", "server.worker_connections", 50),
        ("PROXY_THREADS", "8", "server.threads", 8),
        ("PROXY_PRESERVE_HOST", "1", "requests.preserve_host", True),
        ("PROXY_PRESERVE_HOST", "yes", "requests.preserve_host", True),
        ("PROXY_FORWARD", "0", "forward.enabled", False),
        ("PROXY_FORWARD", "False", "forward.enabled", False),
        (
            "PROXY_ALLOW_CLIENTS",
            "10.0.0.0/8, 192.168.1.7",
            "forward.allow_clients",
            (ip_network("10.0.0.0/8"), ip_network("192.168.1.7/32")),
        ),
        (
            "PROXY_ALLOW_CLIENTS",
            "10.1.2.3/8,fd00::/8",
            "forward.allow_clients",
            (ip_network("10.0.0.0/8"), ip_network("fd00::/8")),
        ),
        ("PROXY_MAX_BODY", "1048576", "requests.max_body", 1048576),
        ("PROXY_MAX_BODY", "0", "requests.max_body", 0),
        ("PROXY_ADMIN_PREFIX", "/admin/", "requests.admin_prefix", "/admin"),
        ("PROXY_ADMIN_PREFIX", "/a/b", "requests.admin_prefix", "/a/b"),
        ("PROXY_CONNECT_PORTS", "443, 8443,443", "forward.connect_ports", frozenset({443, 8443})),
        ("PROXY_ALLOW_PRIVATE", "TRUE", "forward.allow_private", True),
        ("PROXY_LOG_LEVEL", "DEBUG", "server.log_level", "debug"),
        ("PROXY_LOG_LEVEL", "critical", "server.log_level", "critical"),
        ("HTTP_MAX_CONNECTIONS", "1", "pool.max_connections", 1),
        ("HTTP_MAX_KEEPALIVE_CONNECTIONS", "0", "pool.max_keepalive", 0),
        ("HTTP_KEEPALIVE_EXPIRY", "0", "pool.keepalive_expiry", 0.0),
        ("HTTP_KEEPALIVE_EXPIRY", "2.5", "pool.keepalive_expiry", 2.5),
        ("HTTP_CONNECT_TIMEOUT", "0.25", "timeouts.connect", 0.25),
        ("HTTP_READ_TIMEOUT", "120", "timeouts.read", 120.0),
        ("HTTP_WRITE_TIMEOUT", "1e1", "timeouts.write", 10.0),
        ("HTTP_POOL_TIMEOUT", " 0.5 ", "timeouts.pool", 0.5),
        ("HTTP_POOL_ENABLED", "0", "pool.enabled", False),
        ("HTTP_HEALTH_INTERVAL", "15", "health.interval", 15.0),
        ("HTTP_HEALTH_PATH", "/healthz", "health.path", "/healthz"),
        ("HTTP_TLS_VERIFY", "no", "tls.verify", False),
        ("PROXY_BALANCE", "least_conn", "balancing.balance", "least_conn"),
        ("PROXY_BALANCE", "Round_Robin", "balancing.balance", "round_robin"),
        (
            "PROXY_FAIL_STATUSES",
            "502, 503,504,503",
            "balancing.fail_statuses",
            frozenset({502, 503, 504}),
        ),
        ("PROXY_FAIL_STATUSES", "500,599", "balancing.fail_statuses", frozenset({500, 599})),
        ("PROXY_MAX_FAILS", "0", "balancing.max_fails", 0),
        ("PROXY_MAX_FAILS", "1000", "balancing.max_fails", 1000),
        ("PROXY_FAIL_TIMEOUT", "2.5", "balancing.fail_timeout", 2.5),
        ("PROXY_FAIL_TIMEOUT", "300", "balancing.fail_timeout", 300.0),
        ("PROXY_MAX_EJECTION", "10", "balancing.max_ejection", 10.0),
        ("PROXY_MAX_EJECTION", "3600", "balancing.max_ejection", 3600.0),
        ("PROXY_NEXT_UPSTREAM_TRIES", "1", "balancing.next_upstream_tries", 1),
        ("PROXY_NEXT_UPSTREAM_TRIES", "10", "balancing.next_upstream_tries", 10),
    ],
)
def test_good_value(name: str, value: str, attr: str, expected: object) -> None:
    """A documented value would be refused or read wrongly at start-up."""
    assert field(Settings.from_env({name: value}), attr) == expected


def test_upstream_is_parsed() -> None:
    """PROXY_UPSTREAM would send requests to the wrong host, port or base path."""
    u = settings(PROXY_UPSTREAM="http://10.0.0.5:8000/base/").requests.upstream
    url = UpstreamURL("http", "10.0.0.5", 8000, "/base", "http://10.0.0.5:8000/base/")
    assert u == (ServerSpec(url),)


def test_readable_files_are_accepted(tmp_path: Path) -> None:
    """An existing htpasswd or CA file would be refused."""
    auth = tmp_path / "htpasswd"
    auth.write_text("user:$2y$05$abc\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = settings(PROXY_AUTH_FILE=str(auth), HTTP_CA_BUNDLE=str(ca))
    assert (s.forward.auth_file, s.tls.ca_bundle) == (str(auth), str(ca))


def test_htpasswd_without_bcrypt_entries_is_refused(tmp_path: Path) -> None:
    """A plain-text or MD5 htpasswd would start, then refuse every proxy user."""
    auth = tmp_path / "htpasswd"
    auth.write_text("# users\nalice:$apr1$x$y\n")
    assert problems(PROXY_AUTH_FILE=str(auth)) == [
        f"PROXY_AUTH_FILE={str(auth)!r}: line 2 must be user:bcrypt-hash, as `htpasswd -B` "
        "writes it"
    ]
    auth.write_text("# nobody yet\n")
    assert problems(PROXY_AUTH_FILE=str(auth)) == [
        f"PROXY_AUTH_FILE={str(auth)!r}: must list at least one user:bcrypt-hash line"
    ]


def test_keepalive_is_capped_at_max_connections() -> None:
    """Lowering HTTP_MAX_CONNECTIONS below the idle limit would stop start-up."""
    s = settings(HTTP_MAX_CONNECTIONS="5", HTTP_MAX_KEEPALIVE_CONNECTIONS="20")
    assert (s.pool.max_connections, s.pool.max_keepalive) == (5, 5)
    assert settings(HTTP_MAX_CONNECTIONS="5").pool.max_keepalive == 5


# --- bad values -------------------------------------------------------------------------

SECONDS_GT0 = "must be a number of seconds greater than 0"
SECONDS_GE0 = "must be a number of seconds, 0 or greater"
INT_GT0 = "must be a whole number greater than 0"
INT_GE0 = "must be a whole number, 0 or greater"
FLAG = "must be 1 or 0 (or true/false, yes/no)"
PORT_HINT = "must have a port from 1 to 65535, like http://10.0.0.5:8000"
PREFIX_HINT = "prefix must be a path starting with '/', like /api"
CIDRS = (
    "must be a comma-separated list of IP addresses or CIDR networks,"
    " like 127.0.0.0/8,::1 (bad: {})"
)
HOSTS = (
    "must be a comma-separated list of '*', host names, '*.domain' patterns,"
    " IP addresses or CIDR networks, like *.example.com,10.0.0.0/8 (bad: {})"
)
PORTS = "must be a comma-separated list of ports from 1 to 65535, like 443,8443 (bad: {})"
ADMIN = "must be a path starting with '/', other than '/' itself, like /_proxy"
BIND = "must be HOST:PORT, [IPv6]:PORT, unix:/PATH or fd://N, like 127.0.0.1:8080"
FILE = "must be the path of an existing readable file"
NOT_4XX = (
    "must list 5xx statuses only: a 4xx is the client's error and never counts"
    " as a server failure (bad: {})"
)
STATUSES = "must be a comma-separated list of statuses from 500 to 599, like 502,503,504 (bad: {})"
MAX_FAILS = "must be a whole number from 0 to 1000 (0: never eject)"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("HTTP_POOL_TIMEOUT", "-1", SECONDS_GT0),
        ("HTTP_POOL_TIMEOUT", "0", SECONDS_GT0),
        ("HTTP_CONNECT_TIMEOUT", "nan", SECONDS_GT0),
        ("HTTP_READ_TIMEOUT", "inf", SECONDS_GT0),
        ("HTTP_WRITE_TIMEOUT", "10s", SECONDS_GT0),
        ("HTTP_HEALTH_INTERVAL", "0", SECONDS_GT0),
        ("HTTP_KEEPALIVE_EXPIRY", "-0.5", SECONDS_GE0),
        ("HTTP_KEEPALIVE_EXPIRY", "-inf", SECONDS_GE0),
        ("PROXY_WORKERS", "0", INT_GT0),
        ("PROXY_WORKERS", "2.5", INT_GT0),
        ("PROXY_WORKERS", "1_000", INT_GT0),
        ("PROXY_THREADS", "lots", INT_GT0),
        ("PROXY_WORKER_CONNECTIONS", "-5", INT_GT0),
        ("HTTP_MAX_CONNECTIONS", "0", INT_GT0),
        ("HTTP_MAX_KEEPALIVE_CONNECTIONS", "-1", INT_GE0),
        ("PROXY_MAX_BODY", "10MB", INT_GE0),
        ("PROXY_WORKER_CLASS", "eventlet", "must be one of gevent, gthread, sync"),
        ("PROXY_LOG_LEVEL", "verbose", "must be one of debug, info, warning, error, critical"),
        ("PROXY_FORWARD", "2", FLAG),
        ("PROXY_PRESERVE_HOST", "enabled", FLAG),
        ("PROXY_ALLOW_PRIVATE", "y", FLAG),
        ("HTTP_POOL_ENABLED", "on", FLAG),
        ("HTTP_TLS_VERIFY", "off", FLAG),
        ("PROXY_UPSTREAM", "10.0.0.5:8000", f"{URL_HINT} (bad token '10.0.0.5:8000')"),
        ("PROXY_UPSTREAM", "http://x:99999", f"{PORT_HINT} (bad token 'http://x:99999')"),
        ("PROXY_ROUTES", "/api=ftp://x", f"route '/api': {URL_HINT} (bad token 'ftp://x')"),
        ("PROXY_ROUTES", "/api=", f"route '/api': {URL_HINT}"),
        ("PROXY_ROUTES", "api=http://x", f"route 'api': {PREFIX_HINT}"),
        (
            "PROXY_ROUTES",
            "/api",
            "route '/api': must be PREFIX=URL, like /api=http://10.0.0.5:8000",
        ),
        ("PROXY_ROUTES", "/api=http://a,/api/=http://b", "route '/api': prefix is listed twice"),
        ("PROXY_ALLOW_CLIENTS", "10.0.0.0/33", CIDRS.format("'10.0.0.0/33'")),
        ("PROXY_ALLOW_CLIENTS", "127.0.0.1,localhost", CIDRS.format("'localhost'")),
        ("PROXY_ALLOW_CLIENTS", "127.0.0.1,", CIDRS.format("''")),
        ("PROXY_ALLOW_HOSTS", "example.*", HOSTS.format("'example.*'")),
        ("PROXY_ALLOW_HOSTS", "*.", HOSTS.format("'*.'")),
        ("PROXY_ALLOW_HOSTS", "a.com, b c", HOSTS.format("'b c'")),
        ("PROXY_ALLOW_HOSTS", "10.0.0.300", HOSTS.format("'10.0.0.300'")),
        ("PROXY_CONNECT_PORTS", "443,0", PORTS.format("'0'")),
        ("PROXY_CONNECT_PORTS", "https", PORTS.format("'https'")),
        ("PROXY_CONNECT_PORTS", "65536", PORTS.format("'65536'")),
        ("PROXY_ADMIN_PREFIX", "/", ADMIN),
        ("PROXY_ADMIN_PREFIX", "_proxy", ADMIN),
        ("HTTP_HEALTH_PATH", "healthz", "must be a path starting with '/', like /healthz"),
        ("PROXY_BIND", "8080", BIND),
        ("PROXY_BIND", "::1:8080", BIND),
        ("PROXY_BIND", "127.0.0.1:0", BIND),
        ("PROXY_BIND", "[nope]:80", BIND),
        ("PROXY_BIND", "fd://x", BIND),
        ("PROXY_BIND", "unix:", BIND),
        ("PROXY_AUTH_FILE", "/nonexistent/htpasswd", FILE),
        ("HTTP_CA_BUNDLE", "/nonexistent/ca.pem", FILE),
        ("PROXY_BALANCE", "random", "must be one of round_robin, least_conn"),
        ("PROXY_BALANCE", "least-conn", "must be one of round_robin, least_conn"),
        ("PROXY_FAIL_STATUSES", "404", NOT_4XX.format("'404'")),
        ("PROXY_FAIL_STATUSES", "502,429", NOT_4XX.format("'429'")),
        ("PROXY_FAIL_STATUSES", "200", STATUSES.format("'200'")),
        ("PROXY_FAIL_STATUSES", "302", STATUSES.format("'302'")),
        ("PROXY_FAIL_STATUSES", "600", STATUSES.format("'600'")),
        ("PROXY_FAIL_STATUSES", "5xx", STATUSES.format("'5xx'")),
        ("PROXY_FAIL_STATUSES", "0502", STATUSES.format("'0502'")),
        ("PROXY_FAIL_STATUSES", "502 503", STATUSES.format("'502 503'")),
        ("PROXY_FAIL_STATUSES", "502,", STATUSES.format("''")),
        ("PROXY_MAX_FAILS", "-1", MAX_FAILS),
        ("PROXY_MAX_FAILS", "1001", MAX_FAILS),
        ("PROXY_MAX_FAILS", "1.5", MAX_FAILS),
        ("PROXY_FAIL_TIMEOUT", "0", SECONDS_GT0),
        ("PROXY_FAIL_TIMEOUT", "10s", SECONDS_GT0),
        ("PROXY_FAIL_TIMEOUT", "inf", SECONDS_GT0),
        ("PROXY_MAX_EJECTION", "-300", SECONDS_GT0),
        ("PROXY_MAX_EJECTION", "nan", SECONDS_GT0),
        ("PROXY_NEXT_UPSTREAM_TRIES", "0", INT_GT0),
        ("PROXY_NEXT_UPSTREAM_TRIES", "all", INT_GT0),
    ],
)
def test_bad_value_gives_one_line(name: str, value: str, message: str) -> None:
    """A bad value would start the proxy anyway, or stop it without saying what to fix."""
    assert problems(**{name: value}) == [f"{name}={value!r}: {message}"]


def test_error_line_format_is_exact() -> None:
    """The start-up message would stop naming the variable, its value and what is allowed."""
    assert problems(HTTP_POOL_TIMEOUT="-1") == [
        "HTTP_POOL_TIMEOUT='-1': must be a number of seconds greater than 0"
    ]


def test_directory_is_not_a_readable_file(tmp_path: Path) -> None:
    """Pointing PROXY_AUTH_FILE at a directory would fail later, on the first request."""
    assert problems(PROXY_AUTH_FILE=str(tmp_path)) == [
        f"PROXY_AUTH_FILE={str(tmp_path)!r}: must be the path of an existing readable file"
    ]


def test_value_with_newline_stays_on_one_line() -> None:
    """A pasted value with a newline would split its error over several lines."""
    [line] = problems(PROXY_WORKERS="4\nx")
    assert line == "PROXY_WORKERS='4\\nx': must be a whole number greater than 0"


def test_several_bad_values_give_several_lines() -> None:
    """An operator would fix one variable, restart, and only then learn of the next."""
    env = {
        "PROXY_WORKER_CLASS": "eventlet",
        "PROXY_ROUTES": "/api=http://a,/api=http://b",
        "HTTP_POOL_TIMEOUT": "-1",
        "HTTP_TLS_VERIFY": "maybe",
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.lines == [
        "PROXY_WORKER_CLASS='eventlet': must be one of gevent, gthread, sync",
        "PROXY_ROUTES='/api=http://a,/api=http://b': route '/api': prefix is listed twice",
        f"HTTP_POOL_TIMEOUT='-1': {SECONDS_GT0}",
        "HTTP_TLS_VERIFY='maybe': must be 1 or 0 (or true/false, yes/no)",
    ]
    assert str(info.value) == "\n".join(info.value.lines)
    assert isinstance(info.value, ValueError)


def test_several_bad_routes_share_one_line() -> None:
    """Each bad route would need its own restart to discover."""
    [line] = problems(PROXY_ROUTES="/a=ftp://x,b=http://y")
    assert line == (
        f"PROXY_ROUTES='/a=ftp://x,b=http://y': route '/a': {URL_HINT} (bad token 'ftp://x');"
        f" route 'b': {PREFIX_HINT}"
    )


# --- UpstreamURL ------------------------------------------------------------------------

QUERY_HINT = "must not have a query (?) or fragment (#); give scheme, host, port and path"


@pytest.mark.parametrize(
    ("text", "origin", "path", "host_header"),
    [
        ("http://10.0.0.5:8000", ("http", "10.0.0.5", 8000), "", "10.0.0.5:8000"),
        ("http://Example.COM", ("http", "example.com", 80), "", "example.com"),
        ("HTTPS://example.com:443/", ("https", "example.com", 443), "", "example.com"),
        ("https://example.com:80/a/b/", ("https", "example.com", 80), "/a/b", "example.com:80"),
        ("http://[::1]:8080/x", ("http", "::1", 8080), "/x", "[::1]:8080"),
        ("http://[FD00::1]", ("http", "fd00::1", 80), "", "[fd00::1]"),
        ("http://my_host.internal:81", ("http", "my_host.internal", 81), "", "my_host.internal:81"),
    ],
)
def test_upstream_url_parses(
    text: str, origin: tuple[str, str, int], path: str, host_header: str
) -> None:
    """Requests would reach the wrong origin, path or Host for a valid upstream URL."""
    u = UpstreamURL.parse(text)
    assert (u.origin, u.path, u.host_header, u.url) == (origin, path, host_header, text)
    assert (u.scheme, u.host, u.port) == origin


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://x", URL_HINT),
        ("example.com", URL_HINT),
        ("http://", URL_HINT),
        ("http:///path", URL_HINT),
        ("http://a b", URL_HINT),
        ("http://::1:80", URL_HINT),
        ("http://[zz]", URL_HINT),
        ("http://[::1", URL_HINT),
        ("http://999.1.1.1", URL_HINT),
        ("http://x:0", PORT_HINT),
        ("http://x:http", PORT_HINT),
        ("http://x/?a=1", QUERY_HINT),
        ("http://x/?", QUERY_HINT),
        ("http://x/#top", QUERY_HINT),
        ("http://u:p@x", "must not contain user:password@; upstream credentials are not supported"),
    ],
)
def test_upstream_url_refuses(text: str, message: str) -> None:
    """A malformed upstream URL would start the proxy and fail on every request."""
    with pytest.raises(ValueError) as info:
        UpstreamURL.parse(text)
    assert str(info.value) == message


# --- routes -----------------------------------------------------------------------------


def test_routes_are_stored_longest_prefix_first() -> None:
    """A short prefix listed first would capture paths meant for a longer one."""
    s = settings(PROXY_ROUTES="/=http://root, /api=http://api,/api/v2/=http://v2")
    assert [r.prefix for r in s.requests.routes] == ["/api/v2", "/api", "/"]
    assert s.requests.routes[0] == Route("/api/v2", (ServerSpec(UpstreamURL.parse("http://v2")),))


# --- server groups: PROXY_UPSTREAM and each route's servers -----------------------------


def spec(url: str, **options: Any) -> ServerSpec:
    return ServerSpec(UpstreamURL.parse(url), **options)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://a:8000", (spec("http://a:8000"),)),
        (
            "http://10.0.0.5:8000 http://10.0.0.6:8000 weight=3 http://10.0.0.7:8000 backup",
            (
                spec("http://10.0.0.5:8000"),
                spec("http://10.0.0.6:8000", weight=3),
                spec("http://10.0.0.7:8000", backup=True),
            ),
        ),
        (
            "http://a weight=100 max_fails=0 fail_timeout=2.5"
            " http://b down http://c max_fails=1000",
            (
                spec("http://a", weight=100, max_fails=0, fail_timeout=2.5),
                spec("http://b", down=True),
                spec("http://c", max_fails=1000),
            ),
        ),
        ("http://a  \t weight=1\nhttp://b", (spec("http://a"), spec("http://b"))),
        (
            "http://a BACKUP Weight=2 http://b",
            (spec("http://a", backup=True, weight=2), spec("http://b")),
        ),
        ("http://a fail_timeout=1e1", (spec("http://a", fail_timeout=10.0),)),
        (
            "http://[::1]:8000 http://[fd00::1]:8000 weight=2",
            (spec("http://[::1]:8000"), spec("http://[fd00::1]:8000", weight=2)),
        ),
        (
            "https://a/base https://b:8443/base/ backup",
            (spec("https://a/base"), spec("https://b:8443/base/", backup=True)),
        ),
        # The same host on another port, or another host on the same port, is another server.
        (
            "http://a:8000 http://a:8001 http://b:8000",
            tuple(spec(u) for u in ("http://a:8000", "http://a:8001", "http://b:8000")),
        ),
    ],
)
def test_upstream_group_is_parsed(text: str, expected: tuple[ServerSpec, ...]) -> None:
    """A documented server list or option would be refused, or read into the wrong servers."""
    assert settings(PROXY_UPSTREAM=text).requests.upstream == expected


WEIGHT = "weight must be a whole number from 1 to 100"
GROUP_MAX_FAILS = "max_fails must be a whole number from 0 to 1000"
FAIL_TIMEOUT = "fail_timeout must be a number of seconds greater than 0"
UNKNOWN = (
    "unknown server option; after a URL give weight=N, max_fails=N, fail_timeout=S,"
    " backup or down, or start the next server with http:// or https://"
)
NO_PRIMARY = "must have at least one server that is neither backup nor down"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://a weight=0", f"{WEIGHT} (bad token 'weight=0')"),
        ("http://a weight=101", f"{WEIGHT} (bad token 'weight=101')"),
        ("http://a weight=-1", f"{WEIGHT} (bad token 'weight=-1')"),
        ("http://a weight=2.5", f"{WEIGHT} (bad token 'weight=2.5')"),
        ("http://a weight=", f"{WEIGHT} (bad token 'weight=')"),
        ("http://a weight", f"{WEIGHT} (bad token 'weight')"),
        ("http://a weight=" + "9" * 30, f"{WEIGHT} (bad token 'weight={'9' * 30}')"),
        ("http://a max_fails=1001", f"{GROUP_MAX_FAILS} (bad token 'max_fails=1001')"),
        ("http://a max_fails=x", f"{GROUP_MAX_FAILS} (bad token 'max_fails=x')"),
        ("http://a fail_timeout=0", f"{FAIL_TIMEOUT} (bad token 'fail_timeout=0')"),
        ("http://a fail_timeout=10s", f"{FAIL_TIMEOUT} (bad token 'fail_timeout=10s')"),
        ("http://a fail_timeout=nan", f"{FAIL_TIMEOUT} (bad token 'fail_timeout=nan')"),
        ("http://a backup=1", "backup takes no value (bad token 'backup=1')"),
        ("http://a down=yes", "down takes no value (bad token 'down=yes')"),
        ("http://a wieght=2", f"{UNKNOWN} (bad token 'wieght=2')"),
        ("http://a 10.0.0.6:8000", f"{UNKNOWN} (bad token '10.0.0.6:8000')"),
        ("weight=2 http://a", f"{URL_HINT} (bad token 'weight=2')"),
        ("http://a ftp://b", f"{URL_HINT} (bad token 'ftp://b')"),
        ("http://a http://b:0", f"{PORT_HINT} (bad token 'http://b:0')"),
        (
            "http://a weight=2 weight=3",
            "weight is given twice for one server (bad token 'weight=3')",
        ),
        ("http://a down down", "down is given twice for one server (bad token 'down')"),
        (
            "http://a backup down http://b",
            "a server is either backup or down, not both (bad token 'down')",
        ),
        (
            "http://a down backup http://b",
            "a server is either backup or down, not both (bad token 'backup')",
        ),
        (
            "http://a https://b",
            "all servers of a group must share scheme and base path:"
            " 'http://a' and 'https://b' differ",
        ),
        (
            "http://a/v1 http://b/v2",
            "all servers of a group must share scheme and base path:"
            " 'http://a/v1' and 'http://b/v2' differ",
        ),
        ("http://a http://a", "a server is listed twice (bad token 'http://a')"),
        ("http://a http://A:80/", "a server is listed twice (bad token 'http://A:80/')"),
        (
            "http://[::1] http://[0::1]:80",
            "a server is listed twice (bad token 'http://[0::1]:80')",
        ),
        ("http://a down", NO_PRIMARY),
        ("http://a backup", NO_PRIMARY),
        ("http://a down http://b backup", NO_PRIMARY),
        # Every bad token is named, not only the first.
        (
            "ftp://a weight=0 http://b bogus",
            f"{URL_HINT} (bad token 'ftp://a'); {WEIGHT} (bad token 'weight=0');"
            f" {UNKNOWN} (bad token 'bogus')",
        ),
    ],
)
def test_bad_upstream_group_gives_one_line(text: str, message: str) -> None:
    """A bad server or option would start the proxy anyway, or stop it without naming the token."""
    assert problems(PROXY_UPSTREAM=text) == [f"PROXY_UPSTREAM={text!r}: {message}"]


def test_error_names_the_bad_token_exactly() -> None:
    """The operator would have to guess which token of a server list is wrong."""
    assert problems(PROXY_UPSTREAM="http://a weight=0") == [
        "PROXY_UPSTREAM='http://a weight=0': weight must be a whole number from 1 to 100"
        " (bad token 'weight=0')"
    ]


def test_routes_take_server_groups() -> None:
    """A route with several servers or options would be refused or split at the wrong place."""
    s = settings(PROXY_ROUTES="/api=http://a:8000 http://b:8000 weight=2,/static=http://c:8000")
    assert s.requests.routes == (
        Route("/static", (spec("http://c:8000"),)),
        Route("/api", (spec("http://a:8000"), spec("http://b:8000", weight=2))),
    )


def test_bad_route_groups_name_route_and_token() -> None:
    """A bad server in one route would not say which route, or hide the other routes' problems."""
    value = "/api=http://a weight=0,/ok=http://b,/x=http://c down,/y=http://d http://e/p"
    assert problems(PROXY_ROUTES=value) == [
        f"PROXY_ROUTES={value!r}: route '/api': {WEIGHT} (bad token 'weight=0');"
        f" route '/x': {NO_PRIMARY};"
        " route '/y': all servers of a group must share scheme and base path:"
        " 'http://d' and 'http://e/p' differ"
    ]


def test_server_options_fall_back_to_the_balancing_defaults() -> None:
    """A server without its own max_fails or fail_timeout would not use PROXY_MAX_FAILS."""
    s = settings(
        PROXY_UPSTREAM="http://a max_fails=0 fail_timeout=2 http://b",
        PROXY_MAX_FAILS="5",
        PROXY_FAIL_TIMEOUT="30",
    )
    assert s.requests.upstream is not None
    a, b = s.requests.upstream
    assert (s.balancing.max_fails_for(a), s.balancing.fail_timeout_for(a)) == (0, 2.0)
    assert (s.balancing.max_fails_for(b), s.balancing.fail_timeout_for(b)) == (5, 30.0)


# --- first ejection within the ejection cap ---------------------------------------------


def test_max_ejection_below_fail_timeout_is_refused() -> None:
    """A cap below the first ejection would silently shorten every ejection."""
    assert problems(PROXY_MAX_EJECTION="5") == [
        "PROXY_MAX_EJECTION='5': must be at least PROXY_FAIL_TIMEOUT (10 seconds),"
        " the length of a first ejection"
    ]
    assert problems(PROXY_FAIL_TIMEOUT="600") == [
        "PROXY_FAIL_TIMEOUT='600': must be at most PROXY_MAX_EJECTION (300 seconds);"
        " raise PROXY_MAX_EJECTION to allow longer ejections"
    ]
    s = settings(PROXY_FAIL_TIMEOUT="600", PROXY_MAX_EJECTION="600")
    assert (s.balancing.fail_timeout, s.balancing.max_ejection) == (600.0, 600.0)


def test_server_fail_timeout_above_max_ejection_is_refused() -> None:
    """A server's own fail_timeout over the cap would be cut short without a word."""
    assert problems(PROXY_UPSTREAM="http://a fail_timeout=301 http://b") == [
        "PROXY_UPSTREAM='http://a fail_timeout=301 http://b': server 'http://a':"
        " fail_timeout must be at most PROXY_MAX_EJECTION (300 seconds)"
    ]
    value = "/a=http://a fail_timeout=90,/b=http://b fail_timeout=20"
    assert problems(PROXY_ROUTES=value, PROXY_MAX_EJECTION="60") == [
        f"PROXY_ROUTES={value!r}: route '/a': server 'http://a':"
        " fail_timeout must be at most PROXY_MAX_EJECTION (60 seconds)"
    ]
    ok = settings(PROXY_UPSTREAM="http://a fail_timeout=600", PROXY_MAX_EJECTION="600")
    assert ok.requests.upstream == (spec("http://a", fail_timeout=600.0),)


def test_bad_max_ejection_is_reported_once() -> None:
    """A bad cap would also blame the fail timeouts measured against a stand-in default."""
    env = {"PROXY_MAX_EJECTION": "x", "PROXY_UPSTREAM": "http://a fail_timeout=400"}
    assert problems(**env) == [f"PROXY_MAX_EJECTION='x': {SECONDS_GT0}"]


# --- HostPatterns -----------------------------------------------------------------------


def hosts(text: str) -> HostPatterns:
    return settings(PROXY_ALLOW_HOSTS=text).forward.allow_hosts


def test_host_patterns_exact_names() -> None:
    """An allowed destination would be refused, or a similar name let through."""
    p = hosts("api.example.com")
    assert p.allows_name("api.example.com")
    assert p.allows_name("API.Example.COM.")
    assert not p.allows_name("example.com")
    assert not p.allows_name("xapi.example.com")
    assert not p.allows_name("api.example.com.evil.net")


def test_host_patterns_suffix_is_subdomains_only() -> None:
    """'*.example.com' would let example.com itself or lookalike domains through."""
    p = hosts("*.example.com")
    assert p.suffixes == (".example.com",)
    assert p.allows_name("a.example.com")
    assert p.allows_name("a.b.Example.com")
    assert not p.allows_name("example.com")
    assert not p.allows_name("badexample.com")
    assert not p.allows_name(".example.com")


def test_host_patterns_star_allows_everything() -> None:
    """The default '*' would block forward proxying to some hosts."""
    p = hosts("*")
    assert p.any
    assert p.allows_name("anything.test")
    assert p.allows_address("10.1.2.3")


def test_host_patterns_networks() -> None:
    """A CIDR in PROXY_ALLOW_HOSTS would not match the address actually connected to."""
    p = hosts("10.0.0.0/8, 2001:db8::/32, 192.168.1.5, example.com")
    assert p.networks == (
        ip_network("10.0.0.0/8"),
        ip_network("2001:db8::/32"),
        ip_network("192.168.1.5/32"),
    )
    assert p.names == frozenset({"example.com"})
    assert p.allows_address("10.200.0.1")
    assert p.allows_address("::ffff:10.1.1.1")
    assert p.allows_address("2001:db8::7")
    assert not p.allows_address("11.0.0.1")
    assert not p.allows_address("example.com")
    assert p.allows_name("10.9.9.9")
    assert p.allows_name("[2001:db8::1]")
    assert p.allows_name("192.168.1.5")
    assert not p.allows_name("192.168.1.6")
    assert not p.allows_address("not-an-ip")


def test_host_patterns_mapped_network_matches_ipv4() -> None:
    """An IPv4-mapped entry would never match the IPv4 address a socket reports."""
    p = hosts("::ffff:10.0.0.0/104")
    assert p.networks == (ip_network("10.0.0.0/8"),)
    assert p.allows_address("10.3.3.3")


# --- client_allowed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("", False),
        ("unix-socket", False),
    ],
)
def test_client_allowed_default(address: str, allowed: bool) -> None:
    """Local clients would be refused, or remote ones let through, under the default."""
    assert Settings.from_env({}).forward.client_allowed(address) is allowed


def test_client_allowed_with_scope_and_custom_networks() -> None:
    """A link-local client with a %scope or a configured network would be refused."""
    s = settings(PROXY_ALLOW_CLIENTS="fe80::/10,192.168.0.0/16")
    assert s.forward.client_allowed("fe80::1%eth0")
    assert s.forward.client_allowed("192.168.3.4")
    assert s.forward.client_allowed("::ffff:192.168.3.4")
    assert not s.forward.client_allowed("127.0.0.1")


# --- load_settings ----------------------------------------------------------------------


def test_load_settings_returns_settings() -> None:
    """A good environment would not produce settings for gunicorn.conf.py."""
    assert load_settings({"PROXY_THREADS": "4"}).server.threads == 4


def test_load_settings_prints_each_problem_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad environment would show a traceback, or hide some problems, instead of lines to fix."""
    with pytest.raises(SystemExit) as info:
        load_settings({"HTTP_POOL_TIMEOUT": "-1", "PROXY_WORKERS": "x"})
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "wsgiproxy: PROXY_WORKERS='x': must be a whole number greater than 0",
        f"wsgiproxy: HTTP_POOL_TIMEOUT='-1': {SECONDS_GT0}",
    ]


def test_load_settings_reads_os_environ_in_a_real_process() -> None:
    """Start-up with a bad variable would print a traceback or exit with a respawnable code."""
    proc = run_python(
        "-c",
        "from wsgiproxy.settings import load_settings; load_settings()",
        env={"HTTP_POOL_TIMEOUT": "-1"},
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"wsgiproxy: HTTP_POOL_TIMEOUT='-1': {SECONDS_GT0}"]
    assert "Traceback" not in proc.stderr


def test_bad_server_group_stops_a_real_process_with_one_line() -> None:
    """A bad server list would start the workers, or stop them with a traceback."""
    proc = run_python(
        "-c",
        "from wsgiproxy.settings import load_settings; load_settings()",
        env={"PROXY_UPSTREAM": "http://a weight=0 http://b"},
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "wsgiproxy: PROXY_UPSTREAM='http://a weight=0 http://b': weight must be a whole number"
        " from 1 to 100 (bad token 'weight=0')"
    ]


def test_import_pulls_in_no_network_or_gevent_modules() -> None:
    """The gunicorn master would import ssl/urllib3 before gevent patches them in workers."""
    code = (
        "import sys, wsgiproxy.settings\n"
        "print(','.join(m for m in ('ssl', 'urllib3', 'flask', 'gevent') if m in sys.modules))"
    )
    proc = run_python("-c", code, check=True)
    assert proc.stdout.strip() == ""
