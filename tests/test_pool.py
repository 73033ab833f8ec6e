"""Unit tests of the pool state machine: fake connections, a fake clock, no sockets."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable

import pytest

from wsgiproxy.addresses import Origin, format_origin
from wsgiproxy.client.pool import (
    Decision,
    Lease,
    Limits,
    Pool,
    PoolState,
    PoolTimeout,
    Transition,
    Waiter,
)

A: Origin = ("http", "a", 80)
B: Origin = ("http", "b", 80)
V6: Origin = ("https", "::1", 8443)

_ids = itertools.count(1)


class FakeConn:
    """A connection that only knows whether it was closed, and says so if closed twice."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.id = next(_ids)
        self.closed = False

    def close(self) -> None:
        assert not self.closed, f"connection {self.id} closed twice"
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakeConn {self.id} {format_origin(self.origin)}>"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedEvent:
    """An event whose wait() runs a step of the test (as if another thread ran meanwhile),
    then reports the flag, or `result` when forced (a timeout racing a wake-up)."""

    def __init__(self, on_wait: Callable[[], bool | None] | None) -> None:
        self.flag = False
        self.on_wait = on_wait

    def set(self) -> None:
        self.flag = True

    def wait(self, timeout: float | None = None) -> bool:
        forced = self.on_wait() if self.on_wait is not None else None
        return self.flag if forced is None else forced


class Script:
    """Event factory for Pool: each new event runs the next queued step when waited on."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], bool | None]] = []
        self.events: list[ScriptedEvent] = []

    def event(self) -> ScriptedEvent:
        self.events.append(ScriptedEvent(self.steps.pop(0) if self.steps else None))
        return self.events[-1]


def new_state(
    max_connections: int = 4, max_keepalive: int = 4, expiry: float = 60.0, surplus: float = 5.0
) -> PoolState[FakeConn]:
    return PoolState(Limits(max_connections, max_keepalive, expiry, surplus))


def take(state: PoolState[FakeConn], origin: Origin, now: float = 0.0) -> Lease[FakeConn]:
    """Acquire and, for a new slot, connect: a lease holding a connection."""
    waiter, _ = state.acquire(origin, now)
    assert waiter.lease is not None, "expected to be served at once"
    if waiter.lease.conn is None:
        state.connected(waiter.lease, FakeConn(origin))
    return waiter.lease


def closed_by(tr: Transition[FakeConn]) -> list[FakeConn]:
    for conn in tr.close:
        conn.close()
    return tr.close


def kinds(tr: Transition[FakeConn]) -> list[str]:
    return [d.kind for d in tr.decisions]


def new_pool(limits: Limits | None = None) -> tuple[Pool[FakeConn], Clock, Script, list[Decision]]:
    clock, script = Clock(), Script()
    seen: list[Decision] = []
    pool: Pool[FakeConn] = Pool(
        limits or Limits(2, 2, 10.0),
        clock=clock,
        event_factory=script.event,
        on_decision=seen.append,
    )
    return pool, clock, script, seen


def hold(pool: Pool[FakeConn], origin: Origin) -> Lease[FakeConn]:
    lease = pool.acquire(origin, timeout=0.0)
    if lease.conn is None:
        pool.connected(lease, FakeConn(origin))
    return lease


# -- each branch --------------------------------------------------------------------------


def test_reuses_newest_idle_connection_first() -> None:
    """Reusing the oldest idle socket makes requests hit upstream idle timeouts (502s)."""
    state = new_state()
    first, second = take(state, A), take(state, A)
    state.release(first, 1.0, reusable=True)
    state.release(second, 2.0, reusable=True)
    waiter, tr = state.acquire(A, 3.0)
    assert waiter.lease is not None and waiter.lease.conn is second.conn
    assert waiter.lease.reused and waiter.lease.uses == 2
    assert kinds(tr) == ["reuse"] and state.counters.reused == 1
    state.check_invariants()


def test_creates_a_slot_when_there_is_room() -> None:
    """Requests to a new upstream would queue behind a half-empty pool."""
    state = new_state()
    waiter, tr = state.acquire(A, 0.0)
    assert waiter.state == "served" and waiter.lease is not None
    assert waiter.lease.conn is None and not waiter.lease.reused
    assert kinds(tr) == ["create"] and state.stats()["connecting"] == 1
    state.connected(waiter.lease, FakeConn(A))
    assert state.counters.created == 1 and state.stats()["active"] == 1
    state.check_invariants()


def test_full_pool_evicts_oldest_idle_connection_of_another_origin() -> None:
    """A full pool of idle connections to one upstream would starve every other upstream."""
    state = new_state(max_connections=2, max_keepalive=2)
    old, new = take(state, B), take(state, B)
    state.release(old, 1.0, reusable=True)
    state.release(new, 2.0, reusable=True)
    waiter, tr = state.acquire(A, 3.0)
    assert closed_by(tr) == [old.conn]
    assert [(d.kind, d.origin, d.for_origin) for d in tr.decisions] == [
        ("evict", B, A),
        ("create", A, None),
    ]
    assert waiter.lease is not None and waiter.lease.origin == A
    assert state.counters.evicted == 1
    state.check_invariants()


def test_waits_when_full_then_gets_the_released_connection() -> None:
    """Requests over the limit would open extra upstream connections or fail at once."""
    state = new_state(max_connections=1)
    held = take(state, A)
    waiter, tr = state.acquire(A, 0.0)
    assert waiter.state == "queued" and tr.decisions == [] and state.queued == 1
    state.check_invariants()
    tr = state.release(held, 1.0, reusable=True)
    assert tr.wake == [waiter] and kinds(tr) == ["handoff"]
    assert waiter.lease is not None and waiter.lease.conn is held.conn and waiter.lease.reused
    state.check_invariants()


def test_pool_timeout_names_origin_limit_and_setting() -> None:
    """An operator could not tell from a 503 which limit to raise."""
    pool, _, script, _ = new_pool()
    hold(pool, A), hold(pool, A)
    inner: list[PoolTimeout] = []

    def second_request_times_out_while_first_waits() -> bool:
        with pytest.raises(PoolTimeout) as info:
            pool.acquire(B, timeout=2)
        inner.append(info.value)
        return False

    script.steps.append(second_request_times_out_while_first_waits)
    with pytest.raises(PoolTimeout) as outer:
        pool.acquire(A, timeout=5.0)
    assert str(inner[0]) == (
        "no upstream connection to http://b:80 free within 2.0s (HTTP_POOL_TIMEOUT); "
        "2/2 in use, 1 queued"
    )
    assert str(outer.value) == (
        "no upstream connection to http://a:80 free within 5.0s (HTTP_POOL_TIMEOUT); "
        "2/2 in use, 0 queued"
    )
    err = outer.value
    assert (err.origin, err.timeout, err.in_use, err.limit, err.queued) == (A, 5.0, 2, 2, 0)
    assert err.status == 503
    assert pool.stats()["counters"]["pool_timeouts"] == 2 and pool.stats()["queued"] == 0
    pool.check_invariants()


def test_idle_connection_expires_after_keepalive_expiry() -> None:
    """Reusing a connection the upstream already dropped gives clients 502s."""
    state = new_state(expiry=5.0)
    lease = take(state, A)
    state.release(lease, 10.0, reusable=True)
    waiter, tr = state.acquire(A, 14.9)
    assert waiter.lease is not None and waiter.lease.conn is lease.conn
    state.release(waiter.lease, 15.0, reusable=True)
    assert closed_by(state.close_expired(19.9)) == []
    tr = state.close_expired(20.0)
    assert closed_by(tr) == [lease.conn] and kinds(tr) == ["expire"]
    assert state.counters.expired == 1 and state.stats()["idle"] == 0
    state.check_invariants()


def test_expiry_also_runs_on_acquire() -> None:
    """Without the health thread, a stale idle connection would be reused."""
    state = new_state(expiry=5.0)
    lease = take(state, A)
    state.release(lease, 0.0, reusable=True)
    waiter, tr = state.acquire(A, 5.0)
    assert closed_by(tr) == [lease.conn] and kinds(tr) == ["expire", "create"]
    assert waiter.lease is not None and waiter.lease.conn is None


def test_keep_alive_timeout_header_shortens_expiry() -> None:
    """An upstream sending Keep-Alive: timeout=N would close connections we still reuse."""
    state = new_state(expiry=300.0)
    short, long_, never = take(state, A), take(state, A), take(state, A)
    state.release(short, 0.0, reusable=True, expires_in=1.0)
    state.release(long_, 0.0, reusable=True, expires_in=1000.0)  # capped at 300
    tr = state.release(never, 0.0, reusable=True, expires_in=0.0)
    assert closed_by(tr) == [never.conn] and kinds(tr) == ["close"]
    assert closed_by(state.close_expired(1.0)) == [short.conn]
    assert closed_by(state.close_expired(299.9)) == []
    assert closed_by(state.close_expired(300.0)) == [long_.conn]
    state.check_invariants()


def test_surplus_idle_connections_stay_until_unused_for_the_window() -> None:
    """A load above HTTP_MAX_KEEPALIVE_CONNECTIONS would close connections on release
    that its next requests reopen (a TLS handshake each): churn at the default settings."""
    state = new_state(max_connections=4, max_keepalive=2, surplus=5.0)
    leases = [take(state, A), take(state, B), take(state, A), take(state, B)]
    for t, lease in enumerate(leases):
        assert closed_by(state.release(lease, float(t), reusable=True)) == []
    assert state.stats()["idle"] == 4
    state.check_invariants()
    assert closed_by(state.close_expired(4.9)) == []  # the oldest came back at 0.0
    tr = state.close_expired(5.0)
    assert closed_by(tr) == [leases[0].conn] and kinds(tr) == ["shed"]
    tr = state.close_expired(6.5)  # the next oldest, idle since 1.0; then two are kept
    assert closed_by(tr) == [leases[1].conn]
    assert closed_by(state.close_expired(30.0)) == []
    assert state.stats()["idle"] == 2
    assert (state.counters.shed, state.counters.evicted, state.counters.closed) == (2, 0, 2)
    state.check_invariants()


def test_a_steady_load_above_the_limit_keeps_its_connections() -> None:
    """Connections a load keeps reusing would be shed and reopened at every release."""
    state = new_state(max_connections=8, max_keepalive=1, surplus=5.0)
    leases = [take(state, A) for _ in range(4)]
    now = 0.0
    for _ in range(200):  # 4 requests in flight, each done after 0.5 s, for 100 s
        now += 0.5
        for lease in leases:
            closed_by(state.release(lease, now, reusable=True))
        leases = [take(state, A, now) for _ in range(4)]
        state.check_invariants()
    assert (state.counters.created, state.counters.shed) == (4, 0)
    for lease in leases:
        closed_by(state.release(lease, now, reusable=True))
    assert len(closed_by(state.close_expired(now + 5.0))) == 3  # back to the one kept
    assert state.stats()["idle"] == 1


def test_no_keepalive_closes_on_release() -> None:
    """HTTP_MAX_KEEPALIVE_CONNECTIONS=0 would still keep idle connections for a while."""
    state = new_state(max_connections=2, max_keepalive=0, surplus=5.0)
    lease = take(state, A)
    tr = state.release(lease, 1.0, reusable=True)
    assert closed_by(tr) == [lease.conn] and kinds(tr) == ["shed"]
    assert state.stats()["idle"] == 0
    state.check_invariants()


def test_unreusable_release_closes_and_frees_the_slot_for_a_waiter() -> None:
    """A broken connection would keep its slot and queued requests would time out."""
    state = new_state(max_connections=1)
    held = take(state, A)
    waiter, _ = state.acquire(A, 0.0)
    tr = state.release(held, 1.0, reusable=False)
    assert closed_by(tr) == [held.conn] and kinds(tr) == ["close", "create"]
    assert tr.wake == [waiter] and waiter.lease is not None and waiter.lease.conn is None
    assert state.counters.closed == 1
    state.check_invariants()


def test_connect_failed_frees_the_slot() -> None:
    """An unreachable upstream would leak a slot per failed connect until the pool jams."""
    state = new_state(max_connections=1)
    first, _ = state.acquire(A, 0.0)
    second, _ = state.acquire(B, 0.0)
    assert first.lease is not None and second.state == "queued"
    tr = state.connect_failed(first.lease, 1.0)
    assert tr.wake == [second] and kinds(tr) == ["create"] and tr.close == []
    with pytest.raises(RuntimeError, match="already released"):
        state.connected(first.lease, FakeConn(A))
    assert state.counters.created == 0 and state.counters.closed == 0
    state.check_invariants()


def test_waiters_are_served_in_arrival_order_across_origins() -> None:
    """Requests to a busy upstream could be overtaken forever by others (starvation)."""
    state = new_state(max_connections=1)
    lease = take(state, A)
    waiters = [state.acquire(origin, 0.0)[0] for origin in (B, A, V6, A)]
    served: list[Origin] = []
    for t in range(4):
        tr = state.release(lease, float(t), reusable=True)
        closed_by(tr)
        assert len(tr.wake) == 1
        served.append(tr.wake[0].origin)
        lease = tr.wake[0].lease  # type: ignore[assignment]
        if lease.conn is None:
            state.connected(lease, FakeConn(lease.origin))
        state.check_invariants()
    assert served == [B, A, V6, A] and [w.state for w in waiters] == ["served"] * 4


def test_released_connection_is_closed_when_head_wants_another_origin() -> None:
    """The head waiter would wait while the connection it needs room for sits idle."""
    state = new_state(max_connections=1)
    held = take(state, A)
    waiter, _ = state.acquire(B, 0.0)
    tr = state.release(held, 1.0, reusable=True)
    assert closed_by(tr) == [held.conn]
    assert [(d.kind, d.origin, d.for_origin) for d in tr.decisions] == [
        ("evict", A, B),
        ("create", B, None),
    ]
    assert waiter.lease is not None and waiter.lease.origin == B
    state.check_invariants()


def test_one_connection_goes_to_one_waiter() -> None:
    """Two requests racing on one HTTP/1.1 connection would corrupt both responses."""
    state = new_state(max_connections=1)
    held = take(state, A)
    first, _ = state.acquire(A, 0.0)
    second, _ = state.acquire(A, 0.0)
    tr = state.release(held, 1.0, reusable=True)
    assert tr.wake == [first] and second.state == "queued" and second.lease is None
    state.check_invariants()


def test_connection_handed_to_a_waiter_is_never_closed() -> None:
    """Requests hung for the full read timeout when a promised connection was evicted."""
    state = new_state(max_connections=1, max_keepalive=0, expiry=1.0)
    held = take(state, A)
    waiter, _ = state.acquire(A, 0.0)
    tr = state.release(held, 0.5, reusable=True)
    assert waiter.lease is not None and waiter.lease.conn is held.conn and tr.close == []
    other, tr = state.acquire(B, 0.6)  # full: must queue, not evict the promised one
    assert other.state == "queued" and tr.close == []
    assert state.close_expired(100.0).close == []
    assert state.close_idle(100.0).close == []
    assert held.conn is not None and not held.conn.closed
    state.check_invariants()


def test_timed_out_waiter_leaves_without_disturbing_others() -> None:
    """A timeout in the middle of the queue would lose a wake-up or reorder requests."""
    state = new_state(max_connections=1)
    held = take(state, A)
    first, second, third = (state.acquire(o, 0.0)[0] for o in (A, B, A))
    lease, tr = state.cancel(second, 5.0)
    assert lease is None and second.state == "gone" and kinds(tr) == ["timeout"]
    state.check_invariants()
    tr = state.release(held, 1.0, reusable=True)
    assert tr.wake == [first]
    assert first.lease is not None
    tr = state.release(first.lease, 2.0, reusable=True)
    assert tr.wake == [third] and state.counters.pool_timeouts == 1
    state.check_invariants()


def test_queued_request_is_woken_when_served() -> None:
    """A served request would sleep until its pool timeout, then get a stale connection."""
    pool, _, script, _ = new_pool(Limits(1, 1, 10.0))
    held = hold(pool, A)
    script.steps.append(lambda: pool.release(held, reusable=True))
    lease = pool.acquire(A, timeout=1.0)
    assert script.events[-1].flag and lease.conn is held.conn and lease.reused


def test_release_says_whether_it_woke_a_queued_request() -> None:
    """The client yields after a hand-off so the woken request goes upstream first; a
    wrong answer would either never yield or yield on every response."""
    pool, _, script, _ = new_pool(Limits(1, 1, 10.0))
    held = hold(pool, A)
    woke: list[bool] = []
    script.steps.append(lambda: woke.append(pool.release(held, reusable=True)) or True)
    lease = pool.acquire(A, timeout=1.0)
    assert woke == [True]
    assert pool.release(lease, reusable=True) is False  # nobody queued: kept idle
    pool.check_invariants()


def test_waiter_served_as_its_wait_runs_out_takes_the_connection() -> None:
    """A wake-up racing the timeout would leak the connection and fail the request."""
    pool, _, script, seen = new_pool(Limits(1, 1, 10.0))
    held = hold(pool, A)

    def released_at_the_last_moment() -> bool:
        pool.release(held, reusable=True)
        return False  # the wait ran out just as the event was set

    script.steps.append(released_at_the_last_moment)
    lease = pool.acquire(A, timeout=1.0)
    assert lease.conn is held.conn
    stats = pool.stats()
    assert stats["counters"]["pool_timeouts"] == 0 and stats["queued"] == 0
    assert [d.kind for d in seen] == ["create", "handoff"]
    pool.release(lease, reusable=True)
    pool.check_invariants()


def test_abandoned_waiter_gives_back_what_it_was_served() -> None:
    """A client that leaves while queued would leak its connection for good."""
    pool, _, script, _ = new_pool(Limits(1, 1, 10.0))
    held = hold(pool, A)

    class ClientGone(BaseException):
        pass

    def served_then_killed() -> bool:
        pool.release(held, reusable=True)
        raise ClientGone

    script.steps.append(served_then_killed)
    with pytest.raises(ClientGone):
        pool.acquire(A, timeout=1.0)
    assert pool.stats()["idle"] == 1 and pool.stats()["active"] == 0
    other = hold(pool, B)  # evicts A's idle connection: now A must queue

    def killed_while_queued() -> bool:
        raise ClientGone

    script.steps.append(killed_while_queued)
    with pytest.raises(ClientGone):
        pool.acquire(A, timeout=1.0)
    stats = pool.stats()
    assert stats["queued"] == 0 and stats["counters"]["pool_timeouts"] == 0
    pool.release(other, reusable=True)
    pool.check_invariants()


def test_renew_replaces_a_dead_connection_without_queueing_again() -> None:
    """A request whose reused socket turned out dead would go to the back of the queue
    (and could time out) instead of keeping its place."""
    state = new_state(max_connections=1)
    lease = take(state, A)
    state.release(lease, 1.0, reusable=True)
    reused = take(state, A, 2.0)
    waiter, _ = state.acquire(A, 2.0)  # someone queues behind the holder
    assert waiter.state == "queued"
    fresh, tr = state.renew(reused, 3.0)
    assert closed_by(tr) == [lease.conn]
    assert kinds(tr) == ["close", "create"]
    assert fresh.conn is None and not fresh.reused and fresh.origin == A
    assert state.open == 1 and state.queued == 1 and waiter.state == "queued"
    state.check_invariants()
    state.connected(fresh, FakeConn(A))
    with pytest.raises(RuntimeError):
        state.release(reused, 4.0, reusable=True)  # the old lease is gone
    tr = state.release(fresh, 4.0, reusable=True)
    assert tr.wake == [waiter] and waiter.lease is not None
    state.check_invariants()


def test_renew_of_a_connecting_lease_changes_nothing() -> None:
    """Renewing a slot that has no socket yet must not close or count anything."""
    state = new_state()
    waiter, _ = state.acquire(A, 0.0)
    assert waiter.lease is not None
    same, tr = state.renew(waiter.lease, 0.0)
    assert same is waiter.lease and tr.close == [] and tr.decisions == []
    state.check_invariants()


def test_held_lists_each_holder_with_when_it_got_its_connection() -> None:
    """Leak accounting could not name a connection held longer than its request."""
    state = new_state()
    first = take(state, A, 1.0)
    take(state, B, 2.0)
    state.release(first, 3.0, reusable=True)
    take(state, A, 4.0)  # the idle one, lent again at 4.0
    assert state.held() == [(B, 2.0), (A, 4.0)]


def test_dead_idle_connections_are_closed_but_not_ones_taken_meanwhile() -> None:
    """The health thread would close a connection a request had just taken."""
    pool, _, _, _ = new_pool(Limits(3, 3, 60.0))
    a, b = hold(pool, A), hold(pool, B)
    pool.release(a, reusable=True)
    pool.release(b, reusable=True)
    dead = {a.conn, b.conn}
    taken: list[Lease[FakeConn]] = []

    def is_dead(conn: FakeConn) -> bool:
        if conn is b.conn and not taken:
            taken.append(pool.acquire(B, timeout=0.0))  # a request takes it meanwhile
        return conn in dead

    assert pool.close_dead_idle(is_dead) == 1
    assert a.conn is not None and a.conn.closed
    assert b.conn is not None and not b.conn.closed and taken[0].conn is b.conn
    pool.check_invariants()


def test_double_release_is_refused() -> None:
    """A lease released twice would put one connection in two requests' hands."""
    state = new_state()
    lease = take(state, A)
    state.release(lease, 0.0, reusable=True)
    again = take(state, A)
    assert again.conn is lease.conn
    with pytest.raises(RuntimeError, match="already released"):
        state.release(lease, 1.0, reusable=True)
    state.check_invariants()


def test_close_idle_of_one_origin() -> None:
    """The health thread could not drop connections to an upstream that is failing."""
    pool, _, _, _ = new_pool(Limits(4, 4, 10.0))
    leases = [hold(pool, A), hold(pool, A), hold(pool, B)]
    for lease in leases:
        pool.release(lease, reusable=True)
    assert pool.close_idle(A) == 2
    assert [lease.conn.closed for lease in leases] == [True, True, False]  # type: ignore[union-attr]
    assert pool.close_idle() == 1 and pool.stats()["open"] == 0
    pool.check_invariants()


def test_close_turns_away_waiters_and_later_acquires() -> None:
    """Shutting a worker down would hang queued requests or reopen connections."""
    pool, _, script, _ = new_pool(Limits(1, 1, 10.0))
    held = hold(pool, A)

    def closed_while_waiting() -> None:
        pool.close()

    script.steps.append(closed_while_waiting)
    with pytest.raises(RuntimeError, match="pool is closed"):
        pool.acquire(A, timeout=1.0)
    with pytest.raises(RuntimeError, match="pool is closed"):
        pool.acquire(A, timeout=1.0)
    pool.release(held, reusable=True)
    assert held.conn is not None and held.conn.closed
    assert pool.stats()["open"] == 0
    pool.check_invariants()


def test_failing_close_and_callback_still_wake_and_count() -> None:
    """A close() that raises would strand a woken request or crash the releasing one."""

    class BadConn(FakeConn):
        def close(self) -> None:
            raise OSError("boom")

    def bad_callback(decision: Decision) -> None:
        raise ValueError("bug in callback")

    pool: Pool[FakeConn] = Pool(Limits(1, 1, 10.0), clock=Clock(), on_decision=bad_callback)
    lease = pool.acquire(A, timeout=0)
    pool.connected(lease, BadConn(A))
    pool.release(lease, reusable=False)
    assert pool.stats()["counters"]["errors"] == 3  # callback for create, close; the close
    assert pool.stats()["open"] == 0


def test_debug_log_says_each_decision(caplog: pytest.LogCaptureFixture) -> None:
    """Operators debugging PROXY_LOG_LEVEL=debug would get no or misleading pool lines."""
    caplog.set_level(logging.DEBUG, logger="wsgiproxy.client.pool")
    pool, clock, script, seen = new_pool(Limits(2, 1, 10.0))
    a, b = hold(pool, A), hold(pool, B)
    pool.release(a, reusable=True)
    a = hold(pool, A)
    pool.release(b, reusable=True)
    v6 = hold(pool, V6)
    script.steps.append(lambda: pool.release(a, reusable=True))
    a = pool.acquire(A, timeout=5.0)
    script.steps.append(lambda: False)
    with pytest.raises(PoolTimeout):
        pool.acquire(B, timeout=5.0)
    pool.release(v6, reusable=False)
    pool.release(a, reusable=True)
    clock.now = 10.0
    assert pool.close_expired() == 1
    a, b = hold(pool, A), hold(pool, B)
    pool.release(a, reusable=True)
    pool.release(b, reusable=True)
    clock.now = 15.0
    assert pool.close_expired() == 1
    assert caplog.messages == [
        "creating new connection to http://a:80 (idle=0 active=1 queued=0)",
        "creating new connection to http://b:80 (idle=0 active=2 queued=0)",
        "reusing idle connection to http://a:80 (idle=0 active=2 queued=0)",
        "evicting idle connection to http://b:80 to make room for https://[::1]:8443"
        " (idle=0 active=1 queued=0)",
        "creating new connection to https://[::1]:8443 (idle=0 active=2 queued=0)",
        "handing off connection to http://a:80 to a queued request (idle=0 active=2 queued=0)",
        "pool timeout for http://b:80 after 5.0s (active=2 queued=0)",
        "closing connection to https://[::1]:8443 (idle=0 active=1 queued=0)",
        "expired idle connection to http://a:80 (idle=0 active=0 queued=0)",
        "creating new connection to http://a:80 (idle=0 active=1 queued=0)",
        "creating new connection to http://b:80 (idle=0 active=2 queued=0)",
        "shedding surplus idle connection to http://a:80, unused for its window"
        " (idle=1 active=0 queued=0)",
    ]
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert [d.kind for d in seen] == [
        "create", "create", "reuse", "evict", "create", "handoff", "timeout", "close",
        "expire", "create", "create", "shed",
    ]  # fmt: skip


def test_repr_and_stats_show_the_figures() -> None:
    """/_proxy/health and metrics would show wrong or missing pool figures."""
    pool, _, _, _ = new_pool(Limits(4, 4, 10.0))
    assert repr(pool) == "<Pool active=0 idle=0 queued=0 origins=0>"
    a1, a2, b = hold(pool, A), hold(pool, A), hold(pool, B)
    pool.acquire(V6, timeout=0)  # connecting
    pool.release(a1, reusable=True)
    pool.note_retry()
    pool.note_error()
    assert repr(pool) == "<Pool active=3 idle=1 queued=0 origins=3>"
    assert pool.stats() == {
        "active": 2,
        "idle": 1,
        "connecting": 1,
        "queued": 0,
        "open": 4,
        "max_connections": 4,
        "max_keepalive": 4,
        "by_origin": {
            "http://a:80": {"active": 1, "idle": 1, "connecting": 0},
            "http://b:80": {"active": 1, "idle": 0, "connecting": 0},
            "https://[::1]:8443": {"active": 0, "idle": 0, "connecting": 1},
        },
        "counters": {
            "created": 3,
            "reused": 0,
            "expired": 0,
            "shed": 0,
            "evicted": 0,
            "closed": 0,
            "pool_timeouts": 0,
            "retries": 1,
            "errors": 1,
        },
    }
    del a2, b


def test_limits_are_validated() -> None:
    """A zero-connection pool would queue every request until it times out."""
    with pytest.raises(ValueError, match="max_connections must be at least 1, got 0"):
        Limits(0, 1, 1.0)
    with pytest.raises(ValueError, match="max_keepalive"):
        Limits(1, -1, 1.0)
    with pytest.raises(ValueError, match="keepalive_expiry"):
        Limits(1, 1, -1.0)
    with pytest.raises(ValueError, match="surplus_idle"):
        Limits(1, 1, 1.0, -1.0)


# -- randomized sequences -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_random_sequences_keep_every_invariant(seed: int) -> None:
    """Some interleaving of requests, timeouts and expiry would break the pool's rules."""
    rng = random.Random(seed)
    state: PoolState[FakeConn] = PoolState(
        Limits(
            rng.randint(1, 6),
            rng.randint(0, 4),
            rng.choice([0.5, 3.0, 60.0]),
            rng.choice([0.0, 1.0, 5.0]),
        )
    )
    origins = [A, B, V6]
    now = 0.0
    held: list[Lease[FakeConn]] = []
    queued: list[Waiter[FakeConn]] = []
    in_use: set[int] = set()
    served_order: list[int] = []

    def apply(tr: Transition[FakeConn]) -> None:
        for conn in tr.close:
            assert conn.id not in in_use, "closed a connection a request holds"
            conn.close()
        for waiter in tr.wake:
            assert waiter.lease is not None
            queued.remove(waiter)
            served_order.append(waiter.seq)
            got(waiter.lease)

    def got(lease: Lease[FakeConn]) -> None:
        if lease.conn is not None:
            assert not lease.conn.closed, "handed out a closed connection"
            assert lease.conn.id not in in_use, "one connection handed to two requests"
            in_use.add(lease.conn.id)
        held.append(lease)

    for _ in range(3000):
        op = rng.random()
        if op < 0.35:
            waiter, tr = state.acquire(rng.choice(origins), now)
            apply(tr)
            if waiter.lease is not None:
                served_order.append(waiter.seq)
                got(waiter.lease)
            else:
                queued.append(waiter)
        elif op < 0.7 and held:
            lease = held.pop(rng.randrange(len(held)))
            if lease.conn is None:
                if rng.random() < 0.8:
                    state.connected(lease, FakeConn(lease.origin))
                    assert lease.conn is not None
                    in_use.add(lease.conn.id)
                    held.append(lease)
                else:
                    apply(state.connect_failed(lease, now))
                continue
            in_use.discard(lease.conn.id)
            if rng.random() < 0.1:  # its socket turned out dead: a new one, same slot
                fresh, tr = state.renew(lease, now)
                apply(tr)
                held.append(fresh)
                continue
            expires_in = rng.choice([None, None, 0.2, 0.0])
            apply(state.release(lease, now, reusable=rng.random() < 0.8, expires_in=expires_in))
        elif op < 0.8 and queued:
            waiter = queued.pop(rng.randrange(len(queued)))
            taken, tr = state.cancel(waiter, 1.0)
            assert taken is None and waiter.state == "gone"
            apply(tr)
        elif op < 0.95:
            now += rng.choice([0.01, 0.1, 0.5, 2.0])
            apply(state.close_expired(now))
        else:
            apply(state.close_idle(now, rng.choice([None, *origins])))
        state.check_invariants()
    assert served_order == sorted(served_order) and len(served_order) > 100
    # Drain: everything held comes back, the queue empties, nothing is left active.
    while held or queued:
        lease = held.pop(0)
        if lease.conn is None:
            apply(state.connect_failed(lease, now))
        else:
            in_use.discard(lease.conn.id)
            apply(state.release(lease, now, reusable=True))
        state.check_invariants()
    stats = state.stats()
    assert stats["active"] == stats["connecting"] == stats["queued"] == 0


# -- cost: counted, not timed -------------------------------------------------------------


def busy_pool_with_queue(n: int) -> tuple[PoolState[FakeConn], list[Lease[FakeConn]]]:
    state = new_state(max_connections=100, max_keepalive=100, expiry=60.0)
    leases = [take(state, A) for _ in range(100)]
    for i in range(n):
        waiter, _ = state.acquire(B if i % 2 == 0 else A, 0.0)
        assert waiter.state == "queued"
    return state, leases


@pytest.mark.parametrize("n", [10, 10_000])
def test_one_release_costs_the_same_at_any_queue_depth(n: int) -> None:
    """A deep queue would make every release rescan it, stalling the worker (httpcore)."""
    state, leases = busy_pool_with_queue(n)
    before = state.steps
    tr = state.release(leases[0], 1.0, reusable=True)  # head wants B: evict, create
    assert len(tr.wake) == 1 and kinds(tr) == ["evict", "create"]
    assert state.steps - before == 2  # served the head, stopped at the next one
    before = state.steps
    waiter, _ = state.acquire(A, 1.0)  # an arrival
    assert waiter.state == "queued" and state.steps - before == 1
    before = state.steps
    tr = state.release(leases[1], 1.0, reusable=True)  # head wants A: handoff
    assert kinds(tr) == ["handoff"] and state.steps - before == 1
    state.check_invariants()


def test_draining_the_queue_costs_linear_work() -> None:
    """Draining N queued requests would cost O(N^2) and time out the tail of the queue."""
    n = 10_000
    state, leases = busy_pool_with_queue(n)
    before = state.steps
    served = 0
    t = 1.0
    while leases:
        lease = leases.pop()
        if lease.conn is None:
            state.connected(lease, FakeConn(lease.origin))
        t += 0.001
        tr = state.release(lease, t, reusable=True)
        closed_by(tr)
        served += len(tr.wake)
        leases += [w.lease for w in tr.wake if w.lease is not None]
    assert served == n and state.queued == 0
    assert state.steps - before <= 3 * (n + 100)
    state.check_invariants()


def test_expiry_heap_stays_bounded_by_idle_connections() -> None:
    """Stale expiry entries from reused connections would grow memory without bound."""
    state = new_state(max_connections=4, max_keepalive=4, expiry=60.0)
    before = state.steps
    for i in range(20_000):
        state.release(take(state, A, float(i)), float(i), reusable=True)
    assert len(state._expiry) <= 2 * 1 + 64
    assert state.steps - before <= 2 * 20_000
    state.check_invariants()


def test_origin_formatting() -> None:
    """Logs and stats would show IPv6 upstreams as unparseable host:port strings."""
    assert format_origin(("http", "10.0.0.5", 80)) == "http://10.0.0.5:80"
    assert format_origin(("https", "::1", 443)) == "https://[::1]:443"
    assert format_origin(("https", "[::1]", 443)) == "https://[::1]:443"
