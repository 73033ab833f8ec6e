"""Routes -> groups of servers: which upstream servers serve a request path.

``PROXY_UPSTREAM`` and each ``PROXY_ROUTES`` prefix become a ``Group``. Today a group
holds one server; the balancing and failover of several live here when they come. A
base URL named by several routes is one ``Server`` object, probed once.
"""

from __future__ import annotations

from collections.abc import Callable

from ..addresses import Origin
from ..client.manager import OriginPool
from ..settings import RequestSettings
from ..values import UpstreamURL
from .server import Server


class Group:
    """The servers behind one route prefix."""

    def __init__(self, prefix: str, servers: tuple[Server, ...]) -> None:
        self.prefix = prefix
        self.servers = servers

    def pick(self) -> Server:
        """The server for the next request."""
        return self.servers[0]

    def matches(self, path: str) -> bool:
        """True if ``path`` (no query) is this prefix or lies under it (whole segments)."""
        prefix = self.prefix
        return prefix == "/" or path == prefix or path.startswith(prefix + "/")


class Upstreams:
    """Every configured route, resolved to groups of ``Server`` objects once.

    ``pin`` gives each server's origin its connection factory, kept for the process.
    """

    def __init__(
        self,
        requests: RequestSettings,
        pin: Callable[[Origin], OriginPool],
        probe_path: str | None = None,
    ) -> None:
        servers: dict[tuple[Origin, str], Server] = {}

        def server(url: UpstreamURL) -> Server:
            key = (url.origin, url.path)
            found = servers.get(key)
            if found is None:
                found = servers[key] = Server(url, pin(url.origin), probe_path)
            return found

        # Each group's first server only, until balancing across a group arrives.
        # PROXY_UPSTREAM first, so its server is the first probed and reported.
        fallback = Group("/", (server(requests.upstream[0].url),)) if requests.upstream else None
        # Longest prefix first, so the first match is the one that wins.
        self.groups: tuple[Group, ...] = tuple(
            Group(route.prefix, (server(route.servers[0].url),)) for route in requests.routes
        )
        self.fallback = fallback
        self.servers: tuple[Server, ...] = tuple(servers.values())

    def group_for(self, path: str) -> Group | None:
        """The group for an origin-form request path (no query), or None (a 404).

        The longest PROXY_ROUTES prefix matching whole segments wins ('/api' takes
        '/api/x', never '/apiary'); the root prefix '/' takes everything; otherwise
        PROXY_UPSTREAM.
        """
        for group in self.groups:
            if group.matches(path):
                return group
        return self.fallback

    def report(self) -> dict[str, list[dict[str, object]]]:
        """``upstreams`` of ``/_proxy/health``: each route prefix and its servers."""
        groups = list(self.groups)
        if self.fallback is not None and all(g.prefix != "/" for g in groups):
            groups.append(self.fallback)
        return {group.prefix: [s.report() for s in group.servers] for group in groups}
