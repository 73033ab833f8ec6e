"""``wsgiproxy COMMAND`` (or ``python -m wsgiproxy COMMAND``): the proxy's command line."""

from __future__ import annotations

import os
import sys
from importlib import metadata

USAGE = """usage: wsgiproxy COMMAND
  run [GUNICORN OPTIONS]  start the proxy under gunicorn, configured as gunicorn.conf.py is
  status [URL] [--watch]  the running proxy's pool, upstreams and probes
  check                   validate the environment and PROXY_CONFIG's file (exit 0 or 2)
  --version               print the version"""

#: Distributions that install an import package named ``wsgiproxy`` as well: installed
#: beside this one, whichever came last overwrote the other's files.
NAMESAKES = ("WSGIProxy2", "WSGIProxy")


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command: ``run``, ``status`` or ``check``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    namesake = installed_namesake()
    if namesake is not None:
        print(
            f"wsgiproxy: {namesake} is installed in this environment and also installs the "
            f"import package 'wsgiproxy', so one overwrote the other; install wsgiproxy in "
            f"a virtualenv of its own",
            file=sys.stderr,
        )
        return 2
    if args[0] in ("-V", "--version"):
        from . import __version__

        print(f"wsgiproxy {__version__}")
        return 0
    if args[0] == "run":
        from .server.run import run

        return run(args[1:])
    if args[0] == "status":
        from .status import main as status_main

        return status_main(args[1:])
    if args[0] == "check":
        if len(args) > 1:
            print(f"wsgiproxy: check takes no arguments, got {args[1]!r}", file=sys.stderr)
            return 2
        return check()
    print(f"wsgiproxy: unknown command {args[0]!r}; try: run, status, check", file=sys.stderr)
    return 2


def installed_namesake() -> str | None:
    """The name of a distribution in this environment that shares our import package."""
    for name in NAMESAKES:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        return name
    return None


def check() -> int:
    """Validate what gunicorn's master would at start (the environment, then PROXY_CONFIG's
    file beneath it): one line per problem and 2, or one OK line and 0.

    Run it before ``kill -HUP``: a reload refuses what this refuses, with the same lines.
    """
    from .settings import ConfigError, read_environment

    try:
        effective = read_environment(os.environ)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"wsgiproxy: {line}", file=sys.stderr)
        return 2
    requests = effective.settings.requests
    source = os.environ.get("PROXY_CONFIG", "").strip()
    where = f" from the environment and PROXY_CONFIG={source!r}" if source else ""
    print(f"wsgiproxy: configuration OK ({requests.summary()}){where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
