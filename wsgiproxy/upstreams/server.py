"""One upstream server of a route: where it is, and whether it may take requests.

Routing picks a ``Server``, the handler reports each attempt's outcome to it, and the
health thread reports its probes to it: one object, seen the same by all three. What
must hold across workers (requests in flight, failures, ejection) lives in the shared
table (``shared.SharedState``); the probe's latest result is this worker's own.

Ejection, as nginx's ``max_fails``/``fail_timeout`` with Envoy's backoff: ``max_fails``
failures within ``fail_timeout`` seconds eject the server for ``fail_timeout``, doubled
for each ejection in a row, at most ``max_ejection``. When an ejection ends, one request
at a time tries the server (a trial); a success (or a passing probe) restores it, a
failure ejects it again for twice as long. A server alone in its group is never ejected:
there would be nowhere else to send its requests.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..client.manager import OriginPool
from ..server_lists import ServerSpec
from .shared import Record, SharedState


@dataclass
class Probe:
    """The latest probe of one server at ``HTTP_HEALTH_PATH`` (this worker's)."""

    url: str
    ok: bool | None = None
    status: int | None = None
    error: str | None = None
    checked_at: float | None = None
    failures_in_a_row: int = 0
    latency_ms: float | None = None


@dataclass(frozen=True)
class Ejection:
    """How failures eject a server: its group's and the instance's settings together."""

    max_fails: int
    fail_timeout: float
    max_ejection: float
    #: Seconds a trial request may take before another request may try the server.
    trial_lease: float


class Server:
    """One configured server of one route."""

    def __init__(
        self,
        spec: ServerSpec,
        route: str,
        index: int,
        origin_pool: OriginPool,
        shared: SharedState,
        ejection: Ejection,
        probe_path: str | None,
    ) -> None:
        url = spec.url
        self.spec = spec
        self.url = url
        self.route = route
        self.origin = url.origin
        self.base_path = url.path
        self.host_header = url.host_header
        #: ``host:port`` as metrics and the access log name it.
        self.address = f"[{url.host}]:{url.port}" if ":" in url.host else f"{url.host}:{url.port}"
        self.weight = spec.weight
        self.backup = spec.backup
        self.down = spec.down
        self.origin_pool = origin_pool
        self.index = index
        self.shared = shared
        self.ejection = ejection
        #: True when it is the only server its group may use: never ejected.
        self.alone = False
        self.probe_target = f"{url.path}{probe_path}" if probe_path else None
        self.probe = Probe(f"{url.scheme}://{self.host_header}{url.path}{probe_path or ''}")
        #: Ejections this worker made (published as a metric by this worker only).
        self.ejections_here = 0
        #: The X-Proxy-Error kind of this worker's latest failed attempt.
        self.last_error: str | None = None

    # -- the hot path -------------------------------------------------------------------
    def started(self) -> None:
        """A request is going to this server."""
        self.shared.started(self.index)

    def finished(self, error: str | None = None) -> None:
        """A request to this server ended; ``error`` is the X-Proxy-Error kind if it failed."""
        self.shared.finished(self.index, error is not None)
        if error is not None:
            self.last_error = error

    def in_flight(self) -> int:
        """Requests to this server in flight, every worker together."""
        return self.shared.in_flight(self.index)

    def usable(self, now: float) -> bool:
        """Not ejected, and not in a trial another request holds."""
        until = self.shared.ejected_until(self.index)
        return until == 0.0 or (now >= until and self.shared.trial_until(self.index) <= now)

    def ejected_now(self, now: float) -> bool:
        return self.shared.ejected_until(self.index) > now

    def needs_trial(self, now: float) -> bool:
        """Its ejection has ended and nobody is trying it: the next request should."""
        until = self.shared.ejected_until(self.index)
        return until != 0.0 and now >= until and self.shared.trial_until(self.index) <= now

    def claim_trial(self, now: float) -> bool:
        """Take the one trial of a server whose ejection has ended; False if another did."""

        def claim(record: Record) -> Record | None:
            ended = record.ejected_until != 0.0 and now >= record.ejected_until
            if not ended or record.trial_until > now:
                return None
            return replace(record, trial_until=now + self.ejection.trial_lease)

        record = self.shared.update(self.index, claim)
        return record.trial_until > now and record.ejected_until <= now

    # -- outcomes -----------------------------------------------------------------------
    def succeeded(self, now: float) -> None:
        """An attempt got a response that is not a failure: end an ejection or a trial."""
        if self.shared.ejected_until(self.index) == 0.0:
            return  # the common case: one read, no lock
        self.restore()

    def restore(self) -> None:
        """Back in service at once (a trial succeeded, or a probe passed)."""
        self.shared.update(
            self.index,
            lambda r: replace(r, fails=0, ejected_until=0.0, ejections_in_row=0, trial_until=0.0),
        )

    def failed(self, now: float) -> bool:
        """An attempt failed; True when this failure ejected the server."""
        ejection = self.ejection
        if self.alone or ejection.max_fails == 0:
            return False
        ejected = False

        def count(record: Record) -> Record:
            nonlocal ejected
            fails, start = record.fails, record.window_start
            if now - start > ejection.fail_timeout:
                fails, start = 0, now
            fails += 1
            in_trial = record.ejected_until != 0.0 and now >= record.ejected_until
            if record.ejected_until > now:
                # Already out (another worker's failure arrived first): nothing more.
                return replace(record, fails=fails, window_start=start)
            if fails < ejection.max_fails and not in_trial:
                return replace(record, fails=fails, window_start=start)
            ejected = True
            in_row = record.ejections_in_row + 1
            seconds = min(ejection.fail_timeout * 2 ** (in_row - 1), ejection.max_ejection)
            return Record(
                fails=0,
                window_start=now,
                ejected_until=now + seconds,
                ejections_in_row=in_row,
                ejections=record.ejections + 1,
                trial_until=0.0,
            )

        self.shared.update(self.index, count)
        if ejected:
            self.ejections_here += 1
        return ejected

    # -- reports ------------------------------------------------------------------------
    def state(self, now: float) -> str:
        """``up``, ``ejected``, ``down`` or ``backup`` (a backup that is not ejected)."""
        if self.down:
            return "down"
        if self.ejected_now(now):
            return "ejected"
        return "backup" if self.backup else "up"

    def probed(self, status: int | None, error: str | None, latency: float) -> None:
        """Record a health probe's result (the caller counts a failure or restores)."""
        probe = self.probe
        probe.checked_at = time.time()
        probe.latency_ms = round(latency * 1000, 1)
        probe.status = status
        probe.error = error
        probe.ok = error is None
        probe.failures_in_a_row = 0 if probe.ok else probe.failures_in_a_row + 1

    def report(self, now: float) -> dict[str, Any]:
        """This server's part of ``/_proxy/health``."""
        record = self.shared.record(self.index)
        in_flight, requests, failures = self.shared.counts(self.index)
        until = record.ejected_until
        return {
            "url": self.url.url,
            "state": self.state(now),
            "weight": self.weight,
            "in_flight": in_flight,
            "requests": requests,
            "failures": failures,
            "ejections": record.ejections,
            # Wall-clock seconds since the epoch, as a client can compare with its own clock.
            "ejected_until": round(time.time() + until - now, 3) if until > now else None,
            "last_error": self.last_error,
            "last_probe": asdict(self.probe) if self.probe.checked_at is not None else None,
        }

    def __repr__(self) -> str:
        return f"<Server {self.route} {self.url.url}>"
