"""The one-pass ProduceRequest encoder (``monitor.worker.fastpath.install_produce_encoder``) writes
exactly the bytes aiokafka's own encoder writes, for every request version, and a real broker
accepts what it writes."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.protocol.struct import Struct

from monitor.worker.fastpath import _encode_produce_request, install_produce_encoder


def _random_topics(rng: random.Random) -> list:
    topics = []
    for t in range(rng.randint(0, 4)):
        name = rng.choice(["risk-scores", "satmon-bench-subscriber-state-changelog", "r\u00e9gion-\u00fc", ""]) + str(t)
        parts = []
        for p in range(rng.randint(0, 5)):
            size = rng.choice([0, 1, 70, 4096, 98_304, 300_000])
            parts.append((rng.randint(0, 2**31 - 1), rng.choice([bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64 or 1), None])))
        topics.append((name, parts))
    return topics


def test_every_version_is_installed_and_byte_identical() -> None:
    changed = install_produce_encoder()
    assert changed == [cls.__name__ for cls in ProduceRequest._CLASSES]   # v0..v7 of the pinned aiokafka
    rng = random.Random(7)
    for _ in range(40):
        topics = _random_topics(rng)
        for cls in ProduceRequest._CLASSES:
            tids = (None, "satmon-txn", "") if cls.API_VERSION >= 3 else (None,)
            for tid in tids:
                struct = ProduceRequest(tid, rng.choice([-1, 0, 1]), rng.randint(0, 2**31 - 1), topics).build(cls)
                assert cls.encode is _encode_produce_request
                assert struct.encode() == Struct.encode(struct)


def test_install_is_idempotent_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert install_produce_encoder() == install_produce_encoder()
    monkeypatch.setenv("SATMON_AIOKAFKA_PRODUCE_ENCODER", "1")
    assert install_produce_encoder() == []


@pytest.mark.integration
def test_broker_reads_back_what_the_encoder_wrote() -> None:
    """Records produced through the one-pass encoder (the worker's batches) come back intact."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from support.kafka import Broker

    install_produce_encoder()
    values = [bytes([i % 251]) * (50 + i * 37 % 4000) for i in range(600)]

    async def go(bootstrap: str) -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=96 * 1024)
        await producer.start()
        try:
            for p in range(2):
                batch = producer.create_batch()
                for v in values[p::2]:
                    if batch.append(timestamp=None, key=b"k", value=v) is None:
                        await (await producer.send_batch(batch, "risk-scores", partition=p))
                        batch = producer.create_batch()
                        batch.append(timestamp=None, key=b"k", value=v)
                await (await producer.send_batch(batch, "risk-scores", partition=p))
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        got: dict[int, list[bytes]] = {0: [], 1: []}
        try:
            tps = [TopicPartition("risk-scores", p) for p in range(2)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while sum(map(len, got.values())) < len(values):
                for tp, recs in (await consumer.getmany(timeout_ms=2000)).items():
                    got[tp.partition].extend(r.value for r in recs)
        finally:
            await consumer.stop()
        return got[0] + got[1]

    broker = Broker(partitions=2).start()
    try:
        got = asyncio.run(asyncio.wait_for(go(broker.bootstrap), 60))
    finally:
        broker.stop()
    assert got == values[0::2] + values[1::2]
