"""urllib3's ``PoolManager``: the process's table of upstream origins.

The module-level ``wsgiproxy.app.pool_manager`` is one of these. For each origin it
builds, with the TLS settings given once, urllib3's pool object whose connection factory
(``_new_conn``) makes every upstream connection: ``ProxyHTTPConnection`` or
``ProxyHTTPSConnection``. Which request gets which connection is not urllib3's to decide:
connections live in the process-wide ``pool.Pool`` (FIFO, global limits), and nothing
here calls urllib3's ``urlopen`` or its per-origin connection queue.

Origins a forward proxy meets are kept in urllib3's least-recently-used container
(``PoolManager.pools``), at most ``MAX_ORIGINS``: when one falls out, its idle
connections are closed. Origins of configured upstreams are pinned: built once and never
evicted, so forward traffic to many hosts cannot churn the reverse proxy's connections.
"""

from __future__ import annotations

from typing import Any

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection

from ..addresses import Origin
from .pool import Pool
from .transport import ProxyHTTPConnection, ProxyHTTPSConnection

#: Forward-proxy origins remembered per worker, least recently used out.
MAX_ORIGINS = 1000


class OriginPool(HTTPConnectionPool):
    """urllib3's pool object for one origin: the connection factory for it."""

    ConnectionCls = ProxyHTTPConnection
    origin: Origin


class OriginHTTPSPool(OriginPool, HTTPSConnectionPool):
    """``OriginPool`` for https origins (urllib3 builds the TLS connections)."""

    ConnectionCls = ProxyHTTPSConnection  # type: ignore[assignment]


class ProxyPoolManager(PoolManager):
    """The process's urllib3 ``PoolManager``; its connections are kept in ``shared``."""

    def __init__(self, shared: Pool[HTTPConnection], max_origins: int, **tls: Any) -> None:
        super().__init__(num_pools=max_origins, retries=False, **tls)
        self.shared = shared
        self.max_origins = max_origins
        self.pool_classes_by_scheme = {"http": OriginPool, "https": OriginHTTPSPool}
        # urllib3 2 no longer closes an evicted pool; here eviction is the moment to
        # close the idle connections of an origin nobody asked for in a while.
        self.pools.dispose_func = self._evicted
        self._pinned: dict[Origin, OriginPool] = {}

    def pin(self, origin: Origin) -> OriginPool:
        """The pool object of a configured upstream, kept for the life of the process."""
        found = self._pinned.get(origin)
        if found is None:
            found = self._pinned[origin] = self._origin_pool(origin)
        return found

    def origin_pool(self, origin: Origin) -> OriginPool:
        """The pool object of any origin: pinned, or from (and into) the LRU container."""
        found = self._pinned.get(origin)
        if found is not None:
            return found
        found = self.pools.get(origin)  # type: ignore[call-overload]
        if found is None:
            found = self._origin_pool(origin)
            # May evict the least recently used origin (after the container unlocks).
            self.pools[origin] = found  # type: ignore[index]
        assert isinstance(found, OriginPool)
        return found

    def origins(self) -> int:
        """Origins known now: pinned plus remembered."""
        return len(self._pinned) + len(self.pools)

    def _origin_pool(self, origin: Origin) -> OriginPool:
        scheme, host, port = origin
        made = self._new_pool(scheme, host, port)
        assert isinstance(made, OriginPool)
        made.origin = origin
        return made

    def _evicted(self, evicted: HTTPConnectionPool) -> None:
        origin = getattr(evicted, "origin", None)
        if origin is not None and origin not in self._pinned:
            self.shared.close_idle(origin)
