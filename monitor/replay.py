"""Drive the worker's pipeline from files or a record iterator, as the Kafka consumer would.

A live worker gets ``getmany`` batches: per topic-partition, records with offsets, keys and raw
values, in the order the producers sent them. :func:`run` builds exactly that from a simulator
directory (or any ``(topic, key, value)`` iterator, e.g. :func:`monitor.sim.simulate.generate`) and
hands it to the same :class:`~monitor.pipeline.RiskPipeline` the worker runs, over in-memory
stores, with the same observers: :class:`~monitor.pipeline.CellWindows` ships closed windows and a
:class:`~monitor.pipeline.HotspotStage` consumes them, as the owner of ``satmon-cell-windows``
does. ``satmon replay``, ``satmon evaluate`` and the hot-spot evaluation all run through here.

What differs from a live worker, and why it does not change results:

* **Arrival order.** Files hold each topic in the order it was produced; they are interleaved by
  event time, as producers emitting in real time would be. Records the simulator produced late stay
  where they are in their file.
* **Time.** The pipeline's clocks (checkpoint interval, a stream's idleness) read the replay's event
  time instead of the wall clock, so a replay is deterministic and does not depend on the machine's
  speed. It replays a live feed: every record is delivered once its event time comes, so no stream
  has a backlog, and a stream is active while it had a record within ``idle_s`` of event time (a
  worker catching up on a backlog holds windows for every stream instead; both close the same
  windows once the streams are level).
* **Batches** hold ``batch_records`` records (the worker's ``max_poll_records``) and are cut at every
  evaluation instant, so ``on_instant(t, pipeline)`` sees the state after every event up to ``t``.

Pure: no Kafka client, no event loop, no Faust.

>>> from monitor.sim import simulate
>>> config = simulate.SimConfig(subscribers=200, hours=0.25, seed=3)
>>> result = run_records(simulate.generate(config, simulate.Simulator(config)), partitions=2)
>>> result.events + result.dead_letters == result.records > 0, result.scores > 0
(True, True)
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from monitor.records.errors import MonitorError
from monitor.records.events import Alert, RiskScore, decode
from monitor.pipeline import (CellWindows, HotspotStage, Outputs, Record, RiskPipeline, TopicPartition,
                              default_core_factory)
from monitor.records.topics import ALERTS, CELL_WINDOWS, DEAD_LETTER, INPUT_TOPICS, RISK_SCORES, Partitioner

#: records per batch when no settings say otherwise (the worker's ``max_poll_records`` default)
BATCH_RECORDS = 2000


class _Head(msgspec.Struct):
    """The two fields replay needs of a raw record before the pipeline decodes it."""

    subscriber_id: str | None = None
    ts_ms: int | None = None


_decode_head = msgspec.json.Decoder(_Head).decode


def _head(value: bytes) -> tuple[bytes | None, int | None]:
    try:
        h = _decode_head(value)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None, None
    key = h.subscriber_id.encode() if isinstance(h.subscriber_id, str) else None
    return key, h.ts_ms if isinstance(h.ts_ms, int) else None


def file_records(sim_dir: str | Path) -> Iterator[tuple[str, bytes | None, bytes, int | None]]:
    """``(topic, key, value, event time)`` of a directory's ``<topic>.jsonl`` files, interleaved by
    event time.

    Each file keeps its own order; the key is the record's subscriber id (what satmon's producers
    key by), None for a line that does not parse; so is its event time."""
    d = Path(sim_dir)
    paths = [(t, d / f"{t}.jsonl") for t in INPUT_TOPICS]
    paths = [(t, p) for t, p in paths if p.exists()]
    if not paths:
        raise MonitorError(f"{d}: no input files ({', '.join(t + '.jsonl' for t in INPUT_TOPICS)})")

    def lines(i: int, topic: str, path: Path) -> Iterator[tuple[int, int, int, str, bytes | None, bytes, int | None]]:
        last_ts = 0
        with open(path, "rb") as f:
            for n, line in enumerate(f):
                value = line.rstrip(b"\r\n")
                if not value.strip():
                    continue
                key, ts = _head(value)
                if ts is not None:
                    last_ts = ts
                # an unparseable line keeps its place in its file: it sorts with its predecessor
                yield last_ts, i, n, topic, key, value, ts

    for _last, _i, _n, topic, key, value, ts in heapq.merge(*(lines(i, t, p) for i, (t, p) in enumerate(paths))):
        yield topic, key, value, ts


@dataclass
class ReplayResult:
    """What a replay did; ``pipeline`` and ``hotspots`` hold the final state."""

    pipeline: RiskPipeline
    hotspots: HotspotStage | None
    records: int = 0
    events: int = 0
    dead_letters: int = 0
    scores: int = 0
    batches: int = 0
    #: ``(window end ms, alert)`` in emission order (hot-spot evaluation)
    alerts: list[tuple[int, Alert]] = field(default_factory=list)
    #: ``(window end ms, incident.v1 record)`` in emission order (monitor.detection.incidents)
    incidents: list[tuple[int, Any]] = field(default_factory=list)
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    seconds: float = 0.0
    #: events left out of closed hot-spot windows (late), and tickets/app events with no known cell
    late_events: int = 0
    unattributed: int = 0


def run(sim_dir: str | Path, **options: Any) -> ReplayResult:
    """Replay a simulator (or recorded) directory through the worker's pipeline; see :func:`run_records`."""
    return run_records(file_records(sim_dir), **options)


def run_records(records: Iterable[tuple[Any, ...]], *, settings: Any = None,
                partitions: int | None = None, batch_records: int | None = None,
                instants: Sequence[int] = (), on_instant: Callable[[int, RiskPipeline], None] | None = None,
                on_label: Callable[[Any], None] | None = None,
                on_scores: Callable[[list[RiskScore]], None] | None = None,
                hotspots: bool = True, make_core: Callable[..., Any] | None = None,
                observers: Iterable[Any] = ()) -> ReplayResult:
    """Feed ``(topic, key, value)`` records, in arrival order, to the worker's pipeline (a fourth
    item, the event time, saves parsing it; see :func:`file_records`).

    Parameters
    ----------
    settings:
        :class:`monitor.config.Settings` (None: defaults); ``partitions`` and ``batch_records``
        default to its ``partitions`` and ``max_poll_records``.
    instants:
        Event times (ms, ascending); ``on_instant(t, pipeline)`` is called once every record with
        event time ``<= t`` that arrives before the first later one has been processed.
    on_label:
        Every label the cores learn (:class:`monitor.scoring.core.LabelJoin`).
    on_scores:
        The ``risk_score.v1`` records of each batch, decoded from what the worker would produce.
    hotspots:
        Run :class:`~monitor.pipeline.CellWindows` and the :class:`~monitor.pipeline.HotspotStage`.
    observers:
        More :class:`~monitor.pipeline.BatchObserver` objects (after the windows, as in the worker).
    """
    if partitions is None:
        partitions = settings.partitions if settings is not None else 4
    if batch_records is None:
        batch_records = settings.max_poll_records if settings is not None else BATCH_RECORDS
    partition_of = Partitioner(partitions)
    now_s = [0.0]

    def clock() -> float:
        return now_s[0]

    extra, observers = list(observers), []
    stage = windows = None
    if hotspots:
        # records reach the pipeline as soon as their event time comes (nothing waits in Kafka):
        # a stream is active while it had a record within ``idle_s`` of event time
        windows = CellWindows(partitions=partitions, clock=clock)
        observers.append(windows)
        stage = HotspotStage(partitions=partitions, runbook_base=getattr(settings, "runbook_base", None))
    pipeline = RiskPipeline.in_memory(settings, make_core=make_core or default_core_factory(settings),
                                      observers=observers + extra, clock=clock)
    if stage is not None:
        stage.stage_clock = pipeline.stage_clock   # the stage profile of the whole replay
    pipeline.on_label = on_label
    result = ReplayResult(pipeline=pipeline, hotspots=stage)
    if stage is not None:
        stage.on_detected = lambda end_ms, alerts: result.alerts.extend((end_ms, a) for a in alerts)
        stage.on_incidents = lambda end_ms, incs: result.incidents.extend((end_ms, i) for i in incs)
    out = Outputs()
    offsets: dict[tuple[str, int], int] = {}
    pending_instants = list(instants)
    t0 = time.perf_counter()

    def drain() -> None:
        for (topic, partition), recs in out.take().items():
            if topic == RISK_SCORES:
                result.scores += len(recs)
                if on_scores is not None:
                    on_scores([decode("risk_score.v1", v) for _k, v in recs if v is not None])
            elif topic == DEAD_LETTER:
                result.dead_letters += len(recs)
            elif topic == CELL_WINDOWS and stage is not None:
                for _k, v in recs:
                    if v is not None:
                        stage.on_window_batch(partition, v)
            elif topic == ALERTS:
                pass   # alerts a batch observer produced (model drift): the worker sends them on

    batch: dict[TopicPartition, list[Record]] = {}
    size = 0

    def deliver() -> None:
        nonlocal batch, size
        if batch:
            pipeline.handle(batch, out)
            result.batches += 1
            pipeline.tick(out)
            drain()
        batch, size = {}, 0

    for n, record in enumerate(records):
        if len(record) == 4:
            topic, key, value, ts = record
        else:
            topic, key, value = record
            k, ts = _head(value) if value is not None else (None, None)
            key = key if key is not None else k
        # keyless records go round-robin, as with Kafka's default partitioner
        p = partition_of(key) if key is not None else n % partitions
        if ts is not None:
            while pending_instants and ts > pending_instants[0]:
                deliver()
                if on_instant is not None:
                    on_instant(pending_instants[0], pipeline)
                pending_instants.pop(0)
            if result.first_ts_ms is None:
                result.first_ts_ms = ts
            if result.last_ts_ms is None or ts > result.last_ts_ms:
                result.last_ts_ms = ts
                now_s[0] = ts / 1000
        tp = TopicPartition(topic, p)
        offset = offsets.get((topic, p), 0)
        offsets[(topic, p)] = offset + 1
        batch.setdefault(tp, []).append(Record(offset, key, value))
        result.records += 1
        size += 1
        if size >= batch_records:
            deliver()
    deliver()
    if windows is not None:
        result.unattributed = sum(agg.unattributed for agg in windows.aggregators.values())
    pipeline.flush_all(out, checkpoint=False)
    drain()
    if on_instant is not None:
        last = result.last_ts_ms
        for t in pending_instants:
            if last is not None and t <= last:
                on_instant(t, pipeline)
    result.events = sum(pipeline.processed.values())
    if windows is not None:
        result.late_events = sum(windows.late_events().values())
    result.seconds = time.perf_counter() - t0
    return result
