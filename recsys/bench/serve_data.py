"""Synthetic live state at scale for the serving benchmark (written with the production key
layout and codecs, so the scorer reads it exactly as it reads the dataflows' state)."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from core.reports import write_json
from core.settings import Settings
from features.decay import decay_exponent
from features.writes import Write
from proto import codecs
from proto.keys import Keys, tower_keys
from streams.redis_sink import apply_writes

CHUNK = 10_000


def _pipe_chunks(client: redis.Redis, n: int, write: Any) -> None:
    for start in range(0, n, CHUNK):
        pipe = client.pipeline(transaction=False)
        for j in range(start, min(n, start + CHUNK)):
            write(pipe, j)
        pipe.execute()


SESSION_ITEMS = 50_000  # the users' sessions and the co-visitation lists draw from the first items


def load_items(client: redis.Redis, s: Settings, n_items: int, n_users: int, *, with_vectors: bool,
               seed: int, n_categories: int = 200, dim: int = 64,
               tower_version: str | None = None) -> dict[str, Any]:
    """Every item's rows, lists, users, and (``with_vectors``) item vectors + HNSW snapshots:
    the item2vec index, and with ``tower_version`` that two-tower version's item index too."""
    rng = np.random.default_rng(seed)
    k = Keys(s.redis_prefix)
    now = int(time.time() * 1000)
    base = decay_exponent(now, s.popularity_half_life_s)
    cats = rng.integers(0, n_categories, n_items)
    views = np.log2(1e4 / np.arange(1, n_items + 1) ** 0.8)  # Zipf-like popularity
    prices = np.exp(rng.normal(3.5, 0.8, n_items)).round(2)

    def item(pipe: Any, j: int) -> None:
        cat, price = f"c{cats[j]}", float(prices[j])
        pipe.set(k.item_catalog(f"i{j}"), codecs.encode({
            "title": f"item {j}", "category": cat, "brand": f"b{j % 5000}", "price": price,
            "rating": 4.0, "active": True, "updated": now}))
        pipe.set(k.item_features(f"i{j}"), item_stats(j, cat, price, base, float(views[j]), now))
    _pipe_chunks(client, n_items, item)
    for start in range(0, n_items, CHUNK * 10):
        end = min(n_items, start + CHUNK * 10)
        client.zadd(k.popular(), {f"i{j}": base + float(views[j]) for j in range(start, end)})
    client.zadd(k.top_sellers(), {f"i{j}": base + float(views[j]) - 7 for j in range(min(n_items, 10_000))})
    top_by_cat: dict[int, list[int]] = {}
    for j in range(n_items):  # items are in popularity order: the first 200 per category trend
        lst = top_by_cat.setdefault(int(cats[j]), [])
        if len(lst) < 200:
            lst.append(j)
    for c, js in top_by_cat.items():
        client.zadd(k.trending(f"c{c}"), {f"i{j}": base + float(views[j]) for j in js})
    client.zadd(k.new_items(), {f"i{n_items - 1 - j}": float(now - j) for j in range(min(n_items, 1000))})
    n_covis = min(n_items, SESSION_ITEMS)

    def covis(pipe: Any, j: int) -> None:
        same = top_by_cat[int(cats[j])]
        related = {f"i{x}": base - r for r, x in enumerate(same[:50]) if x != j}
        pipe.zadd(k.covisit(f"i{j}"), related)
    _pipe_chunks(client, n_covis, covis)

    def user(pipe: Any, u: int) -> None:
        viewed = [f"i{int(x)}" for x in rng.integers(0, min(n_items, SESSION_ITEMS), 5)]
        prefs = {f"c{int(c)}": float(w) for c, w in zip(rng.integers(0, n_categories, 3),
                                                         (0.6, 0.3, 0.1), strict=True)}
        pipe.set(k.session(f"u{u}"), codecs.encode({
            "sid": f"u{u}:{now}", "start": now, "last": now, "items": viewed,
            "seq": [[i, now] for i in viewed], "counts": {"view": 5}, "ver": 1}))
        pipe.set(k.user_features(f"u{u}"), codecs.encode({
            "pref": prefs, "price_mean": 40.0, "price_std": 20.0, "purchases": 3,
            "counts": {"view": 40, "click": 6}, "last": now, "country": "DE", "age": "", "signup": 0}))
    _pipe_chunks(client, n_users, user)
    out: dict[str, Any] = {"covisit_lists": n_covis, "categories": n_categories,
                           "prices": prices, "item_categories": cats, "log2_views": views}
    if with_vectors:
        out.update(_vectors(client, s, k, cats, rng, dim, tower_version))
    return out


def item_stats(j: int, cat: str, price: float, base: float, views: float, now: int,
               ctr: float | None = None) -> bytes:
    """Item j's stats value, as the feature dataflow writes it (decayed counters as log2:
    ``base`` is the decay exponent at ``now``, ``views`` the item's log2 view count)."""
    v = base + views
    return codecs.encode({
        "imp": v + 3, "views": v, "clicks": v - 4, "carts": v - 6,
        "purch": v - 7, "trend": v, "n": int(2**views), "last": now,
        "ctr": 0.02 + 0.04 * (j % 7) / 7 if ctr is None else ctr, "cvr": 0.05, "cat": cat,
        "brand": f"b{j % 5000}", "price": price})


class ItemChurn:
    """What the feature dataflow does to items while the scorer serves: ``rate`` item stats
    rewritten per second (items drawn by popularity, Zipf-like as the load), each batch
    announced on the item changelog after its writes (``streams.redis_sink``), 10 batches a
    second, in a background thread. Scorers then re-read those rows on their next use.
    A batch draws popular items more than once and the sink writes and announces each once,
    so ``written`` (distinct items announced) is about 46% of ``rate`` per second."""

    def __init__(self, client: redis.Redis, s: Settings, loaded: dict[str, Any], rate: float,
                 seed: int) -> None:
        self.client, self.keys, self.rate = client, Keys(s.redis_prefix), rate
        self.prices, self.cats, self.views = loaded["prices"], loaded["item_categories"], loaded["log2_views"]
        self.half_life_s = s.popularity_half_life_s
        self.rng = np.random.default_rng(seed)
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="item-churn", daemon=True)

    def __enter__(self) -> ItemChurn:
        if self.rate > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        n_items, per_batch = len(self.prices), max(1, round(self.rate / 10))
        t_next = time.monotonic()
        while not self._stop.is_set():
            now = int(time.time() * 1000)
            base = decay_exponent(now, self.half_life_s)
            picks = np.minimum(self.rng.zipf(1.3, per_batch) - 1, n_items - 1).tolist()
            writes = []
            for j in picks:
                views = float(self.views[j]) + 0.01  # a little more viewed than at load
                writes.append(Write("set", self.keys.item_features(f"i{j}"), item_stats(
                    j, f"c{self.cats[j]}", float(self.prices[j]), base, views, now,
                    ctr=float(self.rng.uniform(0.01, 0.08)))))
                writes.append(Write("notify", self.keys.item_changelog(), f"i{j}"))
            apply_writes(self.client, writes)
            self.written += len(set(picks))  # distinct items announced (the log's ids)
            t_next += 0.1
            self._stop.wait(max(0.0, t_next - time.monotonic()))


def _vectors(client: redis.Redis, s: Settings, k: Keys, cats: np.ndarray, rng: np.random.Generator,
             dim: int, tower_version: str | None) -> dict[str, Any]:
    """Category-clustered unit vectors into the embedding store (+ changelog), then the HNSW
    snapshot the scorer will load (so each scorer does not rebuild 1M items on start). With
    ``tower_version``, the same vectors also into that version's item index (what the
    embeddings dataflow writes for a promoted content two-tower) and its snapshot: an
    untrained tower's vectors, so the latency, not the neighbours, is what is measured."""
    from features.embedding_store import EmbeddingStore
    from online.ann.follower import IndexFollower

    spaces = [(k, Path(s.state_dir) / "ann")]
    if tower_version is not None:  # where online.tower.TowerHolder follows a content tower
        spaces.append((tower_keys(s.redis_prefix, tower_version),
                       Path(s.state_dir) / "ann_tt" / tower_version))
    stores = [EmbeddingStore(client, keys) for keys, _ in spaces]
    centres = rng.normal(size=(int(cats.max()) + 1, dim)).astype(np.float32)
    t0 = time.perf_counter()
    for start in range(0, len(cats), CHUNK):
        end = min(len(cats), start + CHUNK)
        v = centres[cats[start:end]] + 0.7 * rng.normal(size=(end - start, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        for store in stores:
            store.put_many([f"i{j}" for j in range(start, end)], v)
    out: dict[str, Any] = {"vectors_written_s": round(time.perf_counter() - t0, 1)}
    for (keys, snapshot_dir), name in zip(spaces, ("ann_build_s", "tower_ann_build_s"), strict=False):
        follower = IndexFollower(client, keys, dim, snapshot_dir=snapshot_dir, build_threads=2, registry=None)
        t1 = time.perf_counter()
        follower.open()
        follower.snapshot()
        out[name] = round(time.perf_counter() - t1, 1)
    return out


def register_tower(s: Settings, vocab_items: int) -> str:
    """Register (not promote) an untrained content two-tower of the retraining loop's shape
    (``models.tower_retrain``) whose vocabulary is the first ``vocab_items`` items (what the
    users' sessions hold): the scorer's ANN source then asks its session tower for the query
    vector. Returns the version; promote it once its item index is written."""
    from models.registry import TWO_TOWER, TWO_TOWER_VOCAB, ModelRegistry, default_root
    from models.tower_retrain import TowerRetrainConfig, model_config
    from models.two_tower import TwoTower

    vocab = {f"i{j}": j + 1 for j in range(vocab_items)}  # row 0: padding / unknown
    model = TwoTower(model_config(TowerRetrainConfig(), vocab_items + 1))
    with tempfile.TemporaryDirectory() as staging:
        model.save(Path(staging) / "model.pt", extra={"dataset": "untrained (bench)"})
        write_json(Path(staging) / TWO_TOWER_VOCAB, vocab)
        return ModelRegistry(default_root(s.state_dir)).register(
            TWO_TOWER, staging, {"note": "untrained: latency only"}, model.config.to_dict())


def prepare_ranker(s: Settings, original: Settings) -> str:
    """Promote a multi-task ranker in the bench's registry: the promoted model of the user's
    state dir when there is one, else an untrained MMoE (latency does not depend on weights)."""
    from models.registry import ModelRegistry, default_root

    target = ModelRegistry(default_root(s.state_dir))
    mv = ModelRegistry(default_root(original.state_dir)).current(s.ranker_model)
    if mv is not None:
        target.promote(s.ranker_model, target.register(s.ranker_model, mv.path, mv.metrics))
        return f"{s.ranker_model} {mv.version} from {original.state_dir}"
    from models.deepfm import RankerConfig
    from models.ranker_runtime import build_model, save_checkpoint

    path = Path(s.state_dir) / "mmoe-untrained.pt"
    cfg = RankerConfig(kind="mmoe", tasks=("click", "cart", "purchase"))
    save_checkpoint(path, build_model(cfg), {}, version="untrained")
    target.promote(s.ranker_model, target.register(s.ranker_model, path, {"note": "untrained"}))
    return f"{s.ranker_model} (untrained weights: latency only)"


__all__ = ["SESSION_ITEMS", "ItemChurn", "item_stats", "load_items", "prepare_ranker", "register_tower"]
