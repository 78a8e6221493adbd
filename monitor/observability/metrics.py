"""Every Prometheus metric satmon exports, created on a registry passed in (never the global one).

:class:`Metrics` owns the metric objects and the few methods the worker shell calls -- per batch,
per alert state change, per checkpoint -- never per event from a hot loop with a ``.labels()`` call
(``.labels()`` hashes the label tuple and takes a lock: ~0.8 µs, more than decoding an event).
Label children of the hot paths are created once and cached on the object.

Names follow ``satmon_<subsystem>_<name>_<unit>``; counters end in ``_total``. Every label has a
bounded set of values: ``stream`` and ``reason`` are fixed tuples below, ``partition`` is bounded
by the topic's partition count, ``region`` / ``segment`` / ``feature`` by :class:`LabelBudget`, and
``cell_id`` appears only on series of *active* hot spots, which are removed when they resolve.
No metric ever carries a subscriber id. ``docs/OPERATIONS.md`` has the reference table.

Consumer lag comes from Faust's own Prometheus sensor, on the same registry
(:func:`attach_faust_sensor`): lag of a topic-partition is
``satmon_faust_topic_partition_end_offset - satmon_faust_topic_partition_offset_commited``
(Faust's spelling), recorded as ``satmon:consumer_lag:sum`` in ``deploy/prometheus/rules``.

>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = Metrics(reg, worker_id="w1")
>>> m.dead_lettered("network", "not_json", 2)
>>> reg.get_sample_value("satmon_ingest_records_dead_lettered_total", {"stream": "network", "reason": "not_json"})
2.0
>>> m.set_active_hotspots([("c7", "north", "critical")])
>>> reg.get_sample_value("satmon_hotspot_active", {"cell_id": "c7", "region": "north", "severity": "critical"})
1.0
>>> m.set_active_hotspots([])
>>> reg.get_sample_value("satmon_hotspot_active", {"cell_id": "c7", "region": "north", "severity": "critical"}) is None
True
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, GCCollector, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import monitor
from monitor.records.ingest import REASON_KINDS as INGEST_REASON_KINDS
from monitor.records.topics import STREAM_TOPICS, TOPIC_STREAMS
from monitor.tuning import malloc_stats

# -- bounded label values --------------------------------------------------------------------------

#: stream label values: one per input topic (``network-events`` -> ``network`` ...).
STREAMS: tuple[str, ...] = tuple(TOPIC_STREAMS.values())
#: input topic -> stream, and back (monitor.records.topics)
TOPIC_STREAM, STREAM_TOPIC = TOPIC_STREAMS, STREAM_TOPICS
#: dead-letter stream for a record of a topic that is not an input (ingest's ``UNKNOWN_STREAM``)
UNKNOWN_STREAM = "unknown"
#: reason classes of dead letters: the decoder's and ingest's kinds, then ``other`` for anything
#: new, so a future reason can never add an unbounded label value.
REASONS: tuple[str, ...] = tuple(INGEST_REASON_KINDS) + ("other",)
#: how a late label arrived at the risk model (see ``monitor.scoring.core``): a complaint or a detractor
#: answer (positive), a passive/promoter answer or a quiet horizon (negative).
#: the outcome heads of the risk model (``monitor.scoring.risk``): every graded snapshot teaches each head one label
LABEL_KINDS: tuple[str, ...] = ("complaint", "detractor", "churn")
#: kinds of drift detection
DRIFT_KINDS: tuple[str, ...] = ("data", "concept")
#: alert names the worker's detectors raise (``monitor.detection.alerting.ALERT_KINDS``) and their states
ALERT_NAMES: tuple[str, ...] = ("SatmonHotSpotActive", "SatmonRegionDegraded", "SatmonDataDrift", "SatmonModelDrift")
ALERT_STATUSES: tuple[str, ...] = ("firing", "resolved")
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")

#: Value used instead of a label value once a :class:`LabelBudget` is exhausted.
OVERFLOW = "other"
# Label budgets: an operator has a handful of regions and segments; a flood of distinct values means
# bad data, and must not become a flood of series. 100k subscribers still give <= 2,000 series.
MAX_REGIONS = 64
MAX_SEGMENTS = 16
MAX_FEATURES = 32
# More simultaneously active hot spots than this is an outage of the network (or of the detector):
# the region alerts carry that; the cell series are capped so a storm cannot blow up the TSDB.
MAX_ACTIVE_HOTSPOTS = 500

# -- histogram buckets (each a named, commented constant) -----------------------------------------

#: Wall time of one consumer batch (decode + cores + outputs), seconds. Batches hold up to 2,000
#: records at ~10 µs each (~20 ms); a quiet partition's batch is one record (~50 µs). Above 1 s the
#: consumer is in trouble (session timeout is 6 s).
BATCH_DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                          0.25, 0.5, 1.0, 2.5, 6.0)
#: Mean processing time per event within a batch, seconds: ~5-20 µs on the fast path; 200 µs is the
#: cost of Faust's per-message path, the thing the fast path exists to avoid.
EVENT_DURATION_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 1e-2)
#: Event time -> score emitted, seconds. The worker's measured p99 is ~64 ms at 2,000 events/s; the
#: upper buckets show backlog (a lagging consumer) and late data (events minutes old on arrival).
END_TO_END_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                              300.0, 900.0, 3600.0)
#: Risk scores are probabilities; 0.05-wide bins give the distribution's shape and, with the
#: at-risk threshold (default 0.5) on a bin edge, the share above it exactly.
RISK_SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20)) + (1.0,)


class LabelBudget:
    """At most ``limit`` distinct values of one label; later new values become :data:`OVERFLOW`.

    >>> b = LabelBudget(2)
    >>> [b("a"), b("b"), b("c"), b("a"), b(None)]
    ['a', 'b', 'other', 'a', 'unknown']
    >>> b.overflowed
    1
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.overflowed = 0

    def __call__(self, value: str | None) -> str:
        if not value:
            return "unknown"
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        self.overflowed += 1
        return OVERFLOW


def attach_faust_sensor(app: Any, registry: CollectorRegistry, prefix: str = "satmon_faust") -> Any:
    """Install Faust's Prometheus sensor on ``app`` with its metrics on ``registry``.

    ``faust.sensors.prometheus.setup_prometheus_sensors`` would also add its own ``/metrics`` page
    (the worker serves one already), so this does only its other half: ``FaustMetrics.create`` on
    our registry with the ``satmon_faust`` prefix, and ``app.monitor = PrometheusMonitor(...)``.
    Consumer lag per topic-partition is then
    ``satmon_faust_topic_partition_end_offset - satmon_faust_topic_partition_offset_commited``
    (the fast path reports high-waters through ``monitor.track_tp_end_offset``; commits through
    Faust's ``on_tp_commit``). Returns the ``FaustMetrics``.
    """
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    faust_metrics = FaustMetrics.create(registry, prefix)
    app.monitor = PrometheusMonitor(metrics=faust_metrics)
    return faust_metrics


def load_cell_locations(path: str | None) -> dict[str, tuple[float, float]]:
    """``cell_id -> (latitude, longitude)`` from a JSON cell inventory: a list of
    ``{"cell_id", "lat", "lon"}`` (``latitude``/``longitude`` also accepted), as ``satmon simulate
    --out`` writes ``cells.json``. ``None`` or ``""``: no inventory (no geo series)."""
    if not path:
        return {}
    import json
    from pathlib import Path

    from monitor.records.errors import ConfigError

    try:
        rows = json.loads(Path(path).read_text())
        return {str(r["cell_id"]): (float(r.get("lat", r.get("latitude"))), float(r.get("lon", r.get("longitude"))))
                for r in rows}
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ConfigError([f"SATMON_CELL_INVENTORY: cannot read cell locations from {path}: {err!r}"]) from err


class _AlertmanagerCollector:
    """Reads an :class:`monitor.observability.alertmanager.AlertmanagerClient`'s plain-int counters at scrape time."""

    # (client attribute, metric name, help)
    COUNTERS = (
        ("enqueued", "satmon_alertmanager_alerts_enqueued", "Alert state changes queued for Alertmanager"),
        ("delivered", "satmon_alertmanager_alerts_delivered", "Alerts accepted by Alertmanager"),
        ("failures", "satmon_alertmanager_post_failures", "Failed POSTs to Alertmanager (retried unless rejected)"),
        ("rejected", "satmon_alertmanager_alerts_rejected", "Alerts refused by Alertmanager with a 4xx (not retried)"),
        ("dropped", "satmon_alertmanager_alerts_dropped", "Alerts dropped from the full delivery queue"),
        ("resent", "satmon_alertmanager_alerts_resent", "Firing alerts re-posted to keep them alive"),
    )

    def __init__(self) -> None:
        self.client: Any = None

    def describe(self) -> Iterable[Any]:
        return self.collect(describe=True)

    def collect(self, describe: bool = False) -> Iterable[Any]:
        c = self.client
        for attr, name, doc in self.COUNTERS:
            yield CounterMetricFamily(name, doc, value=0 if c is None else getattr(c, attr))
        yield GaugeMetricFamily("satmon_alertmanager_queued_alerts", "Alerts waiting for delivery",
                                value=0 if c is None else c.queued)


class Metrics:
    """satmon's metrics on ``registry``, and the calls that keep them current.

    Parameters
    ----------
    registry
        Where every metric is registered; tests pass a fresh ``CollectorRegistry``.
    worker_id
        This worker's name (a label of ``satmon_worker_info`` only).
    version
        satmon's version for ``satmon_worker_info``.
    cell_locations
        ``cell_id -> (latitude, longitude)`` from the operator's cell inventory: an active hot spot
        whose cell is listed gets a ``satmon_hotspot_cell_info`` series for the geo map.
    process_metrics
        Also register client_python's ``process_*`` collector (CPU, memory, fds).
    clock
        Wall clock in seconds (checkpoint timestamps, start time).

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> m = Metrics(reg, worker_id="w1", process_metrics=False)
    >>> m.batch_done(0.004, 100)
    >>> reg.get_sample_value("satmon_pipeline_batch_duration_seconds_count")
    1.0
    """

    def __init__(self, registry: CollectorRegistry, *, worker_id: str = "", version: str = monitor.__version__,
                 cell_locations: Mapping[str, tuple[float, float]] | None = None,
                 process_metrics: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.clock = clock
        self.cell_locations = dict(cell_locations or {})
        self.regions = LabelBudget(MAX_REGIONS)
        self.segments = LabelBudget(MAX_SEGMENTS)
        self.features = LabelBudget(MAX_FEATURES)
        r = registry
        if process_metrics:
            ProcessCollector(registry=r)
            # python_gc_collections_total{generation}: the worker raises the collector's thresholds
            # (monitor.worker.fastpath.GC_THRESHOLDS), so how often each generation is still collected shows
            GCCollector(registry=r)

        # -- worker ------------------------------------------------------------------------------
        self.worker_info = Gauge("satmon_worker_info", "Always 1: this worker's version and id",
                                 ["version", "worker_id"], registry=r)
        self.worker_info.labels(version, worker_id).set(1)
        self.start_time = Gauge("satmon_worker_start_time_seconds", "Unix time the worker started", registry=r)
        self.start_time.set(clock())
        self.partitions_assigned = Gauge("satmon_worker_partitions_assigned",
                                         "Input partitions assigned to this worker (active, not standby)", registry=r)
        self.broker_restarts = Counter("satmon_broker_restarts_detected_total",
                                       "Broker restarts detected (offsets went backwards, topics vanished)",
                                       registry=r)

        # -- ingest ------------------------------------------------------------------------------
        self.consumed = Counter("satmon_ingest_records_consumed_total",
                                "Input records handed to ingest (decoded + dead-lettered)", ["stream"], registry=r)
        self.decoded = Counter("satmon_ingest_events_decoded_total", "Input events decoded and valid",
                               ["stream"], registry=r)
        self.dead_letters = Counter("satmon_ingest_records_dead_lettered_total",
                                    "Input records rejected and sent to satmon-dead-letter, by reason class",
                                    ["stream", "reason"], registry=r)
        # Cached children: the stream x reason space is small and known, and a series that exists
        # at 0 lets rate() and the alert rules see the first failure (no "absent until it breaks").
        self._consumed = {s: self.consumed.labels(s) for s in STREAMS}
        self._decoded = {s: self.decoded.labels(s) for s in STREAMS}
        self._dead = {(s, k): self.dead_letters.labels(s, k) for s in STREAMS for k in REASONS}
        self._ingest_seen: dict[Any, int] = {}

        # -- pipeline ----------------------------------------------------------------------------
        self.duplicates = Counter("satmon_pipeline_duplicates_dropped_total",
                                  "Events dropped as duplicates (same event_id seen) by the risk core", registry=r)
        self.batch_duration = Histogram("satmon_pipeline_batch_duration_seconds",
                                        "Wall time to process one consumer batch of input records",
                                        buckets=BATCH_DURATION_BUCKETS, registry=r)
        self.event_duration = Histogram("satmon_pipeline_event_duration_seconds",
                                        "Mean processing time per record within a batch (one observation per batch)",
                                        buckets=EVENT_DURATION_BUCKETS, registry=r)
        self.e2e_latency = Histogram("satmon_pipeline_end_to_end_latency_seconds",
                                     "Event time of the scored event to the score being emitted",
                                     buckets=END_TO_END_LATENCY_BUCKETS, registry=r)
        self.tp_processed = Counter("satmon_pipeline_records_processed_total",
                                    "Valid input records handed to the risk core, per topic-partition",
                                    ["topic", "partition"], registry=r)
        self.tp_dead = Counter("satmon_pipeline_records_dead_lettered_total",
                               "Input records dead-lettered, per topic-partition", ["topic", "partition"], registry=r)
        self.tp_skipped = Counter("satmon_pipeline_records_skipped_total",
                                  "Re-delivered input records skipped below the resume floor, per topic-partition",
                                  ["topic", "partition"], registry=r)
        self._tp_children: dict[tuple[str, int], tuple[Any, Any, Any]] = {}

        # -- risk --------------------------------------------------------------------------------
        self.scores_emitted = Counter("satmon_risk_scores_emitted_total",
                                      "risk_score.v1 records emitted (material changes only)", registry=r)
        self.score = Histogram("satmon_risk_score_ratio", "Distribution of emitted risk scores",
                               buckets=RISK_SCORE_BUCKETS, registry=r)
        self.at_risk = Gauge("satmon_risk_at_risk_subscribers",
                             "Subscribers currently at risk, by region and segment (complete view: aggregate with max)",
                             ["region", "segment"], registry=r)
        self._at_risk_keys: set[tuple[str, str]] = set()
        self.risk_band = Gauge("satmon_risk_band_subscribers",
                               "Subscribers per risk band of the headline score (probability that a complaint, "
                               "detractor answer or churn follows), by region (complete view: aggregate with max)",
                               ["region", "band"], registry=r)
        self._band_keys: set[tuple[str, str]] = set()

        # -- hot spots ---------------------------------------------------------------------------
        self.hotspot_active = Gauge("satmon_hotspot_active", "1 per active cell hot spot (series removed on resolve)",
                                    ["cell_id", "region", "severity"], registry=r)
        self.cell_info = Gauge("satmon_hotspot_cell_info",
                               "1 per active hot spot whose cell location is known (for the geo map)",
                               ["cell_id", "region", "latitude", "longitude"], registry=r)
        self.region_degraded = Gauge("satmon_hotspot_region_degraded",
                                     "1 per degraded region (series removed on resolve)", ["region", "severity"],
                                     registry=r)
        self._hotspot_keys: set[tuple[str, str, str]] = set()
        self._cell_info_keys: set[tuple[str, str, str, str]] = set()
        self._region_keys: set[tuple[str, str]] = set()

        # -- alerting and drift ------------------------------------------------------------------
        self.alerts_emitted = Counter("satmon_alerting_alerts_emitted_total",
                                      "alert.v1 state changes emitted by the detectors", ["alertname", "status"],
                                      registry=r)
        self._alerts = {(a, s): self.alerts_emitted.labels(a, s) for a in ALERT_NAMES for s in ALERT_STATUSES}
        self.drift_detections = Counter("satmon_drift_detections_total",
                                        "Drift detections (a new drift alert), by kind, feature and region",
                                        ["kind", "feature", "region"], registry=r)
        self.data_drift_active = Gauge("satmon_drift_data_active", "1 per active data-drift alert",
                                       ["region", "feature", "severity"], registry=r)
        self.model_drift_active = Gauge("satmon_drift_model_active", "1 per active concept-drift alert",
                                        ["partition", "severity"], registry=r)
        self._data_drift_keys: set[tuple[str, str, str]] = set()
        self._model_drift_keys: set[tuple[str, str]] = set()
        self._active_alerts: dict[str, Any] = {}
        self._alertmanager = _AlertmanagerCollector()
        r.register(self._alertmanager)

        # -- model quality and checkpoints, per input partition ----------------------------------
        self.log_loss = Gauge("satmon_model_log_loss_nats", "Running log-loss of the risk model on late labels",
                              ["partition"], registry=r)
        self.roc_auc = Gauge("satmon_model_roc_auc_ratio", "Running ROC-AUC of the risk model on late labels",
                             ["partition"], registry=r)
        self.calibration = Gauge("satmon_model_calibration_error_ratio",
                                 "Expected calibration error of the risk model on late labels", ["partition"], registry=r)
        self.labels_received = Counter("satmon_model_labels_received_total",
                                       "Late labels joined to a feature snapshot, by kind", ["partition", "kind"],
                                       registry=r)
        self.checkpoint_ts = Gauge("satmon_checkpoint_last_success_timestamp_seconds",
                                   "Unix time of the last model checkpoint handed to the producer", ["partition"],
                                   registry=r)
        self.checkpoint_size = Gauge("satmon_checkpoint_size_bytes", "Size of the last model checkpoint",
                                     ["partition"], registry=r)
        self._partition_gauges = (self.log_loss, self.roc_auc, self.calibration, self.checkpoint_ts,
                                  self.checkpoint_size)
        self._partitions: set[int] = set()

    # -- ingest and pipeline, once per batch ------------------------------------------------------

    def sync_ingest(self, ingest: Any) -> None:
        """Bring the ingest counters up to ``ingest.decoded`` / ``ingest.dead_lettered`` (plain ints
        that :class:`monitor.records.ingest.Ingest` keeps at no per-event cost): adds only the increase since
        the last call, so call it once per batch, or at any time."""
        seen = self._ingest_seen
        for stream, n in ingest.decoded.items():
            delta = n - seen.get(stream, 0)
            if delta > 0:
                seen[stream] = n
                self.events_decoded(stream, delta)
        for key, n in ingest.dead_lettered.items():
            delta = n - seen.get(key, 0)
            if delta > 0:
                seen[key] = n
                self.dead_lettered(key[0], key[1], delta)

    def events_decoded(self, stream: str, n: int = 1) -> None:
        """``n`` valid events of ``stream`` (also counts them as consumed)."""
        child = self._decoded.get(stream)
        if child is None:  # not an input stream: impossible from ingest; never a new label value
            return
        child.inc(n)
        self._consumed[stream].inc(n)

    def dead_lettered(self, stream: str, reason: str, n: int = 1) -> None:
        """``n`` records of ``stream`` rejected for ``reason`` (a reason class; unknown -> ``other``)."""
        if reason not in REASONS:
            reason = "other"
        child = self._dead.get((stream, reason))
        if child is None:
            stream = UNKNOWN_STREAM if stream not in STREAMS else stream
            child = self._dead[(stream, reason)] = self.dead_letters.labels(stream, reason)
        child.inc(n)
        consumed = self._consumed.get(stream)
        if consumed is None:
            consumed = self._consumed[stream] = self.consumed.labels(stream)
        consumed.inc(n)

    def _tp(self, topic: str, partition: int) -> tuple[Any, Any, Any]:
        key = (topic, partition)
        children = self._tp_children.get(key)
        if children is None:
            p = str(partition)
            children = self._tp_children[key] = (self.tp_processed.labels(topic, p), self.tp_dead.labels(topic, p),
                                                  self.tp_skipped.labels(topic, p))
        return children

    def observe_batch(self, partition: int, events: Sequence[Any], scores: Sequence[Any],
                      dead_letters: Sequence[Any], *, now_ms: float | None = None) -> None:
        """Account one partition's part of a batch: records per topic-partition (from the events'
        stream and the dead letters' ``source_topic``), emitted scores (distribution, end-to-end
        latency from the event's ``ts_ms`` to ``now_ms``, default the score's ``scored_at_ms``).

        The signature matches :class:`monitor.pipeline.BatchObserver` minus ``out``; see
        :class:`MetricsObserver`."""
        if events:
            counts: dict[str, int] = {}
            for event in events:
                s = event.stream
                counts[s] = counts.get(s, 0) + 1
            for stream, n in counts.items():
                topic = STREAM_TOPIC.get(stream)
                if topic is not None:
                    self._tp(topic, partition)[0].inc(n)
        if dead_letters:
            counts = {}
            for letter in dead_letters:
                counts[letter.source_topic] = counts.get(letter.source_topic, 0) + 1
            for topic, n in counts.items():
                if topic in TOPIC_STREAM:  # a foreign topic would be an unbounded label value
                    self._tp(topic, partition)[1].inc(n)
        if scores:
            self.observe_scores(scores, now_ms=now_ms)

    def records_skipped(self, topic: str, partition: int, n: int) -> None:
        """``n`` re-delivered records below the resume floor were skipped (not re-processed)."""
        if topic in TOPIC_STREAM and n > 0:
            self._tp(topic, partition)[2].inc(n)

    def observe_scores(self, scores: Sequence[Any], *, now_ms: float | None = None) -> None:
        """Emitted ``risk_score.v1`` records: count, score distribution, end-to-end latency.
        ~1.3 µs per score (two histogram observations on cached children)."""
        observe_score = self.score.observe
        observe_latency = self.e2e_latency.observe
        for s in scores:
            observe_score(s.score)
            done = s.scored_at_ms if now_ms is None else now_ms
            observe_latency(max(0.0, (done - s.ts_ms) / 1000.0))
        self.scores_emitted.inc(len(scores))

    def duplicates_dropped(self, n: int) -> None:
        if n > 0:
            self.duplicates.inc(n)

    def batch_done(self, duration_s: float, records: int) -> None:
        """One consumer batch of ``records`` input records took ``duration_s`` (wall time)."""
        self.batch_duration.observe(duration_s)
        if records > 0:
            self.event_duration.observe(duration_s / records)

    # -- at-risk view -----------------------------------------------------------------------------

    def set_at_risk(self, counts: Mapping[tuple[str | None, str | None], int]) -> None:
        """Replace the at-risk gauges with ``{(region, segment): subscribers at risk}`` from the
        complete at-risk view (every worker has it, so dashboards aggregate with ``max``). Pairs that
        disappeared are removed; over-budget regions/segments are summed into ``other``."""
        merged: dict[tuple[str, str], int] = {}
        for (region, segment), n in counts.items():
            key = (self.regions(region), self.segments(segment))
            merged[key] = merged.get(key, 0) + n
        for key in self._at_risk_keys - merged.keys():
            self.at_risk.remove(*key)
        for key, n in merged.items():
            self.at_risk.labels(*key).set(n)
        self._at_risk_keys = set(merged)

    def set_risk_bands(self, counts: Mapping[tuple[str | None, str], int]) -> None:
        """Replace the band gauges with ``{(region, band): subscribers}`` (``RiskView.risk_bands``);
        bands are the fixed :data:`monitor.scoring.risk.RISK_BANDS`, regions bounded as for the at-risk gauges."""
        merged: dict[tuple[str, str], int] = {}
        for (region, band), n in counts.items():
            key = (self.regions(region), band)
            merged[key] = merged.get(key, 0) + n
        for key in self._band_keys - merged.keys():
            self.risk_band.remove(*key)
        for key, n in merged.items():
            self.risk_band.labels(*key).set(n)
        self._band_keys = set(merged)

    # -- alerts -----------------------------------------------------------------------------------

    def on_alert(self, alert: Any) -> None:
        """An ``alert.v1`` state change (fire, update, resolve): count it, count new drift
        detections, and keep the active-alert gauges in step. Fits ``AlertLifecycle.on_change``."""
        name, status = alert.alertname, alert.status
        child = self._alerts.get((name, status))
        if child is not None:
            child.inc()
        if status == "firing" and alert.sequence == 0:
            labels = alert.labels
            if name == "SatmonDataDrift":
                self.drift_detections.labels("data", self.features(labels.get("feature")),
                                             self.regions(labels.get("region"))).inc()
            elif name == "SatmonModelDrift":
                self.drift_detections.labels("concept", "log_loss", "all").inc()
        if status == "firing":
            self._active_alerts[alert.alert_id] = alert
        else:
            self._active_alerts.pop(alert.alert_id, None)
        self._sync_alert_gauges(self._active_alerts.values())

    def set_active_alerts(self, alerts: Iterable[Any]) -> None:
        """Replace the set of active alerts (e.g. ``lifecycle.active()`` after a rebalance)."""
        self._active_alerts = {a.alert_id: a for a in alerts if a.status == "firing"}
        self._sync_alert_gauges(self._active_alerts.values())

    def _sync_alert_gauges(self, alerts: Iterable[Any]) -> None:
        hotspots, regions, data, model = [], set(), set(), set()
        for a in alerts:
            lab = a.labels
            if a.alertname == "SatmonHotSpotActive":
                hotspots.append((lab.get("cell_id", ""), lab.get("region", ""), a.severity))
            elif a.alertname == "SatmonRegionDegraded":
                regions.add((self.regions(lab.get("region")), a.severity))
            elif a.alertname == "SatmonDataDrift":
                data.add((self.regions(lab.get("region")), self.features(lab.get("feature")), a.severity))
            elif a.alertname == "SatmonModelDrift":
                model.add((str(lab.get("partition", "")), a.severity))
        self.set_active_hotspots(hotspots)
        self._region_keys = _sync(self.region_degraded, self._region_keys, regions)
        self._data_drift_keys = _sync(self.data_drift_active, self._data_drift_keys, data)
        self._model_drift_keys = _sync(self.model_drift_active, self._model_drift_keys, model)

    def set_active_hotspots(self, hotspots: Iterable[Any]) -> None:
        """Make ``satmon_hotspot_active`` (and ``satmon_hotspot_cell_info``) show exactly these hot
        spots: ``(cell_id, region[, severity])`` tuples or ``alert.v1`` records. New ones get a
        series at 1, resolved ones' series are removed (not left at 0: a cell that was hot once
        must not stay a series forever). At most :data:`MAX_ACTIVE_HOTSPOTS`, worst first."""
        wanted: dict[tuple[str, str], str] = {}
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        for h in hotspots:
            if hasattr(h, "labels") and hasattr(h, "severity"):
                cell, region, sev = h.labels.get("cell_id", ""), h.labels.get("region", ""), h.severity
            else:
                cell, region, sev = (tuple(h) + ("warning",))[:3]
            key = (str(cell), str(region))
            if key not in wanted or rank.get(sev, 0) > rank.get(wanted[key], 0):
                wanted[key] = sev
        chosen = sorted(wanted.items(), key=lambda kv: (-rank.get(kv[1], 0), kv[0]))[:MAX_ACTIVE_HOTSPOTS]
        keys = {(cell, self.regions(region), sev) for (cell, region), sev in chosen}
        self._hotspot_keys = _sync(self.hotspot_active, self._hotspot_keys, keys)
        info = set()
        for cell, region, _sev in keys:
            loc = self.cell_locations.get(cell)
            if loc is not None:
                info.add((cell, region, f"{loc[0]:.5f}", f"{loc[1]:.5f}"))
        self._cell_info_keys = _sync(self.cell_info, self._cell_info_keys, info)

    def track_alertmanager(self, client: Any) -> None:
        """Export ``client``'s delivery counters (``monitor.observability.alertmanager.AlertmanagerClient``)."""
        self._alertmanager.client = client

    # -- model quality, checkpoints, partitions ----------------------------------------------------

    def set_model_quality(self, partition: int, *, log_loss: float | None = None, roc_auc: float | None = None,
                          calibration_error: float | None = None) -> None:
        """Current quality of ``partition``'s model; ``None`` (or NaN) leaves a value unset."""
        p = str(partition)
        self._partitions.add(partition)
        for gauge, value in ((self.log_loss, log_loss), (self.roc_auc, roc_auc),
                             (self.calibration, calibration_error)):
            if value is not None and not math.isnan(value):
                gauge.labels(p).set(value)

    def label_received(self, partition: int, kind: str, n: int = 1) -> None:
        """``n`` late labels of ``kind`` (one of :data:`LABEL_KINDS`) reached ``partition``'s model."""
        if kind not in LABEL_KINDS:
            raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {kind!r}")
        self.labels_received.labels(str(partition), kind).inc(n)

    def checkpoint_written(self, partition: int, size_bytes: int, *, ts: float | None = None) -> None:
        """``partition``'s model checkpoint of ``size_bytes`` was handed to the producer."""
        self._partitions.add(partition)
        p = str(partition)
        self.checkpoint_ts.labels(p).set(self.clock() if ts is None else ts)
        self.checkpoint_size.labels(p).set(size_bytes)

    def set_partitions(self, partitions: Iterable[int]) -> None:
        """The input partitions this worker owns now; per-partition series of others are removed
        (their new owner exports them, and an old timestamp here would page as a stale checkpoint)."""
        now = set(partitions)
        self.partitions_assigned.set(len(now))
        for p in self._partitions - now:
            self.remove_partition(p)

    def remove_partition(self, partition: int) -> None:
        p = str(partition)
        for gauge in self._partition_gauges:
            try:
                gauge.remove(p)
            except KeyError:
                pass
        self._partitions.discard(partition)

    def broker_restart_detected(self) -> None:
        self.broker_restarts.inc()


# -- collectors read at scrape time --------------------------------------------------------------

# (kind, help, label names) of every family a scrape-time collector below exports
_SCRAPED: dict[str, tuple[type, str, tuple[str, ...]]] = {
    "satmon_worker_batches": (CounterMetricFamily, "Input batches processed", ()),
    "satmon_worker_skipped_below_floor": (
        CounterMetricFamily, "Re-delivered records skipped: a previous owner's effects were acknowledged", ()),
    "satmon_worker_window_batches": (CounterMetricFamily, "Cell-window batches merged by this owner", ()),
    "satmon_worker_alerts": (CounterMetricFamily, "alert.v1 records emitted by the hot-spot engine", ()),
    "satmon_worker_hotspot_baselines": (
        GaugeMetricFamily, "Hot-spot baseline accumulators held (per cell and region: one per metric and one "
        "24-hour array per metric; at most keys x metrics x 2)", ()),
    "satmon_worker_window_late_partials": (
        CounterMetricFamily, "Cell-window partials that arrived after their window was merged (left out)", ()),
    "satmon_worker_window_late_events": (
        CounterMetricFamily, "Events older than their cell's closed window: counted, left out of hot-spot windows",
        ("stream",)),
    "satmon_worker_window_cells_open": (
        GaugeMetricFamily, "(cell, window) accumulators open: per input partition before closing (aggregator), "
        "closed and held for the worker's other partitions (combiner), per region owner before all sources "
        "closed (merger)", ("side",)),
    "satmon_worker_window_hold_capped_batches": (
        CounterMetricFamily, "Batches whose window hold was cut at max_hold_ms behind the newest event "
        "(a stream further behind turns late)", ()),
    "satmon_worker_window_held_batches": (
        CounterMetricFamily, "Batches whose window closing waited for a stream with a backlog in Kafka", ()),
    "satmon_worker_store_memory_bytes": (
        GaugeMetricFamily, "RocksDB memory of the worker's table stores (all its partitions), by table and kind",
        ("table", "kind")),
    "satmon_worker_python_blocks": (
        GaugeMetricFamily, "Memory blocks Python's allocator has handed out and not freed (sys.getallocatedblocks): "
        "flat while resident memory grows means fragmentation, not live objects", ()),
    "satmon_worker_malloc_bytes": (
        GaugeMetricFamily, "The C heap (glibc mallinfo2): in_use, free (held, not returned) and mmapped", ("kind",)),
    "satmon_worker_commits_not_done": (
        CounterMetricFamily, "Offset commits that did not happen (a rebalance, a failed send); retried", ()),
    "satmon_worker_records_rewound": (
        CounterMetricFamily, "Input records fetched, dropped while flow was stopped (rebalance, recovery) "
        "and rewound to be fetched again", ()),
    "satmon_worker_floors_committed": (
        CounterMetricFamily, "Input topic-partitions taken over whose commit was advanced to the previous owner's "
        "acknowledged offsets", ()),
    "satmon_worker_cores": (GaugeMetricFamily, "Input partitions with a live risk core in memory", ()),
    "satmon_worker_stage_seconds": (
        CounterMetricFamily, "Seconds the worker's event-loop thread spent per stage of the job (decode, core, cell "
        "windows, hot spots and drift, view, metrics, producer, state and checkpoints, ...; gc also falls inside "
        "them): synchronous work, its CPU time unless the thread was preempted",
        ("stage",)),
    "satmon_worker_checkpoints_refused": (
        CounterMetricFamily, "Model checkpoints refused at restore (not the data-only format, e.g. an old pickle): "
        "the partition started from a fresh model", ()),
    "satmon_worker_labels_sent": (
        CounterMetricFamily, "Labels this worker's cores matured and sent to satmon-labels (every worker learns them)",
        ()),
    "satmon_worker_labels_learned": (
        CounterMetricFamily, "Labels read from satmon-labels and taught to this worker's risk model", ()),
    "satmon_worker_labels_lag": (
        GaugeMetricFamily, "Labels on satmon-labels this worker's model has not learned yet", ()),
    "satmon_worker_labels_lost": (
        CounterMetricFamily, "Labels gone from satmon-labels (retention) before this worker's model learned them", ()),
    "satmon_worker_labels_rejected": (
        CounterMetricFamily, "Records on satmon-labels that were no label: sent to satmon-dead-letter", ()),
    "satmon_outreach_records_trimmed": (
        CounterMetricFamily, "Outreach contacts and outcomes dropped as older than the newest kept per "
        "subscriber (bounded memory)", ()),
    "satmon_view_subscribers": (GaugeMetricFamily, "Subscribers in this worker's outreach view", ()),
    "satmon_view_history_versions": (GaugeMetricFamily, "Score versions held in the view's history rings", ()),
    "satmon_view_change_log_entries": (
        GaugeMetricFamily, "Entries in the view's change log (page walks replay it; bounded per partition)", ()),
    "satmon_view_records_applied": (CounterMetricFamily, "risk_score.v1 records applied to the view", ()),
}


def _family(name: str, value: float | None = None, samples: Iterable[tuple[Sequence[str], float]] = ()) -> Any:
    """The family ``name`` of :data:`_SCRAPED`, with one unlabelled ``value`` or labelled ``samples``."""
    kind, doc, labels = _SCRAPED[name]
    if not labels:
        return kind(name, doc, value=value)
    fam = kind(name, doc, labels=labels)
    for key, n in samples:
        fam.add_metric(list(key), n)
    return fam


class PipelineCollector:
    """The pipeline's, the cell windows', the hot-spot stage's and the consumer's own counters, read
    at scrape time: they are plain ints those objects keep, so the batch path makes no metric call.

    ``worker`` is the worker shell (:class:`monitor.worker.app.Worker`): its ``pipeline``, ``hotspots``,
    ``cell_windows`` and ``app`` are read duck-typed.

    >>> from types import SimpleNamespace as NS
    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> table = NS(memory=lambda: {"mem": 10})
    >>> pipe = NS(batches=3, skipped_below_floor=0, state_table=table, model_table=table, cores={})
    >>> reg.register(PipelineCollector(NS(pipeline=pipe, hotspots=None, cell_windows=None, app=None)))
    >>> reg.get_sample_value("satmon_worker_batches_total")
    3
    """

    NAMES = tuple(n for n in _SCRAPED if n.startswith("satmon_worker_"))

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def describe(self) -> Iterable[Any]:
        return [_SCRAPED[name][0](name, _SCRAPED[name][1]) for name in self.NAMES]

    def collect(self) -> Iterable[Any]:
        w = self.worker
        p = w.pipeline
        yield _family("satmon_worker_batches", p.batches)
        yield _family("satmon_worker_skipped_below_floor", p.skipped_below_floor)
        h = w.hotspots
        if h is not None:
            yield _family("satmon_worker_window_batches", h.windows_in)
            yield _family("satmon_worker_alerts", h.alerts_out)
            yield _family("satmon_worker_hotspot_baselines", sum(e.baselines for _m, e in list(h.stages.values())))
            yield _family("satmon_worker_window_late_partials", h.late_partials())
        cw = w.cell_windows
        if cw is not None:
            yield _family("satmon_worker_window_late_events",
                          samples=(((s,), n) for s, n in sorted(cw.late_events().items())))
            sides = [(("aggregator",), sum(a.open_windows for a in list(cw.aggregators.values()))),
                     (("combiner",), cw.combiner.open_windows)]
            if h is not None:
                sides.append((("merger",), sum(m.open_windows for m, _e in list(h.stages.values()))))
            yield _family("satmon_worker_window_cells_open", samples=sides)
            yield _family("satmon_worker_window_hold_capped_batches", cw.hold_capped)
            yield _family("satmon_worker_window_held_batches", cw.holds)
        yield _family("satmon_worker_store_memory_bytes",
                      samples=(((table, kind), n) for table, ts in (("state", p.state_table), ("model", p.model_table))
                               for kind, n in ts.memory().items()))
        yield _family("satmon_worker_python_blocks", sys.getallocatedblocks())
        yield _family("satmon_worker_malloc_bytes", samples=(((k,), n) for k, n in malloc_stats().items()))
        consumer = getattr(w.app, "_consumer", None)
        yield _family("satmon_worker_commits_not_done", getattr(consumer, "commits_not_done", 0))
        yield _family("satmon_worker_records_rewound", getattr(consumer, "records_rewound", 0))
        yield _family("satmon_worker_floors_committed", getattr(consumer, "floors_committed", 0))
        yield _family("satmon_worker_cores", len(p.cores))
        clock = getattr(p, "stage_clock", None)
        if clock is not None:
            yield _family("satmon_worker_stage_seconds",
                          samples=(((stage,), s) for stage, s in sorted(clock.seconds.items())))
        yield _family("satmon_worker_checkpoints_refused",
                      sum(getattr(c, "checkpoints_refused", 0) for c in list(p.cores.values())))
        yield _family("satmon_worker_labels_sent", getattr(p, "labels_sent", 0))
        feed = getattr(w, "label_feed", None)
        if feed is not None:
            yield _family("satmon_worker_labels_learned", feed.learned)
            yield _family("satmon_worker_labels_lag", feed.lag)   # no sample before the feed's first fetch
            yield _family("satmon_worker_labels_lost", feed.lost)
            yield _family("satmon_worker_labels_rejected", feed.rejected)


class ViewCollector:
    """The outreach view's size at scrape time: what it holds grows until every subscriber's
    history ring and every partition's change log is full, then stays (docs/WORKER.md, memory).
    ``store`` (the outreach store, optional) adds its trimmed-records counter."""

    NAMES = tuple(n for n in _SCRAPED if n.startswith(("satmon_view_", "satmon_outreach_")))

    def __init__(self, view: Any, store: Any = None) -> None:
        self.view = view
        self.store = store

    def describe(self) -> Iterable[Any]:
        return [_SCRAPED[name][0](name, _SCRAPED[name][1]) for name in self.NAMES
                if self.store is not None or name != "satmon_outreach_records_trimmed"]

    def collect(self) -> Iterable[Any]:
        if self.store is not None:
            yield _family("satmon_outreach_records_trimmed", self.store.trimmed)
        v = self.view
        yield _family("satmon_view_subscribers", len(v))
        yield _family("satmon_view_history_versions", v.versions)
        yield _family("satmon_view_change_log_entries", v.change_log_entries())
        yield _family("satmon_view_records_applied", v.records_applied)


# Request latency buckets: an at-risk page is ~1 ms; an fsync'd audit write 1-20 ms on disk.
API_LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ApiMetrics:
    """The API's Prometheus metrics (labels: route *pattern* and status code -- never a path,
    which may hold a subscriber id).

    >>> reg = CollectorRegistry()
    >>> ApiMetrics(reg).requests.labels("/api/v1/at-risk", "200").inc()
    >>> reg.get_sample_value("satmon_api_requests_total", {"route": "/api/v1/at-risk", "code": "200"})
    1.0
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("satmon_api_requests_total", "API requests by route and status code",
                                ["route", "code"], registry=registry)
        self.latency = Histogram("satmon_api_request_duration_seconds", "API request latency by route",
                                 ["route"], buckets=API_LATENCY_BUCKETS_SECONDS, registry=registry)
        self.rate_limited = Counter("satmon_api_rate_limited_total", "API requests refused with 429",
                                    registry=registry)


def _sync(gauge: Gauge, old: set, new: set) -> set:
    """Set ``gauge`` to 1 for every label tuple in ``new``; remove the series of ``old - new``."""
    for key in old - new:
        try:
            gauge.remove(*key)
        except KeyError:
            pass
    for key in new - old:
        gauge.labels(*key).set(1)
    return set(new)


class MetricsObserver:
    """A :class:`monitor.pipeline.BatchObserver` that keeps :class:`Metrics` current from every
    processed batch: ingest counters (from the pipeline's :class:`~monitor.records.ingest.Ingest`),
    per-topic-partition accounting, scores, and the cores' duplicate counts.

    ``ingest`` is the pipeline's ``Ingest`` (``pipeline.ingest``); ``cores`` a mapping
    ``partition -> core`` with a ``duplicates`` counter (``pipeline.cores``). Batch wall time is
    not visible to an observer: the pipeline reports it to :meth:`Metrics.batch_done` (``on_batch_done``).
    """

    stage = "metrics"   # its monitor.pipeline.StageClock row

    def __init__(self, metrics: Metrics, *, ingest: Any = None, cores: Mapping[int, Any] | None = None) -> None:
        self.metrics = metrics
        self.ingest = ingest
        self.cores = cores
        self._dups: dict[int, int] = {}

    def on_batch(self, partition: int, events: Sequence[Any], scores: Sequence[Any],
                 dead_letters: Sequence[Any], out: Any = None) -> None:
        m = self.metrics
        if self.ingest is not None:
            m.sync_ingest(self.ingest)
        m.observe_batch(partition, events, scores, dead_letters)
        if self.cores is not None:
            core = self.cores.get(partition)
            if core is not None:
                n = getattr(core, "duplicates", 0)
                m.duplicates_dropped(n - self._dups.get(partition, 0))
                self._dups[partition] = n

    def on_revoked(self, partition: int, out: Any = None) -> None:
        self._dups.pop(partition, None)
        self.metrics.remove_partition(partition)


class RollingQuality:
    """Quality of probabilistic predictions over the last ``window`` labels: log-loss, ROC-AUC and
    expected calibration error (``bins`` equal-width bins). Pure; feed it ``(p, y)`` as labels
    arrive and export :meth:`snapshot` with :meth:`Metrics.set_model_quality`.

    >>> q = RollingQuality(window=4)
    >>> for p, y in [(0.9, True), (0.8, True), (0.3, False), (0.1, False)]:
    ...     q.update(p, y)
    >>> ll, auc, ece = q.snapshot()
    >>> round(ll, 3), auc, round(ece, 3)
    (0.198, 1.0, 0.175)
    """

    def __init__(self, *, window: int = 2000, bins: int = 10) -> None:
        self.window = window
        self.bins = bins
        self._seen: deque[tuple[float, bool]] = deque(maxlen=window)

    def update(self, p: float, y: bool) -> None:
        self._seen.append((min(max(float(p), 1e-7), 1 - 1e-7), bool(y)))

    def __len__(self) -> int:
        return len(self._seen)

    def snapshot(self) -> tuple[float, float, float]:
        """``(log_loss, roc_auc, calibration_error)``; NaN where undefined (no labels, one class)."""
        seen = list(self._seen)
        n = len(seen)
        if not n:
            return math.nan, math.nan, math.nan
        ll = -sum(math.log(p) if y else math.log(1 - p) for p, y in seen) / n
        pos = sum(1 for _p, y in seen if y)
        neg = n - pos
        auc = math.nan
        if pos and neg:
            # Mann-Whitney U with average ranks for ties
            ranked = sorted(seen, key=lambda t: t[0])
            rank_sum, i = 0.0, 0
            while i < n:
                j = i
                while j + 1 < n and ranked[j + 1][0] == ranked[i][0]:
                    j += 1
                avg = (i + j) / 2 + 1
                rank_sum += avg * sum(1 for k in range(i, j + 1) if ranked[k][1])
                i = j + 1
            auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
        sums = [[0.0, 0.0, 0] for _ in range(self.bins)]
        for p, y in seen:
            b = sums[min(int(p * self.bins), self.bins - 1)]
            b[0] += p
            b[1] += y
            b[2] += 1
        ece = sum(abs(sp - sy) for sp, sy, c in sums if c) / n
        return ll, auc, ece


def watch_pipeline(metrics: Metrics, pipeline: Any) -> None:
    """Keep ``metrics`` current from ``pipeline`` (a :class:`monitor.pipeline.RiskPipeline`): its
    :class:`MetricsObserver`, model checkpoints and batch durations -- the worker's wiring, and the
    tests' that feed metrics the way the worker does."""
    pipeline.observers.append(MetricsObserver(metrics, ingest=pipeline.ingest, cores=pipeline.cores))
    pipeline.on_checkpoint = metrics.checkpoint_written
    pipeline.on_batch_done = metrics.batch_done
