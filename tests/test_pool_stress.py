"""Stress tests of the thread-safe pool: real threads, and gevent in a subprocess."""

from __future__ import annotations

import itertools
import json
import random
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

from tests.support.processes import run_python
from tests.support.stress import run_concurrently
from tests.support.wait import wait_until
from wsgiproxy.addresses import Origin
from wsgiproxy.client.pool import Lease, Limits, Pool, PoolTimeout

ORIGINS: list[Origin] = [("http", "a", 80), ("http", "b", 80), ("https", "::1", 8443)]


class Ledger:
    """Who holds which connection, checked on every hand-out and close."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_use: set[int] = set()
        self.ids = itertools.count(1)
        self.errors: list[BaseException] = []

    def take(self, lease: Lease[Conn]) -> None:
        conn = lease.conn
        assert conn is not None
        with self.lock:
            if conn.closed:
                self.errors.append(AssertionError(f"handed out closed connection {conn.id}"))
            if conn.id in self.in_use:
                self.errors.append(AssertionError(f"connection {conn.id} held twice"))
            self.in_use.add(conn.id)

    def give_back(self, lease: Lease[Conn]) -> None:
        assert lease.conn is not None
        with self.lock:
            self.in_use.discard(lease.conn.id)


class Conn:
    def __init__(self, ledger: Ledger, origin: Origin) -> None:
        self.ledger = ledger
        self.origin = origin
        self.id = next(ledger.ids)
        self.closed = False

    def close(self) -> None:
        with self.ledger.lock:
            if self.closed or self.id in self.ledger.in_use:
                self.ledger.errors.append(AssertionError(f"bad close of connection {self.id}"))
            self.closed = True


def checks(pool: Pool[Conn]) -> Callable[[], None]:
    """Check every invariant under the lock and expire idle connections, as the health
    thread does."""

    def check() -> None:
        pool.check_invariants()
        pool.close_expired()

    return check


def test_threads_keep_invariants_and_never_deadlock() -> None:
    """Under real concurrency the pool would exceed its limit, share a connection or hang."""
    pool: Pool[Conn] = Pool(
        Limits(max_connections=6, max_keepalive=3, keepalive_expiry=0.02, surplus_idle=0.005)
    )
    ledger = Ledger()
    outcomes = {"served": 0, "timeouts": 0}
    count = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(250):
                origin = rng.choice(ORIGINS)
                try:
                    lease = pool.acquire(origin, timeout=0.002 if rng.random() < 0.1 else 30.0)
                except PoolTimeout:
                    with count:
                        outcomes["timeouts"] += 1
                    continue
                with count:
                    outcomes["served"] += 1
                if lease.conn is None:
                    if rng.random() < 0.05:
                        pool.connect_failed(lease)
                        continue
                    pool.connected(lease, Conn(ledger, origin))
                ledger.take(lease)
                if rng.random() < 0.5:
                    time.sleep(rng.random() * 0.0005)  # hold the connection a little
                ledger.give_back(lease)
                roll = rng.random()
                if roll < 0.1:
                    pool.discard(lease)
                elif roll < 0.2:
                    pool.release(lease, reusable=True, expires_in=0.005)
                else:
                    pool.release(lease, reusable=True)
        except BaseException as exc:
            ledger.errors.append(exc)

    run_concurrently(40, worker, check=checks(pool), name="w")
    assert ledger.errors == []
    assert outcomes["served"] + outcomes["timeouts"] == 40 * 250
    pool.check_invariants()
    stats = pool.stats()
    assert (stats["active"], stats["connecting"], stats["queued"]) == (0, 0, 0)
    assert stats["counters"]["pool_timeouts"] == outcomes["timeouts"]
    assert stats["open"] == stats["idle"] <= 6
    # The surplus above max_keepalive goes once it has sat unused for its window.
    wait_until(lambda: pool.close_expired() >= 0 and pool.stats()["idle"] <= 3, 5, "surplus shed")


class LateEvent(threading.Event):
    """An event whose waiter is slow to run again after timing out: it widens the window in
    which a release serves a waiter that has already given up, and counts those races."""

    races = 0

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        if not woken:
            time.sleep(0.0003)
            if self.is_set():
                LateEvent.races += 1  # served after the timeout: must still get its lease
        return woken


def test_timeouts_racing_wakeups_lose_no_connection() -> None:
    """A timeout racing a hand-off would leak the connection until the pool jams for good."""
    pool: Pool[Conn] = Pool(
        Limits(max_connections=2, max_keepalive=2, keepalive_expiry=60.0), event_factory=LateEvent
    )
    ledger = Ledger()
    LateEvent.races = 0

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                try:
                    lease = pool.acquire(rng.choice(ORIGINS[:2]), timeout=rng.random() * 0.001)
                except PoolTimeout:
                    continue
                if lease.conn is None:
                    pool.connected(lease, Conn(ledger, lease.origin))
                ledger.take(lease)
                time.sleep(0.0002)  # hold it: others queue and time out around the release
                ledger.give_back(lease)
                pool.release(lease, reusable=True)
        except BaseException as exc:
            ledger.errors.append(exc)

    run_concurrently(20, worker, check=checks(pool), name="r")
    assert ledger.errors == []
    stats = pool.stats()
    assert (stats["active"], stats["connecting"], stats["queued"]) == (0, 0, 0)
    assert stats["counters"]["pool_timeouts"] > 0 and LateEvent.races > 0, "race not exercised"
    # Every slot is still usable: both can be taken at once without waiting.
    leases = [pool.acquire(ORIGINS[2], timeout=0), pool.acquire(ORIGINS[2], timeout=0)]
    for lease in leases:
        pool.discard(lease)
    pool.check_invariants()


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import random
    import threading

    import gevent

    from wsgiproxy.client.pool import Limits, Pool, PoolTimeout

    class Conn:
        def __init__(self):
            self.closed = False

        def close(self):
            assert not self.closed
            self.closed = True

    pool = Pool(Limits(max_connections=4, max_keepalive=2, keepalive_expiry=0.01))
    assert type(pool._lock).__module__.startswith("gevent"), type(pool._lock)
    origins = [("http", "a", 80), ("http", "b", 80), ("http", "c", 80)]
    served = timeouts = 0

    def worker(seed):
        global served, timeouts
        rng = random.Random(seed)
        for _ in range(100):
            try:
                lease = pool.acquire(rng.choice(origins), 0.0005 if rng.random() < 0.1 else 30)
            except PoolTimeout:
                timeouts += 1
                continue
            served += 1
            if lease.conn is None:
                pool.connected(lease, Conn())
            gevent.sleep(rng.random() * 0.001)
            pool.check_invariants()
            pool.release(lease, reusable=rng.random() < 0.9)

    greenlets = [gevent.spawn(worker, i) for i in range(100)]
    gevent.joinall(greenlets, timeout=60, raise_error=True)
    assert all(g.dead for g in greenlets), "deadlock under gevent"
    assert served + timeouts == 100 * 100

    # A greenlet killed while queued (its client went away) leaves the queue cleanly.
    held = [pool.acquire(origins[0], 1) for _ in range(4)]
    for lease in held:
        if lease.conn is None:
            pool.connected(lease, Conn())
    doomed = gevent.spawn(pool.acquire, origins[1], 30)
    gevent.idle()  # runs until every greenlet is blocked: doomed is then queued
    assert pool.stats()["queued"] == 1
    doomed.kill()
    assert pool.stats()["queued"] == 0
    for lease in held:
        pool.release(lease, reusable=True)
    pool.check_invariants()
    print("OK " + json.dumps(pool.stats()))
    """
)


def test_gevent_greenlets_share_the_pool_without_deadlock() -> None:
    """Under gunicorn's gevent worker the pool's lock would block the hub or hang requests."""
    pytest.importorskip("gevent")
    proc = run_python("-W", "error", "-c", GEVENT_SCRIPT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.split("OK ", 1)[1])
    assert (stats["active"], stats["connecting"], stats["queued"]) == (0, 0, 0)
    assert stats["counters"]["created"] > 0 and stats["counters"]["reused"] > 0
