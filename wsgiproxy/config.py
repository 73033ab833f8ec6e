"""Environment -> one frozen ``Settings``, read once at start-up.

This is the only module that reads the environment, and it does so only when
``Settings.from_env`` or ``load_settings`` is called, never at import. It uses the
standard library alone: the gunicorn master imports it before gevent has patched
anything, so importing ssl, urllib3, flask or gevent here would leave unpatched
modules behind for every worker.

Every variable has one small parser. ``from_env`` runs all of them and collects
every problem before raising, so an operator fixes a bad environment in one go; each
problem is one line ``NAME='value': what is allowed``, like urllib3's timeout
validation and attrs' name/expected/got messages.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import TypeAlias, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "ConfigError",
    "HostPatterns",
    "Origin",
    "Route",
    "Settings",
    "UpstreamURL",
    "load_settings",
]

Origin: TypeAlias = tuple[str, str, int]
"""(scheme, host, port): the pool key. Host is lowercase, IPv6 without brackets."""

Network: TypeAlias = IPv4Network | IPv6Network
_T = TypeVar("_T")

_DEFAULT_PORTS = {"http": 80, "https": 443}
_URL_HINT = "must be an http:// or https:// URL with a host, like http://10.0.0.5:8000"
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_DIGITS_RE = re.compile(r"[0-9]+")
# Whitespace or control characters can only be a typo in a URL or path, and urlsplit
# would silently drop some of them (tabs, newlines) instead of refusing the value.
_UNSAFE_RE = re.compile(r"[\s\x00-\x1f\x7f]")
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_WORKER_CLASSES = ("gevent", "gthread", "sync")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """Raised by ``Settings.from_env`` with every problem found, one line per variable.

    ``str(exc)`` is the lines joined with newlines, so printing it is enough.
    """

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines: list[str] = list(lines)


def _is_hostname(host: str) -> bool:
    """True for a DNS name or dotted IPv4 address (already lowercase, no brackets).

    A name whose last label is all digits must be a valid IPv4 address, so a typo
    such as ``10.0.0.256`` is refused rather than sent to DNS.
    """
    if len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
        return False
    last = host.rstrip(".").rsplit(".", 1)[-1]
    if last.isdigit():
        try:
            IPv4Address(host.rstrip("."))
        except ValueError:
            return False
    return True


def _port(text: str) -> int:
    """A TCP port 1..65535 written as plain decimal digits; ValueError otherwise."""
    if not _DIGITS_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def _address(text: str) -> IPv4Address | IPv6Address | None:
    """Parse a client or resolved address; None if it is not an IP address.

    Brackets and an IPv6 ``%scope`` are dropped, and an IPv4-mapped IPv6 address
    (``::ffff:127.0.0.1``, what a dual-stack socket reports) becomes plain IPv4, so
    that it matches IPv4 networks.
    """
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        addr = ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class Networks(tuple[Network, ...]):
    """IP networks, as a tuple that computes its hash once.

    It keys ``_in_networks``'s cache on every forward request: a plain tuple would hash
    each network again each time (Python code in ``ipaddress``, 1.7 us a request)."""

    _hash: int

    def __new__(cls, items: Iterable[Network] = ()) -> Networks:
        self = super().__new__(cls, items)
        self._hash = tuple.__hash__(self)
        return self

    def __hash__(self) -> int:
        return self._hash


@functools.lru_cache(maxsize=4096)
def _in_networks(address: str, networks: Networks) -> bool:
    """True if ``address`` parses and lies inside one of ``networks``.

    Cached: asked on every forward request, and clients come back (parsing the address
    cost 2% of a forwarded request)."""
    addr = _address(address)
    return addr is not None and any(addr in net for net in networks)


@dataclass(frozen=True)
class UpstreamURL:
    """A parsed upstream base URL: requests go to ``path`` + the client's path and query.

    Only scheme, host, port and path are allowed; a query, fragment or userinfo in
    the configured URL would have no clear meaning when joined to each request, so
    ``parse`` refuses them.
    """

    scheme: str
    host: str
    port: int
    path: str
    url: str

    @property
    def origin(self) -> Origin:
        """The pool key for connections to this upstream."""
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        """The Host header value; the port is shown only when it is not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> UpstreamURL:
        """Parse ``http[s]://host[:port][/path]``; ValueError with a user message otherwise."""
        if not text or _UNSAFE_RE.search(text):
            raise ValueError(_URL_HINT)
        try:
            parts = urlsplit(text)
        except ValueError:
            raise ValueError(_URL_HINT) from None
        if parts.scheme not in _DEFAULT_PORTS:
            raise ValueError(_URL_HINT)
        if "?" in text or "#" in text:
            raise ValueError(
                "must not have a query (?) or fragment (#); give scheme, host, port and path"
            )
        if "@" in parts.netloc:
            raise ValueError(
                "must not contain user:password@; upstream credentials are not supported"
            )
        host, port_text = _split_host_port(parts.netloc.lower())
        if host is None:
            raise ValueError(_URL_HINT)
        if port_text:
            try:
                port = _port(port_text)
            except ValueError:
                raise ValueError(
                    "must have a port from 1 to 65535, like http://10.0.0.5:8000"
                ) from None
        else:
            port = _DEFAULT_PORTS[parts.scheme]
        return cls(parts.scheme, host, port, parts.path.rstrip("/"), text)


def _split_host_port(hostport: str) -> tuple[str | None, str]:
    """Split ``host[:port]`` or ``[v6][:port]``; host None if it is not a valid host.

    The port text is returned unchecked ('' when absent) for the caller to validate.
    """
    if hostport.startswith("["):
        end = hostport.find("]")
        rest = hostport[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            return None, ""
        try:
            IPv6Address(hostport[1:end])
        except ValueError:
            return None, ""
        return hostport[1:end], rest[1:]
    host, _, port_text = hostport.partition(":")
    if ":" in port_text or not _is_hostname(host):
        return None, ""
    return host, port_text


@dataclass(frozen=True)
class Route:
    """``PREFIX=URL`` from PROXY_ROUTES.

    ``prefix`` starts with '/' and has no trailing '/' (except the root '/'); it
    matches whole path segments, so '/api' serves '/api' and '/api/x' but not '/apiary'.
    """

    prefix: str
    upstream: UpstreamURL

    def matches(self, path: str) -> bool:
        """True if ``path`` (no query) is this prefix or lies under it."""
        if self.prefix == "/":
            return True
        return path == self.prefix or path.startswith(self.prefix + "/")


@dataclass(frozen=True)
class HostPatterns:
    """PROXY_ALLOW_HOSTS: '*', exact names, '*.example.com', IPs or CIDRs.

    '*.example.com' allows the subdomains only, not example.com itself.

    Names are matched against the host the client asked for (``allows_name``);
    networks are matched against the address actually connected to
    (``allows_address``), so a name that resolves into an allowed network is
    allowed there too.
    """

    any: bool
    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: Networks

    @classmethod
    def parse(cls, text: str) -> HostPatterns:
        """Parse the comma-separated patterns; ValueError naming the first bad entry."""
        any_host = False
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for raw in text.split(","):
            entry = raw.strip().lower()
            if entry == "*":
                any_host = True
            elif entry.startswith("*.") and _is_hostname(entry[2:].rstrip(".")):
                suffix = "." + entry[2:].rstrip(".")
                if suffix not in suffixes:
                    suffixes.append(suffix)
            elif "/" in entry or ":" in entry or _looks_numeric(entry):
                try:
                    networks.append(_network(entry))
                except ValueError:
                    raise _host_pattern_error(raw) from None
            elif entry and _is_hostname(entry):
                names.add(entry.rstrip("."))
            else:
                raise _host_pattern_error(raw)
        return cls(any_host, frozenset(names), tuple(suffixes), Networks(networks))

    def allows_name(self, host: str) -> bool:
        """True if the requested ``host`` is allowed by '*', an exact name or a suffix.

        Case and a trailing dot are ignored. An IP literal (bracketed or not) is
        checked against the networks instead.
        """
        if self.any:
            return True
        if _address(host) is not None:
            return self.allows_address(host)
        name = host.strip().lower().rstrip(".")
        if name in self.names:
            return True
        return any(name.endswith(s) and len(name) > len(s) for s in self.suffixes)

    def allows_address(self, address: str) -> bool:
        """True for '*' or a resolved IP inside one of the networks (IPv4-mapped counts as IPv4)."""
        return self.any or _in_networks(address, self.networks)


def _looks_numeric(entry: str) -> bool:
    """True if the last label is all digits: the entry can only mean an IPv4 address."""
    return entry.rstrip(".").rsplit(".", 1)[-1].isdigit()


def _host_pattern_error(entry: str) -> ValueError:
    return ValueError(
        "must be a comma-separated list of '*', host names, '*.domain' patterns,"
        f" IP addresses or CIDR networks, like *.example.com,10.0.0.0/8 (bad: {entry.strip()!r})"
    )


def _network(text: str) -> Network:
    """An IP or CIDR (host bits allowed); a bare IP becomes /32 or /128.

    An IPv4-mapped IPv6 network becomes the IPv4 network it stands for, because
    addresses are normalised the same way before they are compared.
    """
    net = ip_network(text, strict=False)
    if isinstance(net, IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return IPv4Network((mapped, net.prefixlen - 96))
    return net


# One parser per kind of value. Each takes stripped, non-empty text and raises
# ValueError whose message says what is allowed; _Reader adds the NAME='value' part.


def _positive_int(text: str) -> int:
    if not _DIGITS_RE.fullmatch(text) or int(text) < 1:
        raise ValueError("must be a whole number greater than 0")
    return int(text)


def _non_negative_int(text: str) -> int:
    if not _DIGITS_RE.fullmatch(text):
        raise ValueError("must be a whole number, 0 or greater")
    return int(text)


def _float(text: str) -> float | None:
    """A finite float, or None (nan and inf would disable timeouts by accident)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _positive_seconds(text: str) -> float:
    value = _float(text)
    if value is None or value <= 0:
        raise ValueError("must be a number of seconds greater than 0")
    return value


def _non_negative_seconds(text: str) -> float:
    value = _float(text)
    if value is None or value < 0:
        raise ValueError("must be a number of seconds, 0 or greater")
    return value


def _flag(text: str) -> bool:
    try:
        return _FLAGS[text.lower()]
    except KeyError:
        raise ValueError("must be 1 or 0 (or true/false, yes/no)") from None


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text.lower()

    return parse


def _networks(text: str) -> Networks:
    nets: list[Network] = []
    for raw in text.split(","):
        try:
            nets.append(_network(raw.strip()))
        except ValueError:
            raise ValueError(
                "must be a comma-separated list of IP addresses or CIDR networks,"
                f" like 127.0.0.0/8,::1 (bad: {raw.strip()!r})"
            ) from None
    return Networks(nets)


def _ports(text: str) -> frozenset[int]:
    ports: set[int] = set()
    for raw in text.split(","):
        try:
            ports.add(_port(raw.strip()))
        except ValueError:
            raise ValueError(
                "must be a comma-separated list of ports from 1 to 65535,"
                f" like 443,8443 (bad: {raw.strip()!r})"
            ) from None
    return frozenset(ports)


def _url(text: str) -> UpstreamURL:
    return UpstreamURL.parse(text)


def _routes(text: str) -> tuple[Route, ...]:
    """Parse ``PREFIX=URL,...``; every bad entry is reported, joined on one line."""
    routes: list[Route] = []
    problems: list[str] = []
    seen: set[str] = set()
    for raw in text.split(","):
        entry = raw.strip()
        prefix, sep, url = entry.partition("=")
        prefix, url = prefix.strip(), url.strip()
        if not sep:
            problems.append(f"route {entry!r}: must be PREFIX=URL, like /api=http://10.0.0.5:8000")
            continue
        if not prefix.startswith("/") or _UNSAFE_RE.search(prefix) or "?" in prefix:
            problems.append(f"route {prefix!r}: prefix must be a path starting with '/', like /api")
            continue
        prefix = prefix.rstrip("/") or "/"
        if prefix in seen:
            problems.append(f"route {prefix!r}: prefix is listed twice")
            continue
        seen.add(prefix)
        try:
            routes.append(Route(prefix, UpstreamURL.parse(url)))
        except ValueError as exc:
            problems.append(f"route {prefix!r}: {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    # Longest first, so route_for can take the first match.
    return tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))


def _path(text: str) -> str:
    if not text.startswith("/") or _UNSAFE_RE.search(text):
        raise ValueError("must be a path starting with '/', like /healthz")
    return text


def _admin_prefix(text: str) -> str:
    prefix = text.rstrip("/")
    if not text.startswith("/") or not prefix or _UNSAFE_RE.search(text) or "?" in text:
        raise ValueError("must be a path starting with '/', other than '/' itself, like /_proxy")
    return prefix


def _readable_file(text: str) -> str:
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise ValueError("must be the path of an existing readable file")
    return text


def _htpasswd_file(text: str) -> str:
    """An htpasswd file of bcrypt entries (``htpasswd -B``); checked here, in the master,
    so a bad file stops start-up instead of every worker."""
    _readable_file(text)
    try:
        with open(text, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"must be a readable htpasswd file ({exc})") from None
    users = 0
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
            raise ValueError(f"line {number} must be user:bcrypt-hash, as `htpasswd -B` writes it")
        users += 1
    if not users:
        raise ValueError("must list at least one user:bcrypt-hash line")
    return text


def _bind(text: str) -> str:
    """Validate a gunicorn bind address and return it unchanged."""
    ok = False
    if text.startswith("unix:"):
        ok = len(text) > len("unix:")
    elif text.startswith("fd://"):
        ok = bool(_DIGITS_RE.fullmatch(text[len("fd://") :]))
    else:
        host, port = _split_host_port(text.lower())
        try:
            ok = host is not None and _port(port) > 0
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(
            "must be HOST:PORT, [IPv6]:PORT, unix:/PATH or fd://N, like 127.0.0.1:8080"
        )
    return text


class _Reader:
    """Reads variables one by one, keeping every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def optional(self, name: str, parse: Callable[[str], _T]) -> _T | None:
        """The parsed value, or None when unset, empty or bad (bad is recorded)."""
        raw = self.environ.get(name, "")
        text = raw.strip()
        if not text:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            self.problems.append(f"{name}={raw!r}: {exc}")
            return None

    def get(self, name: str, parse: Callable[[str], _T], default: _T) -> _T:
        """The parsed value, or ``default`` when unset, empty or bad (bad is recorded)."""
        value = self.optional(name, parse)
        return default if value is None else value


@dataclass(frozen=True)
class Settings:
    """Every setting, validated, for one process; see the Environment table in the README.

    Built once at start-up by ``from_env`` and passed as an argument to whatever
    needs it. ``max_keepalive_connections`` is silently capped at
    ``max_connections``: more idle connections than open ones cannot exist, and
    refusing start-up over it would only punish lowering HTTP_MAX_CONNECTIONS.
    Pool limits are per worker process.
    """

    bind: str
    workers: int
    worker_class: str
    worker_connections: int
    threads: int
    upstream: UpstreamURL | None
    routes: tuple[Route, ...]
    preserve_host: bool
    forward: bool
    allow_clients: Networks
    allow_hosts: HostPatterns
    max_body: int
    admin_prefix: str
    connect_ports: frozenset[int]
    allow_private: bool
    auth_file: str | None
    log_level: str
    access_log: str | None
    max_connections: int
    max_keepalive_connections: int
    keepalive_expiry: float
    connect_timeout: float
    read_timeout: float
    write_timeout: float
    pool_timeout: float
    pool_enabled: bool
    health_interval: float
    health_path: str | None
    tls_verify: bool
    ca_bundle: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from ``environ`` (any mapping; tests pass a dict).

        Empty values count as unset, except PROXY_ACCESS_LOG where '' turns the
        access log off. Raises ConfigError listing every bad variable, so nothing
        starts half-configured.
        """
        env = _Reader(environ)
        access_log: str | None = environ.get("PROXY_ACCESS_LOG", "-").strip() or None
        max_connections = env.get("HTTP_MAX_CONNECTIONS", _positive_int, 100)
        settings = cls(
            bind=env.get("PROXY_BIND", _bind, "127.0.0.1:8080"),
            workers=env.get("PROXY_WORKERS", _positive_int, os.cpu_count() or 1),
            worker_class=env.get("PROXY_WORKER_CLASS", _choice(_WORKER_CLASSES), "gevent"),
            worker_connections=env.get("PROXY_WORKER_CONNECTIONS", _positive_int, 1000),
            threads=env.get("PROXY_THREADS", _positive_int, 32),
            upstream=env.optional("PROXY_UPSTREAM", _url),
            routes=env.get("PROXY_ROUTES", _routes, ()),
            preserve_host=env.get("PROXY_PRESERVE_HOST", _flag, False),
            forward=env.get("PROXY_FORWARD", _flag, True),
            allow_clients=env.get("PROXY_ALLOW_CLIENTS", _networks, _networks("127.0.0.0/8,::1")),
            allow_hosts=env.get("PROXY_ALLOW_HOSTS", HostPatterns.parse, HostPatterns.parse("*")),
            max_body=env.get("PROXY_MAX_BODY", _non_negative_int, 0),
            admin_prefix=env.get("PROXY_ADMIN_PREFIX", _admin_prefix, "/_proxy"),
            connect_ports=env.get("PROXY_CONNECT_PORTS", _ports, frozenset({443})),
            allow_private=env.get("PROXY_ALLOW_PRIVATE", _flag, False),
            auth_file=env.optional("PROXY_AUTH_FILE", _htpasswd_file),
            log_level=env.get("PROXY_LOG_LEVEL", _choice(_LOG_LEVELS), "info"),
            access_log=access_log,
            max_connections=max_connections,
            max_keepalive_connections=min(
                env.get("HTTP_MAX_KEEPALIVE_CONNECTIONS", _non_negative_int, 20), max_connections
            ),
            keepalive_expiry=env.get("HTTP_KEEPALIVE_EXPIRY", _non_negative_seconds, 300.0),
            connect_timeout=env.get("HTTP_CONNECT_TIMEOUT", _positive_seconds, 10.0),
            read_timeout=env.get("HTTP_READ_TIMEOUT", _positive_seconds, 30.0),
            write_timeout=env.get("HTTP_WRITE_TIMEOUT", _positive_seconds, 10.0),
            pool_timeout=env.get("HTTP_POOL_TIMEOUT", _positive_seconds, 5.0),
            pool_enabled=env.get("HTTP_POOL_ENABLED", _flag, True),
            health_interval=env.get("HTTP_HEALTH_INTERVAL", _positive_seconds, 60.0),
            health_path=env.optional("HTTP_HEALTH_PATH", _path),
            tls_verify=env.get("HTTP_TLS_VERIFY", _flag, True),
            ca_bundle=env.optional("HTTP_CA_BUNDLE", _readable_file),
        )
        if env.problems:
            raise ConfigError(env.problems)
        return settings

    def route_for(self, path: str) -> UpstreamURL | None:
        """The upstream for an origin-form request path (no query).

        The longest PROXY_ROUTES prefix matching whole segments wins ('/api' takes
        '/api/x', never '/apiary'); the root prefix '/' takes everything; otherwise
        PROXY_UPSTREAM; None when nothing is configured for it (the caller answers 404).
        """
        for route in self.routes:
            if route.matches(path):
                return route.upstream
        return self.upstream

    def client_allowed(self, address: str) -> bool:
        """True if the client address lies in PROXY_ALLOW_CLIENTS.

        IPv4-mapped IPv6 and a ``%scope`` are normalised first; an unparsable
        address (a unix socket peer, say) is refused.
        """
        return _in_networks(address, self.allow_clients)

    @property
    def upstreams(self) -> tuple[UpstreamURL, ...]:
        """Every configured upstream, PROXY_UPSTREAM first, without repeats (for the health thread).

        Two spellings of one base URL ('http://a' and 'http://a:80/') count once.
        """
        found: dict[tuple[Origin, str], UpstreamURL] = {}
        candidates = [self.upstream] if self.upstream is not None else []
        for upstream in [*candidates, *(r.upstream for r in self.routes)]:
            found.setdefault((upstream.origin, upstream.path), upstream)
        return tuple(found.values())


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment (os.environ when None), or exit 2 with no traceback.

    On a ConfigError each line goes to stderr prefixed 'wsgiproxy: ', then SystemExit(2).

    Used by gunicorn.conf.py in the master, so a bad value stops start-up before any
    worker is forked (a worker failing at boot would be respawned in a loop), and by
    the module-level app for ``flask run``.
    """
    try:
        return Settings.from_env(os.environ if environ is None else environ)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"wsgiproxy: {line}", file=sys.stderr)
        raise SystemExit(2) from None
