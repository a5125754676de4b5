"""The simulated shop: items, users and the hidden ground truth of how users react. Seeded.

Hidden truth (never visible to the recommender, only through events):
    affinity(u, i) = pref_u[cat_i] * n_categories          (1 = indifferent)
    p_click(u, i, pos) = position_bias(pos) * sigmoid(-3.2 + 1.6·log(affinity) + 1.2·quality_i
                                                       - price_sens_u · price_z_i)
    p_cart | click = 0.25, p_purchase | cart = 0.4
Browsing views pick a category by preference, then an item by long-tailed popularity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Item:
    item_id: str
    category: int
    brand: int
    price: float
    quality: float
    price_z: float


@dataclass(frozen=True)
class User:
    user_id: str
    pref: np.ndarray  # category distribution (sums to 1)
    price_sens: float
    activity: float


def position_bias(pos: int) -> float:
    return 1.0 / math.log2(pos + 2.0)


class World:
    def __init__(self, *, seed: int, n_users: int, n_items: int, n_categories: int) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.n_categories = n_categories
        cats = rng.integers(0, n_categories, size=n_items)
        prices = np.exp(rng.normal(3.5, 0.8, size=n_items))
        logp = np.log(prices)
        price_z = (logp - logp.mean()) / (logp.std() + 1e-9)
        quality = rng.normal(0.0, 1.0, size=n_items)
        self.items = [
            Item(f"i{j}", int(cats[j]), int(rng.integers(0, 50)), round(float(prices[j]), 2),
                 float(quality[j]), float(price_z[j]))
            for j in range(n_items)
        ]
        # long-tailed popularity within each category (Zipf-like weights)
        pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
        rng.shuffle(pop)
        self.by_cat: list[np.ndarray] = [np.flatnonzero(cats == c) for c in range(n_categories)]
        self.cat_weights = [pop[idx] / pop[idx].sum() if len(idx) else idx for idx in self.by_cat]
        self.users = [
            User(f"u{j}", rng.dirichlet(np.full(n_categories, 0.3)), float(rng.uniform(0, 1)),
                 float(rng.pareto(2.0) + 0.2))
            for j in range(n_users)
        ]
        act = np.array([u.activity for u in self.users])
        self.user_weights = act / act.sum()
        self.index = {it.item_id: it for it in self.items}

    def pick_user(self) -> User:
        return self.users[int(self.rng.choice(len(self.users), p=self.user_weights))]

    def browse(self, user: User, n: int) -> list[Item]:
        """n views: a category by the user's preference, then an item by popularity."""
        out = []
        for _ in range(n):
            c = int(self.rng.choice(self.n_categories, p=user.pref))
            if not len(self.by_cat[c]):
                continue
            j = int(self.rng.choice(self.by_cat[c], p=self.cat_weights[c]))
            out.append(self.items[j])
        return out

    def affinity(self, user: User, item: Item) -> float:
        return float(user.pref[item.category] * self.n_categories)

    def p_click(self, user: User, item: Item, pos: int) -> float:
        logit = (-3.2 + 1.6 * math.log(max(self.affinity(user, item), 1e-6)) + 1.2 * item.quality
                 - user.price_sens * item.price_z)
        return position_bias(pos) / (1.0 + math.exp(-logit))

    def best_ctr(self, user: User, k: int) -> float:
        """Ground-truth best achievable mean CTR for a list of k (oracle ordering)."""
        ps = sorted((self.p_click(user, it, 0) for it in self.items), reverse=True)[:k]
        return float(sum(p * position_bias(pos) for pos, p in enumerate(ps)) / max(k, 1))
