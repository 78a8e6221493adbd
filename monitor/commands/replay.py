"""``satmon replay DIR``: run simulator (or recorded) files through the worker's pipeline, offline."""

from __future__ import annotations

import argparse
import sys

HELP = "replay input JSONL files through the worker's pipeline offline; print events/s, optionally write scores"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.config import add_flags

    parser.add_argument("dir", help="directory with network-events.jsonl, care-tickets.jsonl, app-interactions.jsonl")
    parser.add_argument("--out", help="write every emitted risk_score.v1 record to this JSONL file")
    parser.add_argument("--labels-csv", help="write every label learned, with the feature snapshot it was joined to, "
                        "as a CSV that `satmon model warm-start` reads (columns: subscriber_id, label, kind, features)")
    parser.add_argument("--no-hotspots", action="store_true", help="skip the hot-spot windows and detectors")
    add_flags(parser, ("partitions", "max_poll_records", "at_risk_threshold", "label_horizon_hours",
                       "state_ttl_days", "model_checkpoint"))


def run(args: argparse.Namespace) -> int:
    import time

    from monitor.config import from_args
    from monitor.records.events import encode
    from monitor.replay import run as replay
    from monitor.tuning import tune_gc

    settings = from_args(args)
    tune_gc()  # as the worker does
    out = open(args.out, "wb") if args.out else None
    labels = open(args.labels_csv, "w", newline="") if args.labels_csv else None
    t0 = time.perf_counter()
    try:
        on_label = on_scores = None
        if labels:
            import csv

            from monitor.scoring.features import FEATURES

            writer = csv.writer(labels)
            writer.writerow(("subscriber_id", "label", "kind", *FEATURES))

            def on_label(join) -> None:
                writer.writerow((join.subscriber_id, int(join.y), join.kind, *(f"{v:.6g}" for v in join.x)))

        if out:
            def on_scores(scores) -> None:
                for score in scores:
                    out.write(encode(score) + b"\n")

        result = replay(args.dir, settings=settings, on_label=on_label, on_scores=on_scores,
                        hotspots=not args.no_hotspots)
    finally:
        if out:
            out.close()
        if labels:
            labels.close()
    dt = time.perf_counter() - t0
    alerts = f", {len(result.alerts):,} alert records" if not args.no_hotspots else ""
    print(f"{result.records:,} records ({result.dead_letters:,} dead-lettered) -> {result.events:,} events, "
          f"{result.scores:,} scores{alerts} in {dt:.1f} s ({result.records / dt:,.0f} records/s, reading and "
          f"decoding included; {result.batches:,} batches of up to {settings.max_poll_records:,})", file=sys.stderr)
    stages = result.pipeline.stage_clock.seconds
    if result.records and stages:
        # the same stages as a worker's satmon_worker_stage_seconds_total
        per = ", ".join(f"{k} {v / result.records * 1e6:.1f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]))
        print(f"µs per record by stage: {per}; reading the files and the rest "
              f"{(dt - sum(stages.values())) / result.records * 1e6:.1f}", file=sys.stderr)
    return 0
