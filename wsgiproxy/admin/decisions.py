"""The pool's latest decisions, for ``/_proxy/debug``, and the ones worth a warning."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from ..addresses import format_origin
from ..client.pool import Decision

log = logging.getLogger(__name__)

#: Pool decisions kept for ``/_proxy/debug``.
DEBUG_RING = 500


class DecisionLog:
    """A bounded ring of the pool's latest decisions, with wall-clock times.

    Fed by the pool's ``on_decision`` callback (after the pool unlocks). Also where the
    decisions an operator should hear about become warnings: a pool timeout, and an idle
    connection evicted to make room for another origin (the pool is too small).
    """

    def __init__(self, size: int = DEBUG_RING) -> None:
        self.entries: deque[tuple[float, Decision]] = deque(maxlen=size)

    def record(self, decision: Decision) -> None:
        self.entries.append((time.time(), decision))
        if decision.kind == "timeout":
            log.warning(
                "request for %s waited %.1fs for a connection and gave up (%d in use, %d "
                "queued): raise HTTP_MAX_CONNECTIONS or HTTP_POOL_TIMEOUT",
                format_origin(decision.origin),
                decision.waited or 0.0,
                decision.counts.active,
                decision.counts.queued,
            )
        elif decision.kind == "evict" and decision.for_origin is not None:
            log.warning(
                "pool full: closed an idle connection to %s to make room for %s; "
                "raise HTTP_MAX_CONNECTIONS if this repeats",
                format_origin(decision.origin),
                format_origin(decision.for_origin),
            )

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {
                "time": at,
                "decision": d.kind,
                "origin": format_origin(d.origin),
                "for_origin": format_origin(d.for_origin) if d.for_origin else None,
                "waited": d.waited,
                "idle": d.counts.idle,
                "active": d.counts.active,
                "queued": d.counts.queued,
            }
            for at, d in list(self.entries)
        ]
