"""The WSGI entry: admin paths to Flask, every other request to the forwarder."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .handler import Forwarder
from .responses import StartResponse
from .routing import raw_target


class Dispatcher:
    """Sends admin paths to Flask and every other request to the forwarder.

    Only origin-form requests can reach the admin endpoints: an absolute-form request for
    ``http://elsewhere/_proxy/health`` is forward-proxy traffic for that host.
    """

    def __init__(self, flask_app: Any, forwarder: Forwarder, prefix: str) -> None:
        self.flask_app = flask_app
        self.forwarder = forwarder
        self.prefix = prefix
        self.prefix_slash = prefix + "/"

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if (path == self.prefix or path.startswith(self.prefix_slash)) and raw_target(
            environ
        ).startswith("/"):
            return self.flask_app(environ, start_response)  # type: ignore[no-any-return]
        return self.forwarder(environ, start_response)
