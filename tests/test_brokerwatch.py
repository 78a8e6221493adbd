"""BrokerWatch: a broker that lost its data underneath a running worker is reported loudly.

The pure detector on hand-made snapshots, and a real worker process on the embedded Tansu broker
restarted underneath it (Tansu keeps everything in memory: a restart wipes topics and offsets).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from support.kafka import produce, run
from monitor.worker.brokerwatch import BrokerSnapshot, BrokerWatch
from support.records import valid_records


def snap(cluster: str | None = "c", parts: dict[str, int] | None = None,
         ends: dict[tuple[str, int], int] | None = None) -> BrokerSnapshot:
    return BrokerSnapshot(cluster, parts if parts is not None else {"in": 2, "cl": 2},
                          ends if ends is not None else {("in", 0): 10, ("in", 1): 5, ("cl", 0): 3})


def test_steady_and_growing_broker_is_not_a_loss() -> None:
    w = BrokerWatch(topics=["in", "cl"])
    assert w.observe(snap()) == []
    grown = {("in", 0): 11, ("in", 1): 5, ("cl", 0): 9}
    assert w.observe(snap(ends=grown)) == []
    assert w.observe(snap(parts={"in": 2, "cl": 2, "new": 1}, ends=grown)) == []    # new topics are fine
    assert w.observe(snap(ends={**grown, ("in", 2): 0})) == []                      # a new partition too
    assert w.losses == 0 and w.status()["data_loss"] is False


@pytest.mark.parametrize("after, expected", [
    (snap(cluster="other"), "cluster id changed from 'c' to 'other'"),
    (snap(parts={"in": 2}, ends={("in", 0): 10, ("in", 1): 5}), "topic cl vanished"),
    (snap(parts={"in": 1, "cl": 2}), "topic in: 1 partitions, was 2"),
    (snap(ends={("in", 0): 0, ("in", 1): 5, ("cl", 0): 3}), "in/0: end offset went back from 10 to 0"),
])
def test_each_sign_of_a_wipe_is_one_loss(after: BrokerSnapshot, expected: str) -> None:
    w = BrokerWatch(topics=["in", "cl"], clock=lambda: 42.0)
    w.observe(snap())
    found = w.observe(after)
    assert expected in found
    assert w.losses == 1 and w.last_loss_at == 42.0 and w.status()["findings"] == found
    # the new state is the new baseline: the same broker seen again is not a second loss
    assert w.observe(after) == [] and w.losses == 1


def test_unwatched_topics_and_missing_cluster_id_are_ignored() -> None:
    w = BrokerWatch(topics=["in"])
    w.observe(snap(cluster=None, parts={"in": 2, "scratch": 1}, ends={("in", 0): 10, ("scratch", 0): 50}))
    assert w.observe(snap(cluster="c", parts={"in": 2}, ends={("in", 0): 10, ("scratch", 0): 0})) == []


@pytest.mark.integration
@pytest.mark.slow
def test_worker_reports_a_broker_restart_loudly_and_keeps_running(workers: Any, tmp_path: Path) -> None:
    """EmbeddedBroker.restart() under a running worker: within seconds the worker logs the loss at
    ERROR, counts it in ``satmon_broker_restarts_detected_total``, /healthz says so (200) and
    /readyz is 503 with the reason; HTTP keeps answering and SIGTERM still stops it cleanly."""
    from monitor.worker.broker import EmbeddedBroker

    b = EmbeddedBroker(data_dir=tmp_path / "broker", partitions=4)
    b.start()
    try:
        records = valid_records(2_000, subscribers=100)
        run(produce(b.bootstrap, records))
        w = workers(b, app_id="t-watch", core="real")
        w.wait_for(lambda: w.total("satmon_ingest_events_decoded_total") >= len(records), timeout_s=60,
                   what="first records processed")
        w.wait_for(lambda: w.get("/readyz")[0] == 200, timeout_s=30, what="ready")
        w.wait_for(lambda: json.loads(w.get("/healthz")[2])["broker"]["snapshots"] >= 2, timeout_s=30,
                   what="the broker watch has a baseline")
        assert w.total("satmon_broker_restarts_detected_total") == 0
        assert json.loads(w.get("/healthz")[2])["broker"]["data_loss"] is False

        t0 = time.monotonic()
        b.restart()
        w.wait_for(lambda: w.total("satmon_broker_restarts_detected_total") >= 1, timeout_s=30,
                   what="the broker restart detected")
        detected_s = time.monotonic() - t0
        print(f"broker restart detected after {detected_s:.1f} s")

        status, _, body = w.get("/healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "broker_data_loss"
        assert health["broker"]["data_loss"] is True and health["broker"]["findings"]
        print("findings:", health["broker"]["findings"])
        status, _, body = w.get("/readyz")
        assert status == 503 and "broker lost data" in json.loads(body)["reason"]
        lines = [line for line in w.tail(3000).splitlines() if "BROKER DATA LOSS" in line]
        assert len(lines) == 1 and "ERROR" in lines[0] and "end offset went back" in lines[0]

        # What the worker does with new input after the wipe (reported, not asserted: see docs/BROKER.md)
        before = w.total("satmon_ingest_events_decoded_total")
        skipped_before = w.total("satmon_worker_skipped_below_floor_total")
        after = valid_records(300, subscribers=100, start=10_000)
        run(produce(b.bootstrap, after))
        deadline = time.monotonic() + 6   # at most: whatever is not handled by then is reported as such
        while time.monotonic() < deadline and (
                w.total("satmon_ingest_events_decoded_total") - before
                + w.total("satmon_worker_skipped_below_floor_total") - skipped_before) < len(after):
            time.sleep(0.2)
        print(f"after the wipe: {w.total('satmon_ingest_events_decoded_total') - before:.0f} of {len(after)} new records "
              f"processed, {w.total('satmon_worker_skipped_below_floor_total') - skipped_before:.0f} skipped "
              "below the old resume floors")

        # never hangs: the process keeps serving, and stops on SIGTERM
        assert w.proc.poll() is None and w.metrics()
        assert w.total("satmon_broker_restarts_detected_total") == 1     # one restart, one loss
        assert w.stop(signal.SIGTERM, timeout_s=45) == 0
    finally:
        b.stop()
