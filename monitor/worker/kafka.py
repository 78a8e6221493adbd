"""Kafka plumbing shared by the shells: topic creation (the topics are :mod:`monitor.records.topics`), and client settings that work on
both a real Kafka cluster and the embedded Tansu broker (see docs/BROKER.md)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from monitor.records.errors import BrokerError

from monitor.records.topics import TOPICS

# Client settings, valid on Kafka and on Tansu. Real Kafka rejects session timeouts below its
# group.min.session.timeout.ms (6 s by default); Tansu holds JoinGroup for half the session timeout,
# so 6 s keeps joins near 3 s. Tansu fails InitProducerId, so producers never ask for idempotence
# (at-least-once; the core deduplicates by event_id).
SESSION_TIMEOUT_MS = 6_000
HEARTBEAT_INTERVAL_MS = 1_000
PRODUCER_SETTINGS = {"enable_idempotence": False, "acks": "all", "linger_ms": 5}


def bootstrap_of(url: str) -> str:
    """``kafka://h1:p1,h2:p2`` -> ``h1:p1,h2:p2`` (a bare bootstrap passes through)."""
    return url[len("kafka://"):] if url.startswith("kafka://") else url


async def create_topics_async(url: str, partitions: int, *, timeout_s: float = 30.0) -> list[str]:
    """Create every satmon topic that does not exist yet; wait until metadata lists them all.
    Returns the topics that were created. Idempotent."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_of(url))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, n or partitions, 1) for t, n in TOPICS.items() if t not in existing]
        if missing:
            await admin.create_topics(missing)
        deadline = time.monotonic() + timeout_s
        while not set(TOPICS) <= set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise BrokerError(f"topics not visible after {timeout_s:.0f} s: "
                                  f"{sorted(set(TOPICS) - set(await admin.list_topics()))}")
            await asyncio.sleep(0.2)
        return [t.name for t in missing]
    finally:
        await admin.close()


def create_topics(url: str, partitions: int, *, timeout_s: float = 30.0) -> list[str]:
    """Synchronous :func:`create_topics_async` (for the CLI and the demo)."""
    return asyncio.run(create_topics_async(url, partitions, timeout_s=timeout_s))


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Whether ``event`` was set within ``timeout`` seconds (None: wait for ever)."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    return True


async def partitions_of(consumer: Any, topics: Any, *, timeout_s: float) -> dict[str, set[int]]:
    """``{topic: partitions}`` once metadata lists every one of ``topics`` (refreshed every 0.2 s),
    or :class:`MonitorError` after ``timeout_s``."""
    from monitor.records.errors import MonitorError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        await consumer.topics()   # refreshes metadata
        parts = {t: consumer.partitions_for_topic(t) for t in topics}
        missing = [t for t, p in parts.items() if not p]
        if not missing:
            return parts
        if loop.time() > deadline:
            raise MonitorError(f"topics not found on the broker: {', '.join(missing)}")
        await asyncio.sleep(0.2)


class BackgroundReader:
    """A consumer without a group read by a background task: the view feeder and the label feed
    (``monitor.worker.viewfeed``, ``monitor.worker.labelfeed``). :meth:`stop` cancels the task and
    closes the consumer."""

    _consumer: Any = None
    _task: asyncio.Task | None = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
