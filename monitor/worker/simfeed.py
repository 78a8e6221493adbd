"""The simulator's Kafka producer: a simulated run sent to the input topics (``satmon simulate
--broker``, ``satmon demo``). Here, not in :mod:`monitor.sim`, because the worker package is the only
one that imports a Kafka client (the import contracts in pyproject.toml); the simulator only
generates records."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from monitor.sim import simulate


async def produce(config: simulate.SimConfig, bootstrap: str, *, rate: float | None = None, realtime: bool = False,
                  out_dir: str | Path | None = None, stop: asyncio.Event | None = None,
                  progress: Any = None, on_caught_up: Any = None) -> dict[str, Any]:
    """Send the run to Kafka (``bootstrap`` = ``host:port[,host:port]``), keyed by subscriber id so
    the default (murmur2) partitioner co-partitions the three topics.

    ``rate`` paces to that many records per second; ``realtime`` sends each step once the wall
    clock has reached its end (use with ``start_ms`` = now). ``out_dir`` also writes the ground truth.
    With ``realtime`` and a ``start_ms`` in the past, the history up to now goes out unpaced (``rate``
    applies from then on) and ``on_caught_up(records sent)`` is called once it is acknowledged.
    """
    from aiokafka import AIOKafkaProducer

    sim = simulate.Simulator(config)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap.split(","), enable_idempotence=False, acks=1,
                                linger_ms=20, max_batch_size=256 * 1024, compression_type=None)
    await producer.start()
    sent = paced_from = 0
    t_start = time.monotonic()
    catching_up = realtime and config.start_ms is not None and config.start_ms < time.time() * 1000 - 60_000
    try:
        pending = []
        for topic, key, value in simulate.generate(config, sim):
            if stop is not None and stop.is_set():
                break
            if realtime and sim.last_ts_ms > time.time() * 1000:
                if catching_up:
                    # the history is out: acknowledged, announced, and pacing starts from here
                    await asyncio.gather(*pending)
                    pending.clear()
                    await producer.flush()
                    catching_up = False
                    if on_caught_up is not None:
                        on_caught_up(sent)
                    paced_from, t_start = sent, time.monotonic()
                await asyncio.sleep(max(0.0, sim.last_ts_ms / 1000 - time.time()))
            pending.append(await producer.send(topic, value, key=key))
            sent += 1
            if rate and not catching_up:
                ahead = (sent - paced_from) / rate - (time.monotonic() - t_start)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
                if progress is not None:
                    progress(sim, sent)
        if pending:
            await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    if out_dir is not None:
        manifest = simulate.write_ground_truth(sim, out_dir)
    else:
        manifest = sim.manifest()
    manifest["sent"] = sent
    return manifest
