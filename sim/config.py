"""Every knob of the simulated shop in one place: defaults here, overrides from one TOML file.

``recsys sim --world FILE`` reads a TOML file with the sections below (any subset of keys);
``recsys sim --print-world`` prints the effective file. An unknown section or key is an error.
The world's size and seed default to the ``Settings`` values (``sim_seed``, ``sim_users``,
``sim_items``, ``sim_categories``) so ``--set sim_items=...`` keeps working; the file wins.

Units: probabilities in [0, 1]; ``*_h`` and ``*_per_h`` are SIM hours; ``*_s`` in ``[behaviour]``
are sim seconds; ``run.warmup_s`` is WALL seconds (the stack needs wall time to warm up).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from core.settings import Settings


class WorldConfigError(ValueError):
    """The world file is missing, malformed or names an unknown knob."""


@dataclasses.dataclass(frozen=True)
class Catalog:
    seed: int = 7
    n_items: int = 1000
    n_categories: int = 20
    brands_per_category: int = 8
    latent_dim: int = 8
    zipf_exponent: float = 0.9  # item popularity (awareness) ~ 1 / rank**a
    popularity_quality: float = 0.5  # correlation of the popularity rank score with quality
    price_log_mean: float = 3.5  # category price levels ~ N(mean, spread); items around them
    price_log_spread: float = 0.6
    price_log_sd: float = 0.5


@dataclasses.dataclass(frozen=True)
class Users:
    n_users: int = 2000
    pref_concentration: float = 0.3  # Dirichlet alpha over categories (small = few favourites)
    favourite_brands: int = 3
    activity_pareto: float = 2.0  # session propensity ~ pareto(a) + 0.2
    drift_share: float = 0.2  # users whose category taste moves to a new one over sim time
    drift_start_max_h: float = 4.0  # drift starts uniformly in [0, this] after the sim starts
    drift_span_h: float = 4.0  # ... and completes linearly over this many sim hours
    bot_share: float = 0.01  # noisy high-rate users; flagged only in the simulator's books
    bot_activity: float = 5.0  # activity multiplier of a bot


@dataclasses.dataclass(frozen=True)
class Truth:
    """The hidden ground truth (see sim/world.py for the formula)."""

    bias: float = -4.2
    w_category: float = 0.7  # times log(max(n_categories * pref[category], pref_floor))
    pref_floor: float = 0.05
    w_latent: float = 2.5  # times <user taste, item style> (unit vectors)
    w_brand: float = 0.7  # times the user's affinity to the brand (0 or 1)
    w_quality: float = 0.5
    w_price: float = 0.8  # times price_sensitivity * (within-category price z-score)
    position_decay: float = 1.0  # examination probability = 1 / log2(pos + 2) ** this
    cart_rate: float = 0.25  # P(cart | click) for an average item and user
    purchase_rate: float = 0.4  # P(purchase | cart)
    purchase_delay_median_h: float = 6.0  # cart -> purchase delay ~ log-normal
    purchase_delay_sigma: float = 1.2
    browse_taste: float = 1.0  # how much taste (not just popularity) drives browsing views
    organic_cart_rate: float = 0.02  # P(cart | browsing view) scaled by the item's cart appeal


@dataclasses.dataclass(frozen=True)
class Behaviour:
    landing_home: float = 0.4  # P(a session starts on the homepage)
    home_share: float = 0.25  # P(a later step is a homepage visit, else a browsing view)
    steps_mean: float = 5.0  # steps per session ~ 1 + geometric
    think_s: float = 40.0  # sim seconds between steps ~ exponential
    click_delay_s: float = 8.0  # homepage -> click ~ exponential
    cart_delay_s: float = 120.0  # click -> add to cart ~ exponential
    diurnal_amplitude: float = 0.5  # activity * (1 + a cos(2 pi (hour - peak) / 24))
    diurnal_peak_hour: float = 20.0  # UTC hour of the busiest time
    bot_steps: int = 20
    bot_think_s: float = 2.0
    bot_home_share: float = 0.1
    bot_click_rate: float = 0.3  # bots click any position at this rate, whatever it shows


@dataclasses.dataclass(frozen=True)
class Dynamics:
    new_items_per_h: float = 12.0  # cold-start items published to the catalog topic
    retire_items_per_h: float = 6.0  # ItemUpsert(active=false)
    price_changes_per_h: float = 20.0
    price_change_sd: float = 0.15  # log-price step
    new_users_per_h: float = 40.0


@dataclasses.dataclass(frozen=True)
class Run:
    speed: float = 60.0  # sim seconds per wall second
    warmup_s: float = 30.0  # WALL seconds at the start excluded from the arm statistics
    oracle_share: float = 0.1  # users (by hash) served by the simulator's oracle ranking
    k: int = 10  # items per homepage list
    rpc_timeout_s: float = 1.0
    workers: int = 8  # concurrent homepage RPCs
    diagnostic_category_cap: int = 3  # best_ctr_capped: best list with <= this many per category
    explain_share: float = 0.25  # Recommend calls asked to explain (the report's gap analysis)
    # a timed run's sim clock ends at the latest past HH:00 UTC of this hour, so its sim hours
    # (and the diurnal arrival rates) are the same whatever time of day it starts; < 0: it ends
    # at wall "now" (sim.clock.plan_start)
    end_hour_utc: float = 22.0


SECTIONS: dict[str, type] = {"catalog": Catalog, "users": Users, "truth": Truth,
                             "behaviour": Behaviour, "dynamics": Dynamics, "run": Run}


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    catalog: Catalog = Catalog()
    users: Users = Users()
    truth: Truth = Truth()
    behaviour: Behaviour = Behaviour()
    dynamics: Dynamics = Dynamics()
    run: Run = Run()

    def with_(self, **sections: dict[str, Any]) -> WorldConfig:
        """A copy with some knobs changed: ``cfg.with_(run={"speed": 10})``."""
        return _apply(self, sections, "overrides")

    def to_toml(self) -> str:
        lines: list[str] = []
        for name in SECTIONS:
            lines.append(f"[{name}]")
            for f in dataclasses.fields(getattr(self, name)):
                v = getattr(getattr(self, name), f.name)
                lines.append(f"{f.name} = {str(v).lower() if isinstance(v, bool) else v!r}")
            lines.append("")
        return "\n".join(lines)


def _apply(cfg: WorldConfig, data: dict[str, Any], where: str) -> WorldConfig:
    changes: dict[str, Any] = {}
    for section, values in data.items():
        if section not in SECTIONS:
            raise WorldConfigError(f"{where}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise WorldConfigError(f"{where}: [{section}] must be a table")
        current = getattr(cfg, section)
        fields = {f.name: f for f in dataclasses.fields(current)}
        typed: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in fields:
                raise WorldConfigError(f"{where}: unknown key {section}.{key}")
            kind = type(getattr(current, key))
            try:
                if kind is int and (isinstance(raw, bool) or float(raw) != int(raw)):
                    raise ValueError(f"expected an integer, got {raw!r}")
                typed[key] = kind(raw)
            except (TypeError, ValueError) as exc:
                raise WorldConfigError(f"{where}: {section}.{key}: {exc}") from exc
        changes[section] = dataclasses.replace(current, **typed)
    out = dataclasses.replace(cfg, **changes)
    _validate(out)
    return out


def _validate(c: WorldConfig) -> None:
    if c.catalog.n_items < 1 or c.catalog.n_categories < 1 or c.users.n_users < 1:
        raise WorldConfigError("need at least one item, category and user")
    if c.run.speed <= 0 or c.run.k < 1 or c.run.workers < 1:
        raise WorldConfigError("run.speed must be > 0, run.k and run.workers >= 1")
    if not c.run.end_hour_utc < 24:
        raise WorldConfigError("run.end_hour_utc must be < 24 (negative: end at wall now)")
    shares = {"users.drift_share": c.users.drift_share, "users.bot_share": c.users.bot_share,
              "run.oracle_share": c.run.oracle_share, "run.explain_share": c.run.explain_share,
              "truth.cart_rate": c.truth.cart_rate,
              "truth.purchase_rate": c.truth.purchase_rate, "behaviour.home_share": c.behaviour.home_share,
              "behaviour.landing_home": c.behaviour.landing_home,
              "behaviour.diurnal_amplitude": c.behaviour.diurnal_amplitude}
    for name, v in shares.items():
        if not 0.0 <= v <= 1.0:
            raise WorldConfigError(f"{name} must be in [0, 1], got {v}")
    if not 0.0 < c.truth.cart_rate < 1.0:
        raise WorldConfigError("truth.cart_rate must be strictly between 0 and 1")
    if c.behaviour.steps_mean < 1:
        raise WorldConfigError("behaviour.steps_mean must be >= 1")


def load_config(settings: Settings | None = None, path: str | Path | None = None) -> WorldConfig:
    """Defaults, then the size/seed from ``settings``, then the TOML file at ``path``."""
    cfg = WorldConfig()
    if settings is not None:
        cfg = cfg.with_(catalog={"seed": settings.sim_seed, "n_items": settings.sim_items,
                                 "n_categories": settings.sim_categories},
                        users={"n_users": settings.sim_users})
    if path is None:
        return cfg
    p = Path(path)
    if not p.is_file():
        raise WorldConfigError(f"world file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise WorldConfigError(f"world file {p}: {exc}") from exc
    return _apply(cfg, data, f"world file {p}")
