"""Outreach records, the store every worker builds from satmon-outreach, list eligibility, the
hold-out control group and the effect report."""

from __future__ import annotations

import msgspec
import pytest

from monitor.records.events import decode
from monitor.outreach.store import (OutreachPolicy, OutreachRecord, OutreachStore, decode_record, effect_report,
                              encode_record, outcome_for_event)

DAY = 86_400_000
T0 = 1_700_000_000_000


def contact(sid, ts, outcome="reached", rid=None):
    return OutreachRecord(record_id=rid or f"c-{sid}-{ts}", kind="contact", subscriber_id=sid, ts_ms=ts, by="ana",
                          channel="call", outcome=outcome)


def consent(sid, ts, dnc, rid=None):
    return OutreachRecord(record_id=rid or f"k-{sid}-{ts}", kind="consent", subscriber_id=sid, ts_ms=ts,
                          do_not_contact=dnc)


def outcome(sid, ts, event):
    return OutreachRecord(record_id=f"o-{sid}-{ts}-{event}", kind="outcome", subscriber_id=sid, ts_ms=ts, event=event)


def test_records_validate_and_round_trip():
    rec = contact("p1", T0)
    assert decode_record(encode_record(rec)) == rec
    with pytest.raises(msgspec.ValidationError, match="channel"):
        decode_record(b'{"record_id":"r","kind":"contact","subscriber_id":"p1","ts_ms":1}')
    with pytest.raises(msgspec.ValidationError):
        decode_record(b'{"record_id":"r","kind":"contact","subscriber_id":"p1","ts_ms":1,"channel":"pigeon","outcome":"reached"}')
    with pytest.raises(msgspec.ValidationError, match="do_not_contact"):
        decode_record(b'{"record_id":"r","kind":"consent","subscriber_id":"p1","ts_ms":1}')


def test_store_ignores_the_same_record_twice():
    store = OutreachStore()
    assert store.apply(contact("p1", T0))
    assert not store.apply(contact("p1", T0))  # the copy coming back from the topic
    assert len(store.contacts("p1")) == 1 and store.last_contact_ms("p1") == T0


def test_store_keeps_a_bounded_newest_history_per_subscriber_and_still_recognises_copies():
    # every complaint and detractor answer becomes an outcome record: kept without bound, a
    # long-running worker's store grew for ever (seen in the soak's heap snapshots)
    store = OutreachStore(max_contacts=4, max_outcomes=8)
    for sid in ("p1", "p2"):
        for i in range(100):
            assert store.apply(outcome(sid, T0 + i * DAY, "complaint"))
    kept = store.outcomes("p1")
    assert [ts for ts, _ in kept] == [T0 + i * DAY for i in range(92, 100)] and store.trimmed == 2 * 92
    assert not store.apply(outcome("p1", T0 + 99 * DAY, "complaint"))      # a copy of a kept one
    assert not store.apply(outcome("p1", T0 + 3 * DAY, "detractor"))       # older than all kept: dropped
    assert store.apply(outcome("p1", T0 + 95 * DAY, "detractor"))          # late but within: kept, in order
    assert store.outcomes("p1")[3] == (T0 + 95 * DAY, "detractor") and len(store.outcomes("p1")) == 8
    for i in (5, 1, 9, 7, 3, 8, 2):                                        # out of order
        store.apply(contact("p1", T0 + i))
    assert [c.ts_ms for c in store.contacts("p1")] == [T0 + 5, T0 + 7, T0 + 8, T0 + 9]
    assert store.last_contact_ms("p1") == T0 + 9
    assert not store.apply(contact("p1", T0 + 8))
    assert not store.apply(contact("p1", T0, outcome="opted_out"))        # too old to keep, but honoured
    assert store.is_dnc("p1")
    assert store.apply(consent("p1", T0 + 20, False)) and not store.apply(consent("p1", T0 + 20, False))
    assert not store.is_dnc("p1")


def test_a_full_outcome_history_costs_about_16_bytes_per_outcome():
    # kept as (ts, event, record id) tuples they took ~190 bytes each: ~12 KB per subscriber at the
    # bound of 64, a bound the soaks saw filling for as long as they ran
    import tracemalloc

    records = [outcome(f"p{s}", T0 + i * 60_000, ("complaint", "detractor")[i % 2]) for s in range(200)
               for i in range(64)]
    store = OutreachStore()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for r in records:
            assert store.apply(r)
        per_subscriber = (tracemalloc.get_traced_memory()[0] - before) / 200
    finally:
        tracemalloc.stop()
    assert per_subscriber < 64 * 16 + 400   # the pairs, the array and dict slot, the id key is shared
    assert store.outcomes("p3")[:2] == [(T0, "complaint"), (T0 + 60_000, "detractor")]
    assert len(store.outcomes("p3")) == 64 and store.trimmed == 0
    assert not store.apply(records[64 + 5])                               # a copy, recognised by its id hash
    # the time is packed with the kind into 64 bits: a record out of range is refused at decoding,
    # where the outreach feeder counts it as invalid, not when the store packs it
    with pytest.raises(msgspec.ValidationError, match="ts_ms"):
        decode_record(encode_record(outcome("p1", T0, "complaint")).replace(str(T0).encode(), str(1 << 62).encode()))


def test_latest_consent_wins_in_any_order_and_opt_out_sets_dnc():
    store = OutreachStore()
    store.apply(consent("p1", T0 + 10, False))
    store.apply(consent("p1", T0, True))  # older, arrives later
    assert not store.is_dnc("p1")
    store.apply(contact("p2", T0, outcome="opted_out"))
    assert store.is_dnc("p2") and store.dnc_count == 1


def test_holdout_is_deterministic_keyed_and_close_to_its_share():
    a = OutreachPolicy(holdout_share=0.2, holdout_key=b"a" * 16)
    b = OutreachPolicy(holdout_share=0.2, holdout_key=b"a" * 16)
    c = OutreachPolicy(holdout_share=0.2, holdout_key=b"c" * 16)
    ids = [f"p{i}" for i in range(20_000)]
    ga = [a.in_control(s) for s in ids]
    assert ga == [b.in_control(s) for s in ids]
    assert ga != [c.in_control(s) for s in ids]
    assert 0.19 < sum(ga) / len(ids) < 0.21
    assert not any(OutreachPolicy(holdout_share=0.0).in_control(s) for s in ids[:1000])
    # Growing the share only adds subscribers to the control group (nobody switches sides back).
    bigger = OutreachPolicy(holdout_share=0.3, holdout_key=b"a" * 16)
    assert all(bigger.in_control(s) for s, g in zip(ids, ga) if g)


def test_suppression_reasons_in_order_of_precedence():
    policy = OutreachPolicy(holdout_share=0.0, fatigue_ms=7 * DAY)
    store = OutreachStore()
    assert policy.suppression("p1", store, now_ms=T0) is None
    store.apply(contact("p1", T0))
    assert policy.suppression("p1", store, now_ms=T0 + 6 * DAY) == "recently_contacted"
    assert policy.suppression("p1", store, now_ms=T0 + 8 * DAY) is None
    assert policy.suppression("p1", store, now_ms=T0 + 8 * DAY, not_contacted_since_ms=T0 - DAY) == "contacted_since_filter"
    store.apply(consent("p1", T0, True))
    assert policy.suppression("p1", store, now_ms=T0 + 8 * DAY) == "do_not_contact"
    everyone = OutreachPolicy(holdout_share=0.999999)
    assert everyone.suppression("p7", OutreachStore(), now_ms=T0) == "control_group"


def test_outcome_records_from_input_events():
    opened = decode("ticket_event.v1", b'{"event_id":"e1","ticket_id":"t","subscriber_id":"p1","ts_ms":1700000000000,'
                                       b'"channel":"chat","category":"network","action":"opened"}')
    updated = msgspec.structs.replace(opened, action="updated")
    survey = decode("app_event.v1", b'{"event_id":"e2","session_id":"x","subscriber_id":"p1","ts_ms":1700000000000,'
                                    b'"kind":"survey_answer","nps":4}')
    happy = msgspec.structs.replace(survey, nps=9)
    assert outcome_for_event(opened).event == "complaint" and outcome_for_event(opened).record_id == "outcome:e1"
    assert outcome_for_event(survey).event == "detractor"
    assert outcome_for_event(updated) is None and outcome_for_event(happy) is None


def test_effect_report_compares_treatment_and_control():
    policy = OutreachPolicy(holdout_share=0.5, holdout_key=b"z" * 16)
    ids = [f"p{i}" for i in range(400)]
    control = [s for s in ids if policy.in_control(s)]
    treated = [s for s in ids if not policy.in_control(s)]
    store = OutreachStore()
    cohort = []
    for i, sid in enumerate(control):  # half of the control group complains within the horizon
        cohort.append((sid, T0, True))
        if i % 2 == 0:
            store.apply(outcome(sid, T0 + DAY, "complaint"))
    for i, sid in enumerate(treated):  # a quarter of the treated group; half recovered; 10 contacted
        cohort.append((sid, T0, i % 2 == 0))
        if i % 4 == 0:
            store.apply(outcome(sid, T0 + DAY, "detractor"))
        if i < 10:
            store.apply(contact(sid, T0 + 1))
    store.apply(outcome(control[1], T0 + 40 * DAY, "complaint"))  # outside the horizon: not counted
    store.apply(outcome(control[3], T0 - DAY, "complaint"))       # before becoming at risk: not counted
    store.apply(consent(treated[1], T0, True))                     # do-not-contact: left out
    report = effect_report(cohort, store, policy, horizon_ms=30 * DAY)
    g = report["groups"]
    assert g["control"]["subscribers"] == len(control)
    assert g["treatment"]["subscribers"] == len(treated) - 1
    assert g["contacted"]["subscribers"] == 9  # treated[1] is do-not-contact
    assert g["control"]["complained"] == (len(control) + 1) // 2
    assert g["control"]["complained_or_detractor_share"] == pytest.approx(0.5, abs=0.01)
    assert g["treatment"]["detractor"] == (len(treated) + 3) // 4
    assert g["control"]["recovered"] == 0
    up = report["uplift"]["complained_or_detractor"]
    assert up["difference"] == pytest.approx(g["treatment"]["complained_or_detractor_share"] - 0.5, abs=0.01)
    assert up["ci95_low"] < up["difference"] < up["ci95_high"] < 0
