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
                        help="scenario name in monitor/sim/scenarios (default, quiet, drift) or a YAML path")
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
    parser.add_argument("--world", choices=("v3", "v2"), default="v3",
                        help="v3 (default): per-seed drivers, outcomes with a lead, port-outs (monitor/sim/world.py); "
                             "v2: the earlier latent-satisfaction people")
    parser.add_argument("--burn-in-hours", type=float, default=None,
                        help="emitted hours before the evaluated --hours, for the model to warm up "
                             "(default 24 with --out, 0 with --broker)")
    parser.add_argument("--follow-up-hours", type=float, default=None,
                        help="hours the world runs on unseen after the last record, recording outcomes only, so "
                             "that every list instant's horizon lies in the run (default 168 with --out, 0 with --broker)")
    parser.add_argument("--treatment", type=float, default=0.0, metavar="SHARE",
                        help="v3: offer outreach each day at 10:00 local to this share of subscribers (the most "
                             "dissatisfied), half of them held out: ground_truth/treatment.jsonl (default 0)")
    parser.add_argument("--no-account-fields", dest="account_fields", action="store_false",
                        help="v3: leave the account's dates (customer_since_ms, contract_end_ms: the operator's "
                             "CRM) out of the app and care records")
    parser.add_argument("--sessions-per-hour", type=float, default=None,
                        help="network sessions per subscriber and hour at the daily mean load (default 10)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")


def _start_ms(text: str | None) -> tuple[int | None, bool]:
    import datetime as dt
    import time

    from monitor.records.errors import ConfigError

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

    from monitor.sim import simulate
    from monitor.records.errors import ConfigError

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
    files_only = bool(args.out) and not args.broker
    burn_in = args.burn_in_hours if args.burn_in_hours is not None else (24.0 if files_only else 0.0)
    follow_up = args.follow_up_hours if args.follow_up_hours is not None else (168.0 if files_only else 0.0)
    if args.world == "v2":
        follow_up = 0.0 if args.follow_up_hours is None else follow_up
    extra = {} if args.sessions_per_hour is None else {"sessions_per_hour": args.sessions_per_hour}
    config = simulate.SimConfig(
        subscribers=args.subscribers, hours=hours, seed=args.seed, scenario=args.scenario, start_ms=start_ms,
        step_s=args.step_s or (5.0 if live else None), cells=args.cells, utc_offset_h=args.utc_offset_h,
        malformed_share=args.malformed_share,
        duplicate_share=args.duplicate_share, late_share=args.late_share, world=args.world,
        burn_in_hours=burn_in, followup_hours=follow_up if hours else 0.0, treatment_share=args.treatment,
        account_fields=args.account_fields, **extra)
    t0 = time.perf_counter()
    if args.broker:
        if not args.broker.startswith("kafka://"):
            raise ConfigError([f"--broker: expected kafka://host:port, got {args.broker!r}"])
        from monitor.worker import simfeed

        try:
            manifest = asyncio.run(simfeed.produce(config, args.broker[len("kafka://"):], rate=args.rate,
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
    print("  labels: " + ", ".join(f"{k} {v:,d}" for k, v in manifest["labels"].items())
          + (" (including the unseen follow-up)" if config.followup_hours else ""))
    if config.burn_in_hours or config.followup_hours:
        print(f"  burn-in {config.burn_in_hours:g} h (emitted, not evaluated), follow-up {config.followup_hours:g} h "
              "(outcomes only)")
    print(f"  {total:,d} records in {elapsed:.1f} s ({total / max(elapsed, 1e-9):,.0f}/s)"
          + (f" -> {args.out}" if args.out else ""))
    return 0
