"""Risk quality against the simulator's ground truth: the issue's targets hold on the default
scenario (at a quarter of the default population, so it runs in seconds), the learned model beats
the prior on calibration, and the metrics themselves are right on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from monitor import simulate
from monitor.core import RiskModel
from monitor.evaluation import _auc, _calibration_error, _ranking, evaluate


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim-default")
    simulate.write_files(simulate.SimConfig(subscribers=5000, hours=6, seed=42, scenario="default"), out)
    return out


def test_auc_and_ranking_metrics_on_known_inputs():
    y = np.array([0, 0, 1, 1])
    assert _auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert _auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert _auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    r = _ranking(np.array([1] + [0] * 19), np.linspace(1, 0, 20), 0.05)
    assert r["precision_at_top_5pct"] == 1.0 and r["precision_at_top_5pct_ceiling"] == 1.0
    assert _calibration_error(np.array([0.8, 0.8]), np.array([0.8, 0.8])) == pytest.approx(0.0)
    assert _calibration_error(np.array([0.2, 0.2]), np.array([0.8, 0.8])) == pytest.approx(0.6)


@pytest.mark.slow
def test_default_scenario_meets_the_risk_quality_targets(default_run):
    r = evaluate(default_run)
    assert r["truth"] == "satisfaction"
    assert r["roc_auc"] >= 0.85, r
    assert r["precision_at_top_5pct"] >= 0.6, r
    assert r["expected_calibration_error"] <= 0.1, r
    assert r["labels_learned"] > 100
    # the at-risk list comes before complaints: a positive median lead time
    assert r["lead_time_minutes"]["subscribers"] > 10 and r["lead_time_minutes"]["median"] > 0
    # progressive metrics cover every instant and end at the overall figure
    assert len(r["progressive"]) == r["instants"] and r["progressive"][-1]["roc_auc"] == r["roc_auc"]
    # the events truth is reported next to its ceiling, honestly low in a 6 h run
    e = r["events_truth"]
    assert 0 < e["precision_at_top_5pct_ceiling"] < 1 and "oracle_roc_auc" in e


@pytest.mark.slow
def test_learning_calibrates_beyond_the_prior(default_run, monkeypatch):
    learned = evaluate(default_run)
    original = RiskModel.__init__

    def prior_only(self, **kw):
        original(self, **{**kw, "blend_half_labels": 10**12})

    monkeypatch.setattr(RiskModel, "__init__", prior_only)
    prior = evaluate(default_run)
    assert prior["labels_learned"] == learned["labels_learned"]  # same labels, never blended in
    assert learned["expected_calibration_error"] < prior["expected_calibration_error"]
    assert learned["roc_auc"] >= prior["roc_auc"] - 0.01
