"""Which of a group's usable servers takes the next request (PROXY_BALANCE).

- ``round_robin``: nginx's smooth weighted round robin. Each pick adds every candidate's
  weight to its running score, takes the highest, and takes the total off the winner:
  weights 5:1:1 give a b a a c a a, never five of a in a row. The scores are this
  worker's; with several workers each spreads its own requests by the weights.
- ``least_conn``: the fewest requests in flight per unit of weight, counting every
  worker (the shared table); ties go round robin, so an idle group still spreads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .server import Server


class Balancer(Protocol):
    def pick(self, candidates: Sequence[Server]) -> Server: ...


class SmoothRoundRobin:
    """nginx's smooth weighted round robin over whichever servers are candidates."""

    def __init__(self) -> None:
        self._score: dict[int, int] = {}

    def pick(self, candidates: Sequence[Server]) -> Server:
        if len(candidates) == 1:
            return candidates[0]
        score = self._score
        total = 0
        best: Server | None = None
        best_score = 0
        for server in candidates:
            value = score.get(server.index, 0) + server.weight
            score[server.index] = value
            total += server.weight
            if best is None or value > best_score:
                best, best_score = server, value
        assert best is not None
        score[best.index] = best_score - total
        return best


class LeastConn:
    """Fewest in flight per weight, all workers together; round robin among the tied."""

    def __init__(self) -> None:
        self._ties = SmoothRoundRobin()

    def pick(self, candidates: Sequence[Server]) -> Server:
        if len(candidates) == 1:
            return candidates[0]
        loads = [(server.in_flight() / server.weight, server) for server in candidates]
        least = min(load for load, _ in loads)
        tied = [server for load, server in loads if load == least]
        return tied[0] if len(tied) == 1 else self._ties.pick(tied)


def balancer(name: str) -> Balancer:
    """The balancer PROXY_BALANCE names (settings checked the name)."""
    return LeastConn() if name == "least_conn" else SmoothRoundRobin()
