"""monitor.detection.detectors: a River-style battery over every detector, and satmon's detector on a
daily- and weekly-seasonal KPI with sudden drops (through ``satmon detect`` at its default threshold)."""

from __future__ import annotations

import copy
import csv
import inspect
import math
import pickle
import random

import pytest

from monitor.detection import detectors as D
from monitor.cli import main

HOUR_MS = 3_600_000
DETECTORS = [D.SeasonalDetector, D.EWMAZScore, D.PageHinkleyDetector, D.HalfSpaceTreesDetector]


def noisy(n=600, seed=3):
    rng = random.Random(seed)
    return [(50 + 10 * math.sin(2 * math.pi * i / 24) + rng.gauss(0, 1) + (25 if i % 97 == 0 and i else 0),
             i * HOUR_MS) for i in range(n)]


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_params_are_stored_under_their_names_and_clone_is_fresh(cls):
    det = cls(seed=7)
    params = det._get_params()
    assert set(params) == {n for n in inspect.signature(cls.__init__).parameters if n != "self"}
    for x, t in noisy(50):
        det.process_one(x, t)
    fresh = det.clone()
    assert fresh._get_params() == params and repr(fresh) == repr(det)
    new = cls(seed=7)
    assert [fresh.process_one(x, t) for x, t in noisy(150)] == [new.process_one(x, t) for x, t in noisy(150)]


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_pickle_round_trip_continues_identically(cls):
    data = noisy()
    a = cls(seed=1)
    for x, t in data[:300]:
        a.process_one(x, t)
    b = pickle.loads(pickle.dumps(a))
    assert [a.process_one(x, t) for x, t in data[300:]] == [b.process_one(x, t) for x, t in data[300:]]


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_seeded_runs_agree_and_scores_are_in_unit_interval(cls):
    runs = [[cls(seed=5).process_one(x, t) for x, t in noisy(300)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(0.0 <= s <= 1.0 for s in runs[0])


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_score_one_does_not_learn_and_input_is_not_mutated(cls):
    det = cls(seed=2)
    for x, t in noisy(300):
        det.process_one(x, t)
    before = pickle.dumps(det)
    s1 = det.score_one(80.0, 300 * HOUR_MS)
    s2 = det.score_one(80.0, 300 * HOUR_MS)
    det.score_one(-5.0, 301 * HOUR_MS)
    assert s1 == s2
    if hasattr(det, "_cache"):       # the last evaluation, kept for learn_one: not learned state
        det._cache = None
    assert pickle.dumps(det) == before
    xs = [x for x, _ in noisy(20)]
    kept = copy.deepcopy(xs)
    for x in xs:
        det.process_one(x)
    assert xs == kept


def test_bad_direction_is_refused():
    with pytest.raises(ValueError, match="direction"):
        D.SeasonalDetector(direction="sideways")


def test_surprise_score_is_a_tail_probability_scale():
    assert D.surprise_score(1e-4) == D.DEFAULT_THRESHOLD
    assert D.surprise_score(1e-3) < D.DEFAULT_THRESHOLD < D.surprise_score(1e-5)


# -- a daily- and weekly-seasonal KPI with sudden drops, through `satmon detect` ---------------------------

def seasonal_kpi(weeks=6, drops=((24 * 7 * 4 + 30, 4), (24 * 7 * 5 + 100, 3), (24 * 7 * 5 + 150, 6)), seed=11):
    """Hourly KPI (e.g. successful sessions): a daily curve, quieter weekends, 3 % noise, and sudden
    drops to 40 % for a few hours (an outage). Returns rows and the set of dropped hours."""
    rng = random.Random(seed)
    rows, dropped = [], set()
    for i in range(24 * 7 * weeks):
        hour, dow = i % 24, (i // 24) % 7
        base = 1000 + 600 * math.sin(2 * math.pi * (hour - 8) / 24) * (0.6 if dow >= 5 else 1.0)
        base *= 0.75 if dow >= 5 else 1.0
        v = base * (1 + rng.gauss(0, 0.03))
        for start, length in drops:
            if start <= i < start + length:
                v *= 0.4
                dropped.add(i)
        rows.append((1_714_521_600 + 3600 * i, round(v, 1)))     # 2024-05-01T00:00Z, hourly
    return rows, dropped, drops


def test_detect_catches_sudden_drops_in_a_seasonal_kpi_without_false_alarms(tmp_path):
    rows, dropped, drops = seasonal_kpi()
    src = tmp_path / "kpi.csv"
    src.write_text("timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in rows))
    out = tmp_path / "scored.csv"
    assert main(["detect", str(src), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        scores = [float(r["anomaly_score"]) for r in csv.DictReader(f)]
    fired = {i for i, s in enumerate(scores) if s >= D.DEFAULT_THRESHOLD}
    for start, length in drops:                            # every outage is caught in its first hour
        assert start in fired, (start, scores[start - 2:start + length + 2])
    # after two weeks of learning, the clean seasonal part raises no alarm (the hours right after an
    # outage, while the detector re-settles, are excluded)
    settled = {i for i in range(24 * 14, len(rows))
               if not any(s <= i < s + length + 24 for s, length in drops)}
    false_alarms = sorted(fired & settled)
    assert false_alarms == [], false_alarms


def test_a_level_baseline_alone_misses_what_the_seasonal_one_catches():
    """Ablation: without time-of-day slots, the drops at the daily trough look like the night."""
    rows, dropped, drops = seasonal_kpi()
    full = D.SeasonalDetector()
    ewma = D.EWMAZScore()
    caught = {"seasonal": 0, "ewma": 0}
    for i, (t, v) in enumerate(rows):
        s_full = full.process_one(v, t * 1000)
        s_ewma = ewma.process_one(v, t * 1000)
        if i in {s for s, _ in drops}:
            caught["seasonal"] += s_full >= D.DEFAULT_THRESHOLD
            caught["ewma"] += s_ewma >= D.DEFAULT_THRESHOLD
    assert caught["seasonal"] == len(drops) > caught["ewma"]


def test_a_record_level_fires_after_a_day_and_not_in_a_young_series():
    """The range statistic: a value beyond everything of the last ``range_window`` points scores by how
    far beyond; a series watched for less than ``range_min_ms`` sets records without paging."""
    rng = random.Random(4)
    det = D.SeasonalDetector(warmup=20)
    young = [det.process_one(10.0 + 0.01 * i + rng.gauss(0, 0.1), i * HOUR_MS) for i in range(22)]
    assert max(young) < D.DEFAULT_THRESHOLD                           # a slow trend: records, not news
    assert det._excess(20.0, 22 * HOUR_MS) == 0.0                     # less than a day watched
    for i in range(22, 24 * 14):
        det.process_one(10.0 + rng.gauss(0, 1.0), i * HOUR_MS)
    lo, hi = det._lo[0][1], det._hi[0][1]
    t = 24 * 14 * HOUR_MS
    assert det._excess((lo + hi) / 2, t) == 0.0
    assert det._excess(hi + 0.5 * (hi - lo), t) == pytest.approx(0.5)
    assert det.score_one(hi + 0.5 * (hi - lo), t) >= D.DEFAULT_THRESHOLD
    det.direction = "down"                                            # only falls count
    assert det._excess(hi + 0.5 * (hi - lo), t) == 0.0
    assert det._excess(lo - 0.5 * (hi - lo), t) == pytest.approx(0.5)


def test_context_novelty_is_a_transition_never_made_and_moderate_evidence_needs_it():
    """The context statistic: runs of coarse levels (over the range seen so far) never seen before; a
    point below the firing threshold pages only if the series also makes such a transition."""
    det = D.SeasonalDetector(warmup=20)
    for i in range(200):                                  # a square wave between two levels
        det.process_one(10.0 if (i // 10) % 2 else 0.0, i * HOUR_MS)
    t = 200 * HOUR_MS
    assert det._context_novelty(10.0 if (200 // 10) % 2 else 0.0, t) == 0.0  # the wave goes on
    assert det._context_novelty(5.0, t) == 1.0                                 # a level never visited
    assert det._context_novelty(5.0, 12 * HOUR_MS) == 0.0                      # (not in its first day)
    w = det.context_weight
    assert w < D.DEFAULT_THRESHOLD                                             # novelty alone never pages
    assert det._combined(0.4, 0.0) == pytest.approx((1 - w) * 0.4)             # moderate, known: damped
    assert det._combined(0.4, 1.0) == pytest.approx((1 - w) * 0.4 + w)         # moderate, new: counts
    assert det._combined(0.9, 0.0) == 0.9                                      # anomalous: kept
    assert D.SeasonalDetector(context_levels=0)._combined(0.4, 1.0) == 0.4     # off
    assert 0.0 <= det.score_one(5.0, t) <= 1.0


@pytest.mark.parametrize("mode", ["both", "up", "down"])
def test_page_hinkley_test_decides_as_rivers_page_hinkley(mode):
    """Data drift's change test is River's PageHinkley without River: the same decision at every
    value of random streams with shifts (the drift monitor's setting and River's defaults)."""
    import random

    from river import drift

    from monitor.detection.detectors import PageHinkleyTest

    rng = random.Random(7)
    for params in ({"min_instances": 1, "delta": 1.0, "threshold": 9.0, "alpha": 1.0},
                   {"min_instances": 30, "delta": 0.005, "threshold": 50.0, "alpha": 1 - 0.0001},
                   {"min_instances": 5, "delta": 0.2, "threshold": 3.0, "alpha": 0.99}):
        ours, theirs = PageHinkleyTest(mode=mode, **params), drift.PageHinkley(mode=mode, **params)
        decisions = []
        for i in range(3000):
            x = rng.gauss(0.0, 1.0) + (3.0 if (i // 400) % 2 else 0.0) * (1 if mode != "down" else -1)
            ours.update(x)
            theirs.update(x)
            assert ours.drift_detected == theirs.drift_detected, (params, i)
            decisions.append(ours.drift_detected)
        assert sum(decisions) >= 3, params   # the streams do change: the comparison is not all-False


def test_data_drift_does_not_import_river():
    import subprocess
    import sys

    code = ("import sys; from monitor.detection.drift import DataDriftMonitor; m = DataDriftMonitor(); "
            "m.update_one('r', 'latency_ms', 1.0, 0); print('river' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_detect_runs_the_workers_detector_and_adds_nothing_to_the_seasonal_statistics():
    """One detector core: ``satmon detect`` is the worker's HotspotDetector with one key and one
    level metric; its scores are the SeasonalDetector's (as measured on NAB) to the last bits."""
    from monitor.commands.detect import SeriesScorer
    from monitor.detection.hotspots import HotspotDetector

    rows, _dropped, _drops = seasonal_kpi()
    scorer, direct = SeriesScorer(), D.SeasonalDetector()
    assert isinstance(scorer.detector, HotspotDetector)
    for t, v in rows:
        a, b = scorer.process_one(v, t * 1000), direct.process_one(v, t * 1000)
        assert abs(a - b) < 1e-12, (t, a, b)


def test_the_workers_detector_judges_count_metrics_and_a_seasonal_level_side_by_side():
    """The worker's keyed detector with a count metric (degraded share) and a level metric (an
    hourly seasonal KPI) on the same keys: the drop in the KPI fires its key, names the level metric
    and resolves; the count metric alone keeps the other key quiet; a pickle mid-stream continues
    identically."""
    import pickle

    from monitor.detection.hotspots import CELL_METRICS, HotspotDetector, Metric

    rows, _dropped, drops = seasonal_kpi()
    kpi = Metric("kpi", "level", 0.0, 0.0, 0.0, "KPI", direction="down")
    det = HotspotDetector(metrics=(CELL_METRICS[0], kpi), warmup_windows=0)
    start, _length = drops[0]
    trace, clone = [], None
    for i, (t, v) in enumerate(rows[: start + 30]):
        obs = {"a": {"degraded_share": (10, 200, None), "kpi": (v, 1.0, None)},
               "b": {"degraded_share": (11, 210, None)}}
        if i == start - 5:
            clone = pickle.loads(pickle.dumps(det))
        verdicts = det.step(t * 1000, obs)
        if clone is not None:
            again = clone.step(t * 1000, obs)
            assert {k: (x.event, x.score) for k, x in again.items()} == {k: (x.event, x.score) for k, x in verdicts.items()}
        trace.append((i, verdicts["a"].event, verdicts["a"].worst, verdicts["b"].event))
    fired = [(i, worst) for i, ev, worst, _ in trace if ev == "fire"]
    assert fired and fired[0] == (start, "kpi"), fired
    assert any(ev == "resolve" for i, ev, _, _ in trace if i > start)
    assert all(b is None for *_, b in trace)
