"""The simulator's books: per-arm outcomes, confidence intervals, the JSON report, metrics.

CTR confidence intervals: ``ctr_ci95`` is a normal interval with a CLUSTER-robust standard
error (clusters = users: arms are assigned per user, and one user's impressions are
correlated), ``ctr_ci95_wilson`` treats impressions as independent (narrower, optimistic).
Comparisons (``model_vs_popular`` ...) give the CTR difference with a normal CI from the two
cluster-robust errors, and the CTR ratio with a delta-method CI on the log scale.

Learning curve (``learning_curve``): per sim hour since the simulator's start (hour index
``(sim_ms - start_ms) // HOUR_MS`` of the homepage visit), each arm's impressions, clicks, true
expected clicks and per-user ``[impressions, clicks]``; every human list is counted, warm-up
included (an hour with warm-up lists is flagged ``warmup``, with the share of its impressions
that were warm-up). Per hour: each arm's CTR with the user-clustered CI, and the model arm's
CTR ratio to ``oracle`` and to ``popular`` with the same delta-method CI as ``compare``.
New items (``new_items`` of an arm, warm-up excluded like the arm's other counts): impressions
and clicks of items younger than ``NEW_ITEM_AGE_MS`` at the impression, against the oracle's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram
from prometheus_client import Counter, Gauge, Histogram

from models.ab_stats import clustered_se
from sim.gap import GapStats
from sim.latency import new_histogram, record_us
from sim.world import HOUR_MS

EVENTS = Counter("recsys_sim_events_total", "events produced by the simulator", ["type"])
RPC = Histogram("recsys_sim_rpc_seconds", "Recommend latency seen by the simulator",
                buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0))
RPC_ERRORS = Counter("recsys_sim_rpc_errors_total", "failed Recommend calls", ["code"])
SHOWN = Counter("recsys_sim_impressions_total", "items the scorer showed to simulated humans", ["arm"])
CLICKS = Counter("recsys_sim_clicks_total", "clicks of simulated humans on scorer lists", ["arm"])
SIM_TIME = Gauge("recsys_sim_time_seconds", "the simulated clock (unix seconds)")
PENDING = Gauge("recsys_sim_pending_purchases", "purchases drawn but not yet due (delayed)")

Z95 = 1.959964
NEW_ITEM_AGE_MS = HOUR_MS  # an item this young at the impression is "new"
CURVE_ARM = "model"  # the learning curve's arm, and the arms it is compared with
CURVE_BASELINES = ("oracle", "popular")
COMPARISONS = (("model", "popular"), ("model", "random"), ("popular", "random"),
               ("model", "oracle"), ("popular", "oracle"), ("random", "oracle"))


def wilson(successes: int, n: int, z: float = Z95) -> list[float]:
    if n <= 0:
        return [0.0, 0.0]
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, mid - half), min(1.0, mid + half)]


def cluster_se(per_user: dict[str, list[int]], ratio: float) -> float:
    """Standard error of a ratio of sums (clicks / impressions) with user clusters
    (``models.ab_stats.clustered_se``; 0 where it has none)."""
    cells = list(per_user.values())
    return clustered_se([v[1] for v in cells], [v[0] for v in cells], ratio) or 0.0


def ratio_ci(ra: float, sa: float, rb: float, sb: float) -> dict[str, Any]:
    """``ra / rb`` with a delta-method 95% CI on the log scale (empty when a rate is 0)."""
    if ra <= 0 or rb <= 0:
        return {}
    ratio, se_l = ra / rb, math.hypot(sa / ra, sb / rb)
    return {"ctr_ratio": ratio,
            "ctr_ratio_ci95": [ratio * math.exp(-Z95 * se_l), ratio * math.exp(Z95 * se_l)]}


@dataclass
class HourCell:
    """One arm's lists in one sim hour (warm-up included, counted apart)."""

    impressions: int = 0
    clicks: int = 0
    expected_clicks: float = 0.0
    warmup_impressions: int = 0
    per_user: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    def report(self) -> dict[str, Any]:
        n, ctr = self.impressions, self.ctr
        half = Z95 * cluster_se(self.per_user, ctr)
        return {"impressions": n, "clicks": self.clicks, "users": len(self.per_user), "ctr": ctr,
                "ctr_ci95": [max(0.0, ctr - half), ctr + half],
                "ctr_expected": self.expected_clicks / n if n else 0.0,
                "warmup_share": self.warmup_impressions / n if n else 0.0}


def learning_curve(hourly: dict[str, dict[int, HourCell]]) -> dict[str, Any]:
    """Per sim hour: every arm's CTR, and ``CURVE_ARM``'s CTR ratio to each of ``CURVE_BASELINES``."""
    rows = []
    for h in sorted({h for cells in hourly.values() for h in cells}):
        cells = {arm: c[h] for arm, c in sorted(hourly.items()) if h in c}
        n = sum(c.impressions for c in cells.values())
        warm = sum(c.warmup_impressions for c in cells.values())
        row: dict[str, Any] = {"hour": h, "warmup": warm > 0, "warmup_share": warm / n if n else 0.0,
                               "arms": {arm: c.report() for arm, c in cells.items()}}
        model = cells.get(CURVE_ARM)
        for base in CURVE_BASELINES:
            other = cells.get(base)
            if model is not None and other is not None:
                row[f"{CURVE_ARM}_vs_{base}"] = ratio_ci(
                    model.ctr, cluster_se(model.per_user, model.ctr),
                    other.ctr, cluster_se(other.per_user, other.ctr))
        rows.append(row)
    return {"hour_ms": HOUR_MS, "arm": CURVE_ARM, "baselines": list(CURVE_BASELINES),
            "ci": "95%, user-clustered SE per hour; ratios by the delta method on the log ratio",
            "hours": rows}


@dataclass
class ArmStats:
    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0  # emitted (delayed purchases count when they happen)
    purchases_pending: int = 0  # drawn, not yet due
    revenue: float = 0.0
    expected_clicks: float = 0.0  # sum of the true p_click of what was shown
    best_clicks: float = 0.0  # oracle's expected clicks for the same slots, same users, same time
    best_capped_clicks: float = 0.0  # ... with at most run.diagnostic_category_cap per category
    degraded: int = 0
    retired_shown: int = 0
    per_user: dict[str, list[int]] = field(default_factory=dict)  # user -> [impressions, clicks]
    by_context: dict[str, list[int]] = field(default_factory=dict)  # landing / in_session -> same
    by_source: dict[str, list[int]] = field(default_factory=dict)  # retrieval source -> same
    gap: GapStats = field(default_factory=GapStats)  # explained requests priced by the truth
    new_items: list[int] = field(default_factory=lambda: [0, 0])  # [impressions, clicks] of new items

    def add_new_items(self, ages_ms: list[int], outcomes: list[tuple[int, bool]]) -> None:
        """``ages_ms[j]``: the age at the impression of the item of ``outcomes[j] = (pos, clicked)``."""
        for age, (_, hit) in zip(ages_ms, outcomes, strict=True):
            if age < NEW_ITEM_AGE_MS:
                self.new_items[0] += 1
                self.new_items[1] += hit

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    def se(self) -> float:
        return cluster_se(self.per_user, self.ctr)

    def report(self) -> dict[str, Any]:
        n, ctr = self.impressions, self.ctr
        half = Z95 * self.se()
        best = self.best_clicks / n if n else 0.0
        return {
            "requests": self.requests, "users": len(self.per_user), "impressions": n,
            "clicks": self.clicks, "ctr": ctr, "ctr_ci95": [max(0.0, ctr - half), ctr + half],
            "ctr_ci95_wilson": wilson(self.clicks, n),
            "ctr_expected": self.expected_clicks / n if n else 0.0,
            "best_ctr": best, "oracle_fraction": ctr / best if best else 0.0,
            "best_ctr_capped": self.best_capped_clicks / n if n else 0.0,
            "ctr_by_context": {k: {"impressions": v[0], "ctr": v[1] / v[0] if v[0] else 0.0}
                               for k, v in sorted(self.by_context.items())},
            "ctr_by_source": {k: {"impressions": v[0], "ctr": v[1] / v[0] if v[0] else 0.0}
                              for k, v in sorted(self.by_source.items())},
            "cart_rate": self.carts / n if n else 0.0,
            "cvr": self.purchases / self.clicks if self.clicks else 0.0,
            "cvr_eventual": (self.purchases + self.purchases_pending) / self.clicks if self.clicks else 0.0,
            "purchases": self.purchases, "purchases_pending": self.purchases_pending,
            "revenue_per_mille": 1000 * self.revenue / n if n else 0.0,
            "degraded": self.degraded, "retired_shown": self.retired_shown,
            **({"gap": self.gap.report()} if self.gap.requests else {}),
            "new_items": self.new_items_report(),
        }

    def new_items_report(self) -> dict[str, Any]:
        imps, clicks = self.new_items
        return {"age_h_max": NEW_ITEM_AGE_MS / HOUR_MS, "impressions": imps,
                "share": imps / self.impressions if self.impressions else 0.0,
                "clicks": clicks, "ctr": clicks / imps if imps else 0.0}


def compare(a: ArmStats, b: ArmStats) -> dict[str, Any]:
    sa, sb = a.se(), b.se()
    diff, se_d = a.ctr - b.ctr, math.hypot(sa, sb)
    return {"ctr_diff": diff, "ctr_diff_ci95": [diff - Z95 * se_d, diff + Z95 * se_d],
            **ratio_ci(a.ctr, sa, b.ctr, sb)}


@dataclass
class Stats:
    events: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    catalog_upserts: int = 0
    profiles: int = 0
    requests: int = 0
    rpc_errors: int = 0
    degraded: int = 0
    sessions: int = 0
    bot_events: int = 0
    bot_requests: int = 0
    bot_clicks: int = 0
    unknown_items: int = 0
    new_items: int = 0
    retired_items: int = 0
    price_changes: int = 0
    new_users: int = 0
    served_impressions: int = 0  # scorer lists shown to humans, all time (warm-up included)
    served_clicks: int = 0
    latency: HdrHistogram = field(default_factory=new_histogram)  # microseconds (sim/latency.py)
    arms: dict[str, ArmStats] = field(default_factory=dict)
    purchase_delays_h: list[float] = field(default_factory=list)
    hourly: dict[str, dict[int, HourCell]] = field(default_factory=dict)  # arm -> sim hour -> cell

    def hour(self, arm: str, hour: int, user_id: str, n: int, clicks: int, expected: float,
             warmup: bool) -> None:
        """One human list of ``arm`` in sim ``hour`` (warm-up included) for the learning curve."""
        cell = self.hourly.setdefault(arm, {}).setdefault(hour, HourCell())
        cell.impressions += n
        cell.clicks += clicks
        cell.expected_clicks += expected
        cell.warmup_impressions += n if warmup else 0
        per = cell.per_user.setdefault(user_id, [0, 0])
        per[0] += n
        per[1] += clicks

    def arm(self, name: str) -> ArmStats:
        if name not in self.arms:
            self.arms[name] = ArmStats()
        return self.arms[name]

    def event(self, etype: str, bot: bool) -> None:
        self.events += 1
        self.by_type[etype] = self.by_type.get(etype, 0) + 1
        self.bot_events += int(bot)
        EVENTS.labels(etype).inc()

    def rpc(self, latency_ms: float) -> None:
        self.requests += 1
        record_us(self.latency, latency_ms * 1000.0)
        RPC.observe(latency_ms / 1000.0)

    def rpc_error(self, code: str) -> None:
        self.requests += 1
        self.rpc_errors += 1
        RPC_ERRORS.labels(code).inc()

    def report(self) -> dict[str, Any]:
        imps, clicks = self.served_impressions, self.served_clicks
        lat = self.latency
        comparisons = {f"{a}_vs_{b}": compare(self.arms[a], self.arms[b])
                       for a, b in COMPARISONS if a in self.arms and b in self.arms}
        delays = sorted(self.purchase_delays_h)
        arms = {name: a.report() for name, a in sorted(self.arms.items())}
        oracle = arms.get("oracle", {}).get("new_items")
        for name, rep in arms.items():
            rep["hourly"] = [{"hour": h, **c.report()} for h, c in sorted(self.hourly.get(name, {}).items())]
            if oracle is not None and name != "oracle":
                mine = rep["new_items"]
                mine["oracle"] = {"share": oracle["share"], "ctr": oracle["ctr"],
                                  "share_ratio": mine["share"] / oracle["share"] if oracle["share"] else None}
        return {
            "events": self.events, "events_by_type": dict(sorted(self.by_type.items())),
            "requests": self.requests, "rpc_errors": self.rpc_errors, "degraded": self.degraded,
            "rpc_p50_ms": lat.get_value_at_percentile(50) / 1000.0,  # 0.0 when empty
            "rpc_p99_ms": lat.get_value_at_percentile(99) / 1000.0,
            "impressions": imps, "clicks": clicks, "ctr": clicks / imps if imps else 0.0,
            "sessions": self.sessions,
            "arms": arms,
            "comparisons": comparisons,
            "learning_curve": learning_curve(self.hourly),
            "bots": {"events": self.bot_events, "requests": self.bot_requests, "clicks": self.bot_clicks},
            "catalog": {"upserts": self.catalog_upserts, "new_items": self.new_items,
                        "retired": self.retired_items, "price_changes": self.price_changes},
            "users": {"profiles": self.profiles, "new_users": self.new_users},
            "purchase_delay_h": {"n": len(delays),
                                 "p50": delays[len(delays) // 2] if delays else 0.0,
                                 "p90": delays[int(len(delays) * 0.9)] if delays else 0.0},
            "unknown_items": self.unknown_items,
        }
