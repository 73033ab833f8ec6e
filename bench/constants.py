"""Where the harness finds things, and the fixed parameters of every run."""

from __future__ import annotations

import os
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PRODUCT_BIN = ROOT / ".venv" / "bin"
RESULTS = BENCH / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

WORKERS = 2  # gunicorn workers of every WSGI proxy (the "2 workers")
DELAY = 0.05  # seconds, the delayed upstream
QUEUE_LIMIT = 8  # HTTP_MAX_CONNECTIONS per worker in the queue-pressure run
QUEUE_CLIENTS = 1000
