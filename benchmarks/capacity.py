"""The capacity model of ``docs/CAPACITY.md``: workers, partitions, Kafka throughput and memory for a
subscriber count, from measured per-worker throughput and per-subscriber sizes.

    python benchmarks/capacity.py --events-per-s 20000 --subscribers 10e6 100e6
    python benchmarks/capacity.py --results benchmarks/results.json      # X from the benchmark run
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

EVENTS_PER_SUBSCRIBER_HOUR = 10.0 + 0.55 + 0.02  # sessions, app interactions, tickets and surveys
BUSY_HOUR = 1.7           # evening peak over the 24 h mean (simulator's diurnal curve)
UTILISATION = 0.6         # provision the busy hour at 60 % of a worker's throughput
RECORD_BYTES = 346        # input JSON record (default simulator run)
STATE_BYTES = 375         # serialised state per subscriber (bench_memory.py)
CACHE_BYTES = 1450        # in-memory state per cached subscriber (bench_memory.py)
CACHE_PER_PARTITION = 250_000
VIEW_BYTES = 4935         # outreach view per scored subscriber, full history (bench_memory.py --view)
SCORES_PER_EVENT = 0.14
SCORE_BYTES = 420


def plan(subscribers: float, events_per_s_per_worker: float) -> dict:
    mean = subscribers * EVENTS_PER_SUBSCRIBER_HOUR / 3600
    busy = mean * BUSY_HOUR
    workers = math.ceil(busy / (UTILISATION * events_per_s_per_worker))
    partitions = 1 << math.ceil(math.log2(max(2 * workers, 8)))
    per_worker = subscribers / workers
    cached = min(per_worker, CACHE_PER_PARTITION * partitions / workers)
    return {
        "subscribers": int(subscribers), "events_per_s_mean": round(mean), "events_per_s_busy": round(busy),
        "workers": workers, "partitions": partitions,
        "kafka_in_mb_s": round(busy * RECORD_BYTES / 1e6, 1),
        "risk_scores_mb_s": round(busy * SCORES_PER_EVENT * SCORE_BYTES / 1e6, 1),
        "changelog_mb_s": round(busy * STATE_BYTES / 1e6, 1),
        "state_gb": round(subscribers * STATE_BYTES / 1e9, 1),
        "state_per_worker_gb": round(per_worker * STATE_BYTES / 1e9, 2),
        "cache_per_worker_gb": round(cached * CACHE_BYTES / 1e9, 2),
        "view_per_worker_gb": round(subscribers * VIEW_BYTES / 1e9, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events-per-s", type=float, help="end-to-end events/s of one worker process")
    ap.add_argument("--results", type=Path, help="take it from a benchmarks/run.py results.json")
    ap.add_argument("--subscribers", type=float, nargs="+", default=[10e6, 100e6])
    args = ap.parse_args()
    x = args.events_per_s
    if args.results:
        runs = json.loads(args.results.read_text())["runs"]
        x = next(r["events_per_s"] for r in runs if r["system"] == "satmon" and r["workload"] == "end-to-end-full")
    if not x:
        ap.error("give --events-per-s or --results")
    print(json.dumps({"events_per_s_per_worker": x, "plans": [plan(n, x) for n in args.subscribers]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
