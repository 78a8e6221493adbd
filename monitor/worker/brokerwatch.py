"""Detecting a broker that lost its data underneath a running worker, and saying so loudly.

The embedded broker (Tansu, memory storage) wipes every topic, record and committed offset when it
restarts, and clients see no error: consumers start again at 0, producers auto-create topics with a
default partition count, a Faust worker rejoins with in-memory state for data that no longer exists
(``docs/BROKER.md``). A real Kafka can do the same after a topic is deleted and re-created or a
cluster is rebuilt. :class:`BrokerWatch` (pure: no Kafka, no event loop) compares successive
:class:`BrokerSnapshot` s of the broker and reports a loss when

* the cluster id changed (a different cluster answers on the same address);
* a topic it had seen is gone, or its partition count changed;
* a partition's end offset went *backwards* (a log only grows; retention moves the start, never
  the end).

:class:`BrokerWatchTask` is the worker's shell around it: every ``interval_s`` it takes a snapshot
through its own metadata-only client (bounded by a timeout, so a dead broker never hangs it), and on
a loss logs at ERROR, increments ``satmon_broker_restarts_detected_total`` and makes ``/readyz``
answer 503 (``/healthz`` reports it in its body). The worker keeps running: it does not guess how to
repair state that no longer matches the broker; an operator restarts it (``--embedded`` wipes the
local state) and re-produces what was lost.

Limits: a restart between two checks is missed only if the topics come back with the same
partition counts *and* every watched partition has grown past its previous end offset within
``interval_s`` -- on Tansu, whose ListOffsets answers the first offset of the last batch + 1
(monotonic, but low), that would take more records than were there before.

>>> watch = BrokerWatch(topics=["network-events"])
>>> watch.observe(BrokerSnapshot("c1", {"network-events": 2}, {("network-events", 0): 500}))
[]
>>> watch.observe(BrokerSnapshot("c1", {"network-events": 2}, {("network-events", 0): 0}))
['network-events/0: end offset went back from 500 to 0']
>>> watch.losses
1
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

#: Seconds between two looks at the broker: a restart is reported within about this long (plus the
#: snapshot's own round trips). Two small requests per look: Metadata and ListOffsets.
BROKER_WATCH_INTERVAL_S = 2.0
#: A snapshot that takes longer than this is abandoned (logged, retried next interval): the watch
#: must never hang on a broker that is down.
BROKER_WATCH_TIMEOUT_S = 5.0
#: Findings kept for ``/healthz`` (the newest ones).
MAX_FINDINGS = 20


@dataclasses.dataclass(frozen=True)
class BrokerSnapshot:
    """What the broker said at one moment: its cluster id (``None`` if it did not say), the
    partition count of every topic, and the end offsets of the watched partitions."""

    cluster_id: str | None
    partitions: Mapping[str, int]
    end_offsets: Mapping[tuple[str, int], int]


class BrokerWatch:
    """Compares successive :class:`BrokerSnapshot` s; a data loss is a list of findings.

    Parameters
    ----------
    topics
        The topics whose disappearance or shrinking means lost data (inputs, changelogs, outputs).
    clock
        Wall clock in seconds, for :attr:`last_loss_at`.

    Attributes
    ----------
    losses : int
        Data losses detected so far (one per :meth:`observe` call that found anything).
    snapshots : int
        Snapshots compared so far (the first one is the baseline).
    findings : list[str]
        The newest findings (at most :data:`MAX_FINDINGS`), oldest first.
    last_loss_at : float | None
        When the last loss was detected.
    """

    def __init__(self, *, topics: Iterable[str], clock: Callable[[], float] = time.time) -> None:
        self.topics = frozenset(topics)
        self.clock = clock
        self.losses = 0
        self.snapshots = 0
        self.findings: list[str] = []
        self.last_loss_at: float | None = None
        self._cluster_id: str | None = None
        self._partitions: dict[str, int] = {}
        self._ends: dict[tuple[str, int], int] = {}

    def observe(self, snap: BrokerSnapshot) -> list[str]:
        """Findings of data loss between the previous snapshot and ``snap`` ([] when none)."""
        self.snapshots += 1
        found: list[str] = []
        if snap.cluster_id and self._cluster_id and snap.cluster_id != self._cluster_id:
            found.append(f"cluster id changed from {self._cluster_id!r} to {snap.cluster_id!r}")
        for topic, before in sorted(self._partitions.items()):
            now = snap.partitions.get(topic)
            if now is None:
                found.append(f"topic {topic} vanished")
            elif now != before:
                found.append(f"topic {topic}: {now} partitions, was {before}")
        for tp, before in sorted(self._ends.items()):
            now = snap.end_offsets.get(tp)
            if now is not None and now < before:
                found.append(f"{tp[0]}/{tp[1]}: end offset went back from {before} to {now}")
        if found:
            # Start again from what the broker holds now: one restart is one loss.
            self.losses += 1
            self.last_loss_at = self.clock()
            self.findings = (self.findings + found)[-MAX_FINDINGS:]
            self._partitions.clear()
            self._ends.clear()
        if snap.cluster_id:
            self._cluster_id = snap.cluster_id
        for topic, n in snap.partitions.items():
            if topic in self.topics:
                self._partitions[topic] = n
        for tp, end in snap.end_offsets.items():
            if tp[0] in self.topics:
                self._ends[tp] = max(end, self._ends.get(tp, end))
        return found

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` shows."""
        return {"data_loss": self.losses > 0, "losses_detected": self.losses, "snapshots": self.snapshots,
                "last_loss_at": self.last_loss_at, "findings": list(self.findings)}


async def take_snapshot(client: Any, consumer: Any, topics: Iterable[str]) -> BrokerSnapshot:
    """One :class:`BrokerSnapshot` through an aiokafka ``consumer`` (``client`` is its
    ``_client``): a Metadata request for all topics (never auto-creates one) and ListOffsets for
    every partition of the watched ``topics`` that exists."""
    from aiokafka import TopicPartition
    from aiokafka.protocol.metadata import MetadataRequest

    node = client.get_random_node()
    if node is None:
        raise ConnectionError("no broker known")
    response = await client.send(node, MetadataRequest([]))
    partitions: dict[str, int] = {}
    for entry in response.topics:
        # (error_code, name, [is_internal,] partitions): the layout depends on the version
        if entry[0] == 0:
            partitions[entry[1]] = len(entry[-1])
    watched = [TopicPartition(t, p) for t in sorted(set(topics)) for p in range(partitions.get(t, 0))]
    ends = await consumer.end_offsets(watched) if watched else {}
    return BrokerSnapshot(getattr(response, "cluster_id", None) or None, partitions,
                          {(tp.topic, tp.partition): int(o) for tp, o in ends.items()})


class BrokerWatchTask:
    """The worker's shell around :class:`BrokerWatch`: :meth:`check` every ``interval_s``.

    ``topics()`` returns the topics to watch (called at every check: the app's changelog topics
    are known only once its tables exist); ``on_loss(findings)`` is called once per loss.
    """

    def __init__(self, bootstrap_servers: str | list[str], *, topics: Callable[[], Iterable[str]],
                 on_loss: Callable[[list[str]], None] | None = None,
                 timeout_s: float = BROKER_WATCH_TIMEOUT_S) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.on_loss = on_loss
        self.timeout_s = timeout_s
        self.watch = BrokerWatch(topics=topics())
        self.checks = 0
        self.failures = 0
        self._consumer: Any = None

    async def _ensure_consumer(self) -> Any:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None,
                                        enable_auto_commit=False, client_id="satmon-broker-watch",
                                        request_timeout_ms=int(self.timeout_s * 1000),
                                        metadata_max_age_ms=60_000)
            try:
                await consumer.start()
            except BaseException:
                await asyncio.wait({asyncio.ensure_future(consumer.stop())}, timeout=1.0)
                raise
            self._consumer = consumer
        return self._consumer

    async def check(self) -> list[str]:
        """Take one snapshot and compare it; never raises, never waits longer than ``timeout_s``."""
        # asyncio.wait, not wait_for: a client call that swallows its cancellation must not be
        # able to block the watch (wait_for would wait for it); an abandoned snapshot is dropped.
        task = asyncio.ensure_future(self._snapshot())
        done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
        if not done:
            task.cancel()
            task.add_done_callback(_ignore_result)
            return self._failed(asyncio.TimeoutError(f"no answer within {self.timeout_s:.0f} s"))
        exc = task.exception()
        if exc is not None:
            return self._failed(exc)
        snap = task.result()
        self.checks += 1
        if self.checks == 1:
            log.info("broker watch: cluster %r, watching %d of %d topics", snap.cluster_id,
                     len(self.watch.topics & set(snap.partitions)), len(snap.partitions))
        found = self.watch.observe(snap)
        if found:
            log.error("BROKER DATA LOSS detected (loss #%d): %s. Records, committed offsets and "
                      "changelogs written before this point are gone; this worker's in-memory state "
                      "no longer matches the broker. Restart the worker (--embedded wipes its local "
                      "state) and re-produce the lost input. See docs/BROKER.md.",
                      self.watch.losses, "; ".join(found))
            if self.on_loss is not None:
                self.on_loss(found)
        return found

    def _failed(self, exc: BaseException) -> list[str]:
        # A broker that does not answer is /readyz's business, not a data loss. The client is
        # kept: aiokafka reconnects by itself once the broker is back.
        self.failures += 1
        log.warning("broker watch: no snapshot this time (%r)", exc)
        return []

    async def _snapshot(self) -> BrokerSnapshot:
        consumer = await self._ensure_consumer()
        topics = frozenset(self.topics())
        self.watch.topics = topics
        return await take_snapshot(consumer._client, consumer, topics)

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            task = asyncio.ensure_future(consumer.stop())
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
            if not done:
                task.cancel()
                task.add_done_callback(_ignore_result)


def _ignore_result(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("broker watch: abandoned call failed: %r", task.exception())
