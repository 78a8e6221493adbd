"""Fuzzing a running worker through the broker: hypothesis-generated records on all three input topics.

Malformed bytes, empty values, wrong types, unknown fields, extreme numbers, missing fields, JSON
that is not an object, wrong and missing keys, plus values over ingest's 512 KiB limit -- mixed with
valid events. Hypothesis draws the examples first (one inner ``@given`` run that collects them);
they then go through one broker and one worker process, so the test costs one group join.

What must hold: the worker's outcome for *every* record equals what the pure ingest
(:class:`monitor.records.ingest.Ingest`) decides for it -- processed if valid, otherwise a dead letter
whose origin (topic, partition, offset) and reason text are the same -- its counters reconcile
exactly with what was sent, and it keeps running (a batch of valid records sent afterwards is
processed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.kafka import INPUTS, Broker, produce, read_topic, run
from support.records import app_event, network_event, ticket_event, valid_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = 300
BUILDERS = {"network-events": network_event, "care-tickets": ticket_event, "app-interactions": app_event}

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
EXTREMES = [10 ** 30, -(10 ** 30), 2 ** 63, -(2 ** 63) - 1, 2 ** 64, 1e308, -1e308, 5e-324, -0.0, 0]
KINDS = ["bytes", "empty", "wrong_type", "unknown_field", "extreme", "missing", "not_object", "bad_utf8",
         "overflow_literal", "valid", "valid"]


@st.composite
def fuzz_records(draw: Any) -> tuple[str, bytes | None, bytes, str]:
    """``(topic, key, value, kind)``: one fuzzed input record."""
    topic = draw(st.sampled_from(INPUTS))
    sub = draw(st.sampled_from(["sub-a", "sub-b", "sub-c", "sub-d"]))
    event = BUILDERS[topic](draw(st.integers(0, 10 ** 9)), sub)
    kind = draw(st.sampled_from(KINDS))
    if kind == "bytes":
        value = draw(st.binary(max_size=300))
    elif kind == "empty":
        value = b""
    elif kind == "wrong_type":
        event[draw(st.sampled_from(sorted(event)))] = draw(JSON_VALUES)
        value = json.dumps(event).encode()
    elif kind == "unknown_field":
        event[draw(st.text(min_size=1, max_size=12))] = draw(JSON_VALUES)
        value = json.dumps(event).encode()
    elif kind == "extreme":
        numeric = sorted(k for k, v in event.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        event[draw(st.sampled_from(numeric))] = draw(st.sampled_from(EXTREMES))
        value = json.dumps(event).encode()
    elif kind == "missing":
        del event[draw(st.sampled_from(sorted(event)))]
        value = json.dumps(event).encode()
    elif kind == "not_object":
        value = json.dumps(draw(JSON_VALUES)).encode()
    elif kind == "bad_utf8":
        value = json.dumps(event).encode().replace(b'"' + sub.encode(), b'"\xff\xfe' + sub.encode())
    elif kind == "overflow_literal":  # numbers no float holds: 1e400, a 400-digit integer
        value = json.dumps(event).encode().replace(b'"ts_ms": ', b'"ts_ms": ' + draw(st.sampled_from(
            [b"1e400", b"9" * 400, b"-1e400"])) + b", \"x_\": ")
    else:
        value = json.dumps(event).encode()
    key = draw(st.sampled_from([sub.encode(), sub.encode(), None, b"not-the-subscriber", b"\xff\x00"]))
    return topic, key, value, kind


def draw_examples(n: int) -> list[tuple[str, bytes | None, bytes, str]]:
    """``n`` examples from :func:`fuzz_records` (an inner hypothesis run that only collects)."""
    out: list[tuple[str, bytes | None, bytes, str]] = []

    @settings(max_examples=n, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(fuzz_records())
    def collect(record: tuple[str, bytes | None, bytes, str]) -> None:
        out.append(record)

    collect()
    return out


def huge_records() -> list[tuple[str, bytes | None, bytes, str]]:
    """One value over ingest's 512 KiB limit per topic (a valid event padded with a long field)."""
    out = []
    for i, topic in enumerate(INPUTS):
        event = BUILDERS[topic](10 ** 9 + i, "sub-a")
        event["padding"] = "x" * (600 * 1024)
        out.append((topic, b"sub-a", json.dumps(event).encode(), "huge"))
    return out


def test_fuzzed_records_are_processed_or_dead_lettered_with_reasons_and_the_worker_keeps_running(
        broker: Broker, workers: Any, tmp_path: Path) -> None:
    from monitor.records.events import DeadLetter, decode
    from monitor.records.ingest import Ingest

    examples = draw_examples(EXAMPLES) + huge_records()
    sent = [(t, k, v) for t, k, v, _ in examples]
    positions = run(produce(broker.bootstrap, sent, max_request_size=4 * 1024 * 1024))

    from monitor.config import load

    # the worker's guards (far-future events are dead-lettered as clock_skew), on the wall clock as the worker
    ingest = Ingest(max_clock_skew_ms=int(load({}).max_clock_skew_s * 1000))
    expected: dict[tuple[str, int, int], str] = {}     # origin -> reason, for every expected dead letter
    valid = 0
    for (topic, key, value), (p, o) in zip(sent, positions):
        out = ingest.decode(topic, p, o, key, value)
        if isinstance(out, DeadLetter):
            expected[(topic, p, o)] = out.reason
        else:
            valid += 1
    kinds = {kind for *_, kind in examples}
    assert kinds >= set(KINDS) | {"huge"} and valid > 0 and expected    # the draw covers every kind

    w = workers(broker, app_id="t-fuzz", core="real")
    w.wait_for(lambda: w.total("satmon_ingest_events_decoded_total") + w.total("satmon_ingest_records_dead_lettered_total")
               >= len(sent), timeout_s=60, what="every fuzzed record accounted")
    letters = [decode("dead_letter.v1", r.value)
               for r in run(read_topic(broker.bootstrap, "satmon-dead-letter", expect=len(expected)))]
    got = {(d.source_topic, d.partition, d.offset): d.reason for d in letters}
    assert len(letters) == len(got) == len(expected)
    # same records, same reasons as the pure ingest (a clock_skew reason says how far ahead of *its* clock)
    ahead = re.compile(r"\(\d+ s ahead\)")
    assert {k: ahead.sub("(s ahead)", v) for k, v in got.items()} == {k: ahead.sub("(s ahead)", v)
                                                                      for k, v in expected.items()}
    assert all(reason for reason in got.values())
    assert w.total("satmon_ingest_events_decoded_total") == valid
    assert w.total("satmon_ingest_records_dead_lettered_total") == len(expected)
    huge = [d for d in letters if d.reason.startswith("message too large")]
    assert len(huge) == len(INPUTS) and all(len(d.original_value()) == 4096 for d in huge)

    # still alive and still processing
    assert w.proc.poll() is None and w.get("/healthz")[0] == 200
    after = valid_records(200, subscribers=20, start=5_000_000)
    run(produce(broker.bootstrap, after))
    w.wait_for(lambda: w.total("satmon_ingest_events_decoded_total") >= valid + len(after), timeout_s=30,
               what="valid records after the fuzz processed")
    assert w.total("satmon_ingest_events_decoded_total") == valid + len(after)
    assert w.total("satmon_ingest_records_dead_lettered_total") == len(expected)
    print(f"\nfuzzed {len(sent)} records ({len(INPUTS)} over 512 KiB): {valid} processed, "
          f"{len(expected)} dead-lettered, reasons: "
          f"{sorted({r.split(':')[0][:40] for r in got.values()})[:12]}")
    assert w.stop() == 0
