"""Integration tests of ``satmon worker``: a real Tansu broker and real worker processes.

The harness (broker, topics, worker processes, reading topics back) is in ``tests/support/kafka.py``,
the event builders and :class:`~support.records.RecordingCore` in ``tests/support/records.py``.
"""

from __future__ import annotations

import base64
import json
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from support.kafka import PARTITIONS, Broker, produce, read_topic, run
from support.records import app_event, network_event, ticket_event, valid_records

integration = [pytest.mark.integration, pytest.mark.slow]


def real_core_available() -> bool:
    try:
        import monitor.scoring.core  # noqa: F401
    except ImportError:
        return False
    return True



def core_kind() -> str:
    return "real" if real_core_available() else "recording"


# -- tests ----------------------------------------------------------------------------------------

INVALID = [
    ("network-events", b"{not json", "not valid JSON"),
    ("network-events", orjson.dumps({k: v for k, v in network_event(900, "sub-x").items() if k != "cell_id"}),
     "$.cell_id"),
    ("network-events", orjson.dumps(network_event(901, "sub-x", dl_mbps="fast")), "$.dl_mbps"),
    ("network-events", orjson.dumps(network_event(902, "sub-x", rsrp_dbm=-500)), "$.rsrp_dbm"),
    ("network-events", orjson.dumps(network_event(903, "sub-x", radio="6G")), "$.radio"),
    ("care-tickets", b"", "empty"),
    ("app-interactions", orjson.dumps(app_event(904, "sub-x", nps=None)), "nps"),
    ("care-tickets", orjson.dumps(ticket_event(905, "sub-x", channel="pigeon")), "$.channel"),
    ("app-interactions", b"[1, 2, 3]", "$"),
]


@pytest.mark.integration
@pytest.mark.slow
def test_invalid_events_are_dead_lettered_and_valid_ones_processed(broker: Broker, workers: Any,
                                                                   tmp_path: Path) -> None:
    """Issue 2 acceptance: every invalid record lands on satmon-dead-letter with reason, origin and
    original bytes; every valid one is decoded and processed (processed count == valid count)."""
    valid = valid_records(400, subscribers=60)
    invalid = [(topic, b"bad-key", value) for topic, value, _ in INVALID]
    mixed = valid[:200] + invalid + valid[200:]
    positions = run(produce(broker.bootstrap, mixed))
    origin = {mixed.index(rec): pos for rec, pos in zip(mixed, positions)}

    w = workers(broker, app_id="t-accept", core=core_kind(), log_path=tmp_path / "seen.log")
    w.wait_for(lambda: w.total("satmon_ingest_events_decoded_total") + w.total("satmon_ingest_records_dead_lettered_total")
               >= len(mixed), what="all records accounted")
    time.sleep(1.0)  # a late duplicate would show up in the counts now
    assert w.total("satmon_ingest_events_decoded_total") == len(valid)
    assert w.total("satmon_ingest_records_dead_lettered_total") == len(invalid)

    letters = run(read_topic(broker.bootstrap, "satmon-dead-letter", expect=len(invalid)))
    assert len(letters) == len(invalid)
    from monitor.records.events import decode

    decoded = [decode("dead_letter.v1", r.value) for r in letters]
    by_bytes = {(d.source_topic, d.original_value()): d for d in decoded}
    for (topic, _key, value), (_, _, expected_reason) in zip(invalid, INVALID):
        d = by_bytes[(topic, value)]
        partition, offset = origin[mixed.index((topic, b"bad-key", value))]
        assert (d.partition, d.offset) == (partition, offset)
        assert expected_reason in d.reason, (expected_reason, d.reason)
        assert d.reason != expected_reason or expected_reason in ("empty",)  # says more than where
        assert base64.b64decode(d.key_b64) == b"bad-key"
        assert d.worker == "w1"

    # The events span several one-minute windows: closed windows reached the hot-spot stage.
    w.wait_for(lambda: w.total("satmon_worker_window_batches_total") > 0, timeout_s=30,
               what="cell windows merged by the hot-spot stage")
    # A record on satmon-cell-windows that is no window batch goes to the dead letters too, with
    # the reason and its bytes; the hot-spot stage goes on.
    junk = b"\x93\x07\x80\x90"   # well-formed MessagePack of neither window format
    [(junk_partition, junk_offset)] = run(produce(broker.bootstrap, [("satmon-cell-windows", b"junk", junk)]))
    letters = run(read_topic(broker.bootstrap, "satmon-dead-letter", expect=len(invalid) + 1))
    [window_letter] = [d for d in map(lambda r: decode("dead_letter.v1", r.value), letters)
                       if d.source_topic == "satmon-cell-windows"]
    assert window_letter.original_value() == junk and "not a window batch" in window_letter.reason
    assert (window_letter.partition, window_letter.offset) == (junk_partition, junk_offset)

    # HTTP: liveness, readiness (really assigned + broker reachable), Prometheus exposition.
    status, _, body = w.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = w.get("/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    status, ctype, body = w.get("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert 'satmon_ingest_records_dead_lettered_total{reason="empty",stream="tickets"} 1.0' in body
    w.stop()
    assert w.proc.returncode == 0


@pytest.mark.integration
@pytest.mark.slow
def test_readyz_is_503_when_broker_unreachable(workers: Any, tmp_path: Path) -> None:
    """/readyz checks something real: with the broker gone it stops saying ready, /healthz stays up."""
    b = Broker().start()
    try:
        w = workers(b, app_id="t-ready", core=core_kind(), log_path=tmp_path / "seen.log")
        w.wait_for(lambda: w.get("/readyz")[0] == 200 if w.metrics() else False, what="ready")
    finally:
        b.stop()
    w.wait_for(lambda: w.get("/readyz")[0] == 503, timeout_s=30, what="not ready once the broker is gone")
    assert w.get("/healthz")[0] == 200


@pytest.mark.integration
@pytest.mark.slow
def test_scores_flow_and_restart_keeps_state_and_model(broker: Broker, workers: Any, tmp_path: Path) -> None:
    """Scores appear on risk-scores; a restarted worker resumes with per-subscriber state from the
    changelog and the model from its checkpoint (no reset of learning)."""
    first = valid_records(600, subscribers=40)
    run(produce(broker.bootstrap, first))
    log = tmp_path / "seen.log"
    w1 = workers(broker, app_id="t-restart", core="recording", log_path=log)
    w1.wait_for(lambda: w1.total("satmon_ingest_events_decoded_total") >= len(first), what="first half processed")
    scores_before = w1.total("satmon_risk_scores_emitted_total")
    assert scores_before > 0
    assert w1.stop() == 0

    second = valid_records(600, subscribers=40, start=600)
    run(produce(broker.bootstrap, second))
    w2 = workers(broker, app_id="t-restart", core="recording", log_path=log, worker_id="w2")
    w2.wait_for(lambda: w2.total("satmon_ingest_events_decoded_total") >= len(second), what="second half processed")
    assert w2.total("satmon_ingest_events_decoded_total") == len(second)   # resumed at the committed offsets
    w2.stop()

    scores = [orjson.loads(r.value) for r in run(read_topic(broker.bootstrap, "risk-scores"))]
    assert len(scores) == 1200  # the recording core scores every new event once
    # Per-subscriber state survived: the last score of each subscriber counts all its events.
    last = {}
    for s in scores:
        last[s["subscriber_id"]] = s
    assert sorted(round(s["score"] * 100) for s in last.values()) == [30] * 40
    # The model survived: model_version (events learned per partition) never restarts from zero.
    by_partition: dict[int, list[int]] = {}
    for rec in run(read_topic(broker.bootstrap, "risk-scores")):
        by_partition.setdefault(rec.partition, []).append(orjson.loads(rec.value)["model_version"])
    for versions in by_partition.values():
        assert versions == sorted(versions)
    assert "model restored from checkpoint" in w2.tail(400)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not real_core_available(), reason="monitor.scoring.core not present")
def test_real_core_restart_matches_an_uninterrupted_run(broker: Broker, workers: Any, tmp_path: Path) -> None:
    """With the real risk core: a worker stopped half-way and restarted ends with exactly the
    per-subscriber state an uninterrupted worker reaches on the same input (state restored from
    the changelog, nothing double-applied), and restores its model from the checkpoint."""
    def network_only(n: int, start: int) -> list[tuple[str, bytes, bytes]]:
        out = []
        for i in range(start, start + n):
            sub = f"sub-{i % 50:04d}"
            rec = network_event(i, sub, latency_ms=float(20 + (i * 37) % 300), call_drop=i % 13 == 0)
            out.append(("network-events", sub.encode(), orjson.dumps(rec)))
        return out

    first, second = network_only(800, 0), network_only(800, 800)
    run(produce(broker.bootstrap, first))
    w1 = workers(broker, app_id="t-real-restart", core="real")
    w1.wait_for(lambda: w1.total("satmon_ingest_events_decoded_total") >= len(first), what="first half")
    assert w1.stop() == 0
    run(produce(broker.bootstrap, second))
    w2 = workers(broker, app_id="t-real-restart", core="real", worker_id="w2")
    w2.wait_for(lambda: w2.total("satmon_ingest_events_decoded_total") >= len(second), what="second half")
    assert w2.stop() == 0
    assert "model restored from checkpoint" in w2.tail(400)

    ref = workers(broker, app_id="t-real-straight", core="real", worker_id="w3")
    ref.wait_for(lambda: ref.total("satmon_ingest_events_decoded_total") >= len(first) + len(second), what="reference")
    assert ref.stop() == 0

    def states(app_id: str) -> dict[bytes, bytes]:
        latest: dict[bytes, bytes] = {}
        recs = run(read_topic(broker.bootstrap, f"{app_id}-subscriber-state-changelog"))
        for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
            latest[r.key] = r.value
        return latest

    restarted, straight = states("t-real-restart"), states("t-real-straight")
    assert len(straight) == 50
    assert restarted == straight


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_during_a_batch_hand_over_loses_no_state(broker: Broker, tmp_path: Path) -> None:
    """A worker told to stop while a batch's records are being handed to the producer finishes that
    hand-over before Faust cancels its drain loop: every event it applied is in the state changelog,
    and every record below a committed offset is in it too (a commit never runs ahead of state).

    Faust's stop cancels the drain loop (it stops the fetcher) before it waits for the streams; the
    batch's cores had given up their dirty states, so the partitions not yet handed over lost them
    (the reference worker of test_real_core_restart_matches_an_uninterrupted_run kept 26 of 50
    subscribers, 1 run in 5). Here the stop is made to meet the hand-over every time: the worker's
    observer SIGTERMs it from inside the batch with the broker frozen (support/faults.py)."""
    from support.faults import FIRED, FaultyWorkerProcess
    from support.kafka import committed_offsets

    records = valid_records(1_600, subscribers=50)
    positions = run(produce(broker.bootstrap, records))
    seen = tmp_path / "seen.log"
    w = FaultyWorkerProcess(broker, app_id="t-stop-mid-batch", data_dir=tmp_path, log_path=seen).start()
    try:
        returncode = w.proc.wait(90)
    finally:
        broker.proc.send_signal(signal.SIGCONT)    # thawed by the worker, unless it died first
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)
    assert returncode == 0, w.tail()
    assert FIRED in w.tail(400)

    state: dict[str, set[str]] = {}
    for r in sorted(run(read_topic(broker.bootstrap, "t-stop-mid-batch-subscriber-state-changelog")),
                    key=lambda r: (r.partition, r.offset)):
        state[r.key.decode()] = set(json.loads(r.value))
    subscriber = {orjson.loads(v)["event_id"]: k.decode() for _t, k, v in records}
    applied = {line.split()[1] for line in seen.read_text().splitlines()}
    assert applied, "the worker applied nothing before it stopped"
    lost = sorted(e for e in applied if e not in state.get(subscriber[e], ()))
    assert not lost, f"{len(lost)} of {len(applied)} applied events are not in the changelog state"

    committed = run(committed_offsets(broker.bootstrap, "t-stop-mid-batch"))
    assert committed, "the stopping worker committed nothing"
    ahead = []
    for (topic, key, value), (partition, offset) in zip(records, positions):
        event_id = orjson.loads(value)["event_id"]
        if offset < committed.get((topic, partition), 0) and event_id not in state.get(key.decode(), ()):
            ahead.append(event_id)
    assert not ahead, f"committed offsets cover {len(ahead)} events whose state is not in the changelog"
    # the stop met the batch half-way through its hand-over (else this test proves nothing)
    assert "stopping: waiting for the batch in progress" in w.tail(400)


def test_worker_refuses_to_start_without_a_broker(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """No SATMON_BROKER and no --embedded: a clear error, exit status 2, nothing started."""
    from monitor.cli import main

    monkeypatch.delenv("SATMON_BROKER", raising=False)
    assert main(["worker", "--pseudonymise", "false"]) == 2
    err = capsys.readouterr().err
    assert "no broker configured" in err and "--embedded" in err


def test_worker_refuses_pseudonymisation_without_a_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Pseudonymisation is on by default; a worker without a key must not start with real ids."""
    from monitor.worker.app import build_worker
    from monitor.config import load
    from monitor.records.errors import ConfigError

    monkeypatch.delenv("SATMON_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="no key"):
        build_worker(load({}, broker="kafka://127.0.0.1:9", data_dir=str(tmp_path)))


def test_rocksdb_stores_are_bounded_not_faust_defaults(tmp_path: Path) -> None:
    """Faust's RocksDB defaults (2 GiB block cache, 3 x 64 MiB memtables per database) made a
    worker's memory climb in the soak run; every table partition's database gets satmon's bounds."""
    from monitor.worker.app import MODEL_ROCKSDB_OPTIONS, MODEL_TABLE, ROCKSDB_OPTIONS, STATE_TABLE, build_worker
    from monitor.config import load

    worker = build_worker(load({}, broker="kafka://127.0.0.1:9", data_dir=str(tmp_path), store="rocksdb://",
                               pseudonymise="false"), api=False)
    for name, want in ((STATE_TABLE, ROCKSDB_OPTIONS), (MODEL_TABLE, MODEL_ROCKSDB_OPTIONS)):
        opts = worker.app.tables[name].data.rocksdb_options
        assert (opts.write_buffer_size, opts.max_write_buffer_number, opts.block_cache_size) == (
            want["write_buffer_size"], want["max_write_buffer_number"], want["block_cache_size"])
        assert opts.block_cache_size <= 64 * 1024 * 1024
    # the rarely written model table: memtables that flush every few checkpoints, not every 100 minutes
    assert MODEL_ROCKSDB_OPTIONS["write_buffer_size"] <= 1024 * 1024


def test_store_memory_is_exported_per_table_and_kind(tmp_path: Path) -> None:
    """RocksDB's own memory is on /metrics (the soak attributes resident memory with it): a state
    write shows up in the state table's memtables, the model table stays apart, and the C heap's
    in-use bytes are there too."""
    from monitor.worker.tablestore import TableStore
    from monitor.worker.app import STATE_TABLE, build_worker
    from monitor.config import load
    from monitor.pipeline import Outputs

    worker = build_worker(load({}, broker="kafka://127.0.0.1:9", data_dir=str(tmp_path), store="rocksdb://",
                               pseudonymise="false"), api=False)

    def gauge(table: str, kind: str) -> float | None:
        return worker.registry.get_sample_value("satmon_worker_store_memory_bytes", {"table": table, "kind": kind})

    assert gauge("state", "memtables") == 0           # no partition's database open yet
    state = TableStore(worker.app.tables[STATE_TABLE])
    state._store._db_for_partition(0)
    empty = gauge("state", "memtables")
    assert empty is not None and gauge("state", "block_cache") is not None
    state.write(0, {f"sub-{i}".encode(): bytes(200) + i.to_bytes(4, "little") for i in range(5000)}, Outputs())
    assert gauge("state", "memtables") - empty > 5000 * 200      # every version lives in the memtable
    assert gauge("model", "memtables") == 0            # the model table's databases are its own
    assert state.memory()["memtables"] == gauge("state", "memtables")
    blocks = worker.registry.get_sample_value("satmon_worker_python_blocks")
    keep = [object() for _ in range(100_000)]                     # live Python objects: counted
    assert worker.registry.get_sample_value("satmon_worker_python_blocks") - blocks >= 100_000
    del keep
    in_use = worker.registry.get_sample_value("satmon_worker_malloc_bytes", {"kind": "in_use"})
    assert in_use is None or in_use > 1_000_000     # None only where the C library is not glibc


def test_view_size_is_exported(tmp_path: Path) -> None:
    """The outreach view's size is on /metrics (what the soak's memory grows with until every ring
    and change log is full): subscribers, history versions, change-log entries, records applied."""
    from monitor.worker.app import build_worker
    from monitor.config import load
    from monitor.records.events import RiskScore

    worker = build_worker(load({}, broker="kafka://127.0.0.1:9", data_dir=str(tmp_path), pseudonymise="false"))
    for i in range(30):
        worker.view.apply(RiskScore(subscriber_id=f"s{i % 4}", ts_ms=1000 + i, scored_at_ms=1000 + i, score=0.5,
                                    at_risk=False, model_version=1, reasons=[]), partition=i % 2)

    def get(name: str) -> float | None:
        return worker.registry.get_sample_value(name)

    assert get("satmon_view_subscribers") == 4
    assert get("satmon_view_history_versions") == 30        # 7-8 scores each: no ring of 12 is full yet
    for i in range(30):
        worker.view.apply(RiskScore(subscriber_id="s0", ts_ms=2000 + i, scored_at_ms=2000 + i, score=0.5,
                                    at_risk=False, model_version=1, reasons=[]), partition=0)
    assert get("satmon_view_history_versions") == 30 - 8 + 12  # s0's ring is full: it stops growing
    assert get("satmon_view_change_log_entries") == 60
    assert get("satmon_view_records_applied_total") == 60
    assert get("satmon_outreach_records_trimmed_total") == 0   # the outreach store's bound, exported
    import gc

    before = worker.registry.get_sample_value("python_gc_collections_total", {"generation": "2"})
    gc.collect()
    assert worker.registry.get_sample_value("python_gc_collections_total", {"generation": "2"}) == before + 1


def test_open_hot_spot_windows_are_exported(tmp_path: Path) -> None:
    """The (cell, window) accumulators a worker holds open are on /metrics: they grow while windows
    cannot close (a watermark held back) and fall back when they do."""
    from monitor.worker.app import build_worker
    from monitor.config import load
    from monitor.records.events import decode
    from monitor.pipeline import Outputs

    worker = build_worker(load({}, broker="kafka://127.0.0.1:9", data_dir=str(tmp_path), pseudonymise="false"))
    cw = worker.cell_windows
    assert cw is not None
    cw.idle_s = 0                      # no stream holds the others back here

    def open_cells(side: str) -> float | None:
        return worker.registry.get_sample_value("satmon_worker_window_cells_open", {"side": side})

    def net(i: int, ts: int, cell: str) -> Any:
        return decode("network_event.v1", orjson.dumps(network_event(i, f"s{i}", ts_ms=ts, cell_id=cell)))

    t0 = 1_700_000_040_000 - 1_700_000_040_000 % 60_000
    assert open_cells("aggregator") == 0 and open_cells("merger") == 0 and open_cells("combiner") == 0
    cw.on_batch(1, [net(1, t0 + 1_000, "cA"), net(2, t0 + 2_000, "cB"), net(3, t0 + 61_000, "cA")], [], [], Outputs())
    assert open_cells("aggregator") == 3          # two cells in the first window, one in the second
    out = Outputs()
    cw.on_batch(1, [net(4, t0 + 200_000, "cC")], [], [], out)   # both windows pass their lateness
    assert open_cells("aggregator") == 1
    # the closed windows reach their regions' owners, which wait for the other partitions' closes
    shipped = [(p, v) for (topic, p), recs in out.records().items() for _k, v in recs]
    assert shipped
    for p, raw in shipped:
        worker.hotspots.on_window_batch(p, raw)
    assert open_cells("merger") == 3
    from monitor.pipeline import MAX_HOLD_MS

    assert {m.max_skew_ms for m, _engine in worker.hotspots.stages.values()} == {MAX_HOLD_MS}   # bounded too
    # the hot-spot baselines the region owners learn are on /metrics too
    from monitor.evaluation.hotspots import synthetic_cell_windows

    assert worker.registry.get_sample_value("satmon_worker_hotspot_baselines") == 0
    _merger, engine = next(iter(worker.hotspots.stages.values()))
    engine.process(synthetic_cell_windows(n_cells=3, n_windows=30))
    assert engine.baselines > 0
    assert worker.registry.get_sample_value("satmon_worker_hotspot_baselines") == engine.baselines


def test_cell_windows_ship_closed_windows_to_every_cell_windows_partition() -> None:
    """The CellWindows observer (no Kafka): windows close on the watermark, every destination
    partition gets a WindowBatch (empty ones too), partials go to their region's partition, and a
    ticket is attributed to the subscriber's last network cell."""
    from aiokafka.partitioner import murmur2

    from monitor.pipeline import CellWindows
    from monitor.records.topics import CELL_WINDOWS as CELL_WINDOWS_TOPIC
    from monitor.records.events import decode
    from monitor.pipeline import Outputs
    from monitor.detection.windows import decode_batch

    def net(i: int, sub: str, ts: int, cell: str, **kw: Any) -> Any:
        return decode("network_event.v1", orjson.dumps(network_event(i, sub, ts_ms=ts, cell_id=cell, **kw)))

    t0 = 1_700_000_040_000 - 1_700_000_040_000 % 60_000
    # idle_s=0: no stream holds the others (tests/test_windows.py covers the holds)
    obs = CellWindows(partitions=PARTITIONS, width_ms=60_000, allowed_lateness_ms=10_000, idle_s=0)
    out = Outputs()
    first = [net(1, "s1", t0 + 1_000, "cA", call_drop=True), net(2, "s2", t0 + 2_000, "cB"),
             decode("ticket_event.v1", orjson.dumps(ticket_event(3, "s1", ts_ms=t0 + 3_000)))]
    obs.on_batch(2, first, [], [], out)
    # The first watermark announces "closed before" an earlier window: empty batches, no partials.
    assert all(not decode_batch(v).partials for recs in out.records().values() for _, v in recs)
    out = Outputs()
    obs.on_batch(2, [net(4, "s3", t0 + 75_000, "cA")], [], [], out)  # watermark passes end + lateness
    records = out.records()
    assert sorted(p for (topic, p) in records if topic == CELL_WINDOWS_TOPIC) == list(range(PARTITIONS))
    partials = {}
    for (topic, p), recs in records.items():
        [(key, value)] = recs
        batch = decode_batch(value)
        assert key == b"2" and batch.closed == {"2": t0 + 60_000}
        for part in batch.partials:
            assert p == (murmur2(part.region.encode()) & 0x7FFFFFFF) % PARTITIONS
            partials[part.cell_id] = part
    assert partials["cA"].sessions == 1 and partials["cA"].drops == 1
    assert partials["cA"].tickets == 1 and partials["cA"].complaints == 1  # the ticket followed s1 to cA
    assert partials["cB"].sessions == 1 and partials["cB"].tickets == 0

    out = Outputs()
    obs.on_revoked(2, out)  # the open window (s3 on cA) is flushed, not dropped
    flushed = [part for recs in out.records().values() for _, v in recs for part in decode_batch(v).partials]
    assert [(p.cell_id, p.sessions) for p in flushed] == [("cA", 1)]


@pytest.mark.integration
@pytest.mark.slow
def test_labels_feed_model_quality_metrics(broker: Broker, workers: Any, tmp_path: Path) -> None:
    """Graded snapshots learned by the real core show up as labels received per outcome head and as
    the complaint head's rolling model-quality gauges on /metrics (by partition, never by subscriber).

    A complaint label is made certain by construction rather than hoped for: the simulated day goes
    to the worker in three parts, each decoded before the next is sent (the worker consumes its input
    topics in no fixed order between them), so a subscriber seen in the first hour whose ticket is
    opened before hour 20 and who is seen again after hour 24 matures a positive complaint label."""
    from monitor.sim import simulate
    from monitor.scoring.risk import LEARN_HORIZON_H
    from monitor.records.topics import partition_for

    # a snapshot becomes a label once its 24 h horizon has passed (monitor.scoring.risk): 26 simulated hours
    config = simulate.SimConfig(subscribers=800, hours=26, seed=4, malformed_share=0, duplicate_share=0,
                                late_share=0)
    records = [(t, k, v, orjson.loads(v)) for t, k, v in simulate.generate(config)]
    start = min(rec["ts_ms"] for _t, _k, _v, rec in records)
    hour = 3_600_000
    parts = [[r for r in records if lo <= r[3]["ts_ms"] - start < hi]
             for lo, hi in ((0, hour), (hour, 20 * hour), (20 * hour, float("inf")))]
    assert sum(map(len, parts)) == len(records)
    horizon = LEARN_HORIZON_H * hour
    first = {}  # subscriber -> first network event of the first part (the label's snapshot)
    for t, _k, _v, rec in parts[0]:
        if t == "network-events":
            first.setdefault(rec["subscriber_id"], rec["ts_ms"])
    opened = {(rec["subscriber_id"]) for t, _k, _v, rec in parts[1]
              if t == "care-tickets" and rec["action"] == "opened"
              and rec["ts_ms"] <= first.get(rec["subscriber_id"], -horizon) + horizon}
    seen_after = {rec["subscriber_id"] for t, _k, _v, rec in parts[2]
                  if t == "network-events" and rec["subscriber_id"] in opened
                  and rec["ts_ms"] > first[rec["subscriber_id"]] + horizon}
    positive = {partition_for(sub.encode(), PARTITIONS) for sub in seen_after}
    assert positive, "seed 4 must give a complaint label (the world changed: pick another seed)"

    w = None
    sent = 0
    for part in parts:
        run(produce(broker.bootstrap, [(t, k, v) for t, k, v, _rec in part]))
        sent += len(part)
        if w is None:
            w = workers(broker, app_id="t-quality", core="real")
        w.wait_for(lambda n=sent: w.total("satmon_ingest_events_decoded_total") >= n, timeout_s=120,
                   what=f"{sent} events")

    def gauge(name: str, partition: int) -> float | None:
        return w.metrics().get(f'{name}{{partition="{partition}"}}')

    def received() -> dict[str, float]:
        return {k: v for k, v in w.metrics().items() if k.startswith("satmon_model_labels_received_total")}

    def learned() -> set[int]:
        return {int(k.split('partition="')[1].split('"')[0]) for k in received()}

    # every partition that learned labels exports the log-loss and calibration (they need no
    # positive); a partition that learned a positive complaint label exports the AUC too
    w.wait_for(lambda: positive <= learned() and all(gauge("satmon_model_log_loss_nats", p) is not None
                                                     for p in learned() | positive),
               timeout_s=90, what=f"model-quality gauges (positives in partitions {sorted(positive)})")
    m = w.metrics()
    labels = received()
    assert sum(labels.values()) >= 10
    assert all(any(f'kind="{kind}"' in k for k in labels) for kind in ("complaint", "detractor", "churn"))
    for p in learned():
        assert gauge("satmon_model_log_loss_nats", p) > 0
        assert 0 <= gauge("satmon_model_calibration_error_ratio", p) <= 1
    for p in positive:
        auc = gauge("satmon_model_roc_auc_ratio", p)
        assert auc is not None and 0 <= auc <= 1
    assert not any("sub-" in k for k in m)
    assert w.stop() == 0


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not real_core_available(), reason="monitor.scoring.core not present")
def test_every_worker_learns_every_partitions_labels_and_resumes_at_its_checkpoint(broker: Broker, workers: Any,
                                                                                    tmp_path: Path) -> None:
    """Two workers in one group, each owning half the partitions, both learn every label either one
    matured (from satmon-labels) and end with the same model: exactly the model that reads the
    labels topic in order. The checkpoints carry the topic's offset, so a restarted worker resumes
    there and learns no label twice."""
    import msgspec
    from monitor.scoring.risk import RiskModel, decode_label
    from monitor.sim import simulate

    # 26 simulated hours: snapshots of the first hours mature into labels after their 24 h horizon
    config = simulate.SimConfig(subscribers=300, hours=26, seed=8, malformed_share=0, duplicate_share=0,
                                late_share=0)
    records = list(simulate.generate(config))
    run(produce(broker.bootstrap, records))
    ws = [workers(broker, app_id="t-labels", core="real", worker_id=f"w{i}") for i in range(2)]

    def sent() -> float:
        return sum(w.total("satmon_worker_labels_sent_total") for w in ws)

    def settled() -> bool:
        n = sent()
        return (sum(w.total("satmon_ingest_events_decoded_total") for w in ws) >= len(records) and n > 0
                and all(w.total("satmon_worker_labels_learned_total") == n and
                        w.metrics().get("satmon_worker_labels_lag") == 0 for w in ws))

    ws[0].wait_for(settled, timeout_s=150, what="both workers learned every label")
    owned = [w.total("satmon_worker_cores") for w in ws]
    assert all(owned) and sum(owned) == PARTITIONS, owned   # each worker matured labels of its half only
    assert all(0 < w.total("satmon_worker_labels_sent_total") < sent() for w in ws)
    n_labels = int(sent())
    # SIGTERM checkpoints every partition's model: w1's on leaving, then w0's once it owns them all
    # (one at a time: on Tansu, a member leaving in the middle of the rebalance the other's leave
    # started left the group unable to sync a new member for over a minute)
    assert ws[1].stop() == 0
    ws[0].wait_for(lambda: ws[0].total("satmon_worker_partitions_assigned") == PARTITIONS
                   and ws[0].get("/readyz")[0] == 200, timeout_s=60, what="w0 owns every partition")
    assert ws[0].stop() == 0

    labels = run(read_topic(broker.bootstrap, "satmon-labels"))
    assert len(labels) == n_labels
    offline = RiskModel()
    for rec in sorted(labels, key=lambda r: r.offset):
        offline.learn(decode_label(rec.value), offset=rec.offset)
    checkpoints: dict[bytes, bytes] = {}
    for r in sorted(run(read_topic(broker.bootstrap, "t-labels-risk-model-changelog")), key=lambda r: r.offset):
        if not r.key.startswith(b"offsets:"):
            checkpoints[r.key] = r.value
    assert len(checkpoints) == PARTITIONS
    for blob in checkpoints.values():
        model = msgspec.msgpack.decode(blob)["model"]
        assert model["labels_offset"] == n_labels
        assert model == offline.to_state()   # every partition's model: the topic's, in its order

    back = workers(broker, app_id="t-labels", core="real", worker_id="w0")
    back.wait_for(lambda: back.metrics().get("satmon_worker_labels_lag") == 0, timeout_s=60,
                  what="the restarted worker's label feed")
    assert back.total("satmon_worker_labels_learned_total") == 0   # resumed at its checkpoint's offset
    assert f"learning from satmon-labels from offset {n_labels}" in back.tail(400)
    assert back.stop() == 0


def test_the_batch_bound_is_the_max_poll_records_setting(tmp_path: Path) -> None:
    """``max_poll_records`` bounds what one getmany hands the fast path (Faust passes it to aiokafka's
    consumer): the soak pins it below what arrives per fetch so that batches keep one size."""
    from monitor.worker.app import build_worker
    from monitor.config import load

    def bound(**over: str) -> int:
        worker = build_worker(load({}, broker="kafka://127.0.0.1:9", data_dir=str(tmp_path), pseudonymise="false",
                                   **over), api=False)
        return worker.app.conf.broker_max_poll_records

    assert bound() == 2000
    assert bound(max_poll_records="400") == 400
