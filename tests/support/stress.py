"""Many threads at once, joined by one deadline, with another checking as they run.

A thread that raises fails the test with its own exception, in the test's thread; a
thread still running at the deadline fails it as a deadlock (or a hung client), by name.
Threads are daemons, so a hang fails the test instead of the whole run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a whole crowd of threads may take before it counts as a deadlock.
DEADLINE = 60.0


class Threads:
    """Threads started one at a time (``start``) and joined together (``join``, or on
    leaving a ``with`` block, which sets ``results``)."""

    def __init__(self, name: str = "worker", deadline: float = DEADLINE) -> None:
        self.name = name
        self.deadline = deadline
        self.results: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._raised: dict[int, BaseException] = {}

    def start(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` in a new thread, named ``{name}{n}``."""
        index = len(self._threads)
        self.results.append(None)

        def run() -> None:
            try:
                self.results[index] = fn(*args, **kwargs)
            except BaseException as exc:  # raised again by join, in the test's thread
                self._raised[index] = exc

        thread = threading.Thread(target=run, name=f"{self.name}{index}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _wait(self) -> list[str]:
        deadline = time.monotonic() + self.deadline
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]

    def join(self) -> list[Any]:
        """Wait for every thread; fail if one is still running after the deadline or one
        raised; return what each returned, in the order they were started."""
        alive = self._wait()
        assert not alive, f"deadlock: threads still running after {self.deadline}s: {alive[:5]}"
        for index in sorted(self._raised):
            raise self._raised[index]
        return self.results

    def __enter__(self) -> Threads:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.join()
        else:  # the block failed: wait for the threads, but let its failure be the one seen
            self._wait()


def run_concurrently(
    n: int,
    fn: Callable[[int], T],
    *,
    check: Callable[[], None] | None = None,
    name: str = "worker",
    deadline: float = DEADLINE,
) -> list[T]:
    """Run ``fn(i)`` for i in range(n), all at once, and return the results in order.

    With ``check``, another thread calls it every millisecond until they have all
    finished (an invariant check, or housekeeping racing them); its exception fails the
    test too."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def checking(check: Callable[[], None]) -> None:
        try:
            while not stop.wait(0.001):
                check()
        except BaseException as exc:  # raised again below, in the test's thread
            failures.append(exc)

    checker = None
    if check is not None:
        checker = threading.Thread(target=checking, args=(check,), name="checker", daemon=True)
        checker.start()
    threads = Threads(name, deadline)
    try:
        for i in range(n):
            threads.start(fn, i)
        results: list[T] = threads.join()
    finally:
        stop.set()
        if checker is not None:
            checker.join(deadline)
    assert checker is None or not checker.is_alive(), "the checker is still running"
    if failures:
        raise failures[0]
    return results
