"""Where a request goes: the upstream server or origin, the target it is sent with, the Host.

An origin-form request (``GET /path``) is a reverse-proxy request: ``PROXY_ROUTES`` and
``PROXY_UPSTREAM`` pick a group of servers. An absolute-form request (``GET http://h/p``,
what ``curl -x`` sends) is a forward-proxy request, subject to the forward policy. Either
way the upstream receives an origin-form target whose path and query are the client's
bytes, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..addresses import DEFAULT_PORTS, Origin, format_authority, parse_port, split_host_port
from ..errors import BadRequest, NoRoute
from ..upstreams.routes import Group, Upstreams
from .policy import ForwardGuard


@dataclass(frozen=True)
class Target:
    """A resolved destination: ``origin`` to connect to, ``path`` for the request line.

    A reverse request has its ``group`` of servers (None when forward): the server, and
    with it the origin and the Host, is picked per attempt, and ``path`` is then the raw
    target to put after the server's base path. For forward proxying that needs an
    address check, ``address`` is the checked address new connections go to (so DNS
    cannot answer differently at connect time), and
    ``peer_allowed`` is the same check, applied to a reused connection's peer.
    """

    origin: Origin
    path: str
    host_header: str
    group: Group | None = None
    address: str | None = None
    peer_allowed: Callable[[str], bool] | None = None


def raw_target(environ: dict[str, Any]) -> str:
    """The request-target as the client sent it.

    gunicorn gives ``RAW_URI`` and werkzeug's server ``REQUEST_URI``; both are the bytes
    of the request line. ``PATH_INFO`` is percent-decoded and would change ``%2F`` into
    ``/``, so it is only the last resort (for servers that give neither).
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return str(raw)
    path = quote(environ.get("PATH_INFO", "").encode("latin-1"), safe="/;=,:@!$&'()*+~")
    query = environ.get("QUERY_STRING", "")
    return f"{path}?{query}" if query else path


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` of an absolute URL, a Host header or a CONNECT target.

    Without ``default_port`` the port is required (CONNECT). The host comes back
    lowercase, without brackets or a trailing dot. Raises BadRequest.
    """
    split = split_host_port(authority)
    if split is None:
        raise BadRequest(f"bad host in request target: {authority[:100]!r}")
    host, port_text = split
    if not host:
        raise BadRequest("absolute URL without a host")
    if port_text:
        parsed = parse_port(port_text)
        if parsed is None:
            raise BadRequest(f"bad port in request target: {port_text[:20]!r}")
        port = parsed
    elif default_port is not None:
        port = default_port
    else:
        raise BadRequest(f"target {authority[:100]!r} needs a port, like example.com:443")
    return host.lower().rstrip("."), port


class Router:
    """Resolves each request to a ``Target`` or raises the refusal a client should see."""

    def __init__(self, upstreams: Upstreams, guard: ForwardGuard, preserve_host: bool) -> None:
        self.upstreams = upstreams
        self.guard = guard
        self.preserve_host = preserve_host

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
        path = raw.partition("?")[0]
        group = self.upstreams.group_for(path)
        if group is None:
            raise NoRoute(
                f"no upstream configured for {path[:200]}: set PROXY_UPSTREAM or PROXY_ROUTES"
                " (or send an absolute URL to use the forward proxy)"
            )
        first = group.servers[0]
        host_header = first.host_header
        if self.preserve_host:
            host_header = environ.get("HTTP_HOST") or host_header
        return Target(first.origin, raw, host_header, group)

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
        host, port = split_authority(authority, DEFAULT_PORTS[scheme])
        host_header = environ.get("HTTP_HOST")
        if host_header is not None and host_header != authority:  # equal: nothing to compare
            try:
                named = split_authority(host_header.strip(), DEFAULT_PORTS[scheme])
            except BadRequest:
                named = None
            if named != (host, port):
                raise BadRequest(
                    f"request target names {authority[:100]} but Host says {host_header[:100]}"
                )
        self.guard.check_client(environ)
        address, peer_allowed = self.guard.check_destination(environ, host, port)
        return Target(
            (scheme, host, port),
            path,
            format_authority(host, port, scheme),
            address=address,
            peer_allowed=peer_allowed,
        )
