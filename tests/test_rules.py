"""Prometheus rules and Alertmanager config: promtool/amtool checks, test coverage of every alert,
runbooks, and a real Alertmanager grouping a regional outage into one notification."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from support.alertmanager import Webhook, repo_alertmanager

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK_BASE = "https://github.com/satmon/satmon/blob/main/"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"

# The alerts this project promises (docs/OPERATIONS.md); the detectors' names are shared with
# monitor/detection/alerting.py.
REQUIRED_ALERTS = {"SatmonHotSpotActive", "SatmonRegionDegraded", "SatmonAtRiskSurge", "SatmonDataDrift",
                   "SatmonModelDegraded", "SatmonConsumerLagHigh", "SatmonDeadLetterRateHigh", "SatmonWorkerDown",
                   "SatmonWorkerAbsent", "SatmonCheckpointStale"}


def alert_rules() -> list[dict]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "alert" in r]


def recording_rules() -> list[dict]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "record" in r]


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules():
    proc = run(PROMTOOL, "check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_unit_tests_pass():
    proc = run(PROMTOOL, "test", "rules", *map(str, TEST_FILES), cwd=PROM / "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_have_severity_annotations_and_an_existing_runbook():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert REQUIRED_ALERTS <= set(names)
    for rule in rules:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity"), name
        sev = rule["labels"]["severity"]
        assert sev in {"info", "warning", "critical"} or sev == "{{ $labels.severity }}", name
        ann = rule.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= ann.keys(), name
        url = ann["runbook_url"]
        assert url == f"{RUNBOOK_BASE}docs/runbook/{name}.md", name
        page = ROOT / url[len(RUNBOOK_BASE):]
        assert page.is_file(), f"missing runbook {page}"
        assert page.read_text().startswith(f"# {name}"), page


def test_every_alert_has_firing_and_silent_promtool_cases():
    """Coverage, read from the files: each alert has a case expecting it and a case expecting nothing."""
    fires: set[str] = set()
    silent: set[str] = set()
    tested_files = set()
    for f in TEST_FILES:
        doc = yaml.safe_load(f.read_text())
        tested_files |= {(f.parent / r).resolve() for r in doc["rule_files"]}
        for case in doc["tests"]:
            for t in case.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    assert tested_files == {p.resolve() for p in RULE_FILES}
    names = {r["alert"] for r in alert_rules()}
    assert names - fires == set(), "alerts never seen firing in a test"
    assert names - silent == set(), "alerts never tested for staying quiet"
    assert fires | silent <= names, "tests for alerts that do not exist"


def test_recording_rule_names_follow_level_metric_operations():
    for rule in recording_rules():
        level, metric, ops = rule["record"].split(":")
        assert level and metric.startswith("satmon_") and ops, rule["record"]


def test_amtool_check_config():
    proc = run(AMTOOL, "check-config", str(AM_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    ({"alertname": "SatmonHotSpotActive", "severity": "warning", "region": "north", "cell_id": "c1"}, "noc"),
    ({"alertname": "SatmonHotSpotActive", "severity": "critical", "region": "north", "cell_id": "c1"}, "oncall"),
    ({"alertname": "SatmonRegionDegraded", "severity": "critical", "region": "north"}, "oncall"),
    ({"alertname": "SatmonDataDrift", "severity": "info", "region": "north", "feature": "dl_mbps"}, "tickets"),
    ({"alertname": "SatmonWorkerAbsent", "severity": "critical"}, "oncall"),
    ({"alertname": "SatmonConsumerLagHigh", "severity": "warning", "topic": "network-events"}, "noc"),
])
def test_amtool_routes(labels, receiver):
    proc = run(AMTOOL, "config", "routes", "test", f"--config.file={AM_CONFIG}", f"--verify.receivers={receiver}",
               *(f"{k}={v}" for k, v in labels.items()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == receiver


def _route_group_by(labels: dict) -> list[str]:
    """group_by of the first matching top-level route (our routes only use = and =~ matchers)."""
    import re

    cfg = yaml.safe_load(AM_CONFIG.read_text())
    for route in cfg["route"]["routes"]:
        ok = True
        for m in route.get("matchers", []):
            name, op, value = re.match(r'(\w+)\s*(=~|=)\s*"?(.*?)"?$', m).groups()
            got = labels.get(name, "")
            ok &= bool(re.fullmatch(value, got)) if op == "=~" else got == value
        if ok:
            return route.get("group_by", cfg["route"]["group_by"])
    return cfg["route"]["group_by"]


def test_cell_and_region_alerts_of_one_region_share_a_group():
    cell = {"alertname": "SatmonHotSpotActive", "severity": "critical", "region": "north", "cell_id": "c1"}
    region = {"alertname": "SatmonRegionDegraded", "severity": "critical", "region": "north"}
    assert _route_group_by(cell) == _route_group_by(region) == ["region"]


# -- a real Alertmanager -----------------------------------------------------------------------------

@pytest.fixture
def alertmanager(tmp_path):
    """The repository's alertmanager.yml with receivers pointed at a local webhook and short timers."""
    with repo_alertmanager(tmp_path) as url:
        yield url


def _post(url: str, alerts: list[dict]) -> None:
    now = datetime.now(timezone.utc)
    body = [{"labels": a, "annotations": {"summary": "test"}, "startsAt": now.isoformat(),
             "endsAt": (now + timedelta(minutes=10)).isoformat()} for a in alerts]
    req = urllib.request.Request(f"{url}/api/v2/alerts", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=5)


def _active(url: str) -> set[tuple[str, str]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as resp:
        return {(a["labels"]["alertname"], a["labels"].get("region", "")) for a in json.load(resp)}


def _wait_for(pred, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; webhook got {Webhook.received}")
        time.sleep(0.2)


@pytest.mark.integration
def test_outage_notifies_once_per_region_and_region_alert_inhibits_cells(alertmanager):
    cells_south = [{"alertname": "SatmonHotSpotActive", "severity": "critical", "region": "south",
                    "cell_id": f"cell-{i}"} for i in range(5)]
    cells_north = [{"alertname": "SatmonHotSpotActive", "severity": "critical", "region": "north",
                    "cell_id": f"cell-{i}"} for i in range(10, 13)]
    region_north = {"alertname": "SatmonRegionDegraded", "severity": "critical", "region": "north"}
    _post(alertmanager, [region_north])
    # inhibition needs the source alert in place when the targets are grouped
    _wait_for(lambda: ("SatmonRegionDegraded", "north") in _active(alertmanager))
    _post(alertmanager, cells_south + cells_north)
    _wait_for(lambda: {b["groupLabels"].get("region") for _p, b in Webhook.received} >= {"north", "south"})
    time.sleep(2.5)   # a second flush would show up here
    by_region: dict[str, list] = {}
    for path, body in Webhook.received:
        assert path == "/oncall"
        by_region.setdefault(body["groupLabels"]["region"], []).append(body)
    # south: five hot cells, one notification listing all five
    assert len(by_region["south"]) == 1
    assert sorted(a["labels"]["cell_id"] for a in by_region["south"][0]["alerts"]) == [f"cell-{i}" for i in range(5)]
    # north: the region alert only; its cells are inhibited
    names = {a["labels"]["alertname"] for body in by_region["north"] for a in body["alerts"]}
    assert names == {"SatmonRegionDegraded"}
    with urllib.request.urlopen(f"{alertmanager}/api/v2/alerts", timeout=5) as resp:
        state = json.load(resp)
    inhibited = {a["labels"].get("cell_id") for a in state if a["status"]["inhibitedBy"]}
    assert inhibited == {"cell-10", "cell-11", "cell-12"}


@pytest.mark.integration
def test_region_incident_inhibits_its_data_drift_alert_but_not_others(alertmanager):
    _post(alertmanager, [{"alertname": "SatmonRegionDegraded", "severity": "critical", "region": "highlands"}])
    _wait_for(lambda: ("SatmonRegionDegraded", "highlands") in _active(alertmanager))
    _post(alertmanager, [{"alertname": "SatmonDataDrift", "severity": "warning", "region": "highlands",
                          "feature": "latency_ms"},
                         {"alertname": "SatmonDataDrift", "severity": "warning", "region": "west",
                          "feature": "rsrp_dbm"}])
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"{alertmanager}/api/v2/alerts", timeout=5) as resp:
            state = {(a["labels"]["alertname"], a["labels"]["region"]): a["status"] for a in json.load(resp)}
        if len(state) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state[("SatmonDataDrift", "highlands")]["inhibitedBy"]
    assert not state[("SatmonDataDrift", "west")]["inhibitedBy"]


def test_worker_alerts_and_rules_link_the_same_runbooks():
    """The detectors' alerts (pushed by the workers) and the rules' use one runbook base, and every
    alert the detectors can raise has its page."""
    from monitor.detection.alerting import DATA_DRIFT, DEFAULT_RUNBOOK_BASE, HOTSPOT_CELL, HOTSPOT_REGION, MODEL_DRIFT

    assert DEFAULT_RUNBOOK_BASE == f"{RUNBOOK_BASE}docs/runbook"
    for name in (HOTSPOT_CELL, HOTSPOT_REGION, DATA_DRIFT, MODEL_DRIFT):
        assert (ROOT / "docs" / "runbook" / f"{name}.md").is_file(), name


def test_runbook_base_is_one_setting_for_every_alert_the_worker_raises():
    """SATMON_RUNBOOK_BASE (default: the rules' base) sets the runbook link of the hot-spot, region,
    data-drift (HotspotStage) and concept-drift (ModelQualityFeed) alerts a worker raises."""
    from monitor.pipeline import HotspotStage
    from monitor.worker.app import ModelQualityFeed
    from monitor.config import DEFAULT_RUNBOOK_BASE, load

    assert load({}).runbook_base == DEFAULT_RUNBOOK_BASE == f"{RUNBOOK_BASE}docs/runbook"
    base = load({"SATMON_RUNBOOK_BASE": "https://noc.example/runbooks/"}).runbook_base
    engine = HotspotStage(partitions=2, runbook_base=base)._engine()
    assert engine.drift is not None and engine.drift.__class__.__name__ == "DataDriftMonitor"
    alert = engine.lifecycle.fire("SatmonHotSpotActive", {"cell_id": "c1", "region": "r"}, ts_ms=1,
                                  severity="warning", summary="s", description="d")
    assert alert.runbook_url == "https://noc.example/runbooks/SatmonHotSpotActive.md"

    class _M:
        def label_received(self, *a): pass

    alerts: list = []
    feed = ModelQualityFeed(_M(), [alerts.append], clock_ms=lambda: 0, runbook_base=base)
    fired = feed.lifecycle.fire("SatmonModelDrift", {"model": "risk", "partition": "0"}, ts_ms=1,
                                severity="info", summary="s", description="d")
    assert fired.runbook_url == "https://noc.example/runbooks/SatmonModelDrift.md"


def test_every_alert_anywhere_has_its_runbook_page():
    """Rules, the detectors' alert names and Alertmanager's routes: each alertname has docs/runbook/<name>.md."""
    from monitor.detection.alerting import ALERT_KINDS

    names = set(ALERT_KINDS)
    for f in (ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"):
        names |= {r["alert"] for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "alert" in r}
    missing = sorted(n for n in names if not (ROOT / "docs" / "runbook" / f"{n}.md").is_file())
    assert not missing
