"""One parser per kind of setting value, and the parsed values routes and policies use.

Each parser takes stripped, non-empty text and returns the value or raises ValueError
whose message says what is allowed; ``settings`` adds the ``NAME='value':`` part and
collects every problem. Standard library only: the gunicorn master imports this before
gevent has patched anything.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from urllib.parse import urlsplit

from .addresses import (
    DEFAULT_PORTS,
    Network,
    Networks,
    Origin,
    format_authority,
    in_networks,
    parse_ip,
    parse_port,
    split_host_port,
)

URL_HINT = "must be an http:// or https:// URL with a host, like http://10.0.0.5:8000"
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_DIGITS_RE = re.compile(r"[0-9]+")
# Whitespace or control characters can only be a typo in a URL or path, and urlsplit
# would silently drop some of them (tabs, newlines) instead of refusing the value.
UNSAFE_RE = re.compile(r"[\s\x00-\x1f\x7f]")
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


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
    port = parse_port(text)
    if port is None:
        raise ValueError(f"{text!r} is not a port from 1 to 65535")
    return port


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
        return format_authority(self.host, self.port, self.scheme)

    @classmethod
    def parse(cls, text: str) -> UpstreamURL:
        """Parse ``http[s]://host[:port][/path]``; ValueError with a user message otherwise."""
        if not text or UNSAFE_RE.search(text):
            raise ValueError(URL_HINT)
        try:
            parts = urlsplit(text)
        except ValueError:
            raise ValueError(URL_HINT) from None
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError(URL_HINT)
        if "?" in text or "#" in text:
            raise ValueError(
                "must not have a query (?) or fragment (#); give scheme, host, port and path"
            )
        if "@" in parts.netloc:
            raise ValueError(
                "must not contain user:password@; upstream credentials are not supported"
            )
        split = _host_and_port(parts.netloc.lower())
        if split is None:
            raise ValueError(URL_HINT)
        host, port_text = split
        if port_text:
            try:
                port = _port(port_text)
            except ValueError:
                raise ValueError(
                    "must have a port from 1 to 65535, like http://10.0.0.5:8000"
                ) from None
        else:
            port = DEFAULT_PORTS[parts.scheme]
        return cls(parts.scheme, host, port, parts.path.rstrip("/"), text)


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
        if parse_ip(host) is not None:
            return self.allows_address(host)
        name = host.strip().lower().rstrip(".")
        if name in self.names:
            return True
        return any(name.endswith(s) and len(name) > len(s) for s in self.suffixes)

    def allows_address(self, address: str) -> bool:
        """True for '*' or a resolved IP inside one of the networks (IPv4-mapped counts as IPv4)."""
        return self.any or in_networks(address, self.networks)


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


def positive_int(text: str) -> int:
    if not _DIGITS_RE.fullmatch(text) or int(text) < 1:
        raise ValueError("must be a whole number greater than 0")
    return int(text)


def non_negative_int(text: str) -> int:
    if not _DIGITS_RE.fullmatch(text):
        raise ValueError("must be a whole number, 0 or greater")
    return int(text)


def finite_float(text: str) -> float | None:
    """A finite float, or None (nan and inf would disable timeouts by accident)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def positive_seconds(text: str) -> float:
    value = finite_float(text)
    if value is None or value <= 0:
        raise ValueError("must be a number of seconds greater than 0")
    return value


def non_negative_seconds(text: str) -> float:
    value = finite_float(text)
    if value is None or value < 0:
        raise ValueError("must be a number of seconds, 0 or greater")
    return value


def flag(text: str) -> bool:
    try:
        return _FLAGS[text.lower()]
    except KeyError:
        raise ValueError("must be 1 or 0 (or true/false, yes/no)") from None


def choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text.lower()

    return parse


def networks(text: str) -> Networks:
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


def ports(text: str) -> frozenset[int]:
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


def path(text: str) -> str:
    if not text.startswith("/") or UNSAFE_RE.search(text):
        raise ValueError("must be a path starting with '/', like /healthz")
    return text


def admin_prefix(text: str) -> str:
    prefix = text.rstrip("/")
    if not text.startswith("/") or not prefix or UNSAFE_RE.search(text) or "?" in text:
        raise ValueError("must be a path starting with '/', other than '/' itself, like /_proxy")
    return prefix


def readable_file(text: str) -> str:
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise ValueError("must be the path of an existing readable file")
    return text


def htpasswd_file(text: str) -> str:
    """An htpasswd file of bcrypt entries (``htpasswd -B``); checked here, in the master,
    so a bad file stops start-up instead of every worker."""
    readable_file(text)
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


def bind(text: str) -> str:
    """Validate a gunicorn bind address and return it unchanged."""
    ok = False
    if text.startswith("unix:"):
        ok = len(text) > len("unix:")
    elif text.startswith("fd://"):
        ok = bool(_DIGITS_RE.fullmatch(text[len("fd://") :]))
    else:
        split = _host_and_port(text.lower())
        try:
            ok = split is not None and _port(split[1]) > 0
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(
            "must be HOST:PORT, [IPv6]:PORT, unix:/PATH or fd://N, like 127.0.0.1:8080"
        )
    return text


def _host_and_port(authority: str) -> tuple[str, str] | None:
    """``split_host_port``, with the host held to a DNS name, IPv4 or (bracketed) IPv6."""
    split = split_host_port(authority)
    if split is None:
        return None
    host = split[0]
    if not authority.startswith("[") and not _is_hostname(host):
        return None
    return split
