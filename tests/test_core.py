"""The risk core: state, dedup, reasons, late labels without leakage, checkpoints, determinism."""

from __future__ import annotations

import copy
import pickle

import pytest

from monitor.core import COMPLAINT_WEIGHT, PartitionCore, _decode_state, _encode_state
from monitor.events import AppEvent, NetworkEvent, TicketEvent
from monitor.features import FEATURES, SubscriberState, apply_event, feature_vector, unpack

T0 = 1_740_000_000_000
MIN = 60_000


def net(i: int, sub: str = "s1", bad: bool = False, ts: int | None = None) -> NetworkEvent:
    return NetworkEvent(event_id=f"n{i}", subscriber_id=sub, ts_ms=ts or T0 + i * MIN, cell_id="c1", region="north",
                        radio="4G", service="video", rsrp_dbm=-122.0 if bad else -88.0, sinr_db=-5.0 if bad else 15.0,
                        dl_mbps=0.5 if bad else 60.0, ul_mbps=1.0, latency_ms=300.0 if bad else 25.0, jitter_ms=3.0,
                        packet_loss_pct=5.0 if bad else 0.1, call_drop=bad, video_stall_s=20.0 if bad else 0.0,
                        segment="prepaid")


def ticket(i: int, sub: str = "s1", action: str = "opened", ts: int | None = None) -> TicketEvent:
    return TicketEvent(event_id=f"t{i}", ticket_id="tk1", subscriber_id=sub, ts_ms=ts or T0 + i * MIN,
                       channel="call_center", category="network", action=action,
                       resolution_minutes=600.0 if action == "resolved" else None)


def survey(i: int, nps: int, sub: str = "s1", ts: int | None = None) -> AppEvent:
    return AppEvent(event_id=f"a{i}", session_id="x", subscriber_id=sub, ts_ms=ts or T0 + i * MIN,
                    kind="survey_answer", nps=nps)


def test_bad_network_raises_score_with_network_reasons():
    good, bad = PartitionCore(0), PartitionCore(0)
    emitted = []
    for i in range(20):
        good.process(net(i))
        s = bad.process(net(i, bad=True))
        if s is not None:
            emitted.append(s)
    s_good = good.model.contributions(feature_vector(good.states["s1"], T0 + 20 * MIN))[0]
    s_bad = bad.model.contributions(feature_vector(bad.states["s1"], T0 + 20 * MIN))[0]
    assert s_bad > 0.5 > 0.2 > s_good
    last = emitted[-1]
    assert last.at_risk and last.at_risk_since_ms is not None
    codes = [r.code for r in last.reasons]
    assert len(codes) == len(set(codes))
    codes = set(codes)
    assert codes and codes <= {"weak_coverage", "drops", "stalls", "latency", "throughput", "bad_sessions", "interference",
                               "worst_moment", "recent_moments", "burden"}
    assert [r.contribution for r in last.reasons] == sorted((r.contribution for r in last.reasons), reverse=True)
    assert any(ch.isdigit() for r in last.reasons for ch in r.text)


def test_duplicates_do_not_change_anything():
    a, b = PartitionCore(0), PartitionCore(0)
    evs = [net(i, bad=i % 3 == 0) for i in range(10)]
    for e in evs:
        a.process(e)
    for e in evs:
        b.process(e)
        b.process(e)  # re-delivered
    assert b.duplicates == 10
    assert _encode_state(a.states["s1"]) == _encode_state(b.states["s1"])


def test_state_is_compact_and_round_trips():
    core = PartitionCore(0)
    for i in range(50):
        core.process(net(i, bad=i % 2 == 0))
    core.process(ticket(60))
    core.process(survey(61, 3))
    blobs = core.take_dirty()
    assert set(blobs) == {"s1"}
    assert len(blobs["s1"]) <= 1024
    assert _decode_state(blobs["s1"]) == core.states["s1"]
    assert core.take_dirty() == {}


def test_state_loader_restores_a_subscriber():
    first = PartitionCore(0)
    for i in range(5):
        first.process(net(i, bad=True))
    store = first.take_dirty()
    second = PartitionCore(0, state_loader=store.get)
    second.process(net(5, bad=True))
    assert second.states["s1"].sessions > 5.0  # continued, not restarted


def _record_labels(core: PartitionCore) -> list[tuple[list[float], bool, float]]:
    seen: list[tuple[list[float], bool, float]] = []
    learn = core.model.learn

    def spy(x, y, weight=1.0, *, calibrate=True):
        seen.append((list(x), y, weight))
        return learn(x, y, weight, calibrate=calibrate)

    core.model.learn = spy
    return seen


def test_label_learns_the_features_from_before_its_own_event():
    core = PartitionCore(0)
    seen = _record_labels(core)
    core.process(net(1, bad=True))
    core.process(ticket(30))  # the complaint labels what the subscriber had lived through before it
    [(x, y, weight)] = seen
    assert y is True and weight == COMPLAINT_WEIGHT
    assert x[FEATURES.index("complaints")] == 0.0 and x[FEATURES.index("open_tickets")] == 0.0  # no leakage
    assert x[FEATURES.index("drops")] > 0 and x[FEATURES.index("worst_moment")] > 0
    assert core.states["s1"].complaints == 1.0  # the complaint itself is applied after learning
    assert (core.model.n_labels, core.model.n_positive) == (1, 1)


def test_late_label_joins_the_last_snapshot_before_it_within_the_horizon():
    core = PartitionCore(0)
    seen = _record_labels(core)
    core.process(net(1, bad=True))  # snapshot
    core.process(net(30))  # newer than the survey below: it arrives late
    core.process(survey(20, 3))
    assert len(seen) == 1 and seen[0][0] == unpack(core.states["s1"].snap_x) and seen[0][1] is True
    core.process(survey(0, 9, ts=T0 - MIN))  # older than every snapshot: dropped and counted
    core.process(ticket(31 * 60, action="resolved"))  # not a label; the subscriber's newest event
    core.process(survey(26 * 60, 9))  # late, and 26 h after the snapshot: beyond the 24 h horizon
    assert len(seen) == 1 and core.labels_dropped == 2


def test_detractor_and_promoter_labels():
    core = PartitionCore(0)
    core.process(net(1))
    core.process(survey(2, 9))
    core.process(net(200))
    core.process(survey(201, 2))
    assert (core.model.n_labels, core.model.n_positive) == (2, 1)


def test_checkpoint_restores_learning():
    core = PartitionCore(0)
    for k in range(30):
        core.process(net(k * 100, sub=f"s{k}", bad=k % 2 == 0))
        core.process(ticket(k * 100 + 5, sub=f"s{k}") if k % 2 == 0 else survey(k * 100 + 5, 9, sub=f"s{k}"))
    assert core.model.n_labels == 30
    other = PartitionCore(0)
    other.restore(core.checkpoint())
    assert other.model.n_labels == 30 and other.model._w == core.model._w
    pickle.loads(pickle.dumps(other))


def test_deterministic_and_input_not_mutated():
    evs = [net(i, sub=f"s{i % 7}", bad=i % 5 == 0) for i in range(200)] + [ticket(300, sub="s1")]
    frozen = [copy.copy(e) for e in evs]
    runs = []
    for _ in range(2):
        core = PartitionCore(0, clock_ms=lambda: 0)
        runs.append([(s.subscriber_id, s.score, [r.code for r in s.reasons]) for s in core.process_batch(evs)])
    assert runs[0] == runs[1] and runs[0]
    assert evs == frozen


def test_ttl_evicts_quiet_subscribers():
    class S:
        state_ttl_days = 1.0

    core = PartitionCore(0, settings=S())
    core.process(net(1, sub="quiet"))
    core.process(net(2, sub="busy", ts=T0 + 3 * 86_400_000))
    assert core.evict_quiet() == 1
    assert core.take_dirty()["quiet"] is None


def test_unseen_event_fields_tolerated():
    st = SubscriberState(last_ts=T0)
    apply_event(st, AppEvent(event_id="x", session_id="y", subscriber_id="s", ts_ms=T0, kind="error",
                             feature="brand-new-area"))
    assert len(feature_vector(st, T0)) == len(FEATURES)


@pytest.mark.slow
def test_replay_and_core_agree(tmp_path):
    from monitor.evaluation import partition_of, read_events, replay
    from monitor.simulate import SimConfig, write_files

    write_files(SimConfig(subscribers=300, hours=0.5, seed=3), tmp_path)
    events, _ = read_events(tmp_path)
    via_replay = [(s.subscriber_id, s.score) for s in replay(events, partitions=2)]
    cores = [PartitionCore(p, clock_ms=lambda: 0) for p in range(2)]
    direct = []
    for e in events:
        s = cores[partition_of(e.subscriber_id, 2)].process(e)
        if s:
            direct.append((s.subscriber_id, s.score))
    assert via_replay == direct and len(direct) > 100


def test_only_survey_answers_move_the_calibrator():
    core = PartitionCore(0)
    core.process(net(1, bad=True))
    core.process(ticket(30))  # a complaint teaches what makes people unhappy, not how many are
    assert (core.model._ca, core.model._cb) == (1.0, 0.0) and core.model.n_labels == 1
    core.process(survey(40, 2))
    assert (core.model._ca, core.model._cb) != (1.0, 0.0) and core.model.n_labels == 2


def test_state_cache_is_bounded_when_a_table_backs_it():
    """With a state table behind it the core keeps at most ``cache_max`` subscribers in memory;
    the quietest clean ones go, come back from the table on their next event, and nothing is lost."""
    table: dict[str, bytes] = {}
    settings = type("S", (), {"state_cache_per_partition": 10})()
    bounded = PartitionCore(0, settings=settings, state_loader=table.get)
    unbounded = PartitionCore(0)
    for rnd in range(3):
        for k in range(40):
            ev = net(rnd * 100 + k, sub=f"s{k}", bad=k % 3 == 0)
            bounded.process(ev)
            unbounded.process(ev)
            for sid, blob in bounded.take_dirty().items():  # what the worker does after each batch
                table[sid] = blob
            assert len(bounded.states) <= 11
    assert bounded.cache_dropped > 0
    for k in range(40):
        sid = f"s{k}"
        assert _decode_state(table[sid]) == unbounded.states[sid]
