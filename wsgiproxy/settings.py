"""Environment -> one frozen ``Settings`` of small parts, read once at start-up.

This is the only module that reads the environment, and it does so only when
``Settings.from_env`` or ``load_settings`` is called, never at import. It uses the
standard library alone: the gunicorn master imports it before gevent has patched
anything, so importing ssl, urllib3, flask or gevent here would leave unpatched
modules behind for every worker.

Each component is handed the part it reads (``settings.timeouts``, ``settings.forward``
...), so a reader sees what each depends on. ``from_env`` runs every variable's parser
(``values``) and collects every problem before raising, so an operator fixes a bad
environment in one go; each problem is one line ``NAME='value': what is allowed``.

PROXY_CONFIG (``config_file``) may name a TOML file that supplies values beneath the
environment's; a bad value from it is reported as ``PROXY_CONFIG='path': NAME='value': ...``.
The gunicorn master validates both and hands its workers the result as a snapshot
(``Effective.snapshot``, in WSGIPROXY_EFFECTIVE_CONFIG), so a worker never reads a file
that was not validated, and a file rewritten badly before a reload cannot reach one.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from . import config_file, server_lists, values
from .addresses import Networks, in_networks
from .config_file import Kind
from .server_lists import Route, ServerSpec
from .values import HostPatterns

__all__ = [
    "SNAPSHOT_ENV",
    "VARIABLES",
    "BalancingSettings",
    "ConfigError",
    "Effective",
    "ForwardPolicy",
    "HealthSettings",
    "PoolSettings",
    "RequestSettings",
    "ServerSettings",
    "Settings",
    "TLSSettings",
    "Timeouts",
    "load_settings",
    "read_environment",
]

_T = TypeVar("_T")

_WORKER_CLASSES = ("gevent", "gthread", "sync")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_BALANCERS = ("round_robin", "least_conn")

#: Every variable ``Settings.from_env`` reads, with the TOML types PROXY_CONFIG may give
#: it besides a string (tests check that from_env reads exactly these).
VARIABLES: dict[str, Kind] = {
    "PROXY_BIND": Kind.TEXT,
    "PROXY_WORKERS": Kind.INT,
    "PROXY_WORKER_CLASS": Kind.TEXT,
    "PROXY_WORKER_CONNECTIONS": Kind.INT,
    "PROXY_THREADS": Kind.INT,
    "PROXY_LOG_LEVEL": Kind.TEXT,
    "PROXY_ACCESS_LOG": Kind.TEXT,
    "PROXY_ACCESS_LOG_FORMAT": Kind.TEXT,
    "PROXY_GRACEFUL_TIMEOUT": Kind.NUMBER,
    "PROXY_MAX_REQUESTS": Kind.INT,
    "PROXY_UPSTREAM": Kind.TEXT,
    "PROXY_ROUTES": Kind.TEXT,
    "PROXY_PRESERVE_HOST": Kind.FLAG,
    "PROXY_REQUEST_ID": Kind.FLAG,
    "PROXY_MAX_BODY": Kind.INT,
    "PROXY_ADMIN_PREFIX": Kind.TEXT,
    "PROXY_BALANCE": Kind.TEXT,
    "PROXY_FAIL_STATUSES": Kind.INT,
    "PROXY_MAX_FAILS": Kind.INT,
    "PROXY_FAIL_TIMEOUT": Kind.NUMBER,
    "PROXY_MAX_EJECTION": Kind.NUMBER,
    "PROXY_NEXT_UPSTREAM_TRIES": Kind.INT,
    "PROXY_FORWARD": Kind.FLAG,
    "PROXY_ALLOW_CLIENTS": Kind.TEXT,
    "PROXY_ALLOW_HOSTS": Kind.TEXT,
    "PROXY_CONNECT_PORTS": Kind.INT,
    "PROXY_ALLOW_PRIVATE": Kind.FLAG,
    "PROXY_AUTH_FILE": Kind.TEXT,
    "PROXY_TUNNEL_IDLE_TIMEOUT": Kind.NUMBER,
    "HTTP_MAX_CONNECTIONS": Kind.INT,
    "HTTP_MAX_KEEPALIVE_CONNECTIONS": Kind.INT,
    "HTTP_KEEPALIVE_EXPIRY": Kind.NUMBER,
    "HTTP_POOL_ENABLED": Kind.FLAG,
    "HTTP_CONNECT_TIMEOUT": Kind.NUMBER,
    "HTTP_READ_TIMEOUT": Kind.NUMBER,
    "HTTP_WRITE_TIMEOUT": Kind.NUMBER,
    "HTTP_POOL_TIMEOUT": Kind.NUMBER,
    "HTTP_HEALTH_INTERVAL": Kind.NUMBER,
    "HTTP_HEALTH_PATH": Kind.TEXT,
    "HTTP_TLS_VERIFY": Kind.FLAG,
    "HTTP_CA_BUNDLE": Kind.TEXT,
}
#: Where the gunicorn master hands its workers the validated values (JSON).
SNAPSHOT_ENV = "WSGIPROXY_EFFECTIVE_CONFIG"


class ConfigError(ValueError):
    """Raised by ``Settings.from_env`` with every problem found, one line per variable.

    ``str(exc)`` is the lines joined with newlines, so printing it is enough.
    """

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines: list[str] = list(lines)


@dataclass(frozen=True)
class ServerSettings:
    """What gunicorn.conf.py and logging read: PROXY_BIND ... PROXY_ACCESS_LOG."""

    bind: str
    workers: int
    worker_class: str
    worker_connections: int
    threads: int
    log_level: str
    access_log: str | None
    #: ``text`` (gunicorn's line, with the proxy's fields) or ``json`` (one object a line).
    access_log_format: str
    #: Seconds a stopping or replaced worker has to finish its requests (PROXY_GRACEFUL_TIMEOUT).
    graceful_timeout: float
    #: Requests after which a worker is replaced, with jitter; 0: never (PROXY_MAX_REQUESTS).
    max_requests: int


@dataclass(frozen=True)
class RequestSettings:
    """What the request side reads to place and accept one request.

    ``upstream`` is PROXY_UPSTREAM's group (None when unset); each route has its own.
    """

    upstream: tuple[ServerSpec, ...] | None
    routes: tuple[Route, ...]
    preserve_host: bool
    max_body: int
    admin_prefix: str
    #: Give each request an X-Request-ID (PROXY_REQUEST_ID).
    request_id: bool

    def server_count(self) -> int:
        """Servers of every group: the rows of the table the workers share."""
        return sum(len(route.servers) for route in self.routes) + len(self.upstream or ())

    def route_count(self) -> int:
        """Routes, PROXY_UPSTREAM counted as the route '/'."""
        return len(self.routes) + (self.upstream is not None)

    def summary(self) -> str:
        """``2 routes, 3 servers``: what a check or a reload reports it accepted."""
        routes, servers = self.route_count(), self.server_count()
        return f"{routes} route{'s' * (routes != 1)}, {servers} server{'s' * (servers != 1)}"


@dataclass(frozen=True)
class BalancingSettings:
    """How a group shares requests out and sets failing servers aside (PROXY_BALANCE ...).

    ``max_fails`` and ``fail_timeout`` are the defaults a server's own options override.
    Guaranteed: ``fail_timeout`` and every server's own fail_timeout are at most
    ``max_ejection``, so a first ejection lasts exactly fail_timeout and only the
    doubling is capped. ``fail_statuses`` holds 5xx codes only: a 4xx never counts.
    """

    balance: str
    fail_statuses: frozenset[int]
    max_fails: int
    fail_timeout: float
    max_ejection: float
    next_upstream_tries: int

    def max_fails_for(self, server: ServerSpec) -> int:
        """The server's own max_fails, else PROXY_MAX_FAILS; 0 means never ejected."""
        return self.max_fails if server.max_fails is None else server.max_fails

    def fail_timeout_for(self, server: ServerSpec) -> float:
        """The server's own fail_timeout, else PROXY_FAIL_TIMEOUT."""
        return self.fail_timeout if server.fail_timeout is None else server.fail_timeout


@dataclass(frozen=True)
class ForwardPolicy:
    """Who may forward-proxy or tunnel, and to where (also: who reaches the admin side)."""

    enabled: bool
    allow_clients: Networks
    allow_hosts: HostPatterns
    connect_ports: frozenset[int]
    allow_private: bool
    auth_file: str | None

    def client_allowed(self, address: str) -> bool:
        """True if the client address lies in PROXY_ALLOW_CLIENTS.

        IPv4-mapped IPv6 and a ``%scope`` are normalised first; an unparsable
        address (a unix socket peer, say) is refused.
        """
        return in_networks(address, self.allow_clients)


@dataclass(frozen=True)
class PoolSettings:
    """The upstream pool's limits, per worker process.

    ``max_keepalive`` is silently capped at ``max_connections``: more idle connections
    than open ones cannot exist, and refusing start-up over it would only punish
    lowering HTTP_MAX_CONNECTIONS.
    """

    max_connections: int
    max_keepalive: int
    keepalive_expiry: float
    enabled: bool


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect, between bytes read, per block sent, waiting for the pool, and
    with nothing moved either way in a CONNECT tunnel or an upgraded connection."""

    connect: float
    read: float
    write: float
    pool: float
    tunnel_idle: float


@dataclass(frozen=True)
class HealthSettings:
    """The health thread's rhythm and the optional probe path."""

    interval: float
    path: str | None


@dataclass(frozen=True)
class TLSSettings:
    """How upstream certificates are checked."""

    verify: bool
    ca_bundle: str | None


@dataclass(frozen=True)
class Settings:
    """Every setting, validated, for one process; see the Environment table in the README.

    Built once at start-up by ``from_env`` and passed down part by part.
    """

    server: ServerSettings
    requests: RequestSettings
    balancing: BalancingSettings
    forward: ForwardPolicy
    pool: PoolSettings
    timeouts: Timeouts
    health: HealthSettings
    tls: TLSSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from ``environ`` (any mapping; tests pass a dict) and the file its
        PROXY_CONFIG names, if any; the environment wins.

        Empty values count as unset, except PROXY_ACCESS_LOG where '' turns the
        access log off. Raises ConfigError listing every bad variable and every problem
        of the file, so nothing starts half-configured.
        """
        return read_environment(environ).settings

    @classmethod
    def _parse(cls, env: _Reader) -> Settings:
        """Every variable through its parser; problems are collected in ``env``."""
        max_connections = env.get("HTTP_MAX_CONNECTIONS", values.positive_int, 100)
        settings = cls(
            server=ServerSettings(
                bind=env.get("PROXY_BIND", values.bind, "127.0.0.1:8080"),
                workers=env.get("PROXY_WORKERS", values.positive_int, os.cpu_count() or 1),
                worker_class=env.get(
                    "PROXY_WORKER_CLASS", values.choice(_WORKER_CLASSES), "gevent"
                ),
                worker_connections=env.get("PROXY_WORKER_CONNECTIONS", values.positive_int, 1000),
                threads=env.get("PROXY_THREADS", values.positive_int, 32),
                log_level=env.get("PROXY_LOG_LEVEL", values.choice(_LOG_LEVELS), "info"),
                access_log=env.environ.get("PROXY_ACCESS_LOG", "-").strip() or None,
                access_log_format=env.get(
                    "PROXY_ACCESS_LOG_FORMAT", values.choice(("text", "json")), "text"
                ),
                graceful_timeout=env.get("PROXY_GRACEFUL_TIMEOUT", values.positive_seconds, 30.0),
                max_requests=env.get("PROXY_MAX_REQUESTS", values.non_negative_int, 0),
            ),
            requests=RequestSettings(
                upstream=env.optional("PROXY_UPSTREAM", server_lists.server_group),
                routes=env.get("PROXY_ROUTES", server_lists.routes, ()),
                preserve_host=env.get("PROXY_PRESERVE_HOST", values.flag, False),
                max_body=env.get("PROXY_MAX_BODY", values.non_negative_int, 0),
                admin_prefix=env.get("PROXY_ADMIN_PREFIX", values.admin_prefix, "/_proxy"),
                request_id=env.get("PROXY_REQUEST_ID", values.flag, True),
            ),
            balancing=_balancing(env),
            forward=ForwardPolicy(
                enabled=env.get("PROXY_FORWARD", values.flag, True),
                allow_clients=env.get(
                    "PROXY_ALLOW_CLIENTS", values.networks, values.networks("127.0.0.0/8,::1")
                ),
                allow_hosts=env.get(
                    "PROXY_ALLOW_HOSTS", HostPatterns.parse, HostPatterns.parse("*")
                ),
                connect_ports=env.get("PROXY_CONNECT_PORTS", values.ports, frozenset({443})),
                allow_private=env.get("PROXY_ALLOW_PRIVATE", values.flag, False),
                auth_file=env.optional("PROXY_AUTH_FILE", values.htpasswd_file),
            ),
            pool=PoolSettings(
                max_connections=max_connections,
                max_keepalive=min(
                    env.get("HTTP_MAX_KEEPALIVE_CONNECTIONS", values.non_negative_int, 20),
                    max_connections,
                ),
                keepalive_expiry=env.get(
                    "HTTP_KEEPALIVE_EXPIRY", values.non_negative_seconds, 300.0
                ),
                enabled=env.get("HTTP_POOL_ENABLED", values.flag, True),
            ),
            timeouts=Timeouts(
                connect=env.get("HTTP_CONNECT_TIMEOUT", values.positive_seconds, 10.0),
                read=env.get("HTTP_READ_TIMEOUT", values.positive_seconds, 30.0),
                write=env.get("HTTP_WRITE_TIMEOUT", values.positive_seconds, 10.0),
                pool=env.get("HTTP_POOL_TIMEOUT", values.positive_seconds, 5.0),
                tunnel_idle=env.get("PROXY_TUNNEL_IDLE_TIMEOUT", values.positive_seconds, 60.0),
            ),
            health=HealthSettings(
                interval=env.get("HTTP_HEALTH_INTERVAL", values.positive_seconds, 60.0),
                path=env.optional("HTTP_HEALTH_PATH", values.path),
            ),
            tls=TLSSettings(
                verify=env.get("HTTP_TLS_VERIFY", values.flag, True),
                ca_bundle=env.optional("HTTP_CA_BUNDLE", values.readable_file),
            ),
        )
        _check_fail_timeouts(env, settings)
        return settings


@dataclass(frozen=True)
class Effective:
    """Validated settings and the text values they were parsed from (environment over
    PROXY_CONFIG): what the gunicorn master hands its workers."""

    settings: Settings
    values: dict[str, str]

    def snapshot(self) -> str:
        """The values as JSON, for SNAPSHOT_ENV: ``load_settings`` in a worker reads
        them instead of the environment and the file."""
        return json.dumps(self.values, sort_keys=True)


def read_environment(environ: Mapping[str, str]) -> Effective:
    """Settings from ``environ`` and PROXY_CONFIG's file, with the values they came from.

    Ignores SNAPSHOT_ENV: the gunicorn master and ``python -m wsgiproxy check`` call this
    to validate what the operator wrote. Raises ConfigError with every problem: the
    file's own (unreadable, not TOML, unknown keys, wrong types) first, then bad values.
    """
    layered = config_file.layer(environ, VARIABLES, keep_blank=("PROXY_ACCESS_LOG",))
    env = _Reader(layered.values, layered.from_file, layered.label)
    settings = Settings._parse(env)
    problems = [*layered.problems, *env.problems]
    if problems:
        raise ConfigError(problems)
    return Effective(settings, layered.values)


def _balancing(env: _Reader) -> BalancingSettings:
    fail_timeout = env.get("PROXY_FAIL_TIMEOUT", values.positive_seconds, 10.0)
    return BalancingSettings(
        balance=env.get("PROXY_BALANCE", values.choice(_BALANCERS), "round_robin"),
        fail_statuses=env.get("PROXY_FAIL_STATUSES", server_lists.fail_statuses, frozenset()),
        max_fails=env.get("PROXY_MAX_FAILS", server_lists.max_fails, 1),
        fail_timeout=fail_timeout,
        max_ejection=env.get("PROXY_MAX_EJECTION", values.positive_seconds, 300.0),
        next_upstream_tries=env.get("PROXY_NEXT_UPSTREAM_TRIES", values.positive_int, 3),
    )


def _check_fail_timeouts(env: _Reader, settings: Settings) -> None:
    """Refuse an ejection cap below a first ejection, one line per variable at fault.

    Ejections start at fail_timeout and double up to PROXY_MAX_EJECTION; a cap below
    the start would quietly shorten every ejection, most likely a typo (minutes for
    seconds). Skipped when either side is already reported bad, so a default stood in
    for it never produces a second, misleading line.
    """
    if env.bad & {"PROXY_MAX_EJECTION", "PROXY_FAIL_TIMEOUT"}:
        return
    balancing = settings.balancing
    cap = balancing.max_ejection
    if balancing.fail_timeout > cap:
        # Blame the variable the operator set: the cap if given, else the timeout.
        if env.is_set("PROXY_MAX_EJECTION"):
            env.report(
                "PROXY_MAX_EJECTION",
                f"must be at least PROXY_FAIL_TIMEOUT ({balancing.fail_timeout:g} seconds),"
                " the length of a first ejection",
            )
        else:
            env.report(
                "PROXY_FAIL_TIMEOUT",
                f"must be at most PROXY_MAX_EJECTION ({cap:g} seconds);"
                " raise PROXY_MAX_EJECTION to allow longer ejections",
            )
    requests = settings.requests
    groups = [("PROXY_UPSTREAM", "", requests.upstream or ())]
    groups += [("PROXY_ROUTES", f"route {r.prefix!r}: ", r.servers) for r in requests.routes]
    found: dict[str, list[str]] = {}
    for name, where, servers in groups:
        for server in servers:
            if server.fail_timeout is not None and server.fail_timeout > cap:
                found.setdefault(name, []).append(
                    f"{where}server {server.url.url!r}: fail_timeout must be at most"
                    f" PROXY_MAX_EJECTION ({cap:g} seconds)"
                )
    for name, lines in found.items():
        env.report(name, "; ".join(lines))


class _Reader:
    """Reads variables one by one, keeping every problem instead of stopping at the first."""

    def __init__(
        self,
        environ: Mapping[str, str],
        from_file: frozenset[str] = frozenset(),
        file_label: str = "",
    ) -> None:
        self.environ = environ
        self.from_file = from_file  # names whose value PROXY_CONFIG's file gave
        self.file_label = file_label  # "PROXY_CONFIG='path'", put before their lines
        self.problems: list[str] = []
        self.bad: set[str] = set()  # names already reported, for checks across variables

    def is_set(self, name: str) -> bool:
        """True if ``name`` has a value other than blanks (blank counts as unset)."""
        return bool(self.environ.get(name, "").strip())

    def report(self, name: str, problem: str) -> None:
        """Record ``NAME='value': problem`` for a variable that is set; a value from
        PROXY_CONFIG's file gets ``PROXY_CONFIG='path': `` before it."""
        where = f"{self.file_label}: " if name in self.from_file else ""
        self.problems.append(f"{where}{name}={self.environ.get(name, '')!r}: {problem}")
        self.bad.add(name)

    def optional(self, name: str, parse: Callable[[str], _T]) -> _T | None:
        """The parsed value, or None when unset, empty or bad (bad is recorded)."""
        raw = self.environ.get(name, "")
        text = raw.strip()
        if not text:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            self.report(name, str(exc))
            return None

    def get(self, name: str, parse: Callable[[str], _T], default: _T) -> _T:
        """The parsed value, or ``default`` when unset, empty or bad (bad is recorded)."""
        value = self.optional(name, parse)
        return default if value is None else value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for this process (from os.environ when None), or exit 2 with no traceback.

    Under gunicorn, a worker finds SNAPSHOT_ENV set by its master and reads the values
    the master validated, not the environment and PROXY_CONFIG's file (which may have
    been rewritten since). Elsewhere (``flask run``, a script) it reads both.

    On a ConfigError each line goes to stderr prefixed 'wsgiproxy: ', then SystemExit(2):
    the module-level app stops ``flask run`` with the lines, as the master does for
    gunicorn (wsgiproxy.master), where a worker failing at boot would be respawned in a
    loop.
    """
    source = os.environ if environ is None else environ
    try:
        snapshot = source.get(SNAPSHOT_ENV)
        return Settings.from_env(_read_snapshot(snapshot) if snapshot else source)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"wsgiproxy: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _read_snapshot(text: str) -> dict[str, str]:
    """The values ``Effective.snapshot`` wrote; ConfigError if it is not one."""
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in found.items()
    ):
        raise ConfigError(
            [f"{SNAPSHOT_ENV}: not the settings snapshot a wsgiproxy gunicorn master writes"]
        )
    return found
