"""Generate satmon's Grafana dashboards (``deploy/grafana/dashboards/*.json``) from code.

Built with Grafana's own typed builders, ``grafana-foundation-sdk`` (pinned in pyproject's dev
extra), so a panel is a checked object rather than hand-edited JSON. The generated files are
committed; ``tests/test_dashboards.py`` regenerates them and fails on any difference, and runs every
panel's PromQL against a real Prometheus.

    python deploy/grafana/generate.py            # rewrite the JSON files
    python deploy/grafana/generate.py --check    # exit 1 if they are out of date

Queries prefer the recording rules of ``deploy/prometheus/rules/recording.yml``. Every panel reads
the datasource variable ``${datasource}`` (provisioned as uid ``prometheus``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import (bargauge, common, dashboard, geomap, heatmap, prometheus, stat,
                                             statetimeline, table, timeseries)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef, DataTransformerConfig
from grafana_foundation_sdk.models.geomap import TooltipMode

OUT = Path(__file__).resolve().parent / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
INPUT_TOPICS = 'topic=~"network-events|care-tickets|app-interactions"'
TAGS = ["satmon"]


def q(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False, fmt: str | None = None) -> Any:
    """A Prometheus query; ``instant`` + ``fmt="table"`` for tables and the map."""
    b = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        b = b.legend_format(legend)
    if instant:
        b = b.instant()
    if fmt:
        b = b.format(fmt)
    return b


def ts(title: str, desc: str, *queries: Any, unit: str = "short", w: int = 12, h: int = 8, stack: bool = False) -> Any:
    p = timeseries.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h)
    if stack:
        p = p.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL))
    for query in queries:
        p = p.with_target(query)
    return p


def tab(title: str, desc: str, query: Any, *, w: int = 12, h: int = 8, hide: tuple[str, ...] = ("Time",)) -> Any:
    organize = DataTransformerConfig(id_val="organize", options={"excludeByName": {k: True for k in hide}})
    return (table.Panel().title(title).description(desc).datasource(DS).span(w).height(h)
            .with_target(query).with_transformation(organize))


def noc() -> Any:
    d = _base("satmon — network operations", "satmon-noc",
              "Throughput, lag, hot spots on the map, customers at risk by region, drift and alert state.")
    d = d.with_row(dashboard.Row("Pipeline"))
    d = d.with_panel(ts("Events consumed per stream", "Input records handed to ingest, per second.",
                        q("stream:satmon_ingest_records_consumed:rate1m", "{{stream}}"), unit="ops", w=8))
    d = d.with_panel(ts("Consumer lag per input topic",
                        "Records behind the high-water mark (Faust sensor: end offset - committed offset).",
                        q(f"topic:satmon_faust_consumer_lag:sum{{{INPUT_TOPICS}}}", "{{topic}}"), w=8))
    d = d.with_panel(ts("Dead letters by stream and reason", "Records rejected by validation, per second.",
                        q("stream_reason:satmon_ingest_records_dead_lettered:rate5m > 0", "{{stream}} {{reason}}"),
                        unit="ops", w=8))
    d = d.with_panel(ts("End-to-end latency", "Event time of the scored event to the score being emitted.",
                        q("job:satmon_pipeline_end_to_end_latency_seconds:p50_rate5m", "p50"),
                        q("job:satmon_pipeline_end_to_end_latency_seconds:p99_rate5m", "p99", ref="B"),
                        unit="s", w=8))
    d = d.with_panel(ts("Batch duration p99", "Wall time of one consumer batch.",
                        q("job:satmon_pipeline_batch_duration_seconds:p99_rate5m", "p99"), unit="s", w=8))
    d = d.with_panel(stat.Panel().title("Workers up").description("Scrape targets of job satmon that are up.")
                     .datasource(DS).span(8).height(8)
                     .with_target(q('sum(up{job="satmon"})', "up")))

    d = d.with_row(dashboard.Row("Hot spots"))
    d = d.with_panel(_map())
    d = d.with_panel(tab("Active hot spots", "One row per active cell hot spot (series removed on resolve).",
                         q("max by (cell_id, region, severity) (satmon_hotspot_active)", instant=True, fmt="table"),
                         w=12, h=12, hide=("Time", "Value")))
    d = d.with_panel(ts("Hot cells per region", "Active cell hot spots, counted per region.",
                        q("region:satmon_hotspot_active:count", "{{region}}"), w=12, stack=True))
    d = d.with_panel(tab("Degraded regions", "Regions with an active SatmonRegionDegraded.",
                         q("max by (region, severity) (satmon_hotspot_region_degraded)", instant=True, fmt="table"),
                         w=12, hide=("Time", "Value")))

    d = d.with_row(dashboard.Row("Customers"))
    d = d.with_panel(ts("Subscribers at risk by region", "From the complete at-risk view (max over workers).",
                        q("region:satmon_risk_at_risk_subscribers:sum", "{{region}}"), w=12, stack=True))
    d = d.with_panel(bargauge.Panel().title("At risk by region and segment")
                     .description("Current at-risk subscribers per (region, segment).").datasource(DS)
                     .span(12).height(8)
                     .with_target(q("region_segment:satmon_risk_at_risk_subscribers:max", "{{region}} / {{segment}}",
                                    instant=True)))
    d = d.with_panel(heatmap.Panel().title("Risk score distribution")
                     .description("Emitted risk scores per 0.05 bin, per second.").datasource(DS).span(12).height(8)
                     .with_target(q("sum by (le) (rate(satmon_risk_score_ratio_bucket[$__rate_interval]))", "{{le}}",
                                    fmt="heatmap")))
    d = d.with_panel(ts("Scores emitted", "risk_score.v1 records per second (material changes only).",
                        q("sum(rate(satmon_risk_scores_emitted_total[$__rate_interval]))", "scores/s"), unit="ops",
                        w=12))

    d = d.with_row(dashboard.Row("Alerts"))
    d = d.with_panel(statetimeline.Panel().title("satmon alerts firing")
                     .description("Prometheus' ALERTS series for satmon's alerts (empty in a healthy system).")
                     .datasource(DS).span(24).height(8)
                     .with_target(q('count by (alertname) (ALERTS{alertstate="firing", alertname=~"Satmon.*"})',
                                    "{{alertname}}")))
    return d


def _map() -> Any:
    # Locations are labels of satmon_hotspot_cell_info, which exists only for active hot spots whose
    # cell is in the inventory; the map converts them to numbers and places one marker per cell.
    to_numbers = DataTransformerConfig(id_val="convertFieldType", options={"conversions": [
        {"targetField": "latitude", "destinationType": "number"},
        {"targetField": "longitude", "destinationType": "number"}]})
    markers = (common.MapLayerOptions().type("markers").name("Hot spots").tooltip(True)
               .location(common.FrameGeometrySource().mode(common_models.FrameGeometrySourceMode.COORDS)
                         .latitude("latitude").longitude("longitude"))
               .config({"style": {"color": {"fixed": "red"}, "size": {"fixed": 8}}}))
    return (geomap.Panel().title("Hot spots on the map")
            .description("Active hot spots at their cell's coordinates (cell inventory).").datasource(DS)
            .span(12).height(12)
            .with_target(q("max by (cell_id, region, latitude, longitude) (satmon_hotspot_cell_info)",
                           instant=True, fmt="table"))
            .with_transformation(to_numbers)
            .view(geomap.MapViewConfig().id("fit").lat(0).lon(0).zoom(5))
            .basemap(common.MapLayerOptions().type("default").name("Basemap"))
            .layers([markers])
            .tooltip(geomap.TooltipOptions().mode(TooltipMode.DETAILS)))


def model() -> Any:
    d = _base("satmon — risk model", "satmon-model",
              "Quality of the per-partition risk models on late labels, labels, drift, checkpoints.")
    d = d.with_row(dashboard.Row("Quality"))
    d = d.with_panel(ts("ROC-AUC", "Ranking quality on recent late labels (0.5 = chance).",
                        q("satmon_model_roc_auc_ratio", "partition {{partition}}"), unit="percentunit", w=8))
    d = d.with_panel(ts("Log-loss", "Mean log-loss on recent late labels (nats).",
                        q("satmon_model_log_loss_nats", "partition {{partition}}"), w=8))
    d = d.with_panel(ts("Calibration error", "Expected calibration error on recent late labels.",
                        q("satmon_model_calibration_error_ratio", "partition {{partition}}"), unit="percentunit", w=8))
    d = d.with_panel(ts("Labels received by kind", "Late labels joined to feature snapshots, per second.",
                        q("sum by (kind) (rate(satmon_model_labels_received_total[$__rate_interval]))", "{{kind}}"),
                        unit="ops", w=12, stack=True))
    d = d.with_panel(ts("Share of scores at risk", "Emitted scores at or above 0.5 (the default threshold).",
                        q("1 - sum(rate(satmon_risk_score_ratio_bucket{le=\"0.45\"}[$__rate_interval]))"
                          " / sum(rate(satmon_risk_score_ratio_count[$__rate_interval]))", "at risk"),
                        unit="percentunit", w=12))

    d = d.with_row(dashboard.Row("Drift"))
    d = d.with_panel(ts("Drift detections (1h)", "New drift alerts per kind and feature over the last hour.",
                        q("sum by (kind, feature) (increase(satmon_drift_detections_total[1h])) > 0",
                          "{{kind}} {{feature}}"), w=8))
    d = d.with_panel(tab("Active data drift", "Regions and features with an active SatmonDataDrift.",
                         q("max by (region, feature, severity) (satmon_drift_data_active)", instant=True, fmt="table"),
                         w=8, hide=("Time", "Value")))
    d = d.with_panel(tab("Active concept drift", "Partitions with an active SatmonModelDrift.",
                         q("max by (partition, severity) (satmon_drift_model_active)", instant=True, fmt="table"),
                         w=8, hide=("Time", "Value")))

    d = d.with_row(dashboard.Row("State"))
    d = d.with_panel(ts("Checkpoint age", "Seconds since each partition's model was last checkpointed.",
                        q("partition:satmon_checkpoint_age_seconds:min", "partition {{partition}}"), unit="s", w=12))
    d = d.with_panel(ts("Duplicates dropped", "Events dropped by the risk core as already seen, per second.",
                        q("sum(rate(satmon_pipeline_duplicates_dropped_total[$__rate_interval]))", "duplicates/s"),
                        unit="ops", w=12))

    d = d.with_row(dashboard.Row("Worker memory"))
    d = d.with_panel(ts("Resident memory per worker", "Resident set size of each worker process.",
                        q('process_resident_memory_bytes{job="satmon"}', "{{instance}}"), unit="bytes", w=8))
    d = d.with_panel(ts("Native memory by part",
                        "RocksDB (memtables, block cache, index and filter blocks) per table, and the C heap "
                        "in use and held free (glibc), summed over workers.",
                        q("sum by (table, kind) (satmon_worker_store_memory_bytes)", "rocksdb {{table}} {{kind}}"),
                        q("sum by (kind) (satmon_worker_malloc_bytes)", "heap {{kind}}", ref="B"),
                        unit="bytes", w=8))
    d = d.with_panel(ts("Outreach view and window sizes", "What each worker's view holds: score versions in "
                        "the history rings and change-log entries (both bounded; they stop growing once full); "
                        "and the (cell, window) accumulators held open, which grow while a backlog holds "
                        "window closing back.",
                        q("satmon_view_history_versions", "versions {{instance}}"),
                        q("satmon_view_change_log_entries", "change log {{instance}}", ref="B"),
                        q("sum by (side) (satmon_worker_window_cells_open)", "hot-spot windows open ({{side}})",
                          ref="C"), w=8))
    return d


def _base(title: str, uid: str, description: str) -> Any:
    ds_var = dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    drift = (dashboard.AnnotationQuery().name("Drift detected").datasource(DS).enable(True).icon_color("orange")
             .expr("sum by (kind, feature, region) (increase(satmon_drift_detections_total[2m])) > 0"))
    return (dashboard.Dashboard(title).uid(uid).description(description).tags(TAGS).refresh("30s")
            .time("now-6h", "now").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
            .with_variable(ds_var).annotation(drift))


DASHBOARDS = {"satmon-noc.json": noc, "satmon-model.json": model}


def render(build: Any) -> str:
    doc = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        text = render(build)
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)} (run python deploy/grafana/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
