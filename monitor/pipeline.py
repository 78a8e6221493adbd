"""The worker's pipeline, Faust-free: raw input batches in, records to produce out.

:class:`RiskPipeline` takes batches shaped like the consumer's (``{topic-partition: [record]}``,
records with ``offset``, ``key`` and ``value``), decodes every record (invalid ones become
``dead_letter.v1`` records with their origin and original bytes), feeds each partition's events to
that partition's :class:`~monitor.scoring.core.PartitionCore`, and queues, in an :class:`Outputs`:

* ``risk_score.v1`` records on ``risk-scores`` (only the scores the core emits: material changes);
* the per-subscriber states the core reports dirty, written to the subscriber-state store
  (one record per changed subscriber per batch, not per event);
* every ``checkpoint_interval_s``, the partition's model checkpoint, to the model store;
* with ``labels_topic``, the labels the cores matured (``monitor.scoring.risk.LabelRecord``) on
  ``satmon-labels``, which every worker's :class:`monitor.worker.labelfeed.LabelFeed` teaches its
  model from (without it, the cores teach the process's model directly: replay, evaluation).

Observers (:class:`BatchObserver`) get every processed batch: :class:`CellWindows` folds it into
per-(cell, window) partials for ``satmon-cell-windows``, whose owner runs :class:`HotspotStage`;
metrics and the at-risk view plug in the same way.

State lives behind :class:`StateStore`: :class:`DictStore` here (replay, evaluation, tests), a Faust
table adapter in the worker (``monitor.worker.tablestore.TableStore``). One object, many drivers: the
worker's consumer (``monitor.worker.fastpath``), ``satmon replay`` and ``satmon evaluate``
(``monitor.replay``) and the tests feed it the same way.

>>> from monitor.records.topics import NETWORK_EVENTS
>>> pipeline = RiskPipeline.in_memory()
>>> raw = (b'{"event_id":"e1","subscriber_id":"s1","ts_ms":1700000000000,"cell_id":"c1",'
...        b'"region":"north","radio":"4G","service":"video","rsrp_dbm":-121,"sinr_db":-3,'
...        b'"dl_mbps":0.5,"ul_mbps":0.1,"latency_ms":250,"jitter_ms":40,"packet_loss_pct":6,'
...        b'"call_drop":true,"video_stall_s":30}')
>>> out = Outputs()
>>> pipeline.handle({TopicPartition(NETWORK_EVENTS, 0): [Record(0, b"s1", raw)]}, out)
>>> [topic for topic, _ in out.records()]
['risk-scores', 'subscriber-state']
>>> pipeline.handle({TopicPartition(NETWORK_EVENTS, 0): [Record(1, b"s1", b"{oops")]}, out)
>>> pipeline.dead_lettered
{('network', 'not_json'): 1}
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import msgspec

from monitor.records import events as ev
from monitor.records.ingest import Ingest
from monitor.records.topics import CELL_WINDOWS, DEAD_LETTER, LABELS, RISK_SCORES, TOPIC_STREAMS, Partitioner

log = logging.getLogger(__name__)

#: changelog names of the in-memory stores (the worker's tables have Faust's own changelog topics)
STATE_CHANGELOG = "subscriber-state"
MODEL_CHANGELOG = "risk-model"



class StageClock:
    """Seconds the worker's event-loop thread spent per stage of the whole job (issue 22's profile).

    The pipeline, the consumer, the hot-spot stage and the view each add the time between two reads
    of :func:`time.perf_counter` to their stage: about 7 reads per partition of a batch, not per
    event. The stages are synchronous work on one thread, so this is their CPU time unless the OS
    preempted the thread. (:func:`time.thread_time` would be exact, but it is a system call: 1.6 µs
    a read here, 1.2 % of the benchmark's worker in a profile, against 0.15 µs.) Exported as
    ``satmon_worker_stage_seconds_total{stage}``; ``./run bench`` turns it into seconds per million
    events. ``gc`` (collector pauses, timed by :mod:`gc` callbacks) also falls inside whatever stage
    was running.

    >>> clock = StageClock()
    >>> t = clock.add("decode", clock.now())
    >>> sorted(clock.seconds), clock.seconds["decode"] >= 0
    (['decode'], True)
    """

    __slots__ = ("seconds", "now")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.now: Callable[[], float] = time.perf_counter

    def add(self, stage: str, since: float) -> float:
        """Add the CPU time since ``since`` to ``stage``; returns now, the next stage's start."""
        t = self.now()
        seconds = self.seconds
        seconds[stage] = seconds.get(stage, 0.0) + (t - since)
        return t


class BatchHandler(Protocol):
    """What :class:`FastConsumer` hands fast-topic batches to (:class:`RiskPipeline`)."""

    #: topic names whose records come to :meth:`handle` instead of Faust's per-message path
    topics: frozenset[str]

    def handle(self, batch: Mapping[Any, list[Any]], out: "Outputs") -> None:
        """Process every record (aiokafka ``ConsumerRecord``) of ``batch`` synchronously and add all
        resulting records (outputs and state changes) to ``out``. Must not raise on bad input."""

    async def on_revoked(self, revoked: set[Any], out: "Outputs") -> None:
        """Flush and drop everything kept for ``revoked`` partitions, adding records to ``out``."""

    def flush_all(self, out: "Outputs") -> None:
        """Flush everything kept in memory (at shutdown), adding records to ``out``."""

    # Optional: ``tick(out)``, called about once a second between batches (also when no records
    # come), for work driven by wall-clock time, e.g. closing windows a stream that went quiet held.


class Outputs:
    """Records to produce, grouped per topic-partition, sent as whole batches.

    ``on_sent`` callbacks (per topic-partition) get the offset of the *last* record sent to that
    partition once the broker acknowledged it (used to record RocksDB's persisted changelog offset).
    """

    __slots__ = ("_by_tp", "_on_sent", "record_count")

    def __init__(self) -> None:
        self._by_tp: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
        self._on_sent: dict[tuple[str, int], Callable[[int], None]] = {}
        self.record_count = 0

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Queue one record for ``topic``/``partition``."""
        try:
            self._by_tp[(topic, partition)].append((key, value))
        except KeyError:
            self._by_tp[(topic, partition)] = [(key, value)]
        self.record_count += 1

    def add_many(self, topic: str, partition: int, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        """Queue several ``(key, value)`` records for one topic-partition."""
        bucket = self._by_tp.setdefault((topic, partition), [])
        before = len(bucket)
        bucket.extend(records)
        self.record_count += len(bucket) - before

    def on_sent(self, topic: str, partition: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(last_offset)`` once this batch's records to the partition are acknowledged."""
        self._on_sent[(topic, partition)] = callback

    def records(self) -> dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]]:
        """What is queued, by ``(topic, partition)`` (a view: do not modify)."""
        return self._by_tp

    def __bool__(self) -> bool:
        return self.record_count > 0

    def take(self) -> dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]]:
        """Everything queued, by ``(topic, partition)``, and empty the outputs (a driver that does not
        produce to Kafka, e.g. replay, consumes them this way; the worker's consumer sends them)."""
        taken = self._by_tp
        self._by_tp = {}
        self._on_sent.clear()
        self.record_count = 0
        return taken

    def callbacks(self) -> dict[tuple[str, int], Callable[[int], None]]:
        """The ``on_sent`` callbacks, by ``(topic, partition)`` (a view: do not modify)."""
        return self._on_sent

    def clear(self) -> None:
        """Forget everything queued and every callback."""
        self._by_tp.clear()
        self._on_sent.clear()
        self.record_count = 0



class TopicPartition(NamedTuple):
    """A topic and partition, as the consumer keys its batches (Faust's ``TP`` has the same fields)."""

    topic: str
    partition: int


class Record(NamedTuple):
    """One consumed record: what :meth:`RiskPipeline.handle` reads of aiokafka's ``ConsumerRecord``."""

    offset: int
    key: bytes | None
    value: bytes | None


class StateStore(Protocol):
    """Per-partition bytes store with a changelog: the subscriber-state and model tables.

    :meth:`write` applies changes locally and queues them in ``out`` for the changelog topic
    :attr:`changelog` (the worker produces them; replay may ignore them)."""

    changelog: str

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The value of ``key`` in ``partition``, or None."""

    def write(self, partition: int, changes: Mapping[bytes, bytes | None], out: "Outputs") -> None:
        """Apply ``changes`` (``None`` deletes) and queue them for the changelog."""


class DictStore:
    """:class:`StateStore` in a dict per partition (replay, evaluation, tests).

    >>> store, out = DictStore("model"), Outputs()
    >>> store.write(0, {b"k": b"v"}, out)
    >>> store.get(0, b"k"), store.get(1, b"k"), out.record_count
    (b'v', None, 1)
    """

    def __init__(self, changelog: str, *, log_changes: bool = True) -> None:
        self.changelog = changelog
        self.log_changes = log_changes
        self.data: dict[int, dict[bytes, bytes]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        part = self.data.get(partition)
        return None if part is None else part.get(key)

    def write(self, partition: int, changes: Mapping[bytes, bytes | None], out: "Outputs") -> None:
        if not changes:
            return
        part = self.data.setdefault(partition, {})
        for key, value in changes.items():
            if value is None:
                part.pop(key, None)
            else:
                part[key] = value
        if self.log_changes:
            out.add_many(self.changelog, partition, changes.items())


class BatchObserver(Protocol):
    """Something that wants every processed batch (metrics, hot-spot windows, at-risk view)."""

    def on_batch(self, partition: int, events: Sequence[Any], scores: Sequence[ev.RiskScore],
                 dead_letters: Sequence[ev.DeadLetter], out: Outputs) -> None:
        """Called synchronously after the core processed ``events``; may add records to ``out``.

        Optional: ``on_revoked(partition, out)`` when the partition leaves this worker and
        ``flush_all(out)`` at shutdown."""


#: how far (event time) hot-spot windows may be held open behind the newest event: by a slower
#: stream of one input partition (CellWindows) or a slower partition at a region's owner (HotSpots)
MAX_HOLD_MS = 7_200_000


class CellWindows:
    """:class:`BatchObserver` that folds every batch into per-(cell, window) aggregates and ships
    closed windows to ``satmon-cell-windows`` (see :mod:`monitor.detection.windows`).

    One :class:`~monitor.detection.windows.WindowAggregator` per input partition (source name: the partition
    number). Tickets, app events and scores carry no cell: they are attributed to the subscriber's
    last network cell seen on this partition. Whenever a partition's watermark closes windows, one
    :class:`~monitor.detection.windows.WindowBatch` goes to *every* partition of ``satmon-cell-windows`` (empty
    ones too: they tell each owner that this source is done with those windows), carrying the
    partials of the regions that partition owns (murmur2 of the region, like a keyed record): the
    hot-spot engine rolls cells up into their region, so a region's cells must meet in one place.
    On revocation and shutdown open windows are flushed rather than dropped.

    **One partial per cell and window per worker.** The partitions' closed windows meet in a
    :class:`~monitor.detection.windows.WindowCombiner` and leave as one partial per cell and window
    once every other partition of this worker has closed the window too: on a batch, each one
    that has closed something and is at most ``max_wait_ms`` (``max_hold_ms``) of event time behind
    the window is waited for; the tick stops waiting for the ones no longer *active* (the test below). A batch
    announces each partition's close no further than the oldest window still held, so the owner
    never completes a window whose contributions are still here; a revoked partition releases
    every held window. (Shipped per partition, the benchmark's cells left as ~2 events a partial,
    and the owner decoded and merged 2.3 partials per cell and window.)

    **Three streams, one watermark.** A partition's three streams are produced by different systems
    and fetched at different paces: while a backlog is read, a sparse stream's whole backlog can come
    in one fetch, an hour of event time ahead of the dense one; even live, one stream's records of a
    second can reach the broker after another's. Closing windows by the largest event time of any
    stream turned the slower stream's records into late events (seen through the worker: an
    outage's sessions vanished from its cell's windows). So, as in Flink's multi-input watermarks
    with idleness, windows close up to the *smallest* watermark of the streams that are **active**:
    records seen within ``idle_s`` of wall-clock time, or records still waiting in Kafka
    (``backlog(topic, partition)`` -> count or None, see
    :meth:`monitor.worker.fastpath.FastConsumer.backlog`). A stream that has gone quiet holds nothing back.

    **Bounded hold.** A lagging worker has a backlog on every stream, and the streams are read at
    different event-time paces, so the spread between them can keep widening; every window in that
    spread stays open (a tracemalloc soak whose worker lagged: ``monitor/detection/windows.py`` 8 -> 44 MB in
    13 minutes). So windows never stay open more than ``max_hold_ms`` of event time behind the
    partition's largest watermark (default 2 h, twice the hour a sparse stream's backlog was seen
    ahead); records of a stream further behind are late events, counted, and each batch whose
    hold was capped is counted too (``hold_capped``).
    """

    stage = "cell windows"   # its StageClock row

    def __init__(self, *, partitions: int, width_ms: int = 60_000, allowed_lateness_ms: int = 30_000,
                 backlog: Callable[[str, int], int | None] | None = None, idle_s: float = 5.0,
                 max_hold_ms: int = MAX_HOLD_MS, max_wait_ms: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from monitor.detection.windows import WindowCombiner

        self.partitions = partitions
        self.max_hold_ms = max_hold_ms
        self.hold_capped = 0   # batches whose hold max_hold_ms cut short
        self.backlog = backlog
        self.idle_s = idle_s
        self.clock = clock
        self.holds = 0   # batches whose closing a slower active stream held back
        self._late_retired: dict[str, int] = {}   # late events of aggregators since revoked
        self._seen: dict[int, dict[str, float]] = {}   # partition -> stream -> wall clock last seen
        self.width_ms = width_ms
        self.allowed_lateness_ms = allowed_lateness_ms
        self.aggregators: dict[int, Any] = {}
        self._cells: dict[int, dict[str, tuple[str, str]]] = {}
        self._region_partition = Partitioner(partitions)
        #: the partitions' closed windows, one partial per cell and window. A partition is waited
        #: for while it is at most ``max_wait_ms`` of event time behind a window (default
        #: ``max_hold_ms``: a worker draining a backlog reads its partitions at paces up to an hour of
        #: event time apart, and the owner's merger would hold their partials as long otherwise)
        self.combiner = WindowCombiner(width_ms=width_ms,
                                       max_wait_ms=max_hold_ms if max_wait_ms is None else max_wait_ms)

    def _aggregator(self, partition: int) -> Any:
        agg = self.aggregators.get(partition)
        if agg is None:
            from monitor.detection.windows import WindowAggregator

            agg = self.aggregators[partition] = WindowAggregator(
                width_ms=self.width_ms, allowed_lateness_ms=self.allowed_lateness_ms, source=str(partition))
        return agg

    def on_batch(self, partition: int, events: Sequence[Any], scores: Sequence[ev.RiskScore],
                 dead_letters: Sequence[ev.DeadLetter], out: Outputs) -> None:
        agg = self._aggregator(partition)
        cells = self._cells.setdefault(partition, {})
        present = agg.add_batch(events, scores, cells.get, located=cells)
        before = agg.closed_before_ms
        closed = agg.pop_closed(hold_ms=self._hold(partition, agg, present))
        if agg.closed_before_ms != before:
            self.combiner.add(agg.source, agg.closed_before_ms, closed)
            # every partition is waited for here (those far behind are not, see WindowCombiner); the
            # tick stops waiting for the ones that went quiet
            self._ship(out, [a.source for a in self.aggregators.values()])

    def _hold(self, partition: int, agg: Any, present: set[str]) -> float | None:
        now = self.clock()
        seen = self._seen.setdefault(partition, {})
        for stream in present:
            seen[stream] = now
        active = []
        for topic, stream in TOPIC_STREAMS.items():
            if now - seen.get(stream, float("-inf")) < self.idle_s or (
                    self.backlog is not None and self.backlog(topic, partition)):
                active.append(stream)
        hold = agg.holds(active)
        if hold is not None and agg.watermark_ms is not None and hold < agg.watermark_ms:
            self.holds += 1
            floor = agg.watermark_ms - self.max_hold_ms
            if hold < floor:
                self.hold_capped += 1
                hold = floor
        return hold

    def tick(self, out: Outputs) -> None:
        """Re-close every partition's windows by wall-clock time: a stream that went quiet since
        the last batch (the end of a burst, a source that stopped) no longer holds them."""
        for partition, agg in self.aggregators.items():
            before = agg.closed_before_ms
            closed = agg.pop_closed(hold_ms=self._hold(partition, agg, set()))
            if agg.closed_before_ms != before:
                self.combiner.add(agg.source, agg.closed_before_ms, closed)
        self._ship(out, self._active())   # and what a partition that went quiet held

    def late_events(self) -> dict[str, int]:
        """Events left out of closed windows, per stream, since start (revoked partitions included)."""
        total = dict(self._late_retired)
        for agg in self.aggregators.values():
            for stream, n in agg.late_events.items():
                total[stream] = total.get(stream, 0) + n
        return total

    def on_revoked(self, partition: int, out: Outputs) -> None:
        agg = self.aggregators.pop(partition, None)
        self._cells.pop(partition, None)
        self._seen.pop(partition, None)
        if agg is not None:
            for stream, n in agg.late_events.items():
                self._late_retired[stream] = self._late_retired.get(stream, 0) + n
            closed = agg.pop_all()
            if agg.closed_before_ms is not None:
                self.combiner.add(agg.source, agg.closed_before_ms, closed)
            self._ship(out, (), everything=True)   # held windows may hold this partition's part
            self.combiner.forget(agg.source)

    def flush_all(self, out: Outputs) -> None:
        for partition in list(self.aggregators):
            self.on_revoked(partition, out)

    def _active(self) -> list[str]:
        """The sources (partitions) active as in :meth:`_hold`: a record within ``idle_s`` or a backlog."""
        now = self.clock()
        waiting = []
        for partition, agg in self.aggregators.items():
            seen = self._seen.get(partition)
            if (seen and now - max(seen.values()) < self.idle_s) or (self.backlog is not None and any(
                    self.backlog(topic, partition) for topic in TOPIC_STREAMS)):
                waiting.append(agg.source)
        return waiting

    def _ship(self, out: Outputs, waiting_for: Iterable[str], *, everything: bool = False) -> None:
        from monitor.detection.windows import WindowBatch, encode_batch

        partials, closed = self.combiner.release(waiting_for, everything=everything)
        if not partials and not closed:
            return
        by_dest: dict[int, list[Any]] = {p: [] for p in range(self.partitions)}
        dest_of: dict[str, int] = {}   # a closing ships many cells of few regions
        for part in partials:
            region = part.region
            dest = dest_of.get(region)
            if dest is None:
                dest = dest_of[region] = self._region_partition(region.encode())
            by_dest[dest].append(part)
        key = ",".join(closed).encode()
        for dest, parts in by_dest.items():
            out.add(CELL_WINDOWS, dest, key, encode_batch(WindowBatch(closed=closed, partials=parts)))


class HotspotStage:
    """The owner side of ``satmon-cell-windows``: per partition, merge the partials of every input
    partition (:class:`~monitor.detection.windows.WindowMerger`) and run the hot-spot engine over complete
    windows (:class:`~monitor.detection.hotspots.HotspotEngine`), returning ``alert.v1`` records.

    In the worker it runs on the batched path: ``satmon-cell-windows`` is a side topic of the fast
    consumer (``SatmonApp.satmon_side_handlers``), a batch's offsets acknowledged once its alerts and
    incidents are with the producer, like the inputs'.
    Detector baselines live in memory: a restarted or reassigned owner relearns them.

    With ``data_drift`` (default) the engine also runs a :class:`~monitor.detection.drift.DataDriftMonitor`
    over the region windows it owns (``SatmonDataDrift``, what ``replay`` and ``detect`` run too);
    every alert links its runbook under ``runbook_base``.
    """

    stage = "hot spots and drift"   # its StageClock row

    def __init__(self, *, partitions: int, data_drift: bool = True, runbook_base: str | None = None,
                 max_skew_ms: int = MAX_HOLD_MS) -> None:
        self.sources = [str(p) for p in range(partitions)]
        # a source (input partition) more than this far behind the newest one no longer holds merged
        # windows back (a lagging worker reads its partitions at different paces): bounded memory
        self.max_skew_ms = max_skew_ms
        self.data_drift = data_drift
        self.runbook_base = runbook_base
        self.stages: dict[int, tuple[Any, Any]] = {}
        self.windows_in = 0
        self.alerts_out = 0
        #: records of ``satmon-cell-windows`` that were no window batch (sent to the dead letters)
        self.windows_rejected = 0
        #: ``(window end ms, alerts)`` each time a complete window produced alerts (evaluation)
        self.on_detected: Callable[[int, list[ev.Alert]], None] | None = None
        #: per partition, the :class:`monitor.detection.incidents.IncidentTracker` fed the engine's alerts
        self.trackers: dict[int, Any] = {}
        #: ``incident.v1`` records to send (topic ``incidents``), drained by :meth:`pop_incidents`
        self.incidents: list[ev.Incident] = []
        #: ``(window end ms, incident records)`` as they are produced (evaluation)
        self.on_incidents: Callable[[int, list[ev.Incident]], None] | None = None
        #: the worker's :class:`StageClock` (None: not timed)
        self.stage_clock: StageClock | None = None

    def late_partials(self) -> int:
        """Partials that reached a merger after their window was complete (left out, counted)."""
        return sum(merger.late_partials for merger, _engine in self.stages.values())

    def _engine(self) -> Any:
        from monitor.detection.alerting import AlertLifecycle
        from monitor.detection.drift import DataDriftMonitor
        from monitor.detection.hotspots import HotspotEngine

        lifecycle = AlertLifecycle(runbook_base=self.runbook_base) if self.runbook_base else None
        return HotspotEngine(lifecycle=lifecycle, drift=DataDriftMonitor() if self.data_drift else None)

    def reject(self, partition: int, offset: int | None, key: bytes | None, raw: bytes, reason: str,
               out: Outputs, *, worker: str | None = None, now_ms: int | None = None) -> ev.DeadLetter:
        """A ``satmon-cell-windows`` record that :meth:`on_window_batch` could not read (not a window
        batch of a format this version knows): to the dead-letter topic with the reason and its
        bytes, never merged and never lost silently.

        >>> stage, out = HotspotStage(partitions=1), Outputs()
        >>> letter = stage.reject(0, 7, None, b"junk", "not a window batch", out, now_ms=1)
        >>> letter.source_topic, letter.offset, letter.original_value(), stage.windows_rejected
        ('satmon-cell-windows', 7, b'junk', 1)
        """
        from monitor.records.errors import InvalidEventError

        self.windows_rejected += 1
        letter = ev.dead_letter(source_topic=CELL_WINDOWS, partition=partition, offset=offset, key=key,
                                value=raw, error=InvalidEventError(reason, None, "wrong_type"),
                                schema="satmon-cell-windows", worker=worker,
                                received_at_ms=int(time.time() * 1000) if now_ms is None else now_ms)
        out.add(DEAD_LETTER, 0, key, ev.encode(letter))
        return letter

    def on_window_batch(self, partition: int, raw: bytes) -> list[ev.Alert]:
        from monitor.detection.windows import WindowMerger, decode_batch, group_by_window

        stage = self.stages.get(partition)
        if stage is None:
            stage = self.stages[partition] = (WindowMerger(sources=self.sources, max_skew_ms=self.max_skew_ms),
                                              self._engine())
        merger, engine = stage
        clock = self.stage_clock
        t = clock.now() if clock is not None else 0.0
        merger.add(decode_batch(raw))
        self.windows_in += 1
        alerts: list[ev.Alert] = []
        for start_ms, windows in group_by_window(merger.pop_complete()):
            step = engine.step(start_ms, windows)
            if step and self.on_detected is not None:
                self.on_detected(start_ms + windows[0].width_ms, step)
            if step:
                incidents = self._tracker(partition).process(step, engine.affected_hashes)
                self.incidents.extend(incidents)
                if incidents and self.on_incidents is not None:
                    self.on_incidents(start_ms + windows[0].width_ms, incidents)
            alerts.extend(step)
        self.alerts_out += len(alerts)
        if clock is not None:
            clock.add(self.stage, t)
        return alerts

    def _tracker(self, partition: int) -> Any:
        from monitor.detection.incidents import IncidentTracker

        tracker = self.trackers.get(partition)
        if tracker is None:
            tracker = self.trackers[partition] = IncidentTracker()
        return tracker

    def pop_incidents(self) -> list[ev.Incident]:
        """The incident records the alerts returned so far produced (fire, update, resolve)."""
        out, self.incidents = self.incidents, []
        return out


class CoreFactory:
    """``make(partition, state_loader)`` building the real :class:`monitor.scoring.core.PartitionCore`.

    Every core it makes scores with one :class:`monitor.scoring.risk.RiskModel`, :attr:`model` (the
    process's), which every partition's labels teach (docs/MODEL.md); a warm start
    (``model_checkpoint``) seeds it.

    >>> make = CoreFactory(None)
    >>> make(0, lambda sid: None).model is make(1, lambda sid: None).model is make.model
    True
    """

    def __init__(self, settings: Any) -> None:
        from monitor.scoring.core import core_options

        self.settings = settings
        self.options = core_options(settings)
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The one model of the process (made at first use: a warm start reads its file)."""
        if self._model is None:
            from monitor.scoring.core import model_options

            start = self.options.get("model_checkpoint")
            if start:
                from monitor.scoring.warmstart import load_model

                self._model = load_model(start)   # its label horizon is the file's
            else:
                from monitor.scoring.risk import RiskModel

                self._model = RiskModel(**model_options(self.settings))
        return self._model

    def __call__(self, partition: int, state_loader: Callable[[str], bytes | None]) -> Any:
        from monitor.scoring.core import PartitionCore

        return PartitionCore(partition, **self.options, state_loader=state_loader, model=self.model)


def default_core_factory(settings: Any) -> CoreFactory:
    """The :class:`CoreFactory` of ``settings``: what the worker, replay and evaluation build cores with."""
    return CoreFactory(settings)


class RiskPipeline:
    """Batch handler: raw input records -> dead letters / core -> scores, states, checkpoints.

    Parameters
    ----------
    state_table, model_table:
        :class:`StateStore` of the subscriber states (key: subscriber id) and of the models and
        resume floors (key: partition number as text, ``offsets:<partition>``).
    make_core:
        ``make_core(partition, state_loader) -> PartitionCore``.
    checkpoint_interval_s:
        How often each partition's model is checkpointed (also on revocation and shutdown).
    labels_topic:
        Send the labels the cores mature to ``satmon-labels`` (with the batch's other records)
        instead of teaching the model in process: a deployment of several workers, where a
        worker's model must not depend on which partitions it owns (docs/MODEL.md).
    """

    topics = frozenset(ev.INPUT_TOPICS)

    def __init__(self, *, state_table: StateStore, model_table: StateStore,
                 make_core: Callable[..., Any], checkpoint_interval_s: float = 30.0,
                 worker_id: str | None = None, observers: Iterable[BatchObserver] = (),
                 score_partitioner: Callable[[bytes], int] | None = None,
                 pseudonymise: Callable[[str], str] | None = None,
                 clock: Callable[[], float] = time.time, labels_topic: bool = False) -> None:
        self.state_table = state_table
        self.labels_topic = labels_topic
        #: labels matured by the core of the partition in hand, sent after its scores
        self._labels: list[Any] = []
        self.labels_sent = 0
        self.model_table = model_table
        self.make_core = make_core
        self.checkpoint_interval_s = checkpoint_interval_s
        self.worker_id = worker_id
        self.observers: list[BatchObserver] = list(observers)
        #: ``(partition, bytes)`` after each model checkpoint was handed to the producer (metrics)
        self.on_checkpoint: Callable[[int, int], None] | None = None
        #: ``(topic, partition, n)`` when re-delivered records below the resume floor are skipped (metrics)
        self.on_skipped: Callable[[str, int, int], None] | None = None
        #: ``(seconds, records)`` after each batch (metrics: the batch duration histograms)
        self.on_batch_done: Callable[[float, int], None] | None = None
        #: given to every core: called with a :class:`monitor.scoring.core.LabelJoin` per label learned
        self.on_label: Callable[[Any], None] | None = None
        self.score_partitioner = score_partitioner
        self.clock = clock
        #: ``() -> {TP: next offset}`` whose effects the broker acknowledged (set by the app)
        self.durable_offsets: Callable[[], Mapping[Any, int]] = dict
        self._floors: dict[int, dict[str, int]] = {}
        #: floors read from the table (a previous owner's acknowledged offsets) not yet taken by
        #: the consumer, which commits them (see :meth:`pop_inherited_floors`)
        self._inherited: dict[int, dict[str, int]] = {}
        self._floors_written: dict[int, dict[str, int]] = {}
        #: awaited by the consumer before the first batch (the app declares output topics)
        self.prepare: Callable[[], Awaitable[None]] | None = None
        self.cores: dict[int, Any] = {}
        self._checkpointed_at: dict[int, float] = {}
        self.ingest = Ingest(worker=worker_id)
        self.pseudonymise = pseudonymise
        self._pseudonyms: dict[str, str] = {}
        self.scores_emitted = 0
        self.skipped_below_floor = 0
        self.batches = 0
        #: CPU per stage (the worker shares it with its consumer, hot-spot stage and view)
        self.stage_clock = StageClock()

    @classmethod
    def in_memory(cls, settings: Any = None, **options: Any) -> "RiskPipeline":
        """A pipeline over :class:`DictStore` tables and the real cores built from ``settings``
        (replay, evaluation, tests); ``options`` as for the constructor."""
        options.setdefault("make_core", default_core_factory(settings))
        if settings is not None:
            options.setdefault("checkpoint_interval_s", settings.checkpoint_interval_s)
        return cls(state_table=DictStore(STATE_CHANGELOG), model_table=DictStore(MODEL_CHANGELOG), **options)

    @property
    def processed(self) -> dict[str, int]:
        """Events decoded and handed to the cores, per stream."""
        return self.ingest.decoded

    @property
    def dead_lettered(self) -> dict[tuple[str, str], int]:
        """Dead letters per (stream, reason kind)."""
        return self.ingest.dead_lettered

    # -- cores ----------------------------------------------------------------------------------

    def core_for(self, partition: int) -> Any:
        core = self.cores.get(partition)
        if core is None:
            state = self.state_table

            def load(subscriber_id: str, _p: int = partition) -> bytes | None:
                return state.get(_p, subscriber_id.encode())

            core = self.make_core(partition, load)
            if self.on_label is not None and hasattr(core, "on_label"):
                core.on_label = self.on_label
            if self.labels_topic:
                core.label_sink = self._labels.append
            blob = self.model_table.get(partition, str(partition).encode())
            if blob is not None:
                if core.restore(blob) is not False:   # False: refused (an old pickle), logged by the core
                    log.info("partition %d: model restored from checkpoint (%d bytes)", partition, len(blob))
            else:
                log.info("partition %d: no model checkpoint, starting fresh", partition)
            self.cores[partition] = core
            self._checkpointed_at[partition] = self.clock()
        return core

    # -- resume floors ----------------------------------------------------------------------------
    # The broker's committed offsets are the resume point, but Tansu has lost commits made just
    # before a worker left the group, and every rebalance seeks back to the committed offsets,
    # which trail what was processed (docs/WORKER.md). So each partition's model-table entry
    # ``offsets:<p>`` also records, per input topic, the next offset whose effects the broker has
    # acknowledged; a new owner skips records below it, and this process skips what it applied.
    # On Kafka the durable floor equals or trails the committed offset.

    @staticmethod
    def _floor_key(partition: int) -> bytes:
        return f"offsets:{partition}".encode()

    def _floor(self, partition: int) -> dict[str, int]:
        floor = self._floors.get(partition)
        if floor is None:
            blob = self.model_table.get(partition, self._floor_key(partition))
            floor = self._floors[partition] = dict(msgspec.json.decode(blob)) if blob else {}
            if floor:
                log.info("partition %d: resuming above offsets %s (acknowledged by the previous owner)",
                         partition, floor)
                self._inherited[partition] = dict(floor)
            self._floors_written[partition] = dict(floor)
        return floor

    def pop_inherited_floors(self) -> dict[int, dict[str, int]]:
        """``{partition: {topic: next offset}}`` a previous owner acknowledged, once per takeover.

        The consumer commits them: everything below was applied and its effects are durable, but
        the previous owner may have died before committing, and a topic of the partition that gets
        no new record (a sparse one) would otherwise keep the group's offset behind for good."""
        inherited, self._inherited = self._inherited, {}
        return inherited

    def _write_floor(self, partition: int, out: Outputs) -> None:
        durable = {tp.topic: o for tp, o in self.durable_offsets().items()
                   if tp.partition == partition and tp.topic in self.topics}
        written = self._floors_written.setdefault(partition, {})
        if durable and any(written.get(t, -1) < o for t, o in durable.items()):
            merged = {**written, **{t: max(o, written.get(t, -1)) for t, o in durable.items()}}
            self.model_table.write(partition, {self._floor_key(partition): msgspec.json.encode(merged)}, out)
            self._floors_written[partition] = merged

    def _flush_core(self, partition: int, core: Any, out: Outputs, *, checkpoint: bool) -> None:
        self._write_floor(partition, out)
        dirty = core.take_dirty()
        if dirty:
            self.state_table.write(partition, {k.encode(): v for k, v in dirty.items()}, out)
        if checkpoint:
            blob = core.checkpoint()
            self.model_table.write(partition, {str(partition).encode(): blob}, out)
            self._checkpointed_at[partition] = self.clock()
            if self.on_checkpoint is not None:
                self.on_checkpoint(partition, len(blob))

    # -- BatchHandler ---------------------------------------------------------------------------

    def handle(self, batch: Mapping[Any, list[Any]], out: Outputs) -> None:
        clock = self.stage_clock
        t = started = clock.now()
        by_partition: dict[int, list[Any]] = {}
        dead: dict[int, list[ev.DeadLetter]] = {}
        decode_batch = self.ingest.decode_batch
        for tp, records in batch.items():
            floors = self._floor(tp.partition)
            floor = floors.get(tp.topic)
            if floor is not None and records[0].offset < floor:
                # Already applied, by a previous owner (acknowledged) or by this process (a
                # rebalance seeks back to the committed offset, which may lag): skip.
                records = [r for r in records if r.offset >= floor]
                skipped = len(batch[tp]) - len(records)
                self.skipped_below_floor += skipped
                if self.on_skipped is not None:
                    self.on_skipped(tp.topic, tp.partition, skipped)
                if not records:
                    continue
            # Safe to raise before the sends complete: a failed send crashes the worker (see
            # FastConsumer._commit) and a new process starts from the durable floor.
            floors[tp.topic] = records[-1].offset + 1
            events, letters = decode_batch(tp.topic, tp.partition, [(r.offset, r.key, r.value) for r in records])
            if events:
                if self.pseudonymise is not None:
                    events = self._pseudonymised(events)
                by_partition.setdefault(tp.partition, []).extend(events)
            if letters:
                dead.setdefault(tp.partition, []).extend(letters)

        now = self.clock()
        t = clock.add("decode", t)
        for partition in by_partition.keys() | dead.keys():
            events = by_partition.get(partition, [])
            core = self.core_for(partition)
            scores = core.process_batch(events) if events else []
            for score in scores:
                key = score.subscriber_id.encode()
                p = self.score_partitioner(key) if self.score_partitioner else partition
                out.add(RISK_SCORES, p, key, ev.encode(score))
            self.scores_emitted += len(scores)
            if self._labels:
                self._send_labels(out)
            letters = dead.get(partition, ())
            for letter in letters:
                key = None if letter.key_b64 is None else base64.b64decode(letter.key_b64)
                out.add(DEAD_LETTER, 0, key, ev.encode(letter))
            t = clock.add("core", t)
            for observer in self.observers:
                observer.on_batch(partition, events, scores, letters, out)
                t = clock.add(getattr(observer, "stage", None) or type(observer).__name__, t)
            due = now - self._checkpointed_at.get(partition, now) >= self.checkpoint_interval_s
            self._flush_core(partition, core, out, checkpoint=due)
            t = clock.add("state and checkpoints", t)
        self.batches += 1
        if self.on_batch_done is not None:
            self.on_batch_done(t - started, sum(len(records) for records in batch.values()))

    def _send_labels(self, out: Outputs) -> None:
        from monitor.scoring.risk import encode_label

        for label in self._labels:
            out.add(LABELS, 0, None, encode_label(label))
        self.labels_sent += len(self._labels)
        self._labels.clear()

    def _pseudonymised(self, events: list[Any]) -> list[Any]:
        # The keyed hash costs ~2 µs; a subscriber's pseudonym is cached (bounded) instead.
        cache = self._pseudonyms
        if len(cache) > 2_000_000:
            cache.clear()
        pseudonym = self.pseudonymise
        out = []
        for event in events:
            real = event.subscriber_id
            alias = cache.get(real)
            if alias is None:
                alias = cache[real] = pseudonym(real)  # type: ignore[misc]
            out.append(msgspec.structs.replace(event, subscriber_id=alias))
        return out

    async def on_revoked(self, revoked: set[Any], out: Outputs) -> None:
        for partition in sorted({tp.partition for tp in revoked if tp.topic in self.topics}):
            for observer in self.observers:
                if hasattr(observer, "on_revoked"):
                    observer.on_revoked(partition, out)
            core = self.cores.pop(partition, None)
            if core is not None:
                self._flush_core(partition, core, out, checkpoint=True)
                self._checkpointed_at.pop(partition, None)
                log.info("partition %d revoked: state flushed, model checkpointed", partition)
            self._floors.pop(partition, None)
            self._inherited.pop(partition, None)
            self._floors_written.pop(partition, None)

    def tick(self, out: Outputs) -> None:
        """Wall-clock work of the observers (about once a second, see ``BatchHandler``)."""
        clock = self.stage_clock
        t = clock.now()
        for observer in self.observers:
            tick = getattr(observer, "tick", None)
            if tick is not None:
                try:
                    tick(out)
                except Exception:  # a timer must not stop the drain loop
                    log.exception("tick of %r failed", observer)
        clock.add("ticks", t)

    def flush_all(self, out: Outputs, *, checkpoint: bool = True) -> None:
        """Flush every partition's dirty state (and checkpoint its model): used at shutdown."""
        for partition, core in self.cores.items():
            self._flush_core(partition, core, out, checkpoint=checkpoint)
        for observer in self.observers:
            if hasattr(observer, "flush_all"):
                observer.flush_all(out)

