"""Simulator -> broker -> worker -> ``risk-scores``: subscribers caught in an injected cell outage
see their scores rise and fill the top of the list, with network reasons, while the rest of the
base stays calm; the worker starts from a warm-start checkpoint instead of from zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from support.kafka import Broker, produce, read_topic, run
from monitor.sim import simulate
from monitor.scoring.warmstart import save, warm_start

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NETWORK_REASONS = {"weak_coverage", "interference", "drops", "stalls", "latency", "throughput", "bad_sessions",
                   "worst_moment", "recent_moments", "burden"}
SCENARIO = {"name": "outage-test", "incidents": [
    {"id": "outage-x", "type": "cell_outage", "onset": "40m", "end": "70m", "cells": 4, "severity": 1.0}]}


def test_outage_raises_the_scores_of_its_subscribers_with_network_reasons(broker: Broker, workers: Any,
                                                                          tmp_path: Path) -> None:
    config = simulate.SimConfig(subscribers=1500, hours=1.5, seed=21, scenario=SCENARIO, cells=30,
                                malformed_share=0, duplicate_share=0, late_share=0)
    sim = simulate.Simulator(config)
    records = list(simulate.generate(config, sim))
    [incident] = sim.incidents
    cells = {simulate.cell_id(c) for c in incident.cells}
    hit: set[str] = set()
    everyone: set[str] = set()
    for topic, key, value in records:
        everyone.add(key.decode())
        if topic == "network-events":
            ev = orjson.loads(value)
            if ev["cell_id"] in cells and incident.onset_ms <= ev["ts_ms"] < incident.end_ms:
                hit.add(ev["subscriber_id"])
    assert len(hit) > 30

    # a warm start the worker begins from (labels of an earlier, independent run)
    earlier = tmp_path / "earlier"
    # (a snapshot becomes a label once its 24 h horizon has passed: 28 simulated hours)
    simulate.write_files(simulate.SimConfig(subscribers=400, hours=28, seed=5), earlier)
    labels = tmp_path / "labels.csv"
    subprocess.run([sys.executable, "-m", "monitor", "replay", str(earlier), "--labels-csv", str(labels)],
                   check=True, capture_output=True, timeout=120)
    report = warm_start(labels, label="label", id_column="subscriber_id")
    ckpt = save(report["checkpoint"], tmp_path / "warm.ckpt")
    warm_rows = report["rows"]

    run(produce(broker.bootstrap, records))
    w = workers(broker, app_id="t-outage", extra_args=("--model-checkpoint", str(ckpt)))
    w.wait_for(lambda: w.total("satmon_ingest_events_decoded_total") >= len(records), timeout_s=120, what="all events")
    assert w.stop() == 0

    scores = [orjson.loads(r.value) for r in run(read_topic(broker.bootstrap, "risk-scores"))]
    assert scores
    # started from the warm start: the model's label count never starts below its rows
    assert min(s["model_version"] for s in scores) >= warm_rows

    before: dict[str, float] = {}
    during: dict[str, dict[str, Any]] = {}
    for s in sorted(scores, key=lambda s: s["ts_ms"]):
        sid = s["subscriber_id"]
        if s["ts_ms"] < incident.onset_ms:
            before[sid] = s["score"]
        elif s["ts_ms"] < incident.end_ms + 10 * 60_000:
            if s["score"] > during.get(sid, {"score": -1})["score"]:
                during[sid] = s
    # the scores are calibrated probabilities (a 1.5-hour outage takes a subscriber's chance of a
    # complaint, a detractor answer or a port-out from ~2.5 % to a few per cent, not past the 20 %
    # of at_risk): what the care team acts on is the ranking and the reasons
    calm = everyone - hit
    calm_level = sorted(during[sid]["score"] for sid in calm if sid in during)
    baseline = calm_level[len(calm_level) // 2]
    rose = [sid for sid in hit if sid in during and during[sid]["score"] > 1.25 * before.get(sid, baseline)]
    assert len(rose) >= 0.8 * len(hit), (len(rose), len(hit))
    # the top of the list during the outage is the outage's subscribers, for network reasons
    top = sorted(during, key=lambda sid: -during[sid]["score"])[:len(hit)]
    top_hit = [sid for sid in top if sid in hit]
    assert len(top_hit) >= 0.7 * len(top), (len(top_hit), len(top))
    for sid in top_hit:
        codes = {r["code"] for r in during[sid]["reasons"]}
        assert codes & NETWORK_REASONS, during[sid]["reasons"]
        assert all(r["text"] for r in during[sid]["reasons"])
