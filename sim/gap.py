"""Where the gap to the oracle goes: price, by the hidden truth, the lists a request could have
served at each stage of the scorer.

For an explained request (``RecommendRequest.explain``: the response carries every retrieved
candidate, its sources and its rank in the ranker's order before re-ranking) and the same ``n``
slots that were shown, the expected clicks (the true click probability at position 0 times the
examination of each slot) of:

* ``retrieval_ceiling``: the best ``n`` of the retrieved candidates, best first (the most any
  ranking of what retrieval found could reach), and per source (``by_source``);
* ``ranker_top_k``: the ranker's first ``n``, in its order (before diversity caps, exploration
  and filters);
* ``served``: the list actually shown (after re-ranking);

next to the oracle's best ``n`` over the whole active catalog (``sim.world.World.oracle``). Each
as a fraction of the oracle says how much retrieval, ranking and re-ranking lose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# (item_id, retrieval sources, rank in the ranker's order)
Explained = tuple[str, Sequence[str], int]
STAGES = ("retrieval_ceiling", "ranker_top_k", "served")


def list_clicks(p0: npt.NDArray[np.float64], rows: Sequence[int], examine: Callable[[int], float]) -> float:
    """Expected clicks of the items at ``rows`` (indices into ``p0``) shown in that order."""
    return float(sum(p0[r] * examine(pos) for pos, r in enumerate(rows)))


def best_clicks(p0: npt.NDArray[np.float64], rows: Sequence[int], n: int,
                examine: Callable[[int], float]) -> float:
    """Expected clicks of the best ``n`` of ``rows``, best first (examination falls with the
    slot, so sorting by the true probability is the best order)."""
    top = sorted(rows, key=lambda r: -p0[r])[:n]
    return list_clicks(p0, top, examine)


@dataclass(frozen=True)
class Priced:
    """Expected clicks of one explained request at each stage (``STAGES``), and the retrieval
    ceiling of each source alone."""

    stages: dict[str, float]
    by_source: dict[str, float]


def price_request(p0: npt.NDArray[np.float64], row_of: Callable[[str], int | None],
                  candidates: Sequence[Explained], served: Sequence[str], n: int,
                  examine: Callable[[int], float]) -> Priced:
    """Each stage of one explained request priced (items unknown to the world are skipped)."""
    rows: list[int] = []
    by_source: dict[str, list[int]] = {}
    ranked: list[tuple[int, int]] = []
    for item_id, sources, rank in candidates:
        r = row_of(item_id)
        if r is None:
            continue
        rows.append(r)
        ranked.append((rank, r))
        for s in sources:
            by_source.setdefault(s, []).append(r)
    served_rows = [r for r in (row_of(i) for i in served) if r is not None]
    return Priced(
        stages={"retrieval_ceiling": best_clicks(p0, rows, n, examine),
                "ranker_top_k": list_clicks(p0, [r for _, r in sorted(ranked)[:n]], examine),
                "served": list_clicks(p0, served_rows[:n], examine)},
        by_source={s: best_clicks(p0, rs, n, examine) for s, rs in by_source.items()},
    )


@dataclass
class GapStats:
    """Sums over the explained requests of one arm (the oracle over the same requests and slots)."""

    requests: int = 0
    slots: int = 0
    oracle: float = 0.0
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    by_source: dict[str, float] = field(default_factory=dict)

    def add(self, priced: Priced, oracle: float, slots: int) -> None:
        self.requests += 1
        self.slots += slots
        self.oracle += oracle
        for s in STAGES:
            self.stages[s] += priced.stages[s]
        for src, v in priced.by_source.items():
            self.by_source[src] = self.by_source.get(src, 0.0) + v

    def report(self) -> dict[str, object]:
        n, best = self.slots, self.oracle

        def ctr(clicks: float) -> float:
            return clicks / n if n else 0.0

        def frac(clicks: float) -> float:
            return clicks / best if best else 0.0

        return {
            "requests": self.requests, "slots": n, "oracle_ctr": ctr(best),
            "ctr": {s: ctr(v) for s, v in self.stages.items()},
            "oracle_fraction": {s: frac(v) for s, v in self.stages.items()},
            "retrieval_ceiling_by_source": {src: {"ctr": ctr(v), "oracle_fraction": frac(v)}
                                            for src, v in sorted(self.by_source.items())},
        }
