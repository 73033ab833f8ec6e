"""``python -m wsgiproxy COMMAND``: the proxy's command-line tools."""

from __future__ import annotations

import os
import sys

USAGE = """usage: python -m wsgiproxy COMMAND
  status [URL] [--watch]  the running proxy's pool, upstreams and probes
  check                   validate the environment and PROXY_CONFIG's file (exit 0 or 2)"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command: ``status`` or ``check``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "status":
        from .status import main as status_main

        return status_main(args[1:])
    if args[0] == "check":
        if len(args) > 1:
            print(f"wsgiproxy: check takes no arguments, got {args[1]!r}", file=sys.stderr)
            return 2
        return check()
    print(f"wsgiproxy: unknown command {args[0]!r}; try: status, check", file=sys.stderr)
    return 2


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
