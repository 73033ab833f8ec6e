"""Where a request goes: the upstream origin, the target it is sent with, the Host.

An origin-form request (``GET /path``) is a reverse-proxy request: ``PROXY_ROUTES`` and
``PROXY_UPSTREAM`` pick the upstream. An absolute-form request (``GET http://h/p``, what
``curl -x`` sends) is a forward-proxy request, subject to ``PROXY_FORWARD``,
``PROXY_ALLOW_CLIENTS`` and ``PROXY_ALLOW_HOSTS``. Either way the upstream receives an
origin-form target whose path and query are the client's bytes, unchanged.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .auth import ProxyAuth
from .config import Origin, Settings
from .errors import BadRequest, Forbidden, NoRoute, UpstreamConnectError

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Target:
    """A resolved destination: ``origin`` to connect to, ``path`` for the request line.

    For forward proxying that needs an address check, ``address`` is the checked address
    new connections go to (so DNS cannot answer differently at connect time), and
    ``peer_allowed`` is the same check, applied to a reused connection's peer.
    """

    origin: Origin
    path: str
    host_header: str
    forward: bool
    address: str | None = None
    peer_allowed: Callable[[str], bool] | None = None


def is_public(address: str) -> bool:
    """True for a globally routable address: not loopback, private, link-local, CGNAT
    (100.64/10), cloud metadata (169.254.169.254), reserved or multicast. IPv4-mapped
    IPv6 is judged as the IPv4 address it carries."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def is_local_client(address: str) -> bool:
    """The machine itself (127.0.0.1, ::1), or a unix socket (no address): full reach."""
    return address in ("", "127.0.0.1", "::1", "::ffff:127.0.0.1")


def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in resolver order. Raises UpstreamConnectError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UpstreamConnectError(f"cannot resolve {host[:100]}: {exc}") from exc
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def raw_target(environ: dict[str, Any]) -> str:
    """The request-target as the client sent it.

    gunicorn gives ``RAW_URI`` and werkzeug's server ``REQUEST_URI``; both are the bytes
    of the request line. ``PATH_INFO`` is percent-decoded and would change ``%2F`` into
    ``/``, so it is only the last resort (for servers that give neither).
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return str(raw)
    from urllib.parse import quote

    path = quote(environ.get("PATH_INFO", "").encode("latin-1"), safe="/;=,:@!$&'()*+~")
    query = environ.get("QUERY_STRING", "")
    return f"{path}?{query}" if query else path


def _authority(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if _DEFAULT_PORTS.get(scheme) == port else f"{shown}:{port}"


class Router:
    """Resolves each request to a ``Target`` or raises the refusal a client should see."""

    def __init__(self, settings: Settings, auth: ProxyAuth | None = None) -> None:
        self.settings = settings
        self.auth = auth

    def resolve(self, environ: dict[str, Any], raw: str) -> Target:
        """The destination of one request.

        Raises BadRequest (400) for a target it cannot parse, NoRoute (404) for an
        origin-form path no upstream serves, Forbidden (403) for forward proxying that
        is off or not allowed for this client or destination.
        """
        if raw.startswith("/"):
            return self._reverse(environ, raw)
        lowered = raw[:8].lower()
        if lowered.startswith("http://") or lowered.startswith("https://"):
            return self._forward(environ, raw)
        raise BadRequest(f"request target {raw[:100]!r} is neither a path nor an http(s) URL")

    def _reverse(self, environ: dict[str, Any], raw: str) -> Target:
        settings = self.settings
        path = raw.partition("?")[0]
        upstream = settings.route_for(path)
        if upstream is None:
            raise NoRoute(
                f"no upstream configured for {path[:200]}: set PROXY_UPSTREAM or PROXY_ROUTES"
                " (or send an absolute URL to use the forward proxy)"
            )
        host_header = upstream.host_header
        if settings.preserve_host:
            host_header = environ.get("HTTP_HOST") or host_header
        return Target(upstream.origin, upstream.path + raw, host_header, forward=False)

    def _forward(self, environ: dict[str, Any], raw: str) -> Target:
        scheme, _, rest = raw.partition("://")
        scheme = scheme.lower()
        cut = len(rest)
        for sep in "/?#":
            index = rest.find(sep)
            if index != -1:
                cut = min(cut, index)
        authority, path = rest[:cut], rest[cut:]
        path = path.partition("#")[0]
        if not path.startswith("/"):
            path = "/" + path
        if "@" in authority:
            raise BadRequest("absolute URL with user information is not forwarded")
        host, port = split_authority(authority, _DEFAULT_PORTS[scheme])
        host_header = environ.get("HTTP_HOST")
        if host_header is not None and host_header != authority:  # equal: nothing to compare
            try:
                named = split_authority(host_header.strip(), _DEFAULT_PORTS[scheme])
            except BadRequest:
                named = None
            if named != (host, port):
                raise BadRequest(
                    f"request target names {authority[:100]} but Host says {host_header[:100]}"
                )
        self.check_forward_client(environ)
        address, peer_allowed = self.check_destination(environ, host, port)
        return Target(
            (scheme, host, port),
            path,
            _authority(host, port, scheme),
            forward=True,
            address=address,
            peer_allowed=peer_allowed,
        )

    def check_forward_client(self, environ: dict[str, Any]) -> None:
        """Forward proxying (and CONNECT) is on, and this client may use it.

        Raises Forbidden (403) or ProxyAuthRequired (407)."""
        settings = self.settings
        if not settings.forward:
            raise Forbidden("forward proxying is turned off (PROXY_FORWARD=0)")
        client = environ.get("REMOTE_ADDR") or ""
        if client and not settings.client_allowed(client):
            raise Forbidden(f"client {client} may not use the forward proxy (PROXY_ALLOW_CLIENTS)")
        if self.auth is not None:
            self.auth.check(environ.get("HTTP_PROXY_AUTHORIZATION"))

    def check_destination(
        self, environ: dict[str, Any], host: str, port: int
    ) -> tuple[str | None, Callable[[str], bool] | None]:
        """May this client reach ``host:port``? The address to connect to, and the check.

        A destination must match ``PROXY_ALLOW_HOSTS`` (by name, or by a resolved address
        for IP and CIDR entries), must not be the proxy itself, and for a client other than
        the machine itself must not be loopback, private, link-local, CGNAT or metadata
        unless ``PROXY_ALLOW_PRIVATE=1``. The name is resolved once here; the caller
        connects to the returned address, so a second DNS answer cannot slip past.
        (None, None): nothing to check, let the connection resolve the name itself.
        """
        settings = self.settings
        patterns = settings.allow_hosts
        name_ok = patterns.allows_name(host)
        guard_private = not settings.allow_private and not is_local_client(
            environ.get("REMOTE_ADDR") or ""
        )
        # Only a destination on the port the client reached us on can be ourselves; the
        # socket's own address (a system call) is looked up only then.
        own = _own_address(environ) if environ.get("SERVER_PORT") == str(port) else None
        loop_risk = own is not None and own[1] == port
        if name_ok and not guard_private and not loop_risk:
            return None, None
        addresses = _resolve(host, port)
        if loop_risk and own is not None and any(_same_host(a, own[0]) for a in addresses):
            raise Forbidden(f"{host}:{port} is this proxy itself: refusing to loop")
        if name_ok and not guard_private:
            return None, None

        def allowed(address: str) -> bool:
            if guard_private and not is_public(address):
                return False
            return name_ok or patterns.allows_address(address)

        good = [address for address in addresses if allowed(address)]
        if good:
            return good[0], allowed
        if guard_private and any(not is_public(a) for a in addresses):
            raise Forbidden(
                f"destination {host} is a loopback, private or link-local address; only the "
                "machine itself may reach those (PROXY_ALLOW_PRIVATE)"
            )
        raise Forbidden(f"destination {host} is not allowed (PROXY_ALLOW_HOSTS)")


def _own_address(environ: dict[str, Any]) -> tuple[str, int] | None:
    """The address and port the client reached this proxy on."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            name = sock.getsockname()
            return str(name[0]), int(name[1])
        except (OSError, IndexError, TypeError, ValueError):
            pass  # not a TCP socket (a unix socket's name is its path)
    try:
        return str(environ.get("SERVER_NAME", "")), int(environ.get("SERVER_PORT", 0))
    except ValueError:
        return None


def _same_host(address: str, own: str) -> bool:
    """``address`` reaches the host ``own`` names (loopback reaches a loopback listener)."""
    if address == own:
        return True
    try:
        a, b = ipaddress.ip_address(address), ipaddress.ip_address(own)
    except ValueError:
        return own in ("localhost", "") and address in ("127.0.0.1", "::1")
    return a.is_loopback and (b.is_loopback or b.is_unspecified)


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` (absolute URL, Host header, CONNECT target); IPv6 in brackets.

    Without ``default_port`` the port is required (CONNECT). Raises BadRequest."""
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            raise BadRequest(f"bad host in request target: {authority[:100]!r}")
        host, tail = authority[1:end], authority[end + 1 :]
        if tail and not tail.startswith(":"):
            raise BadRequest(f"bad host in request target: {authority[:100]!r}")
        port_text = tail[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        raise BadRequest("absolute URL without a host")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise BadRequest(f"bad port in request target: {port_text[:20]!r}")
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise BadRequest(f"target {authority[:100]!r} needs a port, like example.com:443")
    return host.lower().rstrip("."), port
