"""wsgiproxy's own app, whose request ids switch on and off in place (``--interleave``).

On SIGUSR2 a worker reads the flag file named by ``BENCH_SWITCH_FLAG`` (``1`` or ``0``)
and sets its forwarder's request ids to match: the same processes then serve both sides
of the comparison. Each worker leaves ``<flag>.<pid>`` once its handler is in place.
For the bench only; the product has no such switch.
"""

import os
import signal
from typing import Any

from wsgiproxy.app import app

_forwarder = app.extensions["wsgiproxy"].forwarder
_FLAG = os.environ["BENCH_SWITCH_FLAG"]


def _switch(_signum: int, _frame: Any) -> None:
    with open(_FLAG) as flag:
        _forwarder.request_ids = flag.read().strip() == "1"


signal.signal(signal.SIGUSR2, _switch)
# Ready to be switched: a worker signalled before this line would die of SIGUSR2.
with open(f"{_FLAG}.{os.getpid()}", "w"):
    pass

__all__ = ["app"]
