"""``python -m wsgiproxy COMMAND``: the proxy's command-line tools."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command; ``status`` is the one there is."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m wsgiproxy status [URL] [--watch]")
        return 0 if args else 2
    if args[0] == "status":
        from .status import main as status_main

        return status_main(args[1:])
    print(f"wsgiproxy: unknown command {args[0]!r}; try: status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
