"""Simulator throughput and memory: events/s writing files on one core, and peak RSS by population.

    python benchmarks/bench_simulate.py                      # 20,000 subscribers x 6 h, default scenario
    python benchmarks/bench_simulate.py --subscribers 1000000 --hours 0.05
    python benchmarks/bench_simulate.py --scale              # 100k / 1M / 10M subscribers, one process each

Prints one JSON object per run: records, seconds, events_per_s, peak_rss_mb, population_mb.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one(subscribers: int, hours: float, scenario: str, out: str | None) -> dict:
    from monitor.sim import simulate

    cfg = simulate.SimConfig(subscribers=subscribers, hours=hours, scenario=scenario)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sim_holder = {}
        manifest = simulate.write_files(cfg, out or tmp, progress=lambda sim: sim_holder.setdefault("sim", sim))
        elapsed = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(out or tmp).glob("*.jsonl"))
    records = sum(c["lines"] for c in manifest["counts"].values())
    sim = sim_holder.get("sim")
    return {
        "subscribers": subscribers, "hours": hours, "scenario": scenario, "cells": manifest["cells"],
        "records": records, "seconds": round(elapsed, 3), "events_per_s": round(records / elapsed),
        "output_mb": round(size / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "population_mb": round(sim.world.nbytes() / 2**20, 1) if sim else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=20_000)
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--scenario", default="default")
    ap.add_argument("--out", help="keep the files here (default: a temporary directory)")
    ap.add_argument("--scale", action="store_true", help="peak RSS at 100k, 1M and 10M subscribers (tiny --hours)")
    args = ap.parse_args()
    if not args.scale:
        print(json.dumps(one(args.subscribers, args.hours, args.scenario, args.out)))
        return
    for n, hours in ((100_000, 0.1), (1_000_000, 0.02), (10_000_000, 0.01)):
        proc = subprocess.run([sys.executable, __file__, "--subscribers", str(n), "--hours", str(hours),
                               "--scenario", args.scenario], capture_output=True, text=True, check=True)
        print(proc.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
