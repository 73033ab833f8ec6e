"""``X-Request-ID``: one id per request, the same at every hop and in every log.

A client's own id is kept when it is sane (printable ASCII, at most 200 characters), so a
request can be followed from the client through the proxy to the upstream; anything else
is replaced, and a request without one gets a new id: 16 random bytes in hex, as nginx's
``$request_id``.
"""

from __future__ import annotations

import os
import re
from typing import Any

#: The environ key the access log and error bodies read the id from.
ENVIRON_KEY = "wsgiproxy.request_id"
_SANE = re.compile(r"[\x20-\x7e]{1,200}")


def assign(environ: dict[str, Any]) -> str:
    """The request's id: the client's when sane, else a new one; noted in ``environ``."""
    given = environ.get("HTTP_X_REQUEST_ID")
    if isinstance(given, str) and _SANE.fullmatch(given) is not None and given.strip():
        rid = given.strip()
    else:
        rid = os.urandom(16).hex()
    environ[ENVIRON_KEY] = rid
    return rid
