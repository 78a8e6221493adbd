"""Peer: a Quix Streams application doing satmon's per-event work through the same core.

The three input topics are read as ``StreamingDataFrame`` s and concatenated (Quix Streams then
aligns them by timestamp), one stateful ``apply`` per event: msgspec decode, the partition's risk
core on that one event, the subscriber's state written to Quix's key-scoped RocksDB state (with its
changelog topic, the equivalent of faust-plain's Table), scores expanded into rows and produced to
``risk-scores`` with ``to_topic``. Consumer-group settings as satmon's worker on Tansu (6 s session
timeout: Tansu holds JoinGroup for half of it; librdkafka's 45 s default would cost ~22 s per join).
Prints one JSON line when ``--expect`` events were processed, then stops.

Quix state is scoped to the message key (the subscriber id), so only the current subscriber's state
can be written from its event; the core's TTL evictions of *other* subscribers (30 days of event
time, never reached in a benchmark run) are left in the core's memory.

    python benchmarks/peers/quixstreams_peer.py --bootstrap 127.0.0.1:9092 --expect 200000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import msgspec

from common import INPUTS, core_factory

STATE_KEY = b"s"  # one state entry per subscriber (Quix state is already scoped to the message key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--group", default=f"bench-quixstreams-{os.getpid()}")
    parser.add_argument("--no-changelog", action="store_true", help="local RocksDB state only (no changelog topic)")
    args = parser.parse_args()

    from quixstreams import Application
    from quixstreams.context import message_context
    from quixstreams.models.serializers import Serializer
    from quixstreams.models.topics import TopicAdmin, TopicManager
    from quixstreams.state.rocksdb import RocksDBOptions

    from monitor.records import events as ev

    class ScoreSerializer(Serializer):
        """Rows after the expand are ``(key, encoded score)``: the value is the second half."""

        def __call__(self, value: tuple[bytes, bytes], ctx: Any) -> bytes:
            return value[1]

    class TansuTopicManager(TopicManager):
        """Tansu's DescribeConfigs returns only the configs a topic was created with (none for
        satmon's topics), and Quix derives its changelog topics from the inputs' ``retention.ms``:
        read a missing one as Kafka's default. A no-op on a real Kafka, which always returns it."""

        def _fetch_topic(self, topic: Any) -> Any:
            fetched = super()._fetch_topic(topic)
            fetched.broker_config.extra_config.setdefault("retention.ms", "604800000")
            return fetched

    core_name, make_core = core_factory()
    state_dir = tempfile.mkdtemp(prefix="bench-quixstreams-")
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=1.0,  # as satmon's broker_commit_interval
        state_dir=state_dir,
        # state values are the core's serialized bytes already: store them as they are
        rocksdb_options=RocksDBOptions(dumps=lambda v: v, loads=lambda b: b),
        use_changelog_topics=not args.no_changelog,
        processing_guarantee="at-least-once",  # Tansu fails InitProducerId: no transactions
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        loglevel="WARNING",
        topic_manager=TansuTopicManager(topic_admin=TopicAdmin(broker_address=args.bootstrap),
                                        consumer_group=args.group),
    )
    inputs = [app.topic(t, key_deserializer="bytes", value_deserializer="bytes") for t in INPUTS]
    scores_topic = app.topic("risk-scores", key_serializer="bytes", value_serializer=ScoreSerializer())
    decoders = {t: ev.decoder_for(s) for t, s in ev.INPUT_TOPICS.items()}
    cores: dict[int, Any] = {}
    current: dict[str, Any] = {"key": None, "state": None}
    stats: dict[str, Any] = {"n": 0, "t0": None, "result": None}

    def load(subscriber_id: str) -> bytes | None:
        # the core asks only for the subscriber of the event being processed (the message key)
        if subscriber_id == current["key"]:
            return current["state"].get(STATE_KEY)
        return None

    def score(value: bytes, key: bytes, timestamp: int, headers: Any, state: Any) -> list[tuple[bytes, bytes]]:
        if stats["t0"] is None:
            stats["t0"] = time.perf_counter()
        ctx = message_context()
        out: list[tuple[bytes, bytes]] = []
        try:
            decoded = decoders[ctx.topic].decode(value)
        except (msgspec.DecodeError, ValueError):
            decoded = None
        if decoded is not None:
            core = cores.get(ctx.partition)
            if core is None:
                core = cores[ctx.partition] = make_core(ctx.partition, load)
            current["key"] = key.decode() if isinstance(key, bytes) else key
            current["state"] = state
            for sc in core.process_batch([decoded]):
                out.append((sc.subscriber_id.encode(), ev.encode(sc)))
            for sid, blob in core.take_dirty().items():
                if sid != current["key"]:
                    continue  # another subscriber's eviction: not writable from this key's state
                if blob is None:
                    state.delete(STATE_KEY)
                else:
                    state.set(STATE_KEY, blob)
        stats["n"] += 1
        if stats["n"] >= args.expect and stats["result"] is None:
            elapsed = time.perf_counter() - stats["t0"]
            stats["result"] = {"contender": "quixstreams", "events": stats["n"], "seconds": round(elapsed, 3),
                               "events_per_s": round(stats["n"] / elapsed), "cores": 1, "core": core_name,
                               "changelog": not args.no_changelog}
            app.stop()
        return out

    sdf = app.dataframe(inputs[0])
    for topic in inputs[1:]:
        sdf = sdf.concat(app.dataframe(topic))
    sdf = sdf.apply(score, stateful=True, expand=True, metadata=True)
    sdf.to_topic(scores_topic, key=lambda row: row[0])
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    try:
        app.run()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    if stats["result"] is None:
        raise SystemExit(f"quixstreams stopped after {stats['n']} of {args.expect} events")
    print(json.dumps(stats["result"]), flush=True)


if __name__ == "__main__":
    main()
