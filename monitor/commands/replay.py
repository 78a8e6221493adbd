"""``satmon replay DIR``: run simulator (or recorded) files through the same risk core as the worker."""

from __future__ import annotations

import argparse
import sys

HELP = "replay input JSONL files through the risk core offline; print events/s, optionally write scores"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.config import add_flags

    parser.add_argument("dir", help="directory with network-events.jsonl, care-tickets.jsonl, app-interactions.jsonl")
    parser.add_argument("--out", help="write every emitted risk_score.v1 record to this JSONL file")
    add_flags(parser, ("partitions", "at_risk_threshold", "label_horizon_hours", "state_ttl_days"))


def run(args: argparse.Namespace) -> int:
    import time

    from monitor.config import from_args
    from monitor.evaluation import read_events, replay
    from monitor.events import encode

    settings = from_args(args)
    t0 = time.perf_counter()
    events, invalid = read_events(args.dir)
    out = open(args.out, "wb") if args.out else None
    n = 0
    try:
        for score in replay(events, partitions=settings.partitions, settings=settings):
            n += 1
            if out:
                out.write(encode(score) + b"\n")
    finally:
        if out:
            out.close()
    dt = time.perf_counter() - t0
    print(f"{len(events):,} events ({invalid:,} invalid lines skipped) -> {n:,} scores in {dt:.1f} s "
          f"({len(events) / dt:,.0f} events/s, decoding included)", file=sys.stderr)
    return 0
