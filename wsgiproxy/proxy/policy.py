"""Who may forward-proxy or tunnel, and to where.

``PROXY_FORWARD``, ``PROXY_ALLOW_CLIENTS``, ``PROXY_AUTH_FILE`` and ``PROXY_ALLOW_HOSTS``,
plus the guard that keeps clients other than the machine itself off loopback, private,
link-local and metadata addresses, and the proxy off itself. Used alike by absolute-form
HTTP requests and CONNECT tunnels.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from ..addresses import is_local_client, is_public
from ..errors import NOT_SENT, Forbidden, UpstreamConnectError
from ..server.gunicorn import client_socket
from ..settings import ForwardPolicy
from .auth import ProxyAuth


def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in resolver order. Raises UpstreamConnectError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UpstreamConnectError(f"cannot resolve {host[:100]}: {exc}", stage=NOT_SENT) from exc
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class ForwardGuard:
    """Applies the forward policy to one request; raises the refusal a client should see."""

    def __init__(self, policy: ForwardPolicy, auth: ProxyAuth | None = None) -> None:
        self.policy = policy
        self.auth = auth

    def check_client(self, environ: dict[str, Any]) -> None:
        """Forward proxying (and CONNECT) is on, and this client may use it.

        Raises Forbidden (403) or ProxyAuthRequired (407)."""
        policy = self.policy
        if not policy.enabled:
            raise Forbidden("forward proxying is turned off (PROXY_FORWARD=0)")
        client = environ.get("REMOTE_ADDR") or ""
        if client and not policy.client_allowed(client):
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
        policy = self.policy
        patterns = policy.allow_hosts
        name_ok = patterns.allows_name(host)
        guard_private = not policy.allow_private and not is_local_client(
            environ.get("REMOTE_ADDR") or ""
        )
        # Only a destination on the port the client reached us on can be ourselves; the
        # socket's own address (a system call) is looked up only then.
        own = own_address(environ) if environ.get("SERVER_PORT") == str(port) else None
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


def own_address(environ: dict[str, Any]) -> tuple[str, int] | None:
    """The address and port the client reached this proxy on."""
    sock = client_socket(environ)
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
