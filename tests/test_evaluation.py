"""``satmon evaluate``: the metrics are right on known inputs, and a small v3 world goes through the
worker's pipeline with every reference graded on the same rows, in the shape other tools read."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from monitor.sim import simulate
from monitor.records.errors import MonitorError
from monitor.evaluation.risk import (
    HEADLINE,
    _auc,
    _auc_counts,
    _average_precision,
    _calibration_error,
    _top,
    combine,
    evaluate,
    oracle_only,
    reliability_svg,
)


def _brute_force_auc(y, s):
    pos = [b for a, b in zip(y, s) if a]
    neg = [b for a, b in zip(y, s) if not a]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_exact_auc_matches_a_brute_force_pair_count():
    rng = np.random.default_rng(4)
    for _ in range(20):
        n = int(rng.integers(5, 80))
        y = rng.random(n) < 0.3
        if y.all() or not y.any():
            continue
        s = np.round(rng.random(n) + y * 0.3, 1)     # rounded: many ties
        assert _auc(y, s) == pytest.approx(_brute_force_auc(y.tolist(), s.tolist()), abs=1e-12)
    assert np.isnan(_auc(np.array([1, 1]), np.array([0.1, 0.2])))
    assert _auc_counts(np.array([0, 1]), np.array([0.3, 0.3])) == (0.5, 1.0)


def test_ranking_and_calibration_metrics_on_known_inputs():
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    assert _average_precision(y, s) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert _top(s, 0.4).tolist() == [0, 1]
    assert _calibration_error(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5]), bins=1) == pytest.approx(0.0)
    assert _calibration_error(np.array([0, 0]), np.array([0.8, 0.8]), bins=2) == pytest.approx(0.8)


def test_bootstrap_over_worlds_and_the_margin_figures():
    def world(seed, model, prior, oracle):
        systems = {"model": {"roc_auc": model, "roc_auc_second_half": model},
                   "prior": {"roc_auc": prior, "roc_auc_second_half": prior},
                   "oracle": {"roc_auc": oracle}, "batch_reference": {"roc_auc_second_half": 0.8}}
        return {"seed": seed, "events": 1, "replay_s": 1, "daily_instants": 1, "hourly_instants": 1,
                "outcomes": {"churn_7d": {"base_rate": 0.02, "systems": systems}},
                "reasons": {"fidelity_top1": 0.5, "outcomes_with_driver": 10}, "list": {}}

    r = combine([world(1, 0.80, 0.70, 0.85), world(2, 0.78, 0.71, 0.84), world(3, 0.82, 0.69, 0.86)])
    o = r["outcomes"]["churn_7d"]
    assert r["worlds"] == [1, 2, 3]
    assert o["systems"]["model"]["roc_auc"] == pytest.approx(0.8)
    lo, hi = o["systems"]["model"]["roc_auc_ci95"]
    assert 0.78 <= lo < 0.8 < hi <= 0.82
    d = o["differences"]["model_minus_prior"]
    assert d["mean"] == pytest.approx(0.1) and d["ci95"][0] > 0
    assert o["model_share_of_oracle_margin"] == pytest.approx(0.3 / 0.35, abs=1e-3)
    assert o["model_over_batch_reference"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    simulate.write_files(simulate.SimConfig(subscribers=500, hours=24, seed=31, burn_in_hours=6,
                                            followup_hours=168), out)
    return out


def test_a_small_world_is_graded_with_every_reference(world):
    r = evaluate(world, every_h=3)
    assert r["worlds"] == [31]
    assert {"complaint_72h", "detractor_72h", "churn_7d"} <= set(r["outcomes"])
    c = r["outcomes"]["complaint_72h"]
    assert 0 < c["base_rate"] < 0.5
    systems = c["systems"]
    assert {"model", "prior", "zero_prior", "oracle", "batch_reference", "batch_logistic",
            "best_single_feature"} <= set(systems)
    for name, m in systems.items():
        for key in ("roc_auc", "pr_auc", "precision_at_1pct", "lift_at_1pct", "precision_at_5pct"):
            assert key in m, (name, key)
        assert m["roc_auc"] is None or 0 <= m["roc_auc"] <= 1
        assert len(m["roc_auc_ci95"]) == 2
    # the oracle knows the world: clearly better than chance, though not perfect
    assert 0.6 < systems["oracle"]["roc_auc"] < 0.99
    assert "median_lead_h" in systems["model"]
    assert r["reasons"]["fidelity_top1"] is None or 0 <= r["reasons"]["fidelity_top1"] <= 1
    assert r["list"]["subscribers"] > 400 and r["list"]["listed"] >= 1
    assert "calibration_surveyed" in r["outcomes"]["detractor_72h"]
    # a lift curve per headline outcome and system, one point per budget
    curve = c["lift_curve"]
    assert len(curve["budgets"]) == len(curve["systems"]["oracle"]) and "model" in curve["systems"]
    # reliability curves of the probabilities: ten equal-count bins in order of probability; the
    # observed rate of the oracle's top bin is well above its bottom bin's (how well the model's
    # lie on the diagonal is the figure of docs/MODEL.md, not of a 24 h world)
    rel = c["reliability"]
    assert set(rel) == {"oracle", "model", "prior"}
    for name, bins in rel.items():
        assert len(bins) == 10 and [p for p, _ in bins] == sorted(p for p, _ in bins), name
        assert all(0 <= p <= 1 and 0 <= y <= 1 for p, y in bins), name
    assert rel["oracle"][-1][1] > 2 * rel["oracle"][0][1]
    assert reliability_svg(r).count("<polyline") == 3 * len(HEADLINE)
    # what learning had to go on
    learned = r["per_world"][0]["labels_learned"]
    assert learned["labels"] > 0 and set(learned["positives"]) == {"complaint", "detractor", "churn"}
    json.dumps(r)   # other tools read it


def test_oracle_only_needs_no_replay(world):
    r = oracle_only(world)
    assert r["seed"] == 31 and 0.5 < r["complaint_24h"]["roc_auc"] < 1


def test_a_v2_run_is_refused_with_the_reason(tmp_path):
    simulate.write_files(simulate.SimConfig(subscribers=100, hours=0.6, seed=2, world="v2"), tmp_path)
    with pytest.raises(MonitorError, match="latent-satisfaction"):
        evaluate(tmp_path)


def test_the_batch_references_cannot_score_an_outcome_by_recognising_the_subscriber():
    """A subscriber's outcome in the second half also labels their first-half rows (the horizons
    straddle the split): a reference fitted on the same subscribers would score it by recognising
    them. Here one feature only identifies the subscriber (no signal across subscribers) and another
    carries a real signal: cross-fitted over subscribers, the references rank by the signal."""
    from monitor.evaluation.risk import _batch_and_single_feature

    rng = np.random.default_rng(7)
    n, instants = 600, list(range(8))
    will = rng.random(n) < 0.15                  # who has an outcome in the horizon, at every instant
    fingerprint = rng.random(n)                  # a slow feature that says who, not whether
    per_t = {}
    for t in instants:
        signal = will * 1.2 + rng.normal(0, 1, n)
        x = np.column_stack([fingerprint, signal]).astype(np.float32)
        per_t[t] = {"y": will.astype(np.int8), "scores": {}, "x": x, "subs": np.arange(n, dtype=np.int64)}
    _batch_and_single_feature(per_t, instants, half=3.5)
    fp_only = {t: {**r, "x": r["x"][:, :1], "scores": {}} for t, r in per_t.items()}
    _batch_and_single_feature(fp_only, instants, half=3.5)
    for name in ("batch_reference", "batch_logistic"):
        aucs = [_auc(per_t[t]["y"], per_t[t]["scores"][name]) for t in instants[4:]]
        assert 0.6 < np.mean(aucs) < 0.9, (name, aucs)      # the signal alone: ~0.80
        fp = [_auc(fp_only[t]["y"], fp_only[t]["scores"][name]) for t in instants[4:]]
        assert abs(np.mean(fp) - 0.5) < 0.1, (name, fp)     # fitted on the same subscribers: HGB 0.93


def test_learned_from_zero_in_one_pass_equals_a_second_replay(world):
    """The learned-from-zero model learns the pipeline's matured labels in the same pass (labels do
    not depend on the model); it must score every instant exactly as a second replay whose cores
    start from zero weights (what ``evaluate`` ran until 2026-12-07, at twice the time)."""
    from monitor import replay
    from monitor.evaluation.risk import _Collector, _zero_prior_model, load_truth, replay_world
    from monitor.scoring.core import PartitionCore

    truth = load_truth(world)
    one = replay_world(world, every_h=4, truth=truth)
    shared = [_zero_prior_model(None)]
    second = _Collector(truth, one["instants"], reasons=False)
    replay.run(world, instants=one["instants"], on_instant=second, hotspots=False,
               make_core=lambda p, load: PartitionCore(p, state_loader=load, model=shared[0]))
    assert second.rows and set(second.rows) == set(one["zero_prior_rows"])
    for t, r in second.rows.items():
        z = one["zero_prior_rows"][t]
        assert np.array_equal(r["subs"], z["subs"])
        assert np.array_equal(r["model"], z["model"]), t
    # and the pipeline's own model is unchanged by teaching a second one beside it
    alone = replay_world(world, every_h=4, truth=truth, zero_prior=False)
    for t, r in alone["rows"].items():
        assert np.array_equal(r["model"], one["rows"][t]["model"]), t
    assert shared[0].n_labels == one["labels_learned"]["labels"] > 0
