"""A materialised view of the ``risk-scores`` topic: the at-risk index every worker serves from.

Each worker owns only some partitions of the inputs, but an API request to *any* worker must get
the complete answer. So every worker reads *all* partitions of ``risk-scores`` (plus ``alerts`` and
``satmon-outreach``) with a plain consumer, no consumer group, from the beginning
(:class:`monitor.worker.viewfeed.ViewFeeder`), into a :class:`RiskView`: the latest score per subscriber, subscribers at
risk ranked by ``(-score, subscriber_id)`` overall and per region, a short history ring per
subscriber, and an index by current cell. Hot spots come from ``alerts`` into a
:class:`HotspotBoard`. :class:`RiskView` and :class:`HotspotBoard` are pure: tests feed them
:class:`~monitor.records.events.RiskScore` records directly.

**Ordering.** Records are applied in partition-offset order; a record whose event time ``ts_ms`` is
older than the subscriber's current one (a replay after a rebalance) is ignored, so the newest
event time wins and ties go to the later record.

**Consistent pages.** :meth:`RiskView.page` reads the list *as of a view position* -- the vector
of next offsets per partition. A page walk pins the position of its first page in the cursor
(with the ``(score, id)`` of the last row returned), and every later page is computed as of that
position: subscribers whose score changed after it are placed by the version they had then (from
their history ring). The walk therefore returns exactly the list as it was when the walk started,
each subscriber once, in order -- new scores arriving during the walk cause no duplicates and no
skips. Because the position is made of Kafka offsets, a cursor from one worker means the same on
every worker. A cursor is *expired* (:class:`CursorExpired`) when the view no longer remembers what
it needs (a subscriber changed more than ``history`` times since, or the change log was trimmed).

>>> from monitor.records.events import RiskScore
>>> view = RiskView()
>>> for sid, score in [("a", 0.9), ("b", 0.7), ("c", 0.2)]:
...     view.apply(RiskScore(subscriber_id=sid, ts_ms=1, scored_at_ms=1, score=score, at_risk=score >= 0.5,
...                          reasons=[], model_version=0, region="north"))
True
True
True
>>> [sid for sid, _ in view.page(limit=10).rows]
['a', 'b']
"""

from __future__ import annotations

import bisect
import logging
import sys
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from monitor.records.errors import MonitorError
from monitor.records.events import Alert, RiskScore, decode
from monitor.records.topics import ALERTS, RISK_SCORES

log = logging.getLogger(__name__)

RISK_SCORES_TOPIC = RISK_SCORES
ALERTS_TOPIC = ALERTS
# Versions kept per subscriber: the score history shown in the API and what lets a page walk see a
# subscriber as it was when the walk began.
DEFAULT_HISTORY = 12
# Change-log entries kept per partition before the oldest half is dropped (expiring older cursors).
DEFAULT_CHANGE_LOG = 200_000

Key = tuple[float, str]  # (-score, subscriber_id): ascending order = highest risk first


class Version(NamedTuple):
    """One applied score of one subscriber (compact: the full record is kept only for the latest)."""

    offset: int
    ts_ms: int
    scored_at_ms: int
    score: float
    at_risk: bool
    at_risk_since_ms: int | None
    region: str | None
    segment: str | None
    cell_id: str | None
    reasons: tuple[str, ...]  # reason codes


class Entry:
    """Everything the view knows about one subscriber."""

    __slots__ = ("sid", "latest", "partition", "history", "first_offset", "first_at_risk_ms")

    def __init__(self, latest: RiskScore, partition: int, offset: int, history: int):
        # The one string object of this subscriber id: the change log and the ranked index refer
        # to it, not to each decoded record's own copy (which would keep every copy alive).
        self.sid = latest.subscriber_id
        self.latest = latest
        self.partition = partition
        self.first_offset = offset
        self.history: deque[Version] = deque(maxlen=history)
        self.first_at_risk_ms: int | None = None

    @property
    def current(self) -> Version:
        return self.history[-1]


class CursorExpired(MonitorError):
    """The view no longer holds what a page walk's snapshot needs: start the walk again."""


class Page(NamedTuple):
    """One page: ``rows`` as ``(subscriber_id, version-as-of-the-snapshot)``, the key of the last
    row if more may follow (else ``None``), and the snapshot position."""

    rows: list[tuple[str, Version]]
    next_key: Key | None
    position: tuple[int, ...]


Predicate = Callable[[str, Version], bool]


class ServedRow(NamedTuple):
    """A subscriber served by some cells: current version, scores on those cells, last time there."""

    sid: str
    version: Version
    uses: int
    last_ms: int


def _intern(text: str | None) -> str | None:
    # Regions, segments, cells and reason codes repeat across millions of versions: share them.
    return sys.intern(text) if text is not None else None


class RiskView:
    """Latest score per subscriber, the ranked at-risk index, history rings and a cell index.

    Parameters
    ----------
    history
        Versions kept per subscriber.
    change_log
        Change-log entries kept per partition (bounds how far back a page walk can be replayed).
    """

    def __init__(self, *, history: int = DEFAULT_HISTORY, change_log: int = DEFAULT_CHANGE_LOG):
        self.history = history
        self.change_log = change_log
        self._entries: dict[str, Entry] = {}
        self._ranked: list[Key] = []
        self._by_region: dict[str | None, list[Key]] = {}
        self._by_cell: dict[str, set[str]] = {}
        # cell -> {subscriber: versions in their history ring on that cell}: who was served by a
        # cell recently and how often (the affected-customer lists of hot spots and incidents)
        self._served: dict[str, dict[str, int]] = {}
        self._next: list[int] = []  # next offset per partition
        # The change log, compact: 8 bytes of offset and one reference to the entry's id per change.
        self._log_offsets: list[array[int]] = []
        self._log_sids: list[list[str]] = []
        self._reason_sets: dict[tuple[str, ...], tuple[str, ...]] = {}  # shared reason-code tuples
        self._log_floor: list[int] = []  # changes below this offset were dropped from the log
        self.records_applied = 0
        self.records_stale = 0
        self.versions = 0  # history versions held, all rings (grows until every ring is full)

    # ------------------------------------------------------------------ writes

    def _grow(self, partition: int) -> None:
        while len(self._next) <= partition:
            self._next.append(0)
            self._log_offsets.append(array("q"))
            self._log_sids.append([])
            self._log_floor.append(0)

    def apply(self, score: RiskScore, partition: int = 0, offset: int | None = None) -> bool:
        """Apply one record read at ``(partition, offset)`` (offset defaults to the next one).
        Returns ``False`` for a duplicate (offset already applied) or stale record."""
        self._grow(partition)
        if offset is None:
            offset = self._next[partition]
        elif offset < self._next[partition]:
            return False
        self._next[partition] = offset + 1
        entry = self._entries.get(score.subscriber_id)
        # One subscriber's scores share a partition, and a later offset is the core's later state,
        # even when its triggering event is older in event time (a ticket fetched after a newer
        # network session): offset order wins. Event time only orders records from another
        # partition (the topic was repartitioned).
        if entry is not None and partition != entry.partition and score.ts_ms < entry.latest.ts_ms:
            self.records_stale += 1
            return False
        prev = entry.current if entry is not None else None
        since = score.at_risk_since_ms
        if score.at_risk and since is None:
            since = prev.at_risk_since_ms if prev is not None and prev.at_risk else score.ts_ms
        version = Version(offset, score.ts_ms, score.scored_at_ms, score.score, score.at_risk,
                          since if score.at_risk else None, _intern(score.region), _intern(score.segment),
                          _intern(score.cell_id), self._reason_set(score.reasons))
        if entry is None:
            entry = Entry(score, partition, offset, self.history)
            sid = entry.sid
            self._entries[sid] = entry
        else:
            sid = entry.sid
            self._unindex(sid, prev)
            entry.latest = score
            entry.partition = partition
        if len(entry.history) < self.history:
            self.versions += 1
        elif entry.history[0].cell_id is not None:
            self._unserve(entry.history[0].cell_id, sid)   # the version about to drop out of the ring
        entry.history.append(version)
        if version.cell_id is not None:
            served = self._served.get(version.cell_id)
            if served is None:
                served = self._served[version.cell_id] = {}
            served[sid] = served.get(sid, 0) + 1
        if score.at_risk and entry.first_at_risk_ms is None:
            entry.first_at_risk_ms = since if since is not None else score.ts_ms
        self._index(sid, version)
        self._log(partition, offset, sid)
        self.records_applied += 1
        return True

    def _unserve(self, cell_id: str, sid: str) -> None:
        served = self._served.get(cell_id)
        if served is None:
            return
        n = served.get(sid, 0) - 1
        if n > 0:
            served[sid] = n
        else:
            served.pop(sid, None)
            if not served:
                del self._served[cell_id]

    def _reason_set(self, reasons: Sequence[Any]) -> tuple[str, ...]:
        codes = tuple(_intern(r.code) for r in reasons)
        shared = self._reason_sets.get(codes)
        if shared is not None:
            return shared
        if len(self._reason_sets) < 100_000:   # the combinations seen are few; bound them anyway
            self._reason_sets[codes] = codes
        return codes  # type: ignore[return-value]

    def _index(self, sid: str, v: Version) -> None:
        if v.at_risk:
            key = (-v.score, sid)
            bisect.insort(self._ranked, key)
            bisect.insort(self._by_region.setdefault(v.region, []), key)
        if v.cell_id is not None:
            self._by_cell.setdefault(v.cell_id, set()).add(sid)

    def _unindex(self, sid: str, v: Version | None) -> None:
        if v is None:
            return
        if v.at_risk:
            key = (-v.score, sid)
            for lst in (self._ranked, self._by_region[v.region]):
                i = bisect.bisect_left(lst, key)
                if i < len(lst) and lst[i] == key:
                    del lst[i]
        if v.cell_id is not None:
            cell = self._by_cell.get(v.cell_id)
            if cell is not None:
                cell.discard(sid)
                if not cell:
                    del self._by_cell[v.cell_id]

    def _log(self, partition: int, offset: int, sid: str) -> None:
        offsets, sids = self._log_offsets[partition], self._log_sids[partition]
        offsets.append(offset)
        sids.append(sid)
        if len(offsets) > self.change_log:
            half = len(offsets) // 2
            self._log_floor[partition] = offsets[half]
            del offsets[:half], sids[:half]

    # ------------------------------------------------------------------ reads

    def position(self) -> tuple[int, ...]:
        """Next offset per partition: the view has applied everything below it."""
        return tuple(self._next)

    def covers(self, position: Sequence[int]) -> bool:
        """True once this view has applied everything below ``position`` (another worker's cursor)."""
        return all(p <= (self._next[i] if i < len(self._next) else 0) for i, p in enumerate(position))

    def get(self, sid: str) -> Entry | None:
        return self._entries.get(sid)

    def __len__(self) -> int:
        return len(self._entries)

    def change_log_entries(self) -> int:
        """Change-log entries held, all partitions (bounded: ``change_log`` per partition)."""
        return sum(len(offsets) for offsets in self._log_offsets)

    @property
    def at_risk_count(self) -> int:
        return len(self._ranked)

    def at_risk_by_region(self) -> dict[str | None, int]:
        return {region: len(keys) for region, keys in self._by_region.items() if keys}

    def worklist(self, team: str, *, capacity: int, region: str | None = None,
                 eligible: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
        """The list a team works: per region, the ``capacity`` subscribers most likely to have the
        team's outcome (:data:`monitor.scoring.risk.TEAMS`), ranked, with every outcome's probability and
        the reasons of their latest score. No threshold: the team's daily capacity is the budget.
        ``eligible(subscriber_id)`` leaves out who may not be contacted before the budget is
        filled. (A scan of the view: O(subscribers) per call.)"""
        import heapq

        from monitor.scoring.risk import OUTCOMES as TEAMS_OUTCOMES, TEAMS

        outcome = TEAMS[team]
        pools: dict[str | None, list[tuple[float, str]]] = {}
        for sid, entry in self._entries.items():
            probs = entry.latest.outcomes
            r = entry.current.region
            if probs is None or (region is not None and r != region) or (eligible is not None and not eligible(sid)):
                continue
            pools.setdefault(r, []).append((getattr(probs, outcome), sid))
        out = []
        for r in sorted(pools, key=lambda r: (r is None, r or "")):
            for rank, (p, sid) in enumerate(heapq.nlargest(capacity, pools[r]), 1):
                rec = self._entries[sid].latest
                out.append({"team": team, "outcome": outcome, "region": r, "rank": rank, "subscriber_id": sid,
                            "probability": p, "outcomes": {k: getattr(rec.outcomes, k) for k in TEAMS_OUTCOMES},
                            "reasons": [{"code": x.code, "text": x.text} for x in rec.reasons],
                            "scored_ts_ms": rec.ts_ms, "segment": rec.segment})
        return out

    def risk_bands(self) -> dict[tuple[str | None, str], int]:
        """``{(region, band): subscribers}`` by the headline score's :data:`monitor.scoring.risk.RISK_BANDS`."""
        from monitor.scoring.risk import band_of

        counts: dict[tuple[str | None, str], int] = {}
        for entry in self._entries.values():
            key = (entry.current.region, band_of(entry.current.score))
            counts[key] = counts.get(key, 0) + 1
        return counts

    def at_risk_by_region_segment(self) -> dict[tuple[str | None, str | None], int]:
        """Subscribers at risk now per ``(region, segment)`` (the at-risk gauges)."""
        counts: dict[tuple[str | None, str | None], int] = {}
        for entry in self._entries.values():
            cur = entry.current
            if cur.at_risk:
                key = (cur.region, cur.segment)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def subscribers_by_region(self) -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for entry in self._entries.values():
            counts[entry.current.region] = counts.get(entry.current.region, 0) + 1
        return counts

    def cohort(self) -> Iterator[tuple[str, int, bool]]:
        """``(subscriber, first_at_risk_ms, at_risk_now)`` for everyone ever seen at risk."""
        for sid, entry in self._entries.items():
            if entry.first_at_risk_ms is not None:
                yield sid, entry.first_at_risk_ms, entry.current.at_risk

    def on_cell(self, cell_id: str, *, since_ms: int = 0) -> list[tuple[str, Version]]:
        """Subscribers whose current cell is ``cell_id`` and whose latest score has an event time
        at or after ``since_ms``, highest score first."""
        rows = []
        for sid in self._by_cell.get(cell_id, ()):
            v = self._entries[sid].current
            if v.ts_ms >= since_ms:
                rows.append((sid, v))
        rows.sort(key=lambda r: (-r[1].score, r[0]))
        return rows

    def served_by(self, cells: Iterable[str], *, since_ms: int = 0, min_uses: int = 1) -> list[ServedRow]:
        """Subscribers recently served by any of ``cells``: at least ``min_uses`` of the scores in
        their history ring (``history`` versions) were on those cells at or after ``since_ms``.
        Rows hold the current version, the uses and the last time on the cells; highest current
        score first (then most uses, then id).

        >>> from monitor.records.events import RiskScore
        >>> view = RiskView()
        >>> for sid, ts, cell in [("a", 10, "c1"), ("a", 20, "c1"), ("b", 15, "c1"), ("b", 30, "c2"), ("c", 5, "c1")]:
        ...     _ = view.apply(RiskScore(subscriber_id=sid, ts_ms=ts, scored_at_ms=ts, score=0.5, at_risk=True,
        ...                              reasons=[], model_version=0, cell_id=cell))
        >>> [(r.sid, r.uses, r.last_ms) for r in view.served_by(["c1"], since_ms=8)]
        [('a', 2, 20), ('b', 1, 15)]
        >>> [r.sid for r in view.served_by(["c1"], since_ms=8, min_uses=2)]
        ['a']
        """
        wanted = set(cells)
        candidates: set[str] = set()
        for cell in wanted:
            candidates.update(self._served.get(cell, ()))
        rows = []
        for sid in candidates:
            entry = self._entries[sid]
            uses, last = 0, None
            for v in entry.history:
                if v.cell_id in wanted and v.ts_ms >= since_ms:
                    uses += 1
                    last = v.ts_ms if last is None else max(last, v.ts_ms)
            if uses >= min_uses and last is not None:
                rows.append(ServedRow(entry.sid, entry.current, uses, last))
        rows.sort(key=lambda r: (-r.version.score, -r.uses, r.sid))
        return rows

    def _changed_since(self, position: Sequence[int]) -> set[str]:
        changed: set[str] = set()
        for p, offsets in enumerate(self._log_offsets):
            start = position[p] if p < len(position) else 0
            if start < self._log_floor[p]:
                raise CursorExpired(f"partition {p}: changes since offset {start} are no longer kept")
            i = bisect.bisect_left(offsets, start)
            changed.update(self._log_sids[p][i:])
        return changed

    def _as_of(self, sid: str, position: Sequence[int]) -> Version | None:
        entry = self._entries[sid]
        p = entry.partition
        limit = position[p] if p < len(position) else 0
        if entry.first_offset >= limit:
            return None  # did not exist yet at the snapshot
        for v in reversed(entry.history):
            if v.offset < limit:
                return v
        raise CursorExpired("a subscriber changed more often than the history keeps since the walk began")

    def page(self, *, limit: int, after: Key | None = None, region: str | None = None,
             predicate: Predicate | None = None, position: Sequence[int] | None = None) -> Page:
        """At-risk subscribers ranked by ``(-score, id)`` as of ``position`` (default: now),
        starting after ``after``, filtered by ``region`` and ``predicate(sid, version)``."""
        position = tuple(position) if position is not None else self.position()
        changed = self._changed_since(position)
        source = self._ranked if region is None else self._by_region.get(region, [])
        want = limit + 1
        # Subscribers unchanged since the snapshot: their current version is their snapshot version.
        stable: list[tuple[Key, str, Version]] = []
        start = bisect.bisect_right(source, after) if after is not None else 0
        for i in range(start, len(source)):
            key = source[i]
            sid = key[1]
            if sid in changed:
                continue
            v = self._entries[sid].current
            if predicate is None or predicate(sid, v):
                stable.append((key, sid, v))
                if len(stable) == want:
                    break
        # Subscribers that changed since: placed by the version they had at the snapshot.
        moved: list[tuple[Key, str, Version]] = []
        for sid in changed:
            v = self._as_of(sid, position)
            if v is None or not v.at_risk or (region is not None and v.region != region):
                continue
            key = (-v.score, sid)
            if after is not None and key <= after:
                continue
            if predicate is None or predicate(sid, v):
                moved.append((key, sid, v))
        merged = sorted(stable + moved)[:want]
        more = len(merged) > limit
        merged = merged[:limit]
        rows = [(sid, v) for _, sid, v in merged]
        return Page(rows, merged[-1][0] if more and merged else None, position)

    # ------------------------------------------------------------------ topic plumbing

    def apply_raw(self, raw: bytes, partition: int, offset: int) -> bool:
        """Decode and apply one ``risk-scores`` message (raises InvalidEventError)."""
        return self.apply(decode("risk_score.v1", raw), partition, offset)


#: The label naming the cell of a ``hotspot_cell`` alert, as :class:`monitor.detection.hotspots.HotspotEngine`
#: writes it (the one place readers take it from).
CELL_LABEL = "cell_id"


def alert_cell(alert: Alert) -> str | None:
    """The cell of a cell hot-spot alert (``None`` for other alerts)."""
    return alert.labels.get(CELL_LABEL) if alert.kind == "hotspot_cell" else None


class HotspotBoard:
    """Active cell hot spots, from ``alert.v1`` records of kind ``hotspot_cell``.

    An alert is keyed by ``alert_id``; a record with a lower ``sequence`` than the one held is
    ignored, ``resolved`` removes it. The cell and region come from the alert's labels
    (:data:`CELL_LABEL`, ``region``).
    """

    def __init__(self) -> None:
        self._alerts: dict[str, Alert] = {}

    def apply(self, alert: Alert) -> bool:
        if alert_cell(alert) is None:
            return False
        held = self._alerts.get(alert.alert_id)
        if held is not None and alert.sequence < held.sequence:
            return False
        if alert.status == "resolved":
            self._alerts.pop(alert.alert_id, None)
        else:
            self._alerts[alert.alert_id] = alert
        return True

    def apply_raw(self, raw: bytes, partition: int = 0, offset: int = 0) -> bool:
        return self.apply(decode("alert.v1", raw))

    def active(self) -> list[Alert]:
        """Firing hot spots, newest first."""
        return sorted(self._alerts.values(), key=lambda a: (-a.starts_at_ms, a.alert_id))

    def for_cell(self, cell_id: str) -> Alert | None:
        """The firing hot spot on ``cell_id`` (the earliest started, if several)."""
        found = [a for a in self._alerts.values() if alert_cell(a) == cell_id]
        return min(found, key=lambda a: a.starts_at_ms) if found else None
