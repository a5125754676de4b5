"""The simulated shop: items, users and the hidden ground truth of how users react. Seeded.

Items: a category, a brand of that category (long-tailed brand shares), a price around the
category's price level, a quality, a unit "style" vector (latent) and a long-tailed
popularity (awareness: how often browsing lands on it). Items arrive and retire over time
and prices change (``add_item``, ``retire``, ``change_price``).

Users: a category preference (Dirichlet), a few favourite brands, a price sensitivity, a unit
taste vector, an activity level. A share drift: their category preference moves linearly
from ``pref`` to ``drift_to`` over sim time. A small share are bots (high activity, random
views and clicks); the flag lives only here, never in an event.

Hidden truth (never visible to the recommender, only through events), at sim time t:
    u(user, item, t) = bias + w_category·log(n_categories·pref_t[category])   (pref floored)
                     + w_latent·<taste, style> + w_brand·[brand is a favourite]
                     + w_quality·quality - w_price·price_sensitivity·price_z
    p_click(user, item, pos, t) = examine(pos) · sigmoid(u),  examine(pos) = 1 / log2(pos+2)^d
    p_cart | click = sigmoid(logit(cart_rate) + 0.4·quality - 0.6·price_sensitivity·price_z)
    p_purchase | cart = purchase_rate, after a log-normal delay (hours to days)
Browsing views pick a category by pref_t, then an item of it with weight
popularity · exp(browse_taste · (u without the category term)): views follow taste, so
co-visitation carries real signal, and a recommender can learn it only from events.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sim.config import WorldConfig

F64 = npt.NDArray[np.float64]
HOUR_MS = 3_600_000


@dataclass(eq=False)
class Item:
    item_id: str
    category: int
    brand: int
    price: float
    quality: float
    price_z: float
    idx: int = 0
    active: bool = True
    born_ms: int = 0


@dataclass(eq=False)
class User:
    user_id: str
    pref: F64  # category distribution (sums to 1) at the start
    price_sens: float
    activity: float
    idx: int = 0
    taste: F64 = field(default_factory=lambda: np.zeros(0))
    brands: frozenset[int] = frozenset()
    brand_mask: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    bot: bool = False
    drift_to: F64 | None = None  # the preference a drifting user ends with
    drift_start_h: float = 0.0  # sim hours after the world's epoch
    drift_span_h: float = 1.0


def position_bias(pos: int, decay: float = 1.0) -> float:
    """Probability that a shopper examines position ``pos`` (0-based) of a list."""
    return float(1.0 / math.log2(pos + 2.0) ** decay)


def _sigmoid(x: F64) -> F64:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


class _Arrays:
    """Item attributes as columns (grown by doubling; rows are written before ``n`` moves)."""

    def __init__(self, cap: int, dim: int) -> None:
        self.cat = np.zeros(cap, np.int64)
        self.brand = np.zeros(cap, np.int64)
        self.price_z = np.zeros(cap)
        self.quality = np.zeros(cap)
        self.style = np.zeros((cap, dim))
        self.logpop = np.zeros(cap)
        self.active = np.zeros(cap, bool)

    def grown(self, cap: int) -> _Arrays:
        new = _Arrays(cap, self.style.shape[1])
        for name in ("cat", "brand", "price_z", "quality", "style", "logpop", "active"):
            old = getattr(self, name)
            getattr(new, name)[: len(old)] = old
        return new


class World:
    def __init__(self, seed: int | None = None, n_users: int | None = None,
                 n_items: int | None = None, n_categories: int | None = None, *,
                 config: WorldConfig | None = None) -> None:
        cfg = config or WorldConfig()
        given = {k: v for k, v in (("seed", seed), ("n_items", n_items), ("n_categories", n_categories))
                 if v is not None}
        cfg = cfg.with_(catalog=given, users={"n_users": n_users} if n_users is not None else {})
        self.cfg, self.t = cfg, cfg.truth
        c = cfg.catalog
        self.seed, self.n_categories, self.dim = c.seed, c.n_categories, c.latent_dim
        self.n_brands = c.n_categories * c.brands_per_category
        self.rng = np.random.default_rng(c.seed)  # shared draws for callers that pass no rng
        self._grow = np.random.default_rng([c.seed, 1])  # items / users created later
        self._lock = threading.Lock()
        self.epoch_ms = 0  # drift is measured from here (the simulator sets its start time)
        gen = np.random.default_rng([c.seed, 0])
        self.cat_price = gen.normal(c.price_log_mean, c.price_log_spread, size=c.n_categories)
        bw = 1.0 / np.arange(1, c.brands_per_category + 1)
        self.brand_p = bw / bw.sum()
        self.items: list[Item] = []
        self.index: dict[str, Item] = {}
        self._a = _Arrays(max(16, 2 * c.n_items), c.latent_dim)
        self._n = 0
        for _ in range(c.n_items):
            self._new_item(gen, born_ms=0)
        # popularity (awareness) rank: partly quality, partly luck
        rho = c.popularity_quality
        q = np.array([it.quality for it in self.items])
        score = rho * q + math.sqrt(1 - rho * rho) * gen.normal(size=len(q))
        self._pop_score = np.sort(score)
        ranks = len(q) - np.searchsorted(self._pop_score, score)
        self._a.logpop[: len(q)] = -c.zipf_exponent * np.log(np.maximum(ranks, 1))
        self.users: list[User] = []
        self._cum = np.zeros(0)
        for _ in range(cfg.users.n_users):
            self._new_user(gen)

    # --- construction ------------------------------------------------------------------------
    def _new_item(self, rng: np.random.Generator, born_ms: int, rank: int = 1,
                  quality: float | None = None) -> Item:
        c = self.cfg.catalog
        cat = int(rng.integers(0, c.n_categories))
        brand = cat * c.brands_per_category + int(rng.choice(c.brands_per_category, p=self.brand_p))
        z = float(rng.normal())
        logp = self.cat_price[cat] + c.price_log_sd * z
        style = rng.normal(size=c.latent_dim)
        with self._lock:
            j = self._n
            if j >= len(self._a.cat):
                self._a = self._a.grown(2 * len(self._a.cat))
            a = self._a
            q = float(rng.normal()) if quality is None else quality
            item = Item(f"i{j}", cat, brand, round(float(np.exp(logp)), 2), q, z, idx=j, born_ms=born_ms)
            a.cat[j], a.brand[j], a.price_z[j], a.quality[j] = cat, brand, z, item.quality
            a.style[j] = style / np.linalg.norm(style)
            a.logpop[j] = -c.zipf_exponent * math.log(rank)
            a.active[j] = True
            self.items.append(item)
            self.index[item.item_id] = item
            self._n = j + 1
        return item

    def _new_user(self, rng: np.random.Generator) -> User:
        u, c = self.cfg.users, self.cfg.catalog
        j = len(self.users)
        pref = rng.dirichlet(np.full(c.n_categories, u.pref_concentration))
        taste = rng.normal(size=c.latent_dim)
        cats = rng.choice(c.n_categories, size=u.favourite_brands, p=pref)
        brands = frozenset(int(k) * c.brands_per_category
                           + int(rng.choice(c.brands_per_category, p=self.brand_p)) for k in cats)
        mask = np.zeros(self.n_brands, bool)
        mask[list(brands)] = True
        bot = bool(rng.random() < u.bot_share)
        drift = not bot and bool(rng.random() < u.drift_share)
        user = User(f"u{j}", pref, float(rng.uniform(0, 1)),
                    float(rng.pareto(u.activity_pareto) + 0.2) * (u.bot_activity if bot else 1.0),
                    idx=j, taste=taste / np.linalg.norm(taste), brands=brands, brand_mask=mask, bot=bot,
                    drift_to=rng.dirichlet(np.full(c.n_categories, u.pref_concentration)) if drift else None,
                    drift_start_h=float(rng.uniform(0, u.drift_start_max_h)),
                    drift_span_h=max(u.drift_span_h, 1e-6))
        self._add_activity(user.activity)
        self.users.append(user)
        return user

    def _add_activity(self, activity: float) -> None:
        """Cumulative activity weights (grown by doubling): ``pick_user`` is a binary search."""
        n = len(self.users)
        if n >= len(self._cum):
            grown = np.zeros(max(16, 2 * len(self._cum)))
            grown[: len(self._cum)] = self._cum
            self._cum = grown
        self._cum[n] = (self._cum[n - 1] if n else 0.0) + activity

    # --- dynamics (called by the simulator's scheduler) ---------------------------------------
    def add_item(self, t_ms: int) -> Item:
        """A new (cold-start) item; its popularity is ranked like a launch item's would be."""
        rho = self.cfg.catalog.popularity_quality
        g = self._grow
        quality = float(g.normal())
        score = rho * quality + math.sqrt(1 - rho * rho) * float(g.normal())
        rank = max(1, len(self._pop_score) - int(np.searchsorted(self._pop_score, score)))
        return self._new_item(g, born_ms=t_ms, rank=rank, quality=quality)

    def retire(self, item: Item) -> None:
        with self._lock:
            item.active = False
            self._a.active[item.idx] = False

    def change_price(self, item: Item, log_step: float) -> None:
        c = self.cfg.catalog
        with self._lock:
            item.price_z += log_step / c.price_log_sd
            logp = self.cat_price[item.category] + c.price_log_sd * item.price_z
            item.price = round(float(np.exp(logp)), 2)
            self._a.price_z[item.idx] = item.price_z

    def add_user(self) -> User:
        return self._new_user(self._grow)

    def active_items(self) -> list[Item]:
        return [it for it in self.items if it.active]

    # --- the hidden truth --------------------------------------------------------------------
    def _cols(self) -> tuple[_Arrays, int]:
        with self._lock:
            return self._a, self._n

    def pref_at(self, user: User, t_ms: int | None = None) -> F64:
        if user.drift_to is None or t_ms is None:
            return user.pref
        hours = (t_ms - self.epoch_ms) / HOUR_MS
        lam = min(max((hours - user.drift_start_h) / user.drift_span_h, 0.0), 1.0)
        return np.asarray((1.0 - lam) * user.pref + lam * user.drift_to)

    def _taste_terms(self, user: User, a: _Arrays, n: int) -> F64:
        t = self.t
        brand = user.brand_mask[a.brand[:n]]
        return np.asarray(t.w_latent * (a.style[:n] @ user.taste) + t.w_brand * brand
                          + t.w_quality * a.quality[:n] - t.w_price * user.price_sens * a.price_z[:n])

    def _cat_term(self, user: User, t_ms: int | None) -> F64:
        pref = np.maximum(self.n_categories * self.pref_at(user, t_ms), self.t.pref_floor)
        return np.asarray(self.t.w_category * np.log(pref))

    def utility_all(self, user: User, t_ms: int | None = None) -> F64:
        """The logit of clicking (before position bias) for every item, indexed by ``Item.idx``."""
        a, n = self._cols()
        return self.t.bias + self._cat_term(user, t_ms)[a.cat[:n]] + self._taste_terms(user, a, n)

    def p_click_all(self, user: User, t_ms: int | None = None) -> F64:
        """P(click at position 0) for every item; 0 for retired items."""
        a, n = self._cols()
        return np.where(a.active[:n], _sigmoid(self.utility_all(user, t_ms)[:n]), 0.0)

    def examine(self, pos: int) -> float:
        return position_bias(pos, self.t.position_decay)

    def p_click(self, user: User, item: Item, pos: int, t_ms: int | None = None) -> float:
        if not item.active:
            return 0.0
        t = self.t
        logit = (t.bias + float(self._cat_term(user, t_ms)[item.category])
                 + t.w_latent * float(self._a.style[item.idx] @ user.taste)
                 + t.w_brand * (item.brand in user.brands) + t.w_quality * item.quality
                 - t.w_price * user.price_sens * item.price_z)
        return self.examine(pos) / (1.0 + math.exp(-logit))

    def p_cart(self, user: User, item: Item) -> float:
        base = math.log(self.t.cart_rate / (1.0 - self.t.cart_rate))
        return 1.0 / (1.0 + math.exp(-(base + 0.4 * item.quality - 0.6 * user.price_sens * item.price_z)))

    def purchase_delay_ms(self, rng: np.random.Generator) -> int:
        hours = self.t.purchase_delay_median_h * math.exp(self.t.purchase_delay_sigma * rng.standard_normal())
        return int(hours * HOUR_MS)

    def oracle(self, user: User, k: int, t_ms: int | None = None,
               exclude: frozenset[str] | set[str] = frozenset(),
               max_per_category: int = 0) -> tuple[list[Item], F64]:
        """The k active items with the highest true click probability (best first) and those
        probabilities: the ordering that maximises expected clicks under position bias.
        ``max_per_category`` > 0: the best list with at most that many items per category
        (greedy is optimal here: a partition matroid, and examination falls with position)."""
        p = self.p_click_all(user, t_ms)
        for item_id in exclude:
            it = self.index.get(item_id)
            if it is not None and it.idx < len(p):
                p[it.idx] = 0.0
        m = min(k * (10 if max_per_category > 0 else 1), len(p))
        top = np.argpartition(-p, m - 1)[:m] if m else np.zeros(0, np.int64)
        top = top[np.argsort(-p[top], kind="stable")]
        if max_per_category > 0:
            a, _ = self._cols()
            used: dict[int, int] = {}
            keep = []
            for j in top.tolist():
                c = int(a.cat[j])
                if used.get(c, 0) < max_per_category:
                    used[c] = used.get(c, 0) + 1
                    keep.append(j)
            top = np.array(keep, dtype=np.int64)
        top = top[:k]
        return [self.items[int(j)] for j in top], p[top]

    def best_ctr(self, user: User, k: int, t_ms: int | None = None,
                 exclude: frozenset[str] | set[str] = frozenset()) -> float:
        """Ground-truth best achievable mean CTR of a list of k (oracle ordering)."""
        _, p = self.oracle(user, k, t_ms, exclude)
        return float(sum(float(q) * self.examine(pos) for pos, q in enumerate(p)) / max(k, 1))

    # --- behaviour ---------------------------------------------------------------------------
    def pick_user(self, rng: np.random.Generator | None = None) -> User:
        rng = rng or self.rng
        n = len(self.users)
        j = int(np.searchsorted(self._cum[:n], rng.random() * self._cum[n - 1], side="right"))
        return self.users[min(j, n - 1)]

    def browse(self, user: User, n: int, rng: np.random.Generator | None = None,
               t_ms: int | None = None) -> list[Item]:
        """n views: a category by the user's preference at t, then an item of it by
        popularity and taste. Retired items are never viewed."""
        rng = rng or self.rng
        a, m = self._cols()
        weight = np.where(a.active[:m], np.exp(a.logpop[:m] + self.t.browse_taste
                                               * self._taste_terms(user, a, m)), 0.0)
        pref = self.pref_at(user, t_ms)
        out = []
        for _ in range(n):
            c = int(rng.choice(self.n_categories, p=pref))
            w = np.where(a.cat[:m] == c, weight, 0.0)
            if w.sum() <= 0:
                w = weight
            if w.sum() <= 0:
                break
            out.append(self.items[int(rng.choice(m, p=w / w.sum()))])
        return out

    def random_item(self, rng: np.random.Generator) -> Item | None:
        a, n = self._cols()
        live = np.flatnonzero(a.active[:n])
        return self.items[int(rng.choice(live))] if len(live) else None
