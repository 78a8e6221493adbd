"""Per-(cell, window) aggregates that cross subscriber partitions: build, close, ship, merge.

Input topics are partitioned by *subscriber*, so every worker sees part of every cell's traffic. Each
input partition keeps one :class:`WindowAggregator`; it folds events into event-time tumbling
windows per cell and, when its watermark passes a window's end plus the allowed lateness, closes it
into a small :class:`Partial` (counts, sums, sums of squares, maxima, and the 64-bit hashes of the
distinct affected subscribers). Partials are plain msgspec structs (``encode_batch`` /
``decode_batch``, ~170 bytes per cell plus 9 per affected subscriber) and :func:`merge` is associative and commutative, so the
owner of a region can add up the partials of all input partitions in any order (see
:class:`WindowMerger`, which also decides when every partition has reported a window). A worker
adds up its own partitions' closed windows first (:class:`WindowCombiner`): one partial per cell and
window per worker, in a :class:`WindowBatch` that announces several partitions' closes (format 2;
format 1, one partition per batch, is still decoded).

Affected-subscriber *ids* never leave the worker that saw them (partials carry hashes, enough for
exact distinct counts); :meth:`WindowAggregator.affected` returns the ids for the outreach API.

Late events (older than the windows already closed) are counted per stream in
:attr:`WindowAggregator.late_events`, never silently dropped.

>>> agg = WindowAggregator(width_ms=60_000, allowed_lateness_ms=10_000, source="0")
>>> agg.add_network_kpis("s1", 60_000, "c1", "north", latency_ms=300.0, call_drop=True)
>>> agg.add_network_kpis("s2", 65_000, "c1", "north", latency_ms=20.0)
>>> agg.add_network_kpis("s3", 131_000, "c2", "north", latency_ms=20.0)  # watermark 131 s
>>> [(p.cell_id, p.start_ms, p.sessions, p.degraded, p.drops, p.n_affected) for p in agg.close()]
[('c1', 60000, 2, 1, 1, 1)]
>>> agg.add_network_kpis("s4", 70_000, "c1", "north")  # its window is closed: late, counted
>>> agg.late_events["network"]
1
>>> agg.affected("c1")
['s1']
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import add as _add
from typing import Any, NamedTuple

import msgspec

from monitor.records.degraded import DEGRADED, DegradedSessionPolicy

# Network KPIs whose per-window sums every partial carries (means for drift detection and the
# hot-spot latency metric); their order is the order of ``Partial.kpi_sums``.
NETWORK_KPIS: tuple[str, ...] = ("latency_ms", "jitter_ms", "packet_loss_pct", "dl_mbps", "ul_mbps",
                                 "rsrp_dbm", "sinr_db", "video_stall_s")
_LAT = NETWORK_KPIS.index("latency_ms")

# Ticket actions that count as a complaint (a new or renewed contact, not bookkeeping).
COMPLAINT_ACTIONS = frozenset({"opened", "reopened", "escalated"})
# App interactions that count as a failure of self-service.
APP_FAILURE_KINDS = frozenset({"self_service_failure", "error", "bot_to_human"})

STREAMS = ("network", "tickets", "app", "risk")


#: subscriber id -> its 64-bit hash, bounded (cleared when full): blake2b costs ~0.5 µs and a
#: degraded subscriber is hashed once per window it is affected in
_HASHES: dict[str, int] = {}
HASH_CACHE_MAX = 300_000


def subscriber_hash(subscriber_id: str) -> int:
    """Stable 64-bit hash of a subscriber id (same on every worker and every run).

    Collisions are negligible for distinct counts: ~n²/2⁶⁵, i.e. 3·10⁻¹¹ for 10,000 subscribers.
    """
    h = _HASHES.get(subscriber_id)
    if h is None:
        if len(_HASHES) >= HASH_CACHE_MAX:
            _HASHES.clear()
        h = _HASHES[subscriber_id] = int.from_bytes(
            hashlib.blake2b(subscriber_id.encode(), digest_size=8).digest(), "little")
    return h


class Partial(msgspec.Struct, array_like=True):
    """Aggregates of one cell over one window, from one or more sources (input partitions).

    Counts and sums only, so two partials of the same ``(cell_id, start_ms)`` add up with
    :func:`merge`. ``affected`` is the sorted list of hashes of distinct subscribers who had a
    degraded session, a complaint or an app failure on this cell in this window.

    Fields may be given by position, in the order of the wire format (``array_like``): the hot
    paths (:func:`_to_partial`, :func:`merge_all`) build one per cell, window and source, and
    msgspec matches 21 keywords name by name (~5x the cost of positions).
    """

    cell_id: str
    region: str
    start_ms: int
    width_ms: int
    sessions: int = 0          # network sessions
    degraded: int = 0          # sessions judged degraded (monitor.records.degraded)
    drops: int = 0             # sessions with a dropped call
    stalls: int = 0            # sessions with a video stall
    kpi_sums: list[float] = msgspec.field(default_factory=lambda: [0.0] * len(NETWORK_KPIS))
    latency_sumsq: float = 0.0
    latency_max: float = 0.0
    tickets: int = 0           # ticket events attributed to this cell
    complaints: int = 0        # of which opened / reopened / escalated
    app_events: int = 0
    app_failures: int = 0
    risk_n: int = 0            # risk scores emitted for subscribers on this cell
    risk_sum: float = 0.0
    risk_sumsq: float = 0.0
    risk_max: float = 0.0
    affected: list[int] = msgspec.field(default_factory=list)
    sources: list[str] = msgspec.field(default_factory=list)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.width_ms

    @property
    def n_affected(self) -> int:
        return len(self.affected)

    def kpi_mean(self, name: str) -> float | None:
        """Mean of a network KPI over the window's sessions (None without sessions)."""
        if not self.sessions:
            return None
        return self.kpi_sums[NETWORK_KPIS.index(name)] / self.sessions


def merge(a: Partial, b: Partial) -> Partial:
    """Sum of two partials of the same cell and window (a new object; inputs are not changed)."""
    if (a.cell_id, a.start_ms, a.width_ms) != (b.cell_id, b.start_ms, b.width_ms):
        raise ValueError(f"cannot merge {a.cell_id}@{a.start_ms} with {b.cell_id}@{b.start_ms}")
    return Partial(
        cell_id=a.cell_id, region=a.region or b.region, start_ms=a.start_ms, width_ms=a.width_ms,
        sessions=a.sessions + b.sessions, degraded=a.degraded + b.degraded, drops=a.drops + b.drops,
        stalls=a.stalls + b.stalls, kpi_sums=[x + y for x, y in zip(a.kpi_sums, b.kpi_sums)],
        latency_sumsq=a.latency_sumsq + b.latency_sumsq, latency_max=max(a.latency_max, b.latency_max),
        tickets=a.tickets + b.tickets, complaints=a.complaints + b.complaints,
        app_events=a.app_events + b.app_events, app_failures=a.app_failures + b.app_failures,
        risk_n=a.risk_n + b.risk_n, risk_sum=a.risk_sum + b.risk_sum,
        risk_sumsq=a.risk_sumsq + b.risk_sumsq, risk_max=max(a.risk_max, b.risk_max),
        affected=_union_sorted(a.affected, b.affected),
        sources=_union_sorted(a.sources, b.sources),
    )


def merge_all(partials: Iterable[Partial]) -> Partial:
    """Merge partials of one cell and window (at least one): :func:`merge` folded left to right in
    one pass (the same sums in the same order, the same hash lists), without a partial per step.

    >>> a = Partial(cell_id="c", region="r", start_ms=0, width_ms=60_000, sessions=2, affected=[3, 9])
    >>> b = Partial(cell_id="c", region="", start_ms=0, width_ms=60_000, sessions=1, affected=[5, 9])
    >>> merge_all([a, b]) == merge(a, b), merge_all([a]) is a
    (True, True)
    """
    ps = partials if isinstance(partials, list) else list(partials)
    first = ps[0]
    if len(ps) == 1:
        return first
    cell_id, start_ms, width_ms = first.cell_id, first.start_ms, first.width_ms
    region = first.region
    sessions, degraded, drops, stalls = first.sessions, first.degraded, first.drops, first.stalls
    kpi = first.kpi_sums   # not changed: each step below makes a new list
    lat_sq, lat_max = first.latency_sumsq, first.latency_max
    tickets, complaints, app_events, app_failures = first.tickets, first.complaints, first.app_events, first.app_failures
    risk_n, risk_sum, risk_sq, risk_max = first.risk_n, first.risk_sum, first.risk_sumsq, first.risk_max
    affected = [first.affected] if first.affected else []
    sources = [first.sources] if first.sources else []
    for i in range(1, len(ps)):
        b = ps[i]
        if b.cell_id != cell_id or b.start_ms != start_ms or b.width_ms != width_ms:
            raise ValueError(f"cannot merge {cell_id}@{start_ms} with {b.cell_id}@{b.start_ms}")
        region = region or b.region
        sessions += b.sessions
        degraded += b.degraded
        drops += b.drops
        stalls += b.stalls
        kpi = list(map(_add, kpi, b.kpi_sums))   # x + y pairwise, as zip would pair them
        lat_sq += b.latency_sumsq
        if b.latency_max > lat_max:   # max(a, b): the first unless the second is larger
            lat_max = b.latency_max
        tickets += b.tickets
        complaints += b.complaints
        app_events += b.app_events
        app_failures += b.app_failures
        risk_n += b.risk_n
        risk_sum += b.risk_sum
        risk_sq += b.risk_sumsq
        if b.risk_max > risk_max:
            risk_max = b.risk_max
        if b.affected:
            affected.append(b.affected)
        if b.sources:
            sources.append(b.sources)
    # by position, in field order (see Partial)
    return Partial(cell_id, region, start_ms, width_ms, sessions, degraded, drops, stalls, kpi, lat_sq, lat_max,
                   tickets, complaints, app_events, app_failures, risk_n, risk_sum, risk_sq, risk_max,
                   _union_all(affected), _union_all(sources))


def _union_all(lists: list[list]) -> list:
    """What :func:`_union_sorted` folded over ``lists`` (the non-empty ones) gives: a copy of the
    only one, or the sorted union of them all."""
    if not lists:
        return []
    if len(lists) == 1:
        return list(lists[0])
    return sorted(set().union(*lists))


def rollup(partials: Iterable[Partial], key: str) -> Partial:
    """Merge windows of *different* cells (same window) into one aggregate named ``key`` (a region).

    Distinct affected subscribers stay exact: a subscriber seen on two cells counts once.
    """
    ps = list(partials)
    if not ps:
        raise ValueError("rollup of no partials")
    return _sum(ps, key)


def _sum(ps: list[Partial], cell_id: str) -> Partial:
    """:func:`merge` folded over ``ps`` in one pass, named ``cell_id`` (the same sums in the same
    order; the hash lists are unioned once instead of re-merged at every step, which made a
    region's roll-up quadratic in its cells: 3 % of the benchmark worker's time in a profile).
    One loop over the partials rather than a generator per field: the same additions, in the same
    order, from the same integer 0 that :func:`sum` starts from; maxima by the comparison
    :func:`max` makes."""
    first = ps[0]
    region = None
    sessions = degraded = drops = stalls = tickets = complaints = app_events = app_failures = risk_n = 0
    lat_sq = risk_sum = risk_sq = 0
    lat_max, risk_max = first.latency_max, first.risk_max
    affected: set[int] = set()
    sources: set[str] = set()
    for p in ps:
        if region is None and p.region:
            region = p.region
        sessions += p.sessions
        degraded += p.degraded
        drops += p.drops
        stalls += p.stalls
        lat_sq += p.latency_sumsq
        if p.latency_max > lat_max:
            lat_max = p.latency_max
        tickets += p.tickets
        complaints += p.complaints
        app_events += p.app_events
        app_failures += p.app_failures
        risk_n += p.risk_n
        risk_sum += p.risk_sum
        risk_sq += p.risk_sumsq
        if p.risk_max > risk_max:
            risk_max = p.risk_max
        affected.update(p.affected)
        sources.update(p.sources)
    return Partial(   # by position, in field order
        cell_id, first.region if region is None else region, first.start_ms, first.width_ms, sessions, degraded,
        drops, stalls, [sum(col) for col in zip(*(p.kpi_sums for p in ps))], lat_sq, lat_max, tickets,
        complaints, app_events, app_failures, risk_n, risk_sum, risk_sq, risk_max, sorted(affected), sorted(sources))


def _union_sorted(a: list, b: list) -> list:
    """The sorted union of two sorted lists without duplicates. (A set and one sort in C: 5-10x a
    Python merge of the two for the tens of hashes a cell's window holds.)"""
    if not a:
        return list(b)
    if not b:
        return list(a)
    return sorted(set(a).union(b))


class WindowBatch(msgspec.Struct, array_like=True, kw_only=True, tag=2):
    """What a worker sends to one partition of ``satmon-cell-windows`` when windows close (format 2).

    ``closed``: per source (input partition) whose closing advanced, ``closed_before_ms``: every
    window starting before it is closed at that source *and* its contributions to them are in this
    batch or an earlier one, so the receiver knows the source has nothing more for them even when
    ``partials`` is empty (it is sent anyway). One batch may speak for several sources: a worker
    merges its partitions' partials of a cell and window into one (:class:`WindowCombiner`), whose
    ``sources`` name the partitions it covers. On the wire a MessagePack array whose first element
    is the format, 2 (format 1, :class:`WindowBatchV1`, began with the source's name); see
    :func:`decode_batch`.

    >>> b = WindowBatch.of("3", 120_000, [])
    >>> b.closed, decode_batch(encode_batch(b)) == b
    ({'3': 120000}, True)
    """

    closed: dict[str, int]
    partials: list[Partial]

    @classmethod
    def of(cls, source: str, closed_before_ms: int, partials: list[Partial]) -> "WindowBatch":
        """A batch of one source (what format 1 could say)."""
        return cls(closed={source: closed_before_ms}, partials=partials)


class WindowBatchV1(msgspec.Struct, array_like=True, kw_only=True):
    """Format 1 of a window batch (until 2026-12-07): one source per batch, an array beginning with
    its name. Still decoded (:func:`decode_batch`), so records written by a worker of the previous
    version before an upgrade are merged, not lost."""

    source: str
    closed_before_ms: int
    partials: list[Partial]


_BATCH_ENCODER = msgspec.msgpack.Encoder()
_BATCH_DECODER = msgspec.msgpack.Decoder(WindowBatch)
_BATCH_DECODER_V1 = msgspec.msgpack.Decoder(WindowBatchV1)


def encode_batch(batch: WindowBatch) -> bytes:
    """Compact bytes (MessagePack, structs as arrays) of a :class:`WindowBatch`."""
    return _BATCH_ENCODER.encode(batch)


def decode_batch(raw: bytes) -> WindowBatch:
    """A :class:`WindowBatch` from its bytes, format 2 or format 1 (converted: the source's close
    becomes ``closed``, its name each partial's ``sources`` where it had none).

    Raises :class:`msgspec.DecodeError` (a ``ValidationError`` for well-formed MessagePack of
    neither format) naming both formats' complaints: the worker dead-letters it (HotspotStage.reject), a record that
    is not a window batch is never merged silently.

    >>> old = msgspec.msgpack.encode(WindowBatchV1(source="1", closed_before_ms=60_000, partials=[
    ...     Partial(cell_id="c", region="r", start_ms=0, width_ms=60_000, sessions=2)]))
    >>> b = decode_batch(old)
    >>> b.closed, [(p.cell_id, p.sessions, p.sources) for p in b.partials]
    ({'1': 60000}, [('c', 2, ['1'])])
    >>> decode_batch(msgspec.msgpack.encode([7, {}, []]))   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    msgspec.ValidationError: not a window batch of format 2 (Invalid value 7 - at `$[0]`) or 1 (Expected `str`, ...
    """
    try:
        return _BATCH_DECODER.decode(raw)
    except msgspec.ValidationError as v2_error:
        try:
            old = _BATCH_DECODER_V1.decode(raw)
        except msgspec.ValidationError as v1_error:
            raise msgspec.ValidationError(
                f"not a window batch of format 2 ({v2_error}) or 1 ({v1_error})") from None
    named = [p if p.sources else msgspec.structs.replace(p, sources=[old.source]) for p in old.partials]
    return WindowBatch(closed={old.source: old.closed_before_ms}, partials=named)


class _Session(NamedTuple):
    """A network session given by its KPIs (:meth:`WindowAggregator.add_network_kpis`)."""

    subscriber_id: str
    ts_ms: int
    cell_id: str
    region: str
    service: str
    latency_ms: float
    jitter_ms: float
    packet_loss_pct: float
    dl_mbps: float
    ul_mbps: float
    rsrp_dbm: float
    sinr_db: float
    call_drop: bool
    video_stall_s: float


# An accumulator of one (cell, window) at one source is a flat list, not an object: making one is
# a copy of ``_BLANK`` (a C call; a class's ``__init__`` setting 17 slots cost ~3x as much, and at
# the benchmark's density -- ~1.4 sessions per cell, window and partition -- most sessions make a
# new one), and its fields are read and added to in place by these indices (the hot loops write
# them as literals, with the name beside).
A_SESSIONS, A_DEGRADED, A_DROPS, A_STALLS = 0, 1, 2, 3
A_KPI = 4                               # NETWORK_KPIS' sums, in their order: indices 4 .. 11
A_LAT_SQ, A_LAT_MAX = 12, 13
A_TICKETS, A_COMPLAINTS, A_APP_EVENTS, A_APP_FAILURES = 14, 15, 16, 17
A_RISK_N, A_RISK_SUM, A_RISK_SQ, A_RISK_MAX = 18, 19, 20, 21
A_AFFECTED = 22                         # set of subscriber ids, None until the first (most cells have none)
A_REGION = 23
_BLANK: list[Any] = [0, 0, 0, 0, *([0.0] * len(NETWORK_KPIS)), 0.0, 0.0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, None, ""]
_new_acc = _BLANK.copy
assert len(_BLANK) == A_REGION + 1 and A_KPI + len(NETWORK_KPIS) == A_LAT_SQ


def _affect(acc: list[Any], subscriber_id: str) -> None:
    affected = acc[22]   # A_AFFECTED
    if affected is None:
        affected = acc[22] = set()
    affected.add(subscriber_id)


def _to_partial(acc: list[Any], cell_id: str, start_ms: int, width_ms: int, sources: list[str]) -> Partial:
    """The :class:`Partial` of an accumulator (fields by position, in Partial's order); ``sources``
    is taken, not copied (an accumulator is closed once, then dropped)."""
    affected = acc[22]   # A_AFFECTED
    if affected:
        get = _HASHES.get   # subscriber_hash's cache, read inline: one call per id saved
        hashes = sorted({h if (h := get(s)) is not None else subscriber_hash(s) for s in affected})
    else:
        hashes = []
    return Partial(cell_id, acc[23], start_ms, width_ms, acc[0], acc[1], acc[2], acc[3], acc[4:12], acc[12],
                   acc[13], acc[14], acc[15], acc[16], acc[17], acc[18], acc[19], acc[20], acc[21], hashes, sources)


def _absorb(into: list[Any], other: list[Any]) -> None:
    """Add ``other`` (the same cell and window at another source) into ``into``: the arithmetic of
    :func:`merge_all` with ``into`` first, so the sums are the same floats, added in the same
    order, as merging the two sources' partials (its pairwise KPI sums are ``into[i] + other[i]``
    here). A group of fields that ``other`` left at zero is skipped: ``x + 0`` is ``x`` (a sum that
    starts at 0.0 is never -0.0) and a maximum that starts at 0.0 cannot rise by a zero."""
    if not into[23]:   # A_REGION
        into[23] = other[23]
    if other[0]:   # sessions: without them, every session field is zero
        into[0] += other[0]
        into[1] += other[1]
        into[2] += other[2]
        into[3] += other[3]
        into[4] += other[4]   # the KPI sums, A_KPI ..
        into[5] += other[5]
        into[6] += other[6]
        into[7] += other[7]
        into[8] += other[8]
        into[9] += other[9]
        into[10] += other[10]
        into[11] += other[11]
        into[12] += other[12]   # A_LAT_SQ
        if other[13] > into[13]:   # A_LAT_MAX
            into[13] = other[13]
    affected = other[22]
    if affected:
        if into[22] is None:
            into[22] = affected   # the other accumulator is dropped
        else:
            into[22] |= affected
    if other[14]:   # tickets, complaints
        into[14] += other[14]
        into[15] += other[15]
    if other[16]:   # app events, failures
        into[16] += other[16]
        into[17] += other[17]
    if other[18]:   # risk: n, sum, sum of squares, max
        into[18] += other[18]
        into[19] += other[19]
        into[20] += other[20]
        if other[21] > into[21]:
            into[21] = other[21]


class WindowAggregator:
    """One input partition's event-time tumbling windows per cell.

    Parameters
    ----------
    width_ms
        Window width (default one minute).
    allowed_lateness_ms
        How long after a window's end (in event time, by the watermark) events are still accepted.
    source
        Name of this aggregator in the partials it produces (the input partition, e.g. ``"3"``).
    retention_ms
        How long affected-subscriber ids are kept for :meth:`affected`.
    degraded
        What counts as a degraded session (:mod:`monitor.records.degraded`; the risk features use the same).

    The watermark is the largest event time seen; a window ``[s, s + width)`` closes once
    ``watermark >= s + width + allowed_lateness``. Events for a closed window are *late*: counted in
    :attr:`late_events` and left out (the window was already shipped).
    """

    def __init__(self, *, width_ms: int = 60_000, allowed_lateness_ms: int = 30_000, source: str = "0",
                 retention_ms: int = 3_600_000, degraded: DegradedSessionPolicy = DEGRADED) -> None:
        if width_ms <= 0 or allowed_lateness_ms < 0:
            raise ValueError("width_ms must be > 0 and allowed_lateness_ms >= 0")
        self.width_ms = width_ms
        self.allowed_lateness_ms = allowed_lateness_ms
        self.source = source
        self.retention_ms = retention_ms
        self.degraded = degraded
        self._open: dict[int, dict[str, list[Any]]] = {}   # window start -> cell -> accumulator
        self.watermark_ms: int | None = None
        # largest event time per stream: a stream with a backlog holds windows back (see close)
        self.stream_watermarks: dict[str, int] = {}
        self.closed_before_ms: int | None = None  # windows starting before this are closed
        self.late_events: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self.events: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self.unattributed = 0  # tickets/app events/scores add_batch could not place on a cell
        # cell -> subscriber id -> last event time it was affected (for the outreach API)
        self._recent: dict[str, dict[str, int]] = {}
        self._pruned_at = -(1 << 62)
        # time -> the (cell, subscriber) pairs that took it in _recent (one time per closed window),
        # so pruning drops what expired instead of scanning every retained id (a pair a later time
        # replaced is skipped). Buckets, not a heap: a window's ids all share its time, and popping
        # a heap of (time, cell, id) compared the strings of every entry of a window on the way down
        self._expiry: dict[int, list[tuple[str, str]]] = {}

    # -- feeding -------------------------------------------------------------------------------
    def _acc(self, stream: str, ts_ms: int, cell_id: str, region: str) -> list[Any] | None:
        wm = self.watermark_ms
        if wm is None or ts_ms > wm:
            self.watermark_ms = wm = ts_ms
        swm = self.stream_watermarks.get(stream)
        if swm is None or ts_ms > swm:
            self.stream_watermarks[stream] = ts_ms
        start = ts_ms - ts_ms % self.width_ms
        closed = self.closed_before_ms
        if closed is not None and start < closed:
            self.late_events[stream] += 1
            return None
        self.events[stream] += 1
        cells = self._open.get(start)
        if cells is None:
            cells = self._open[start] = {}
        acc = cells.get(cell_id)
        if acc is None:
            acc = cells[cell_id] = _new_acc()
            acc[23] = region   # A_REGION
        return acc

    def add_network(self, ev: Any) -> None:
        """Fold one ``NetworkEvent`` (or anything with its attributes) into its cell's window."""
        self._fold_sessions((ev,))

    def add_network_kpis(self, subscriber_id: str, ts_ms: int, cell_id: str, region: str, *,
                         service: str = "web", latency_ms: float = 30.0, jitter_ms: float = 3.0,
                         packet_loss_pct: float = 0.0, dl_mbps: float = 50.0, ul_mbps: float = 10.0,
                         rsrp_dbm: float = -90.0, sinr_db: float = 15.0, call_drop: bool = False,
                         video_stall_s: float = 0.0) -> None:
        """Fold one network session given by its KPIs (defaults describe a healthy session)."""
        self._fold_sessions((_Session(subscriber_id, ts_ms, cell_id, region, service, latency_ms, jitter_ms,
                                      packet_loss_pct, dl_mbps, ul_mbps, rsrp_dbm, sinr_db, call_drop,
                                      video_stall_s),))

    def _fold_sessions(self, sessions: Iterable[Any],
                       located: dict[str, tuple[str, str]] | None = None) -> int:
        """Fold network sessions into their cells' windows: the one place of the session arithmetic,
        written for throughput (no call per session; window and cell looked up once per run of
        equal window starts). Returns how many were seen, late ones included."""
        width = self.width_ms
        closed = self.closed_before_ms
        opened = self._open
        # DegradedSessionPolicy.is_degraded, inlined (this loop is the worker's hottest: no call per session)
        # (tests/test_degraded.py checks the two agree on the simulator's sessions)
        policy = self.degraded
        lat_lim, loss_lim = policy.max_latency_ms, policy.max_loss_pct
        dl_lim, sinr_lim, thru = policy.min_dl_mbps, policy.min_sinr_db, policy.throughput_services
        net_wm = self.stream_watermarks.get("network")
        n_net = late_net = 0
        cur_start: int | None = None
        cells: dict[str, list[Any]] = {}
        new_acc = _new_acc
        for ev in sessions:
            ts = ev.ts_ms
            if net_wm is None or ts > net_wm:
                net_wm = ts
            cell = ev.cell_id
            if located is not None:
                located[ev.subscriber_id] = (cell, ev.region)
            start = ts - ts % width
            if closed is not None and start < closed:
                late_net += 1
                continue
            n_net += 1
            if start != cur_start:
                cur_start = start
                cells = opened.get(start)  # type: ignore[assignment]
                if cells is None:
                    cells = opened[start] = {}
            acc = cells.get(cell)
            if acc is None:
                acc = cells[cell] = new_acc()
                acc[23] = ev.region          # A_REGION
            latency = ev.latency_ms
            loss = ev.packet_loss_pct
            dl = ev.dl_mbps
            sinr = ev.sinr_db
            stall = ev.video_stall_s
            acc[0] += 1                      # A_SESSIONS
            acc[4] += latency                # A_KPI .. in NETWORK_KPIS' order
            acc[5] += ev.jitter_ms
            acc[6] += loss
            acc[7] += dl
            acc[8] += ev.ul_mbps
            acc[9] += ev.rsrp_dbm
            acc[10] += sinr
            acc[11] += stall
            acc[12] += latency * latency     # A_LAT_SQ
            if latency > acc[13]:            # A_LAT_MAX
                acc[13] = latency
            degraded = False
            if ev.call_drop:
                acc[2] += 1                  # A_DROPS
                degraded = True
            if stall > 0:
                acc[3] += 1                  # A_STALLS
                degraded = True
            if degraded or latency > lat_lim or loss > loss_lim or sinr < sinr_lim or (
                    dl < dl_lim and ev.service in thru):
                acc[1] += 1                  # A_DEGRADED
                affected = acc[22]           # A_AFFECTED (_affect, inline)
                if affected is None:
                    affected = acc[22] = set()
                affected.add(ev.subscriber_id)
        if n_net or late_net:
            self.stream_watermarks["network"] = net_wm  # type: ignore[assignment]
            if self.watermark_ms is None or net_wm > self.watermark_ms:  # type: ignore[operator]
                self.watermark_ms = net_wm
            self.events["network"] += n_net
            self.late_events["network"] += late_net
        return n_net + late_net

    def add_ticket(self, ev: Any, cell_id: str, region: str) -> None:
        """Fold a ``TicketEvent`` into the window of the cell the caller attributes it to (the
        subscriber's current cell, which the risk core knows; tickets carry no cell)."""
        acc = self._acc("tickets", ev.ts_ms, cell_id, region)
        if acc is None:
            return
        acc[A_TICKETS] += 1
        if ev.action in COMPLAINT_ACTIONS:
            acc[A_COMPLAINTS] += 1
            _affect(acc, ev.subscriber_id)

    def add_app(self, ev: Any, cell_id: str, region: str) -> None:
        """Fold an ``AppEvent`` into the window of the cell the caller attributes it to."""
        acc = self._acc("app", ev.ts_ms, cell_id, region)
        if acc is None:
            return
        acc[A_APP_EVENTS] += 1
        if ev.kind in APP_FAILURE_KINDS:
            acc[A_APP_FAILURES] += 1
            _affect(acc, ev.subscriber_id)

    def add_risk(self, subscriber_id: str, ts_ms: int, score: float, cell_id: str, region: str) -> None:
        """Fold a risk score (``RiskScore.score``) of a subscriber on ``cell_id``."""
        acc = self._acc("risk", ts_ms, cell_id, region)
        if acc is None:
            return
        acc[A_RISK_N] += 1
        acc[A_RISK_SUM] += score
        acc[A_RISK_SQ] += score * score
        if score > acc[A_RISK_MAX]:
            acc[A_RISK_MAX] = score

    def add_batch(self, events: Iterable[Any], scores: Iterable[Any] = (),
                  cell_of: Callable[[str], tuple[str, str] | None] | None = None,
                  located: dict[str, tuple[str, str]] | None = None) -> set[str]:
        """Fold a batch of decoded input records and risk scores; returns the streams seen.

        ``cell_of(subscriber_id) -> (cell_id, region) | None`` attributes tickets, app events and
        scores without a cell; records it cannot attribute are skipped (counted in ``unattributed``).
        ``located``, if given, is updated with each network event's ``(cell_id, region)`` by
        subscriber (the caller's attribution map): the batch's sessions are folded first, so a
        ticket or app event is placed on its subscriber's last cell as of the end of the batch.
        """
        sessions: list[Any] = []
        others: list[Any] = []
        for ev in events:
            (sessions if getattr(ev, "stream", None) == "network" else others).append(ev)
        present: set[str] = {"network"} if self._fold_sessions(sessions, located) else set()
        for ev in others:  # after the sessions: a subscriber's cell as of the end of the batch
            stream = getattr(ev, "stream", None)
            if stream is not None:
                present.add(stream)
            where = cell_of(ev.subscriber_id) if cell_of is not None else None
            if where is None:
                self.unattributed += 1
            elif stream == "tickets":
                self.add_ticket(ev, *where)
            elif stream == "app":
                self.add_app(ev, *where)
        for s in scores:
            where = (s.cell_id, s.region) if s.cell_id is not None and s.region is not None else (
                cell_of(s.subscriber_id) if cell_of is not None else None)
            if where is None:
                self.unattributed += 1
            else:
                self.add_risk(s.subscriber_id, s.ts_ms, s.score, *where)
        return present

    # -- closing -------------------------------------------------------------------------------
    def close(self, watermark_ms: int | None = None, *, hold_ms: float | None = None) -> list[Partial]:
        """Close every window the watermark has passed (by more than the allowed lateness).

        ``watermark_ms`` may advance the watermark beyond the events seen (e.g. an idle partition
        driven by wall-clock time); it never moves it back. ``hold_ms`` caps the horizon for this
        call without changing the watermark: the caller passes the event time of a stream that still
        has records waiting in Kafka (see :meth:`holds`), so a sparse stream fetched ahead of a dense
        one cannot close the dense stream's windows before its backlog is read. Returns the
        partials, oldest first.

        >>> agg = WindowAggregator(width_ms=60_000, allowed_lateness_ms=0)
        >>> agg.add_network_kpis("s1", 10_000, "c1", "r")
        >>> agg.add_app(type("App", (), {"ts_ms": 300_000, "kind": "error", "subscriber_id": "s1"})(), "c1", "r")
        >>> agg.close(hold_ms=agg.stream_watermarks["network"])   # network still has a backlog
        []
        >>> agg.add_network_kpis("s2", 50_000, "c1", "r")          # ... which is not late
        >>> [(p.start_ms, p.sessions) for p in agg.close()]
        [(0, 2)]
        """
        closed_before = self._advance(watermark_ms, hold_ms)
        return [] if closed_before is None else self._partials(self._pop(closed_before))

    def pop_closed(self, watermark_ms: int | None = None, *,
                   hold_ms: float | None = None) -> list[tuple[int, dict[str, list[Any]]]]:
        """:meth:`close`, returning the closed windows' accumulators (``(start, {cell:
        accumulator})``, oldest first) instead of partials: :class:`WindowCombiner` adds up
        several sources' before it makes one partial of them."""
        closed_before = self._advance(watermark_ms, hold_ms)
        return [] if closed_before is None else self._pop(closed_before)

    def _advance(self, watermark_ms: int | None, hold_ms: float | None) -> int | None:
        """Move the watermark (``watermark_ms``) and the close horizon; the new ``closed_before_ms``,
        or None when no further window closes."""
        if watermark_ms is not None and (self.watermark_ms is None or watermark_ms > self.watermark_ms):
            self.watermark_ms = watermark_ms
        if self.watermark_ms is None:
            return None
        effective = self.watermark_ms if hold_ms is None else min(self.watermark_ms, hold_ms)
        if effective < 0:
            return None
        horizon = int(effective) - self.allowed_lateness_ms
        closed_before = horizon - horizon % self.width_ms
        if self.closed_before_ms is not None and closed_before <= self.closed_before_ms:
            return None
        self.closed_before_ms = closed_before
        return closed_before

    def holds(self, backlogged: Iterable[str]) -> float | None:
        """The ``hold_ms`` for :meth:`close` given the streams that still have records waiting:
        the smallest of their watermarks (``-inf`` for one not seen yet: nothing can close), or
        None when no stream is behind."""
        marks = [float(self.stream_watermarks.get(s, float("-inf"))) for s in backlogged]
        return min(marks) if marks else None

    def flush(self) -> list[Partial]:
        """Close every open window (end of a replay, or a partition being revoked)."""
        return self._partials(self.pop_all())

    def pop_all(self) -> list[tuple[int, dict[str, list[Any]]]]:
        """:meth:`flush`, returning accumulators as :meth:`pop_closed` does."""
        if self._open:
            last = max(self._open) + self.width_ms
            if self.closed_before_ms is None or last > self.closed_before_ms:
                self.closed_before_ms = last
        return self._pop(None)

    def _partials(self, closed: list[tuple[int, dict[str, list[Any]]]]) -> list[Partial]:
        width, source = self.width_ms, self.source
        return [_to_partial(cells[cell_id], cell_id, start, width, [source])
                for start, cells in closed for cell_id in sorted(cells)]

    def _pop(self, before: int | None) -> list[tuple[int, dict[str, list[Any]]]]:
        # open windows are indexed by start: closing costs what it closes, not what stays open
        out = []
        expiry = self._expiry
        for start in sorted(st for st in self._open if before is None or st < before):
            cells = self._open.pop(start)
            out.append((start, cells))
            last = start + self.width_ms - 1
            bucket = None
            for cell_id, acc in cells.items():
                affected = acc[22]   # A_AFFECTED
                if affected:
                    recent = self._recent.setdefault(cell_id, {})
                    for sid in affected:
                        if recent.get(sid, -1) < last:
                            recent[sid] = last
                            if bucket is None:
                                bucket = expiry.setdefault(last, [])
                            bucket.append((cell_id, sid))
        self._prune()
        return out

    def _prune(self) -> None:
        # at most once per window of watermark progress: every retained id older than the retention
        if self.watermark_ms is None or self.watermark_ms < self._pruned_at + self.width_ms:
            return
        self._pruned_at = self.watermark_ms
        cutoff = self.watermark_ms - self.retention_ms
        expiry, recent = self._expiry, self._recent
        for t in sorted(t for t in expiry if t < cutoff):
            for cell, sid in expiry.pop(t):
                subs = recent.get(cell)
                if subs is not None and subs.get(sid) == t:   # not affected again since
                    del subs[sid]
                    if not subs:
                        del recent[cell]

    def batch_for(self, partials: Sequence[Partial]) -> WindowBatch:
        """The :class:`WindowBatch` announcing this source's closed windows (send even if empty)."""
        return WindowBatch.of(self.source, self.closed_before_ms or 0, list(partials))

    # -- queries -------------------------------------------------------------------------------
    def affected(self, cell_id: str, since_ms: int | None = None) -> list[str]:
        """Ids of subscribers this source saw affected on ``cell_id`` (closed windows within the
        retention, optionally only since ``since_ms``), sorted."""
        subs = self._recent.get(cell_id, {})
        return sorted(s for s, t in subs.items() if since_ms is None or t >= since_ms)

    @property
    def open_windows(self) -> int:
        """(cell, window) accumulators still open: what a held-back close keeps in memory."""
        return sum(len(cells) for cells in self._open.values())


def _window_partials(start: int, width: int, parts: list[tuple[str, dict[str, list[Any]]]],
                     separate: bool) -> list[Partial]:
    """The partials of one window's accumulators at one or more sources (``(source, {cell: acc})``
    in the order the sources closed it), ordered by cell: one per cell, its accumulators added up in
    that order (:func:`_absorb`), or with ``separate`` (the window left before) one per cell
    and source, in that order."""
    if len(parts) == 1:
        source, cells = parts[0]
        sources = [source]
        return [_to_partial(cells[cell_id], cell_id, start, width, sources) for cell_id in sorted(cells)]
    if separate:
        found: dict[str, list[tuple[str, list[Any]]]] = {}
        for source, cells in parts:
            for cell_id, acc in cells.items():
                found.setdefault(cell_id, []).append((source, acc))
        return [_to_partial(acc, cell_id, start, width, [source])
                for cell_id in sorted(found) for source, acc in found[cell_id]]
    first, base = parts[0]   # the first source's accumulators take in the others'
    more: dict[str, list[str]] = {}   # cell -> its sources, for the cells not the first source's alone
    for source, cells in parts[1:]:
        for cell_id, acc in cells.items():
            into = base.get(cell_id)
            if into is None:
                base[cell_id] = acc
                more[cell_id] = [source]
            else:
                _absorb(into, acc)
                sources = more.get(cell_id)
                if sources is None:
                    more[cell_id] = [first, source]
                else:
                    sources.append(source)
    out = []
    alone = [first]
    for cell_id in sorted(base):
        sources = more.get(cell_id, alone)
        out.append(_to_partial(base[cell_id], cell_id, start, width,
                               sources if len(sources) == 1 else sorted(set(sources))))
    return out


class WindowCombiner:
    """One worker's closed windows of all its sources (input partitions), added up per cell and window
    before they are shipped: one partial per cell and window instead of one per source.

    A worker holds several input partitions, and each closes its windows on its own watermark
    (:class:`WindowAggregator`). Shipped as they close, a cell's window left a worker as one partial
    per partition -- about two events each at the benchmark's density -- and the region's owner
    decoded and merged them all. Here the closed accumulators of a window wait until every source
    still worth waiting for has closed it too, then leave as one partial whose ``sources`` name the
    partitions it covers.

    **Completeness.** A source's close is announced (:class:`WindowBatch` ``closed``) no further than
    the oldest window still held, so the receiver never completes a window whose contributions are
    still here: whatever a source has added to windows before its announced close has been sent.
    **Each event counted once.** An accumulator is absorbed into exactly one held window and that
    window is released exactly once; a source that adds to a window after it was released (one
    that was not waited for) sends its own partial later, which the receiver adds like any other.
    **Bounded.** A source is waited for only while the caller lists it (``waiting_for``: the
    worker's active partitions) and only if it is at most ``max_wait_ms`` of event time behind the
    window; a revoked partition releases everything (``everything=True``).

    The sums are the floats :func:`merge_all` makes of the sources' partials in the order they
    closed (:func:`_absorb`), so the receiver, which merges in arrival order, sees the same values.

    >>> from monitor.detection.windows import WindowAggregator as Agg
    >>> a, b = Agg(allowed_lateness_ms=0, source="0"), Agg(allowed_lateness_ms=0, source="1")
    >>> a.add_network_kpis("s1", 10_000, "c", "r"); b.add_network_kpis("s2", 20_000, "c", "r")
    >>> comb = WindowCombiner()
    >>> comb.add("1", 0, [])                        # source "1" has closed what came before
    >>> comb.add("0", 60_000, a.pop_closed(60_000))
    >>> comb.release(waiting_for=["0", "1"])        # ... but not this window yet: "0" is announced up to it
    ([], {'1': 0, '0': 0})
    >>> comb.add("1", 60_000, b.pop_closed(60_000))
    >>> parts, closed = comb.release(waiting_for=["0", "1"])
    >>> [(p.cell_id, p.sessions, p.sources) for p in parts], closed
    ([('c', 2, ['0', '1'])], {'1': 60000, '0': 60000})
    """

    def __init__(self, *, width_ms: int = 60_000, max_wait_ms: int = 120_000) -> None:
        self.width_ms = width_ms
        self.max_wait_ms = max_wait_ms
        # window start -> [(source, {cell: accumulator})] in the order the sources closed it: nothing
        # per accumulator until the window leaves (most windows of a worker in step, and every one
        # of a worker whose partitions are not, leave with one source)
        self._held: dict[int, list[tuple[str, dict[str, list[Any]]]]] = {}
        # windows released while a source was not waited for: what comes for them later leaves one
        # partial per source, so the receiver adds in the order the sources closed (the same floats
        # as partials shipped one by one); forgotten once every source has closed them
        self._released: set[int] = set()
        self._closed: dict[str, int] = {}   # source -> its closed_before_ms
        self._told: dict[str, int] = {}     # source -> the close last announced
        self.accumulators = 0               # closed (cell, window, source) accumulators added
        self.partials = 0                   # partials released

    def add(self, source: str, closed_before_ms: int, closed: Iterable[tuple[int, dict[str, list[Any]]]]) -> None:
        """A source's close: its new ``closed_before_ms`` and the windows it closed
        (:meth:`WindowAggregator.pop_closed`), whose accumulators are taken over."""
        self._closed[source] = closed_before_ms
        held = self._held
        n = 0
        for start, cells in closed:
            n += len(cells)
            parts = held.get(start)
            if parts is None:
                held[start] = [(source, cells)]
            else:
                parts.append((source, cells))
        self.accumulators += n

    def release(self, waiting_for: Iterable[str] = (), *,
                everything: bool = False) -> tuple[list[Partial], dict[str, int]]:
        """The held windows no source in ``waiting_for`` may still add to (all of them with
        ``everything``), as partials ordered by window then cell, and the closes to announce with
        them: per source whose announcement advances, its close capped at the oldest window still
        held (a source's close that a held window caps is announced once the window leaves)."""
        held = self._held
        out: list[Partial] = []
        if held:
            closed = self._closed
            max_wait, width = self.max_wait_ms, self.width_ms
            # (close, close + max_wait) of each source waited for: a window starting in one of these
            # spans waits (that source has not closed it and is not too far behind it)
            spans = [] if everything else [
                (c, c + max_wait) for c in (closed.get(s) for s in waiting_for) if c is not None]
            released = self._released
            for start in sorted(held):
                for since, until in spans:
                    if since <= start <= until:
                        break
                else:
                    out.extend(_window_partials(start, width, held.pop(start), start in released))
                    released.add(start)
            self.partials += len(out)
            if len(released) > 64:   # no source of this worker adds to a window before its close
                lo = min(closed.values())
                released = self._released = {s for s in released if s >= lo}
                if len(released) > 4096:   # a source long quiet: bounded all the same
                    self._released = set(sorted(released)[-4096:])
        cap = min(held) if held else None
        told = self._told
        announce: dict[str, int] = {}
        for src, c in self._closed.items():
            if cap is not None and cap < c:
                c = cap
            prev = told.get(src)
            if prev is None or c > prev:
                announce[src] = told[src] = c
        return out, announce

    def forget(self, source: str) -> None:
        """Stop announcing ``source`` (its partition was revoked; release everything first)."""
        self._closed.pop(source, None)
        self._told.pop(source, None)

    @property
    def open_windows(self) -> int:
        """(cell, window, source) accumulators held for another source to close the window too."""
        return sum(len(cells) for parts in self._held.values() for _s, cells in parts)


class WindowMerger:
    """Adds up the partials of every source for the cells one region-owner is responsible for.

    A window is *complete* once every expected source has closed it (its ``closed_before_ms``
    passed the window's start) — sources send a :class:`WindowBatch` on every close even with no
    partials, so a source without traffic for a cell still says so; one batch may announce the
    closes of several sources (a worker's partitions, :class:`WindowCombiner`) and carry partials
    that cover several. A source that stops reporting
    (idle or lost partition) for ``max_silence_s`` of *wall-clock* time no longer holds windows
    back: they are completed without it. Event-time skew between sources is normal while a worker
    catches up a backlog (one partition's batch can be many minutes of event time ahead of
    another's), so it is not a reason to give up on a source unless ``max_skew_ms`` is set.
    Partials arriving for an already completed window are counted in :attr:`late_partials`.

    >>> m = WindowMerger(sources=["0", "1"])
    >>> m.add(WindowBatch.of("0", 60_000, [Partial(cell_id="c", region="r", start_ms=0, width_ms=60_000, sessions=3)]))
    >>> m.pop_complete()   # source "1" has not closed the window yet
    []
    >>> m.add(WindowBatch.of("1", 60_000, [Partial(cell_id="c", region="r", start_ms=0, width_ms=60_000, sessions=2)]))
    >>> [(p.cell_id, p.sessions, p.sources) for p in m.pop_complete()]
    [('c', 5, ['0', '1'])]
    """

    def __init__(self, *, sources: Iterable[str], max_skew_ms: int | None = None, max_silence_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = frozenset(sources)
        self.max_skew_ms = max_skew_ms
        self.max_silence_s = max_silence_s
        self.clock = clock
        self._born = clock()
        self._heard: dict[str, float] = {}
        # (window start, cell) -> the partials of the sources so far, merged once the window is complete
        self._pending: dict[tuple[int, str], list[Partial]] = {}
        self._closed: dict[str, int] = {}
        self.completed_before_ms: int | None = None
        self.late_partials = 0

    def add(self, batch: WindowBatch) -> None:
        now = self.clock()
        heard, closed = self._heard, self._closed
        for source, closed_before in batch.closed.items():
            heard[source] = now
            prev = closed.get(source)
            if prev is None or closed_before > prev:
                closed[source] = closed_before
        done = self.completed_before_ms
        pending = self._pending
        only = next(iter(batch.closed)) if len(batch.closed) == 1 else None
        for p in batch.partials:
            if done is not None and p.start_ms < done:
                self.late_partials += 1
                continue
            if not p.sources and only is not None:
                p = msgspec.structs.replace(p, sources=[only])
            key = (p.start_ms, p.cell_id)
            parts = pending.get(key)
            if parts is None:
                pending[key] = [p]
            else:
                parts.append(p)

    @property
    def open_windows(self) -> int:
        """(cell, window) partials waiting for every source to close their window."""
        return len(self._pending)

    def pop_complete(self) -> list[Partial]:
        """Merged partials of every complete window, ordered by window start then cell."""
        if not self._closed:
            return []
        now = self.clock()
        newest = max(self._closed.values())
        waiting = []   # the closes of the sources still worth waiting for
        for src in self.sources:
            heard = self._heard.get(src, self._born)
            if now - heard <= self.max_silence_s:
                if src not in self._closed:
                    waiting.append(-1 << 62)   # not heard from yet, but not silent for long either
                else:
                    waiting.append(self._closed[src])
        horizon = min(waiting) if waiting else newest
        if self.max_skew_ms is not None:
            horizon = max(horizon, newest - self.max_skew_ms)
        if self.completed_before_ms is not None and horizon <= self.completed_before_ms:
            return []
        self.completed_before_ms = horizon
        keys = sorted(k for k in self._pending if k[0] < horizon)
        return [merge_all(self._pending.pop(k)) for k in keys]

    def flush(self) -> list[Partial]:
        """Every pending window, complete or not (end of a replay)."""
        keys = sorted(self._pending)
        if keys:
            end = keys[-1][0] + 1
            self.completed_before_ms = max(end, self.completed_before_ms or end)
        return [merge_all(self._pending.pop(k)) for k in keys]


def group_by_window(partials: Iterable[Partial]) -> Iterator[tuple[int, list[Partial]]]:
    """``(start_ms, [partials])`` in window order (input need not be sorted)."""
    by: dict[int, list[Partial]] = {}
    for p in partials:
        by.setdefault(p.start_ms, []).append(p)
    for start in sorted(by):
        yield start, by[start]
