"""The Faust app of a satmon worker: settings that work on Kafka and Tansu, topics, tables, web views.

:func:`build_worker` returns a :class:`Worker` holding the app (whose consumer is
:class:`monitor.worker.fastpath.FastConsumer`), the :class:`monitor.pipeline.RiskPipeline` it hands the
input topics to, and a fresh Prometheus registry served on ``/metrics``.

Tables (both changelogged, partitioned like the inputs, bytes in and out):

* ``subscriber-state`` -- key: subscriber id; value: the core's serialized per-subscriber state;
* ``risk-model`` -- key: the partition number; value: that partition's model checkpoint.

Broker settings follow ``docs/WORKER.md`` (and the workspace's BROKER.md): a 6 s session with a
1 s heartbeat so groups form in seconds on Tansu, at-least-once processing (Tansu has no idempotent
producer), changelog high-waters checked against a Fetch so recovery is exact on Tansu, and the
recovery consistency check left on (it holds once high-waters are right).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from monitor.config import Settings
from monitor.records.events import INPUT_TOPICS
from monitor.worker.fastpath import FastConsumer, FastTransport
from monitor.pipeline import BatchObserver, CellWindows, HotspotStage, RiskPipeline, default_core_factory
from monitor.worker.tablestore import TableStore
from monitor.records.topics import ALERTS as ALERTS_TOPIC
from monitor.records.topics import CELL_WINDOWS as CELL_WINDOWS_TOPIC
from monitor.records.topics import DEAD_LETTER as DEAD_LETTER_TOPIC
from monitor.records.topics import LABELS as LABELS_TOPIC
from monitor.records.topics import RISK_SCORES as RISK_SCORES_TOPIC
from monitor.records.topics import Partitioner
from monitor.tuning import MMAP_THRESHOLD

log = logging.getLogger(__name__)

APP_ID = "satmon"
#: how often the rolling model-quality gauges are recomputed (seconds)
MODEL_QUALITY_INTERVAL_S = 10.0
STATE_TABLE = "subscriber-state"
MODEL_TABLE = "risk-model"

#: RocksDB options of the worker's table stores (one database per table partition). Faust's
#: defaults are for a single big table: a 2 GiB block cache and three 64 MiB memtables *per
#: database*, so a worker's memory grew with every partition it owned and every state write
#: (measured by ``benchmarks/bench_soak.py``, 10k subscribers, 1.2 M events: 525 MB resident with
#: Faust's defaults, 303 MB with these, still climbing slower). These bound each database to
#: 2 x 8 MiB of memtables and a 32 MiB block cache; the state cache in front of the table
#: (``state_cache_per_partition``) is what makes reads fast, not RocksDB's cache.
ROCKSDB_OPTIONS: dict[str, int] = {
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 32 * 1024 * 1024,
}
#: The model table is written once per checkpoint interval per partition (one model of ~40 KB,
#: always the same key): an 8 MiB memtable took ~100 minutes to fill, keeping every superseded
#: checkpoint in memory until then -- a slow climb the soak saw. 1 MiB memtables flush every few
#: minutes; reads are rare (start-up and takeover).
MODEL_ROCKSDB_OPTIONS: dict[str, int] = {
    "write_buffer_size": 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 4 * 1024 * 1024,
}

#: The producer's record batches stay below malloc's mmap threshold (``monitor.tuning``). aiokafka
#: copies a batch about six times on its way into a ProduceRequest (each ``Bytes``/``Array``/
#: ``Schema`` encode is a concatenation); with 256 KiB batches every copy was a fresh mapping, its
#: pages faulted in and unmapped again. Measured in the benchmark's production worker (200k events,
#: 5 interleaved A/B pairs on a loaded machine): minor page faults 350-388k -> 192-206k, system CPU
#: 0.86 -> 0.59 s (medians). A record larger than this still goes out, alone in its batch.
PRODUCER_BATCH_BYTES = MMAP_THRESHOLD - 32 * 1024

# Consumer/producer settings measured to work on Tansu and valid on Kafka (see docs/WORKER.md).
BROKER_SETTINGS: dict[str, Any] = {
    "broker_session_timeout": 6,       # Kafka's minimum; Tansu holds JoinGroup for session/2
    "broker_heartbeat_interval": 1,
    "broker_rebalance_timeout": 3,
    "processing_guarantee": "at_least_once",  # Tansu fails InitProducerId: no idempotence
    "broker_commit_interval": 1.0,     # bounds the at-least-once replay window
    "producer_max_batch_size": PRODUCER_BATCH_BYTES,
    "producer_linger": 0.0,
    # standbys: the standby_replicas setting (default 0, see docs/WORKER.md for the measured cost);
    # records per getmany (= per fast-path batch): the max_poll_records setting (default 2000)
    "recovery_consistency_check": True,
    "consumer_auto_offset_reset": "earliest",
    "stream_wait_empty": True,
}


#: how long a stopping worker waits for the batch in progress to be handed to the producer before
#: Faust cancels the drain loop (``SatmonApp._stop_fetcher``). Normally milliseconds; only an
#: unresponsive broker makes it long. On time-out the batch's offsets stay uncommitted and its
#: records are processed again, over state that may already hold some of them (at-least-once).
STOP_BATCH_WAIT_S = 30.0


class SatmonApp(faust.App):
    """A Faust app whose consumer batches satmon's input topics (see :mod:`monitor.worker.fastpath`)."""

    #: the :class:`monitor.worker.fastpath.BatchHandler` for the fast topics (set by :func:`build_worker`)
    satmon_batch_handler: Any = None
    #: correct changelog high-waters with a Fetch (needed on Tansu, a no-op on Kafka)
    satmon_fetch_highwaters: bool = True
    #: topic -> ``handler(partition, records, out)``: more topics on the batched path, outside the
    #: pipeline (the hot-spot stage's ``satmon-cell-windows``; see FastConsumer)
    satmon_side_handlers: dict[str, Any] = {}

    def _new_transport(self) -> Any:
        return FastTransport(self.conf.broker_consumer, self)

    async def _stop_fetcher(self) -> None:
        # Faust's stop (App._stop_consumer) stops the flow, then stops the fetcher -- cancelling
        # the consumer's drain loop -- and only then waits for the streams and commits. A fast-path
        # batch cancelled while its records were being handed to the producer lost the rest of
        # them: the cores' dirty states of the partitions not yet handed over (the pipeline had
        # taken them), so the changelog missed them (tests/test_worker.py::
        # test_sigterm_during_a_batch_hand_over_loses_no_state). The flow is stopped, so no batch
        # starts after this one.
        consumer = self._consumer
        if isinstance(consumer, FastConsumer) and consumer.batch_in_progress():
            log.info("stopping: waiting for the batch in progress to reach the producer")
            try:
                await asyncio.wait_for(consumer.wait_batch_done(), STOP_BATCH_WAIT_S)
            except asyncio.TimeoutError:
                log.warning("stopping: the batch in progress did not reach the producer within %.0f s; "
                            "its offsets are not committed and its records will be processed again",
                            STOP_BATCH_WAIT_S)
        await super()._stop_fetcher()

    def _new_web(self) -> Any:
        # None of Faust's built-in pages: /table/<name>/<key> served subscriber state and the
        # pickled model to anyone, /router the partition map (issue 21). The flags below say so
        # too; this class makes it hold whatever a later Faust adds.
        from faust.web.drivers.aiohttp import Web

        class SatmonWeb(Web):
            default_blueprints = production_blueprints = debug_blueprints = optional_blueprints = []

        return SatmonWeb(self)


#: Faust's built-in web pages, all off (see SatmonApp._new_web); tests/test_security.py checks
#: every route the worker serves against monitor.outreach.api.PUBLIC_ROUTES.
FAUST_PAGES_OFF: dict[str, bool] = {"web_tables_enabled": False, "web_router_enabled": False,
                                    "web_graph_enabled": False, "web_stats_enabled": False,
                                    "web_metrics_enabled": False}


class FaustWorker(faust.Worker):
    """Faust's worker process runner without its terminal spinner.

    Faust's start-up spinner, used whenever the log level is WARNING or above, sets the *root
    logger* to DEBUG so that it can spin on every record, and keeps it there: every debug call in
    aiokafka, Faust and mode then builds a ``LogRecord`` (caller lookup included) for the spinner's
    handler. aiokafka logs one for each request it sends and each fetch it plans, ~2-3 % of the
    benchmark worker's CPU (py-spy --gil). Here the root logger keeps the level asked for."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)


@dataclasses.dataclass
class Worker:
    """One worker process's parts."""

    app: SatmonApp
    pipeline: RiskPipeline
    registry: CollectorRegistry
    settings: Settings
    worker_id: str
    hotspots: HotspotStage | None = None
    #: the :class:`monitor.pipeline.CellWindows` observer (None with ``cell_windows=False``)
    cell_windows: CellWindows | None = None
    view: Any = None
    feeder: Any = None
    metrics: Any = None
    #: :class:`monitor.worker.brokerwatch.BrokerWatchTask`: reports a broker that lost data underneath us
    broker_watch: Any = None
    #: :class:`monitor.observability.alertmanager.AlertmanagerClient` when ``alertmanager_url`` is set
    alertmanager: Any = None
    #: :class:`monitor.worker.labelfeed.LabelFeed`: teaches the model every worker's labels (real cores)
    label_feed: Any = None

    def assigned_partitions(self) -> list[int]:
        """Input partitions this worker owns (active, not standby)."""
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # before the first assignment
            return []
        return sorted({tp.partition for tp in actives if tp.topic in INPUT_TOPICS})

    def ready(self) -> tuple[bool, str]:
        """Readiness without I/O: partitions recovered, not rebalancing, no broker data loss seen
        (broker reachability checked by /readyz)."""
        app = self.app
        if self.broker_watch is not None and self.broker_watch.watch.losses:
            # first: after a wipe the worker also rejoins and recovers, which would hide the cause
            return False, "broker lost data: " + "; ".join(self.broker_watch.watch.findings[:3])
        if not app.consumer_generation_id and not app.consumer.assignment():
            return False, "not yet in the consumer group"
        if app.rebalancing:
            return False, "rebalancing"
        recovery = app.tables.recovery
        if not recovery.completed.is_set():
            return False, "recovering table state"
        return True, "ok"


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _backlog_of(app: Any) -> Callable[[str, int], int | None]:
    """``backlog(topic, partition)`` of the app's consumer (None until it is a running FastConsumer)."""

    def backlog(topic: str, partition: int) -> int | None:
        probe = getattr(app._consumer, "backlog", None)   # never create a consumer just to ask
        return probe(topic, partition) if probe is not None else None

    return backlog


def build_worker(settings: Settings, *, app_id: str = APP_ID,
                 make_core: Callable[..., Any] | None = None,
                 observers: Iterable[BatchObserver] = (),
                 registry: CollectorRegistry | None = None,
                 cell_windows: bool = True,
                 api: bool = True,
                 **faust_overrides: Any) -> Worker:
    """Build a worker's Faust app and pipeline from ``settings`` (which must name a broker).

    ``app_id`` is the consumer group and the prefix of the changelog topics; ``faust_overrides``
    replace entries of :data:`BROKER_SETTINGS` (tests use them for short intervals). With
    ``cell_windows`` (default) every batch also feeds :class:`monitor.pipeline.CellWindows`.
    """
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    if settings.broker is None:
        from monitor.records.errors import ConfigError

        raise ConfigError(["the worker needs a broker: set SATMON_BROKER or start the embedded one"])
    worker_id = settings.worker_id or _default_worker_id()
    datadir = Path(settings.data_dir) / "worker" / worker_id
    datadir.mkdir(parents=True, exist_ok=True)
    options = {**BROKER_SETTINGS, "table_standby_replicas": settings.standby_replicas,
               "broker_max_poll_records": settings.max_poll_records, **faust_overrides}
    app = SatmonApp(
        app_id,
        broker=settings.broker,
        store=settings.store,
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        **FAUST_PAGES_OFF,
        **options,
    )
    n = settings.partitions
    # Declared with internal=True so Faust creates them (with our partition counts) if missing.
    input_topics = [app.topic(name, partitions=n, internal=True, value_serializer="raw",
                              key_serializer="raw") for name in INPUT_TOPICS]
    alerts_topic = app.topic(ALERTS_TOPIC, partitions=1, internal=True, key_serializer="raw",
                             value_serializer="raw")
    from monitor.detection.incidents import INCIDENTS_TOPIC, IncidentPager

    pager = IncidentPager(runbook_base=settings.runbook_base)
    incidents_topic = app.topic(INCIDENTS_TOPIC, partitions=1, internal=True, key_serializer="raw",
                                value_serializer="raw")
    outputs = [app.topic(RISK_SCORES_TOPIC, partitions=n, internal=True),
               app.topic(DEAD_LETTER_TOPIC, partitions=1, internal=True), alerts_topic, incidents_topic]
    windows_topic = app.topic(CELL_WINDOWS_TOPIC, partitions=n, internal=True, key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw")
    hotspots = HotspotStage(partitions=n, runbook_base=settings.runbook_base)
    on_alert_metrics: list[Callable[[Any], None]] = []  # filled once the metrics exist

    if cell_windows:
        import msgspec

        from monitor.records.events import encode

        def on_window_batches(partition: int, records: list[Any], out: Any) -> None:
            # Merged windows -> hot-spot alerts and incidents, on the batched path like the inputs
            # (FastConsumer's side topics): acknowledged once the alerts are with the producer.
            # As a Faust agent each record took its per-message path (~200 us, two tasks) and
            # each alert a send coroutine.
            for record in records:
                try:
                    alerts = hotspots.on_window_batch(partition, record.value)
                except msgspec.DecodeError as exc:   # not a window batch this version reads: dead letter
                    log.error("%s[%d]@%d is not a window batch (%s): sent to %s", CELL_WINDOWS_TOPIC, partition,
                              record.offset, exc, DEAD_LETTER_TOPIC)
                    hotspots.reject(partition, record.offset, record.key, record.value, str(exc), out,
                                    worker=worker.worker_id)
                    continue
                for alert in alerts:
                    out.add(ALERTS_TOPIC, 0, alert.alert_id.encode(), encode(alert))
                    for hook in on_alert_metrics:
                        hook(alert)
                for incident in hotspots.pop_incidents():   # monitor.detection.incidents: one page per incident
                    out.add(INCIDENTS_TOPIC, 0, incident.incident_id.encode(), encode(incident))
                    if worker.alertmanager is not None:
                        for page in pager.pages(incident):
                            worker.alertmanager.notify(page)

        app.topics.add(windows_topic)   # subscribed without an agent, like the input topics
        app.satmon_side_handlers = {CELL_WINDOWS_TOPIC: on_window_batches}
    # bytes key/value types make Faust use the "raw" codec: the core owns serialization.
    store_options = dict(ROCKSDB_OPTIONS) if settings.store.startswith("rocksdb") else None
    state_table = app.Table(STATE_TABLE, partitions=n, key_type=bytes, value_type=bytes, options=store_options)
    model_table = app.Table(MODEL_TABLE, partitions=n, key_type=bytes, value_type=bytes,
                            options=dict(MODEL_ROCKSDB_OPTIONS) if store_options else None)
    for topic in input_topics:
        app.topics.add(topic)   # subscribe without a per-message agent: the fast path consumes them

    # Subscriber ids are replaced by keyed pseudonyms at ingest (state, scores and the at-risk
    # list never hold real ids); ConfigError here when it is on without a key.
    from monitor.outreach.privacy import NoPseudonyms, pseudonymiser_for

    pseudonymiser = pseudonymiser_for(settings)
    pseudonymise = None if isinstance(pseudonymiser, NoPseudonyms) else pseudonymiser

    windows_obs = CellWindows(partitions=n, backlog=_backlog_of(app)) if cell_windows else None
    make_core = make_core or default_core_factory(settings)
    # The real cores' one model (CoreFactory.model) learns from satmon-labels, which every worker
    # reads in full: the cores send the labels they mature there instead of learning them.
    model = getattr(make_core, "model", None)
    pipeline = RiskPipeline(
        state_table=TableStore(state_table),
        model_table=TableStore(model_table),
        make_core=make_core,
        checkpoint_interval_s=settings.checkpoint_interval_s,
        labels_topic=model is not None,
        worker_id=worker_id,
        observers=[windows_obs, *observers] if windows_obs is not None else list(observers),
        score_partitioner=Partitioner(n),   # risk-scores is keyed by subscriber id
        pseudonymise=pseudonymise,
    )
    # Ingest with the worker's guards: far-future events dead-lettered (clock_skew), dead letters
    # carrying pseudonyms rather than subscriber ids (monitor/records/ingest.py, issue 21).
    from monitor.records.ingest import Ingest

    pipeline.ingest = Ingest(worker=worker_id, max_clock_skew_ms=int(settings.max_clock_skew_s * 1000),
                             pseudonymise=pseudonymise, keep_original=settings.dead_letter_keep_original)
    app.satmon_batch_handler = pipeline
    hotspots.stage_clock = pipeline.stage_clock
    _time_collections(pipeline.stage_clock)
    pipeline.durable_offsets = lambda: app.consumer.durable_offsets()
    registry = registry if registry is not None else CollectorRegistry()
    worker = Worker(app=app, pipeline=pipeline, registry=registry, settings=settings, worker_id=worker_id,
                    hotspots=hotspots, cell_windows=windows_obs)
    # The documented metric set (monitor/observability/metrics.py, docs/OPERATIONS.md) that the rules and
    # dashboards in deploy/ query: kept current by an observer of every batch, and the pipeline's
    # own counters read at scrape time.
    from monitor.observability.metrics import Metrics, PipelineCollector, load_cell_locations, watch_pipeline

    registry.register(PipelineCollector(worker))

    worker.metrics = Metrics(registry, worker_id=worker_id, cell_locations=load_cell_locations(settings.cell_inventory))
    watch_pipeline(worker.metrics, pipeline)

    @app.on_partitions_assigned.connect
    async def export_assignment(sender: Any, assigned: Any = None, **kwargs: Any) -> None:
        # satmon_worker_partitions_assigned, and the per-partition series of partitions gone elsewhere removed
        worker.metrics.set_partitions(worker.assigned_partitions())
    pipeline.on_skipped = worker.metrics.records_skipped
    on_alert_metrics.append(worker.metrics.on_alert)
    quality = ModelQualityFeed(worker.metrics, on_alert_metrics, runbook_base=settings.runbook_base)
    pipeline.on_label = quality.on_label
    pipeline.observers.append(quality)

    @app.timer(MODEL_QUALITY_INTERVAL_S)
    async def export_model_quality() -> None:
        quality.export()
    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, "satmon_faust"))

    async def declare_outputs() -> None:
        # Before the first batch: a producer writing to a missing topic would let Tansu
        # auto-create it with its default partition count.
        for topic in outputs:
            await topic.maybe_declare()

    pipeline.prepare = declare_outputs
    if model is not None:
        outputs.append(app.topic(LABELS_TOPIC, partitions=1, internal=True, key_serializer="raw",
                                 value_serializer="raw"))
        _add_label_feed(worker, model)

    _add_broker_watch(worker)
    if settings.alertmanager_url:
        _add_alertmanager(worker, settings.alertmanager_url, on_alert_metrics)
    if settings.malloc_trim_s > 0:
        from monitor.tuning import trim_malloc

        @app.timer(settings.malloc_trim_s)
        async def return_freed_memory() -> None:
            # glibc keeps freed heap memory; without this a worker's resident memory ratchets up
            # at every load peak (measured in the soak, benchmarks/bench_soak.py).
            trim_malloc()

    if settings.gc_full_s > 0:
        @app.timer(settings.gc_full_s)
        async def collect_cycles() -> None:
            full_collection()

    _add_web_views(worker)
    if api:
        _add_api(worker)
    from monitor.outreach.api import harden

    harden(app.web.web_app)
    return worker


def _time_collections(clock: Any) -> None:
    """Add the cyclic collector's pauses to ``clock`` as ``gc`` (they also fall inside whatever
    stage was running: the row says how much of the job is the collector's)."""
    import gc

    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = clock.now()
        else:
            clock.add("gc", started[0])

    gc.callbacks.append(on_gc)


def full_collection() -> float:
    """One full cyclic garbage collection; returns its duration, s.

    The worker raises the collector's thresholds (``monitor.tuning.GC_THRESHOLDS``): in steady
    state its net allocations stay near zero, so the oldest generation was in practice never
    collected, and a reference cycle that outlived a young collection (an HTTP connection's
    transport and protocol, seen accumulating in the soak's census) stayed until the process
    ended. Measured here at ~160 ms for 1.3 M tracked objects (start-up objects are frozen and
    skipped)."""
    import gc

    t0 = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - t0
    log.debug("full garbage collection: %.0f ms", took * 1000)
    return took


def _add_api(worker: Worker) -> None:
    """The outreach API and page (``monitor.outreach.api``) on the worker's web server, served from a view
    of the whole ``risk-scores`` / ``alerts`` / ``satmon-outreach`` topics, so any worker answers
    completely (docs/API.md)."""
    from monitor.outreach.api import API_KEY, build_api, mount_api
    from monitor.outreach.store import OUTREACH_TOPIC, OutreachStore, encode_record
    from monitor.outreach.privacy import AuditLog
    from monitor.detection.incidents import INCIDENTS_TOPIC, IncidentBoard
    from monitor.outreach.view import HotspotBoard, RiskView
    from monitor.worker.viewfeed import feeder_for

    app, settings = worker.app, worker.settings
    outreach_topic = app.topic(OUTREACH_TOPIC, partitions=1, internal=True, key_serializer="raw",
                               value_serializer="raw")

    async def publish(record: Any) -> None:
        fut = await outreach_topic.send(key=record.subscriber_id.encode(), value=encode_record(record))
        await fut  # returns once the broker acknowledged it

    view, board, incident_board = RiskView(), HotspotBoard(), IncidentBoard()
    store = OutreachStore(sink=publish)
    worker.pipeline.observers.append(OutcomeObserver())
    feeder = feeder_for(settings.bootstrap_servers, view, board, store, client_id=f"view-{worker.worker_id}",
                        incidents=incident_board)
    api = build_api(settings, view, store, AuditLog(Path(settings.data_dir) / "audit" / "audit.jsonl"),
                    worker.registry, hotspots=board, incidents=incident_board, ready=lambda: feeder.caught_up)
    mount_api(app.web.web_app, api)
    feeder.lock = api[API_KEY].view_lock  # the API reads the views from its threads
    feeder.stage_clock = worker.pipeline.stage_clock
    worker.view, worker.feeder = view, feeder

    @app.task
    async def start_view() -> None:
        # The API answers 503 until the view has caught up
        from monitor.records.topics import ALERTS, RISK_SCORES

        for name in (OUTREACH_TOPIC, ALERTS, INCIDENTS_TOPIC, RISK_SCORES):
            await app.topic(name, internal=True, partitions=1 if name != RISK_SCORES else settings.partitions,
                            key_serializer="raw", value_serializer="raw").maybe_declare()
        await _start_retrying(app, feeder.start, "risk view")

    from monitor.observability.metrics import ViewCollector

    worker.registry.register(ViewCollector(view, store))

    # At-risk gauges from the complete view (every worker has it; dashboards aggregate with max).
    AT_RISK_GAUGE_INTERVAL_S = 15.0

    @app.timer(AT_RISK_GAUGE_INTERVAL_S)
    async def export_at_risk() -> None:
        if worker.metrics is not None and feeder.caught_up:
            worker.metrics.set_at_risk(view.at_risk_by_region_segment())
            worker.metrics.set_risk_bands(view.risk_bands())

    @app.on_before_shutdown.connect
    async def stop_view(_app: Any, **kwargs: Any) -> None:
        await feeder.stop()


#: the outcome head whose rolling quality and concept drift the worker exports (the care list's)
QUALITY_OUTCOME = "complaint"


class ModelQualityFeed:
    """The labels the cores learn, turned into model-quality metrics and concept-drift alerts.

    Per partition: labels received (by outcome head), a :class:`monitor.observability.metrics.RollingQuality` of
    the complaint head's test-then-train predictions (exported by a timer; one head, so the AUC and
    calibration are those of one outcome), and that label's log-loss fed to a
    :class:`monitor.detection.drift.ConceptDriftMonitor`, whose alerts go out with the next batch (the
    ``alerts`` topic, the metrics, Alertmanager) through ``on_alert``."""

    stage = "model quality"   # its monitor.pipeline.StageClock row

    def __init__(self, metrics: Any, on_alert: list[Callable[[Any], None]],
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 runbook_base: str | None = None) -> None:
        from monitor.detection.alerting import AlertLifecycle
        from monitor.detection.drift import ConceptDriftMonitor

        self.metrics = metrics
        self.on_alert = on_alert
        self.clock_ms = clock_ms
        self.concept = ConceptDriftMonitor()
        self.lifecycle = AlertLifecycle(runbook_base=runbook_base) if runbook_base else self.concept.lifecycle
        self.quality: dict[int, Any] = {}
        self._pending: list[Any] = []

    def on_label(self, join: Any) -> None:
        import math

        from monitor.observability.metrics import RollingQuality

        self.metrics.label_received(join.partition, join.kind)
        if join.kind != QUALITY_OUTCOME:
            return
        q = self.quality.get(join.partition)
        if q is None:
            q = self.quality[join.partition] = RollingQuality()
        q.update(join.p, join.y)
        p = min(max(join.p, 1e-7), 1 - 1e-7)
        loss = -math.log(p if join.y else 1 - p)
        self._pending.extend(self.concept.update(str(join.partition), loss, self.clock_ms(), self.lifecycle))

    def on_batch(self, partition: int, events: Any, scores: Any, letters: Any, out: Any) -> None:
        if not self._pending:
            return
        from monitor.records.events import encode

        for alert in self._pending:
            out.add(ALERTS_TOPIC, 0, alert.alert_id.encode(), encode(alert))
            for hook in self.on_alert:
                hook(alert)
        self._pending.clear()

    def export(self) -> None:
        for partition, q in self.quality.items():
            if len(q):
                ll, auc, ece = q.snapshot()
                self.metrics.set_model_quality(partition, log_loss=ll, roc_auc=auc, calibration_error=ece)


class OutcomeObserver:
    """Publishes the outcomes ingest implies (a complaint opened, a detractor answer) to
    ``satmon-outreach``, where every worker's outreach store reads them for
    ``/api/v1/outreach/effect`` (record ids derive from event ids: replays do not double count)."""

    stage = "outcome records"   # its monitor.pipeline.StageClock row

    def on_batch(self, partition: int, events: Any, scores: Any, letters: Any, out: Any) -> None:
        from monitor.outreach.store import OUTREACH_TOPIC, encode_record, outcome_for_event

        for event in events:
            if event.stream != "network":
                record = outcome_for_event(event)
                if record is not None:
                    out.add(OUTREACH_TOPIC, 0, record.subscriber_id.encode(), encode_record(record))


async def _start_retrying(app: Any, start: Callable[[], Any], what: str, retry_s: float = 5.0) -> None:
    """Await ``start()`` until it succeeds or the app stops: a broker hiccup while a reader of whole
    topics starts is logged and retried, never fatal to the stream processing."""
    while not app.should_stop:
        try:
            await start()
            return
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - reported and retried
            log.error("%s could not start (retrying in %.0f s): %r", what, retry_s, err)
            await asyncio.sleep(retry_s)


def _add_label_feed(worker: Worker, model: Any) -> None:
    """Teach ``model`` every label on ``satmon-labels`` (``monitor.worker.labelfeed``), starting
    where the checkpoints of the worker's partitions stand."""
    from monitor.worker.labelfeed import LabelFeed, dead_letter_sender

    app, pipeline = worker.app, worker.pipeline
    dead_letters = app.topic(DEAD_LETTER_TOPIC, partitions=1, internal=True, key_serializer="raw",
                             value_serializer="raw")

    async def send(key: bytes | None, value: bytes) -> None:
        await (await dead_letters.send(key=key, value=value))

    def restore() -> None:
        # the checkpoints of the partitions this worker owns; the furthest along the topic wins
        for partition in worker.assigned_partitions():
            pipeline.core_for(partition)

    feed = worker.label_feed = LabelFeed(
        worker.settings.bootstrap_servers, model, ready=lambda: worker.ready()[0], restore=restore,
        dead_letter=dead_letter_sender(send, worker=worker.worker_id), client_id=f"labels-{worker.worker_id}")
    feed.stage_clock = pipeline.stage_clock

    @app.task
    async def start_label_feed() -> None:
        await app.topic(LABELS_TOPIC, partitions=1, internal=True, key_serializer="raw",
                        value_serializer="raw").maybe_declare()
        await _start_retrying(app, feed.start, "label feed")

    @app.on_before_shutdown.connect
    async def stop_label_feed(_app: Any, **kwargs: Any) -> None:
        await feed.stop()


def _add_alertmanager(worker: Worker, url: str, on_alert: list[Callable[[Any], None]]) -> None:
    """Push every alert the worker's detectors emit to Alertmanager's v2 API
    (``monitor.observability.alertmanager``: queued, coalesced, retried with back-off; never blocks the stream)."""
    from monitor.observability.alertmanager import AlertmanagerClient

    client = worker.alertmanager = AlertmanagerClient(url)
    on_alert.append(client.notify)
    if worker.metrics is not None:
        worker.metrics.track_alertmanager(client)
    app = worker.app

    @app.task
    async def start_alertmanager_client() -> None:
        await client.start()
        log.info("pushing alerts to Alertmanager at %s", url)

    @app.on_before_shutdown.connect
    async def stop_alertmanager_client(_app: Any, **kwargs: Any) -> None:
        await client.stop()


def _add_broker_watch(worker: Worker) -> None:
    """Look at the broker every few seconds for lost data (``monitor.worker.brokerwatch``)."""
    from monitor.worker.brokerwatch import BROKER_WATCH_INTERVAL_S, BrokerWatchTask
    from monitor.records.topics import TOPICS

    app = worker.app

    def topics() -> list[str]:
        changelogs = [t.changelog_topic.get_topic_name() for t in app.tables.values()]
        return [*TOPICS, *changelogs]

    def on_loss(findings: list[str]) -> None:
        if worker.metrics is not None:
            worker.metrics.broker_restart_detected()

    watch = worker.broker_watch = BrokerWatchTask(worker.settings.bootstrap_servers, topics=topics, on_loss=on_loss)

    @app.timer(BROKER_WATCH_INTERVAL_S)
    async def broker_watch_tick() -> None:
        await watch.check()

    @app.on_before_shutdown.connect
    async def stop_broker_watch(_app: Any, **kwargs: Any) -> None:
        await watch.close()


def _add_web_views(worker: Worker) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    app = worker.app

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        from aiohttp.web import Response

        # Built directly: Faust's web.bytes() rejects a content type that carries a charset.
        clock = worker.pipeline.stage_clock
        t = clock.now()
        body = generate_latest(worker.registry)
        clock.add("metrics scrape", t)
        return Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        # 200 while serving; a detected broker data loss is reported here (and fails /readyz).
        body: dict[str, Any] = {"status": "ok", "worker": worker.worker_id}
        if worker.broker_watch is not None:
            body["broker"] = worker.broker_watch.watch.status()
            if body["broker"]["data_loss"]:
                body["status"] = "broker_data_loss"
        return web.json(body)

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ok, why = worker.ready()
        if ok:
            why = await _broker_reachable(app)
            ok = why == "ok"
        body = {"ready": ok, "reason": why, "partitions": worker.assigned_partitions(),
                "worker": worker.worker_id}
        return web.json(body, status=200 if ok else 503)


async def _broker_reachable(app: Any, timeout_s: float = 2.0) -> str:
    """Ask the broker for cluster metadata through the producer's client: a real round trip."""
    try:
        client = app.producer._producer.client
        ok = await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
    except Exception as exc:  # any failure means "not ready", with the reason shown
        return f"broker unreachable: {exc!r}"
    return "ok" if ok is not None else "broker unreachable: no metadata"
