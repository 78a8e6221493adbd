"""monitor.records.events: reasons that name field, expectation and finding; no other exception ever escapes
``decode``; every valid record round-trips through ``encode``; the valid path stays fast."""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from msgspec import inspect as mi

import monitor
from monitor.records import events
from monitor.records.errors import InvalidEventError

NET = {"event_id": "e1", "subscriber_id": "s1", "ts_ms": 1_700_000_000_000, "cell_id": "c1",
       "region": "north", "radio": "5G", "service": "video", "rsrp_dbm": -95, "sinr_db": 12,
       "dl_mbps": 80, "ul_mbps": 10, "latency_ms": 30, "jitter_ms": 4, "packet_loss_pct": 0.1,
       "call_drop": False, "video_stall_s": 0}
TICKET = {"event_id": "t1", "ticket_id": "T1", "subscriber_id": "s1", "ts_ms": 1_700_000_000_000,
          "channel": "chat", "category": "billing", "action": "opened"}
APP = {"event_id": "a1", "session_id": "x", "subscriber_id": "s1", "ts_ms": 1_700_000_000_000,
       "kind": "self_service_success"}
ALERT = {"alert_id": "a", "alertname": "SatmonHotSpotActive", "kind": "hotspot_cell", "status": "firing",
         "severity": "warning", "labels": {"cell_id": "c1"}, "summary": "s", "description": "d",
         "runbook_url": "https://r", "starts_at_ms": 1, "updated_at_ms": 2, "sequence": 0}
SCORE = {"subscriber_id": "s1", "ts_ms": 1, "scored_at_ms": 2, "score": 0.5, "at_risk": False,
         "reasons": [{"code": "c", "text": "t", "contribution": 0.1}], "model_version": 3}


def reject(schema: str, raw: bytes | str) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        events.decode(schema, raw)
    return info.value


def with_(doc: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**doc, **changes}).encode()


def without(doc: dict[str, Any], key: str) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != key}).encode()


# -- reasons: field, expected, found -----------------------------------------------------------

@pytest.mark.parametrize(("schema", "raw", "field", "kind", "reason"), [
    ("network_event.v1", with_(NET, rsrp_dbm="abc"), "$.rsrp_dbm", "wrong_type",
     '$.rsrp_dbm: Expected `float` >= -156 and <= -31, got `str` "abc"'),
    ("network_event.v1", with_(NET, rsrp_dbm=-200), "$.rsrp_dbm", "out_of_range",
     "$.rsrp_dbm: Expected `float` >= -156 and <= -31, got `int` -200"),
    ("network_event.v1", with_(NET, call_drop=None), "$.call_drop", "wrong_type",
     "$.call_drop: Expected `bool`, got `null`"),
    ("network_event.v1", with_(NET, radio="6G"), "$.radio", "bad_enum",
     '$.radio: Expected one of "2G", "3G", "4G", "5G", got `str` "6G"'),
    ("network_event.v1", without(NET, "cell_id"), "$.cell_id", "missing_field",
     "$.cell_id: Expected `str` of length 1..64, got nothing (missing required field)"),
    ("network_event.v1", with_(NET, ts_ms=1_700_000_000), "$.ts_ms", "out_of_range",
     "$.ts_ms: Expected `int` >= 946684800000 and <= 4102444800000, got `int` 1700000000"),
    ("network_event.v1", with_(NET, ts_ms=1.5e12 + 0.5), "$.ts_ms", "wrong_type",
     "$.ts_ms: Expected `int` >= 946684800000 and <= 4102444800000, got `float` 1500000000000.5"),
    ("network_event.v1", with_(NET, segment="x" * 40), "$.segment", "out_of_range",
     f'$.segment: Expected `str` of length 1..32 or `null`, got `str` "{"x" * 40}"'),
    ("network_event.v1", with_(NET, device=[1, 2]), "$.device", "wrong_type",
     "$.device: Expected `str` of length <= 64 or `null`, got `array` of 2 items [1, 2]"),
    ("ticket_event.v1", with_(TICKET, action="resolved"), "$.resolution_minutes", "conditional",
     '$.resolution_minutes: Expected `float` >= 0 and <= 525600 (required when action is "resolved"), '
     "got nothing (missing)"),
    ("ticket_event.v1", with_(TICKET, action="resolved", resolution_minutes=None), "$.resolution_minutes",
     "conditional", '$.resolution_minutes: Expected `float` >= 0 and <= 525600 (required when action is '
     '"resolved"), got `null`'),
    ("app_event.v1", with_(APP, kind="survey_answer"), "$.nps", "conditional",
     '$.nps: Expected `int` >= 0 and <= 10 (required when kind is "survey_answer"), got nothing (missing)'),
    ("app_event.v1", with_(APP, nps="7"), "$.nps", "wrong_type",
     '$.nps: Expected `int` >= 0 and <= 10 or `null`, got `str` "7"'),
    ("risk_score.v1", json.dumps({**SCORE, "reasons": [{"code": "c", "text": "t", "contribution": "x"}]}).encode(),
     "$.reasons[0].contribution", "wrong_type", '$.reasons[0].contribution: Expected `float`, got `str` "x"'),
    ("risk_score.v1", json.dumps({**SCORE, "reasons": [SCORE["reasons"][0], {"code": "c"}]}).encode(),
     "$.reasons[1].text", "missing_field", "$.reasons[1].text: Expected `str`, got nothing (missing required field)"),
    ("risk_score.v1", with_(SCORE, debug=1), "$.debug", "unknown_field",
     "$.debug: Expected no field `debug` (unknown fields are not allowed here), got `int` 1"),
    ("alert.v1", with_(ALERT, labels={"ok": "x", "bad key": 3}), '$.labels["bad key"]', "wrong_type",
     '$.labels["bad key"]: Expected `str`, got `int` 3'),
    ("alert.v1", with_(ALERT, alertname="lower"), "$.alertname", "bad_format",
     "$.alertname: Expected `str` matching '^[A-Z][A-Za-z0-9]*$', got `str` \"lower\""),
    ("network_event.v1", b"[1, 2]", None, "wrong_type", "$: Expected `object`, got `array` of 2 items [1, 2]"),
    ("network_event.v1", b"", None, "empty", "empty message: expected a JSON object, got 0 bytes"),
    ("network_event.v1", b" \n", None, "empty", "empty message: expected a JSON object, got 2 bytes of whitespace"),
])
def test_reason_names_field_expectation_and_finding(schema, raw, field, kind, reason):
    err = reject(schema, raw)
    assert (err.reason, err.field, err.kind) == (reason, field, kind)
    assert str(err) == reason


@pytest.mark.parametrize(("raw", "snippet"), [
    (b"not json", "b'not json'"),
    (b'{"event_id": "e1", ', 'b\'{"event_id": "e1", \''),
    (with_(NET).replace(b"-95", b"NaN"), "NaN"),
    (with_(NET) + b"{}", "}{}"),
    (b'{"\xff": 1}', "\\xff"),
])
def test_not_json_reason_shows_where(raw, snippet):
    err = reject("network_event.v1", raw)
    assert err.kind == "not_json" and err.field is None
    assert err.reason.startswith("not valid JSON: ")
    assert snippet in err.reason


def test_malformed_after_a_bad_field_is_reported_as_not_json():
    # msgspec stops at the first bad field; the record is not JSON at all, and that is the reason
    raw = with_(NET, rsrp_dbm="abc")[:-20]
    assert reject("network_event.v1", raw).kind == "not_json"


def test_too_deep_and_unencodable_text_are_invalid_events_not_crashes():
    deep = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert reject("network_event.v1", deep).kind == "too_deep"
    assert reject("alert.v1", with_(ALERT)[:-1] + b', "details": {"d": ' + b"[" * 5000 + b"]" * 5000 + b"}}").kind == "too_deep"
    assert reject("network_event.v1", '{"event_id": "\ud800"}').kind == "not_json"


def test_buffers_are_accepted_like_bytes():
    raw = with_(NET)
    expected = events.decode("network_event.v1", raw)
    assert events.decode("network_event.v1", bytearray(raw)) == expected
    assert events.decode("network_event.v1", memoryview(raw)) == expected
    assert events.decode("network_event.v1", raw.decode()) == expected
    bad = with_(NET, radio="6G")
    for form in (bytearray(bad), memoryview(bad), bad.decode()):
        assert reject("network_event.v1", form).field == "$.radio"


def test_unknown_schema():
    err = reject("network_event.v2", b"{}")
    assert err.kind == "unknown_schema" and "network_event.v1" in err.reason


def test_integral_floats_in_integer_fields_are_accepted_and_become_ints():
    ev = events.decode("network_event.v1", with_(NET, ts_ms=1.7e12))
    assert ev.ts_ms == 1_700_000_000_000 and type(ev.ts_ms) is int
    app = events.decode("app_event.v1", with_(APP, kind="survey_answer", nps=7.0))
    assert app.nps == 7 and type(app.nps) is int
    score = events.decode("risk_score.v1", with_(SCORE, ts_ms=5.0, model_version=2.0))
    assert (score.ts_ms, score.model_version) == (5, 2)
    assert events.decode("risk_score.v1", with_(SCORE, ts_ms=2.0**60)).ts_ms == 2**60  # unbounded field
    # a fraction is not an integer
    assert reject("app_event.v1", with_(APP, nps=7.25)).kind == "wrong_type"
    # repaired but out of range: the reason quotes the value as sent
    err = reject("network_event.v1", with_(NET, ts_ms=1e30))
    assert (err.kind, err.field) == ("out_of_range", "$.ts_ms")
    assert err.reason.endswith("got `float` 1e+30")


def test_explain_matches_decode_for_fast_path_failures():
    decoder = events.decoder_for("network_event.v1")
    for raw in (with_(NET, radio="6G"), without(NET, "region"), b"{oops", with_(NET, rsrp_dbm=[1])):
        with pytest.raises(msgspec.DecodeError) as info:
            decoder.decode(raw)
        explained = events.explain(raw, info.value, "network_event.v1")
        decoded = reject("network_event.v1", raw)
        assert (explained.reason, explained.field, explained.kind) == (decoded.reason, decoded.field, decoded.kind)
    # without the schema (the old signature) the reason still names field and finding
    with pytest.raises(msgspec.DecodeError) as info:
        decoder.decode(with_(NET, rsrp_dbm="abc"))
    assert events.explain(with_(NET, rsrp_dbm="abc"), info.value).reason.startswith('$.rsrp_dbm: Expected `float`')


def test_conditional_rules_hold_in_python_construction_too():
    with pytest.raises(ValueError, match="nps"):
        events.AppEvent(event_id="a", session_id="s", subscriber_id="u", ts_ms=1_700_000_000_000, kind="survey_answer")
    with pytest.raises(ValueError, match="resolution_minutes"):
        events.TicketEvent(event_id="t", ticket_id="T", subscriber_id="u", ts_ms=1_700_000_000_000,
                           channel="app", category="other", action="resolved")


def test_dead_letter_wraps_original_bytes():
    err = reject("network_event.v1", b"\x00\x01")
    letter = events.dead_letter(source_topic="network-events", partition=1, offset=2, key=None,
                                value=b"\x00\x01", error=err, schema="network_event.v1", received_at_ms=3)
    assert letter.original_value() == b"\x00\x01" and letter.key_b64 is None
    assert events.decode("dead_letter.v1", events.encode(letter)) == letter


# -- fuzz: decode raises InvalidEventError and nothing else --------------------------------------

SCHEMAS = sorted(events.RECORD_TYPES)

json_scalars = (st.none() | st.booleans() | st.text() | st.floats(allow_nan=False, allow_infinity=False)
                | st.integers() | st.integers(min_value=-(10**400), max_value=10**400))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=30)
# number-like literals Python's json writes but JSON forbids, and extremes it allows
odd_literals = st.sampled_from([b"NaN", b"-Infinity", b"Infinity", b"1e400", b"-1e400", b"1e-400",
                                b"9" * 500, b"-0", b"0.0e0", b"1E+2", b"01", b"+1", b".5", b"1.", b"0x10"])


@st.composite
def near_records(draw: Any) -> tuple[str, bytes]:
    """A known-good record with one field's value replaced by an arbitrary literal or JSON value."""
    name, doc = draw(st.sampled_from([("network_event.v1", NET), ("ticket_event.v1", TICKET),
                                      ("app_event.v1", APP), ("alert.v1", ALERT), ("risk_score.v1", SCORE)]))
    key = draw(st.sampled_from(sorted(doc)) | st.text(max_size=5))
    text = json.dumps({**doc, key: "\x00PLACEHOLDER\x00"})
    literal = draw(odd_literals | json_values.map(lambda v: json.dumps(v).encode()))
    return name, text.encode().replace(b'"\\u0000PLACEHOLDER\\u0000"', literal)


def decode_only_invalid_event_error(schema: str, raw: Any) -> None:
    try:
        events.decode(schema, raw)
    except InvalidEventError as err:
        assert err.reason and isinstance(err.reason, str)
        assert err.kind in events.REASON_KINDS
        assert err.field is None or err.field.startswith("$")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SCHEMAS), st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(schema, raw):
    decode_only_invalid_event_error(schema, raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SCHEMAS), json_values)
def test_fuzz_arbitrary_json_values(schema, value):
    decode_only_invalid_event_error(schema, json.dumps(value).encode())
    decode_only_invalid_event_error(schema, json.dumps(value))  # str input too


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_records())
def test_fuzz_near_valid_records(case):
    decode_only_invalid_event_error(*case)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(SCHEMAS), st.integers(1, 20_000), st.sampled_from([b"[", b'{"a":', b'{"details":{"x":']))
def test_fuzz_deep_nesting(schema, depth, opener):
    closer = {b"[": b"]", b'{"a":': b"}", b'{"details":{"x":': b"}}"}[opener]
    decode_only_invalid_event_error(schema, opener * depth + b"1" + closer * depth)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(SCHEMAS), st.integers(100_000, 2_000_000))
def test_fuzz_huge_values(schema, size):
    decode_only_invalid_event_error(schema, b'{"event_id": "' + b"x" * size + b'"}')
    decode_only_invalid_event_error(schema, b"[" + b"1," * (size // 2) + b"1]")


# -- valid records round-trip --------------------------------------------------------------------

def from_type(t: Any) -> st.SearchStrategy[Any]:
    """A strategy for valid values of a msgspec type, built from its constraints (like the schema)."""
    if isinstance(t, mi.UnionType):
        return st.one_of(*[from_type(m) for m in t.types])
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.IntType):
        return st.integers(min_value=t.ge, max_value=t.le)
    if isinstance(t, mi.FloatType):
        return st.floats(min_value=t.ge, max_value=t.le, allow_nan=False, allow_infinity=False)
    if isinstance(t, mi.StrType):
        if t.pattern:
            return st.from_regex(t.pattern, fullmatch=True)
        return st.text(min_size=t.min_length or 0, max_size=t.max_length if t.max_length is not None else 40)
    if isinstance(t, mi.ListType):
        return st.lists(from_type(t.item_type), max_size=t.max_length if t.max_length is not None else 5)
    if isinstance(t, mi.DictType):
        return st.dictionaries(st.text(max_size=10), from_type(t.value_type), max_size=4)
    if isinstance(t, mi.AnyType):
        return json_values
    if isinstance(t, mi.StructType):
        fields = {f.name: from_type(f.type) for f in t.fields}
        return st.fixed_dictionaries(fields).map(lambda kw, cls=t.cls: _build(cls, kw))
    raise AssertionError(f"no strategy for {t}")


def _build(cls: type, kw: dict[str, Any]) -> Any:
    try:
        return cls(**kw)
    except ValueError:  # a conditional requirement not met: hypothesis will discard it
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SCHEMAS).flatmap(lambda n: st.tuples(st.just(n), from_type(mi.type_info(events.RECORD_TYPES[n])))))
def test_valid_records_round_trip(case):
    schema, record = case
    assume(record is not None)
    raw = events.encode(record)
    assert events.decode(schema, raw) == record
    assert events.decode(schema, raw.decode()) == record  # from text, too


# -- doctests --------------------------------------------------------------------------

# Every module's doctests run (River's way); the foundation's own must have examples.
MODULES = sorted(m.name for m in pkgutil.walk_packages(monitor.__path__, "monitor.") if m.name != "monitor.__main__")
MUST_HAVE_EXAMPLES = {"monitor.records.events", "monitor.config", "monitor.records.ingest", "monitor.pipeline", "monitor.records.topics",
                      "monitor.replay"}


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name in MUST_HAVE_EXAMPLES:
        assert result.attempted > 0, f"monitor/{name}.py has no runnable example"
