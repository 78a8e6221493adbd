"""The Alertmanager client against a real Alertmanager (started here on loopback)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from monitor.observability.alertmanager import AlertmanagerClient, postable
from monitor.detection.alerting import AlertLifecycle
from monitor.detection.hotspots import HotspotEngine
from monitor.evaluation.hotspots import Incident, synthetic_cell_windows
from monitor.detection.windows import group_by_window
from support.alertmanager import AM_BIN, Alertmanager
from support.kafka import free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not Path(AM_BIN).exists(), reason="prometheus-alertmanager not installed")]


@pytest.fixture
def alertmanager(tmp_path):
    am = Alertmanager(tmp_path, free_port())
    am.start()
    yield am
    am.stop()


async def _until(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(pred):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


T0 = 1_699_999_200_000


def _outage_windows():
    inc = Incident("cell", "r1", T0 + 40 * 60_000, T0 + 48 * 60_000, cell_id="c007")
    return group_by_window(synthetic_cell_windows(n_cells=12, n_windows=70, incidents=[inc], seed=2))


def test_injected_outage_fires_once_then_resolves_in_alertmanager(alertmanager):
    async def main():
        client = AlertmanagerClient(alertmanager.url, resend_interval_s=0.3, seed=1)
        await client.start()
        engine = HotspotEngine()
        alerts_sent = []
        windows = list(_outage_windows())
        resolved_at = None
        for i, (start, ws) in enumerate(windows):
            for a in engine.step(start, ws):
                client.notify(a)
                alerts_sent.append(a)
            if start == T0 + 45 * 60_000:        # mid-outage: Alertmanager shows it firing, once
                await _until(lambda: len(alertmanager.alerts(alertname="SatmonHotSpotActive")) == 1)
                await asyncio.sleep(1.0)          # several re-sends later: still exactly one
                [am] = alertmanager.alerts(alertname="SatmonHotSpotActive")
                assert am["labels"]["cell_id"] == "c007" and am["labels"]["region"] == "r1"
                assert am["labels"]["severity"] in ("warning", "critical")
                assert am["status"]["state"] == "active"
                assert am["annotations"]["runbook_url"].endswith("docs/runbook/SatmonHotSpotActive.md")
                assert am["annotations"]["summary"] == "Cell c007 is a hot spot"
                assert client.resent > 0
            if any(a.status == "resolved" for a in alerts_sent) and resolved_at is None:
                resolved_at = i
        assert resolved_at is not None
        # the resolve reached Alertmanager: the alert is no longer active (endsAt in the past)
        await _until(lambda: alertmanager.alerts(alertname="SatmonHotSpotActive") == [])
        await asyncio.sleep(0.7)                  # re-sends must not bring it back
        assert alertmanager.alerts(alertname="SatmonHotSpotActive") == []
        assert client.failures == 0 and client.dropped == 0
        assert [a.status for a in alerts_sent if a.sequence == 0] == ["firing"]
        await client.stop()

    asyncio.run(main())


def test_down_alertmanager_never_blocks_then_delivers(tmp_path):
    am = Alertmanager(tmp_path, free_port())        # not started yet: connection refused

    async def main():
        client = AlertmanagerClient(am.url, max_queue=50, backoff_initial_s=0.05, backoff_max_s=0.3,
                                    resend_interval_s=60, seed=3)
        await client.start()
        lc = AlertLifecycle()
        alert = lc.fire("SatmonHotSpotActive", {"cell_id": "c-down", "region": "r"}, ts_ms=T0,
                        severity="critical", summary="Cell c-down is a hot spot", description="outage")
        t = time.perf_counter()
        for i in range(1000):                        # a flood: never awaits, never raises
            client.notify(lc.fire("SatmonHotSpotActive", {"cell_id": f"c{i}", "region": "r"}, ts_ms=T0,
                                  severity="warning", summary="s", description="d"))
        client.notify(alert)
        assert time.perf_counter() - t < 0.5
        assert client.queued == 50 and client.dropped == 951    # bounded: oldest dropped, counted
        await _until(lambda: client.failures >= 3, timeout=10)   # retried with back-off
        assert client.delivered == 0 and "Connect" in (client.last_error or "")
        await asyncio.to_thread(am.start)
        await _until(lambda: client.queued == 0 and client.delivered >= 50, timeout=15)
        await _until(lambda: len(am.alerts(cell_id="c-down")) == 1)
        assert am.alerts(cell_id="c-down")[0]["labels"]["severity"] == "critical"
        await client.stop()

    try:
        asyncio.run(main())
    finally:
        am.stop()


def test_a_post_under_way_counts_as_queued_until_alertmanager_answers(alertmanager):
    """``queued`` is what Alertmanager has not accepted yet, including the batch of the POST under
    way: a caller waiting for ``queued == 0`` (``stop`` flushing, a test reading Alertmanager back)
    must not see 0 while the last states are still on the wire. Alertmanager is SIGSTOPped so that
    the kernel takes the connection and the answer waits; SIGCONT lets it answer."""
    import signal

    async def main():
        client = AlertmanagerClient(alertmanager.url, timeout_s=30, resend_interval_s=60)
        await client.start()
        lc = AlertLifecycle()
        alertmanager.proc.send_signal(signal.SIGSTOP)
        try:
            client.notify(lc.fire("SatmonHotSpotActive", {"cell_id": "c-held", "region": "r"}, ts_ms=T0,
                                  severity="warning", summary="s", description="d"))
            await asyncio.sleep(0.5)                  # the sender has taken it and is waiting for the answer
            assert client.queued == 1 and client.delivered == 0 and client.failures == 0
        finally:
            alertmanager.proc.send_signal(signal.SIGCONT)
        await _until(lambda: client.queued == 0, timeout=15)
        assert client.delivered == 1
        assert len(await asyncio.to_thread(alertmanager.alerts, cell_id="c-held")) == 1
        await client.stop()

    asyncio.run(main())


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    c = AlertmanagerClient("http://127.0.0.1:9", backoff_initial_s=1, backoff_max_s=10, seed=0)
    delays = [c.backoff_s(n) for n in range(1, 8)]
    assert all(0.5 * min(10, 2 ** (n - 1)) <= d <= min(10, 2 ** (n - 1)) for n, d in zip(range(1, 8), delays))
    assert max(delays) <= 10 and len(set(delays)) == len(delays)


def test_queue_coalesces_states_of_one_alert():
    c = AlertmanagerClient("http://127.0.0.1:9", max_queue=10)
    lc = AlertLifecycle()
    labels = {"cell_id": "c1", "region": "r"}
    c.notify(lc.fire("SatmonHotSpotActive", labels, ts_ms=0, severity="warning", summary="s", description="1"))
    c.notify(lc.fire("SatmonHotSpotActive", labels, ts_ms=1, severity="warning", summary="s", description="2"))
    c.notify(lc.resolve("SatmonHotSpotActive", labels, ts_ms=2))
    assert c.queued == 1 and c.firing == [] and c.dropped == 0


def test_postable_resolved_end_is_not_in_the_future_nor_before_start():
    lc = AlertLifecycle()
    labels = {"cell_id": "c1", "region": "r"}
    lc.fire("SatmonHotSpotActive", labels, ts_ms=10_000, severity="warning", summary="s", description="d")
    res = lc.resolve("SatmonHotSpotActive", labels, ts_ms=99_000)
    p = postable(res, now_ms=50_000, resend_interval_s=60)
    assert p["endsAt"] == "1970-01-01T00:00:50.000Z" and p["startsAt"] == "1970-01-01T00:00:10.000Z"
    assert set(p["annotations"]) == {"summary", "description", "runbook_url", "alert_id"}


def test_alertmanager_killed_mid_run_leaves_the_stream_at_full_speed(tmp_path):
    """Issue 8, "Alertmanager down": a stream loop (real risk core over simulator events, alert
    state changes sent with ``notify`` every batch, like a worker would) runs while Alertmanager is
    up, is SIGKILLed, and comes back. Its throughput does not drop while Alertmanager is down, the
    failed posts are counted and retried with back-off, nothing is delivered meanwhile, and once
    Alertmanager is back every alert's latest state arrives.

    The worker does not push to Alertmanager itself yet (``alertmanager_url`` is a setting that no
    shell uses): this is the client a worker would use, under the load of the real core."""
    from monitor.scoring.core import PartitionCore
    from monitor.records.events import DeadLetter
    from monitor.records.ingest import Ingest
    from monitor.sim.simulate import SimConfig, generate

    ingest = Ingest(clock_ms=lambda: 0)
    cfg = SimConfig(subscribers=3_000, hours=3, scenario="quiet", seed=9, malformed_share=0, duplicate_share=0)
    events = [e for i, (t, k, v) in enumerate(generate(cfg)) if not isinstance(e := ingest.decode(t, 0, i, k, v), DeadLetter)]
    phase = len(events) // 3
    am = Alertmanager(tmp_path, free_port())
    am.start()

    async def main():
        client = AlertmanagerClient(am.url, backoff_initial_s=0.05, backoff_max_s=0.4, resend_interval_s=60, seed=1)
        await client.start()
        core, lc = PartitionCore(0, clock_ms=lambda: 0), AlertLifecycle()
        open_alerts: dict[str, object] = {}
        rates = []
        for n, chunk in enumerate((events[:phase], events[phase:2 * phase], events[2 * phase:3 * phase])):
            if n == 1:
                delivered_before = client.delivered
                am.proc.kill()                       # SIGKILL: no goodbye
                am.proc.wait()
            t = time.perf_counter()
            for b in range(0, len(chunk), 500):
                core.process_batch(chunk[b:b + 500])
                cell = f"c{(b // 500) % 40}"
                if cell in open_alerts:
                    del open_alerts[cell]
                    client.notify(lc.resolve("SatmonHotSpotActive", {"cell_id": cell, "region": "r"}, ts_ms=T0 + b))
                else:
                    open_alerts[cell] = lc.fire("SatmonHotSpotActive", {"cell_id": cell, "region": "r"},
                                                ts_ms=T0 + b, severity="warning", summary="s", description="d")
                    client.notify(open_alerts[cell])
                await asyncio.sleep(0)               # the worker's loop yields between batches too
            rates.append(len(chunk) / (time.perf_counter() - t))
            if n == 0:
                await _until(lambda: client.queued == 0 and client.delivered > 0)
            if n == 1:
                await _until(lambda: client.failures >= 3, timeout=10)   # retried, each failure counted
                assert client.delivered == delivered_before and "Connect" in (client.last_error or "")
                failures_while_down = client.failures
                await asyncio.to_thread(am.start)     # back on the same port
        await _until(lambda: client.queued == 0, timeout=15)
        firing = {a["labels"]["cell_id"] for a in await asyncio.to_thread(am.alerts, alertname="SatmonHotSpotActive")}
        assert firing == set(open_alerts)             # the latest state of every alert arrived
        await client.stop()
        return rates, failures_while_down, client

    try:
        rates, failures, client = asyncio.run(main())
    finally:
        am.stop()
    up, down, back = rates
    print(f"\nevents/s with Alertmanager up {up:,.0f}, down {down:,.0f}, back {back:,.0f}; "
          f"{failures} failed posts while down, {client.delivered} alerts delivered, {client.dropped} dropped")
    assert down >= 0.75 * up                          # the stream does not wait for Alertmanager
    assert client.dropped == 0
