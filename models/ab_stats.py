"""A/B analysis from the logs (torch-free): what the scorer served (``impressions``) joined with
what shoppers did (``training-examples``), per arm and per user, as ratio metrics with 95%
confidence intervals clustered by user, and the lift of each arm over the control.

Why clustered: arms are assigned per user (``online.servicer.assign_arm``) and one user's
impressions are correlated, so the user, not the impression, is the independent unit. Every
metric is a ratio of sums over the arm's users, ``R = Σ y_u / Σ x_u`` (CTR = clicks /
impressions, ...). Its standard error is the delta method's for a ratio of cluster sums (Deng,
Knoblich, Lu, "Applying the Delta Method in Metric Analytics", KDD 2018), with the small-sample
factor ``G / (G - 1)`` for G users::

    se(R)² = G / (G - 1) · Σ_u (y_u - R·x_u)² / (Σ_u x_u)²

The 95% interval is ``R ± 1.96·se`` with its lower end clipped at 0 (no metric here is
negative); with fewer than 2 users there is no interval (``None``). The lift of arm A over the
control C is ``R_A / R_C - 1``, with a delta-method interval on the log scale,
``exp(log(R_A / R_C) ± 1.96·sqrt((se_A / R_A)² + (se_C / R_C)²)) - 1`` (arms hold disjoint
users: independent samples); ``None`` where either rate is 0.

Counting (``ABLog``): an impression is one served item (a request of k items is k impressions;
requests are counted too). Degraded requests (the fallback list) are counted apart and left out
of every rate. Rates are over *labelled* impressions: requests the label join has emitted
examples for (it emits every item of a request at once when the click window closes), so
requests still inside their click window do not dilute the rates; they are counted as
``unlabelled``. Each example counts in its latest version (corrections carry delayed carts and
purchases). Revenue is one unit per purchase label at the price the shopper was shown: the
logged ranking feature ``log_price`` (``log1p(price)``, ``features.ranking_features``) of the
example; a purchase whose features lack it is counted as ``unpriced_purchases``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proto import codecs, events_pb2

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile

# metric -> (numerator, denominator, scale): every metric is scale · Σ numerator / Σ denominator
METRICS: dict[str, tuple[str, str, float]] = {
    "ctr": ("clicks", "impressions", 1.0),
    "cart_rate": ("carts", "impressions", 1.0),
    "cvr": ("purchases", "clicks", 1.0),
    "revenue_per_mille": ("revenue", "impressions", 1000.0),
}


@dataclass
class UserSums:
    """One user's labelled outcomes in one arm."""

    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    revenue: float = 0.0


@dataclass(frozen=True)
class Estimate:
    value: float | None  # None: nothing in the denominator
    se: float | None  # None: no standard error (fewer than 2 users, or an undefined lift)
    ci95: tuple[float, float] | None

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "se": self.se,
                "ci95": None if self.ci95 is None else list(self.ci95)}


def clustered_se(ys: Sequence[float], xs: Sequence[float], ratio: float) -> float | None:
    """Delta-method standard error of ``ratio`` = Σy / Σx over clusters (one (y, x) pair per
    cluster, e.g. a user's clicks and impressions), with the G / (G - 1) small-sample factor;
    None with fewer than 2 clusters or nothing in the denominator."""
    sx, g = float(sum(xs)), len(xs)
    if sx <= 0 or g < 2:
        return None
    ss = math.fsum((y - ratio * x) ** 2 for y, x in zip(ys, xs, strict=True))
    return math.sqrt(ss * g / (g - 1)) / sx


def ratio_estimate(ys: Sequence[float], xs: Sequence[float], scale: float = 1.0,
                   z: float = Z95) -> Estimate:
    """``scale · Σy / Σx`` over clusters (one (y, x) pair per user) with the clustered
    delta-method standard error and a normal interval (lower end clipped at 0)."""
    if len(ys) != len(xs):
        raise ValueError(f"{len(ys)} numerators for {len(xs)} denominators")
    sx = float(sum(xs))
    if sx <= 0:
        return Estimate(None, None, None)
    r = float(sum(ys)) / sx
    se = clustered_se(ys, xs, r)
    if se is None:
        return Estimate(scale * r, None, None)
    return Estimate(scale * r, scale * se, (max(0.0, scale * (r - z * se)), scale * (r + z * se)))


def lift_estimate(arm: Estimate, control: Estimate, z: float = Z95) -> Estimate:
    """``arm / control - 1`` with a delta-method interval on the log of the ratio."""
    a, c = arm.value, control.value
    if a is None or c is None or a <= 0 or c <= 0:
        return Estimate(None, None, None)
    ratio = a / c
    if arm.se is None or control.se is None:
        return Estimate(ratio - 1.0, None, None)
    se_log = math.hypot(arm.se / a, control.se / c)
    return Estimate(ratio - 1.0, ratio * se_log,
                    (ratio * math.exp(-z * se_log) - 1.0, ratio * math.exp(z * se_log) - 1.0))


def arm_metrics(users: Iterable[UserSums]) -> dict[str, Estimate]:
    """Every metric of ``METRICS`` over one arm's users."""
    rows = list(users)
    return {name: ratio_estimate([getattr(u, num) for u in rows], [getattr(u, den) for u in rows], scale)
            for name, (num, den, scale) in METRICS.items()}


# ----------------------------------------------------------------------------------------
# the logs -> per-arm, per-user sums


@dataclass
class ArmBooks:
    users: dict[str, UserSums] = field(default_factory=dict)  # labelled requests only
    seen_users: set[str] = field(default_factory=set)  # every request, degraded included
    requests: int = 0  # not degraded
    impressions: int = 0  # items served in those requests
    unlabelled_requests: int = 0  # not degraded, no example yet (click window still open)
    unlabelled_impressions: int = 0
    degraded_requests: int = 0
    degraded_impressions: int = 0
    unpriced_purchases: int = 0
    orphan_examples: int = 0  # examples of requests that are not in the impressions topic

    def totals(self) -> UserSums:
        t = UserSums()
        for u in self.users.values():
            t.requests += u.requests
            t.impressions += u.impressions
            t.clicks += u.clicks
            t.carts += u.carts
            t.purchases += u.purchases
            t.revenue += u.revenue
        return t


@dataclass
class _Request:
    arm: str
    user_id: str
    n_items: int
    degraded: bool


@dataclass
class _Label:
    version: int
    request_id: str
    arm: str
    time_ms: int
    click: bool
    cart: bool
    purchase: bool
    price: float | None  # shown price, read only for purchases


def logged_price(features: bytes) -> float | None:
    """The price the shopper saw: ``expm1`` of the logged ``log_price`` feature (None if absent)."""
    value = codecs.unpack_features(features).get("log_price")
    return math.expm1(float(value)) if isinstance(value, int | float) else None


class ABLog:
    """Impressions and training examples, in any order, -> ``ArmBooks`` per arm (``books()``).
    Only requests of ``experiment`` (None: any) served at or after ``since_ms`` count."""

    def __init__(self, experiment: str | None = None, since_ms: int = 0) -> None:
        self.experiment, self.since_ms = experiment, since_ms
        self.requests: dict[str, _Request] = {}
        self.labels: dict[str, _Label] = {}  # example_id -> its latest version
        self.skipped: set[str] = set()  # request ids of another experiment, or before since_ms
        self.impression_records = 0
        self.example_records = 0

    def add_impression(self, rec: bytes | events_pb2.Impression) -> None:
        imp = rec if isinstance(rec, events_pb2.Impression) else events_pb2.Impression.FromString(rec)
        self.impression_records += 1
        if imp.request_id in self.requests or imp.request_id in self.skipped:  # a duplicate delivery
            return
        if imp.event_time_ms < self.since_ms or (self.experiment is not None
                                                 and imp.experiment != self.experiment):
            self.skipped.add(imp.request_id)
            return
        self.requests[imp.request_id] = _Request(imp.arm, imp.user_id, len(imp.items), imp.degraded)

    def add_example(self, rec: bytes | events_pb2.TrainingExample) -> None:
        ex = (rec if isinstance(rec, events_pb2.TrainingExample)
              else events_pb2.TrainingExample.FromString(rec))
        self.example_records += 1
        prev = self.labels.get(ex.example_id)
        if prev is not None and ex.version < prev.version:
            return
        self.labels[ex.example_id] = _Label(
            ex.version, ex.request_id, ex.arm, ex.impression_time_ms, ex.click, ex.add_to_cart,
            ex.purchase, logged_price(ex.features) if ex.purchase else None)

    def books(self) -> dict[str, ArmBooks]:
        by_request: dict[str, list[_Label]] = {}
        out: dict[str, ArmBooks] = {}
        for lab in self.labels.values():
            if lab.request_id in self.requests:
                by_request.setdefault(lab.request_id, []).append(lab)
            elif lab.request_id not in self.skipped and lab.time_ms >= self.since_ms:
                out.setdefault(lab.arm, ArmBooks()).orphan_examples += 1
        for rid, req in self.requests.items():
            b = out.setdefault(req.arm, ArmBooks())
            b.seen_users.add(req.user_id)
            if req.degraded:
                b.degraded_requests += 1
                b.degraded_impressions += req.n_items
                continue
            b.requests += 1
            b.impressions += req.n_items
            labels = by_request.get(rid)
            if not labels:
                b.unlabelled_requests += 1
                b.unlabelled_impressions += req.n_items
                continue
            u = b.users.setdefault(req.user_id, UserSums())
            u.requests += 1
            u.impressions += len(labels)
            for lab in labels:
                u.clicks += lab.click
                u.carts += lab.cart
                if lab.purchase:
                    u.purchases += 1
                    if lab.price is None:
                        b.unpriced_purchases += 1
                    else:
                        u.revenue += lab.price
        return out


# ----------------------------------------------------------------------------------------
# the report


def report(log: ABLog, control: str, arms: Sequence[str] = (),
           weights: Sequence[float] = ()) -> dict[str, Any]:
    """The JSON-ready A/B report: per arm the counts, every metric with its interval, the lift
    over ``control`` and the user share against the configured one (``arms`` / ``weights`` as in
    the settings; weights empty: equal split)."""
    books = log.books()
    names = [a for a in dict.fromkeys(arms) if a in books] + sorted(set(books) - set(arms))
    total_w = sum(weights) if weights else float(len(arms))
    expected: Mapping[str, float] = {a: (w / total_w) for a, w in
                                     zip(arms, weights or [1.0] * len(arms), strict=True)}
    n_users = sum(len(b.seen_users) for b in books.values())
    arm_of: dict[str, set[str]] = {}
    for name, b in books.items():
        for user in b.seen_users:
            arm_of.setdefault(user, set()).add(name)
    metrics = {name: arm_metrics(books[name].users.values()) for name in names}
    out_arms: dict[str, Any] = {}
    for name in names:
        b, t = books[name], books[name].totals()
        lift = ({m: lift_estimate(e, metrics[control][m]).to_json() for m, e in metrics[name].items()}
                if control in metrics and name != control else None)
        out_arms[name] = {
            "users": len(b.users), "users_seen": len(b.seen_users),
            "user_share": len(b.seen_users) / n_users if n_users else None,
            "expected_share": expected.get(name),
            "requests": b.requests, "impressions": b.impressions,
            "labelled_requests": t.requests, "labelled_impressions": t.impressions,
            "unlabelled_requests": b.unlabelled_requests, "unlabelled_impressions": b.unlabelled_impressions,
            "degraded_requests": b.degraded_requests, "degraded_impressions": b.degraded_impressions,
            "clicks": t.clicks, "carts": t.carts, "purchases": t.purchases, "revenue": t.revenue,
            "unpriced_purchases": b.unpriced_purchases, "orphan_examples": b.orphan_examples,
            "metrics": {m: e.to_json() for m, e in metrics[name].items()},
            "lift": lift,
        }
    return {
        "experiment": log.experiment, "since_ms": log.since_ms, "control": control,
        "control_found": control in metrics,
        "impression_records": log.impression_records, "example_records": log.example_records,
        "examples": len(log.labels), "skipped_requests": len(log.skipped),
        "users_in_several_arms": sum(len(a) > 1 for a in arm_of.values()),
        "arms": out_arms,
        "method": {
            "impression": "one served item; rates are over labelled impressions of requests "
                          "that were not degraded",
            "metrics": {m: f"{'1000 * ' if s != 1.0 else ''}{num} / {den}"
                        for m, (num, den, s) in METRICS.items()},
            "ci95": "normal interval, standard error clustered by user (delta method for a "
                    "ratio of per-user sums), lower end clipped at 0",
            "lift": "arm / control - 1, delta-method interval on the log ratio",
            "revenue": "one unit per purchase label at the logged log_price feature (expm1)",
        },
    }


__all__ = ["METRICS", "Z95", "ABLog", "ArmBooks", "Estimate", "UserSums", "arm_metrics",
           "lift_estimate", "logged_price", "ratio_estimate", "report"]
