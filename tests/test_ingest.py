"""monitor.records.ingest: raw Kafka records to decoded events or dead letters, with bounded counters."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from monitor.records import events
from monitor.records.ingest import MAX_KEPT_BYTES, MAX_MESSAGE_BYTES, REASON_KINDS, UNKNOWN_STREAM, Ingest

EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"
NOW_MS = 1_700_000_123_456

NETWORK = {"event_id": "n1", "subscriber_id": "s-1", "ts_ms": 1_700_000_000_000, "cell_id": "c1",
           "region": "north", "radio": "4G", "service": "web", "rsrp_dbm": -101.0, "sinr_db": 3.5,
           "dl_mbps": 12.0, "ul_mbps": 2.0, "latency_ms": 45.0, "jitter_ms": 6.0,
           "packet_loss_pct": 0.4, "call_drop": False, "video_stall_s": 0.0}
TICKET = {"event_id": "t1", "ticket_id": "T1", "subscriber_id": "s-2", "ts_ms": 1_700_000_000_000,
          "channel": "chat", "category": "billing", "action": "opened"}
APP = {"event_id": "a1", "session_id": "x", "subscriber_id": "s-3", "ts_ms": 1_700_000_000_000,
       "kind": "survey_answer", "nps": 2}


def raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


@pytest.fixture
def ingest() -> Ingest:
    return Ingest(worker="w-test", clock_ms=lambda: NOW_MS)


@pytest.mark.parametrize(("topic", "doc", "record", "stream"), [
    ("network-events", NETWORK, events.NetworkEvent, "network"),
    ("care-tickets", TICKET, events.TicketEvent, "tickets"),
    ("app-interactions", APP, events.AppEvent, "app"),
])
def test_each_input_topic_decodes_with_its_schema(ingest, topic, doc, record, stream):
    out = ingest.decode(topic, 1, 10, doc["subscriber_id"].encode(), raw(doc))
    assert isinstance(out, record)
    assert out.event_id == doc["event_id"]
    assert ingest.decoded == {stream: 1}
    assert ingest.dead_lettered == {}
    # the same bytes on another input topic are checked against that topic's schema instead
    other = next(t for t in events.INPUT_TOPICS if t != topic)
    assert isinstance(ingest.decode(other, 1, 11, None, raw(doc)), events.DeadLetter)


def test_dead_letter_keeps_origin_bytes_reason_and_validates_against_its_schema(ingest):
    value = raw({**NETWORK, "rsrp_dbm": "abc"})
    letter = ingest.decode("network-events", 2, 99, b"s-1", value)
    assert isinstance(letter, events.DeadLetter)
    assert (letter.source_topic, letter.partition, letter.offset) == ("network-events", 2, 99)
    assert letter.original_value() == value
    assert base64.b64decode(letter.key_b64) == b"s-1"
    assert letter.schema == "network_event.v1"
    assert letter.field == "$.rsrp_dbm"
    assert letter.reason == '$.rsrp_dbm: Expected `float` >= -156 and <= -31, got `str` "abc"'
    assert (letter.worker, letter.received_at_ms) == ("w-test", NOW_MS)
    # what the worker produces to satmon-dead-letter is a valid dead_letter.v1 record
    assert events.decode("dead_letter.v1", events.encode(letter)) == letter
    assert ingest.dead_lettered == {("network", "wrong_type"): 1}
    assert ingest.decoded == {}


def test_unknown_topic_is_dead_lettered_under_a_bounded_stream_label(ingest):
    letter = ingest.decode("network-events-v2", 0, 5, None, raw(NETWORK))
    assert isinstance(letter, events.DeadLetter)
    assert "unknown topic 'network-events-v2'" in letter.reason
    assert letter.original_value() == raw(NETWORK)
    assert ingest.dead_lettered == {(UNKNOWN_STREAM, "unknown_topic"): 1}
    _, letters = ingest.decode_batch("whatever", 0, [(1, None, b"{}"), (2, None, b"[]")])
    assert [x.offset for x in letters] == [1, 2]
    assert ingest.dead_lettered == {(UNKNOWN_STREAM, "unknown_topic"): 3}


def test_too_large_is_refused_before_parsing_and_keeps_a_bounded_prefix(ingest):
    # valid JSON padded past the limit with an extra field inputs would otherwise accept
    big = raw({**NETWORK, "pad": "x" * MAX_MESSAGE_BYTES})
    assert len(big) > MAX_MESSAGE_BYTES
    letter = ingest.decode("network-events", 0, 1, b"s-1", big)
    assert isinstance(letter, events.DeadLetter)
    assert letter.original_value() == big[:MAX_KEPT_BYTES]
    assert str(len(big)) in letter.reason and str(MAX_MESSAGE_BYTES) in letter.reason
    assert ingest.dead_lettered == {("network", "too_large"): 1}
    # the dead letter of the largest accepted-size message still fits Kafka's default 1 MiB limit
    worst = ingest.decode("network-events", 0, 2, b"k" * 64, b"x" * MAX_MESSAGE_BYTES)
    assert len(events.encode(worst)) < 1_048_588


def test_exactly_max_size_is_parsed(ingest):
    doc = {**NETWORK, "pad": ""}
    doc["pad"] = "x" * (MAX_MESSAGE_BYTES - len(raw(doc)))
    value = raw(doc)
    assert len(value) == MAX_MESSAGE_BYTES
    assert isinstance(ingest.decode("network-events", 0, 1, None, value), events.NetworkEvent)


def test_key_must_match_subscriber_id_when_present(ingest):
    value = raw(NETWORK)
    assert isinstance(ingest.decode("network-events", 0, 1, b"s-1", value), events.NetworkEvent)
    assert isinstance(ingest.decode("network-events", 0, 2, None, value), events.NetworkEvent)
    assert isinstance(ingest.decode("network-events", 0, 3, "s-1", value), events.NetworkEvent)  # str keys too
    wrong = ingest.decode("network-events", 0, 4, b"s-9", value)
    assert isinstance(wrong, events.DeadLetter)
    assert wrong.field == "$.subscriber_id"
    assert "'s-9'" in wrong.reason and "'s-1'" in wrong.reason
    empty_key = ingest.decode("network-events", 0, 5, b"", value)
    assert isinstance(empty_key, events.DeadLetter)
    not_utf8 = ingest.decode("network-events", 0, 6, b"\xff", value)
    assert isinstance(not_utf8, events.DeadLetter) and "\\xff" in not_utf8.reason
    assert ingest.dead_lettered == {("network", "key_mismatch"): 3}
    assert ingest.decoded == {"network": 3}


def test_duplicates_pass_through_ingest(ingest):
    value = raw(TICKET)
    out = [ingest.decode("care-tickets", 0, i, b"s-2", value) for i in range(3)]
    assert all(isinstance(x, events.TicketEvent) for x in out)
    assert ingest.decoded == {"tickets": 3}


def test_tombstone_and_empty_values_are_dead_letters(ingest):
    for offset, value in ((1, None), (2, b""), (3, b"  \n")):
        letter = ingest.decode("app-interactions", 0, offset, None, value)
        assert isinstance(letter, events.DeadLetter)
        assert letter.reason.startswith("empty message")
    assert ingest.dead_lettered == {("app", "empty"): 3}


def test_integral_floats_are_accepted_like_the_schema_does(ingest):
    value = raw(NETWORK).replace(b"1700000000000", b"1700000000000.0")
    for out in (ingest.decode("network-events", 0, 1, None, value),
                ingest.decode_batch("network-events", 0, [(2, None, value)])[0][0]):
        assert isinstance(out, events.NetworkEvent)
        assert out.ts_ms == 1_700_000_000_000 and type(out.ts_ms) is int


def example_records(topic: str) -> list[tuple[int, bytes | None, bytes]]:
    schema = events.INPUT_TOPICS[topic]
    files = sorted((EXAMPLES / schema).glob("*-*.json"))
    return [(i, None, f.read_bytes()) for i, f in enumerate(files)]


@pytest.mark.parametrize("topic", sorted(events.INPUT_TOPICS))
def test_batch_and_single_agree_on_every_example(topic):
    records = example_records(topic)
    one_by_one, batched = Ingest(clock_ms=lambda: 1), Ingest(clock_ms=lambda: 1)
    singles = [one_by_one.decode(topic, 0, o, k, v) for o, k, v in records]
    decoded, letters = batched.decode_batch(topic, 0, records)
    assert decoded == [x for x in singles if not isinstance(x, events.DeadLetter)]
    assert letters == [x for x in singles if isinstance(x, events.DeadLetter)]
    assert decoded and letters
    assert one_by_one.decoded == batched.decoded
    assert one_by_one.dead_lettered == batched.dead_lettered
    # the example files' names say which ones are valid
    schema = events.INPUT_TOPICS[topic]
    files = sorted((EXAMPLES / schema).glob("*-*.json"))
    valid_offsets = [i for i, f in enumerate(files) if f.name.startswith("valid-")]
    assert [o for o, x in zip(range(len(singles)), singles) if not isinstance(x, events.DeadLetter)] == valid_offsets


def test_counters_use_only_bounded_label_values(ingest):
    weird = [b"\x00", b"[" * 5000 + b"]" * 5000, b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
             raw({**NETWORK, "radio": "9G"}), raw({k: v for k, v in NETWORK.items() if k != "region"}),
             raw({**NETWORK, "sinr_db": 99}), raw({**NETWORK, "sinr_db": 1e308}), b"\xef\xbb\xbf{}"]
    ingest.decode_batch("network-events", 0, [(i, None, v) for i, v in enumerate(weird)])
    ingest.decode("elsewhere", 0, 0, None, b"{}")
    streams = {"network", "tickets", "app", UNKNOWN_STREAM}
    assert sum(ingest.dead_lettered.values()) == len(weird) + 1
    for stream, kind in ingest.dead_lettered:
        assert stream in streams and kind in REASON_KINDS
    assert ("network", "too_deep") in ingest.dead_lettered
    assert ("network", "bad_enum") in ingest.dead_lettered


def test_reason_kinds_are_unique_and_extend_the_decoders():
    assert len(set(REASON_KINDS)) == len(REASON_KINDS)
    assert set(events.REASON_KINDS) < set(REASON_KINDS)
    assert {"too_large", "unknown_topic", "key_mismatch"} <= set(REASON_KINDS)
