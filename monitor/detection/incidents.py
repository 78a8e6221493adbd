"""Incidents: the cells of one region that degrade together, gathered into one record.

The hot-spot engine (:class:`monitor.detection.hotspots.HotspotEngine`) raises one ``alert.v1`` per hot cell
and one per degraded region. An outage of three cells is three cell alerts and a region alert; a
slow regional drift can be fifty. :class:`IncidentTracker` reads those alerts in emission order and
keeps **incidents** (``incident.v1``, :class:`monitor.records.events.Incident`): per region, the cells
whose hot spots overlap in time and share a degraded KPI, or that a region alert names together.
Each incident has an id, its region, cells, KPIs, severity, start (the earliest ``since`` of the
alerts that opened it, in one window), end, and the number of distinct affected subscribers; its
lifecycle is *fire* (first alert), *update* (cells, KPIs, severity or the affected count changed),
*resolve* (its last alert resolved) -- once.

Grouping, per alert (region alerts of a window before its cell alerts):

* a **region** alert joins the open incident of its region holding most of the cells it names
  (``hot_cells``), else the oldest one of its region that took a new cell within ``join_window_ms``;
  with none it opens one;
* a **cell** alert joins the open incident of its region that a region-wide alert covers, or whose
  region alert names the cell, or which took a new cell within ``join_window_ms`` and either shares
  a KPI with it or started within ``together_ms`` of the cell's own start (its ``since``); else it
  opens a new incident.

An incident resolves when none of its alerts is firing any more. Incidents never merge (an id, once
paged, stays the unit Alertmanager knows). :func:`page_for` turns an incident into the
``SatmonIncident`` alert pushed to Alertmanager (one page per incident, resolved once; it inhibits
its region's cell, region and drift alerts, see ``deploy/alertmanager/alertmanager.yml``).
:func:`score_incidents` measures incidents found against the simulator's injected ones.

Pure: no Kafka, no event loop.

>>> from monitor.detection.alerting import AlertLifecycle, HOTSPOT_CELL
>>> lc, tracker = AlertLifecycle(), IncidentTracker()
>>> def hot(cell, t):
...     return lc.fire(HOTSPOT_CELL, {"cell_id": cell, "region": "metro"}, ts_ms=t, severity="warning",
...                    summary="", description="", details={"worst_symptom": "drop_rate", "since_ms": t,
...                    "window_start_ms": t, "affected_subscribers": 3, "metrics": {}})
>>> [i.status for i in tracker.process([hot("c1", 0)])]
['firing']
>>> [(i.cells, i.sequence) for i in tracker.process([hot("c2", 60_000)])]
[(['c1', 'c2'], 1)]
>>> for cell in ("c1", "c2"):
...     done = tracker.process([lc.resolve(HOTSPOT_CELL, {"cell_id": cell, "region": "metro"}, ts_ms=600_000)])
>>> [(i.status, i.ended_at_ms, i.kpis) for i in done]
[('resolved', 600000, ['drop_rate'])]
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from monitor.config import DEFAULT_RUNBOOK_BASE
from monitor.records.events import Alert, Incident
from monitor.records.topics import INCIDENTS

#: The topic incident records go to (key: ``incident_id``; one partition: they are few).
INCIDENTS_TOPIC = INCIDENTS
#: The alert an incident is paged as.
INCIDENT_ALERTNAME = "SatmonIncident"
_CELL, _REGION = "hotspot_cell", "hotspot_region"
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
MINUTE_MS = 60_000


class _Open:
    """The mutable state of one open incident."""

    __slots__ = ("incident_id", "region", "cells", "kpis", "members", "alert_ids", "severities",
                 "started_at_ms", "opened_window_ms", "updated_at_ms", "ended_at_ms", "last_join_ms", "hashes",
                 "counted", "region_wide", "named", "sequence", "last")

    def __init__(self, incident_id: str, region: str, started_at_ms: int, opened_window_ms: int) -> None:
        self.incident_id = incident_id
        self.region = region
        self.cells: dict[str, None] = {}         # ordered set: the order cells joined
        self.kpis: dict[str, None] = {}
        self.members: set[str] = set()           # alert ids still firing
        self.alert_ids: dict[str, None] = {}
        self.severities: dict[str, str] = {}     # firing alert id -> severity
        self.started_at_ms = started_at_ms
        self.opened_window_ms = opened_window_ms  # the window whose alerts opened it: they set the start
        self.updated_at_ms = started_at_ms
        self.ended_at_ms: int | None = None
        self.last_join_ms = started_at_ms
        self.hashes: set[int] = set()
        self.counted = 0                         # largest affected count an alert reported
        self.region_wide = False                 # a region-wide region alert is firing in it
        self.named: set[str] = set()             # cells its firing region alert names
        self.sequence = -1
        self.last: Incident | None = None


def alert_kpis(alert: Alert, *, min_z: float = 3.0) -> list[str]:
    """The KPIs an alert says are degraded: its worst symptom and every metric at ``min_z`` or more.

    >>> from monitor.detection.alerting import AlertLifecycle
    >>> a = AlertLifecycle().fire("SatmonHotSpotActive", {"cell_id": "c1", "region": "r"}, ts_ms=0,
    ...     severity="warning", summary="", description="", details={"worst_symptom": "latency",
    ...     "metrics": {"latency": {"z": 9.0}, "drop_rate": {"z": 4.2}, "stalls": {"z": 1.0}}})
    >>> alert_kpis(a)
    ['latency', 'drop_rate']
    """
    details = alert.details or {}
    out: dict[str, None] = {}
    worst = details.get("worst_symptom")
    if isinstance(worst, str) and worst:
        out[worst] = None
    metrics = details.get("metrics")
    if isinstance(metrics, Mapping):
        for name, m in metrics.items():
            z = m.get("z") if isinstance(m, Mapping) else None
            if isinstance(z, (int, float)) and z >= min_z:
                out[str(name)] = None
    return list(out)


class IncidentTracker:
    """``alert.v1`` records in, ``incident.v1`` records out (see the module docstring).

    Parameters
    ----------
    join_window_ms
        A cell joins an incident on a shared KPI only if the incident took a new cell (or started)
        this recently: cells that degrade *together*.
    kpi_min_z
        A metric of an alert counts as a degraded KPI from this z-score on (besides its worst symptom).
    together_ms
        Cells whose hot spots started (``since``) within this of the incident's start join it whatever
        their KPIs: the first KPI of an outage to cross its bar differs from cell to cell, and before
        a region alert names them together, a shared KPI alone split the demo's three-cell metro
        outage into two incidents in a live run (tests/test_demo.py).
    max_affected
        Cap on the affected-subscriber hashes kept per open incident (memory bound).
    min_affected_change
        An update for the affected count alone is sent when it changed by at least this many
        subscribers and 10 % (not at every window).
    """

    def __init__(self, *, join_window_ms: int = 10 * MINUTE_MS, kpi_min_z: float = 3.0,
                 together_ms: int = 2 * MINUTE_MS, max_affected: int = 200_000, min_affected_change: int = 5) -> None:
        self.join_window_ms = join_window_ms
        self.kpi_min_z = kpi_min_z
        self.together_ms = together_ms
        self.max_affected = max_affected
        self.min_affected_change = min_affected_change
        self._open: dict[str, _Open] = {}
        self._by_alert: dict[str, str] = {}       # firing member alert id -> incident id
        self.fired = self.updated = self.resolved = 0

    # -- input ----------------------------------------------------------------------------------
    def process(self, alerts: Iterable[Alert],
                affected: Callable[[str], Iterable[int]] | None = None) -> list[Incident]:
        """Fold alerts (one engine step or more, in emission order) into incidents; returns the
        incident records to send. ``affected(cell)`` gives the hashes of the subscribers affected
        on a cell (``HotspotEngine.affected_hashes``) for exact distinct counts."""
        batch = [a for a in alerts if a is not None and a.kind in (_CELL, _REGION)]
        # within one window, region alerts first: the cells they name then join their incident
        batch.sort(key=lambda a: (_window(a), a.kind != _REGION))
        touched: dict[str, None] = {}
        for a in batch:
            inc = self._region_alert(a) if a.kind == _REGION else self._cell_alert(a)
            if inc is not None:
                touched[inc.incident_id] = None
        out = []
        for iid in touched:
            inc = self._open[iid]
            if affected is not None:
                for cell in inc.cells:
                    if len(inc.hashes) >= self.max_affected:
                        break
                    inc.hashes.update(affected(cell))
            record = self._record(inc)
            if record is not None:
                out.append(record)
            if not inc.members:
                del self._open[iid]
        return out

    def _region_alert(self, a: Alert) -> _Open | None:
        region = a.labels.get("region", "")
        details = a.details or {}
        named = [c for c in details.get("hot_cells") or () if isinstance(c, str)]
        inc = self._incident_of(a)
        if a.status == "resolved":
            if inc is not None:
                self._leave(inc, a)
                inc.region_wide, inc.named = False, set()
            return inc
        if inc is None:
            now = _window(a)
            candidates = [(sum(c in i.cells for c in named), -i.started_at_ms, i) for i in self._open.values()
                          if i.region == region]
            # the incident holding most of the cells it names; naming none of an incident's cells,
            # it joins one only if that took a new cell within the join window
            best = max(((n, s, i) for n, s, i in candidates
                        if n > 0 or now - i.last_join_ms <= self.join_window_ms), default=None,
                       key=lambda t: (t[0], t[1]))
            inc = best[2] if best is not None else self._new(a, region)
        self._join(inc, a)
        inc.region_wide = bool(details.get("region_wide"))
        inc.named = set(named)
        return inc

    def _cell_alert(self, a: Alert) -> _Open | None:
        cell = a.labels.get("cell_id")
        if cell is None:
            return None
        region = a.labels.get("region", "")
        inc = self._incident_of(a)
        if a.status == "resolved":
            if inc is not None:
                self._leave(inc, a)
            return inc
        kpis = alert_kpis(a, min_z=self.kpi_min_z)
        if inc is None:
            now = _window(a)
            best: tuple[int, int, int] | None = None
            for i in self._open.values():
                if i.region != region:
                    continue
                if i.region_wide or cell in i.named:
                    rank = 2
                elif now - i.last_join_ms <= self.join_window_ms and (
                        set(kpis) & set(i.kpis) or abs(_since(a) - i.started_at_ms) <= self.together_ms):
                    rank = 1
                else:
                    continue
                key = (rank, len(set(kpis) & set(i.kpis)), -i.started_at_ms)
                if best is None or key > best:
                    best, inc = key, i
            if inc is None:
                inc = self._new(a, region)
        if cell not in inc.cells:
            inc.cells[cell] = None
            inc.last_join_ms = max(inc.last_join_ms, _window(a))
        self._join(inc, a, kpis)
        return inc

    def _incident_of(self, a: Alert) -> _Open | None:
        iid = self._by_alert.get(a.alert_id)
        return self._open.get(iid) if iid is not None else None

    def _new(self, a: Alert, region: str) -> _Open:
        start = _since(a)
        text = f"{region}|{start}|{a.alert_id}"
        iid = "in-" + hashlib.sha256(text.encode()).hexdigest()[:20]
        inc = self._open[iid] = _Open(iid, region, start, _window(a))
        return inc

    def _join(self, inc: _Open, a: Alert, kpis: Sequence[str] | None = None) -> None:
        self._by_alert[a.alert_id] = inc.incident_id
        inc.members.add(a.alert_id)
        inc.alert_ids[a.alert_id] = None
        inc.severities[a.alert_id] = a.severity
        for k in (kpis if kpis is not None else alert_kpis(a, min_z=self.kpi_min_z)):
            inc.kpis[k] = None
        if _window(a) == inc.opened_window_ms:
            # only the alerts that opened it date it: a cell's since is where its run of evidence
            # began, which noise can put minutes before the fault; the earliest of the 26 cells that
            # joined the demo's west drift over 20 minutes was 4 to 5 minutes early (the cells that
            # opened it: the window of the onset)
            inc.started_at_ms = min(inc.started_at_ms, _since(a))
        inc.updated_at_ms = max(inc.updated_at_ms, a.updated_at_ms)
        n = (a.details or {}).get("affected_subscribers")
        if isinstance(n, int):
            inc.counted = max(inc.counted, n)

    def _leave(self, inc: _Open, a: Alert) -> None:
        self._by_alert.pop(a.alert_id, None)
        inc.members.discard(a.alert_id)
        inc.updated_at_ms = max(inc.updated_at_ms, a.updated_at_ms)
        if not inc.members:
            inc.ended_at_ms = max(inc.updated_at_ms, a.ends_at_ms or a.updated_at_ms)

    # -- output ---------------------------------------------------------------------------------
    def _record(self, inc: _Open) -> Incident | None:
        firing = bool(inc.members)
        # the worst it has been: an incident escalates, it is not paged down and up again
        severity = max(inc.severities.values(), key=_SEVERITY_RANK.__getitem__, default="warning")
        affected = max(len(inc.hashes), inc.counted)
        cells, kpis = list(inc.cells), list(inc.kpis)
        last = inc.last
        if last is not None and firing and last.status == "firing" and (
                last.cells == cells and last.kpis == kpis and last.severity == severity
                and not _moved(last.affected_subscribers, affected, self.min_affected_change)):
            return None
        inc.sequence += 1
        summary = (f"{inc.region}: {len(cells)} cell{'s' if len(cells) != 1 else ''} degraded"
                   + (f" ({', '.join(kpis)})" if kpis else "") + f"; {affected} subscribers affected")
        record = Incident(
            incident_id=inc.incident_id, status="firing" if firing else "resolved",
            severity=severity,  # type: ignore[arg-type]
            region=inc.region, cells=cells, kpis=kpis, affected_subscribers=affected,
            alert_ids=list(inc.alert_ids), summary=summary, started_at_ms=inc.started_at_ms,
            updated_at_ms=inc.updated_at_ms, sequence=inc.sequence,
            ended_at_ms=None if firing else inc.ended_at_ms)
        inc.last = record
        if record.sequence == 0:
            self.fired += 1
        elif firing:
            self.updated += 1
        else:
            self.resolved += 1
        return record

    # -- queries --------------------------------------------------------------------------------
    def active(self) -> list[Incident]:
        """The latest record of every open incident, oldest first."""
        return sorted((i.last for i in self._open.values() if i.last is not None),
                      key=lambda r: (r.started_at_ms, r.incident_id))

    def __len__(self) -> int:
        return len(self._open)


def _window(a: Alert) -> int:
    w = (a.details or {}).get("window_start_ms")
    return w if isinstance(w, int) else a.updated_at_ms


def _since(a: Alert) -> int:
    s = (a.details or {}).get("since_ms")
    return s if isinstance(s, int) else a.starts_at_ms


def _moved(old: int, new: int, at_least: int) -> bool:
    return abs(new - old) >= max(at_least, 0.1 * old)


# ------------------------------------------------------------------------------------------------
class IncidentPage(NamedTuple):
    """An incident as the alert Alertmanager pages (``SatmonIncident``): the fields
    :func:`monitor.observability.alertmanager.postable` reads from an ``alert.v1`` record."""

    alert_id: str
    alertname: str
    status: str
    severity: str
    labels: dict[str, str]
    summary: str
    description: str
    runbook_url: str
    starts_at_ms: int
    ends_at_ms: int | None
    sequence: int


class IncidentPager:
    """Turns incident records into the ``SatmonIncident`` alerts to push to Alertmanager.

    Alertmanager identifies an alert by its labels, ``severity`` included: when an incident
    escalates (warning -> critical) the page under the old severity is resolved too, or it would
    stay active until it expires. Holds one entry per firing incident.

    >>> from monitor.records.events import Incident
    >>> pager = IncidentPager()
    >>> def rec(seq, status, severity):
    ...     return Incident(incident_id="in-1", status=status, severity=severity, region="metro", cells=["c1"],
    ...                     kpis=["drop_rate"], affected_subscribers=3, alert_ids=["hs-1"], summary="",
    ...                     started_at_ms=0, updated_at_ms=seq, sequence=seq)
    >>> [(p.status, p.severity) for p in pager.pages(rec(0, "firing", "warning"))]
    [('firing', 'warning')]
    >>> [(p.status, p.severity) for p in pager.pages(rec(1, "firing", "critical"))]
    [('resolved', 'warning'), ('firing', 'critical')]
    >>> [(p.status, p.severity) for p in pager.pages(rec(2, "resolved", "critical"))], len(pager)
    ([('resolved', 'critical')], 0)
    """

    def __init__(self, *, runbook_base: str = DEFAULT_RUNBOOK_BASE) -> None:
        self.runbook_base = runbook_base
        self._paged: dict[str, Incident] = {}

    def pages(self, incident: Incident) -> list[IncidentPage]:
        out = []
        prev = self._paged.get(incident.incident_id)
        if prev is not None and prev.severity != incident.severity:
            out.append(page_for(msgspec.structs.replace(prev, status="resolved", ended_at_ms=incident.updated_at_ms),
                                runbook_base=self.runbook_base))
        out.append(page_for(incident, runbook_base=self.runbook_base))
        if incident.status == "firing":
            self._paged[incident.incident_id] = incident
        else:
            self._paged.pop(incident.incident_id, None)
        return out

    def __len__(self) -> int:
        return len(self._paged)


def page_for(incident: Incident, *, runbook_base: str = DEFAULT_RUNBOOK_BASE) -> IncidentPage:
    """The ``SatmonIncident`` alert of an incident (labels ``region`` and ``incident_id``)."""
    cells = incident.cells
    shown = ", ".join(cells[:10]) + (", ..." if len(cells) > 10 else "")
    return IncidentPage(
        # one id per label set: the Alertmanager client coalesces queued states by id, and the
        # resolve of an escalated incident's old page must not be replaced by its new one
        alert_id=f"{incident.incident_id}/{incident.severity}", alertname=INCIDENT_ALERTNAME, status=incident.status,
        severity=incident.severity, labels={"region": incident.region, "incident_id": incident.incident_id},
        summary=f"Incident in {incident.region}: {len(cells)} cell{'s' if len(cells) != 1 else ''} degraded",
        description=(f"cells {shown}" if cells else "region-wide") + (f"; KPIs {', '.join(incident.kpis)}"
                     if incident.kpis else "") + f"; {incident.affected_subscribers} subscribers affected",
        runbook_url=f"{runbook_base.rstrip('/')}/{INCIDENT_ALERTNAME}.md",
        starts_at_ms=incident.started_at_ms, ends_at_ms=incident.ended_at_ms, sequence=incident.sequence)


class IncidentBoard:
    """The latest record of every incident, from ``incident.v1`` records (what the API lists).

    Keyed by ``incident_id``; a record with a lower ``sequence`` than the one held is ignored.
    Resolved incidents are kept (the most recent ``keep_resolved``), so the page can show what
    just ended.
    """

    def __init__(self, *, keep_resolved: int = 200) -> None:
        self.keep_resolved = keep_resolved
        self._incidents: dict[str, Incident] = {}
        self._resolved: list[str] = []

    def apply(self, incident: Incident) -> bool:
        held = self._incidents.get(incident.incident_id)
        if held is not None and (incident.sequence < held.sequence or held.status == "resolved"):
            return False
        self._incidents[incident.incident_id] = incident
        if incident.status == "resolved":
            self._resolved.append(incident.incident_id)
            if len(self._resolved) > self.keep_resolved:
                self._incidents.pop(self._resolved.pop(0), None)
        return True

    def apply_raw(self, raw: bytes, partition: int = 0, offset: int = 0) -> bool:
        from monitor.records.events import decode

        return self.apply(decode("incident.v1", raw))

    def get(self, incident_id: str) -> Incident | None:
        return self._incidents.get(incident_id)

    def list(self, *, status: str | None = None) -> list[Incident]:
        """Incidents, firing first, newest start first."""
        rows = [i for i in self._incidents.values() if status is None or i.status == status]
        return sorted(rows, key=lambda i: (i.status != "firing", -i.started_at_ms, i.incident_id))

    def active(self) -> list[Incident]:
        return self.list(status="firing")
