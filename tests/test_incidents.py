"""Incidents (monitor/detection/incidents.py): built from the alerts the real detector raised on simulated
traffic (tests/support/outage_traffic.py, through the worker's pipeline), never from hand-made alerts."""

from __future__ import annotations

import functools
import pickle

import msgspec
import pytest

from monitor.sim import simulate
from monitor.records.events import decode, encode
from monitor.evaluation.hotspots import evaluate_incidents, per_alert_groups, score_incidents
from monitor.detection.incidents import IncidentBoard, IncidentPager, IncidentTracker
from support.outage_traffic import outage_run

MINUTE = 60_000


def test_an_outage_is_one_incident_fired_once_updated_and_resolved_once():
    run = outage_run()
    records = [r for _, r in run.incidents]
    assert {r.incident_id for r in records} == {records[0].incident_id}
    assert set(records[-1].cells) == run.cells and records[-1].region == run.region
    assert [r.sequence for r in records] == list(range(len(records)))
    assert [r.status for r in records] == ["firing"] * (len(records) - 1) + ["resolved"]
    assert records[-1].kpis and records[-1].ended_at_ms >= run.end_ms
    # paged within minutes of the onset; the count only grows; every record is a valid incident.v1
    first_at = run.incidents[0][0]
    assert run.onset_ms <= first_at <= run.onset_ms + 5 * MINUTE
    counts = [r.affected_subscribers for r in records]
    assert counts == sorted(counts) and counts[-1] > 0
    assert all(decode("incident.v1", encode(r)) == r for r in records)
    # it gathers exactly the cell and region alerts the engine raised for the outage
    raised = {a.alert_id: a for a in run.alerts if a.kind in ("hotspot_cell", "hotspot_region")}
    assert set(records[-1].alert_ids) == set(raised)


def test_the_tracker_alone_gives_the_stage_its_ids_cells_and_kpis():
    """Fed the same alerts in the same order (no affected hashes), a fresh tracker gives the same
    incidents as the pipeline's: ids are deterministic, grouping does not depend on the counts."""
    run = outage_run()
    tracker = IncidentTracker()
    again = []
    for _, group in _by_window(run.emitted):
        again.extend(tracker.process(group))
    key = lambda r: (r.incident_id, r.status, r.cells, r.kpis, r.severity)  # noqa: E731
    assert [key(r) for r in again] == [key(r) for _, r in run.incidents]
    assert tracker.fired == 1 and tracker.resolved == 1 and len(tracker) == 0


def test_tracker_pickles_mid_stream_and_never_mutates_its_input():
    run = outage_run()
    windows = list(_by_window(run.emitted))
    half = len(windows) // 2
    a = IncidentTracker()
    for _, group in windows[:half]:
        a.process(group)
    b = pickle.loads(pickle.dumps(a))
    assert len(a) == len(b) == 1
    for _, group in windows[half:]:
        before = [encode(x) for x in group]
        out_a, out_b = a.process(group), b.process(group)
        assert out_a == out_b
        assert [encode(x) for x in group] == before


@functools.lru_cache(maxsize=1)
def _two_regions():
    scenario = {"name": "two", "incidents": [
        {"id": "m", "type": "cell_outage", "onset": "40m", "end": "70m", "cells": 3, "region": "metro", "severity": 1.0},
        {"id": "n", "type": "cell_outage", "onset": "50m", "end": "80m", "cells": 2, "region": "north", "severity": 1.0}]}
    config = simulate.SimConfig(subscribers=2000, hours=1.6, seed=3, scenario=scenario, cells=40,
                                malformed_share=0, duplicate_share=0, late_share=0)
    sim = simulate.Simulator(config)
    records = list(simulate.generate(config, sim))
    return sim, evaluate_incidents(records, sim.incidents_json()["incidents"])


def test_outages_in_two_regions_are_two_incidents_each_with_its_own_cells():
    sim, result = _two_regions()
    scores = result["incidents"]
    assert scores["found"] == scores["injected"] == 2
    assert scores["incidents_per_found"] == 1.0           # each outage one incident, not one per cell
    for inc in sim.incidents:
        assert scores["cells_per_incident"][inc.id] == len(inc.cells)
    assert scores["max_first_page_min"] <= 5
    # the per-cell-alert baseline over the same alerts splits them: one per cell
    base = result["baseline_per_cell_alert"]
    assert base["found"] == 2 and base["incidents_per_found"] == 2.5


def test_outage_cells_whose_first_alerts_differ_in_kpis_are_one_incident_before_a_region_alert():
    """The live demo once split its metro outage in two: a dark cell's first alert said one KPI, the
    next cell's (a window later, no region alert yet) another, and a shared KPI was the only way in.
    Here the detector's own alerts of an outage, KPIs taken as the worst symptom only and the region
    alerts held back: the three cells' first alerts name different KPIs, yet started together."""
    run = outage_run()
    cells = [a for a in run.alerts if a.kind == "hotspot_cell"]
    firsts = [a for a in cells if a.sequence == 0]
    assert len({a.details["worst_symptom"] for a in firsts}) > 1   # the case is exercised
    out = []
    tracker = IncidentTracker(kpi_min_z=float("inf"))
    for a in cells:
        out.extend(tracker.process([a]))
    assert {r.incident_id for r in out} == {out[0].incident_id}
    assert set(out[-1].cells) == run.cells
    # started further apart than together_ms, the same alerts stay apart (KPIs alone decide)
    apart = IncidentTracker(kpi_min_z=float("inf"), together_ms=0)
    assert len({r.incident_id for a in cells for r in apart.process([a])}) > 1


@functools.lru_cache(maxsize=2)
def _west_drift(seed: int):
    """The demo's west drift (7 dB, severity 0.7) at 5,000 subscribers through the worker's pipeline."""
    from monitor.replay import run_records

    scenario = {"name": "drift", "incidents": [
        {"id": "d", "type": "kpi_drift", "onset": "40m", "regions": ["west"], "shift_db": 7.0, "severity": 0.7}]}
    config = simulate.SimConfig(subscribers=5000, hours=1.1, seed=seed, scenario=scenario, step_s=5.0,
                                malformed_share=0, duplicate_share=0, late_share=0)
    sim = simulate.Simulator(config)
    result = run_records(list(simulate.generate(config, sim)), partitions=4)
    return sim.incidents[0].onset_ms, result.alerts, result.incidents


@pytest.mark.parametrize("seed", [42, 7])
def test_a_drift_incident_starts_with_the_alerts_that_opened_it_not_the_earliest_straggler(seed):
    onset, alerts, records = _west_drift(seed)
    latest = {i.incident_id: i for _, i in records}
    [inc] = latest.values()
    assert inc.region == "west" and inc.status == "firing"
    # the cells that joined later include one whose run of evidence began minutes before the drift
    # (noise on a sparse cell): the earliest since of the members is not the incident's start
    since = {a.alert_id: a.details["since_ms"] for _, a in alerts}
    assert min(since[a] for a in inc.alert_ids) < onset - MINUTE
    # the incident starts at most a window before the onset (where the opening alerts' evidence began)
    assert onset - MINUTE <= inc.started_at_ms <= onset + 5 * MINUTE, (inc.started_at_ms - onset) / 1000
    assert all(r.started_at_ms == inc.started_at_ms for _, r in records)


def test_board_keeps_the_latest_state_and_never_reopens_a_resolved_incident():
    run = outage_run()
    records = [r for _, r in run.incidents]
    board = IncidentBoard()
    for r in records:
        assert board.apply_raw(encode(r))
        if r.status == "firing":
            assert [i.incident_id for i in board.active()] == [r.incident_id]
    assert board.active() == [] and board.list(status="resolved") == [records[-1]]
    assert not board.apply(records[1])                   # a replayed older state
    assert not board.apply(msgspec.structs.replace(records[-2], sequence=records[-1].sequence + 1))
    assert board.get(records[0].incident_id).status == "resolved"


def test_pager_gives_alertmanager_one_stable_alert_per_incident_and_resolves_it():
    run = outage_run()
    pager = IncidentPager()
    pages = [p for _, r in run.incidents for p in pager.pages(r)]
    firing = {tuple(sorted(p.labels.items())) + (p.severity,) for p in pages if p.status == "firing"}
    resolved = {tuple(sorted(p.labels.items())) + (p.severity,) for p in pages if p.status == "resolved"}
    assert firing == resolved and len(pager) == 0          # every label set that fired is resolved
    assert {p.labels["incident_id"] for p in pages} == {run.incidents[0][1].incident_id}
    assert all(p.alertname == "SatmonIncident" and p.runbook_url.endswith("/SatmonIncident.md") for p in pages)


def test_score_counts_an_incident_outside_any_injected_one_as_false():
    run = outage_run()
    truth = [{"id": "x", "scope": "cell", "cells": sorted(run.cells), "regions": [run.region],
              "onset_ms": run.onset_ms, "end_ms": run.end_ms}]
    assert score_incidents(run.incidents, truth)["false_incidents"] == 0
    elsewhere = [{**truth[0], "regions": ["north"]}]
    s = score_incidents(run.incidents, elsewhere)
    assert s["found"] == 0 and s["false_incidents"] == 1
    assert score_incidents(per_alert_groups(run.emitted), truth)["incidents"] == len(run.cells)


def _by_window(emitted):
    """Alerts grouped as the engine emitted them (one group per window end, in order)."""
    group, at = [], None
    for t, a in emitted:
        if at is not None and t != at:
            yield at, group
            group = []
        at = t
        group.append(a)
    if group:
        yield at, group
