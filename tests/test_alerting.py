"""Alert lifecycle: one fire, updates, one resolve, dedup, stable ids, schema-valid records."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import jsonschema
import pytest

from monitor.detection.alerting import ALERT_KINDS, AlertLifecycle, alert_id
from monitor.records.events import decode, encode
from monitor.detection.hotspots import HotspotEngine
from monitor.evaluation.hotspots import Incident, synthetic_cell_windows
from monitor.detection.windows import group_by_window

SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "alert.v1.json").read_text())
LABELS = {"cell_id": "c1", "region": "north"}


def _fire(lc, ts, desc="drops 5x", severity="warning"):
    return lc.fire("SatmonHotSpotActive", LABELS, ts_ms=ts, severity=severity,
                   summary="Cell c1 is a hot spot", description=desc, details={"n": desc})


def test_fire_dedup_update_resolve():
    seen = []
    lc = AlertLifecycle(on_change=[seen.append], runbook_base="https://git.example/satmon/docs/runbook/")
    first = _fire(lc, 1_000)
    assert first.status == "firing" and first.sequence == 0 and first.ends_at_ms is None
    assert first.runbook_url == "https://git.example/satmon/docs/runbook/SatmonHotSpotActive.md"
    assert _fire(lc, 2_000) is None                          # same content: deduplicated
    upd = _fire(lc, 3_000, desc="drops 7x", severity="critical")
    assert (upd.sequence, upd.severity, upd.alert_id, upd.starts_at_ms) == (1, "critical", first.alert_id, 1_000)
    assert upd.updated_at_ms == 3_000
    assert [a.alert_id for a in lc.active()] == [first.alert_id]
    res = lc.resolve("SatmonHotSpotActive", LABELS, ts_ms=9_000)
    assert (res.status, res.sequence, res.ends_at_ms) == ("resolved", 2, 9_000)
    assert lc.resolve("SatmonHotSpotActive", LABELS, ts_ms=10_000) is None
    assert lc.active() == [] and [a.sequence for a in seen] == [0, 1, 2]
    again = _fire(lc, 20_000)                                 # a new incident: a new id
    assert again.alert_id != first.alert_id and again.sequence == 0
    for a in (first, upd, res, again):                         # every record is valid alert.v1
        jsonschema.validate(json.loads(encode(a)), SCHEMA)
        assert decode("alert.v1", encode(a)) == a


def test_ids_are_deterministic_and_label_order_free():
    assert alert_id("SatmonHotSpotActive", {"a": "1", "b": "2"}, 5) == alert_id("SatmonHotSpotActive", {"b": "2", "a": "1"}, 5)
    assert alert_id("SatmonHotSpotActive", {"a": "1"}, 5) != alert_id("SatmonHotSpotActive", {"a": "1"}, 6)
    assert alert_id("SatmonHotSpotActive", {"a": "1"}, 5) != alert_id("SatmonRegionDegraded", {"a": "1"}, 5)


def test_rejects_unknown_alertname_and_severity():
    lc = AlertLifecycle()
    with pytest.raises(ValueError):
        lc.fire("hotspot", LABELS, ts_ms=0, severity="warning", summary="", description="")
    with pytest.raises(ValueError):
        lc.fire("SatmonHotSpotActive", LABELS, ts_ms=0, severity="page", summary="", description="")
    assert set(ALERT_KINDS) == {"SatmonHotSpotActive", "SatmonRegionDegraded", "SatmonDataDrift", "SatmonModelDrift"}


def test_updated_at_never_goes_back_and_pickles_without_callbacks():
    lc = AlertLifecycle(on_change=[lambda a: None])
    _fire(lc, 5_000)
    upd = _fire(lc, 4_000, desc="late window")
    assert upd.updated_at_ms == 5_000
    clone = pickle.loads(pickle.dumps(lc))
    assert clone.active() == lc.active() and clone.on_change == []


def test_restore_adopts_firing_and_forgets_resolved():
    lc = AlertLifecycle()
    a = _fire(lc, 1_000)
    other = AlertLifecycle()
    other.restore([a])
    assert other.get("SatmonHotSpotActive", LABELS) == a
    assert _fire(other, 2_000) is None                        # continues the same alert
    other.restore([lc.resolve("SatmonHotSpotActive", LABELS, ts_ms=3_000)])
    assert other.active() == []


T0 = 1_699_999_200_000


def _run(ws):
    eng = HotspotEngine()
    alerts = []
    for start, w in group_by_window(ws):
        alerts += eng.step(start, w)
    return eng, alerts


def test_engine_outage_gives_exactly_one_fire_updates_and_one_resolve():
    inc = Incident("cell", "r1", T0 + 60 * 60_000, T0 + 70 * 60_000, cell_id="c005")
    eng, alerts = _run(synthetic_cell_windows(n_cells=20, n_windows=100, incidents=[inc], seed=3))
    mine = [a for a in alerts if a.labels.get("cell_id") == "c005"]
    assert [a.status for a in mine].count("resolved") == 1
    fires = [a for a in mine if a.sequence == 0]
    assert len(fires) == 1 and len({a.alert_id for a in mine}) == 1
    assert [a.sequence for a in mine] == list(range(len(mine)))          # updates in order
    assert len(mine) >= 5                                                # it updated while it lasted
    assert fires[0].starts_at_ms == inc.start_ms                         # since when: the onset window
    d = mine[-2].details
    assert d["affected_subscribers"] > 50 and d["worst_symptom"] in ("degraded_share", "drop_rate", "latency_ms")
    assert inc.end_ms <= mine[-1].ends_at_ms <= inc.end_ms + 3 * 60_000
    assert [a for a in alerts if a.labels.get("cell_id") not in (None, "c005")] == []
    assert eng.active_hotspots() == []
    # each record says when it was updated (the end of the window it reflects), not its start again
    firing = [a for a in mine if a.status == "firing"]
    assert all(a.starts_at_ms == inc.start_ms for a in mine)
    assert all(a.updated_at_ms % 60_000 == 0 and a.updated_at_ms > a.starts_at_ms for a in firing)
    assert [a.updated_at_ms for a in firing] == sorted({a.updated_at_ms for a in firing})   # strictly later


def test_no_flapping_on_a_noisy_but_normal_cell():
    ws = synthetic_cell_windows(n_cells=20, n_windows=600, noisy_cells=["c001", "c002", "c003"], seed=11)
    _, alerts = _run(ws)
    assert alerts == []


def test_region_alert_groups_its_cells():
    inc = Incident("region", "r0", T0 + 60 * 60_000, T0 + 75 * 60_000)
    eng, alerts = _run(synthetic_cell_windows(n_cells=20, n_regions=2, n_windows=110, incidents=[inc], seed=5))
    region = [a for a in alerts if a.alertname == "SatmonRegionDegraded"]
    assert {a.labels["region"] for a in region} == {"r0"}
    assert len({a.alert_id for a in region}) == 1 and region[-1].status == "resolved"
    hot = max(len(a.details["hot_cells"]) for a in region)
    assert hot >= 8 and all(int(c[1:]) % 2 == 0 for a in region for c in a.details["hot_cells"])


def test_every_alert_has_a_runbook_page():
    root = Path(__file__).parents[1]
    for name in ALERT_KINDS:
        page = root / "docs" / "runbook" / f"{name}.md"
        assert page.exists() and page.read_text().startswith(f"# {name}")
