"""One degraded-session policy: the NOC's windows and the risk features count the same sessions.

Sessions come from the simulator's producer (``simulate.generate``) and are decoded as the worker
decodes them; the windows' inlined copy of the policy and the features' per-subscriber counters
must agree with :meth:`DegradedSessionPolicy.is_degraded` session by session.
"""

from __future__ import annotations

import functools
import pickle

import msgspec
import pytest

from monitor.records import events as ev
from monitor.sim import simulate
from monitor.records.degraded import DEGRADED, DegradedSessionPolicy
from monitor.scoring.features import SubscriberState, apply_event, session_severity
from monitor.records.topics import NETWORK_EVENTS
from monitor.detection.windows import WindowAggregator


@functools.lru_cache(maxsize=1)
def sessions() -> tuple[ev.NetworkEvent, ...]:
    config = simulate.SimConfig(subscribers=1500, hours=1.0, seed=5, malformed_share=0.0,
                                duplicate_share=0.0, late_share=0.0, scenario="default")
    return tuple(ev.decode("network_event.v1", value)
                 for topic, _key, value in simulate.generate(config, simulate.Simulator(config))
                 if topic == NETWORK_EVENTS)


def test_the_simulated_hour_has_both_kinds_of_session():
    flags = [DEGRADED.is_degraded(s) for s in sessions()]
    assert 0 < sum(flags) < len(flags)


@pytest.mark.parametrize("policy", [DEGRADED, DegradedSessionPolicy(max_latency_ms=80.0, min_dl_mbps=20.0),
                                    DegradedSessionPolicy(max_loss_pct=0.5, throughput_services=frozenset({"web"}))])
def test_windows_count_exactly_the_sessions_the_policy_calls_degraded(policy):
    agg = WindowAggregator(width_ms=60_000, allowed_lateness_ms=0, degraded=policy)
    agg.add_batch(sessions(), (), lambda _sub: None)
    partials = agg.close() + agg.flush()
    want: dict[tuple[str, int], int] = {}
    for s in sessions():
        if policy.is_degraded(s):
            key = (s.cell_id, s.ts_ms - s.ts_ms % 60_000)
            want[key] = want.get(key, 0) + 1
    got = {(p.cell_id, p.start_ms): p.degraded for p in partials if p.degraded}
    assert got == want


def test_features_count_and_grade_the_same_sessions():
    for s in sessions()[:3000]:
        st = SubscriberState(last_ts=s.ts_ms - 1)
        apply_event(st, s)
        sev, what = session_severity(s)
        assert (st.bad > 0) == DEGRADED.is_degraded(s)
        assert (sev > 0) <= DEGRADED.is_degraded(s)  # only degraded sessions are felt
        assert bool(what) == (sev > 0)


def test_a_call_drop_or_stall_is_always_degraded_whatever_the_thresholds():
    s = sessions()[0]
    lax = DegradedSessionPolicy(max_latency_ms=1e9, max_loss_pct=100.0, min_sinr_db=-100.0, min_dl_mbps=0.0)
    assert not lax.is_degraded(msgspec.structs.replace(s, call_drop=False, video_stall_s=0.0))
    assert lax.is_degraded(msgspec.structs.replace(s, call_drop=True))
    assert lax.is_degraded(msgspec.structs.replace(s, video_stall_s=0.5))


def test_the_policy_pickles_and_is_immutable():
    assert pickle.loads(pickle.dumps(DEGRADED)) == DEGRADED
    with pytest.raises(AttributeError):
        DEGRADED.max_latency_ms = 1.0  # type: ignore[misc]
