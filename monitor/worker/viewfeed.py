"""The worker's view feeder: every partition of ``risk-scores``, ``alerts``, ``incidents`` and
``satmon-outreach`` read into the in-memory views the API serves (:mod:`monitor.outreach.view`,
:mod:`monitor.outreach.store`, :class:`monitor.detection.incidents.IncidentBoard`). Here, not in
``monitor.outreach``, because the worker package is the only one that imports a Kafka client (the
import contracts in pyproject.toml): the views are plain objects fed through their ``apply_raw``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from monitor.outreach.view import ALERTS_TOPIC, RISK_SCORES_TOPIC, HotspotBoard, RiskView
from monitor.records.errors import InvalidEventError
from monitor.worker.kafka import BackgroundReader, partitions_of, wait_event

log = logging.getLogger(__name__)


Handler = Callable[[bytes, int, int], Any]


class ViewFeeder(BackgroundReader):
    """Reads whole topics into in-memory views: one aiokafka consumer, **no consumer group**,
    manual assignment of every partition of every topic in ``handlers``, from the beginning.

    ``handlers`` maps a topic to ``handler(value, partition, offset)``. A message a handler rejects
    (InvalidEventError) is counted and logged by position only (never its content). ``caught_up``
    turns true once every partition's position reached the high watermark of a fetch (the
    watermark in Fetch responses is right on Tansu, unlike ListOffsets -- see docs/BROKER.md).

    Parameters
    ----------
    bootstrap_servers
        ``host:port`` list.
    handlers
        Topic -> handler.
    client_id
        Client id shown by the broker.
    """

    def __init__(self, bootstrap_servers: str | list[str], handlers: dict[str, Handler], *,
                 client_id: str = "satmon-view", fetch_max_wait_ms: int = 100):
        self.bootstrap_servers = bootstrap_servers
        self.handlers = dict(handlers)
        self.client_id = client_id
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.rejected = 0
        self.position_went_back = False
        self._consumer: Any = None
        self._task: asyncio.Task | None = None
        self._caught_up = asyncio.Event()
        self._last: dict[Any, int] = {}
        #: held (``async with``) while a fetched batch is applied: the API reads the views from
        #: its threads under the same lock (``monitor.outreach.api.ViewLock``); a no-op by default
        self.lock: Any = contextlib.nullcontext()
        #: the worker's :class:`monitor.pipeline.StageClock` (None: not timed)
        self.stage_clock: Any = None

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    async def start(self, *, topic_timeout_s: float = 30.0) -> None:
        """Connect, wait until every topic exists (up to ``topic_timeout_s``), assign all
        partitions from the beginning and start reading in a background task."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=self.client_id, fetch_max_wait_ms=self.fetch_max_wait_ms,
        )
        await consumer.start()
        try:
            parts = await partitions_of(consumer, self.handlers, timeout_s=topic_timeout_s)
            tps = [TopicPartition(t, p) for t, ps in parts.items() for p in sorted(ps)]
            self._consumer.assign(tps)
            await self._consumer.seek_to_beginning(*tps)
        except BaseException:
            await consumer.stop()  # self._consumer may have been cleared by a concurrent stop()
            raise
        self._task = asyncio.create_task(self._run(tps), name="satmon-view-feeder")

    async def _run(self, tps: list[Any]) -> None:
        consumer = self._consumer
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            if batches:
                async with self.lock:
                    clock = self.stage_clock
                    t = clock.now() if clock is not None else 0.0
                    self._apply(batches)
                    if clock is not None:
                        clock.add("view", t)
            if not self._caught_up.is_set() and self._at_high_water(tps):
                self._caught_up.set()

    def _apply(self, batches: Any) -> None:
        for tp, messages in batches.items():
            handler = self.handlers[tp.topic]
            for msg in messages:
                last = self._last.get(tp, -1)
                if msg.offset <= last:
                    # The log restarted under us (e.g. the embedded broker was restarted and
                    # lost its data): say so loudly; the views would otherwise go stale silently.
                    self.position_went_back = True
                    log.error("%s[%d]: offset went back from %d to %d: broker lost its data?",
                              tp.topic, tp.partition, last, msg.offset)
                self._last[tp] = msg.offset
                try:
                    handler(msg.value, tp.partition, msg.offset)
                except (InvalidEventError, ValueError) as err:
                    self.rejected += 1
                    log.warning("%s[%d]@%d rejected: %s", tp.topic, tp.partition, msg.offset,
                                getattr(err, "reason", type(err).__name__))

    def _at_high_water(self, tps: Iterable[Any]) -> bool:
        for tp in tps:
            hw = self._consumer.highwater(tp)
            if hw is None:
                return False
            if self._last.get(tp, -1) + 1 < hw:
                return False
        return True

    async def wait_caught_up(self, timeout: float | None = None) -> bool:
        return await wait_event(self._caught_up, timeout)


def feeder_for(bootstrap_servers: str | list[str], view: RiskView, hotspots: HotspotBoard,
               outreach_store: Any = None, *, client_id: str = "satmon-view",
               incidents: Any = None) -> ViewFeeder:
    """The feeder a worker runs: ``risk-scores`` -> view, ``alerts`` -> hot spots and, when given,
    ``satmon-outreach`` -> outreach store and ``incidents`` -> a :class:`monitor.detection.incidents.IncidentBoard`."""
    handlers: dict[str, Handler] = {RISK_SCORES_TOPIC: view.apply_raw, ALERTS_TOPIC: hotspots.apply_raw}
    if incidents is not None:
        from monitor.detection.incidents import INCIDENTS_TOPIC

        handlers[INCIDENTS_TOPIC] = incidents.apply_raw
    if outreach_store is not None:
        from monitor.outreach.store import OUTREACH_TOPIC, decode_record

        def apply_outreach(raw: bytes, partition: int, offset: int) -> None:
            import msgspec

            try:
                outreach_store.apply(decode_record(raw))
            except msgspec.DecodeError as err:  # ValidationError derives from it
                raise InvalidEventError(f"outreach record: {err}") from None

        handlers[OUTREACH_TOPIC] = apply_outreach
    return ViewFeeder(bootstrap_servers, handlers, client_id=client_id)
