"""``X-Request-ID``: one id per request, the same at every hop and in every log.

A client's own id is kept when it is sane (printable ASCII, at most 200 characters), so a
request can be followed from the client through the proxy to the upstream; anything else
is replaced, and a request without one gets a new id: 16 random bytes in hex, as nginx's
``$request_id``. Like nginx's, the bytes come from a fast non-cryptographic generator: an
id names a request for the logs and is no secret. The generator is this module's own,
reseeded in every forked worker (which also drops the ids its parent drew ahead), so no
two workers repeat each other's ids and nothing that seeds Python's shared ``random`` can
make them predictable or repeat. Ids are drawn ``BATCH`` at a time, bits, hex and split
each in one call, so a request only takes one from a list.
"""

from __future__ import annotations

import os
import random
import re
from typing import Any

#: The environ key the access log and error bodies read the id from.
ENVIRON_KEY = "wsgiproxy.request_id"
_SANE = re.compile(r"[\x20-\x7e]{1,200}")

#: Ids drawn in one go; a new id then costs a request one ``list.pop`` (atomic: two
#: threads never take the same one).
BATCH = 256

_generator = random.Random()
_drawn: list[str] = []


def _draw() -> str:
    """Draw the next ``BATCH`` ids: keep all but one for later requests, return that one."""
    bits = _generator.getrandbits(128 * BATCH).to_bytes(16 * BATCH)
    ids = bits.hex(" ", 16).split()  # 32 hex digits each, split in C
    rid = ids.pop()  # before the rest is shared: another thread may empty it at once
    _drawn[:] = ids
    return rid


def _forked() -> None:
    """In a forked child: its own generator, and none of the ids its parent drew ahead."""
    _drawn.clear()
    _generator.seed()


os.register_at_fork(after_in_child=_forked)


def assign(environ: dict[str, Any]) -> str:
    """The request's id: the client's when sane, else a new one (32 hex digits); noted
    in ``environ``."""
    given: str | None = environ.get("HTTP_X_REQUEST_ID")
    if given is not None and _SANE.fullmatch(given) is not None and given.strip():
        rid = given.strip()
    else:
        try:
            rid = _drawn.pop()
        except IndexError:
            rid = _draw()
    environ[ENVIRON_KEY] = rid
    return rid
