"""The risk core: state, dedup, reasons, late labels without leakage, checkpoints, determinism."""

from __future__ import annotations

import copy
import pickle

import pytest

from monitor.scoring.core import PartitionCore, _decode_state, _encode_state
from monitor.records.events import AppEvent, NetworkEvent, TicketEvent, decode
from monitor.scoring.features import FEATURES, SubscriberState, apply_event, feature_vector
from monitor.scoring.risk import LabelRecord, RiskModel, decode_label, encode_label

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
    s_good = good.model.score(feature_vector(good.states["s1"], T0 + 20 * MIN))
    s_bad = bad.model.score(feature_vector(bad.states["s1"], T0 + 20 * MIN))
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


HOUR = 60 * MIN


def _record_labels(core: PartitionCore) -> list[LabelRecord]:
    """The labels a core produces, through its real seam (``label_sink``), still learned."""
    seen: list[LabelRecord] = []

    def sink(rec: LabelRecord) -> None:
        seen.append(rec)
        core.model.learn(rec)

    core.label_sink = sink
    return seen


def test_label_is_the_snapshot_before_the_outcome_and_matures_after_the_horizon():
    core = PartitionCore(0)
    seen = _record_labels(core)
    core.process(net(1, bad=True))  # the snapshot: what the subscriber had lived through
    core.process(ticket(0, ts=T0 + 10 * HOUR))  # a complaint 10 h later
    core.process(net(2, ts=T0 + 20 * HOUR))
    assert seen == []  # not before the 24 h horizon has passed
    core.process(net(3, ts=T0 + 25 * HOUR))
    [rec] = seen
    assert rec.y == [1, 0, 0] and rec.ts_ms == T0 + MIN
    x = rec.x
    assert x[FEATURES.index("complaints")] == 0.0 and x[FEATURES.index("open_tickets")] == 0.0  # no leakage
    assert x[FEATURES.index("drops")] > 0 and x[FEATURES.index("worst_moment")] > 0
    assert core.model.n_labels == 1 and core.model.n_positive["complaint"] == 1
    assert core.states["s1"].snap_ts == T0 + 25 * HOUR  # the next snapshot is pending


def test_a_snapshot_taken_before_features_were_added_matures_into_a_label_of_the_full_table():
    """A state written by a worker whose table was shorter (the account features came after 39
    others) holds a shorter snapshot: its label is learned, the new features at zero."""
    core = PartitionCore(0)
    seen = _record_labels(core)
    core.process(net(1, bad=True))
    st = core.states["s1"]
    old = len(FEATURES) - 4
    st.snap_x = st.snap_x[:4 * old]
    core.process(ticket(0, ts=T0 + 10 * HOUR))
    core.process(net(3, ts=T0 + 25 * HOUR))
    [rec] = seen
    assert len(rec.x) == len(FEATURES) and rec.x[old:] == [0.0] * 4 and rec.y == [1, 0, 0]
    assert core.model.n_labels == 1


def test_the_accounts_dates_on_app_and_care_records_become_account_features():
    """``customer_since_ms`` / ``contract_end_ms`` (decoded as the worker decodes them) set the
    account features; a prepaid record (no contract end) clears a contract; records without the
    fields leave the account as it was."""
    day = 24 * HOUR
    core = PartitionCore(0)
    line = (b'{"event_id":"a%d","session_id":"x","subscriber_id":"s1","ts_ms":%d,"kind":"self_service_success",'
            b'"customer_since_ms":%d,"contract_end_ms":%s}')
    core.process(decode("app_event.v2", line % (1, T0, T0 - 400 * day, b"%d" % (T0 + 20 * day))))
    core.process(net(1))
    st = core.states["s1"]
    x = dict(zip(FEATURES, feature_vector(st, T0 + MIN)))
    assert x["in_contract"] == 1.0 and x["out_of_contract"] == 0.0
    assert 0.6 < x["renewal_due"] < 0.7 and 0.45 < x["new_customer"] < 0.5
    later = dict(zip(FEATURES, feature_vector(st, T0 + 50 * day)))
    assert later["in_contract"] == 0.0 and later["renewal_due"] == 0.0 and 0.7 < later["out_of_contract"] < 0.8
    core.process(ticket(2, ts=T0 + 2 * MIN))   # no account fields: the account stays
    st = core.states["s1"]
    assert (st.since_ms, st.contract_end_ms) == (T0 - 400 * day, T0 + 20 * day)
    core.process(decode("app_event.v2", line % (2, T0 + 3 * MIN, T0 - 400 * day, b"null")))
    x = dict(zip(FEATURES, feature_vector(core.states["s1"], T0 + 4 * MIN)))
    assert x["in_contract"] == x["renewal_due"] == x["out_of_contract"] == 0.0 and x["new_customer"] > 0


def test_outcomes_after_the_horizon_and_promoters_are_negatives_detractors_positives():
    core = PartitionCore(0)
    seen = _record_labels(core)
    core.process(net(1))
    core.process(survey(0, 9, ts=T0 + 2 * HOUR))  # a promoter: not an outcome
    core.process(ticket(0, ts=T0 + 30 * HOUR))  # after the first snapshot's horizon
    core.process(survey(1, 2, ts=T0 + 31 * HOUR))  # a detractor, but no snapshot is pending
    core.process(net(2, ts=T0 + 32 * HOUR))
    core.process(survey(2, 3, ts=T0 + 40 * HOUR))
    core.process(net(3, ts=T0 + 60 * HOUR))
    assert [r.y for r in seen] == [[0, 0, 0], [0, 1, 0]]


def test_quiet_subscribers_labels_mature_by_event_time_sweep():
    core = PartitionCore(0)
    seen = _record_labels(core)
    core.process(net(1, sub="quiet", bad=True))
    core.process(ticket(0, sub="quiet", ts=T0 + 3 * HOUR))
    for h in range(1, 28):
        core.process(net(h, sub="busy", ts=T0 + h * HOUR))
    assert [r.y for r in seen if r.ts_ms == T0 + MIN] == [[1, 0, 0]]  # matured without a next event


def test_one_model_whatever_partitions_a_worker_owns():
    """Two cores sharing one model learn exactly what one model fed from a labels topic learns."""
    evs = []
    for k in range(12):
        evs += [net(k, sub=f"s{k}", bad=k % 3 == 0), ticket(k, sub=f"s{k}", ts=T0 + (5 + k) * HOUR)]
    evs += [net(100 + k, sub=f"s{k}", ts=T0 + 30 * HOUR + k * MIN) for k in range(12)]
    evs.sort(key=lambda e: e.ts_ms)
    shared = RiskModel()
    cores = [PartitionCore(p, model=shared) for p in range(2)]
    topic: list[bytes] = []
    producers = [PartitionCore(p, label_sink=lambda r: topic.append(encode_label(r))) for p in range(2)]
    for e in evs:
        p = int(e.subscriber_id[1:]) % 2
        cores[p].process(e)
        producers[p].process(e)
    assert shared.n_labels == 12 and cores[0].model is cores[1].model
    consumer = RiskModel()  # any worker reading the labels topic
    for blob in topic:
        consumer.learn(decode_label(blob))
    assert consumer.to_state() == shared.to_state()
    assert producers[0].model.n_labels == 0  # with a sink, cores never learn on their own


def test_checkpoint_restores_learning():
    core = PartitionCore(0)
    for k in range(30):
        core.process(net(k, sub=f"s{k}", bad=k % 2 == 0))
        if k % 2 == 0:
            core.process(ticket(k, sub=f"s{k}", ts=T0 + 2 * HOUR))
    core.process(net(99, sub="late", ts=T0 + 30 * HOUR))
    assert core.model.n_labels == 30
    other = PartitionCore(0)
    other.restore(core.checkpoint())
    assert other.model.n_labels == 30 and other.model.to_state() == core.model.to_state()
    pickle.loads(pickle.dumps(other))
    shared = RiskModel()
    behind = PartitionCore(1, model=shared)
    behind.restore(core.checkpoint())  # a shared model is brought forward in place
    assert behind.model is shared and shared.n_labels == 30
    behind.restore(PartitionCore(2).checkpoint())  # ... never back
    assert shared.n_labels == 30


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
    core = PartitionCore(0, state_ttl_days=1.0)
    core.process(net(1, sub="quiet"))
    core.process(net(2, sub="busy", ts=T0 + 3 * 86_400_000))
    assert core.evict_quiet() == 1
    assert core.take_dirty()["quiet"] is None


def test_unseen_event_fields_tolerated():
    st = SubscriberState(last_ts=T0)
    apply_event(st, AppEvent(event_id="x", session_id="y", subscriber_id="s", ts_ms=T0, kind="error",
                             feature="brand-new-area"))
    assert len(feature_vector(st, T0)) == len(FEATURES)


def test_state_cache_is_bounded_when_a_table_backs_it():
    """With a state table behind it the core keeps at most ``cache_max`` subscribers in memory;
    the quietest clean ones go, come back from the table on their next event, and nothing is lost."""
    table: dict[str, bytes] = {}
    bounded = PartitionCore(0, state_cache_per_partition=10, state_loader=table.get)
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


def test_settings_map_onto_the_cores_and_the_models_keyword_arguments(tmp_path):
    """Settings reach a core once, through its keyword arguments (River's way), and the label
    horizon setting is the process model's: it was read into an attribute nothing used."""
    from monitor.config import load
    from monitor.pipeline import default_core_factory

    s = load({}, at_risk_threshold="0.7", state_ttl_days="3", label_horizon_hours="48",
             state_cache_per_partition="1000")
    core = default_core_factory(s)(0, lambda sid: None)
    assert (core.at_risk_threshold, core.state_ttl_days, core.state_cache_per_partition) == (0.7, 3.0, 1000)
    assert core.model.learn_horizon_hours == 48.0 and core.label_horizon_ms == 48 * 3_600_000
    assert PartitionCore(0).label_horizon_ms == 24 * 3_600_000
    # the settings' defaults and the core's keyword defaults are one fact written twice (config.py
    # cannot import the core): a default changed in one place only fails here
    import inspect

    defaults, sig = load({}), inspect.signature(PartitionCore)
    assert {n: getattr(defaults, n) for n in PartitionCore.SETTINGS} == {
        n: sig.parameters[n].default for n in PartitionCore.SETTINGS}


def test_fast_round_is_round_bit_for_bit():
    """An emitted score's numbers are rounded by ``fast_round``: the builtin's float, sign of zero
    and ties (to even, on the exact binary value) included."""
    import math
    import random
    import struct

    from monitor.scoring.features import fast_round

    rnd = random.Random(5)
    values = [0.0, -0.0, 1e-5, -1e-5, 5e-5, -5e-5, 0.03125, 0.5, 1.5, 2.5, -121.25, 1 - 1e-9, 5e-324,
              math.inf, -math.inf, 1e300, -1e300]
    for _ in range(20_000):
        scale = 10 ** rnd.randrange(5)
        values += [rnd.random(), rnd.uniform(-200, 200), (rnd.randrange(-10**7, 10**7) + 0.5) / scale,
                   rnd.randrange(-2**20, 2**20) / 2 ** rnd.randrange(30),
                   math.ldexp(rnd.random(), rnd.randrange(-60, 40)), struct.unpack("<d", rnd.randbytes(8))[0]]
    for x in values:
        for ndigits in range(5):
            got, want = fast_round(x, ndigits), round(x, ndigits)
            assert struct.pack("<d", got) == struct.pack("<d", want) or (got != got and want != want), (x, ndigits)


def test_feature_vector_without_care_or_app_is_the_full_table():
    """feature_vector writes a care (app) feature as the constant 0.0 while the subscriber has no
    ticket (app event) yet, and an account feature while it has neither, and drops the network
    factors (1.0) at the instant of the last session: the same floats, sign of zero included, as
    the table's expressions."""
    import struct

    from monitor.scoring import features as F

    full_items = F._vector_source(())
    src = F._FEATURE_VECTOR_SOURCE
    for absent in (F._CARE + F._APP + F._ACCOUNT, F._CARE, F._APP, ()):
        for at_last_session in (True, False):
            items = F._vector_source(absent, at_last_session)
            assert f"[{items}]" in src
            src = src.replace(f"[{items}]", f"[{full_items}]")
    namespace = dict(vars(F))
    exec(compile(src, "<full>", "exec"), namespace)  # noqa: S102
    full = namespace["feature_vector"]
    assert src != F._FEATURE_VECTOR_SOURCE
    # app and care records with the account's dates, as the CRM-enriched feed writes them and the
    # worker decodes them: a contract ending in ten days (renewal due, then out of contract)
    day = 24 * 60 * MIN
    enriched = (b'{"event_id":"a%d","session_id":"x","subscriber_id":"%s","ts_ms":%d,"kind":"survey_answer",'
                b'"nps":%d,"customer_since_ms":%d,"contract_end_ms":%d}')
    states = {sub: SubscriberState(last_ts=T0) for sub in "abcde"}
    seen, at_session = set(), set()
    n = len(F.FEATURES)
    for i in range(60):
        apply_event(states["a"], net(i, "a", bad=i % 7 == 0))
        apply_event(states["b"], net(i, "b", bad=i % 3 == 0) if i % 5 else ticket(i, "b", ("opened", "resolved")[i % 2]))
        apply_event(states["c"], net(i, "c", bad=i % 4 == 0) if i % 6 else survey(i, i % 11, "c") if i % 12 else
                    AppEvent(event_id=f"f{i}", session_id="x", subscriber_id="c", ts_ms=T0 + i * MIN, kind="error",
                             feature="network_check"))
        apply_event(states["d"], net(i, "d", bad=i % 2 == 0) if i % 4 else
                    ticket(i, "d") if i % 8 else survey(i, 3, "d"))
        apply_event(states["e"], net(i, "e", bad=i % 5 == 0) if i % 9 != 4 else
                    decode("app_event.v2", enriched % (i, b"e", T0 + i * MIN, i % 11, T0 - 200 * day, T0 + 10 * day)))
        for st in states.values():
            seen.add((bool(st.care_ts), bool(st.app_ts), bool(st.since_ms)))
            for dt in (0, MIN, 5 * day, 30 * day):
                now = st.last_ts + dt
                at_session.add((bool(st.care_ts), bool(st.app_ts), now == st.net_ts))
                assert struct.pack(f"<{n}d", *feature_vector(st, now)) == struct.pack(f"<{n}d", *full(st, now))
    assert seen == {(False, False, False), (True, False, False), (False, True, False), (True, True, False),
                    (False, True, True)}
    assert len(at_session) == 8   # each case at and after the instant of the last session
    x = dict(zip(F.FEATURES, feature_vector(states["e"], states["e"].last_ts + 5 * day)))
    assert x["in_contract"] == 1.0 and x["renewal_due"] > 0 and x["new_customer"] > 0


def test_care_and_app_decays_are_the_plain_decay_of_every_counter():
    """apply_event decays a ticket's (app event's) counters only when time has passed and leaves a
    counter at 0.0 unwritten: the same state, float for float, as decaying every care (app) counter
    by ``_decay`` first and then applying the event with no time passed. Tickets of every action and
    app events of every kind, with gaps of zero, minutes, days and backwards, amid network sessions."""
    import random

    import msgspec

    from monitor.scoring import features as F

    care = {"complaints": F.CARE_HALF_LIFE_MS, "billing": F.CARE_HALF_LIFE_MS, "reopened": F.CARE_HALF_LIFE_MS,
            "escalated": F.CARE_HALF_LIFE_MS, "fcr_fail": F.CARE_HALF_LIFE_MS, "complaint_d": F.DOSE_HALF_LIFE_MS,
            "billing_d": F.DOSE_HALF_LIFE_MS, "handling_d": F.DOSE_HALF_LIFE_MS, "handling_g": F.GRUDGE_HALF_LIFE_MS}
    app = {"app_fail": F.APP_HALF_LIFE_MS, "bot_human": F.APP_HALF_LIFE_MS, "checks_d": F.DOSE_HALF_LIFE_MS,
           "app_d": F.DOSE_HALF_LIFE_MS}

    def plain(st: SubscriberState, ev: TicketEvent | AppEvent) -> SubscriberState:
        ref = copy.copy(st)
        stamp, counters = ("care_ts", care) if isinstance(ev, TicketEvent) else ("app_ts", app)
        last = getattr(ref, stamp)
        dt = ev.ts_ms - last if last else 0
        for name, half_life in counters.items():
            setattr(ref, name, getattr(ref, name) * F._decay(dt, half_life))
        setattr(ref, stamp, max(ev.ts_ms, last))
        apply_event(ref, ev)   # no time passed for its counters now: the event's own increments
        return ref

    encode = msgspec.msgpack.encode
    rnd = random.Random(4)
    actions = ("opened", "updated", "escalated", "reopened", "resolved")
    kinds = ("self_service_success", "self_service_failure", "bot_to_human", "error", "survey_answer")
    st, ts, checked = SubscriberState(last_ts=T0), T0, 0
    for i in range(3000):
        ts += rnd.choice((0, 0, MIN, 30 * MIN, 26 * HOUR, 9 * 24 * HOUR, -5 * MIN))
        r = rnd.random()
        if r < 0.5:
            apply_event(st, net(i, bad=rnd.random() < 0.3, ts=ts))
            continue
        if r < 0.75:
            action = rnd.choice(actions)
            ev = TicketEvent(event_id=f"t{i}", ticket_id="tk", subscriber_id="s1", ts_ms=ts, channel="chat",
                             category=rnd.choice(("network", "billing")), action=action,
                             resolution_minutes=rnd.choice((30.0, 600.0, 3000.0)) if action == "resolved" else None,
                             first_contact_resolution=rnd.choice((True, False, None)))
        else:
            kind = rnd.choice(kinds)
            ev = AppEvent(event_id=f"a{i}", session_id="x", subscriber_id="s1", ts_ms=ts, kind=kind,
                          feature=rnd.choice(("network_check", "billing", None)),
                          nps=rnd.randrange(11) if kind == "survey_answer" else None)
        want = plain(st, ev)
        apply_event(st, ev)
        assert encode(st) == encode(want), (i, ev)
        checked += 1
    assert checked > 1000 and st.complaints and st.handling_g and st.app_d and st.bot_human


def test_a_sessions_decays_are_each_half_life_even_down_to_zero():
    """A bad session, then a good one 50 days later: the recent moments (1 h half-life) decay to
    exactly 0.0 and are written so, the burden (8 h) and the grudge (14 days) by their own factors;
    with no time passed a session decays nothing."""
    st = SubscriberState(last_ts=T0)
    apply_event(st, net(0, bad=True, ts=T0))
    apply_event(st, net(1, bad=True, ts=T0))   # the same instant: the factors are 1.0
    before = copy.copy(st)
    assert before.recent_sev and before.burden and before.net_g
    gap = 50 * 24 * HOUR
    apply_event(st, net(2, ts=T0 + gap))
    assert 0.5 ** (gap / HOUR) == 0.0 and st.recent_sev == 0.0
    assert st.burden == before.burden * 0.5 ** (gap / (8 * HOUR)) > 0.0
    assert st.net_g == before.net_g * 0.5 ** (gap / (14 * 24 * HOUR)) > 0.0
    assert st.sessions == before.sessions * 0.5 ** (gap / (24 * HOUR)) + 1.0
