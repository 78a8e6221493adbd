"""Data drift over region windows and concept drift on the model's loss."""

from __future__ import annotations

import random

import pytest

from monitor.detection.alerting import AlertLifecycle
from monitor.detection.drift import ConceptDriftMonitor, DataDriftMonitor, change_point
from monitor.detection.windows import NETWORK_KPIS, Partial

T0 = 1_699_999_200_000
W = 60_000
LAT = NETWORK_KPIS.index("latency_ms")


def region_window(t, lat_mean, rng, n=2000):
    kpi = [0.0] * len(NETWORK_KPIS)
    kpi[LAT] = n * (lat_mean + rng.gauss(0, 0.6))      # window means of a busy region: tight
    kpi[NETWORK_KPIS.index("dl_mbps")] = n * (60 + rng.gauss(0, 0.5))
    return Partial(cell_id="north", region="north", start_ms=T0 + t * W, width_ms=W, sessions=n,
                   degraded=int(n * (0.05 + rng.gauss(0, 0.003))), kpi_sums=kpi)


def run(mon, lat_at, n=240, seed=0):
    rng = random.Random(seed)
    lc = AlertLifecycle()
    out = []
    for t in range(n):
        for a in mon.update(T0 + t * W, {"north": region_window(t, lat_at(t), rng)}, lc):
            out.append((t, a))
    return out, lc


@pytest.mark.parametrize("detector,budget", [("page_hinkley", 4), ("adwin", 8)])
def test_shift_is_detected_within_five_windows_with_before_after(detector, budget):
    # the default detector meets the 5-minute budget (4 windows + the window being closed);
    # ADWIN, selectable, is slower on one value a minute
    mon = DataDriftMonitor(detector=detector)
    hooks = []
    mon.on_drift.append(hooks.append)
    out, lc = run(mon, lambda t: 40 if t < 100 else 55)
    fires = [(t, a) for t, a in out if a.status == "firing" and a.labels["feature"] == "latency_ms"]
    assert fires, out
    t, a = fires[0]
    assert 100 <= t <= 100 + budget
    assert a.alertname == "SatmonDataDrift" and a.labels == {"region": "north", "feature": "latency_ms"}
    assert a.details["before"] == pytest.approx(40, abs=1) and a.details["after"] == pytest.approx(55, abs=2)
    assert "latency_ms" in a.description and "+" in a.description
    assert [h.feature for h in hooks].count("latency_ms") == 1          # one shift, one alert
    assert len([x for x in out if x[1].labels["feature"] != "latency_ms"]) == 0
    resolved = [t for t, a in out if a.status == "resolved"]
    assert resolved and resolved[0] >= t + 30                           # held for hold_ms, then resolved


@pytest.mark.parametrize("detector", ["page_hinkley", "adwin", "kswin"])
def test_stationary_stream_raises_no_drift(detector):
    mon = DataDriftMonitor(detector=detector, seed=1)
    for seed in range(3):
        out, _ = run(mon if seed == 0 else DataDriftMonitor(detector=detector, seed=1), lambda t: 40, n=600, seed=seed)
        assert out == []


def test_short_spike_is_not_drift_but_a_lasting_shift_is():
    out, _ = run(DataDriftMonitor(), lambda t: 80 if 100 <= t < 102 else 40)
    assert out == []


def test_immaterial_change_is_not_reported():
    mon = DataDriftMonitor(min_rel_change=0.5)
    out, _ = run(mon, lambda t: 40 if t < 100 else 46)                  # +15 %: detectable, immaterial
    assert out == []


def test_change_point_locates_the_split():
    assert change_point([0.0] * 30 + [1.0] * 10)[0] == 30


def _losses(mon, before, after, n=4000, cut=2500, seed=0, hold=None):
    rng = random.Random(seed)
    lc = AlertLifecycle()
    out = []
    for i in range(n):
        mean = before if i < cut else after
        loss = rng.expovariate(1 / mean)
        out += [(i, a) for a in mon.update("p3", loss, T0 + i * 1000, lc)]
    return out


def test_concept_drift_on_rising_loss_alerts_and_calls_the_hook():
    mon = ConceptDriftMonitor(hold_ms=600_000)
    events = []
    mon.on_concept_drift.append(events.append)
    out = _losses(mon, 0.3, 0.8)
    fires = [(i, a) for i, a in out if a.status == "firing"]
    assert len(fires) >= 1 and 2500 <= fires[0][0] <= 2800
    a = fires[0][1]
    assert a.alertname == "SatmonModelDrift" and a.kind == "concept_drift" and a.labels["partition"] == "p3"
    assert events and events[0].before == pytest.approx(0.3, abs=0.08) and events[0].after > 0.6
    assert any(a.status == "resolved" for _, a in out)                   # hold passed: resolved


def test_concept_drift_ignores_improvement_and_noise():
    assert _losses(ConceptDriftMonitor(), 0.8, 0.3) == []
    assert _losses(ConceptDriftMonitor(), 0.4, 0.4, seed=5) == []


def test_drift_events_kept_for_inspection_are_bounded_also_across_checkpoints():
    # the monitors ride in checkpoints: a worker running for months must not carry every drift it saw
    import pickle

    from monitor.detection.drift import EVENTS_KEPT

    mon = DataDriftMonitor(hold_ms=0)
    flips = EVENTS_KEPT + 16
    out, _ = run(mon, lambda t: 40 if (t // 60) % 2 == 0 else 55, n=60 * (flips + 1))
    fired = [a for _, a in out if a.status == "firing"]
    assert len(fired) > EVENTS_KEPT                                      # it kept detecting...
    assert len(mon.events) == EVENTS_KEPT                                # ...and kept only the latest
    assert mon.events[-1].detected_at_ms == max(a.details["detected_at_ms"] for a in fired)
    back = pickle.loads(pickle.dumps(mon))
    assert len(back.events) == EVENTS_KEPT and back.events.maxlen == EVENTS_KEPT
    state = mon.__getstate__()                                           # a checkpoint written before the bound
    state["events"] = list(mon.events) * 4
    old = DataDriftMonitor.__new__(DataDriftMonitor)
    old.__setstate__(state)
    assert len(old.events) == EVENTS_KEPT and old.events.maxlen == EVENTS_KEPT
    concept = pickle.loads(pickle.dumps(ConceptDriftMonitor()))
    assert concept.events.maxlen == EVENTS_KEPT
