"""Routes -> groups of servers: which upstream servers may serve a request path.

``PROXY_UPSTREAM`` and each ``PROXY_ROUTES`` prefix become a ``Group`` of ``Server``
objects. ``Group.pick`` chooses the server for the next attempt of a request: a server
whose ejection has just ended gets its one trial first; otherwise the balancer chooses
among the usable primary servers, then among the backups when no primary is usable; and
when every server is out, the one whose ejection ends first, so that a request is never
refused only because all are marked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from ..addresses import Origin
from ..client.manager import OriginPool
from ..server_lists import ServerSpec
from ..settings import BalancingSettings, RequestSettings
from .balance import balancer
from .server import Ejection, Server
from .shared import ENV, SharedState, SlotsFull

log = logging.getLogger(__name__)


class Group:
    """The servers behind one route prefix, and how the next one is chosen."""

    def __init__(self, prefix: str, servers: Sequence[Server], balance: str) -> None:
        self.prefix = prefix
        self.servers = tuple(servers)
        self.primaries = tuple(s for s in servers if not s.backup and not s.down)
        self.backups = tuple(s for s in servers if s.backup and not s.down)
        self._balancer = balancer(balance)
        if len(self.primaries) + len(self.backups) == 1:
            for server in self.primaries + self.backups:
                server.alone = True

    def pick(self, now: float, tried: Sequence[Server] = ()) -> Server | None:
        """The server for the next attempt, never one already ``tried`` (None: none left)."""
        primaries = self.primaries
        if not tried and len(primaries) == 1 and primaries[0].usable(now):
            return primaries[0]  # the one-server group: nothing to weigh
        for tier in (primaries, self.backups):
            left = [s for s in tier if s not in tried]
            for server in left:
                if server.needs_trial(now) and server.claim_trial(now):
                    return server
            usable = [s for s in left if s.usable(now)]
            if usable:
                return self._balancer.pick(usable)
        # Every server is out: the one back soonest (primaries first), never refused.
        for tier in (primaries, self.backups):
            left = [s for s in tier if s not in tried]
            if left:
                return min(left, key=lambda s: s.shared.ejected_until(s.index))
        return None

    def up(self, now: float) -> bool:
        """Some server of the group may take requests now."""
        return any(not s.ejected_now(now) for s in self.primaries + self.backups)

    def matches(self, path: str) -> bool:
        """True if ``path`` (no query) is this prefix or lies under it (whole segments)."""
        prefix = self.prefix
        return prefix == "/" or path == prefix or path.startswith(prefix + "/")


class Upstreams:
    """Every configured route, resolved to groups of ``Server`` objects once per worker.

    ``pin`` gives each server's origin its connection factory, kept for the process. The
    shared table is the file the gunicorn master made (``WSGIPROXY_SHARED_STATE``), or
    memory of this process alone when there is none.
    """

    def __init__(
        self,
        requests: RequestSettings,
        balancing: BalancingSettings,
        pin: Callable[[Origin], OriginPool],
        probe_path: str | None = None,
        *,
        trial_lease: float = 30.0,
        shared_path: str | None = None,
    ) -> None:
        groups: list[tuple[str, tuple[ServerSpec, ...]]] = [
            (route.prefix, route.servers) for route in requests.routes
        ]
        if requests.upstream:
            groups.append(("/", requests.upstream))
        count = sum(len(specs) for _, specs in groups)
        path = shared_path if shared_path is not None else os.environ.get(ENV) or None
        self.shared = _shared_state(path, count)
        servers: list[Server] = []

        def server(prefix: str, spec: ServerSpec) -> Server:
            ejection = Ejection(
                max_fails=balancing.max_fails if spec.max_fails is None else spec.max_fails,
                fail_timeout=(
                    balancing.fail_timeout if spec.fail_timeout is None else spec.fail_timeout
                ),
                max_ejection=balancing.max_ejection,
                trial_lease=trial_lease,
            )
            made = Server(
                spec, prefix, len(servers), pin(spec.url.origin), self.shared, ejection, probe_path
            )
            servers.append(made)
            return made

        built = [
            Group(prefix, [server(prefix, spec) for spec in specs], balancing.balance)
            for prefix, specs in groups
        ]
        # PROXY_ROUTES longest prefix first (settings sorted them); PROXY_UPSTREAM last.
        self.fallback = built[-1] if requests.upstream else None
        self.groups: tuple[Group, ...] = tuple(built[:-1] if requests.upstream else built)
        self.all_groups: tuple[Group, ...] = tuple(built)
        self.servers: tuple[Server, ...] = tuple(servers)

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

    def report(self, now: float) -> dict[str, list[dict[str, object]]]:
        """``upstreams`` of ``/_proxy/health``: each route prefix and its servers."""
        report: dict[str, list[dict[str, object]]] = {}
        for group in self.all_groups:
            report.setdefault(group.prefix, [s.report(now) for s in group.servers])
        return report

    def figures(self, now: float) -> list[tuple[str, str, bool, int]]:
        """(route, server, up, ejections this worker made) of every server, for metrics."""
        return [
            (s.route, s.address, s.state(now) in ("up", "backup"), s.ejections_here)
            for s in self.servers
        ]

    def probe_groups(self) -> list[list[Server]]:
        """Servers sharing one probe URL (one base URL in several routes): probed once."""
        found: dict[tuple[Origin, str], list[Server]] = {}
        for server in self.servers:
            if server.probe_target is not None and not server.down:
                found.setdefault((server.origin, server.base_path), []).append(server)
        return list(found.values())

    def trouble(self, now: float) -> tuple[list[str], list[str]]:
        """(routes with no server up, servers ejected): the health status's inputs."""
        dead = [g.prefix for g in self.all_groups if not g.up(now)]
        ejected = [f"{s.route} {s.url.url}" for s in self.servers if s.ejected_now(now)]
        return dead, ejected

    def close(self) -> None:
        self.shared.close()


def _shared_state(path: str | None, servers: int) -> SharedState:
    """The master's table, or this process's own when there is none or it is full.

    A full table means more workers than the master sized it for; failing here would
    stop the worker from booting, and gunicorn would then stop the whole server. The
    worker serves instead, with ejections and in-flight counts of its own.
    """
    if not path:
        return SharedState(None, servers)
    try:
        return SharedState(path, servers)
    except SlotsFull as exc:
        log.warning(
            "wsgiproxy: %s (more workers run than PROXY_WORKERS made room for); this "
            "worker keeps its own ejections and in-flight counts: set PROXY_WORKERS "
            "rather than gunicorn's -w or kill -TTIN",
            exc,
        )
        return SharedState(None, servers)
