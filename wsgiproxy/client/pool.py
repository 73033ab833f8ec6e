"""The upstream connection pool: who holds which connection, and who waits for one.

`PoolState` holds all state and every transition, with no lock, clock or I/O (tests drive
it with fakes). `Pool` adds one lock, an event per waiter and the clock, and closes
connections, wakes waiters and logs after unlocking. Opening a connection is the caller's
job (exchange.py): a new slot comes back as a `Lease` whose `conn` is None.
"""

# STATES
#   Connection record:  connecting  a slot is granted; the holder is opening the socket
#                       active      held by exactly one request (one Lease)
#                       idle        in the pool, reusable until its expires_at; one of the
#                                   max_keepalive kept at rest, or surplus until it has
#                                   gone unused for surplus_idle seconds
#                       closed      gone for good; in no container
#   Waiter:             queued      in the FIFO, waiting for a connection
#                       served      given a Lease (never taken back)
#                       gone        timed out, abandoned by its caller, or the pool closed
#
# INVARIANTS (after every event; check_invariants() asserts them all)
#   I1  open = connecting + active + idle <= max_connections.
#   I2  No idle record is past its expires_at at the last `now`. The idle records stand in
#       the order they became idle, and while idle > max_keepalive the oldest of them has
#       been idle less than surplus_idle (all of them when max_keepalive is 0: keep-alive
#       off, nothing kept past its release).
#   I3  Each record sits in exactly one container, the one its state names; a connecting or
#       active record has exactly one live Lease, an idle one none. So an HTTP/1.1
#       connection is never promised to two requests, and never closed while promised.
#   I4  If a waiter is queued, none could be served: idle == 0 and open == max_connections.
#   I5  Waiters are served in arrival order (FIFO across all origins).
#   I6  Counts equal container sizes; created - closed == active + idle.
#
# EVENTS, and all that each may change ("the pass" is defined below)
#   acquire         expires due idle records, then serves the caller at once if the queue is
#                   empty (reuse, create, or evict-then-create), else queues it at the tail.
#   connected       connecting -> active. Nothing else.
#   connect_failed  connecting -> closed (the slot is freed), then the pass.
#   release         active -> idle (reusable), -> closed (not reusable), or straight to the
#                   head waiter when it wants the same origin (handoff); then the pass.
#   cancel          queued -> gone (timeout or abandoned); a served waiter keeps its Lease.
#                   Runs no pass: by I4 a removed waiter frees nothing the others could use.
#   renew           active -> closed and a new connecting record for the same holder (a
#                   dead connection replaced without queueing again). No pass.
#   close_expired   the pass.    close_idle: idle -> closed (all, or one origin's), the pass.
#   close           idle -> closed, queued -> gone; later acquires raise RuntimeError.
#   The pass: expired idle -> closed (heap top only); while idle > max_keepalive, the oldest
#   idle record, if unused for surplus_idle seconds, -> closed (shed); then the head
#   waiter, while it can be served, gets the newest idle connection to its
#   origin, else a new slot if open < max_connections, else the oldest idle connection
#   (of another origin) is closed and it gets a new slot. It stops at the first head it
#   cannot serve, so it costs O(1) plus what it expires, sheds, evicts and serves.
#   A steady load therefore keeps the connections it keeps using, however many more than
#   max_keepalive, and a burst that has passed gives its surplus back within surplus_idle
#   (HAProxy purges idle server connections the same way, gradually, not on release).

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeVar

from ..addresses import Origin, format_origin

logger = logging.getLogger(__name__)

ConnState = Literal["connecting", "active", "idle", "closed"]
WaiterState = Literal["queued", "served", "gone"]
DecisionKind = Literal["reuse", "create", "expire", "shed", "evict", "handoff", "timeout", "close"]


class Connection(Protocol):
    """All the pool asks of a connection: that it can be closed (after unlocking)."""

    def close(self) -> None: ...


class EventLike(Protocol):
    """threading.Event, or gevent's once patched."""

    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


C = TypeVar("C", bound=Connection)


class PoolTimeout(Exception):
    """No connection to the origin came free within the pool timeout.

    Raised by `Pool.acquire`; the client gets 503 with Retry-After. Raise
    HTTP_MAX_CONNECTIONS, or HTTP_POOL_TIMEOUT, if it happens under normal load.
    """

    status = 503

    def __init__(self, origin: Origin, timeout: float, in_use: int, limit: int, queued: int):
        self.origin = origin
        self.timeout = timeout
        self.in_use = in_use
        self.limit = limit
        self.queued = queued
        super().__init__(
            f"no upstream connection to {format_origin(origin)} free within {timeout}s "
            f"(HTTP_POOL_TIMEOUT); {in_use}/{limit} in use, {queued} queued"
        )


@dataclass(frozen=True)
class Limits:
    """Per-process limits, all origins together (HTTP_MAX_CONNECTIONS,
    HTTP_MAX_KEEPALIVE_CONNECTIONS, HTTP_KEEPALIVE_EXPIRY). ``max_keepalive`` idle
    connections are kept at rest; more stay idle only until unused for ``surplus_idle``."""

    max_connections: int
    max_keepalive: int
    keepalive_expiry: float
    surplus_idle: float = 5.0

    def __post_init__(self) -> None:
        for name, least in (
            ("max_connections", 1),
            ("max_keepalive", 0),
            ("keepalive_expiry", 0),
            ("surplus_idle", 0),
        ):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be at least {least}, got {getattr(self, name)}")


class Counts(NamedTuple):
    """Figures after a decision. `active` counts every connection held by a request,
    including one still connecting."""

    idle: int
    active: int
    queued: int


class Decision(NamedTuple):
    """One pool decision, for the debug log and the /_proxy/debug ring buffer."""

    kind: DecisionKind
    origin: Origin
    counts: Counts
    for_origin: Origin | None = None  # evict: the origin the room was made for
    waited: float | None = None  # timeout: seconds the request waited


@dataclass
class Counters:
    """Totals since start. `closed` counts every connection the pool closed, whatever the
    reason; `expired` (past their expiry), `shed` (surplus idle, unused for surplus_idle)
    and `evicted` (closed to make room for another origin) are parts of it.
    `retries`/`errors` come from callers."""

    created: int = 0
    reused: int = 0
    expired: int = 0
    shed: int = 0
    evicted: int = 0
    closed: int = 0
    pool_timeouts: int = 0
    retries: int = 0
    errors: int = 0


# eq=False everywhere below: records, leases and waiters are keyed by identity.


@dataclass(eq=False, slots=True)
class _Record(Generic[C]):
    """The pool's record of one connection (or of a slot being connected), across uses."""

    origin: Origin
    created_at: float
    state: ConnState = "connecting"
    conn: C | None = None
    holder: Lease[C] | None = None  # the one live Lease while connecting or active
    uses: int = 0
    lent_at: float = 0.0  # while connecting or active: when its current holder got it
    expires_at: float = 0.0  # while idle
    idle_since: float = 0.0  # while idle: when it came back
    seq: int = -1  # while idle: the key of its live expiry-heap entry


@dataclass(eq=False, slots=True, repr=False)
class Lease(Generic[C]):
    """One connection held by one request: what `acquire` returns.

    `conn` is None when the caller must open the connection and then call
    `Pool.connected(lease, conn)` (or `connect_failed`). Every lease must end in exactly one
    `release`/`discard`/`connect_failed`; a second one raises RuntimeError.
    """

    origin: Origin
    conn: C | None
    reused: bool  # True: conn is an idle connection being reused
    created_at: float  # when the connection's slot was granted
    uses: int  # requests this connection has carried, this one included
    _record: _Record[C]

    def __repr__(self) -> str:
        how = "reused" if self.reused else "new"
        return f"<Lease {format_origin(self.origin)} {how} uses={self.uses}>"


@dataclass(eq=False, slots=True)
class Waiter(Generic[C]):
    """One request asking for a connection; `event` is set when it leaves the queue."""

    origin: Origin
    seq: int  # arrival order
    event: EventLike | None
    state: WaiterState = "queued"
    lease: Lease[C] | None = None


@dataclass
class Transition(Generic[C]):
    """What an event asks the caller to do after unlocking, in this order."""

    wake: list[Waiter[C]] = field(default_factory=list)
    close: list[C] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


class PoolState(Generic[C]):
    """The pure state machine: every transition, no lock, no clock, no I/O.

    Methods that may expire connections take `now` (seconds, monotonic). Each returns a
    `Transition` to carry out after unlocking. `steps` counts records and waiters the
    passes examine, so tests can assert costs without timing anything.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.counters = Counters()
        self.closed = False
        self.steps = 0
        self._connecting: dict[_Record[C], None] = {}
        self._active: dict[_Record[C], None] = {}
        self._idle: OrderedDict[_Record[C], None] = OrderedDict()  # longest idle first
        self._idle_by_origin: dict[Origin, OrderedDict[_Record[C], None]] = {}  # newest last
        self._by_origin: dict[Origin, dict[ConnState, int]] = {}
        self._queue: OrderedDict[Waiter[C], None] = OrderedDict()  # arrival order
        self._expiry: list[tuple[float, int, _Record[C]]] = []  # (expires_at, seq, record)
        self._containers: dict[ConnState, dict[_Record[C], None]] = {
            "connecting": self._connecting,
            "active": self._active,
            "idle": self._idle,
        }
        self._seq = itertools.count()
        self._now = float("-inf")  # the latest `now` seen: time never runs back in here
        self._last_served = -1  # seq of the latest waiter served (I5)

    # -- figures -----------------------------------------------------------------------

    @property
    def open(self) -> int:
        return len(self._connecting) + len(self._active) + len(self._idle)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def counts(self) -> Counts:
        return Counts(len(self._idle), len(self._active) + len(self._connecting), self.queued)

    # -- events ------------------------------------------------------------------------

    def acquire(
        self, origin: Origin, now: float, event: EventLike | None = None
    ) -> tuple[Waiter[C], Transition[C]]:
        """Serve a request for `origin` at once if nobody is queued and a connection is
        free (reuse, create or evict), else queue it. Raises RuntimeError once closed."""
        if self.closed:
            raise RuntimeError("pool is closed")
        tr: Transition[C] = Transition()
        self._pass(now, tr)  # expire first: never hand out a connection past its expiry
        waiter: Waiter[C] = Waiter(origin, next(self._seq), event)
        if not self._queue:  # by I4 a non-empty queue means nothing is free
            lease = self._grant(origin, now, tr)
            if lease is not None:
                self._serve(waiter, lease)
                return waiter, tr
        self._queue[waiter] = None
        return waiter, tr

    def cancel(
        self, waiter: Waiter[C], timeout: float | None
    ) -> tuple[Lease[C] | None, Transition[C]]:
        """The waiter stops waiting: after `timeout` seconds (counted as a pool timeout), or
        abandoned (`timeout` None). If it was served meanwhile, it gets its lease back and
        must use or release it, so no wake-up is lost."""
        tr: Transition[C] = Transition()
        if waiter.state == "served":
            return waiter.lease, tr
        if waiter.state == "queued":
            del self._queue[waiter]
            waiter.state = "gone"
            if timeout is not None:
                self.counters.pool_timeouts += 1
                tr.decisions.append(
                    Decision("timeout", waiter.origin, self.counts(), waited=float(timeout))
                )
        return None, tr

    def connected(self, lease: Lease[C], conn: C) -> None:
        """The holder opened the connection for its slot: connecting -> active."""
        rec = self._held(lease)
        if rec.state != "connecting":
            raise RuntimeError(f"{lease!r} is not connecting")
        rec.conn = lease.conn = conn
        self._move(rec, "active")
        self.counters.created += 1

    def connect_failed(self, lease: Lease[C], now: float) -> Transition[C]:
        """The holder could not open the connection: free the slot, serve the queue."""
        if self._held(lease).state != "connecting":
            raise RuntimeError(f"{lease!r} is not connecting")
        return self.release(lease, now, reusable=False)

    def release(
        self, lease: Lease[C], now: float, *, reusable: bool, expires_in: float | None = None
    ) -> Transition[C]:
        """The request is done with its connection. Not reusable: close it. Reusable: hand
        it to the head waiter if that one wants this origin, else keep it idle until
        now + min(expires_in, keepalive_expiry). Then the pass."""
        rec = self._held(lease)
        rec.holder = None
        tr: Transition[C] = Transition()
        ttl = self.limits.keepalive_expiry
        if expires_in is not None:
            ttl = min(ttl, expires_in)
        head = next(iter(self._queue), None)
        if rec.state == "connecting":
            self._move(rec, "closed")  # no socket yet: just free the slot
        elif not reusable or self.closed or ttl <= 0:
            self._close(rec, "close", tr)
        elif head is not None and head.origin == rec.origin:
            self._queue.popitem(last=False)
            self.counters.reused += 1
            self._serve(head, self._lend(rec, now, reused=True))
            tr.wake.append(head)
            tr.decisions.append(Decision("handoff", rec.origin, self.counts()))
        else:
            # If the head wants another origin, the pass evicts this one to make it room.
            self._make_idle(rec, max(now, self._now), ttl)
        self._pass(now, tr)
        return tr

    def renew(self, lease: Lease[C], now: float) -> tuple[Lease[C], Transition[C]]:
        """The holder's connection is dead (closed by the upstream while idle, or reset on
        reuse): close it, but keep the slot for the same holder, who opens a new one.

        The holder does not queue again behind later arrivals, and nothing else changes:
        one slot closed, one connecting, so no pass is needed (I1 and I4 hold as before).
        """
        rec = self._held(lease)
        if rec.state == "connecting":
            return lease, Transition()
        rec.holder = None
        tr: Transition[C] = Transition()
        self._close(rec, "close", tr)
        fresh = _Record[C](rec.origin, max(now, self._now))
        self._move(fresh, "connecting")
        tr.decisions.append(Decision("create", rec.origin, self.counts()))
        return self._lend(fresh, now, reused=False), tr

    def close_expired(self, now: float) -> Transition[C]:
        """Close idle connections whose time is up (the pass does it; this just runs it)."""
        tr: Transition[C] = Transition()
        self._pass(now, tr)
        return tr

    def close_idle(self, now: float, origin: Origin | None = None) -> Transition[C]:
        """Close every idle connection, or every one to `origin`."""
        tr: Transition[C] = Transition()
        victims = self._idle if origin is None else self._idle_by_origin.get(origin)
        for rec in list(victims or ()):
            self._close(rec, "close", tr)
        self._pass(now, tr)
        return tr

    def held(self) -> list[tuple[Origin, float]]:
        """(origin, lent_at) of every connection or slot a request holds now, oldest
        first: leak accounting compares it with the requests still in flight."""
        held = [(r.origin, r.lent_at) for r in (*self._connecting, *self._active)]
        return sorted(held, key=lambda item: item[1])

    def idle_conns(self) -> list[C]:
        """The idle connections, oldest first (the health thread polls their sockets)."""
        return [rec.conn for rec in self._idle if rec.conn is not None]

    def close_if_idle(self, conns: list[C], now: float) -> Transition[C]:
        """Close those of `conns` that are still idle (found dead by the health thread);
        one that a request took meanwhile is left alone."""
        tr: Transition[C] = Transition()
        wanted = {id(conn) for conn in conns}
        for rec in list(self._idle):
            if id(rec.conn) in wanted:
                self._close(rec, "close", tr)
        self._pass(now, tr)
        return tr

    def close(self) -> Transition[C]:
        """Close every idle connection and turn queued waiters away. Held connections are
        closed as they are released; later acquires raise RuntimeError."""
        self.closed = True
        tr: Transition[C] = Transition()
        for rec in list(self._idle):
            self._close(rec, "close", tr)
        for waiter in self._queue:
            waiter.state = "gone"
            tr.wake.append(waiter)
        self._queue.clear()
        return tr

    # -- the pass and its steps --------------------------------------------------------

    def _pass(self, now: float, tr: Transition[C]) -> None:
        self._now = now = max(now, self._now)
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, seq, rec = heapq.heappop(heap)
            self.steps += 1
            if rec.state == "idle" and rec.seq == seq:  # else a stale entry: skip it
                self.counters.expired += 1
                self._close(rec, "expire", tr)
        idle = self._idle
        keep = self.limits.max_keepalive
        if len(idle) > keep:
            # Surplus: shed the longest idle while it has gone unused for the window.
            cutoff = now - (self.limits.surplus_idle if keep else 0.0)
            while len(idle) > keep:
                rec = next(iter(idle))
                if rec.idle_since > cutoff:
                    break
                self.steps += 1
                self.counters.shed += 1
                self._close(rec, "shed", tr)
        while self._queue:
            self.steps += 1
            head = next(iter(self._queue))
            lease = self._grant(head.origin, now, tr)
            if lease is None:
                break  # no idle anywhere and no room: nobody behind it can be served either
            self._queue.popitem(last=False)
            self._serve(head, lease)
            tr.wake.append(head)

    def _grant(self, origin: Origin, now: float, tr: Transition[C]) -> Lease[C] | None:
        """A lease for `origin`: its newest idle connection, else a new slot, else a new
        slot made by closing the oldest idle connection (of another origin). None if the
        pool is full with no idle connection at all."""
        same = self._idle_by_origin.get(origin)
        if same:
            # Newest first: the freshest socket is the least likely closed by the
            # upstream's own idle timeout (the keep-alive race).
            rec = next(reversed(same))
            self._move(rec, "active")
            self.counters.reused += 1
            lease = self._lend(rec, now, reused=True)
            tr.decisions.append(Decision("reuse", origin, self.counts()))
            return lease
        if self.open >= self.limits.max_connections:
            if not self._idle:
                return None
            self.counters.evicted += 1
            self._close(next(iter(self._idle)), "evict", tr, for_origin=origin)
        rec = _Record[C](origin, now)
        self._move(rec, "connecting")
        lease = self._lend(rec, now, reused=False)
        tr.decisions.append(Decision("create", origin, self.counts()))
        return lease

    def _lend(self, rec: _Record[C], now: float, reused: bool) -> Lease[C]:
        rec.uses += 1
        rec.lent_at = max(now, self._now)
        rec.holder = Lease(rec.origin, rec.conn, reused, rec.created_at, rec.uses, rec)
        return rec.holder

    def _serve(self, waiter: Waiter[C], lease: Lease[C]) -> None:
        waiter.state = "served"
        waiter.lease = lease
        self._last_served = waiter.seq

    def _held(self, lease: Lease[C]) -> _Record[C]:
        rec = lease._record
        if rec.holder is not lease:
            raise RuntimeError(f"{lease!r} was already released")
        return rec

    def _make_idle(self, rec: _Record[C], now: float, ttl: float) -> None:
        rec.idle_since = now
        rec.expires_at = expires_at = now + ttl
        rec.seq = next(self._seq)
        self._move(rec, "idle")
        heapq.heappush(self._expiry, (expires_at, rec.seq, rec))
        if len(self._expiry) > 2 * len(self._idle) + 64:
            # Mostly stale entries (records reused before expiring): rebuild. Each rebuild
            # follows at least len(idle) + 64 pushes, so it costs O(1) per push.
            self.steps += len(self._idle)
            self._expiry = [(r.expires_at, r.seq, r) for r in self._idle]
            heapq.heapify(self._expiry)

    def _close(
        self,
        rec: _Record[C],
        kind: DecisionKind,
        tr: Transition[C],
        for_origin: Origin | None = None,
    ) -> None:
        self._move(rec, "closed")
        if rec.conn is not None:
            self.counters.closed += 1
            tr.close.append(rec.conn)
        tr.decisions.append(Decision(kind, rec.origin, self.counts(), for_origin))

    def _move(self, rec: _Record[C], new: ConnState) -> None:
        """The only place a record changes state: containers and counts follow."""
        origin = rec.origin
        counts = self._by_origin.get(origin)
        if counts is None:
            counts = self._by_origin[origin] = {"connecting": 0, "active": 0, "idle": 0}
        old = rec.state
        container = self._containers.get(old)
        if container is not None and rec in container:  # else a new record
            counts[old] -= 1
            del container[rec]
            if old == "idle":
                same = self._idle_by_origin[origin]
                del same[rec]
                if not same:
                    del self._idle_by_origin[origin]
        rec.state = new
        container = self._containers.get(new)
        if container is not None:
            counts[new] += 1
            container[rec] = None
            if new == "idle":
                by_origin = self._idle_by_origin.get(origin)
                if by_origin is None:
                    by_origin = self._idle_by_origin[origin] = OrderedDict()
                by_origin[rec] = None
        elif not any(counts.values()):
            del self._by_origin[origin]

    # -- reports -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot for /_proxy/health and metrics."""
        return {
            "active": len(self._active),
            "idle": len(self._idle),
            "connecting": len(self._connecting),
            "queued": self.queued,
            "open": self.open,
            "max_connections": self.limits.max_connections,
            "max_keepalive": self.limits.max_keepalive,
            "by_origin": {
                format_origin(origin): {k: c[k] for k in ("active", "idle", "connecting")}
                for origin, c in self._by_origin.items()
            },
            "counters": asdict(self.counters),
        }

    def __repr__(self) -> str:
        idle, active, queued = self.counts()
        return f"<Pool active={active} idle={idle} queued={queued} origins={len(self._by_origin)}>"

    def check_invariants(self) -> None:
        """Assert I1-I6 (see the module header). O(everything): for tests only."""

        def check(ok: bool, what: str) -> None:
            if not ok:
                raise AssertionError(f"pool invariant broken: {what}; {self!r}")

        lim = self.limits
        check(self.open <= lim.max_connections, "I1 more connections open than the limit")
        since = [rec.idle_since for rec in self._idle]
        check(since == sorted(since), "I2 idle records out of the order they came back")
        if len(self._idle) > lim.max_keepalive:
            window = lim.surplus_idle if lim.max_keepalive else 0.0
            check(since[0] > self._now - window, "I2 surplus idle past its window kept")
        where: dict[_Record[C], ConnState] = {}
        recount: dict[Origin, dict[ConnState, int]] = {}
        for state, container in self._containers.items():
            for rec in container:
                check(rec not in where, f"I3 record both {where.get(rec)} and {state}")
                where[rec] = state
                check(rec.state == state, f"I3 {rec.state} record kept as {state}")
                if state == "idle":
                    check(rec.holder is None, "I3 idle record still held")
                    check(rec.expires_at > self._now, "I2 idle record past its expiry")
                else:
                    check(rec.holder is not None and rec.holder._record is rec, "I3 holder")
                check((rec.conn is None) == (state == "connecting"), "I3 conn vs state")
                per = recount.setdefault(rec.origin, {"connecting": 0, "active": 0, "idle": 0})
                per[state] += 1
        check(recount == self._by_origin, "I6 per-origin counts differ from containers")
        by_origin = [(o, r) for o, same in self._idle_by_origin.items() for r in same]
        check(len(by_origin) == len(self._idle), "I6 per-origin idle lists differ in size")
        check(all(self._idle_by_origin.values()), "I6 empty per-origin idle list kept")
        check(all(r in self._idle and r.origin == o for o, r in by_origin), "I3 idle by origin")
        live = {r: e for e, s, r in self._expiry if r.state == "idle" and r.seq == s}
        check(live.keys() == self._idle.keys(), "I3 idle records and expiry heap differ")
        check(all(r.expires_at == e for r, e in live.items()), "I3 heap holds a wrong expiry")
        if self._queue:
            check(not self._idle, "I4 a request is queued while a connection is idle")
            check(self.open >= lim.max_connections, "I4 a request is queued below the limit")
        seq = self._last_served
        for waiter in self._queue:
            check(waiter.state == "queued" and waiter.lease is None, "I3 queued waiter state")
            check(waiter.seq > seq, "I5 a later request was served before an earlier one")
            seq = waiter.seq
        c = self.counters
        check(c.created - c.closed == len(self._active) + len(self._idle), "I6 counters")


class Pool(Generic[C]):
    """The thread-safe pool: one per worker process, shared by all threads or greenlets.

    Transitions run under one lock; connections are closed, waiters woken and decisions
    logged (DEBUG) and passed to `on_decision` after unlocking. The lock and event
    factories default to `threading.Lock`/`threading.Event` looked up when the pool is
    built, so a pool built after gevent's `monkey.patch_all()` uses gevent's.
    """

    def __init__(
        self,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.monotonic,
        lock_factory: Callable[[], AbstractContextManager[Any]] | None = None,
        event_factory: Callable[[], EventLike] | None = None,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        self.limits = limits
        self._state: PoolState[C] = PoolState(limits)
        self._clock = clock
        self._lock = (lock_factory or threading.Lock)()
        self._event_factory = event_factory or threading.Event
        self._on_decision = on_decision

    def acquire(self, origin: Origin, timeout: float) -> Lease[C]:
        """A lease on a connection to `origin`, waiting up to `timeout` seconds, first come
        first served. If `lease.conn` is None, open one and call `connected` (or
        `connect_failed`). Raises PoolTimeout (counted), or RuntimeError once closed."""
        now = self._clock()
        with self._lock:
            waiter, tr = self._state.acquire(origin, now)
            if waiter.lease is None:
                # Only a queued request needs an event; it is attached before the lock
                # is released, so no release can serve it without being able to wake it.
                waiter.event = self._event_factory()
        self._finish(tr)
        if waiter.lease is not None:
            return waiter.lease
        event = waiter.event
        assert event is not None
        try:
            woken = event.wait(timeout)
        except BaseException:
            # Killed or interrupted while queued (gevent.Timeout, client gone): leave the
            # queue, and give back a connection served at the last moment, or it leaks.
            self._abandon(waiter)
            raise
        if not woken:
            with self._lock:
                lease, tr = self._state.cancel(waiter, timeout)
            self._finish(tr)
            if lease is not None:
                return lease  # served just as the wait ran out: take it
            if tr.decisions:
                c = tr.decisions[0].counts
                limit = self.limits.max_connections
                raise PoolTimeout(origin, float(timeout), c.active, limit, c.queued)
        if waiter.lease is None:
            raise RuntimeError("pool is closed")
        return waiter.lease

    def _abandon(self, waiter: Waiter[C]) -> None:
        with self._lock:
            lease, tr = self._state.cancel(waiter, None)
        self._finish(tr)
        if lease is not None:
            self.release(lease, reusable=lease.conn is not None)

    def connected(self, lease: Lease[C], conn: C) -> None:
        """The caller opened the connection for its lease: it is now active."""
        with self._lock:
            self._state.connected(lease, conn)

    def connect_failed(self, lease: Lease[C]) -> None:
        """The caller could not open the connection: its slot goes to the next waiter."""
        self._run(lambda now: self._state.connect_failed(lease, now))

    def release(self, lease: Lease[C], *, reusable: bool, expires_in: float | None = None) -> bool:
        """Give the connection back. reusable=False (error, response not fully read,
        `Connection: close`, pool disabled) closes it. `expires_in` (from the upstream's
        `Keep-Alive: timeout=N`, minus a margin) shortens how long it stays idle.
        True when this woke a queued request (handed it this connection or a slot)."""
        tr = self._run(
            lambda now: self._state.release(lease, now, reusable=reusable, expires_in=expires_in)
        )
        return bool(tr.wake)

    def renew(self, lease: Lease[C]) -> Lease[C]:
        """Close the lease's dead connection and return a lease on a new slot for the same
        holder (its `conn` is None: open one and call `connected`). No re-queueing."""
        now = self._clock()
        with self._lock:
            fresh, tr = self._state.renew(lease, now)
        self._finish(tr)
        return fresh

    def discard(self, lease: Lease[C]) -> None:
        """The connection is broken: close it and free its slot."""
        self.release(lease, reusable=False)

    def close_expired(self) -> int:
        """Run the pass now (the health thread, each second): close idle connections past
        their expiry and shed surplus ones unused for their window; how many."""
        return len(self._run(self._state.close_expired).close)

    def close_idle(self, origin: Origin | None = None) -> int:
        """Close all idle connections, or those to one failing origin; how many."""
        return len(self._run(lambda now: self._state.close_idle(now, origin)).close)

    def held(self) -> list[tuple[Origin, float]]:
        """(origin, lent_at on this pool's clock) of every held connection, oldest first."""
        with self._lock:
            return self._state.held()

    def close_dead_idle(self, is_dead: Callable[[C], bool]) -> int:
        """Close idle connections for which `is_dead(conn)` is true; how many.

        `is_dead` runs outside the lock (it may poll a socket); a connection a request
        took in the meantime is not closed."""
        with self._lock:
            idle = self._state.idle_conns()
        dead = [conn for conn in idle if is_dead(conn)]
        if not dead:
            return 0
        return len(self._run(lambda now: self._state.close_if_idle(dead, now)).close)

    def close(self) -> None:
        """Close idle connections, turn queued requests away; acquire then raises."""
        self._run(lambda now: self._state.close())

    @property
    def lock(self) -> object:
        """The pool's lock object (the gevent self-check looks at its type)."""
        return self._lock

    def note_retry(self) -> None:
        with self._lock:
            self._state.counters.retries += 1

    def note_error(self) -> None:
        with self._lock:
            self._state.counters.errors += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._state.stats()

    def check_invariants(self) -> None:
        """Assert the state machine's invariants under the lock (tests)."""
        with self._lock:
            self._state.check_invariants()

    def __repr__(self) -> str:
        # No lock: repr must never block (debuggers, logs); the figures are plain lens.
        return repr(self._state)

    def _run(self, event: Callable[[float], Transition[C]]) -> Transition[C]:
        """One event: read the clock, run the transition under the lock, then its I/O."""
        now = self._clock()
        with self._lock:
            tr = event(now)
        self._finish(tr)
        return tr

    def _finish(self, tr: Transition[C]) -> None:
        """Carry out a transition after unlocking: wake first, so that a failing close or
        callback can never leave a served request asleep."""
        for waiter in tr.wake:
            if waiter.event is not None:
                waiter.event.set()
        for conn in tr.close:
            try:
                conn.close()
            except Exception:
                logger.warning("error closing an upstream connection", exc_info=True)
                self.note_error()
        for decision in tr.decisions:
            _log_decision(decision)
            if self._on_decision is not None:
                try:
                    self._on_decision(decision)
                except Exception:
                    logger.exception("pool on_decision callback failed")
                    self.note_error()


_COUNTS = " (idle=%s active=%s queued=%s)"
_MESSAGES: dict[str, str] = {
    "reuse": "reusing idle connection to %s" + _COUNTS,
    "create": "creating new connection to %s" + _COUNTS,
    "expire": "expired idle connection to %s" + _COUNTS,
    "shed": "shedding surplus idle connection to %s, unused for its window" + _COUNTS,
    "evict": "evicting idle connection to %s" + _COUNTS,
    "handoff": "handing off connection to %s to a queued request" + _COUNTS,
    "close": "closing connection to %s" + _COUNTS,
}


def _log_decision(d: Decision) -> None:
    if not logger.isEnabledFor(logging.DEBUG):
        return
    origin = format_origin(d.origin)
    if d.kind == "timeout":
        msg = "pool timeout for %s after %ss (active=%s queued=%s)"
        logger.debug(msg, origin, d.waited, d.counts.active, d.counts.queued)
    elif d.for_origin is not None:
        msg = "evicting idle connection to %s to make room for %s" + _COUNTS
        logger.debug(msg, origin, format_origin(d.for_origin), *d.counts)
    else:
        logger.debug(_MESSAGES[d.kind], origin, *d.counts)
