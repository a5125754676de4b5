"""Rankers: model shapes and ESMM, the point-in-time simulator training set, the training-examples
loader, training -> calibration -> checkpoint -> serving runtime (float and INT8), and the
`recsys train` wiring. Small data, one thread."""

from __future__ import annotations

import argparse
import json
import zlib

import numpy as np
import pytest
import torch

from core.settings import Settings
from features import labels as L
from features.offline_builder import OfflineBuilder
from features.ranking_features import DENSE, SPARSE, assemble, item_row
from models import ranker_runtime as RT
from models import ranking_dataset as RD
from models import training_examples as TE
from models.deepfm import (
    TASKS,
    DeepFM,
    FeatureEncoder,
    FeatureHasher,
    RankerConfig,
    encode_features,
    hash_token,
)
from models.mmoe import MMoE
from models.ranker_eval import calibrate_and_evaluate
from models.ranker_fit import RankerTrainConfig, fit, make_model
from proto import codecs, events_pb2
from proto.keys import Keys
from sim import training_set as TS
from sim.config import WorldConfig

SIM = TS.TrainingSetConfig(days=1.2, warmup_days=0.4, sessions_per_h=20)
# a small world whose truth leans on category taste (which the features see), so that a tiny
# training run has something learnable
WORLD = WorldConfig().with_(catalog={"n_items": 300, "seed": 3}, users={"n_users": 400},
                            truth={"bias": -3.0, "w_category": 1.6},
                            dynamics={"new_users_per_h": 5, "new_items_per_h": 3, "retire_items_per_h": 1})


@pytest.fixture(scope="module")
def sim():
    torch.set_num_threads(1)
    log: list[tuple[int, str, bytes]] = []
    data = TS.simulate(SIM, world=WORLD, keep_log=log)
    return data, log


def _batch(n=7, seed=0):
    rng = np.random.default_rng(seed)
    sparse = torch.from_numpy(rng.integers(0, 2**32, size=(n, len(SPARSE)), dtype=np.int64))
    dense = torch.from_numpy(rng.normal(size=(n, len(DENSE))).astype(np.float32))
    return sparse, dense


def test_models_share_the_encoder_and_esmm_multiplies_probabilities():
    torch.manual_seed(0)
    sparse, dense = _batch()
    dfm = DeepFM(RankerConfig(kind="deepfm", tasks=("purchase",)))
    mm = MMoE(RankerConfig(kind="mmoe", tasks=TASKS, n_experts=3)).eval()
    assert type(dfm.encoder) is type(mm.encoder) is FeatureEncoder
    assert dfm(sparse, dense).shape == (7, 1) and mm(sparse, dense).shape == (7, 3)
    logp = mm(sparse, dense)
    z = mm.logits(sparse, dense)
    sig = torch.sigmoid(z)
    torch.testing.assert_close(logp.exp(), torch.stack([sig[:, 0], sig[:, 0] * sig[:, 1],
                                                        sig[:, 0] * sig[:, 2]], 1))
    assert torch.all(logp[:, 2] <= logp[:, 0]) and torch.all(logp <= 0)
    with pytest.raises(ValueError):
        RankerConfig(kind="deepfm", tasks=("click", "purchase"))
    with pytest.raises(ValueError):
        RankerConfig(kind="mmoe", tasks=("purchase", "click"))
    cfg = RankerConfig(kind="mmoe", tasks=TASKS, dense_mean=(0.5,) * len(DENSE))
    assert RankerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_feature_hashing_is_stable_and_matches_the_spec_order():
    assert hash_token("item_id", "i1") == zlib.crc32(b"item_id=i1") and hash_token("brand", "") == 0
    rows = [{"item_id": "i1", "category": "c2", "u_cat_pref": 0.5}, {"item_id": "i9", "log_price": 2.0}]
    sp, dn = encode_features(rows)
    assert sp.shape == (2, len(SPARSE)) and dn.shape == (2, len(DENSE))
    assert sp[0, SPARSE.index("category")] == hash_token("category", "c2") and sp[1, 1] == 0
    assert dn[0, DENSE.index("u_cat_pref")] == 0.5 and dn[1, DENSE.index("log_price")] == 2.0
    h = FeatureHasher()
    np.testing.assert_array_equal(h.encode(rows)[0], h.encode(rows)[0])


def test_simulated_rows_use_point_in_time_state(sim):
    """Features of a request equal those assembled from a fresh builder fed only the records
    logged BEFORE that request; the state at the end of the log differs (so the check bites)."""
    from online.candidates import category_affinity

    data, log = sim
    rates = data.rates()
    print(f"\nsim: {len(data)} rows, rates {rates}, build {data.meta['build_s']}s")
    assert len(data) > 3000 and data.meta["rejected"] == 0
    assert 0.01 < rates["click"] < 0.2 and 0 < rates["purchase"] < rates["cart"] < rates["click"]
    assert np.all(np.diff(data.times) >= 0)
    s = Settings()
    keys = Keys(s.redis_prefix)
    # retrieval scores and the taste similarity (from item vectors) are not state
    state_cols = [DENSE.index(n) for n in DENSE
                  if n not in ("covisit", "popular", "n_sources", "taste_sim", "taste_known")]
    requests = np.unique(data.request)
    diverged = 0
    for req in requests[[len(requests) // 3, -2]]:
        rows = np.flatnonzero(data.request == req)
        t, user = int(data.times[rows[0]]), _user_of(log, int(req))
        for cut in (t, None):  # as of the request / at the end of the log
            b = OfflineBuilder(s)
            for i, (ts, topic, value) in enumerate(log):
                if cut is None or ts < cut:
                    b.feed(topic, value, offset=i, ts_ms=ts)
            img = b.image
            uf = codecs.decode(img.strings.get(keys.user_features(user))) or {}
            sess = codecs.decode(img.strings.get(keys.session(user))) or {}
            last = [str(i) for i in sess.get("items", [])]
            cats = {i: item_row(codecs.decode(img.strings.get(keys.item_catalog(i))),
                                codecs.decode(img.strings.get(keys.item_features(i)))).category for i in last}
            for r in rows:
                item = str(data.item_id[r])
                f = assemble(item_id=item, catalog=codecs.decode(img.strings.get(keys.item_catalog(item))),
                             item_stats=codecs.decode(img.strings.get(keys.item_features(item))),
                             user_features=uf, session_affinity=category_affinity(last, cats),
                             last_viewed=frozenset(last), retrieval={}, context={}, now_ms=t,
                             half_life_s=s.popularity_half_life_s, session=sess)
                dn = encode_features([f])[1][0, state_cols]
                same = np.allclose(dn, data.dense[r, state_cols], rtol=1e-5, atol=1e-6)
                if cut is not None:
                    assert same, (item, dn, data.dense[r, state_cols])
                    assert data.sparse[r, 0] == hash_token("item_id", item)
                else:
                    diverged += not same
    assert diverged > 0


def _user_of(log: list[tuple[int, str, bytes]], req: int) -> str:
    for _, topic, value in log:
        if topic == "impressions":
            imp = events_pb2.Impression()
            imp.ParseFromString(value)
            if imp.request_id == f"r{req}":
                return imp.user_id
    raise AssertionError(f"request {req} not in the log")


def test_time_split_is_ordered_and_keeps_requests_whole(sim):
    data, _ = sim
    tr, va, te = RD.time_split(data.times, 0.15, 0.15)
    assert len(tr) + len(va) + len(te) == len(data)
    assert data.times[tr].max() < data.times[va].min() <= data.times[va].max() < data.times[te].min()
    assert not set(data.request[tr]) & set(data.request[va])
    assert not set(data.request[va]) & set(data.request[te])
    y_obs, elapsed = RD.observed_purchases(data, int(data.times.max()))
    assert y_obs.sum() <= data.labels[:, 2].sum() and elapsed.min() == 0


def test_training_examples_loader_keeps_the_latest_version():
    w = L.Windows()
    t0 = 1_750_000_000_000
    feats = [assemble(item_id=i, catalog={"category": "c1", "price": 10.0}, item_stats=None,
                      user_features=None, session_affinity={}, last_viewed=set(),
                      retrieval={"popular": 0.5}, context={"surface": "home"}, now_ms=t0,
                      half_life_s=3600.0) for i in ("a", "b")]
    imp = events_pb2.Impression(request_id="r1", user_id="u1", event_time_ms=t0)
    for pos, f in enumerate(feats):
        imp.items.append(events_pb2.ServedItem(item_id=f["item_id"], position=pos,
                                               features=codecs.pack_features(f)))
    st = L.new_state("r1", 0)
    L.add_impression(st, imp, 0, w)
    L.add_label(st, "click", "b", t0 + 1000, 1, w)
    first, _ = L.on_timer(st, w.click_ms, w)
    corr = L.add_label(st, "purchase", "b", t0 + 86_400_000, 86_400_000, w)
    records = [e.SerializeToString() for e in [*first, *corr]]
    data = TE.load_training_examples(records[::-1])  # order of arrival must not matter
    assert len(data) == 2 and list(data.item_id) == ["a", "b"]
    np.testing.assert_array_equal(data.labels, [[0, 0, 0], [1, 0, 1]])
    assert data.purchase_delay_ms[1] == 86_400_000 and data.meta["corrections"] == 1
    sp, dn = encode_features(feats)
    np.testing.assert_array_equal(data.sparse, sp)
    np.testing.assert_array_equal(data.dense, dn)


def test_train_calibrate_export_and_serve(sim, tmp_path):
    data, _ = sim
    tr, va, te = RD.time_split(data.times, 0.2, 0.2)
    train, valid, test = data.take(tr), data.take(va), data.take(te)
    tcfg = RankerTrainConfig(epochs=3, batch_size=256, lr=3e-3)
    model = make_model("mmoe", train, seed=0)
    res = fit(model, train, valid, tcfg, torch.device("cpu"), log=print)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"] * 1.05
    cals, heads, _ = calibrate_and_evaluate(model, valid, test, torch.device("cpu"), "auto")
    print({t: (round(h["raw"]["auc"], 3), round(h["calibrated"]["ece"], 4)) for t, h in heads.items()})
    assert heads["click"]["raw"]["auc"] > 0.6
    path = RT.save_checkpoint(tmp_path / "m.pt", model, cals, "mmoe-test")
    r = RT.load_ranker(path)
    assert r.version == "mmoe-test" and r.tasks == TASKS and torch.get_num_threads() == 1
    feats = data.meta["sample_features"]
    p = r.predict(feats)
    assert p.shape == (len(feats), 3) and np.all((p > 0) & (p < 1))
    np.testing.assert_allclose(p, r.predict_arrays(*encode_features(feats)))
    q = RT.load_ranker(path, quantize_int8=True)
    assert q.version == "mmoe-test+int8" and np.abs(q.predict(feats) - p).max() < 0.02
    for int8 in (False, True):  # the scorer's frozen TorchScript graph: same outputs, any batch size
        eager, frozen = (RT.load_ranker(path, quantize_int8=int8, frozen=f) for f in (False, True))
        assert isinstance(frozen.model, torch.jit.ScriptModule)
        for n in (1, 37, len(feats)):
            np.testing.assert_allclose(frozen.predict(feats[:n]), eager.predict(feats[:n]),
                                       rtol=1e-5, atol=1e-7)
    b = RT.load_ranker(path, frozen=True, bf16=True)  # bfloat16 MLP: close to float, and says so
    diff = np.abs(b.predict(feats) - p).max()
    print(f"bf16 vs float: max |dp| {diff:.2e}")
    assert b.bf16 and b.version == "mmoe-test+bf16" and 0 < diff < 0.005
    lat = RT.measure_latency(r, (feats * 5)[:500], runs=30, warmup=5)
    print(f"predict 500 candidates: p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms")
    assert lat["p50_ms"] < 50  # the 5 ms target is measured by the benchmark, not asserted here
    dfm = make_model("deepfm", train)
    RT.save_checkpoint(tmp_path / "d.pt", dfm, {}, "d")
    pd = RT.load_ranker(tmp_path / "d.pt").predict(feats[:3])
    assert np.isnan(pd[:, :2]).all() and np.isfinite(pd[:, 2]).all()
    blob = torch.load(path, weights_only=True)
    blob["config"]["feature_version"] = 999
    torch.save(blob, tmp_path / "old.pt")
    with pytest.raises(RT.RankerError, match="FEATURE_VERSION"):
        RT.load_ranker(tmp_path / "old.pt")
    with pytest.raises(RT.RankerError):
        r.__class__(r.model, r.config, {}, "x").predict([{"item_id": "i1"}])


def test_cli_wiring_and_pipeline_into_the_registry(sim, tmp_path):
    from models.registry import ModelRegistry
    from models.train_ranker import run
    from recsys.cli import train as cli
    from recsys.cli.ranker_options import ranking_data_loader

    p = argparse.ArgumentParser()
    cli.add_arguments(p)  # the real `recsys train` parser, ranker options included (no clash)
    data, _ = sim
    data.save(tmp_path / "d.npz")
    args = p.parse_args(["--model", "rankers", "--dataset", str(tmp_path / "d.npz"),
                         "--report", str(tmp_path / "r.json"), "--epochs", "1", "--threads", "1",
                         "--out", str(tmp_path / "reg"), "--artifacts", str(tmp_path / "art"),
                         "--promote"])
    assert cli.TRAINERS[args.model] is cli.TRAINERS["mmoe"]  # rankers route to the ranker trainer
    args.model = "all"
    settings = Settings(state_dir=str(tmp_path))
    report = run(settings, args, ranking_data_loader(settings, args), log=lambda _m: None)
    assert set(report["models"]) == {"deepfm", "deepfm_click", "mmoe"}
    assert {"deepfm_purchase_auc", "mmoe_purchase_auc", "max_calibrated_ece"} <= set(report["comparison"])
    reg = ModelRegistry(tmp_path / "reg")
    cur = reg.current("ranker")
    assert cur is not None
    assert all((cur.path / f).is_file() for f in ("reliability.png", "loss.png", "auc.png"))
    r = RT.load_ranker(cur.path)
    assert r.version == "ranker-v1" and r.predict(data.meta["sample_features"][:5]).shape == (5, 3)
    assert json.loads((tmp_path / "r.json").read_text())["data"]["rows"] == len(data)


def test_training_examples_from_the_kafka_topic(settings):
    """The trainer reads the label join's topic from the embedded broker (real Kafka protocol)."""
    from core import kafka

    p = kafka.producer(settings)
    feats = {"item_id": "a", "category": "c1", "u_cat_pref": 0.25}
    for version, purchase in ((1, False), (2, True)):
        ex = events_pb2.TrainingExample(example_id="r9/a", request_id="r9", item_id="a", version=version,
                                        impression_time_ms=1_750_000_000_000, click=True, purchase=purchase,
                                        features=codecs.pack_features(feats))
        p.produce(settings.topic("training"), key=b"r9", value=ex.SerializeToString())
    assert p.flush(10) == 0
    records = TE.consume_training_examples(settings, timeout_s=20.0)
    data = TE.load_training_examples(records)
    assert len(records) == 2 and len(data) == 1
    np.testing.assert_array_equal(data.labels, [[1, 0, 1]])
    assert data.dense[0, DENSE.index("u_cat_pref")] == 0.25


def test_negative_sampling_keeps_weighted_rates_unbiased():
    from models.ranker_fit import sample_negatives

    rng = np.random.default_rng(3)
    y = (rng.random((200_000, 3)) < [0.04, 0.01, 0.004]).astype(np.float32)
    y[:, 1] *= y[:, 0]
    y[:, 2] *= y[:, 1]  # cart and purchase only after a click
    w = np.ones_like(y)
    kept, wk = sample_negatives(y, w, 0.1, seed=1)
    assert 0.12 * len(y) < len(kept) < 0.15 * len(y)  # ~10% of negatives + every positive
    assert (y[kept] > 0).any(axis=1).sum() == (y > 0).any(axis=1).sum()
    for c in range(3):
        full = y[:, c].mean()
        weighted = (wk[:, c] * y[kept, c]).sum() / wk[:, c].sum()
        naive = y[kept, c].mean()
        assert abs(weighted - full) < 0.05 * full  # importance weights: unbiased
        assert naive > 5 * full  # without them the rate is inflated
    assert sample_negatives(y, w, 1.0, 1)[0].size == len(y)
    with pytest.raises(ValueError):
        sample_negatives(y, w, 0.0, 1)
