"""Peer: a Faust agent written the usual way, doing satmon's per-event work through the same core.

``async for event in stream`` over the three input topics (Faust's own consumer path, one event at
a time), msgspec decode, the partition's risk core on that one event, the subscriber's state written
to a Faust Table (``table[key] = state``, one changelog record per event), scores sent with
``topic.send``. Same broker settings as the satmon worker. Prints one JSON line when ``--expect``
events were processed, then stops.

    python benchmarks/peers/faust_plain.py --broker kafka://127.0.0.1:9092 --expect 200000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time

import faust
import msgspec

from common import INPUTS, core_factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--app-id", default=f"bench-faust-plain-{os.getpid()}")
    parser.add_argument("--web-port", type=int, default=6099)
    args = parser.parse_args()

    from monitor.records import events as ev
    from monitor.worker.app import BROKER_SETTINGS

    core_name, make_core = core_factory()
    settings = {k: v for k, v in BROKER_SETTINGS.items() if k != "table_standby_replicas"}
    app = faust.App(args.app_id, broker=args.broker, store="memory://", datadir=tempfile.mkdtemp(),
                    topic_partitions=args.partitions, web_port=args.web_port, **settings)
    topics = app.topic(*INPUTS, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
    scores_topic = app.topic("risk-scores", key_serializer="raw", value_serializer="raw")
    table = app.Table("subscriber-state", partitions=args.partitions, key_type=bytes, value_type=bytes)
    decoders = {t: ev.decoder_for(s) for t, s in ev.INPUT_TOPICS.items()}
    cores: dict[int, object] = {}
    stats = {"n": 0, "t0": None}

    @app.agent(topics)
    async def score(stream):  # the usual shape: one event at a time
        async for event in stream.events():
            msg = event.message
            if stats["t0"] is None:
                stats["t0"] = time.perf_counter()
            try:
                decoded = decoders[msg.topic].decode(event.value)
            except (msgspec.DecodeError, ValueError):
                decoded = None
            if decoded is not None:
                core = cores.get(msg.partition)
                if core is None:
                    core = cores[msg.partition] = make_core(msg.partition, lambda s: table.get(s.encode()))
                for sc in core.process_batch([decoded]):
                    await scores_topic.send(key=sc.subscriber_id.encode(), value=ev.encode(sc))
                for key, value in core.take_dirty().items():
                    if value is None:
                        table.pop(key.encode(), None)
                    else:
                        table[key.encode()] = value
            stats["n"] += 1
            if stats["n"] >= args.expect:
                elapsed = time.perf_counter() - stats["t0"]
                print(json.dumps({"contender": "faust-plain", "events": stats["n"], "seconds": round(elapsed, 3),
                                  "events_per_s": round(stats["n"] / elapsed), "cores": 1, "core": core_name}),
                      flush=True)
                os.kill(os.getpid(), signal.SIGTERM)

    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
