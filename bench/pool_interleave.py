"""Pool the blocks of several `run.py --interleave` runs into one figure.

Usage: .venv/bin/python bench/pool_interleave.py bench/results/<run>/results.json ...

One run of 200 blocks reads the ids' price to about ±0.5% (standard error); runs on
different hours of this shared machine differ by about as much. Pooling their blocks
gives the figure to quote, with each run's own line beside it so a run that stands
apart shows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from interleave import spread


def _cells(values: list[float]) -> str:
    """Median, then mean ± standard error, as two table cells."""
    s = spread(values)
    return f"{s['median']:.4f} | {s['mean']:.4f} ± {s['stderr']:.4f}"


def main(paths: list[str]) -> int:
    """Print one line per run and the pooled line; 2 without a file to read."""
    if not paths:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for path in paths:
        results = json.loads(Path(path).read_text())
        if not results.get("blocks"):
            raise SystemExit(f"{path}: no interleave blocks (a results.json of another mode?)")
        if results.get("control"):
            raise SystemExit(f"{path}: a control run (ids on in both phases); pool it apart")
        runs.append((f"{Path(path).parent.name} ({results['commit']})", results["blocks"]))
    print(
        "| run | blocks | req/s ratio: median | mean ± standard error "
        "| CPU per request: median | mean ± standard error |"
    )
    print("|---|---|---|---|---|---|")
    pooled: list[dict[str, Any]] = []
    for name, blocks in runs:
        pooled += blocks
        print(
            f"| {name} | {len(blocks)} | {_cells([b['rps_ratio'] for b in blocks])} "
            f"| {_cells([b['cpu_ratio'] for b in blocks])} |"
        )
    print(
        f"| **pooled** | {len(pooled)} | {_cells([b['rps_ratio'] for b in pooled])} "
        f"| {_cells([b['cpu_ratio'] for b in pooled])} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
