"""Hosts, ports and IP addresses: one definition of each rule every layer shares.

Standard library only, and free of I/O: the settings (imported by the gunicorn master
before gevent patches anything), the pool and the request side all use it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TypeAlias

__all__ = [
    "DEFAULT_PORTS",
    "Network",
    "Networks",
    "Origin",
    "format_authority",
    "format_origin",
    "in_networks",
    "is_local_client",
    "is_public",
    "parse_ip",
    "parse_port",
    "split_host_port",
]

Origin: TypeAlias = tuple[str, str, int]
"""(scheme, host, port): the pool key. Host is lowercase, IPv6 without brackets."""

Network: TypeAlias = IPv4Network | IPv6Network

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}


def format_origin(origin: Origin) -> str:
    """'scheme://host:port', with an IPv6 host in brackets, for logs, stats and errors."""
    scheme, host, port = origin
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def format_authority(host: str, port: int, scheme: str) -> str:
    """``host[:port]`` as a Host header says it: IPv6 in brackets, a default port left out."""
    shown = f"[{host}]" if ":" in host else host
    return shown if DEFAULT_PORTS.get(scheme) == port else f"{shown}:{port}"


def split_host_port(authority: str) -> tuple[str, str] | None:
    """``host[:port]`` or ``[v6][:port]`` -> (host, port text), or None when malformed.

    The one parser of an authority (configured URLs, binds, absolute targets, Host
    headers, CONNECT targets). The host comes back without brackets and unchecked, the
    port text unchecked ('' when absent): each caller applies its own rules to them.
    """
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, tail = authority[1:end], authority[end + 1 :]
        if tail and not tail.startswith(":"):
            return None
        try:
            IPv6Address(host)
        except ValueError:
            return None
        return host, tail[1:]
    host, _, port_text = authority.partition(":")
    if ":" in port_text:
        return None
    return host, port_text


def parse_port(text: str) -> int | None:
    """A TCP port 1..65535 written as plain ASCII digits, or None."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        return None
    return int(text)


def parse_ip(text: str) -> IPv4Address | IPv6Address | None:
    """An IP address, or None if ``text`` is not one.

    Brackets and an IPv6 ``%scope`` are dropped, and an IPv4-mapped IPv6 address
    (``::ffff:127.0.0.1``, what a dual-stack socket reports) becomes the IPv4 address it
    carries, so that it is judged, and matched against networks, as that address.
    """
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr = ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_public(address: str) -> bool:
    """True for a globally routable address: not loopback, private, link-local, CGNAT
    (100.64/10), cloud metadata (169.254.169.254), reserved or multicast."""
    ip = parse_ip(address)
    return ip is not None and ip.is_global and not ip.is_multicast


def is_local_client(address: str) -> bool:
    """The machine itself (127.0.0.1, ::1), or a unix socket (no address): full reach."""
    return address in ("", "127.0.0.1", "::1", "::ffff:127.0.0.1")


class Networks(tuple[Network, ...]):
    """IP networks, as a tuple that computes its hash once.

    It keys ``in_networks``'s cache on every forward request; a plain tuple would hash
    each network again each time (Python code in ``ipaddress``)."""

    _hash: int

    def __new__(cls, items: Iterable[Network] = ()) -> Networks:
        self = super().__new__(cls, items)
        self._hash = tuple.__hash__(self)
        return self

    def __hash__(self) -> int:
        return self._hash


@functools.lru_cache(maxsize=4096)
def in_networks(address: str, networks: Networks) -> bool:
    """True if ``address`` parses and lies inside one of ``networks``.

    Cached: asked on every forward request, and the same clients come back."""
    addr = parse_ip(address)
    return addr is not None and any(addr in net for net in networks)
