"""Where a request goes: the upstream origin, the target it is sent with, the Host.

An origin-form request (``GET /path``) is a reverse-proxy request: ``PROXY_ROUTES`` and
``PROXY_UPSTREAM`` pick the upstream. An absolute-form request (``GET http://h/p``, what
``curl -x`` sends) is a forward-proxy request, subject to ``PROXY_FORWARD``,
``PROXY_ALLOW_CLIENTS`` and ``PROXY_ALLOW_HOSTS``. Either way the upstream receives an
origin-form target whose path and query are the client's bytes, unchanged.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from .config import Origin, Settings
from .errors import BadRequest, Forbidden, NoRoute, NotSupported

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Target:
    """A resolved destination: ``origin`` to connect to, ``path`` for the request line."""

    origin: Origin
    path: str
    host_header: str
    forward: bool


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

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

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
        if environ.get("REQUEST_METHOD") == "CONNECT":
            raise NotSupported("CONNECT tunnels are not supported by this proxy yet")
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
        settings = self.settings
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
        host, port = _split_authority(authority, scheme)
        if not settings.forward:
            raise Forbidden("forward proxying is turned off (PROXY_FORWARD=0)")
        client = environ.get("REMOTE_ADDR") or ""
        if client and not settings.client_allowed(client):
            raise Forbidden(f"client {client} may not use the forward proxy (PROXY_ALLOW_CLIENTS)")
        if not self._host_allowed(host, port):
            raise Forbidden(f"destination {host} is not allowed (PROXY_ALLOW_HOSTS)")
        return Target((scheme, host, port), path, _authority(host, port, scheme), forward=True)

    def _host_allowed(self, host: str, port: int) -> bool:
        patterns = self.settings.allow_hosts
        if patterns.allows_name(host):
            return True
        if not patterns.networks:
            return False
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return False
        return any(patterns.allows_address(str(info[4][0])) for info in infos)


def _split_authority(authority: str, scheme: str) -> tuple[str, int]:
    """``host[:port]`` of an absolute URL; IPv6 in brackets. Raises BadRequest."""
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
    else:
        port = _DEFAULT_PORTS[scheme]
    return host.lower().rstrip("."), port
