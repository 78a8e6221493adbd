"""A real worker's /metrics against docs/OPERATIONS.md: every documented satmon metric is exported,
every exported satmon metric is documented."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest
from support.kafka import PARTITIONS, produce, run

from monitor.sim import simulate

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: documented metrics that exist only where their part is configured: the Alertmanager client
#: (``alertmanager_url``), which this worker does not have
CONDITIONAL = re.compile(r"^satmon_alertmanager_")
#: Faust's own Prometheus sensor, documented as one family (``satmon_faust_*``)
FAUST = re.compile(r"^satmon_faust_")


def documented() -> set[str]:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    return set(re.findall(r"^\| `(satmon_[a-z0-9_]+)` \|", text, flags=re.M))


def exported(body: str) -> set[str]:
    names = set()
    for line in body.splitlines():
        m = re.match(r"# TYPE (satmon_[a-z0-9_]+) (\w+)", line)
        if m:
            name, kind = m.groups()
            if FAUST.match(name) or (kind == "gauge" and name.endswith("_created")):
                continue   # Faust's sensor (one row in the doc) and client_python's creation times
            names.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
    return names


def test_every_documented_metric_is_exported_and_every_exported_one_documented(broker, workers, tmp_path):
    w = workers(broker, app_id="scrape", data_dir=tmp_path)
    config = simulate.SimConfig(subscribers=300, hours=0.25, seed=4, late_share=0.0)
    records = list(simulate.generate(config, simulate.Simulator(config)))
    run(produce(broker.bootstrap, records))
    w.wait_for(lambda: w.total("satmon_worker_partitions_assigned") == PARTITIONS, what="assignment")
    w.wait_for(lambda: w.total("satmon_ingest_records_consumed_total") >= len(records) * 0.99, what="records")
    with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    names, doc = exported(body), documented()
    missing = {n for n in doc - names if not CONDITIONAL.match(n)}
    assert not missing, f"documented in docs/OPERATIONS.md but not exported: {sorted(missing)}"
    undocumented = names - doc
    assert not undocumented, f"exported but not in docs/OPERATIONS.md: {sorted(undocumented)}"


def _stages(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return {m.group(1): float(m.group(2)) for m in
                re.finditer(r'^satmon_worker_stage_seconds_total\{stage="([^"]+)"\} (\S+)$', resp.read().decode(), re.M)}


def test_a_worker_accounts_its_time_per_stage(broker, workers, tmp_path):
    """The per-stage profile ``./run bench`` reports: every stage of the whole job shows up with
    time once the records are through, and the stages are disjoint spans of one thread: together
    (gc and the producer's waits aside, during which other stages run) they never exceed the wall
    time that passed."""
    w = workers(broker, app_id="stages", data_dir=tmp_path)
    w.wait_for(lambda: w.total("satmon_worker_partitions_assigned") == PARTITIONS, what="assignment")
    started, before = time.monotonic(), _stages(w.port)
    config = simulate.SimConfig(subscribers=2000, hours=0.5, seed=5, late_share=0.0)
    records = list(simulate.generate(config, simulate.Simulator(config)))
    run(produce(broker.bootstrap, records))
    w.wait_for(lambda: w.total("satmon_ingest_records_consumed_total") >= len(records), what="records")
    w.wait_for(lambda: w.total("satmon_view_records_applied_total") > 0, what="the view's first scores")
    after = _stages(w.port)
    elapsed = time.monotonic() - started
    for stage in ("decode", "core", "cell windows", "metrics", "state and checkpoints", "producer", "view"):
        assert after.get(stage, 0) > 0, (stage, after)
    spent = sum(s - before.get(k, 0.0) for k, s in after.items() if k not in ("gc", "awaiting the producer"))
    assert 0 < spent <= elapsed, (spent, elapsed, after)
    # the batch histograms the NOC dashboard reads are observed by the worker (they were empty once)
    assert w.total("satmon_pipeline_batch_duration_seconds_count") >= w.total("satmon_worker_batches_total") > 0
