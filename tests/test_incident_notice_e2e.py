"""The proactive fault notice, end to end: simulated traffic with an injected three-cell outage ->
embedded broker -> a real worker -> its detector's hot spots gathered into one incident -> the
``incidents`` topic, the API (incident, hot spots, affected customers, CSV), ``/metrics`` and the
repository's Alertmanager configuration (one page per incident, its cells inhibited) -> resolved
once when the outage is over. No alert or incident here is written by the test."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from monitor.sim import simulate
from monitor.records.events import decode
from support.alertmanager import repo_alertmanager
from support.kafka import Broker, produce, read_topic, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKENS = {"noc": "noc-token-0123456789abcdef", "outreach": "outreach-token-0123456789abcdef",
          "admin": "admin-token-0123456789abcdef"}
SCENARIO = {"name": "metro-outage", "incidents": [
    {"id": "outage-m", "type": "cell_outage", "onset": "40m", "end": "70m", "cells": 3, "region": "metro",
     "severity": 1.0}]}


def call(port: int, path: str, role: str = "outreach", body: dict | None = None) -> tuple[int, Any, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {TOKENS[role]}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw, ctype, status = resp.read(), resp.headers.get("Content-Type", ""), resp.status
    except urllib.error.HTTPError as err:
        raw, ctype, status = err.read(), err.headers.get("Content-Type", ""), err.code
    if ctype.startswith("application/json"):
        return status, json.loads(raw or b"null"), ctype
    return status, raw.decode(), ctype


def wait(pred: Any, timeout: float, what: str, on_fail: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}" + (f": {on_fail()}" if on_fail else ""))


def am_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as resp:
        return json.load(resp)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """The repository's alertmanager.yml on a real Alertmanager (``support.alertmanager``)."""
    with repo_alertmanager(tmp_path) as url:
        yield url


def test_outage_is_one_incident_listed_with_its_customers_paged_once_and_resolved_once(
        broker: Broker, workers: Any, alertmanager: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({f"test-{role}": {"token": t, "role": role} for role, t in TOKENS.items()}))
    config = simulate.SimConfig(subscribers=2000, hours=1.6, seed=21, scenario=SCENARIO, cells=30,
                                malformed_share=0, duplicate_share=0, late_share=0)
    sim = simulate.Simulator(config)
    records = list(simulate.generate(config, sim))
    [injected] = sim.incidents
    cells = {simulate.cell_id(c) for c in injected.cells}
    # phase 1: up to 20 minutes into the outage (it is on); phase 2: the rest (it ends at 70 min)
    cut = injected.onset_ms + 20 * 60_000
    first = [r for r in records if orjson.loads(r[2])["ts_ms"] < cut]
    rest = records[len(first):]
    served: set[str] = set()   # who really used the dark cells since the onset (the simulator's truth)
    for topic, _key, value in first:
        ev = orjson.loads(value)
        if topic == "network-events" and ev["cell_id"] in cells and ev["ts_ms"] >= injected.onset_ms - 10 * 60_000:
            served.add(ev["subscriber_id"])

    w = workers(broker, app_id="t-notice", extra_args=("--tokens-file", str(tokens),
                                                       "--alertmanager-url", alertmanager))
    run(produce(broker.bootstrap, first))
    w.wait_for(lambda: w.total("satmon_ingest_events_decoded_total") >= len(first), timeout_s=120, what="phase 1 events")

    def firing() -> list[dict]:
        status, body, _ = call(w.port, "/api/v1/incidents?status=firing", "noc")
        return body["incidents"] if status == 200 else []

    wait(lambda: any(cells <= set(i["cells"]) for i in firing()), 90, "the outage as an incident in the API",
         lambda: (firing(), call(w.port, "/api/v1/hotspots", "noc")[1]))
    time.sleep(3)   # let the view and Alertmanager settle on the latest state

    # one incident, of the outage's region, with exactly the dark cells, KPIs and customers
    [inc] = firing()
    assert inc["region"] == "metro" and set(inc["cells"]) == cells, inc
    assert inc["kpis"] and inc["affected_subscribers"] > 0 and inc["customers"] > 0, inc
    assert injected.onset_ms - 10 * 60_000 <= inc["started_at_ms"] <= injected.onset_ms + 6 * 60_000

    # /api/v1/hotspots lists what /metrics exports
    _, hs, _ = call(w.port, "/api/v1/hotspots", "noc")
    exported = {k.split('cell_id="')[1].split('"')[0] for k, v in w.metrics().items()
                if k.startswith("satmon_hotspot_active{") and v == 1}
    assert {h["cell"] for h in hs["hotspots"]} == exported == cells, (hs, exported)
    assert all(h["affected"] > 0 for h in hs["hotspots"])

    # affected customers: served by the dark cells (checked against the simulator), suppression applied
    iid = inc["incident_id"]
    path = f"/api/v1/incidents/{iid}/affected?limit=500"
    status, body, _ = call(w.port, path)
    assert status == 200, body
    rows = [r["subscriber_id"] for r in body["rows"]]
    assert rows and set(rows) <= served, set(rows) - served
    assert body["affected"] >= body["eligible"] == len(rows) > 0
    assert all(r["uses"] >= 1 and r["last_served_ms"] >= inc["started_at_ms"] for r in body["rows"])
    assert body["affected"] - body["eligible"] >= 1   # the 10 % hold-out is withheld
    _, often, _ = call(w.port, path + "&min_uses=3")
    assert set(r["subscriber_id"] for r in often["rows"]) <= set(rows) and often["affected"] < body["affected"]
    assert all(r["uses"] >= 3 for r in often["rows"])
    status, _, _ = call(w.port, path, "noc")
    assert status == 403                                 # the NOC sees counts, not customers
    # do-not-contact takes a customer off the list at once
    status, _, _ = call(w.port, "/api/v1/consent", body={"subscriber_id": rows[0], "do_not_contact": True})
    assert status == 201

    def listed() -> list[str]:
        return [r["subscriber_id"] for r in call(w.port, path)[1]["rows"]]

    wait(lambda: rows[0] not in listed(), 15, "the do-not-contact reaching the view")
    # the same list as CSV, through the audited path
    status, text, ctype = call(w.port, f"/api/v1/incidents/{iid}/affected?limit=500&format=csv")
    assert status == 200 and ctype.startswith("text/csv")
    table = list(csv.reader(io.StringIO(text)))
    assert table[0][0] == "subscriber_id" and {r[0] for r in table[1:]} == set(listed())
    _, audit, _ = call(w.port, "/api/v1/audit?limit=1000", "admin")
    reads = [e for e in audit["entries"] if e["endpoint"] == "GET /api/v1/incidents/{incident_id}/affected"]
    assert len(reads) >= 4 and reads[-1]["rows"] == len(table) - 1

    # Alertmanager (the repository's configuration): the incident pages, its cells do not
    def metro() -> list[dict]:
        return [a for a in am_alerts(alertmanager) if a["labels"].get("region") == "metro"]

    wait(lambda: any(a["labels"]["alertname"] == "SatmonIncident" for a in metro())
         and any(a["labels"]["alertname"] == "SatmonHotSpotActive" and a["status"]["inhibitedBy"] for a in metro()),
         30, "the incident and its inhibited cells in Alertmanager", lambda: metro())
    active = [a for a in metro() if a["status"]["state"] == "active" and not a["status"]["inhibitedBy"]]
    assert [a["labels"]["alertname"] for a in active] == ["SatmonIncident"], active
    assert active[0]["labels"]["incident_id"] == iid
    assert {a["labels"]["cell_id"] for a in metro() if a["labels"]["alertname"] == "SatmonHotSpotActive"} == cells

    # phase 2: the outage ends -> the incident resolves, once
    run(produce(broker.bootstrap, rest))
    w.wait_for(lambda: w.total("satmon_ingest_events_decoded_total") >= len(records), timeout_s=120, what="all events")
    wait(lambda: iid not in {i["incident_id"] for i in firing()}, 90, "the incident resolved in the API", firing)
    wait(lambda: not [a for a in am_alerts(alertmanager) if a["labels"].get("incident_id") == iid],
         60, "the incident resolved in Alertmanager", lambda: am_alerts(alertmanager))
    _, done, _ = call(w.port, "/api/v1/incidents?status=resolved", "noc")
    assert iid in [i["incident_id"] for i in done["incidents"]]
    # anything else the detector raised later is another incident, none of the outage's cells in it
    _, everything, _ = call(w.port, "/api/v1/incidents", "noc")
    others = [i for i in everything["incidents"] if i["incident_id"] != iid]
    ended = next(i for i in done["incidents"] if i["incident_id"] == iid)["ended_at_ms"]
    assert all(not cells & set(i["cells"]) and i["started_at_ms"] >= ended for i in others), others
    assert w.stop() == 0

    # the incidents topic: one incident, fired once, updated, resolved once; records valid incident.v1
    every = [decode("incident.v1", r.value) for r in run(read_topic(broker.bootstrap, "incidents"))]
    assert {r.incident_id for r in every} == {iid} | {i["incident_id"] for i in others}
    recs = [r for r in every if r.incident_id == iid]
    assert [r.sequence for r in recs] == list(range(len(recs)))
    assert [r.status for r in recs].count("resolved") == 1 and recs[-1].status == "resolved"
    # every alert it gathered is a hot spot or region alert the detector raised on the alerts topic
    alerts = {orjson.loads(r.value)["alert_id"]: orjson.loads(r.value) for r in run(read_topic(broker.bootstrap, "alerts"))}
    assert set(recs[-1].alert_ids) <= set(alerts)
    assert {alerts[a]["labels"].get("cell_id") for a in recs[-1].alert_ids} - {None} == cells
    # it ended when the last of its alerts did (the detector's resolve), after the outage did
    ends = [alerts[a]["ends_at_ms"] for a in recs[-1].alert_ids]
    assert recs[-1].ended_at_ms == ended == max(ends) >= injected.end_ms
