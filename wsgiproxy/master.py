"""What the gunicorn master keeps from one reading of gunicorn.conf.py to the next.

gunicorn executes gunicorn.conf.py at start and again on every ``kill -HUP`` (its
``Arbiter.reload``), each time as a fresh module, then forks the new workers with the
resulting settings and environment. This module is imported once per master process, so
``MASTER`` survives those re-executions and holds the generation that serves now.

- At start, a bad environment or PROXY_CONFIG file prints one line per problem and exits
  2, before any worker exists (a worker failing at boot would be respawned in a loop).
- On a reload, the same problems are one log line and the reload is refused: the file
  gunicorn.conf.py builds from the previous generation, so the new workers start with
  the previous configuration. Raising here instead would stop the master (gunicorn exits
  on any exception from its configuration file).
- Workers read the validated values from SNAPSHOT_ENV (``settings.load_settings``), never
  the file: a file rewritten after validation cannot reach them.
- The shared upstream-state file is sized by the servers: a reload that changes the
  servers (or the worker slots) makes a new one for the new workers. The old one is
  removed once every worker that may use it has exited (``reloading`` notes them,
  ``worker_exited`` counts them down), not at once: a worker forked just before the HUP
  may still be importing the app and about to open it (it would fail to boot, and
  gunicorn halts the master when a worker fails to boot). Unchanged, the file is kept,
  with its ejections.
- The prometheus_client multiprocess directory is emptied at start only: on a reload it
  holds the live workers' files.

Standard library only (and ``wsgiproxy.settings``): the master has not been patched by
gevent and must not import ssl, urllib3 or gevent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Collection, MutableMapping
from dataclasses import dataclass

from .settings import SNAPSHOT_ENV, ConfigError, Effective, Settings, read_environment
from .upstreams import shared

__all__ = ["MASTER", "Generation", "Master"]

#: gunicorn's master logger: its handlers are in place when a reload re-reads the file.
log = logging.getLogger("gunicorn.error")

_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Set to the metrics directory a wsgiproxy master made for itself, so that a master it
#: re-executes (``kill -USR2``) and that inherits PROMETHEUS_MULTIPROC_DIR makes its own
#: instead of emptying (and at exit removing) the one the old master's workers write to.
_OWN_METRICS_ENV = "WSGIPROXY_OWN_METRICS_DIR"


@dataclass(frozen=True)
class Generation:
    """The configuration the master's current workers are started with."""

    settings: Settings
    snapshot: str
    #: The shared upstream-state file (upstreams/shared.py) for this generation's workers.
    state_file: str
    metrics_dir: str
    #: True when the master made ``metrics_dir`` and removes it at exit.
    own_metrics_dir: bool

    @property
    def layout(self) -> object:
        """What the state file's rows and slots depend on: equal layouts share a file."""
        return _layout(self.settings)


def _layout(settings: Settings) -> object:
    requests = settings.requests
    return (requests.routes, requests.upstream, _slots(settings))


def _slots(settings: Settings) -> int:
    # Workers replaced later (max requests, a crash, a reload) take a free slot of their
    # own: room for four generations of workers.
    return 4 * settings.server.workers + 4


class Master:
    """The master's configuration across reloads; ``load`` is called by gunicorn.conf.py
    each time gunicorn executes it."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        self.environ: MutableMapping[str, str] = os.environ if environ is None else environ
        self.current: Generation | None = None
        # State files this reload replaced, until ``reloading`` learns their workers.
        self._retiring: list[str] = []
        # Replaced state files -> workers that may still open or use them.
        self._retired: dict[str, set[int]] = {}

    def load(self) -> Generation:
        """Validate the environment and PROXY_CONFIG and make them the workers' settings.

        First call: on problems, one line each on stderr and ``SystemExit(2)``. Later
        calls (a HUP): on problems, one ERROR log line and the previous generation is
        returned unchanged; never raises.
        """
        try:
            effective = read_environment(self.environ)
        except ConfigError as exc:
            if self.current is None:
                for line in exc.lines:
                    print(f"wsgiproxy: {line}", file=sys.stderr)
                raise SystemExit(2) from None
            log.error(
                "wsgiproxy: reload refused, the previous configuration keeps serving: %s",
                "; ".join(exc.lines),
            )
            return self.current
        if self.current is None:
            self.current = self._first(effective)
            return self.current
        try:
            self.current = self._next(self.current, effective)
        except OSError as exc:
            log.error(
                "wsgiproxy: reload refused, the previous configuration keeps serving: "
                "cannot make the shared upstream state file: %s",
                exc,
            )
            return self.current
        log.info("wsgiproxy: configuration reloaded (%s)", effective.settings.requests.summary())
        return self.current

    def _first(self, effective: Effective) -> Generation:
        metrics_dir, own = self._metrics_dir()
        state_file = _new_state_file(effective.settings)
        return self._publish(
            Generation(effective.settings, effective.snapshot(), state_file, metrics_dir, own)
        )

    def _next(self, previous: Generation, effective: Effective) -> Generation:
        state_file = previous.state_file
        if _layout(effective.settings) != previous.layout:
            state_file = _new_state_file(effective.settings)
            self._retiring.append(previous.state_file)
        return self._publish(
            dataclasses.replace(
                previous,
                settings=effective.settings,
                snapshot=effective.snapshot(),
                state_file=state_file,
            )
        )

    def _publish(self, generation: Generation) -> Generation:
        """Put the generation where the workers gunicorn forks next find it: the
        environment they inherit."""
        self.environ[SNAPSHOT_ENV] = generation.snapshot
        self.environ[shared.ENV] = generation.state_file
        return generation

    def _metrics_dir(self) -> tuple[str, bool]:
        """prometheus_client's multiprocess directory, made or emptied (at start only).

        It must be set before any worker imports prometheus_client, so it is set here and
        inherited. Stale files from an earlier run would be summed in: start empty.
        """
        given = self.environ.get(_METRICS_ENV)
        if given and given != self.environ.get(_OWN_METRICS_ENV):
            os.makedirs(given, exist_ok=True)
            for name in os.listdir(given):
                if name.endswith(".db"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(given, name))
            return given, False
        made = tempfile.mkdtemp(prefix="wsgiproxy-metrics-")
        self.environ[_METRICS_ENV] = made
        self.environ[_OWN_METRICS_ENV] = made
        return made, True

    def reloading(self, old_workers: Collection[int]) -> None:
        """gunicorn's ``on_reload``: the new configuration is in place and the new workers
        are about to be forked; ``old_workers`` (the pids running now) are the ones that
        may still use a state file this reload replaced."""
        for path in self._retiring:
            self._retired[path] = set(old_workers)
        self._retiring.clear()
        self._remove_unused()

    def worker_exited(self, pid: int) -> None:
        """gunicorn's ``child_exit``: the worker's counts leave the shared sums, and a
        replaced state file goes once its last worker has exited."""
        if self.current is not None:
            shared.forget(self.current.state_file, pid)
        for pids in self._retired.values():
            pids.discard(pid)
        self._remove_unused()

    def _remove_unused(self) -> None:
        for path in [path for path, pids in self._retired.items() if not pids]:
            del self._retired[path]
            with contextlib.suppress(OSError):
                os.remove(path)

    def close(self) -> None:
        """At the master's exit: remove the state files, and the metrics directory if
        this master made it."""
        for path in [*self._retiring, *self._retired]:
            with contextlib.suppress(OSError):
                os.remove(path)
        self._retiring.clear()
        self._retired.clear()
        if self.current is None:
            return
        if self.current.own_metrics_dir:
            shutil.rmtree(self.current.metrics_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.remove(self.current.state_file)


def _new_state_file(settings: Settings) -> str:
    """An empty shared upstream-state table for ``settings``' servers, made before forking."""
    fd, path = tempfile.mkstemp(prefix="wsgiproxy-upstreams-")
    os.close(fd)
    try:
        shared.create(path, servers=settings.requests.server_count(), slots=_slots(settings))
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise
    return path


#: The one per master process (gunicorn.conf.py's state across HUP reloads).
MASTER = Master()
