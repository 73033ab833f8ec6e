"""``wsgiproxy run``: gunicorn's own runner, given the package's gunicorn config file.

The settings come from the environment and PROXY_CONFIG exactly as with
``gunicorn -c gunicorn.conf.py wsgiproxy.app:app``: both read ``gunicorn_conf.py`` beside
this module. Options after ``run`` go to gunicorn and win over the file, as on gunicorn's
own command line (e.g. ``wsgiproxy run --log-level debug``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

#: The gunicorn config file both ways of starting read.
CONFIG_FILE = Path(__file__).with_name("gunicorn_conf.py")

#: What gunicorn serves.
APP = "wsgiproxy.app:app"

USAGE = "%(prog)s [GUNICORN OPTIONS]  (settings: PROXY_*/HTTP_* and PROXY_CONFIG)"


def gunicorn_arguments(options: list[str]) -> list[str]:
    """The gunicorn command line ``wsgiproxy run OPTIONS`` stands for (after ``gunicorn``)."""
    return [APP, "-c", str(CONFIG_FILE), *options]


def own_config_file(options: list[str]) -> str | None:
    """The option naming another gunicorn config file, if any: gunicorn reads one file
    only, so it would replace this one, and with it every setting and hook of the proxy."""
    for option in options:
        if option in ("-c", "--config") or option.startswith(("--config=", "--paste")):
            return option
        if option.startswith("-c") and not option.startswith("--"):
            return option
    return None


def run(options: list[str]) -> int:
    """Run gunicorn's arbiter until it stops; gunicorn exits the process itself on an
    error (status 2 for a refused setting, as with the gunicorn command)."""
    replaced = own_config_file(options)
    if replaced is not None:
        print(
            f"wsgiproxy: run reads its own gunicorn config file; {replaced!r} would replace "
            f"it and every proxy setting: set PROXY_* variables or PROXY_CONFIG instead",
            file=sys.stderr,
        )
        return 2
    from gunicorn.app.wsgiapp import WSGIApplication  # type: ignore[import-untyped]

    class Application(WSGIApplication):  # type: ignore[misc]
        """gunicorn's WSGI application, reading our arguments instead of ``sys.argv``.

        gunicorn parses ``sys.argv`` at start and again on every HUP, while its USR2
        re-exec runs ``sys.argv`` as it is: ``wsgiproxy run ...`` must stay there, so the
        gunicorn arguments are put in place only while gunicorn parses them.
        """

        def load_config(self) -> None:
            argv = sys.argv
            sys.argv = [argv[0], *gunicorn_arguments(options)]
            try:
                super().load_config()
            finally:
                sys.argv = argv

    if Path(sys.argv[0]).name == "__main__.py":
        # Started as ``python -m wsgiproxy run``: USR2 runs the interpreter on sys.argv,
        # where the path of __main__.py would lose the package its imports need.
        sys.argv = ["-m", "wsgiproxy", *sys.argv[1:]]
    application: Any = Application(USAGE, prog="wsgiproxy run")
    application.run()
    return 0
