"""``satmon replay DIR``: run simulator (or recorded) files through the same risk core as the worker."""

from __future__ import annotations

import argparse
import sys

HELP = "replay input JSONL files through the risk core offline; print events/s, optionally write scores"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.config import add_flags

    parser.add_argument("dir", help="directory with network-events.jsonl, care-tickets.jsonl, app-interactions.jsonl")
    parser.add_argument("--out", help="write every emitted risk_score.v1 record to this JSONL file")
    parser.add_argument("--labels-csv", help="write every label learned, with the feature snapshot it was joined to, "
                        "as a CSV that `satmon model warm-start` reads (columns: subscriber_id, label, kind, features)")
    add_flags(parser, ("partitions", "at_risk_threshold", "label_horizon_hours", "state_ttl_days", "model_checkpoint"))


def run(args: argparse.Namespace) -> int:
    import time

    from monitor.config import from_args
    from monitor.evaluation import read_events, replay
    from monitor.events import encode

    settings = from_args(args)
    t0 = time.perf_counter()
    events, invalid = read_events(args.dir)
    from monitor.fastpath import tune_gc

    tune_gc()  # as the worker: the loaded events are frozen, not traversed by every collection
    out = open(args.out, "wb") if args.out else None
    labels = open(args.labels_csv, "w", newline="") if args.labels_csv else None
    n = 0
    try:
        on_label = None
        if labels:
            import csv

            from monitor.features import FEATURES

            writer = csv.writer(labels)
            writer.writerow(("subscriber_id", "label", "kind", *FEATURES))

            def on_label(join) -> None:
                writer.writerow((join.subscriber_id, int(join.y), join.kind, *(f"{v:.6g}" for v in join.x)))

        for score in replay(events, partitions=settings.partitions, settings=settings, on_label=on_label):
            n += 1
            if out:
                out.write(encode(score) + b"\n")
    finally:
        if out:
            out.close()
        if labels:
            labels.close()
    dt = time.perf_counter() - t0
    print(f"{len(events):,} events ({invalid:,} invalid lines skipped) -> {n:,} scores in {dt:.1f} s "
          f"({len(events) / dt:,.0f} events/s, decoding included)", file=sys.stderr)
    return 0
