"""Grafana dashboards as code: generated files are current, every query parses, every metric a
query or rule reads is one satmon (or Faust's sensor, or Prometheus) exports."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from support.promql import DASHBOARDS, RULE_FILES, expressions, grafana_expand, metric_names

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "deploy" / "grafana" / "generate.py"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _generator():
    spec = importlib.util.spec_from_file_location("satmon_grafana_generate", GENERATOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_dashboards_are_committed_and_current():
    gen = _generator()
    assert {p.name for p in DASHBOARDS} == set(gen.DASHBOARDS) == {"satmon-noc.json", "satmon-model.json"}
    for name, build in gen.DASHBOARDS.items():
        assert (gen.OUT / name).read_text() == gen.render(build), f"{name} is stale: run python {GENERATOR}"
    assert gen.main(["--check"]) == 0


def test_panels_are_well_formed():
    uids = set()
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        assert doc["uid"] not in uids
        uids.add(doc["uid"])
        assert [v["name"] for v in doc["templating"]["list"]] == ["datasource"]
        for panel in doc["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["title"] and panel.get("description"), panel
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and all(refs) and len(set(refs)) == len(refs), panel["title"]
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24
    noc = json.loads((ROOT / "deploy/grafana/dashboards/satmon-noc.json").read_text())
    types = {p["type"] for p in noc["panels"]}
    assert {"geomap", "table", "heatmap", "state-timeline", "timeseries"} <= types
    geo = next(p for p in noc["panels"] if p["type"] == "geomap")
    assert "satmon_hotspot_cell_info" in geo["targets"][0]["expr"]
    assert geo["options"]["layers"][0]["location"] == {"mode": "coords", "latitude": "latitude",
                                                       "longitude": "longitude"}


def test_every_dashboard_query_parses(tmp_path):
    """promtool has no PromQL parser command (2.42), but `check rules` parses each rule's expr:
    wrap every panel query in a recording rule and let it judge (with a real parse error if bad)."""
    rules = [{"record": f"dashboard:q{i}:check", "expr": grafana_expand(expr)}
             for i, (_name, expr) in enumerate(expressions())]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and the check is real: a broken query fails it
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "a:b:c", "expr": "sum(rate(x[5m])"}]}]}))
    bad = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "parse error" in (bad.stdout + bad.stderr)


def _exported_names() -> set[str]:
    """Series names satmon's registry can expose: Metrics, Faust's sensor, Prometheus' own, and a
    real worker's registry (its pipeline, memory and view collectors, the process metrics)."""
    import tempfile

    import faust

    from monitor.worker.app import build_worker
    from monitor.config import load
    from monitor.observability.metrics import Metrics, attach_faust_sensor

    reg = CollectorRegistry()
    Metrics(reg, worker_id="w", process_metrics=False)
    attach_faust_sensor(faust.App("satmon-names", broker="memory://", store="memory://"), reg)
    names = {"up", "ALERTS", "ALERTS_FOR_STATE"}
    with tempfile.TemporaryDirectory() as tmp:
        worker = build_worker(load({}, broker="kafka://127.0.0.1:9", data_dir=tmp, store="rocksdb://",
                                   pseudonymise="false"))
        families = list(reg.collect()) + list(worker.registry.collect())
    for fam in families:
        if fam.type == "counter":
            names |= {fam.name + "_total"}
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_count", "_sum")}
        else:
            names.add(fam.name)
    return names


def test_every_metric_read_by_a_rule_or_panel_is_exported():
    exported = _exported_names()
    recorded = {r["record"] for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
                for r in g["rules"] if "record" in r}
    missing = {(name, m) for name, expr in expressions() for m in metric_names(grafana_expand(expr))
               if m not in exported | recorded}
    assert not missing


@pytest.mark.parametrize("path", sorted(PROVISIONING.rglob("*.yml")), ids=lambda p: p.name)
def test_provisioning_files(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == 1
    if "datasources" in doc:
        [ds] = doc["datasources"]
        assert ds["type"] == "prometheus" and ds["uid"] == "prometheus"
    else:
        [provider] = doc["providers"]
        assert provider["type"] == "file" and provider["options"]["path"]
