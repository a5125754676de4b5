"""The validation world at the live run's density, shared by the offline studies of the live
retrain (``recsys.bench.user_embedding``, ``recsys.bench.refit_split``).

A VALIDATION world seed (``--world-seed`` 0; the live measurements use 7 / 11 / 23), the
simulated shop (``sim.training_set.simulate``) at ``--rate`` 860 shopper sessions per sim hour
(about what a 600 s ``recsys up`` at 60x produces), split by time 70 / 15 / 15
(``recsys.bench.position_debias.split``, the retrain's own split); the MMoE of the live
retrain (``--hidden 32``, ``--epochs`` 3).
"""

from __future__ import annotations

import argparse

from core.settings import Settings
from models.ranking_dataset import RankingData
from recsys.bench.position_debias import split
from sim.config import WorldConfig, load_config
from sim.training_set import TrainingSetConfig, simulate

Parts = tuple[RankingData, RankingData, RankingData]  # train, valid, test


def add_live_world_arguments(p: argparse.ArgumentParser) -> None:
    """The options every study of the live retrain shares (each adds its own ``--days``)."""
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--world-seed", type=int, default=0, help="validation world (not 7 / 11 / 23)")
    p.add_argument("--warmup-days", type=float, default=0.05)
    p.add_argument("--rate", type=float, default=860.0, help="shopper sessions per sim hour")
    p.add_argument("--hidden", default="32", help="MMoE expert layers (the live retrain's)")
    p.add_argument("--epochs", type=int, default=3, help="the live retrain's")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=1000)


def live_world(args: argparse.Namespace) -> tuple[Settings, WorldConfig]:
    settings = Settings(sim_seed=args.world_seed)
    return settings, load_config(settings)


def live_data(days: float, args: argparse.Namespace, settings: Settings, world: WorldConfig
              ) -> tuple[RankingData, Parts]:
    """``days`` recorded sim days (after the warm-up) and their 70 / 15 / 15 time split."""
    cfg = TrainingSetConfig(days=days + args.warmup_days, warmup_days=args.warmup_days,
                            sessions_per_h=args.rate)
    data = simulate(cfg, settings, world=world)
    return data, split(data)


def hidden_of(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(int(h) for h in args.hidden.split(","))


__all__ = ["Parts", "add_live_world_arguments", "hidden_of", "live_data", "live_world"]
