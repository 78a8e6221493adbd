"""``benchmarks/bench_learnability.py`` on a tiny world: it simulates through ``satmon simulate``,
replays through the worker's pipeline, captures the cores' labels and writes every figure docs/MODEL.md
quotes, and reuses a world already in ``--work``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def _harness():
    spec = importlib.util.spec_from_file_location("bench_learnability", ROOT / "benchmarks" / "bench_learnability.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_learnability", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(600)
def test_tiny_world_reports_every_figure(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    bench = _harness()
    out = tmp_path / "learnability.json"
    args = ["--seeds", "14", "--subscribers", "150", "--hours", "48", "--work", str(tmp_path / "work"),
            "--out", str(out)]
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    assert report["git_commit"] and report["simulator"]["world_version"] == 3
    (w,) = report["worlds"]
    assert w["seed"] == 14 and w["events"] > 0
    # the labels come from the cores: one snapshot a subscriber at a time, matured after 24 h
    assert 0 < w["labels"]["known_at_middle"] <= w["labels"]["matured"]
    assert w["labels"]["positive"]["churn"] <= w["port_outs"]["with_follow_up"]
    assert w["snapshots"]["instants_first_half"] > 0 and w["snapshots"]["instants_second_half"] > 0
    for system in ("model", "oracle", "oracle_blind"):
        assert system in w["churn_7d"]
    for name, scheme in w["schemes"].items():
        # a 72 h horizon matures nothing before the second half of a 48 h world
        assert scheme["labels_learned"] > 0 or scheme["horizon_h"] > 24, name
        auc = scheme["roc_auc_second_half"]
        assert auc is None or 0.0 <= auc <= 1.0
    # a world already in --work is reused, not simulated again
    world_dir = next((tmp_path / "work").iterdir())
    stamp = (world_dir / "manifest.json").stat().st_mtime_ns
    again = bench.simulate(tmp_path / "work", 14, subscribers=150, hours=48, sessions_per_hour=bench.SESSIONS_PER_HOUR)
    assert again == world_dir and (world_dir / "manifest.json").stat().st_mtime_ns == stamp
