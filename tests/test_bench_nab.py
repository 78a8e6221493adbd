"""benchmarks/bench_nab.py: NAB's results layout, and a scored run on a few series by NAB's own scorer."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_nab  # noqa: E402

needs_nab = pytest.mark.skipif(not (bench_nab.NAB_DIR / "run.py").exists(),
                               reason=f"NAB not found at {bench_nab.NAB_DIR}")


def test_results_layout_is_nabs(tmp_path):
    out = bench_nab.write_results(tmp_path, "satmon", Path("realTweets/Twitter_volume_KO.csv"),
                                  ["2015-02-26 21:42:53", "2015-02-26 21:47:53"], ["5", "7"], [0.0, 1.7])
    assert out == tmp_path / "satmon" / "realTweets" / "satmon_Twitter_volume_KO.csv"
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"]
    assert [r["anomaly_score"] for r in rows] == ["0.000000", "1.000000"]      # clipped to [0, 1]


def test_detectors_are_named_as_nab_requires():
    assert all(name.isalpha() for name in bench_nab.DETECTORS)


def test_absent_nab_skips_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_nab, "NAB_DIR", tmp_path / "nowhere")
    assert bench_nab.main(["--out", "-"]) == 0
    assert "skipping the NAB benchmark" in capsys.readouterr().out


@needs_nab
@pytest.mark.slow
def test_a_few_series_scored_by_nabs_own_scorer():
    try:
        bench_nab.ensure_venv()
    except (subprocess.CalledProcessError, OSError) as err:          # no package index reachable
        pytest.skip(f"cannot create NAB's scorer environment: {err}")
    result = bench_nab.run(["satmon", "ewmaZ"], limit=3, workers=1)
    rows = result["detectors"]
    assert set(rows) == {"satmon", "ewmaZ", "windowedGaussian"} and result["series"] == 3
    for name in ("satmon", "ewmaZ"):
        assert set(bench_nab.PROFILES) <= set(rows[name]) and rows[name]["us_per_event"] > 0
        assert all(-100.0 <= rows[name][p] <= 100.0 for p in bench_nab.PROFILES)
