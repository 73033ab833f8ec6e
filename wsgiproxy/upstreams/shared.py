"""Upstream server state shared by every worker of one instance: a small mapped table.

A server ejected by one worker must be avoided by the others, and ``least_conn`` must
count every worker's requests, so this state cannot live in one process. The gunicorn
master creates a file of fixed size before it forks (``create``, from gunicorn.conf.py,
as it sets up prometheus_client's multiprocess directory) and every worker maps it
(``attach``). Without a file (``flask run``, an app built in a test) the same table lives
in anonymous memory of the one process.

Layout: 64-bit little-endian cells, read and written in place through a memoryview.

- A header: magic, number of servers, number of worker slots.
- Worker slots: a pid each. A worker claims a slot at start and writes only its own row of
  per-server counts (in flight, requests, failures), so the hot path takes no lock shared
  between processes; readers add the rows up. When gunicorn reaps a worker, the master
  clears its row (``forget``), and a worker claiming a slot clears it too, so a worker
  that died leaves no requests in flight behind.
- Server records: failures in the current window and when it started, ejected-until,
  ejections in a row and in all, and the trial lease of a server whose ejection has
  ended. Any worker may change a record, rarely (a failure, a recovery), under an
  ``flock`` of the file held only while the record is read and written.

Times are ``time.monotonic()`` seconds: CLOCK_MONOTONIC, the same in every process.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..concurrency import gevent_patched

MAGIC = int.from_bytes(b"WPXSTAT1", "little")
_HEADER = 4  # cells: magic, servers, slots, reserved
_ROW = 3  # cells per server in a worker's row: in flight, requests, failures
_RECORD = 6  # cells per server record
#: Environment variable through which the master hands the file to its workers.
ENV = "WSGIPROXY_SHARED_STATE"


@dataclass(frozen=True)
class Record:
    """One server's shared record (see the module docstring)."""

    fails: int = 0
    window_start: float = 0.0
    ejected_until: float = 0.0
    ejections_in_row: int = 0
    ejections: int = 0
    trial_until: float = 0.0


def size_for(servers: int, slots: int) -> int:
    """Bytes of a table for ``servers`` servers and ``slots`` worker slots."""
    return 8 * (_HEADER + slots + slots * servers * _ROW + servers * _RECORD)


def create(path: str, servers: int, slots: int) -> None:
    """Write an empty table (the gunicorn master, before forking)."""
    data = bytearray(size_for(servers, slots))
    ints = memoryview(data).cast("q")
    ints[0], ints[1], ints[2] = MAGIC, servers, slots
    with open(path, "wb") as handle:
        handle.write(data)


class SlotsFull(RuntimeError):
    """Every worker slot of the table belongs to a live process: more workers run than
    the master made room for (gunicorn's ``-w`` or ``kill -TTIN`` beyond PROXY_WORKERS)."""


class SharedState:
    """This process's view of the table: its own slot, and every server's record."""

    def __init__(
        self, path: str | None, servers: int, slots: int = 1, *, pid: int | None = None
    ) -> None:
        self.path = path
        self.servers = servers
        if path is None:
            self._fd = -1
            self._map = mmap.mmap(-1, size_for(servers, slots))
            self._ints = memoryview(self._map).cast("q")
            self._ints[0], self._ints[1], self._ints[2] = MAGIC, servers, slots
        else:
            self._fd = os.open(path, os.O_RDWR)
            self._map = mmap.mmap(self._fd, 0)
            self._ints = memoryview(self._map).cast("q")
            if self._ints[0] != MAGIC or self._ints[1] != servers:
                found = self._ints[1]
                self.close()
                raise RuntimeError(
                    f"shared upstream state {path} holds {found} servers, this worker has "
                    f"{servers}: it was made for another configuration"
                )
        self._floats = memoryview(self._map).cast("d")
        self.slots = self._ints[2]
        self._rows = _HEADER + self.slots
        self._records = self._rows + self.slots * servers * _ROW
        # Only this process writes its row. Threads need a lock around each change;
        # greenlets do not (nothing in a change yields), and it would cost each request.
        self._local: contextlib.AbstractContextManager[object] = (
            contextlib.nullcontext() if gevent_patched() else threading.Lock()
        )
        self._mine: list[int] = [0] * (servers * _ROW)
        self.slot = self._claim(os.getpid() if pid is None else pid)

    # -- worker slots ---------------------------------------------------------------------
    def _claim(self, pid: int) -> int:
        """A slot for this process: a free one, or one whose process is gone."""
        ints = self._ints
        with self._locked():
            for slot in range(self.slots):
                owner = ints[_HEADER + slot]
                if owner in (0, pid) or not _alive(owner):
                    ints[_HEADER + slot] = pid
                    self._clear_row(slot)
                    return slot
        raise SlotsFull(
            f"shared upstream state {self.path} has no free worker slot of {self.slots}"
        )

    def _clear_row(self, slot: int) -> None:
        _clear_row(self._ints, self.servers, self.slots, slot)

    # -- this worker's counts ---------------------------------------------------------------
    def started(self, server: int) -> None:
        """A request to ``server`` began in this worker: one more in flight and sent."""
        cell = server * _ROW
        at = self._rows + self.slot * self.servers * _ROW + cell
        mine, ints = self._mine, self._ints
        # Only this process writes its row; the lock orders this process's threads.
        with self._local:
            ints[at] = mine[cell] = mine[cell] + 1
            ints[at + 1] = mine[cell + 1] = mine[cell + 1] + 1

    def finished(self, server: int, failed: bool) -> None:
        """A request to ``server`` ended in this worker."""
        cell = server * _ROW
        at = self._rows + self.slot * self.servers * _ROW + cell
        mine, ints = self._mine, self._ints
        with self._local:
            ints[at] = mine[cell] = mine[cell] - 1
            if failed:
                ints[at + 2] = mine[cell + 2] = mine[cell + 2] + 1

    def counts(self, server: int) -> tuple[int, int, int]:
        """(in flight, requests, failures) of ``server``, every live worker together."""
        ints = self._ints
        step = self.servers * _ROW
        base = self._rows + server * _ROW
        end = base + self.slots * step
        in_flight = sum(ints[base:end:step])
        requests = sum(ints[base + 1 : end + 1 : step])
        failures = sum(ints[base + 2 : end + 2 : step])
        return in_flight, requests, failures

    def in_flight(self, server: int) -> int:
        """Requests to ``server`` in flight in every live worker."""
        step = self.servers * _ROW
        base = self._rows + server * _ROW
        return sum(self._ints[base : base + self.slots * step : step])

    # -- server records ---------------------------------------------------------------------
    def record(self, server: int) -> Record:
        """``server``'s record as it is now (read without a lock: each cell is whole)."""
        at = self._records + server * _RECORD
        ints, floats = self._ints, self._floats
        return Record(
            ints[at], floats[at + 1], floats[at + 2], ints[at + 3], ints[at + 4], floats[at + 5]
        )

    def ejected_until(self, server: int) -> float:
        """The hot path's one read: 0.0 unless ``server`` is or was ejected."""
        return self._floats[self._records + server * _RECORD + 2]

    def trial_until(self, server: int) -> float:
        return self._floats[self._records + server * _RECORD + 5]

    def update(self, server: int, change: Callable[[Record], Record | None]) -> Record:
        """Read, change and write ``server``'s record as one step for every process.

        ``change`` returns the new record, or None to leave it as it is; the record
        written (or kept) is returned.
        """
        with self._locked():
            old = self.record(server)
            new = change(old)
            if new is None or new == old:
                return old
            at = self._records + server * _RECORD
            ints, floats = self._ints, self._floats
            ints[at], floats[at + 1], floats[at + 2] = (
                new.fails,
                new.window_start,
                new.ejected_until,
            )
            ints[at + 3], ints[at + 4], floats[at + 5] = (
                new.ejections_in_row,
                new.ejections,
                new.trial_until,
            )
            return new

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._local:
            if self._fd < 0:
                yield
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Unmap (the worker is exiting); its slot is cleared by the master."""
        for view in ("_floats", "_ints"):
            held = getattr(self, view, None)
            if held is not None:
                held.release()
        self._map.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def forget(path: str, pid: int) -> None:
    """A worker is gone (gunicorn's master reaped it): its counts leave the sums.

    The master calls this from ``child_exit``; it opens the file without claiming a slot.
    A missing file is no error: a reload that changed the servers removed the old file,
    whose workers' counts went with it.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        with mmap.mmap(fd, 0) as mapped:
            ints = memoryview(mapped).cast("q")
            try:
                servers, slots = ints[1], ints[2]
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    for slot in range(slots):
                        if ints[_HEADER + slot] == pid:
                            _clear_row(ints, servers, slots, slot)
                            ints[_HEADER + slot] = 0
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                ints.release()
    finally:
        os.close(fd)


def _clear_row(ints: memoryview, servers: int, slots: int, slot: int) -> None:
    start = _HEADER + slots + slot * servers * _ROW
    for i in range(start, start + servers * _ROW):
        ints[i] = 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["ENV", "Record", "SharedState", "create", "forget", "size_for"]
