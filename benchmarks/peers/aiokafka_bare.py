"""Peer: a bare aiokafka ``getmany`` loop doing satmon's per-event work, without Faust.

Consumes the three input topics (manual assignment of every partition, no group), decodes with
msgspec, runs one risk core per partition, encodes and produces the scores, and commits nothing
(no group): the ceiling for "same work, no framework". Prints one JSON line.

    python benchmarks/peers/aiokafka_bare.py --bootstrap 127.0.0.1:9092 --expect 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from common import INPUTS, core_factory


async def main(args: argparse.Namespace) -> dict:
    from monitor.records import events as ev

    core_name, make_core = core_factory()
    consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", max_poll_records=2000, fetch_max_wait_ms=100)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    tps = [TopicPartition(t, p) for t in INPUTS for p in range(args.partitions)]
    consumer.assign(tps)
    decoders = {t: ev.decoder_for(s) for t, s in ev.INPUT_TOPICS.items()}
    state: dict[int, dict[str, bytes]] = {}
    cores = {}
    done = 0
    t_first = None
    try:
        while done < args.expect:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                continue
            if t_first is None:
                t_first = time.perf_counter()
            by_p: dict[int, list] = {}
            for tp, recs in batch.items():
                dec = decoders[tp.topic].decode
                lst = by_p.setdefault(tp.partition, [])
                for r in recs:
                    try:
                        lst.append(dec(r.value))
                    except (msgspec.DecodeError, ValueError):
                        pass
                done += len(recs)
            for p, events in by_p.items():
                core = cores.get(p)
                if core is None:
                    store = state.setdefault(p, {})
                    core = cores[p] = make_core(p, lambda s, _st=store: _st.get(s))
                scores = core.process_batch(events)
                store = state[p]
                for k, v in core.take_dirty().items():
                    if v is None:
                        store.pop(k, None)
                    else:
                        store[k] = v
                if scores:
                    b = producer.create_batch()
                    for sc in scores:
                        if b.append(key=sc.subscriber_id.encode(), value=ev.encode(sc), timestamp=None) is None:
                            await producer.send_batch(b, "risk-scores", partition=p)
                            b = producer.create_batch()
                            b.append(key=sc.subscriber_id.encode(), value=ev.encode(sc), timestamp=None)
                    await producer.send_batch(b, "risk-scores", partition=p)
        await producer.flush()
        elapsed = time.perf_counter() - (t_first or time.perf_counter())
    finally:
        await consumer.stop()
        await producer.stop()
    return {"contender": "aiokafka-bare", "events": done, "seconds": round(elapsed, 3),
            "events_per_s": round(done / elapsed) if elapsed else None, "cores": 1, "core": core_name}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    print(json.dumps(asyncio.run(main(parser.parse_args()))), flush=True)
