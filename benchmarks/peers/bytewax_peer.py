"""Peer: a Bytewax dataflow doing satmon's per-event work through the same core.

``KafkaSource`` over the three input topics (``tail=False``: the flow ends at the end of every
partition), keyed by subscriber id, one ``stateful_map`` step per event: msgspec decode, the
partition's risk core on that one event, the subscriber's state kept as Bytewax's per-key state,
scores flattened into ``KafkaSinkMessage`` s for ``risk-scores``. State is made durable the Bytewax
way (the counterpart of faust-plain's changelogged Table): a recovery store (SQLite, one partition)
snapshotted at the end of every epoch, 1 s like satmon's commit interval (``--epoch-s``; 0 turns
recovery off). One worker (``run_main``): one core, like the other peers. Prints one JSON line at
the end.

Bytewax's per-key state is scoped to the key being processed, so the core's TTL evictions of *other*
subscribers (30 days of event time, never reached in a benchmark run) stay in the core's memory.

    python benchmarks/peers/bytewax_peer.py --bootstrap 127.0.0.1:9092 --expect 200000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from common import INPUTS, core_factory


def build(args: argparse.Namespace, stats: dict[str, Any]) -> Any:
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
    from bytewax.dataflow import Dataflow

    from monitor.records import events as ev

    core_name, make_core = core_factory()
    stats["core"] = core_name
    decoders = {t: ev.decoder_for(s) for t, s in ev.INPUT_TOPICS.items()}
    cores: dict[int, Any] = {}
    current: dict[str, Any] = {"key": None, "state": None}

    def load(subscriber_id: str) -> bytes | None:
        # the core asks only for the subscriber of the event being processed (the step's key)
        return current["state"] if subscriber_id == current["key"] else None

    def score(state: bytes | None, msg: Any) -> tuple[bytes | None, list[Any]]:
        if stats["t0"] is None:
            stats["t0"] = time.perf_counter()
        stats["n"] += 1
        try:
            decoded = decoders[msg.topic].decode(msg.value)
        except (msgspec.DecodeError, ValueError):
            decoded = None
        if decoded is None:
            stats["t1"] = time.perf_counter()
            return state, []
        core = cores.get(msg.partition)
        if core is None:
            core = cores[msg.partition] = make_core(msg.partition, load)
        key = decoded.subscriber_id
        current["key"], current["state"] = key, state
        out = [KafkaSinkMessage(sc.subscriber_id.encode(), ev.encode(sc)) for sc in core.process_batch([decoded])]
        for sid, blob in core.take_dirty().items():
            if sid == key:
                state = blob  # None (evicted) drops the key's state
        stats["t1"] = time.perf_counter()
        return state, out

    def key_of(msg: Any) -> str:
        # the records are keyed by subscriber id; a malformed record may have no key
        return msg.key.decode(errors="replace") if msg.key else ""

    flow = Dataflow("bench-bytewax")
    # a broker error stops the flow (raise_on_errors): the driver records it instead of a number
    source = KafkaSource([args.bootstrap], list(INPUTS), tail=False, batch_size=args.batch_size)
    stream = op.input("inputs", flow, source)
    keyed = op.key_on("key", stream, key_of)
    scored = op.stateful_map("score", keyed, score)
    outputs = op.flat_map("scores", scored, lambda kv: kv[1])
    op.output("risk-scores", outputs, KafkaSink([args.bootstrap], "risk-scores"))
    return flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1000, help="KafkaSource batch size (its default)")
    parser.add_argument("--epoch-s", type=float, default=1.0,
                        help="epoch length = state snapshot interval (0: no recovery store)")
    args = parser.parse_args()
    from datetime import timedelta

    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import run_main

    stats: dict[str, Any] = {"n": 0, "t0": None, "t1": None}
    with tempfile.TemporaryDirectory(prefix="bench-bytewax-") as db_dir:
        options: dict[str, Any] = {}
        if args.epoch_s > 0:
            init_db_dir(Path(db_dir), 1)
            options = {"epoch_interval": timedelta(seconds=args.epoch_s), "recovery_config": RecoveryConfig(db_dir)}
        run_main(build(args, stats), **options)
    if stats["n"] < args.expect:
        raise SystemExit(f"bytewax reached the end of the partitions after {stats['n']} of {args.expect} events")
    elapsed = stats["t1"] - stats["t0"]
    print(json.dumps({"contender": "bytewax", "events": stats["n"], "seconds": round(elapsed, 3),
                      "events_per_s": round(stats["n"] / elapsed), "cores": 1, "core": stats["core"],
                      "recovery_epoch_s": args.epoch_s or None}), flush=True)


if __name__ == "__main__":
    main()
