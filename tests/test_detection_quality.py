"""Hot-spot and drift quality against the simulator's ground truth on the default population
(20,000 subscribers; cells of ~45 subscribers see a handful of sessions a minute), so a
regression of the issue's targets fails the suite."""

from __future__ import annotations

import pytest

from monitor import simulate
from monitor.hotspots_eval import evaluate_hotspots

pytestmark = pytest.mark.slow


def run(tmp_path_factory, scenario: str, hours: float = 6.0) -> dict:
    out = tmp_path_factory.mktemp(f"sim-{scenario}")
    simulate.write_files(simulate.SimConfig(subscribers=20_000, hours=hours, seed=42, scenario=scenario), out)
    return evaluate_hotspots(out)


def test_default_scenario_hot_spots_are_found_fast_and_only_them(tmp_path_factory):
    r = run(tmp_path_factory, "default")
    assert r["incidents"] >= 8
    assert r["recall"] >= 0.95, r["missed"]
    assert r["precision"] >= 0.95, r["false_alert_examples"]
    assert r["median_delay_windows"] <= 2


def test_quiet_scenario_raises_no_hot_spot_and_no_drift(tmp_path_factory):
    r = run(tmp_path_factory, "quiet")
    assert r["false_alerts_per_1000_cell_hours"] <= 1.0, r["false_alert_examples"]
    assert r["drift"]["drift_alerts"] == 0, r["drift"]["alerts"]


def test_injected_shift_is_detected_within_five_minutes(tmp_path_factory):
    r = run(tmp_path_factory, "drift", hours=3.0)
    assert r["drift"]["shifts"] == 1 and r["drift"]["detected"] == 1, r["drift"]
    assert max(r["drift"]["delays_s"]) <= 300
