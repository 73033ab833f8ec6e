"""The server-list grammar of PROXY_UPSTREAM and PROXY_ROUTES, as nginx's ``server`` line.

``http://a:8000 weight=3 http://b:8000 backup``: a token holding ``://`` starts a server,
any other token is an option of the server before it. ``server_group`` parses one group,
``routes`` the ``PREFIX=GROUP,...`` list; ``fail_statuses`` and ``max_fails`` the
balancing variables that share its rules. Standard library only, like ``values``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .addresses import Origin, parse_ip
from .values import UNSAFE_RE, URL_HINT, UpstreamURL, finite_float

_DIGITS_RE = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class ServerSpec:
    """One server of a group, as configured (a URL and the options after it).

    ``None`` in ``max_fails``/``fail_timeout`` means "use PROXY_MAX_FAILS /
    PROXY_FAIL_TIMEOUT" (``BalancingSettings.max_fails_for`` and ``fail_timeout_for``
    resolve it), so a server names only what differs from the defaults.
    """

    url: UpstreamURL
    weight: int = 1  # weight=N, 1..100
    max_fails: int | None = None  # max_fails=N, 0..1000; 0 = never counted/ejected, as nginx
    fail_timeout: float | None = None  # fail_timeout=S, seconds > 0
    backup: bool = False  # sent requests only while every primary server is out
    down: bool = False  # configured, sent nothing


@dataclass(frozen=True)
class Route:
    """``PREFIX=GROUP`` from PROXY_ROUTES.

    ``prefix`` starts with '/' and has no trailing '/' (except the root '/'); it
    matches whole path segments, so '/api' serves '/api' and '/api/x' but not '/apiary'.
    ``servers`` is the group as ``server_group`` returns it: at least one server.
    """

    prefix: str
    servers: tuple[ServerSpec, ...]


_OPTIONS_HINT = "weight=N, max_fails=N, fail_timeout=S, backup or down"
_MAX_WEIGHT = 100
MAX_FAILS_LIMIT = 1000
"""The highest max_fails accepted (per server and PROXY_MAX_FAILS); 0 turns counting off."""


def _bounded_int(text: str, low: int, high: int) -> int | None:
    """Plain decimal digits within low..high, or None (signs, '1_0' and '2.0' refused)."""
    # The length check keeps int() away from huge digit strings, whose ValueError would
    # reach the operator as Python's own message.
    if not _DIGITS_RE.fullmatch(text) or len(text) > 10:
        return None
    value = int(text)
    return value if low <= value <= high else None


def max_fails(text: str) -> int:
    """PROXY_MAX_FAILS: the same bounds as a server's ``max_fails=N``."""
    value = _bounded_int(text, 0, MAX_FAILS_LIMIT)
    if value is None:
        raise ValueError(f"must be a whole number from 0 to {MAX_FAILS_LIMIT} (0: never eject)")
    return value


def _server_option(token: str) -> tuple[str, int | float | bool]:
    """One option token after a server URL -> (field of ServerSpec, value).

    The ValueError names the option and what it allows; the caller adds the token.
    """
    name, sep, value = token.partition("=")
    name = name.lower()
    if name == "weight":
        weight = _bounded_int(value, 1, _MAX_WEIGHT)
        if weight is None:
            raise ValueError(f"weight must be a whole number from 1 to {_MAX_WEIGHT}")
        return name, weight
    if name == "max_fails":
        fails = _bounded_int(value, 0, MAX_FAILS_LIMIT)
        if fails is None:
            raise ValueError(f"max_fails must be a whole number from 0 to {MAX_FAILS_LIMIT}")
        return name, fails
    if name == "fail_timeout":
        seconds = finite_float(value)
        if seconds is None or seconds <= 0:
            raise ValueError("fail_timeout must be a number of seconds greater than 0")
        return name, seconds
    if name in ("backup", "down"):
        if sep:
            raise ValueError(f"{name} takes no value")
        return name, True
    raise ValueError(
        f"unknown server option; after a URL give {_OPTIONS_HINT},"
        " or start the next server with http:// or https://"
    )


class _ServerDraft:
    """A server while its options are read: which were given, to refuse repeats."""

    def __init__(self, url: UpstreamURL | None) -> None:
        self.url = url  # None when the URL was bad: its options are still checked
        self.options: dict[str, int | float | bool] = {}

    def add(self, token: str) -> None:
        name, value = _server_option(token)
        if name in self.options:
            raise ValueError(f"{name} is given twice for one server")
        if {name, *self.options} >= {"backup", "down"}:
            raise ValueError("a server is either backup or down, not both")
        self.options[name] = value

    def spec(self, url: UpstreamURL) -> ServerSpec:
        o = self.options
        return ServerSpec(
            url,
            weight=int(o.get("weight", 1)),
            max_fails=int(o["max_fails"]) if "max_fails" in o else None,
            fail_timeout=float(o["fail_timeout"]) if "fail_timeout" in o else None,
            backup=bool(o.get("backup", False)),
            down=bool(o.get("down", False)),
        )


def _server_key(url: UpstreamURL) -> Origin:
    """The origin with an IP host in one spelling, so '[::1]' and '[0::1]' are one server."""
    ip = parse_ip(url.host)
    return (url.scheme, str(ip) if ip is not None else url.host.rstrip("."), url.port)


def server_group(text: str) -> tuple[ServerSpec, ...]:
    """One group, as nginx writes an upstream's ``server`` lines, on one line.

    ``URL [option ...] [URL [option ...] ...]``: whitespace separates tokens; a token
    with '://' starts a server, any other token is an option of the server before it
    (``weight=N`` 1-100, ``max_fails=N`` 0-1000, ``fail_timeout=S``, ``backup``,
    ``down``). The first token is always read as a URL. Across the group: one scheme
    and base path for all (a request's path is joined to it whichever server serves
    it), no server twice, and at least one server neither ``backup`` nor ``down``, so
    the route can serve. Every bad token is reported, each named, joined by '; '.
    """
    drafts: list[_ServerDraft] = []
    problems: list[str] = []
    for token in text.split():
        try:
            if not drafts or "://" in token:
                drafts.append(_ServerDraft(None))
                drafts[-1].url = UpstreamURL.parse(token)
            else:
                drafts[-1].add(token)
        except ValueError as exc:
            problems.append(f"{exc} (bad token {token!r})")
    if not drafts:
        raise ValueError(URL_HINT)
    if problems:
        raise ValueError("; ".join(problems))
    servers = tuple(d.spec(d.url) for d in drafts if d.url is not None)
    first = servers[0].url
    seen: set[Origin] = set()
    for server in servers:
        url = server.url
        if (url.scheme, url.path) != (first.scheme, first.path):
            problems.append(
                f"all servers of a group must share scheme and base path:"
                f" {first.url!r} and {url.url!r} differ"
            )
        elif _server_key(url) in seen:
            problems.append(f"a server is listed twice (bad token {url.url!r})")
        seen.add(_server_key(url))
    if not any(not s.backup and not s.down for s in servers):
        problems.append("must have at least one server that is neither backup nor down")
    if problems:
        raise ValueError("; ".join(problems))
    return servers


def fail_statuses(text: str) -> frozenset[int]:
    """PROXY_FAIL_STATUSES: response statuses that count as a server failure.

    5xx only. A 4xx is the client's mistake and must never eject a server (the
    contract), and a 1xx-3xx is a working server; refusing them catches a typo
    instead of ejecting healthy servers.
    """
    statuses: set[int] = set()
    for raw in text.split(","):
        entry = raw.strip()
        status = _bounded_int(entry, 100, 599) if len(entry) == 3 else None
        if status is not None and 400 <= status < 500:
            raise ValueError(
                "must list 5xx statuses only: a 4xx is the client's error and never counts"
                f" as a server failure (bad: {entry!r})"
            )
        if status is None or status < 500:
            raise ValueError(
                "must be a comma-separated list of statuses from 500 to 599,"
                f" like 502,503,504 (bad: {entry!r})"
            )
        statuses.add(status)
    return frozenset(statuses)


def routes(text: str) -> tuple[Route, ...]:
    """Parse ``PREFIX=GROUP,...`` (GROUP as ``server_group`` reads it); every bad entry
    is reported, joined on one line."""
    routes: list[Route] = []
    problems: list[str] = []
    seen: set[str] = set()
    for raw in text.split(","):
        entry = raw.strip()
        prefix, sep, group = entry.partition("=")
        prefix, group = prefix.strip(), group.strip()
        if not sep:
            problems.append(f"route {entry!r}: must be PREFIX=URL, like /api=http://10.0.0.5:8000")
            continue
        if not prefix.startswith("/") or UNSAFE_RE.search(prefix) or "?" in prefix:
            problems.append(f"route {prefix!r}: prefix must be a path starting with '/', like /api")
            continue
        prefix = prefix.rstrip("/") or "/"
        if prefix in seen:
            problems.append(f"route {prefix!r}: prefix is listed twice")
            continue
        seen.add(prefix)
        try:
            routes.append(Route(prefix, server_group(group)))
        except ValueError as exc:
            problems.append(f"route {prefix!r}: {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    # Longest first, so route_for can take the first match.
    return tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))
