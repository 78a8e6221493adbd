"""Faults injected into a real worker process at a chosen point of its pipeline.

:class:`StopDuringHandOver` is a :class:`monitor.pipeline.BatchObserver` (the pipeline's own plug-in
point) that makes a worker begin to stop while a batch's records are being handed to the producer;
:class:`FaultyWorkerProcess` runs ``satmon worker``'s Faust worker with the recording core and that
observer (the ``workers`` fixture's harness, ``support.kafka``, otherwise)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from support.kafka import ROOT, TESTS, WorkerProcess

log = logging.getLogger(__name__)

#: the worker's log line that says the fault fired
FIRED = "fault: SIGTERM during a batch"


class StopDuringHandOver:
    """On the first batch with events: freeze the broker (SIGSTOP), SIGTERM this worker process and
    thaw the broker ``thaw_s`` later (SIGCONT, from a thread).

    Observers run inside the pipeline's ``handle``, after the cores took the batch and before the
    consumer hands its records to the producer, so the stop begins before that hand-over; with the
    broker frozen the hand-over cannot finish (it waits for metadata or for the partition's previous
    batch to be sent) until the broker thaws, long after the stop reached the consumer. The worker
    runs with ``fastpath.MAX_QUEUED_BATCHES = 1``: a partition's second batch then waits for the
    first to leave, as aiokafka's ``send_batch`` does; with the default bound the batches of this
    small test queue in the producer and the hand-over would end before the stop (it waits in
    production only behind a broker that fell 16 batches of a partition behind)."""

    stage = "fault injection"

    def __init__(self, broker_pid: int, thaw_s: float = 2.0) -> None:
        self.broker_pid = broker_pid
        self.thaw_s = thaw_s
        self.fired = False

    def on_batch(self, partition: int, events: Any, scores: Any, letters: Any, out: Any) -> None:
        if self.fired or not events:
            return
        self.fired = True
        os.kill(self.broker_pid, signal.SIGSTOP)
        threading.Timer(self.thaw_s, os.kill, (self.broker_pid, signal.SIGCONT)).start()
        log.warning("%s of %d events on partition %d (broker frozen for %.1f s)", FIRED, len(events),
                    partition, self.thaw_s)
        os.kill(os.getpid(), signal.SIGTERM)


class FaultyWorkerProcess(WorkerProcess):
    """A worker process (recording core) with :class:`StopDuringHandOver` among its observers:
    ``broker`` must have the Tansu process as ``proc``."""

    def __init__(self, broker: Any, *, max_poll_records: int = 2000, **kwargs: Any) -> None:
        kwargs.setdefault("core", "recording")
        super().__init__(broker, **kwargs)
        self.max_poll_records = max_poll_records

    def start(self) -> "FaultyWorkerProcess":
        import subprocess

        env = {k: v for k, v in os.environ.items() if not k.startswith("SATMON_") or k == "SATMON_TANSU_BIN"}
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{TESTS}"
        if self.log_path is not None:
            env["TEST_SEEN_LOG"] = str(self.log_path)
        code = (
            "from monitor.config import load\n"
            "from monitor.worker import fastpath\n"
            "fastpath.MAX_QUEUED_BATCHES = 1   # the hand-over waits for a partition's previous batch\n"
            "from monitor.worker.app import FaustWorker, build_worker\n"
            "from support.faults import StopDuringHandOver\n"
            "from support.records import RecordingCore\n"
            f"s = load({{}}, broker={self.broker.url!r}, store={self.store!r}, data_dir={str(self.data_dir)!r},"
            f" web_port='{self.port}', worker_id={self.worker_id!r}, partitions='{self.partitions}',"
            f" checkpoint_interval_s='{self.checkpoint_interval_s}', pseudonymise='false',"
            f" max_poll_records='{self.max_poll_records}')\n"
            f"w = build_worker(s, app_id={self.app_id!r}, make_core=RecordingCore,"
            f" observers=[StopDuringHandOver({self.broker.proc.pid})])\n"
            "FaustWorker(w.app, loglevel='info', quiet=True, redirect_stdouts=False).execute_from_commandline()\n"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=open(self.output, "ab"),
                                     stderr=subprocess.STDOUT, cwd=str(ROOT))
        return self
