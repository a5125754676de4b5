"""The one settings object, read from defaults < TOML file < environment < overrides, in one place.

Every component (broker, dataflows, scorer, simulator, trainer) takes a ``Settings``: a frozen,
strict ``pydantic_settings.BaseSettings``. An unknown key in the file, an unknown ``RECSYS_*``
variable or an unknown override is an error, not a silent typo; every bad key or value raises
``SettingsError`` naming the key. Secrets are ``SecretStr`` (``.get_secret_value()``) and never
printed.

Environment: ``RECSYS_<FIELD>`` (upper case), e.g. ``RECSYS_KAFKA_BOOTSTRAP=kafka:9092``.
File: ``RECSYS_CONFIG=/path/settings.toml`` (or ``recsys --config PATH``), flat keys.
Kafka and Redis addresses left empty mean "the embedded stack": they are discovered from
the files that ``recsys broker`` / ``recsys up`` write into ``state_dir``.

``Settings(**kw)`` reads the process environment and ``$RECSYS_CONFIG`` under ``kw`` (pydantic
settings' usual sources); ``load_settings(env=..., config_file=..., overrides=...)`` names them.
``settings.replace(**changes)`` is a validated copy (values coerced as from the environment).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as _PydanticSettingsError

from core.settings_sources import (
    CONFIG_ENV,
    ENV_PREFIX,
    ORIGIN,
    EnvSource,
    Flag,
    Int,
    Names,
    Origin,
    SettingsError,
    describe_errors,
    file_source,
)

# the event loops a gRPC server thread can run on (``online.aio_host``), the default first
GRPC_EVENT_LOOPS = ("uvloop", "asyncio")


def _numbers(raw: Any) -> Any:
    """A comma-separated string (environment, ``--set``) or a list (TOML) -> a tuple of numbers
    (pydantic coerces each item to float; booleans are not numbers)."""
    if isinstance(raw, str):
        raw = tuple(x.strip() for x in raw.split(",") if x.strip())
    if isinstance(raw, list | tuple):
        if any(isinstance(x, bool) for x in raw):
            raise ValueError("booleans are not numbers")
        return tuple(raw)
    return raw


Floats = Annotated[tuple[float, ...], NoDecode, BeforeValidator(_numbers)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix=ENV_PREFIX, case_sensitive=True,
        protected_namespaces=(), validate_default=True, hide_input_in_errors=True,
    )

    # --- infrastructure -------------------------------------------------------------------
    state_dir: Path = Path(".recsys")
    kafka_bootstrap: str = ""  # empty: the embedded broker published in state_dir
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    redis_url: str = ""  # empty: the embedded redis published in state_dir (rediss:// for TLS)
    redis_password: SecretStr = SecretStr("")
    redis_tls_ca_file: str = ""  # CA bundle to verify a rediss:// server with (else the system's)
    redis_prefix: str = "rs"  # every Redis key starts with this (isolation, multi-tenant)
    topic_prefix: str = ""  # every topic name starts with this (isolation)
    partitions: Int = 4  # partitions per topic the embedded broker / `up` creates
    metrics_host: str = "127.0.0.1"  # where every process serves /metrics (0.0.0.0 in containers)
    # --- topics ---------------------------------------------------------------------------
    topic_clickstream: str = "clickstream"
    topic_catalog: str = "catalog"
    topic_users: str = "users"
    topic_impressions: str = "impressions"
    topic_dead_letter: str = "dead-letter"
    topic_training: str = "training-examples"
    # --- dataflows ------------------------------------------------------------------------
    stream_workers: Int = 1
    stream_metrics_port: Int = 9102
    stream_batch_size: Int = 500
    stream_flush_interval_ms: Int = 100  # per key: a hot key's state is written at most this often
    stream_fetch_wait_ms: Int = 50  # broker long-poll bound: caps idle-to-first-event latency
    stream_recovery: Flag = True
    session_gap_s: float = 1800.0
    last_n_viewed: Int = 5
    popularity_half_life_s: float = 7 * 24 * 3600.0
    covisit_max_per_item: Int = 50
    covisit_window: Int = 3  # co-visitation pairs within this distance in a session
    trend_half_life_s: float = 3600.0  # trending items per category: short horizon
    user_pref_half_life_s: float = 7 * 24 * 3600.0
    user_pref_horizon_s: float = 30 * 24 * 3600.0
    allowed_lateness_s: float = 3600.0  # older than a user's latest event by more: dead letter
    click_window_s: float = 30 * 60.0  # label join: click attribution window (event time)
    purchase_window_s: float = 7 * 24 * 3600.0  # cart / purchase attribution window
    labels_metrics_port: Int = 9104
    label_time_scale: float = 1.0  # event time / wall time (the simulator's --speed under `up`)
    retrain_interval_s: float = 120.0  # `recsys up`: start a ranker round this often (0 = never)
    retrain_min_examples: Int = 2000
    # refit the early-stopped ranker on train + valid before the gate (`recsys retrain --refit`)
    retrain_refit: Flag = True
    # `recsys up`: the two-tower's own retraining loop, this often (0 = never); a round costs
    # about as much CPU as two of the ranker's at 6k sessions (BENCHMARKS.md, learning loop)
    tower_retrain_interval_s: float = 240.0
    ctr_prior: float = 0.02  # Bayesian smoothing of item CTR / CVR
    cvr_prior: float = 0.05
    rate_prior_strength: float = 20.0
    max_event_skew_s: float = 3 * 24 * 3600.0  # events further in the future are invalid
    # --- scorer ---------------------------------------------------------------------------
    grpc_host: str = "127.0.0.1"
    grpc_port: Int = 50051
    serve_metrics_port: Int = 9101
    serve_workers: Int = 1
    # the event loop of each gRPC server thread: uvloop (libuv; ~0.1 ms less CPU per call than
    # asyncio's own, BENCHMARKS.md) or asyncio
    grpc_event_loop: str = "uvloop"
    # restart `recsys serve` with glibc malloc on transparent huge pages (core/huge_pages.py)
    serve_huge_pages: Flag = True
    k_default: Int = 20
    k_max: Int = 200
    candidates: Int = 500
    cache_ttl_s: float = 600.0
    request_deadline_ms: float = 100.0  # past this the fallback answers (P99 target 150 ms)
    redis_timeout_ms: float = 50.0
    # item rows in scorer memory are re-read when the dataflow's item changelog names them;
    # these bound how far they may lag while that feed's follower is not keeping up
    # (0 = read per request)
    item_stats_ttl_s: float = 60.0
    catalog_ttl_s: float = 300.0
    list_ttl_s: float = 1.0  # shared lists (popular, trending, co-visitation, ...) likewise
    item_cache_max: Int = 2_000_000  # items held per scorer process
    item_preload: Int = 1_000_000  # the most viewed items read into scorer memory at start
    # changed item rows that requests used within this many seconds are re-read by the
    # changelog follower at once (off the request path); others on next use; 0: all on next use
    item_refresh_hot_s: float = 60.0
    top_sellers_refresh_s: float = 5.0
    surfaces: Names = ("home", "pdp", "cart")
    ab_experiment: str = "default"
    # users are hashed into these arms; policies: model (promoted model, else heuristic),
    # heuristic, popular, random
    ab_arms: Names = ("model",)
    # relative share of users per arm, in ab_arms order (e.g. 95,5 or 0.95,0.05 for a 5%
    # challenger); empty = an equal split
    ab_weights: Floats = ()
    ranker_model: str = "ranker"  # registry name of the ranker the scorer serves (hot-reloaded)
    ranker_int8: Flag = False  # serve the ranker with INT8 dynamic quantization
    # serve a fused MMoE in bfloat16: auto (where the CPU has native bf16 dot products), on, off
    ranker_bf16: str = "auto"
    model_reload_s: float = 5.0
    value_revenue_weight: float = 1.0  # value = w_rev * p_purchase * log1p(price) + w_click * p_click
    value_click_weight: float = 1.0
    explore_epsilon: float = 0.1  # epsilon-greedy on reserved slots, propensities logged
    explore_slots: Names = ("4", "9")
    max_per_category: Int = 4
    max_per_brand: Int = 3
    ann_enabled: Flag = True  # follow the embedding changelog into an HNSW replica
    # rank with the item-vector taste similarity (False: logged as unknown). Off by default:
    # on the simulator the item2vec vectors carry R² 0.06 of the hidden taste term (0.22 even
    # with the TRUE item styles), and new items' centroid vectors score high, so it cost 0.08 of
    # the oracle live and 3x the new-item exposure (BENCHMARKS.md, learning loop)
    taste_feature: Flag = False
    embedding_dim: Int = 64
    # --- embeddings dataflow (incremental item2vec) ----------------------------------------
    embeddings_metrics_port: Int = 9105
    item2vec_window: Int = 5
    item2vec_batch_sessions: Int = 64
    item2vec_flush_ms: Int = 500
    item2vec_session_emit: Int = 10
    cold_start_min_interactions: Int = 20
    embeddings_min_change: float = 1e-3
    embeddings_write_interval_ms: Int = 1000
    embeddings_model_check_s: float = 30.0
    # --- simulator ------------------------------------------------------------------------
    sim_seed: Int = 7
    sim_users: Int = 2000
    sim_items: Int = 1000
    sim_categories: Int = 20
    sim_shoppers_per_s: float = 20.0
    sim_metrics_port: Int = 9103
    # --- ops ------------------------------------------------------------------------------
    log_level: str = "INFO"

    # ------------------------------------------------------------------------------------
    # construction

    def __init__(self, **values: Any) -> None:
        """Defaults < TOML file < ``RECSYS_*`` environment < ``values`` (``load_settings``
        names the environment and the file; else this process's and ``$RECSYS_CONFIG``)."""
        origin = ORIGIN.get()
        token = None
        if origin is None:
            origin = Origin.of(os.environ, None, values)
            token = ORIGIN.set(origin)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc, origin)) from None
        except _PydanticSettingsError as exc:
            raise SettingsError(str(exc)) from exc
        finally:
            if token is not None:
                ORIGIN.reset(token)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        origin = ORIGIN.get() or Origin.of(os.environ, None, {})
        # highest priority first: explicit values, then the environment, then the file
        return (init_settings, EnvSource(settings_cls, origin.env), *file_source(settings_cls, origin))

    @model_validator(mode="after")
    def _check(self) -> Settings:
        positive = ("partitions", "last_n_viewed", "k_default", "k_max", "candidates", "stream_workers")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"setting {name!r} must be > 0, got {getattr(self, name)}")
        if self.k_default > self.k_max:
            raise ValueError(f"k_default ({self.k_default}) must be <= k_max ({self.k_max})")
        if self.session_gap_s <= 0 or self.popularity_half_life_s <= 0:
            raise ValueError("session_gap_s and popularity_half_life_s must be > 0")
        if not self.metrics_host.strip():
            raise ValueError("metrics_host must be an address to bind, e.g. 127.0.0.1 or 0.0.0.0")
        if not self.surfaces:
            raise ValueError("surfaces must not be empty")
        unknown_arms = set(self.ab_arms) - {"model", "heuristic", "popular", "random"}
        if not self.ab_arms or unknown_arms:
            raise ValueError(
                f"ab_arms must be a non-empty list of model/heuristic/popular/random, got {self.ab_arms}")
        if self.ab_weights and len(self.ab_weights) != len(self.ab_arms):
            raise ValueError(
                f"ab_weights has {len(self.ab_weights)} weights for {len(self.ab_arms)} ab_arms "
                f"({','.join(self.ab_arms)}): give one weight per arm, in the same order, or none "
                "for an equal split")
        if not all(math.isfinite(w) and w > 0 for w in self.ab_weights):
            raise ValueError(f"ab_weights must all be finite and > 0, got {self.ab_weights}")
        if not 0.0 <= self.explore_epsilon <= 1.0 or not all(x.isdigit() for x in self.explore_slots):
            raise ValueError("explore_epsilon must be in [0, 1] and explore_slots positions (ints)")
        if self.item_refresh_hot_s < 0:
            raise ValueError(f"item_refresh_hot_s must be >= 0, got {self.item_refresh_hot_s}")
        if self.grpc_event_loop not in GRPC_EVENT_LOOPS:
            raise ValueError(f"grpc_event_loop must be {' or '.join(GRPC_EVENT_LOOPS)}, "
                             f"got {self.grpc_event_loop!r}")
        if self.ranker_bf16 not in ("auto", "on", "off"):
            raise ValueError(f"ranker_bf16 must be auto, on or off, got {self.ranker_bf16!r}")
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"settings are frozen: cannot set {name!r} (use settings.replace(...))")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"settings are frozen: cannot delete {name!r}")

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
                    "sasl.password": self.kafka_sasl_password.get_secret_value(),
                }
            )
        return conf

    def redacted(self) -> dict[str, Any]:
        """A printable view with secrets masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            v = getattr(self, name)
            if isinstance(v, SecretStr | Path):
                v = repr(v) if isinstance(v, SecretStr) else str(v)
            out[name] = v
        return out

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` (strings coerced as from the environment)."""
        fields = type(self).model_fields
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise SettingsError(f"unknown setting {unknown[0]!r}")
        data = {name: getattr(self, name) for name in fields}
        data.update(changes)
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc, None)) from None


# ----------------------------------------------------------------------------------------
# loading


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    **kw: Any,
) -> Settings:
    """Build the settings: defaults, then the TOML file (``config_file``, else ``$RECSYS_CONFIG``
    of ``env``), then ``RECSYS_*`` of ``env`` (default: this process's environment), then
    ``overrides`` and ``kw`` (``None`` values skipped)."""
    env = os.environ if env is None else env
    values = {k: v for k, v in {**(overrides or {}), **kw}.items() if v is not None}
    token = ORIGIN.set(Origin.of(env, config_file, values))
    try:
        return Settings(**values)
    finally:
        ORIGIN.reset(token)


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


def _address(settings: Settings, given: str, file: str, field: str, missing: str) -> str:
    """``given`` if set, else ``field`` of the embedded service's published ``file``."""
    if given:
        return given
    info = published(settings, file)
    if not info:
        raise SettingsError(f"{missing}, which publishes {settings.state_dir / file}")
    return str(info[field])


def resolve_kafka_bootstrap(settings: Settings) -> str:
    return _address(settings, settings.kafka_bootstrap, BROKER_FILE, "bootstrap",
                    "no Kafka address: set RECSYS_KAFKA_BOOTSTRAP, or start the embedded broker "
                    "(`recsys broker`)")


def resolve_redis_url(settings: Settings) -> str:
    return _address(settings, settings.redis_url, REDIS_FILE, "url",
                    "no Redis address: set RECSYS_REDIS_URL, or start the embedded redis "
                    "(`recsys redis` or `recsys up`)")


def settings_to_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment giving a child process exactly these settings (RECSYS_* variables);
    other RECSYS_* variables of ``base`` (default: this process's environment) are dropped.
    Secrets are passed in clear (the child needs them): never log this mapping."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(ENV_PREFIX)}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        elif isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    return env


__all__ = ["BROKER_FILE", "CONFIG_ENV", "ENV_PREFIX", "GRPC_EVENT_LOOPS", "REDIS_FILE", "Settings",
           "SettingsError", "load_settings", "published", "resolve_kafka_bootstrap", "resolve_redis_url",
           "settings_to_env"]
