"""``X-Request-ID``: one id per request, the same at every hop and in every log.

A client's own id is kept when it is sane (printable ASCII, at most 200 characters), so a
request can be followed from the client through the proxy to the upstream; anything else
is replaced, and a request without one gets a new id: 16 random bytes in hex, as nginx's
``$request_id``. Like nginx's, the bytes come from a fast non-cryptographic generator: an
id names a request for the logs and is no secret. The generator is this module's own,
reseeded in every forked worker, so no two workers repeat each other's ids and nothing
that seeds Python's shared ``random`` can make them predictable or repeat.
"""

from __future__ import annotations

import os
import random
import re
from typing import Any

#: The environ key the access log and error bodies read the id from.
ENVIRON_KEY = "wsgiproxy.request_id"
_SANE = re.compile(r"[\x20-\x7e]{1,200}")

_generator = random.Random()
os.register_at_fork(after_in_child=_generator.seed)
_random_bits = _generator.getrandbits


def assign(environ: dict[str, Any]) -> str:
    """The request's id: the client's when sane, else a new one (32 hex digits); noted
    in ``environ``."""
    given: str | None = environ.get("HTTP_X_REQUEST_ID")
    if given is not None and _SANE.fullmatch(given) is not None and given.strip():
        rid = given.strip()
    else:
        rid = _random_bits(128).to_bytes(16).hex()
    environ[ENVIRON_KEY] = rid
    return rid
