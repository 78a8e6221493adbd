"""River's estimator battery over the risk model and its learner (pickle round-trip, data-only
state, no input mutation, seeded determinism, unseen features tolerated, hyper-parameters under
their own names), and what learning must achieve: a world whose drivers the prior gets wrong."""

from __future__ import annotations

import copy
import inspect
import math
import pickle
import random

import msgspec
import orjson
import pytest

from monitor.scoring.features import FEATURES
from monitor.scoring.risk import CALIBRATION_WARMUP, OUTCOMES, LabelRecord, OnlineLogit, RiskModel, decode_label, encode_label, roc_auc

N = len(FEATURES)
BILLING, WORST = FEATURES.index("billing"), FEATURES.index("worst_moment")


def world(n: int, seed: int) -> list[LabelRecord]:
    """Snapshots whose complaint hazard is driven by billing (the prior weighs it little) and whose
    churn ignores the network moments the prior weighs most."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        x = [0.0] * N
        x[BILLING] = float(rnd.random() < 0.15) * rnd.uniform(0.5, 2.0)
        x[WORST] = rnd.random() ** 2
        x[FEATURES.index("drops")] = float(rnd.choice([0, 0, 0, 1, 3]))
        zc = -4.0 + 2.2 * x[BILLING]
        zd = -5.0 + 1.5 * x[BILLING] + 1.0 * x[WORST]
        zch = -5.5 + 1.2 * x[BILLING]
        y = [int(rnd.random() < 1 / (1 + math.exp(-z))) for z in (zc, zd, zch)]
        out.append(LabelRecord(ts_ms=i, x=x, y=y))
    return out


def trained(seed: int = 0, n: int = 3000, **params) -> RiskModel:
    m = RiskModel(**params)
    for rec in world(n, seed):
        m.learn(rec)
    return m


def test_learning_finds_the_worlds_drivers_the_prior_gets_wrong():
    model, prior = trained(l2=0.01), RiskModel(lr=0.0, calibration_lr=0.0)  # capacity, lighter pull to the prior
    test = world(4000, seed=99)
    for k, o in enumerate(OUTCOMES):
        y = [r.y[k] for r in test]
        a_model = roc_auc(y, [model.hazard(o, r.x) for r in test])
        a_prior = roc_auc(y, [prior.hazard(o, r.x) for r in test])
        assert a_model > a_prior + 0.03, (o, a_model, a_prior)
    # calibrated: the mean predicted daily hazard is near the observed rate
    for k, o in enumerate(OUTCOMES):
        rate = sum(r.y[k] for r in test) / len(test)
        mean = sum(model.hazard(o, r.x) for r in test) / len(test)
        assert abs(mean - rate) < 0.5 * rate + 0.003, (o, mean, rate)


def test_pickle_and_data_only_state_round_trip():
    m = trained(n=500)
    x = world(1, seed=5)[0].x
    for copy_ in (pickle.loads(pickle.dumps(m)), RiskModel.from_state(msgspec.msgpack.decode(
            msgspec.msgpack.encode(m.to_state())))):
        assert copy_.predict(x) == m.predict(x) and copy_.to_state() == m.to_state()
        assert copy_.contributions(x) == m.contributions(x)
    blob = encode_label(world(1, seed=6)[0])
    assert decode_label(blob) == world(1, seed=6)[0]


def test_a_model_saved_before_features_were_added_loads_with_what_it_learned():
    """The feature table grows at its end (the account features came after 39 others): a checkpoint
    of the shorter table keeps its learned weights; the new features start at their prior weight.
    A table that differs elsewhere is refused."""
    m = trained(n=500)
    old = m.to_state()
    k = N - 4
    old["features"] = list(FEATURES[:k])
    for h in old["heads"].values():
        for part in ("w", "wa", "sum", "sumsq"):
            h[part] = {f: v for f, v in h[part].items() if f in old["features"]}
    loaded = RiskModel.from_state(msgspec.msgpack.decode(msgspec.msgpack.encode(old)))
    x = world(1, seed=5)[0].x
    assert x[k:] == [0.0] * (N - k)
    assert loaded.predict(x) == m.predict(x)
    assert loaded.n_labels == m.n_labels
    fresh = RiskModel()
    for o in OUTCOMES:
        for f in FEATURES[k:]:
            assert loaded.heads[o].w[f] == fresh.heads[o].w[f] and loaded.heads[o].sum[f] == 0.0
    loaded.learn(world(1, seed=7)[0])   # and it learns on
    old["features"] = ["renamed"] + list(FEATURES[1:k])
    with pytest.raises(ValueError):
        RiskModel.from_state(old)


def test_the_priors_pull_fades_after_prior_labels_so_a_rare_outcomes_driver_is_learned():
    """A rare outcome (1 %) driven by a feature the prior gives weight 0: with a pull that never
    fades (``prior_labels=0``) its weight stays near 0 however many labels come; with a pull that
    fades after 500 labels it moves most of the way to the truth. Until then both learn alike."""
    rnd = random.Random(4)
    rows = []
    for _ in range(30_000):
        on = rnd.random() < 0.4
        z = -5.0 + 1.5 * on
        rows.append(({"driver": float(on), "noise": rnd.random()}, rnd.random() < 1 / (1 + math.exp(-z))))
    prior = {"driver": 0.0, "noise": 0.0}
    fixed = OnlineLogit(lr=0.02, l2=0.1, average=2000, prior=prior, bias=-4.5)
    fading = OnlineLogit(lr=0.02, l2=0.1, average=2000, prior=prior, bias=-4.5, prior_labels=500)
    for i, (x, y) in enumerate(rows):
        fixed.learn(x, y)
        fading.learn(x, y)
        if i == 499:
            assert fading.to_state() == fixed.to_state()
    assert abs(fixed.wa["driver"]) < 0.3
    assert 0.9 < fading.wa["driver"] < 2.1, fading.wa


def test_seeded_determinism_and_no_input_mutation():
    recs = world(300, seed=3)
    frozen = copy.deepcopy(recs)
    a, b = RiskModel(seed=7), RiskModel(seed=7)
    for r in recs:
        a.learn(r)
        b.learn(r)
        a.predict(r.x)
    assert a.to_state() == b.to_state()
    assert recs == frozen
    x = {"a": 1.0, "b": 0.0}
    OnlineLogit().learn(x, True)
    assert x == {"a": 1.0, "b": 0.0}


def test_unseen_features_tolerated():
    m = OnlineLogit()
    m.learn({"a": 1.0}, True)
    m.learn({"brand_new": 2.0}, False)  # a key never seen before
    assert 0.0 < m.predict({"other_new": 5.0}) < 1.0  # unknown at prediction: counts zero
    r = RiskModel()
    assert set(r.predict([1.0] * (N + 3))) == set(OUTCOMES)  # extra trailing values ignored
    with pytest.raises(ValueError, match="not a satmon-risk-v2"):
        RiskModel.from_state({**r.to_state(), "features": ["x"]})


@pytest.mark.parametrize("cls", [RiskModel, OnlineLogit])
def test_hyper_parameters_are_stored_under_their_names(cls):
    obj = cls()
    for name, p in inspect.signature(cls).parameters.items():
        assert hasattr(obj, name), name
        if p.default is not inspect.Parameter.empty and not isinstance(p.default, dict):
            assert getattr(obj, name) == p.default or p.default is None, name


def test_one_online_pass_close_to_a_batch_fit():
    from monitor.scoring.warmstart import batch_logistic

    rnd = random.Random(2)
    rows = [{"a": rnd.gauss(0, 1), "b": rnd.gauss(3, 5), f"k={rnd.randint(0, 3)}": 1.0} for _ in range(4000)]
    ys = [rnd.random() < 1 / (1 + math.exp(-(0.8 * r["a"] - 0.1 * r["b"] + r.get("k=2", 0.0)))) for r in rows]
    online = OnlineLogit(lr=0.05, average=3000)
    for r, y in zip(rows[:3000], ys[:3000]):
        online.learn(r, y)
    w = batch_logistic(rows[:3000], ys[:3000])
    test, yt = rows[3000:], ys[3000:]
    a_online = roc_auc(yt, [online.z(r) for r in test])
    a_batch = roc_auc(yt, [w["__bias__"] + sum(w.get(k, 0.0) * v for k, v in r.items()) for r in test])
    assert abs(a_online - a_batch) < 0.005


def spread(n: int, seed: int) -> list[list[float]]:
    """Snapshots whose prior log-odds spread like a world's: a worst moment, dropped calls, a
    coverage dose with a long tail."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        x = [0.0] * N
        x[WORST] = rnd.random()
        x[FEATURES.index("drops")] = float(rnd.choice([0, 0, 0, 0, 1, 2, 4, 8, 13]))
        x[FEATURES.index("coverage_dose")] = rnd.expovariate(0.1)
        out.append(x)
    return out


@pytest.mark.parametrize("factor", [0.4, 2.5])
def test_the_calibrator_learns_its_slope_and_never_inverts_the_list(factor: float):
    """A world whose hazard is ``sigmoid(a z + c)`` of the (fixed) prior head's log-odds ``z``, 3 %
    at the mean, with a slope ``factor`` times the cold start's: the calibrator's slope moves most
    of the way there, the mean probability meets the rate, and the slope stays positive throughout
    (a slope at or below zero would tie or invert the list)."""
    from monitor.scoring.risk import COLD_CALIBRATION

    o = "complaint"
    a0 = COLD_CALIBRATION[o][0]
    a_true = factor * a0
    model = RiskModel(lr=0.0)            # the heads stay the prior: only the calibrator learns
    head = model.heads[o]
    rnd = random.Random(11)
    snaps = spread(20_000, seed=12)
    zs = [head.z(dict(zip(FEATURES, x))) for x in snaps]
    c_true = math.log(0.03 / 0.97) - a_true * sum(zs) / len(zs)
    slopes = []
    for i, (x, z) in enumerate(zip(snaps, zs)):
        y = int(rnd.random() < 1 / (1 + math.exp(-(a_true * z + c_true))))
        model.learn(LabelRecord(ts_ms=i, x=x, y=[y, 0, 0]), only=o)
        slopes.append(model.calib[o][0])
    assert min(slopes) > 0
    a = model.calib[o][0]
    assert abs(math.log(a / a_true)) < 0.3 * abs(math.log(a0 / a_true)), (a, a0, a_true)
    test = spread(4000, seed=13)
    rate = sum(1 / (1 + math.exp(-(a_true * head.z(dict(zip(FEATURES, x))) + c_true))) for x in test) / len(test)
    mean = sum(model.hazard(o, x) for x in test) / len(test)
    assert abs(mean - rate) < 0.2 * rate, (mean, rate)


def test_an_outage_subscriber_is_not_certain_and_the_untrained_list_is_calibrated():
    """Through the core, untrained: a subscriber who sat through a day of outage (60 sessions at
    -125 dBm, 13 dropped calls: what the demo's metro outage did) ranks far above a quiet one on
    every outcome, and no outcome reads 1.0000 (before the cold-start calibration every one did)."""
    from monitor.records.events import decode
    from monitor.scoring.core import PartitionCore
    from support.records import network_event

    core = PartitionCore(0, clock_ms=lambda: 0)
    last = {}
    for i in range(60):
        for j, (sub, over) in enumerate((("sub-quiet", {}),
                                         ("sub-outage", {"rsrp_dbm": -125.0, "sinr_db": -5.0, "dl_mbps": 0.3,
                                                         "latency_ms": 400.0, "call_drop": i % 5 == 0,
                                                         "video_stall_s": 20.0}))):
            ev = decode("network_event.v1", orjson.dumps(network_event(2 * i + j, sub, **over)))
            for rec in core.process_batch([ev]):
                last[rec.subscriber_id] = rec
    quiet, outage = last["sub-quiet"].outcomes, last["sub-outage"].outcomes
    for o in OUTCOMES:
        assert getattr(quiet, o) < 0.05 and 3 * getattr(quiet, o) < getattr(outage, o) < 0.999, (o, quiet, outage)


def test_the_calibrator_keeps_its_slope_over_labels_with_nearly_equal_log_odds():
    """The first labels a worker learns are mostly healthy subscribers whose log-odds differ by
    hundredths: the calibrator's slope, stepped per deviation of those log-odds, must not move
    there (its floor took complaint's 0.26 to 0.05 / 0.007 = 7 at the second label, and each step
    was divided by the deviation squared). With ``calibration_lr=0`` nothing moves at all."""
    frozen, learning = RiskModel(lr=0.0, calibration_lr=0.0), RiskModel(lr=0.0)
    x = [0.0] * N
    for i in range(CALIBRATION_WARMUP):
        x[WORST] = 0.01 * (i % 3)   # log-odds a few hundredths apart
        frozen.learn(LabelRecord(ts_ms=i, x=list(x), y=[0, 0, 0]))
        learning.learn(LabelRecord(ts_ms=i, x=list(x), y=[0, 0, 0]))
    for o in OUTCOMES:
        cold_a = RiskModel().calib[o][0]
        assert frozen.calib[o][0] == pytest.approx(cold_a, rel=1e-9), o
        assert learning.calib[o][0] == pytest.approx(cold_a, rel=1e-9), (o, learning.calib[o], cold_a)


def test_learning_leaves_no_cyclic_garbage():
    """A label rebuilds the generated scorer; the old one must be freed by reference counting. The
    worker runs the cyclic collector rarely (monitor.tuning.GC_THRESHOLDS), so a function <->
    namespace cycle per label piled up millions of blocks between full collections (a 50-minute soak
    at 6ea7a74: resident memory 245 -> 634 MB)."""
    import gc

    model = RiskModel()
    rng = random.Random(3)
    labels = [LabelRecord(ts_ms=i, x=[float(rng.random() < 0.2) for _ in FEATURES], y=[i % 7 == 0, 0, 0])
              for i in range(200)]
    gc.collect()
    gc.disable()
    try:
        for label in labels:
            model.learn(label)
        assert gc.collect() < 20
    finally:
        gc.enable()
