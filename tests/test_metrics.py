"""monitor.observability.metrics: names, bounded labels, stale-series removal, and the series budget at scale.

Metrics are fed through the worker's pipeline (``support.metrics.feed_worker_like``).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.observability import metrics as mm
from monitor.detection.alerting import AlertLifecycle
from monitor.observability.alertmanager import AlertmanagerClient
from monitor.records.events import INPUT_TOPICS, RiskScore
from monitor.records.ingest import Ingest
from monitor.observability.metrics import Metrics, RollingQuality, attach_faust_sensor
from support.metrics import PARTITIONS, feed_worker_like

def _simulated(subscribers: int, hours: float, cells: int = 400, seed: int = 7) -> list[tuple[str, bytes, bytes]]:
    from monitor.sim.simulate import SimConfig, generate

    return list(generate(SimConfig(subscribers=subscribers, hours=hours, seed=seed, cells=cells)))


def _samples(registry: CollectorRegistry) -> list[Any]:
    return [s for fam in registry.collect() for s in fam.samples]


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def m(reg: CollectorRegistry) -> Metrics:
    return Metrics(reg, worker_id="w-test", process_metrics=False)


# -- names ----------------------------------------------------------------------------------------

SUBSYSTEMS = {"worker", "broker", "ingest", "pipeline", "risk", "hotspot", "alerting", "drift", "alertmanager",
              "model", "checkpoint"}
# Units and the suffixes of unit-less quantities: a count of things is named by the things.
UNIT_SUFFIXES = ("_total", "_seconds", "_bytes", "_ratio", "_nats", "_info", "_subscribers", "_alerts",
                 "_active", "_degraded", "_assigned")


def test_every_metric_is_named_satmon_subsystem_name_unit(reg, m):
    families = list(reg.collect())
    assert len(families) > 25
    for fam in families:
        name = fam.name + ("_total" if fam.type == "counter" else "")
        assert re.fullmatch(r"satmon_[a-z]+_[a-z0-9_]+", name), name
        assert name.split("_")[1] in SUBSYSTEMS, name
        assert name.endswith(UNIT_SUFFIXES), name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), name
        if fam.type == "histogram":
            assert name.endswith(("_seconds", "_ratio")), name
        assert fam.documentation, name


def test_histograms_use_the_named_bucket_constants(reg, m):
    m.batch_done(0.01, 10)
    m.observe_scores([_score("s", 0.4, 0, 50)])
    def bounds(name):
        return [float(s.labels["le"]) for s in _samples(reg) if s.name == name + "_bucket"][:-1]
    assert bounds("satmon_pipeline_batch_duration_seconds") == list(mm.BATCH_DURATION_BUCKETS)
    assert bounds("satmon_pipeline_event_duration_seconds") == list(mm.EVENT_DURATION_BUCKETS)
    assert bounds("satmon_pipeline_end_to_end_latency_seconds") == list(mm.END_TO_END_LATENCY_BUCKETS)
    assert bounds("satmon_risk_score_ratio") == list(mm.RISK_SCORE_BUCKETS)
    assert mm.RISK_SCORE_BUCKETS.count(0.5) == 1   # the default threshold is a bucket edge


def _score(sid: str, score: float, ts_ms: int, scored_at_ms: int, **kw: Any) -> RiskScore:
    return RiskScore(subscriber_id=sid, ts_ms=ts_ms, scored_at_ms=scored_at_ms, score=score,
                     at_risk=score >= 0.5, reasons=[], model_version=0, **kw)


# -- ingest and accounting ---------------------------------------------------------------------------

def test_dead_letter_series_exist_at_zero_and_unknown_reasons_become_other(reg, m):
    for stream in ("network", "tickets", "app"):
        for reason in mm.REASONS:
            v = reg.get_sample_value("satmon_ingest_records_dead_lettered_total", {"stream": stream, "reason": reason})
            assert v == 0.0
    m.dead_lettered("app", "something_new_from_a_future_decoder", 3)
    assert reg.get_sample_value("satmon_ingest_records_dead_lettered_total", {"stream": "app", "reason": "other"}) == 3
    assert reg.get_sample_value("satmon_ingest_records_consumed_total", {"stream": "app"}) == 3
    assert {"not_json", "missing_field", "wrong_type", "out_of_range", "bad_enum", "conditional", "empty",
            "unknown_topic", "too_large", "key_mismatch", "other"} <= set(mm.REASONS)


def test_sync_ingest_counts_the_real_ingest_exactly_once(reg, m):
    ingest = Ingest(worker="w")
    good = (b'{"event_id":"a1","session_id":"x","subscriber_id":"s1","ts_ms":1700000000000,'
            b'"kind":"survey_answer","nps":3}')
    ingest.decode_batch("app-interactions", 0, [(0, b"s1", good), (1, b"s1", b"{"), (2, None, b""),
                                                 (3, b"zz", good)])
    m.sync_ingest(ingest)
    m.sync_ingest(ingest)           # idempotent: only increases are added
    ingest.decode("care-tickets", 0, 4, None, b"[]")
    m.sync_ingest(ingest)
    get = reg.get_sample_value
    assert get("satmon_ingest_events_decoded_total", {"stream": "app"}) == 1
    assert get("satmon_ingest_records_dead_lettered_total", {"stream": "app", "reason": "not_json"}) == 1
    assert get("satmon_ingest_records_dead_lettered_total", {"stream": "app", "reason": "empty"}) == 1
    assert get("satmon_ingest_records_dead_lettered_total", {"stream": "app", "reason": "key_mismatch"}) == 1
    assert get("satmon_ingest_records_dead_lettered_total", {"stream": "tickets", "reason": "wrong_type"}) == 1
    assert get("satmon_ingest_records_consumed_total", {"stream": "app"}) == 4
    assert get("satmon_ingest_records_consumed_total", {"stream": "tickets"}) == 1


def test_topic_partition_accounting_reconciles_with_offsets_and_ingest(reg, m):
    records = _simulated(3_000, 0.5, cells=60)
    fed = feed_worker_like(m, records, batch=500)
    get = reg.get_sample_value
    total_letters = 0
    for (topic, p), next_offset in fed["offsets"].items():
        processed = get("satmon_pipeline_records_processed_total", {"topic": topic, "partition": str(p)}) or 0
        letters = get("satmon_pipeline_records_dead_lettered_total", {"topic": topic, "partition": str(p)}) or 0
        total_letters += letters
        assert processed + letters == next_offset, (topic, p)   # every offset accounted for once
    dead = sum(s.value for s in _samples(reg) if s.name == "satmon_ingest_records_dead_lettered_total")
    assert dead == total_letters == sum(fed["ingest"].dead_lettered.values()) > 0  # the simulator's malformed lines
    consumed = sum(s.value for s in _samples(reg) if s.name == "satmon_ingest_records_consumed_total")
    assert consumed == len(records)
    dups = sum(core.duplicates for core in fed["cores"].values())
    assert dups > 0 and get("satmon_pipeline_duplicates_dropped_total") == dups
    assert get("satmon_risk_scores_emitted_total") == len(fed["scores"]) > 0
    assert get("satmon_risk_score_ratio_count") == len(fed["scores"])
    assert get("satmon_worker_partitions_assigned") == PARTITIONS


def test_end_to_end_latency_is_event_time_to_score(reg, m):
    m.observe_scores([_score("a", 0.1, 1_000, 1_040), _score("b", 0.9, 1_000, 4_000)])
    get = reg.get_sample_value
    assert get("satmon_pipeline_end_to_end_latency_seconds_bucket", {"le": "0.05"}) == 1
    assert get("satmon_pipeline_end_to_end_latency_seconds_bucket", {"le": "5.0"}) == 2
    assert get("satmon_pipeline_end_to_end_latency_seconds_sum") == pytest.approx(3.04)
    assert get("satmon_risk_score_ratio_bucket", {"le": "0.5"}) == 1


# -- gauges that follow a changing set -------------------------------------------------------------------

def test_set_active_hotspots_adds_updates_and_removes_series(reg, m):
    m.cell_locations = {"c1": (48.1, 11.5)}
    get = reg.get_sample_value
    m.set_active_hotspots([("c1", "north", "warning"), ("c2", "south")])
    assert get("satmon_hotspot_active", {"cell_id": "c1", "region": "north", "severity": "warning"}) == 1
    assert get("satmon_hotspot_active", {"cell_id": "c2", "region": "south", "severity": "warning"}) == 1
    assert get("satmon_hotspot_cell_info", {"cell_id": "c1", "region": "north", "latitude": "48.10000",
                                            "longitude": "11.50000"}) == 1
    m.set_active_hotspots([("c1", "north", "critical")])      # escalated; c2 resolved
    names = [(s.name, s.labels) for s in _samples(reg) if s.name.startswith("satmon_hotspot")]
    assert names == [("satmon_hotspot_active", {"cell_id": "c1", "region": "north", "severity": "critical"}),
                     ("satmon_hotspot_cell_info", {"cell_id": "c1", "region": "north", "latitude": "48.10000",
                                                   "longitude": "11.50000"})]
    m.set_active_hotspots([])
    assert not [s for s in _samples(reg) if s.name.startswith("satmon_hotspot")]


def test_active_hotspots_are_capped_worst_first(reg, m):
    many = [(f"c{i}", "r", "warning") for i in range(mm.MAX_ACTIVE_HOTSPOTS + 50)] + [("cz", "r", "critical")]
    m.set_active_hotspots(many)
    active = [s for s in _samples(reg) if s.name == "satmon_hotspot_active"]
    assert len(active) == mm.MAX_ACTIVE_HOTSPOTS
    assert any(s.labels["cell_id"] == "cz" for s in active)


def test_alert_lifecycle_drives_active_gauges_and_drift_counters(reg, m):
    lc = AlertLifecycle(on_change=[m.on_alert])
    get = reg.get_sample_value
    lc.fire("SatmonHotSpotActive", {"cell_id": "c1", "region": "north"}, ts_ms=1, severity="warning",
            summary="s", description="d")
    lc.fire("SatmonRegionDegraded", {"region": "north"}, ts_ms=1, severity="critical", summary="s", description="d")
    lc.fire("SatmonDataDrift", {"region": "north", "feature": "latency_ms"}, ts_ms=1, severity="warning",
            summary="s", description="d")
    lc.fire("SatmonDataDrift", {"region": "north", "feature": "latency_ms"}, ts_ms=2, severity="warning",
            summary="s", description="d2")   # an update, not a new detection
    lc.fire("SatmonModelDrift", {"model": "risk", "partition": "3"}, ts_ms=1, severity="info", summary="s",
            description="d")
    assert get("satmon_hotspot_active", {"cell_id": "c1", "region": "north", "severity": "warning"}) == 1
    assert get("satmon_hotspot_region_degraded", {"region": "north", "severity": "critical"}) == 1
    assert get("satmon_drift_data_active", {"region": "north", "feature": "latency_ms", "severity": "warning"}) == 1
    assert get("satmon_drift_model_active", {"partition": "3", "severity": "info"}) == 1
    assert get("satmon_drift_detections_total", {"kind": "data", "feature": "latency_ms", "region": "north"}) == 1
    assert get("satmon_drift_detections_total", {"kind": "concept", "feature": "log_loss", "region": "all"}) == 1
    assert get("satmon_alerting_alerts_emitted_total", {"alertname": "SatmonDataDrift", "status": "firing"}) == 2
    lc.resolve("SatmonHotSpotActive", {"cell_id": "c1", "region": "north"}, ts_ms=5)
    lc.resolve("SatmonRegionDegraded", {"region": "north"}, ts_ms=5)
    assert get("satmon_hotspot_active", {"cell_id": "c1", "region": "north", "severity": "warning"}) is None
    assert get("satmon_hotspot_region_degraded", {"region": "north", "severity": "critical"}) is None
    assert get("satmon_alerting_alerts_emitted_total", {"alertname": "SatmonHotSpotActive", "status": "resolved"}) == 1
    m.set_active_alerts(lc.active())   # full resync (after a rebalance) keeps what is still active
    assert get("satmon_drift_model_active", {"partition": "3", "severity": "info"}) == 1


def test_at_risk_gauge_follows_the_view_and_budgets_labels(reg, m):
    get = reg.get_sample_value
    m.set_at_risk({("north", "prepaid"): 5, ("south", "business"): 2, (None, None): 1})
    assert get("satmon_risk_at_risk_subscribers", {"region": "north", "segment": "prepaid"}) == 5
    assert get("satmon_risk_at_risk_subscribers", {"region": "unknown", "segment": "unknown"}) == 1
    m.set_at_risk({("north", "prepaid"): 4})
    assert get("satmon_risk_at_risk_subscribers", {"region": "south", "segment": "business"}) is None
    flood = {(f"region-{i}", "prepaid"): 1 for i in range(mm.MAX_REGIONS + 30)}
    m.set_at_risk(flood)
    series = [s for s in _samples(reg) if s.name == "satmon_risk_at_risk_subscribers"]
    assert len(series) <= mm.MAX_REGIONS + 1
    assert sum(s.value for s in series) == len(flood)   # nothing lost, the excess is under "other"


def test_partition_series_leave_with_the_partition(reg, m):
    m.checkpoint_written(0, 1234, ts=1_700_000_000.0)
    m.checkpoint_written(1, 99, ts=1_700_000_001.0)
    m.set_model_quality(1, log_loss=0.4, roc_auc=0.8, calibration_error=float("nan"))
    get = reg.get_sample_value
    assert get("satmon_checkpoint_last_success_timestamp_seconds", {"partition": "0"}) == 1_700_000_000.0
    assert get("satmon_model_roc_auc_ratio", {"partition": "1"}) == 0.8
    assert get("satmon_model_calibration_error_ratio", {"partition": "1"}) is None
    m.set_partitions([0])
    assert get("satmon_worker_partitions_assigned") == 1
    assert get("satmon_checkpoint_last_success_timestamp_seconds", {"partition": "1"}) is None
    assert get("satmon_model_roc_auc_ratio", {"partition": "1"}) is None
    assert get("satmon_checkpoint_size_bytes", {"partition": "0"}) == 1234
    with pytest.raises(ValueError):
        m.label_received(0, "gossip")


def test_alertmanager_client_counters_are_read_at_scrape_time(reg, m):
    get = reg.get_sample_value
    assert get("satmon_alertmanager_alerts_delivered_total") == 0   # exists before a client is attached
    client = AlertmanagerClient("http://127.0.0.1:9", max_queue=2)
    m.track_alertmanager(client)
    lc = AlertLifecycle(on_change=[client.notify])
    for i in range(3):
        lc.fire("SatmonHotSpotActive", {"cell_id": f"c{i}", "region": "r"}, ts_ms=1, severity="warning",
                summary="s", description="d")
    assert get("satmon_alertmanager_alerts_enqueued_total") == 3
    assert get("satmon_alertmanager_alerts_dropped_total") == 1    # queue of 2
    assert get("satmon_alertmanager_queued_alerts") == 2


def test_attach_faust_sensor_exports_offsets_for_lag(reg):
    import faust
    from faust.types import TP

    app = faust.App("satmon-metrics-test", broker="memory://", store="memory://")
    attach_faust_sensor(app, reg)
    tp = TP("network-events", 2)
    app.monitor.track_tp_end_offset(tp, 1500)
    app.monitor.on_tp_commit({tp: 1200})
    labels = {"topic": "network-events", "partition": "2"}
    end = reg.get_sample_value("satmon_faust_topic_partition_end_offset", labels)
    committed = reg.get_sample_value("satmon_faust_topic_partition_offset_commited", labels)
    assert end - committed == 300


def test_rolling_quality_matches_definitions():
    import math
    import random

    rng = random.Random(3)
    pairs = []
    for _ in range(3000):                 # calibrated by construction: y ~ Bernoulli(p)
        p = round(rng.random(), 2)        # rounded: ties, which AUC must count as 1/2
        pairs.append((p, rng.random() < p))
    q = RollingQuality(window=2000)
    for p, y in pairs:
        q.update(p, y)
    kept = pairs[-2000:]                  # the window forgets the oldest
    ll, auc, ece = q.snapshot()
    pos = [p for p, y in kept if y]
    neg = [p for p, y in kept if not y]
    brute = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (len(pos) * len(neg))
    assert auc == pytest.approx(brute, abs=1e-12)
    clip = lambda p: min(max(p, 1e-7), 1 - 1e-7)  # noqa: E731
    assert ll == pytest.approx(-sum(math.log(clip(p)) if y else math.log(1 - clip(p)) for p, y in kept) / 2000)
    assert ece < 0.05                     # calibrated
    skewed = RollingQuality()
    for p, y in kept:
        skewed.update(min(1.0, p + 0.2), y)
    assert skewed.snapshot()[2] > 0.12    # 0.2 too high (less where clipped at 1)
    assert all(v != v for v in RollingQuality().snapshot())   # NaN without labels
    one_class = RollingQuality()
    one_class.update(0.2, False)
    assert one_class.snapshot()[1] != one_class.snapshot()[1]


# -- the series budget at operator scale -----------------------------------------------------------------

SERIES_BUDGET = 2_000


@pytest.mark.slow
def test_series_stay_under_budget_and_never_name_a_subscriber():
    """100k subscribers, 8 regions, 4 segments, 400 cells, 4 partitions: the full worker-like path
    (simulated records, real ingest and cores), the at-risk view, 30 active hot spots, region and
    drift alerts, Alertmanager and Faust's sensor -- and the registry stays small."""
    from faust.types import TP

    reg = CollectorRegistry()
    locations = {f"cell-{i:06d}": (46 + i / 100, 8 + i / 100) for i in range(400)}
    m = Metrics(reg, worker_id="w-0", cell_locations=locations)
    import faust

    app = faust.App("satmon-budget-test", broker="memory://", store="memory://")
    attach_faust_sensor(app, reg)
    records = _simulated(100_000, 0.75, cells=400)
    fed = feed_worker_like(m, records, batch=2000)
    subscriber_ids = {key.decode() for _t, key, _v in records}
    # every subscriber of the population also gets a score through the metrics path
    from monitor.sim.simulate import REGION_NAMES, SEGMENTS, subscriber_id

    extra = [_score(subscriber_id(i), (i % 100) / 100, 1_700_000_000_000, 1_700_000_000_050,
                    region=REGION_NAMES[i % 8], segment=SEGMENTS[i // 8 % 4], cell_id=f"cell-{i % 400:06d}")
             for i in range(100_000)]
    subscriber_ids |= {s.subscriber_id for s in extra}
    m.observe_scores(extra)
    at_risk: dict[tuple[str | None, str | None], int] = {}
    for s in fed["scores"] + extra:
        if s.at_risk:
            at_risk[(s.region, s.segment)] = at_risk.get((s.region, s.segment), 0) + 1
    m.set_at_risk(at_risk)
    lc = AlertLifecycle(on_change=[m.on_alert])
    for i in range(30):
        lc.fire("SatmonHotSpotActive", {"cell_id": f"cell-{i * 13:06d}", "region": REGION_NAMES[i % 8]}, ts_ms=i,
                severity="critical" if i % 5 == 0 else "warning", summary="s", description="d")
    lc.fire("SatmonRegionDegraded", {"region": REGION_NAMES[0]}, ts_ms=1, severity="critical", summary="s",
            description="d")
    for feature in ("latency_ms", "dl_mbps", "complaint_rate"):
        lc.fire("SatmonDataDrift", {"region": REGION_NAMES[1], "feature": feature}, ts_ms=1, severity="warning",
                summary="s", description="d")
    lc.fire("SatmonModelDrift", {"model": "risk", "partition": "2"}, ts_ms=1, severity="warning", summary="s",
            description="d")
    for p in range(PARTITIONS):
        m.set_model_quality(p, log_loss=0.3, roc_auc=0.8, calibration_error=0.05)
        for kind in mm.LABEL_KINDS:
            m.label_received(p, kind, 3)
        for topic in (*INPUT_TOPICS, "risk-scores", "satmon-cell-windows"):
            app.monitor.track_tp_end_offset(TP(topic, p), 10_000)
            app.monitor.on_tp_commit({TP(topic, p): 9_000})
    m.track_alertmanager(AlertmanagerClient("http://127.0.0.1:9"))

    samples = _samples(reg)
    assert len(samples) <= SERIES_BUDGET, len(samples)
    assert len(subscriber_ids) > 100_000 * 0.99
    leaked = {(s.name, k, v) for s in samples for k, v in s.labels.items() if v in subscriber_ids}
    assert not leaked
    assert len([s for s in samples if s.name == "satmon_hotspot_active"]) == 30
    assert len([s for s in samples if s.name == "satmon_hotspot_cell_info"]) == 30
    assert len([s for s in samples if s.name == "satmon_risk_at_risk_subscribers"]) == 8 * 4


def test_operations_doc_lists_every_metric(reg, m):
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "OPERATIONS.md").read_text()
    for fam in reg.collect():
        name = fam.name + ("_total" if fam.type == "counter" else "")
        assert f"| `{name}` |" in doc, f"{name} missing from docs/OPERATIONS.md"
