"""The cells of a run: upstream, path and connections, and which proxies each measures."""

from __future__ import annotations

from dataclasses import dataclass

from proxies import EXPERIMENT, FORWARD, GROUP, GROUP_CELL, KEEPALIVE_CELLS, REVERSE


@dataclass(frozen=True)
class Cell:
    name: str
    upstream: str  # "http", "delay", "https"
    path: str
    conns: int
    forward: bool = False

    @property
    def proxies(self) -> list[str]:
        if self.forward:
            return list(FORWARD)
        if self.name == GROUP_CELL:
            return list(GROUP)
        extra = ["bare"] if self.path == "/100b.bin" and self.upstream == "http" else []
        if self.name in KEEPALIVE_CELLS:
            extra.append("wsgiproxy-keep100")
        return REVERSE + [EXPERIMENT] + extra


CELLS = [
    Cell("100B c1", "http", "/100b.bin", 1),
    Cell("100B c64", "http", "/100b.bin", 64),
    Cell("100B c256", "http", "/100b.bin", 256),
    Cell("100KiB c1", "http", "/100k.bin", 1),
    Cell("100KiB c64", "http", "/100k.bin", 64),
    Cell("100KiB c256", "http", "/100k.bin", 256),
    Cell("50ms c256", "delay", "/delay", 256),
    Cell("HTTPS 100B c64", "https", "/100b.bin", 64),
    Cell("forward 100B c64", "http", "/100b.bin", 64, forward=True),
    # the price of balancing: three healthy servers beside one, paired in each repetition
    Cell(GROUP_CELL, "http", "/100b.bin", 64),
]
