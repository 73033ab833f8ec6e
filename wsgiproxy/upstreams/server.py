"""One upstream server: where it is, and what this worker knows of it.

Routing picks a ``Server``, the handler counts its requests and failures on it, and the
health thread records its probes on it: one object, seen the same by all three.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..client.manager import OriginPool
from ..values import UpstreamURL


@dataclass
class Probe:
    """The latest probe of one server at ``HTTP_HEALTH_PATH``."""

    url: str
    ok: bool | None = None
    status: int | None = None
    error: str | None = None
    checked_at: float | None = None
    failures_in_a_row: int = 0
    latency_ms: float | None = None


class Server:
    """One configured upstream server; shared by every route that names it.

    ``origin_pool`` is its pinned urllib3 pool object (the connection factory), so a
    request to it needs no origin lookup. The counts are this worker's.
    """

    def __init__(self, url: UpstreamURL, origin_pool: OriginPool, probe_path: str | None) -> None:
        self.url = url
        self.origin = url.origin
        self.base_path = url.path
        self.host_header = url.host_header
        self.origin_pool = origin_pool
        self.probe_target = f"{url.path}{probe_path}" if probe_path else None
        self.probe = Probe(f"{url.scheme}://{self.host_header}{url.path}{probe_path or ''}")
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def started(self) -> None:
        """A request is going to this server."""
        with self._lock:
            self.in_flight += 1
            self.requests += 1

    def finished(self, error: str | None = None) -> None:
        """A request to this server ended; ``error`` is the X-Proxy-Error kind if it failed."""
        with self._lock:
            self.in_flight -= 1
            if error is not None:
                self.failures += 1
                self.last_error = error

    def probed(self, status: int | None, error: str | None, latency: float) -> None:
        """Record a health probe's result."""
        probe = self.probe
        probe.checked_at = time.time()
        probe.latency_ms = round(latency * 1000, 1)
        probe.status = status
        probe.error = error
        probe.ok = error is None
        probe.failures_in_a_row = 0 if probe.ok else probe.failures_in_a_row + 1

    def report(self) -> dict[str, Any]:
        """This server's part of ``/_proxy/health``."""
        return {
            "url": self.url.url,
            "state": "up",
            "weight": 1,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_probe": asdict(self.probe) if self.probe.checked_at is not None else None,
        }

    def __repr__(self) -> str:
        return f"<Server {self.url.url} in_flight={self.in_flight}>"
