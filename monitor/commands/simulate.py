"""``satmon simulate``: synthetic telecom traffic with injected incidents, to files or to Kafka.

Files: ``--out DIR`` writes ``network-events.jsonl``, ``care-tickets.jsonl``,
``app-interactions.jsonl`` and the ground truth (``manifest.json``, ``cells.json``,
``ground_truth/``). Kafka: ``--broker kafka://host:port`` sends the same records keyed by
subscriber id (``--rate`` paces, ``--start now`` tracks the wall clock, ``--loop`` runs until
stopped). See ``docs/SIMULATOR.md``.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "generate synthetic network, care and app streams with injected incidents and ground truth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subscribers", type=int, default=20_000, help="population size (default 20000)")
    parser.add_argument("--hours", type=float, default=6.0, help="simulated hours; 0 = until stopped (default 6)")
    parser.add_argument("--loop", action="store_true", help="run until stopped (same as --hours 0)")
    parser.add_argument("--seed", type=int, default=42, help="random seed: same seed, same bytes (default 42)")
    parser.add_argument("--scenario", default="default",
                        help="scenario name in monitor/scenarios (default, quiet, drift) or a YAML path")
    parser.add_argument("--out", help="directory for the JSONL streams and the ground truth")
    parser.add_argument("--broker", help="send to Kafka at kafka://host:port[,host:port] instead of (or with --out: "
                                         "besides the ground truth in) files")
    parser.add_argument("--rate", type=float, help="pace Kafka output to N records/s (default: as fast as possible)")
    parser.add_argument("--start", help="event time of the start: 'now' (tracks the wall clock, for live demos), "
                                        "epoch ms, or ISO-8601 (default 2025-03-03T06:00Z)")
    parser.add_argument("--history", default=None,
                        help="with --start now: begin this long ago (e.g. 80m, 1h30m), send that history as fast as "
                             "the broker takes it, then follow the wall clock")
    parser.add_argument("--step-s", type=float, default=None, help="simulation step in seconds (default 60, less for huge populations; 5 with --start now)")
    parser.add_argument("--cells", type=int, help="number of cells (default ~subscribers/45)")
    parser.add_argument("--utc-offset-h", type=float, default=0.0,
                        help="subscribers' local time minus UTC, hours: the daily load curve (trough at 04:00 local) "
                             "follows local time (default 0)")
    parser.add_argument("--malformed-share", type=float, default=0.001, help="share of malformed records (default 0.001)")
    parser.add_argument("--duplicate-share", type=float, default=0.002, help="share of re-sent duplicates (default 0.002)")
    parser.add_argument("--late-share", type=float, default=0.003, help="share of late records (default 0.003)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")


def _start_ms(text: str | None) -> tuple[int | None, bool]:
    import datetime as dt
    import time

    from monitor.errors import ConfigError

    if not text:
        return None, False
    if text == "now":
        return int(time.time() * 1000), True
    if text.isdigit():
        return int(text), False
    try:
        return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000), False
    except ValueError:
        raise ConfigError([f"--start: expected 'now', epoch ms or an ISO time, got {text!r}"]) from None


#: printed (and flushed) once the history is sent and the run follows the wall clock: ``satmon demo``
#: waits for it
CAUGHT_UP = "caught up with the wall clock"


def _caught_up(sent: int) -> None:
    print(f"{CAUGHT_UP}: {sent} records of history sent", flush=True)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from monitor import simulate
    from monitor.errors import ConfigError

    start_ms, live = _start_ms(args.start)
    if args.history:
        if not live:
            raise ConfigError(["--history needs --start now"])
        start_ms -= simulate.duration_ms(args.history, "--history")
    hours = 0.0 if args.loop else args.hours
    if not args.out and not args.broker:
        raise ConfigError(["give --out DIR (files) and/or --broker kafka://host:port"])
    if hours == 0 and not args.broker:
        raise ConfigError(["--hours 0 / --loop needs --broker (files would grow without end)"])
    config = simulate.SimConfig(
        subscribers=args.subscribers, hours=hours, seed=args.seed, scenario=args.scenario, start_ms=start_ms,
        step_s=args.step_s or (5.0 if live else None), cells=args.cells, utc_offset_h=args.utc_offset_h,
        malformed_share=args.malformed_share,
        duplicate_share=args.duplicate_share, late_share=args.late_share)
    t0 = time.perf_counter()
    if args.broker:
        if not args.broker.startswith("kafka://"):
            raise ConfigError([f"--broker: expected kafka://host:port, got {args.broker!r}"])
        try:
            manifest = asyncio.run(simulate.produce(config, args.broker[len("kafka://"):], rate=args.rate,
                                                    realtime=live, out_dir=args.out, on_caught_up=_caught_up))
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
            return 130
    else:
        manifest = simulate.write_files(config, args.out)
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps(manifest, indent=1))
        return 0
    total = sum(c["lines"] for c in manifest["counts"].values())
    print(f"scenario {manifest['scenario']}, seed {manifest['seed']}: {manifest['subscribers']} subscribers, "
          f"{manifest['cells']} cells, {(manifest['end_ms'] - manifest['start_ms']) / 3.6e6:.2f} h simulated")
    for topic, c in manifest["counts"].items():
        print(f"  {topic:18s} {c['lines']:>10,d} records ({c['clean']:,d} clean events)")
    print("  events by kind: " + ", ".join(f"{k} {v:,d}" for k, v in manifest["events_by_kind"].items()))
    print("  injected faults: " + ", ".join(f"{k} {sum(v.values()):,d}" for k, v in manifest["faults"].items()))
    print("  incidents: " + (", ".join(f"{k} {v}" for k, v in manifest["incidents"].items()) or "none"))
    print("  labels: " + ", ".join(f"{k} {v:,d}" for k, v in manifest["labels"].items()))
    print(f"  {total:,d} records in {elapsed:.1f} s ({total / max(elapsed, 1e-9):,.0f}/s)"
          + (f" -> {args.out}" if args.out else ""))
    return 0
