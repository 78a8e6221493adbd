"""The worker's label feed: every label on ``satmon-labels`` taught to the worker's one risk model.

A worker's cores do not learn from the labels they mature: the pipeline sends them to the labels
topic (``RiskPipeline(labels_topic=True)``) with the batch's other records, and every worker reads
that topic in full, in its one partition's order, and teaches its model. So every worker's model is
the prior plus the same labels, whichever partitions it owns (issue 18; docs/MODEL.md, "One model
for the operator").

The model carries the next offset it has not learned (``RiskModel.labels_offset``) into every
partition checkpoint. At start the feed waits until the worker's tables are recovered and its
partitions' checkpoints restored (the furthest one wins), then reads from that offset: a restarted
worker does not learn a label twice, nor skip one. A checkpoint restored later that is further
along (a partition taken over from a worker that read more) moves the model forward; the feed sees
it and seeks. Labels the topic no longer holds (retention deleted them before this model learned
them) are counted as lost and logged, never skipped silently; a record that is not a label goes to
the dead-letter topic with the reason.

Here, not in ``monitor.scoring``, because the worker package is the only one that imports a Kafka
client (the import contracts in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from monitor.records.topics import LABELS
from monitor.worker.kafka import BackgroundReader, partitions_of, wait_event

log = logging.getLogger(__name__)

#: how often the feed looks whether the worker is ready to restore its checkpoints (seconds)
READY_POLL_S = 0.2


class LabelFeed(BackgroundReader):
    """Reads ``satmon-labels`` (no consumer group: every worker reads all of it) into ``model``.

    Parameters
    ----------
    bootstrap_servers
        ``host:port`` list.
    model
        The worker's :class:`monitor.scoring.risk.RiskModel` (the one every core scores with).
    ready
        ``() -> bool``: the worker's tables are recovered (checked before :meth:`start` reads).
    restore
        ``() -> None``: restore the checkpoints of the partitions the worker owns into ``model``
        (called once ready, before the first read).
    dead_letter
        ``(offset, value, reason) -> awaitable``: send a record that is no label to the dead-letter
        topic (None: logged and counted only).
    client_id
        Client id shown by the broker.
    """

    def __init__(self, bootstrap_servers: str | list[str], model: Any, *,
                 ready: Callable[[], bool] = lambda: True, restore: Callable[[], None] = lambda: None,
                 dead_letter: Callable[[int, bytes, str], Awaitable[Any]] | None = None,
                 client_id: str = "satmon-labels", fetch_max_wait_ms: int = 200) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.model = model
        self.ready = ready
        self.restore = restore
        self.dead_letter = dead_letter
        self.client_id = client_id
        self.fetch_max_wait_ms = fetch_max_wait_ms
        #: labels taught to the model
        self.learned = 0
        #: labels the topic no longer held when this model reached their offsets (retention)
        self.lost = 0
        #: records that were no label (sent to the dead-letter topic)
        self.rejected = 0
        #: the labels topic's high watermark at the last fetch (None before it)
        self.highwater: int | None = None
        #: the worker's :class:`monitor.pipeline.StageClock` (None: not timed)
        self.stage_clock: Any = None
        self._consumer: Any = None
        self._task: asyncio.Task | None = None
        self._started = asyncio.Event()
        #: the offset the next fetched label should have; a model moved past it was restored further
        self._next = 0

    @property
    def lag(self) -> int | None:
        """Labels on the topic this model has not learned yet (None before the first fetch)."""
        if self.highwater is None:
            return None
        return max(0, self.highwater - (self.model.labels_offset or 0))

    async def start(self, *, topic_timeout_s: float = 30.0) -> None:
        """Wait until the worker is ready, restore its checkpoints, connect and start reading in a
        background task from the model's offset (the topic's beginning for a model that never read it)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        while not self.ready():
            await asyncio.sleep(READY_POLL_S)
        self.restore()
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=self.client_id, fetch_max_wait_ms=self.fetch_max_wait_ms,
        )
        await consumer.start()
        try:
            await partitions_of(consumer, (LABELS,), timeout_s=topic_timeout_s)
            tp = TopicPartition(LABELS, 0)
            consumer.assign([tp])
            self._seek(tp)
        except BaseException:
            await consumer.stop()
            self._consumer = None
            raise
        log.info("learning from %s from offset %s (%d labels in the model)", LABELS,
                 self.model.labels_offset if self.model.labels_offset is not None else "0 (its beginning)",
                 self.model.n_labels)
        self._task = asyncio.create_task(self._run(tp), name="satmon-label-feed")
        self._started.set()

    def _seek(self, tp: Any) -> None:
        offset = self.model.labels_offset
        if offset is None:
            self._consumer.seek(tp, 0)   # out of range (retention) resets to the earliest: auto_offset_reset
        else:
            self._consumer.seek(tp, offset)
        self._next = offset or 0

    async def _run(self, tp: Any) -> None:
        consumer = self._consumer
        while True:
            if (self.model.labels_offset or 0) != self._next:
                # a restored checkpoint moved the model forward while we read: read on from there
                log.info("%s: the model was restored at offset %d; reading on from there", LABELS,
                         self.model.labels_offset)
                self._seek(tp)
            batches = await consumer.getmany(tp, timeout_ms=500, max_records=5000)
            records = batches.get(tp, ())
            if records:
                clock = self.stage_clock
                t = clock.now() if clock is not None else 0.0
                letters = self.apply(records)
                if clock is not None:
                    clock.add("labels", t)
                for offset, value, reason in letters:
                    if self.dead_letter is not None:
                        await self.dead_letter(offset, value, reason)
            hw = consumer.highwater(tp)
            if hw is not None:
                self.highwater = hw

    def apply(self, records: Any) -> list[tuple[int, bytes, str]]:
        """Teach the model ``records`` (with ``offset`` and ``value``) in order; the ones that are
        no label come back as ``(offset, value, reason)``.

        >>> from types import SimpleNamespace as NS
        >>> from monitor.scoring.risk import LabelRecord, RiskModel, encode_label
        >>> from monitor.scoring.features import FEATURES
        >>> model = RiskModel()
        >>> feed = LabelFeed("unused:9092", model)
        >>> label = encode_label(LabelRecord(ts_ms=1, x=[0.0] * len(FEATURES), y=[0, 0, 0]))
        >>> letters = feed.apply([NS(offset=0, value=label), NS(offset=1, value=b"junk"), NS(offset=3, value=label)])
        >>> [(offset, value) for offset, value, _reason in letters]
        [(1, b'junk')]
        >>> model.n_labels, model.labels_offset, feed.lost, feed.rejected
        (2, 4, 1, 1)
        """
        from monitor.scoring.risk import decode_label

        model = self.model
        letters: list[tuple[int, bytes, str]] = []
        for record in records:
            offset = record.offset
            expected = model.labels_offset
            if expected is not None and offset < expected:
                continue   # learned already (a restored checkpoint is further along)
            if expected is not None and offset > expected:
                self.lost += offset - expected
                log.error("%s: offsets %d..%d are gone from the topic (retention?) before this model "
                          "learned them: %d labels lost", LABELS, expected, offset - 1, offset - expected)
            try:
                label = decode_label(record.value)
            except msgspec.DecodeError as exc:
                self.rejected += 1
                model.labels_offset = offset + 1
                log.error("%s@%d is not a label record (%s): sent to the dead-letter topic", LABELS, offset, exc)
                letters.append((offset, record.value, f"not a label record: {exc}"))
                continue
            model.learn(label, offset=offset)
            self.learned += 1
        self._next = model.labels_offset or 0
        return letters

    async def wait_started(self, timeout: float | None = None) -> bool:
        return await wait_event(self._started, timeout)


def dead_letter_sender(send: Callable[[bytes | None, bytes], Awaitable[Any]], *,
                       worker: str | None = None) -> Callable[[int, bytes, str], Awaitable[Any]]:
    """``(offset, value, reason) -> awaitable`` sending a ``dead_letter.v1`` of a labels record
    through ``send(key, value)`` (the worker's producer, to ``satmon-dead-letter``)."""
    from monitor.records import events as ev
    from monitor.records.errors import InvalidEventError

    async def dead_letter(offset: int, value: bytes, reason: str) -> Any:
        letter = ev.dead_letter(source_topic=LABELS, partition=0, offset=offset, key=None, value=value,
                                error=InvalidEventError(reason, None, "wrong_type"), schema=LABELS,
                                worker=worker, received_at_ms=int(time.time() * 1000))
        return await send(None, ev.encode(letter))

    return dead_letter
