"""The one settings object, read from defaults < TOML file < environment, in one place.

Every component (broker, dataflows, scorer, simulator, trainer) takes a ``Settings``.
It is frozen and strict: an unknown key in the file or an unknown ``RECSYS_*`` variable
is an error, not a silent typo. Secrets are wrapped in ``Secret`` and never printed.

Environment: ``RECSYS_<FIELD>`` (upper case), e.g. ``RECSYS_KAFKA_BOOTSTRAP=kafka:9092``.
File: ``RECSYS_CONFIG=/path/settings.toml`` (or ``recsys --config PATH``), flat keys.
Kafka and Redis addresses left empty mean "the embedded stack": they are discovered from
the files that ``recsys broker`` / ``recsys up`` write into ``state_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "RECSYS_"
CONFIG_ENV = "RECSYS_CONFIG"


# the event loops a gRPC server thread can run on (``online.aio_host``), the default first
GRPC_EVENT_LOOPS = ("uvloop", "asyncio")


class SettingsError(ValueError):
    """A setting is unknown, malformed or unusable."""


@dataclasses.dataclass(frozen=True)
class Secret:
    """A value that is never shown in logs, reprs or reports."""

    value: str = ""

    def __repr__(self) -> str:
        return "Secret('**********')" if self.value else "Secret('')"

    __str__ = __repr__

    def get(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Settings:
    # --- infrastructure -------------------------------------------------------------------
    state_dir: Path = Path(".recsys")
    kafka_bootstrap: str = ""  # empty: the embedded broker published in state_dir
    kafka_sasl_username: str = ""
    kafka_sasl_password: Secret = Secret()
    redis_url: str = ""  # empty: the embedded redis published in state_dir
    redis_password: Secret = Secret()
    redis_prefix: str = "rs"  # every Redis key starts with this (isolation, multi-tenant)
    topic_prefix: str = ""  # every topic name starts with this (isolation)
    partitions: int = 4  # partitions per topic the embedded broker / `up` creates
    metrics_host: str = "127.0.0.1"  # where every process serves /metrics (0.0.0.0 in containers)
    # --- topics ---------------------------------------------------------------------------
    topic_clickstream: str = "clickstream"
    topic_catalog: str = "catalog"
    topic_users: str = "users"
    topic_impressions: str = "impressions"
    topic_dead_letter: str = "dead-letter"
    topic_training: str = "training-examples"
    # --- dataflows ------------------------------------------------------------------------
    stream_workers: int = 1
    stream_metrics_port: int = 9102
    stream_batch_size: int = 500
    stream_flush_interval_ms: int = 100  # per key: a hot key's state is written at most this often
    stream_fetch_wait_ms: int = 50  # broker long-poll bound: caps idle-to-first-event latency
    stream_recovery: bool = True
    session_gap_s: float = 1800.0
    last_n_viewed: int = 5
    popularity_half_life_s: float = 7 * 24 * 3600.0
    covisit_max_per_item: int = 50
    covisit_window: int = 3  # co-visitation pairs within this distance in a session
    trend_half_life_s: float = 3600.0  # trending items per category: short horizon
    user_pref_half_life_s: float = 7 * 24 * 3600.0
    user_pref_horizon_s: float = 30 * 24 * 3600.0
    allowed_lateness_s: float = 3600.0  # older than a user's latest event by more: dead letter
    click_window_s: float = 30 * 60.0  # label join: click attribution window (event time)
    purchase_window_s: float = 7 * 24 * 3600.0  # cart / purchase attribution window
    labels_metrics_port: int = 9104
    label_time_scale: float = 1.0  # event time / wall time (the simulator's --speed under `up`)
    retrain_interval_s: float = 120.0  # `recsys up`: retrain the ranker this often (0 = never)
    retrain_min_examples: int = 2000
    ctr_prior: float = 0.02  # Bayesian smoothing of item CTR / CVR
    cvr_prior: float = 0.05
    rate_prior_strength: float = 20.0
    max_event_skew_s: float = 3 * 24 * 3600.0  # events further in the future are invalid
    # --- scorer ---------------------------------------------------------------------------
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    serve_metrics_port: int = 9101
    serve_workers: int = 1
    # the event loop of each gRPC server thread: uvloop (libuv; ~0.1 ms less CPU per call than
    # asyncio's own, BENCHMARKS.md) or asyncio
    grpc_event_loop: str = "uvloop"
    # restart `recsys serve` with glibc malloc on transparent huge pages (recsys/huge_pages.py)
    serve_huge_pages: bool = True
    k_default: int = 20
    k_max: int = 200
    candidates: int = 500
    cache_ttl_s: float = 600.0
    request_deadline_ms: float = 100.0  # past this the fallback answers (P99 target 150 ms)
    redis_timeout_ms: float = 50.0
    # item rows in scorer memory are re-read when the dataflow's item changelog names them;
    # these bound how far they may lag while that feed's follower is not keeping up
    # (0 = read per request)
    item_stats_ttl_s: float = 60.0
    catalog_ttl_s: float = 300.0
    list_ttl_s: float = 1.0  # shared lists (popular, trending, co-visitation, ...) likewise
    item_cache_max: int = 2_000_000  # items held per scorer process
    item_preload: int = 1_000_000  # the most viewed items read into scorer memory at start
    # changed item rows that requests used within this many seconds are re-read by the
    # changelog follower at once (off the request path); others on next use; 0: all on next use
    item_refresh_hot_s: float = 60.0
    top_sellers_refresh_s: float = 5.0
    surfaces: tuple[str, ...] = ("home", "pdp", "cart")
    ab_experiment: str = "default"
    # users are hashed into these arms; policies: model (promoted model, else heuristic),
    # heuristic, popular, random
    ab_arms: tuple[str, ...] = ("model",)
    ranker_model: str = "ranker"  # registry name of the ranker the scorer serves (hot-reloaded)
    ranker_int8: bool = False  # serve the ranker with INT8 dynamic quantization
    # serve a fused MMoE in bfloat16: auto (where the CPU has native bf16 dot products), on, off
    ranker_bf16: str = "auto"
    model_reload_s: float = 5.0
    value_revenue_weight: float = 1.0  # value = w_rev * p_purchase * log1p(price) + w_click * p_click
    value_click_weight: float = 1.0
    explore_epsilon: float = 0.1  # epsilon-greedy on reserved slots, propensities logged
    explore_slots: tuple[str, ...] = ("4", "9")
    max_per_category: int = 4
    max_per_brand: int = 3
    ann_enabled: bool = True  # follow the embedding changelog into an HNSW replica
    embedding_dim: int = 64
    # --- embeddings dataflow (incremental item2vec) ----------------------------------------
    embeddings_metrics_port: int = 9105
    item2vec_window: int = 5
    item2vec_batch_sessions: int = 64
    item2vec_flush_ms: int = 500
    item2vec_session_emit: int = 10
    cold_start_min_interactions: int = 20
    embeddings_min_change: float = 1e-3
    embeddings_write_interval_ms: int = 1000
    embeddings_model_check_s: float = 30.0
    # --- simulator ------------------------------------------------------------------------
    sim_seed: int = 7
    sim_users: int = 2000
    sim_items: int = 1000
    sim_categories: int = 20
    sim_shoppers_per_s: float = 20.0
    sim_metrics_port: int = 9103
    # --- ops ------------------------------------------------------------------------------
    log_level: str = "INFO"

    # ------------------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        """Full topic name for a logical name ("clickstream", "catalog", ...)."""
        base = getattr(self, f"topic_{name.replace('-', '_')}", None)
        if not isinstance(base, str):
            raise SettingsError(f"unknown topic {name!r}")
        return f"{self.topic_prefix}{base}"

    def all_topics(self) -> list[str]:
        return [
            self.topic(n)
            for n in ("clickstream", "catalog", "users", "impressions", "dead_letter", "training")
        ]

    def kafka_config(self) -> dict[str, Any]:
        """librdkafka client config (bootstrap resolved, credentials applied)."""
        conf: dict[str, Any] = {"bootstrap.servers": resolve_kafka_bootstrap(self)}
        if self.kafka_sasl_username:
            conf.update(
                {
                    "security.protocol": "SASL_SSL",
                    "sasl.mechanisms": "PLAIN",
                    "sasl.username": self.kafka_sasl_username,
                    "sasl.password": self.kafka_sasl_password.get(),
                }
            )
        return conf

    def redacted(self) -> dict[str, Any]:
        """A printable view with secrets masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Secret | Path):
                v = repr(v) if isinstance(v, Secret) else str(v)
            out[f.name] = v
        return out

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: _coerce(self, k, v) for k, v in changes.items()})


# ----------------------------------------------------------------------------------------
# loading


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


def _coerce(_s: Settings | None, name: str, raw: Any) -> Any:
    types_ = _field_types()
    if name not in types_:
        raise SettingsError(f"unknown setting {name!r}")
    return _convert(name, types_[name], raw)


def _convert(name: str, typ: Any, raw: Any) -> Any:
    try:
        if typ is Secret:
            return raw if isinstance(raw, Secret) else Secret(str(raw))
        if typ is Path:
            return Path(raw)
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            low = str(raw).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if typ is int:
            if isinstance(raw, bool):
                raise ValueError("booleans are not integers")
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is str:
            if not isinstance(raw, str):
                raise ValueError(f"expected a string, got {type(raw).__name__}")
            return raw
        origin = typing.get_origin(typ)
        if origin is tuple or isinstance(typ, types.GenericAlias):
            if isinstance(raw, str):
                items = [x.strip() for x in raw.split(",") if x.strip()]
            else:
                items = [str(x) for x in raw]
            return tuple(items)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name!r}: {exc}") from exc
    raise SettingsError(f"setting {name!r}: unsupported type {typ!r}")


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    **kw: Any,
) -> Settings:
    """Build the settings: defaults, then the TOML file, then ``RECSYS_*`` env, then overrides."""
    env = os.environ if env is None else env
    types_ = _field_types()
    values: dict[str, Any] = {}
    path = config_file or env.get(CONFIG_ENV)
    if path:
        p = Path(path)
        if not p.is_file():
            raise SettingsError(f"config file {p} does not exist")
        with p.open("rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"config file {p}: {exc}") from exc
        for key, raw in data.items():
            if key not in types_:
                raise SettingsError(f"config file {p}: unknown setting {key!r}")
            values[key] = _convert(key, types_[key], raw)
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key not in types_:
            raise SettingsError(f"environment variable {var}: unknown setting {key!r}")
        values[key] = _convert(key, types_[key], raw)
    for key, raw in {**(overrides or {}), **kw}.items():
        if raw is None:
            continue
        if key not in types_:
            raise SettingsError(f"unknown setting {key!r}")
        values[key] = _convert(key, types_[key], raw)
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    positive = ("partitions", "last_n_viewed", "k_default", "k_max", "candidates", "stream_workers")
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"setting {name!r} must be > 0, got {getattr(s, name)}")
    if s.k_default > s.k_max:
        raise SettingsError(f"k_default ({s.k_default}) must be <= k_max ({s.k_max})")
    if s.session_gap_s <= 0 or s.popularity_half_life_s <= 0:
        raise SettingsError("session_gap_s and popularity_half_life_s must be > 0")
    if not s.metrics_host.strip():
        raise SettingsError("metrics_host must be an address to bind, e.g. 127.0.0.1 or 0.0.0.0")
    if not s.surfaces:
        raise SettingsError("surfaces must not be empty")
    unknown_arms = set(s.ab_arms) - {"model", "heuristic", "popular", "random"}
    if not s.ab_arms or unknown_arms:
        raise SettingsError(
            f"ab_arms must be a non-empty list of model/heuristic/popular/random, got {s.ab_arms}")
    if not 0.0 <= s.explore_epsilon <= 1.0 or not all(x.isdigit() for x in s.explore_slots):
        raise SettingsError("explore_epsilon must be in [0, 1] and explore_slots positions (ints)")
    if s.item_refresh_hot_s < 0:
        raise SettingsError(f"item_refresh_hot_s must be >= 0, got {s.item_refresh_hot_s}")
    if s.grpc_event_loop not in GRPC_EVENT_LOOPS:
        raise SettingsError(f"grpc_event_loop must be {' or '.join(GRPC_EVENT_LOOPS)}, "
                            f"got {s.grpc_event_loop!r}")
    if s.ranker_bf16 not in ("auto", "on", "off"):
        raise SettingsError(f"ranker_bf16 must be auto, on or off, got {s.ranker_bf16!r}")


# ----------------------------------------------------------------------------------------
# embedded-stack discovery: `recsys broker` / `recsys redis` publish their addresses here

BROKER_FILE = "broker.json"
REDIS_FILE = "redis.json"


def published(settings: Settings, name: str) -> dict[str, Any] | None:
    path = settings.state_dir / name
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data


def resolve_kafka_bootstrap(settings: Settings) -> str:
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    info = published(settings, BROKER_FILE)
    if not info:
        raise SettingsError(
            "no Kafka address: set RECSYS_KAFKA_BOOTSTRAP, or start the embedded broker "
            f"(`recsys broker`), which publishes {settings.state_dir / BROKER_FILE}"
        )
    return str(info["bootstrap"])


def resolve_redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    info = published(settings, REDIS_FILE)
    if not info:
        raise SettingsError(
            "no Redis address: set RECSYS_REDIS_URL, or start the embedded redis "
            f"(`recsys redis` or `recsys up`), which publishes {settings.state_dir / REDIS_FILE}"
        )
    return str(info["url"])


def settings_to_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment giving a child process exactly these settings (RECSYS_* variables);
    other RECSYS_* variables of ``base`` (default: this process's environment) are dropped."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(ENV_PREFIX)}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, Secret):
            value = value.get()
        env[f"{ENV_PREFIX}{f.name.upper()}"] = str(value)
    return env
