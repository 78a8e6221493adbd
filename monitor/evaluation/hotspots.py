"""Offline evaluation of hot-spot and drift detection against a ground-truth incident timeline.

:func:`evaluate_hotspots` replays a simulator run (``satmon simulate --out DIR``) through the
worker's pipeline (:mod:`monitor.replay`: consumer-shaped batches into
:class:`~monitor.pipeline.RiskPipeline`, whose :class:`~monitor.pipeline.CellWindows` ship closed
windows to the :class:`~monitor.pipeline.HotspotStage` that owns ``satmon-cell-windows``) and
scores the alerts with :func:`score_alerts`:

* an *incident* is **detected** if an alert for its cell (cell incidents) or its region (regional
  incidents) fires — i.e. the window that fired it closes — between onset and end + ``grace``;
  its *delay* is (end of the firing window − onset) in windows;
* an *alert* is a **true positive** if its active interval overlaps (± ``grace``) an incident that
  affects its cell or region (a cell alert inside a regional incident counts, as does a region
  alert over an incident on one of its cells);
* false alerts are normalised per 1,000 cell-hours (cells × replayed hours);
* a *drift* injection is detected if a ``SatmonDataDrift`` alert for it fires within
  ``drift_budget_ms`` (5 minutes) of the shift.

:func:`synthetic_cell_windows` makes merged cell windows directly (no events) for unit tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from monitor.detection.alerting import DATA_DRIFT, HOTSPOT_CELL, HOTSPOT_REGION
from monitor.records.events import Alert, Incident as IncidentRecord
from monitor.detection.windows import NETWORK_KPIS, Partial, subscriber_hash

MINUTE_MS = 60_000
#: ``alert.v1`` kinds of cell and region hot spots (the incident tracker's)
KIND_CELL, KIND_REGION = "hotspot_cell", "hotspot_region"


@dataclasses.dataclass(frozen=True)
class Incident:
    """Ground truth: ``scope`` is ``"cell"`` or ``"region"``; times in epoch ms."""

    scope: str
    region: str
    start_ms: int
    end_ms: int
    cell_id: str | None = None
    kind: str = "outage"
    id: str = ""


@dataclasses.dataclass(frozen=True)
class Fired:
    """An alert as the evaluation sees it: when it fired (window end), its interval and labels."""

    alertname: str
    labels: dict[str, str]
    detected_ms: int
    starts_at_ms: int
    ends_at_ms: int | None


def fired_alerts(emitted: Iterable[tuple[int, Alert]]) -> list[Fired]:
    """From ``(window end ms, alert record)`` pairs in emission order, one :class:`Fired` per alert."""
    by_id: dict[str, Fired] = {}
    for detected_ms, a in emitted:
        cur = by_id.get(a.alert_id)
        if cur is None:
            cur = by_id[a.alert_id] = Fired(a.alertname, dict(a.labels), detected_ms, a.starts_at_ms, None)
        if a.status == "resolved":
            by_id[a.alert_id] = dataclasses.replace(cur, ends_at_ms=a.ends_at_ms)
    return sorted(by_id.values(), key=lambda f: (f.detected_ms, f.alertname, sorted(f.labels.items())))


def score_alerts(fired: Sequence[Fired], incidents: Sequence[Incident], *, width_ms: int = MINUTE_MS,
                 grace_ms: int = 5 * MINUTE_MS, cell_hours: float | None = None,
                 cell_region: dict[str, str] | None = None) -> dict[str, Any]:
    """Recall, precision, detection delay and false-alert rate of hot-spot alerts (see module doc)."""
    cell_region = cell_region or {}
    hot = [f for f in fired if f.alertname in (HOTSPOT_CELL, HOTSPOT_REGION)]

    def affects(f: Fired, inc: Incident) -> bool:
        if f.alertname == HOTSPOT_CELL:
            cell = f.labels.get("cell_id")
            region = f.labels.get("region") or cell_region.get(cell or "", "")
            return (inc.scope == "cell" and inc.cell_id == cell) or (
                inc.scope == "region" and inc.region == region)
        return inc.region == f.labels.get("region")

    delays: list[float] = []
    detected = 0
    missed: list[str] = []
    for inc in incidents:
        want = HOTSPOT_CELL if inc.scope == "cell" else HOTSPOT_REGION
        hits = [f for f in hot if f.alertname == want and affects(f, inc)
                and (inc.start_ms <= f.detected_ms <= inc.end_ms + grace_ms
                     or (f.starts_at_ms <= inc.start_ms and (f.ends_at_ms is None or f.ends_at_ms > inc.start_ms)))]
        if hits:
            detected += 1
            first = min(max(f.detected_ms, inc.start_ms) for f in hits)
            delays.append((first - inc.start_ms) / width_ms)
        else:
            missed.append(inc.id or f"{inc.scope}:{inc.cell_id or inc.region}@{inc.start_ms}")
    tp = 0
    false_alerts: list[dict[str, Any]] = []
    for f in hot:
        end = f.ends_at_ms if f.ends_at_ms is not None else math.inf
        if any(affects(f, inc) and f.starts_at_ms <= inc.end_ms + grace_ms and end >= inc.start_ms - grace_ms
               for inc in incidents):
            tp += 1
        else:
            false_alerts.append({"alertname": f.alertname, **f.labels, "starts_at_ms": f.starts_at_ms})
    cell_fp = sum(1 for f in false_alerts if f["alertname"] == HOTSPOT_CELL)
    out: dict[str, Any] = {
        "incidents": len(incidents),
        "detected": detected,
        "recall": detected / len(incidents) if incidents else None,
        "alerts": len(hot),
        "true_alerts": tp,
        "precision": tp / len(hot) if hot else None,
        "median_delay_windows": _median(delays),
        "max_delay_windows": max(delays) if delays else None,
        "false_alerts": len(false_alerts),
        "missed": missed[:20],
        "false_alert_examples": false_alerts[:10],
    }
    if cell_hours:
        out["cell_hours"] = round(cell_hours, 1)
        out["false_alerts_per_1000_cell_hours"] = 1000.0 * len(false_alerts) / cell_hours
        out["false_cell_alerts_per_1000_cell_hours"] = 1000.0 * cell_fp / cell_hours
    return out


def score_drift(fired: Sequence[Fired], shifts: Sequence[dict[str, Any]], *,
                budget_ms: int = 5 * MINUTE_MS) -> dict[str, Any]:
    """Drift injections (``{"start_ms", "region"?, "feature"?}``) detected within ``budget_ms``."""
    drift = [f for f in fired if f.alertname == DATA_DRIFT]
    delays, missed = [], []
    for s in shifts:
        hits = [f for f in drift if s["start_ms"] <= f.detected_ms <= s["start_ms"] + budget_ms
                and (not s.get("region") or f.labels.get("region") == s["region"])]
        if hits:
            delays.append((min(f.detected_ms for f in hits) - s["start_ms"]) / 1000.0)
        else:
            missed.append(s)
    return {"shifts": len(shifts), "detected": len(delays), "delays_s": delays,
            "drift_alerts": len(drift), "missed": missed[:10],
            "alerts": [{**f.labels, "detected_ms": f.detected_ms} for f in drift[:20]]}


def _median(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


# ------------------------------------------------------------------------------------------------
def synthetic_cell_windows(*, n_cells: int = 20, n_regions: int = 2, n_windows: int = 120,
                           start_ms: int = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000,
                           width_ms: int = MINUTE_MS, incidents: Sequence[Incident] = (),
                           noisy_cells: Sequence[str] = (), seed: int = 0) -> list[Partial]:
    """Merged cell windows of a synthetic network (for tests and docs; no events involved).

    Cells ``c000``.. in regions ``r0``.. (round robin) have their own traffic (30-300 sessions a
    window), their own base degradation (2-8 %), a gentle time-of-day swing and beta-binomial
    over-dispersion; ``noisy_cells`` are three times as over-dispersed. During an incident the
    affected cells' degraded share rises by 40 points, drops by 15, latency triples.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    cells = [f"c{i:03d}" for i in range(n_cells)]
    region = {c: f"r{i % n_regions}" for i, c in enumerate(cells)}
    load = rng.uniform(30, 300, n_cells)
    base = rng.uniform(0.02, 0.08, n_cells)
    lat = rng.uniform(25, 60, n_cells)
    noisy = set(noisy_cells)
    out = []
    for t in range(n_windows):
        ts = start_ms + t * width_ms
        diurnal = 1.0 + 0.3 * math.sin(2 * math.pi * ((ts / 3_600_000) % 24) / 24)
        for i, c in enumerate(cells):
            hit = any(inc.start_ms <= ts < inc.end_ms and (
                (inc.scope == "cell" and inc.cell_id == c) or (inc.scope == "region" and inc.region == region[c]))
                for inc in incidents)
            n = int(rng.poisson(load[i] * diurnal))
            if n == 0:
                continue
            conc = 60.0 if c in noisy else 400.0   # beta concentration: lower = more over-dispersed
            p = base[i] * diurnal
            p = float(rng.beta(p * conc, (1 - p) * conc))
            drop_p = 0.005
            mean_lat = lat[i] * max(0.3, 1 + 0.1 * rng.standard_normal() * (3 if c in noisy else 1))
            if hit:
                p, drop_p, mean_lat = min(p + 0.4, 0.95), drop_p + 0.15, mean_lat * 3
            degraded = int(rng.binomial(n, p))
            drops = int(rng.binomial(n, drop_p))
            stalls = int(rng.binomial(n, p / 3))
            lats = rng.gamma(4.0, mean_lat / 4.0, n)
            kpi = [0.0] * len(NETWORK_KPIS)
            kpi[NETWORK_KPIS.index("latency_ms")] = float(lats.sum())
            kpi[NETWORK_KPIS.index("dl_mbps")] = float(n * 50)
            risk = rng.beta(2, 18 if not hit else 6, max(n // 10, 1))
            subs = {subscriber_hash(f"{c}-s{int(k)}") for k in rng.integers(0, 5 * load[i], degraded)}
            out.append(Partial(
                cell_id=c, region=region[c], start_ms=ts, width_ms=width_ms, sessions=n,
                degraded=degraded, drops=drops, stalls=stalls, kpi_sums=kpi,
                latency_sumsq=float((lats ** 2).sum()), latency_max=float(lats.max()),
                tickets=int(rng.poisson(n * (0.002 if not hit else 0.03))),
                complaints=int(rng.poisson(n * (0.001 if not hit else 0.02))),
                app_events=int(rng.poisson(n / 10)), app_failures=0,
                risk_n=len(risk), risk_sum=float(risk.sum()), risk_sumsq=float((risk ** 2).sum()),
                risk_max=float(risk.max()), affected=sorted(subs), sources=["0"]))
    return out


# ------------------------------------------------------------------------------------------------
def replay(records: Iterable[tuple[Any, ...]], *, partitions: int = 4,
           settings: Any = None) -> tuple[list[tuple[int, Alert]], dict[str, Any]]:
    """Run raw input records (``(topic, key, value)``, any mix of the three input topics, in arrival
    order) through the worker's pipeline (:func:`monitor.replay.run_records`: the input partitions'
    window aggregators, the merger and the hot-spot engine of ``satmon-cell-windows``' owner).
    Returns ``(window end ms, alert)`` pairs and counters."""
    from monitor.replay import run_records

    cells = _CellsSeen()
    result = run_records(records, partitions=partitions, settings=settings, observers=[cells])
    hours = ((result.last_ts_ms - result.first_ts_ms) / 3_600_000) if result.first_ts_ms is not None else 0.0
    late_partials = result.hotspots.late_partials() if result.hotspots is not None else 0
    stats = {"cells": len(cells.cells), "hours": hours, "cell_hours": len(cells.cells) * hours,
             "late_events": result.late_events, "unattributed": result.unattributed,
             "late_partials": late_partials}
    return result.alerts, stats


def as_records(events: Iterable[Any]) -> list[tuple[str, bytes, bytes]]:
    """Decoded input events as the raw ``(topic, key, value)`` records a producer sends."""
    from monitor.records.events import encode
    from monitor.records.topics import STREAM_TOPICS

    return [(STREAM_TOPICS[e.stream], e.subscriber_id.encode(), encode(e)) for e in events]


class _CellsSeen:
    """Batch observer: the cells network events were seen on (the denominator of false alerts)."""

    def __init__(self) -> None:
        self.cells: set[str] = set()

    def on_batch(self, partition: int, events: Sequence[Any], scores: Any, dead_letters: Any, out: Any) -> None:
        self.cells.update(e.cell_id for e in events if e.stream == "network")


def _by_start(partials: Sequence[Partial]) -> list[tuple[int, list[Partial]]]:
    by: dict[int, list[Partial]] = {}
    for p in partials:
        by.setdefault(p.start_ms, []).append(p)
    return sorted(by.items())


def evaluate_hotspots(sim_dir: Any, **opts: Any) -> dict[str, Any]:
    """Replay a simulator run and score hot-spot and drift alerts against its ground truth.

    ``opts``: ``partitions`` (4), ``width_ms`` (the worker's window, 1 min), ``grace_ms`` (5 min),
    ``drift_budget_ms`` (5 min). Reads the simulator's input files and ground truth through
    :func:`load_truth`. Returns a dict of the numbers (see :func:`score_alerts`,
    :func:`score_drift`) plus replay counters.
    """
    from monitor.replay import file_records

    incidents, shifts = load_truth(sim_dir)
    width = opts.get("width_ms", MINUTE_MS)
    emitted, stats = replay(file_records(sim_dir), partitions=opts.get("partitions", 4))
    fired = fired_alerts(emitted)
    out = score_alerts(fired, incidents, width_ms=width, grace_ms=opts.get("grace_ms", 5 * MINUTE_MS),
                       cell_hours=stats["cell_hours"] or None)
    out["drift"] = score_drift(fired, shifts, budget_ms=opts.get("drift_budget_ms", 5 * MINUTE_MS))
    out["replay"] = stats
    return out


def load_truth(sim_dir: Any) -> tuple[list[Incident], list[dict[str, Any]]]:
    """Injected network incidents and drift shifts of a simulator output dir.

    Reads a ground-truth JSON (``ground_truth/incidents.json``, ``ground_truth.json``, ...) whose
    incidents have a scope (cell or region), the cell/region, and start/end times in ms.
    """
    import json
    from pathlib import Path

    from monitor.records.errors import MonitorError

    d = Path(sim_dir)
    candidates = (d / "ground_truth" / "incidents.json", d / "ground_truth.json", d / "incidents.json", d / "truth.json")
    truth_path = next((p for p in candidates if p.exists()), None)
    if truth_path is None:
        raise MonitorError(f"{d}: no ground truth (ground_truth.json or incidents.json)")
    truth = json.loads(truth_path.read_text())
    raw = truth.get("incidents", []) if isinstance(truth, dict) else truth
    incidents = []
    for i, r in enumerate(raw):
        if r.get("scope") not in (None, "cell", "region"):
            continue  # segment (billing) and app incidents are not network hot spots
        cells = r.get("cells") or ([r["cell_id"]] if r.get("cell_id") else [])
        scope = r.get("scope") or ("region" if not cells or len(cells) > 1 else "cell")
        start, end = int(r.get("start_ms", r.get("onset_ms", 0))), int(r.get("end_ms", 0))
        if scope == "cell":
            for c in cells:
                incidents.append(Incident("cell", r.get("region", ""), start, end, cell_id=c,
                                          kind=r.get("kind", "outage"), id=str(r.get("id", i))))
        else:
            incidents.append(Incident("region", r.get("region", ""), start, end,
                                      kind=r.get("kind", "outage"), id=str(r.get("id", i))))
    shifts = truth.get("drifts", truth.get("shifts", [])) if isinstance(truth, dict) else []
    return incidents, [{"start_ms": int(s.get("start_ms", s.get("onset_ms", 0))), **s} for s in shifts]


# -- incidents found against injected ones ------------------------------------------------------

def score_incidents(records: Iterable[tuple[int, Any]], truth: Iterable[Mapping[str, Any]], *,
                    grace_ms: int = 5 * MINUTE_MS) -> dict[str, Any]:
    """Incidents found against injected ones (the simulator's ground truth).

    ``records``: ``(emitted at ms, incident record)`` in emission order (emitted at = the end of the
    window whose alerts produced it, i.e. when the page goes out). ``truth``: the simulator's
    incidents (``id``, ``scope`` cell/region, ``cells``, ``region``/``regions``, ``onset_ms``,
    ``end_ms``); segment and app incidents are skipped, a KPI drift counts as a regional one.

    An injected incident is **found** if an incident of its region that contains one of its cells
    (cell scope) -- any incident of its region for regional scope -- fired between its onset and its
    end + ``grace_ms``. Reported: found / injected, incidents per injected (how many records an
    outage was split into), cells per found incident, time to the first page (fire - onset), and
    incidents that match nothing (false), and incidents that match two or more injected ones (mixed).
    """
    first: dict[str, tuple[int, IncidentRecord]] = {}
    latest: dict[str, IncidentRecord] = {}
    for at, inc in records:
        first.setdefault(inc.incident_id, (at, inc))
        latest[inc.incident_id] = inc
    injected = [t for t in truth if t.get("scope", "cell") in ("cell", "region")]
    matched: dict[str, int] = {}   # incident id -> injected incidents it matched
    rows = []
    for t in injected:
        onset = int(t.get("onset_ms", t.get("start_ms", 0)))
        end = t.get("end_ms")
        end = int(end) if end is not None else None
        regions = set(t.get("regions") or ([t["region"]] if t.get("region") else []))
        cells = set(t.get("cells") or ())
        hits = []
        for iid, (at, inc) in first.items():
            final = latest[iid]
            if inc.region not in regions:
                continue
            if t.get("scope") == "cell" and cells and not cells & set(final.cells):
                continue
            if at < onset or (end is not None and at > end + grace_ms):
                continue
            hits.append((at, final))
        for iid in {f.incident_id for _, f in hits}:
            matched[iid] = matched.get(iid, 0) + 1
        rows.append({"id": t.get("id"), "scope": t.get("scope"), "found": bool(hits), "incidents": len(hits),
                     "first_page_min": (min(at for at, _ in hits) - onset) / MINUTE_MS if hits else None,
                     "cells": sorted({c for _, f in hits for c in f.cells}).__len__(),
                     "injected_cells": len(cells) or None})
    found = [r for r in rows if r["found"]]
    delays = sorted(r["first_page_min"] for r in found)
    false = [i for i in latest if i not in matched]
    return {
        "injected": len(rows), "found": len(found),
        "recall": len(found) / len(rows) if rows else None,
        "incidents": len(latest), "false_incidents": len(false),
        # one record standing for two or more injected incidents (grouped too coarsely): it was
        # the page of several, or holds the cells of several cell incidents
        "mixed_incidents": sum(1 for iid, inc in latest.items() if matched.get(iid, 0) > 1 or sum(
            1 for t in injected if t.get("scope") == "cell" and set(t.get("cells") or ()) & set(inc.cells)) > 1),
        "incidents_per_found": sum(r["incidents"] for r in found) / len(found) if found else None,
        "cells_per_incident": ({r["id"]: r["cells"] for r in found}),
        "median_first_page_min": delays[len(delays) // 2] if delays else None,
        "max_first_page_min": delays[-1] if delays else None,
        "per_incident": rows,
        "false_examples": [{"region": latest[i].region, "cells": list(latest[i].cells)[:5]} for i in false[:10]],
    }


class _Group(NamedTuple):
    """A baseline's grouping of alerts, scored like an incident."""

    incident_id: str
    region: str
    cells: list[str]


def per_alert_groups(emitted: Iterable[tuple[int, Alert]]) -> list[tuple[int, _Group]]:
    """Baseline: every cell hot-spot alert is its own incident (what Prometheus' alert page lists)."""
    out = []
    for at, a in emitted:
        if a.kind == KIND_CELL and a.sequence == 0:
            out.append((at, _Group(a.alert_id, a.labels.get("region", ""), [a.labels.get("cell_id", "")])))
    return out


def per_region_groups(emitted: Iterable[tuple[int, Alert]]) -> list[tuple[int, _Group]]:
    """Baseline: a region's hot-spot and region alerts form one group while any of them fires
    (Alertmanager's ``group_by: [region]`` alone: no KPIs, no time window)."""
    out: list[tuple[int, _Group]] = []
    firing: dict[str, set[str]] = {}
    group: dict[str, _Group] = {}
    for at, a in emitted:
        if a.kind not in (KIND_CELL, KIND_REGION):
            continue
        region = a.labels.get("region", "")
        ids = firing.setdefault(region, set())
        if a.status == "firing":
            if not ids:
                group[region] = _Group(f"{region}@{at}", region, [])
            ids.add(a.alert_id)
            cell = a.labels.get("cell_id")
            g = group[region]
            if cell and cell not in g.cells:
                g.cells.append(cell)
            out.append((at, g))
        else:
            ids.discard(a.alert_id)
    return out


def evaluate_incidents(records: Iterable[tuple[Any, ...]], truth: Iterable[Mapping[str, Any]], *,
                       partitions: int = 4, settings: Any = None) -> dict[str, Any]:
    """Replay raw input records through the worker's pipeline (:func:`monitor.replay.run_records`:
    the hot-spot engine and :class:`monitor.detection.incidents.IncidentTracker` as :class:`~monitor.pipeline.HotspotStage` runs
    them) and score its incidents against ``truth`` (:func:`score_incidents`), beside two
    baselines over the same alerts: one incident per cell alert, one per region while any fires."""
    from monitor.replay import run_records

    truth = list(truth)
    result = run_records(records, partitions=partitions, settings=settings)
    return {"incidents": score_incidents(result.incidents, truth),
            "baseline_per_cell_alert": score_incidents(per_alert_groups(result.alerts), truth),
            "baseline_per_region": score_incidents(per_region_groups(result.alerts), truth),
            "records": len(result.incidents), "alerts": len(result.alerts)}


def evaluate_incidents_dir(sim_dir: Any, **options: Any) -> dict[str, Any]:
    """:func:`evaluate_incidents` over a simulator output directory (``satmon simulate --out``):
    its input files and ``ground_truth/incidents.json`` (incidents and KPI drifts)."""
    import json
    from pathlib import Path

    from monitor.replay import file_records

    doc = json.loads((Path(sim_dir) / "ground_truth" / "incidents.json").read_text())
    truth = list(doc.get("incidents", [])) + list(doc.get("drifts", []))
    return evaluate_incidents(file_records(sim_dir), truth, **options)


if __name__ == "__main__":   # python -m monitor.evaluation.hotspots SIM_DIR: the incident scores of a simulator run
    import json
    import sys

    result = evaluate_incidents_dir(sys.argv[1])
    for name in ("incidents", "baseline_per_cell_alert", "baseline_per_region"):
        result[name].pop("per_incident", None)
    print(json.dumps(result, indent=1))
