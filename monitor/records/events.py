"""Typed records for every schema in ``schemas/``, and fast decoding with a precise reason on failure.

The records mirror ``schemas/<stem>.v1.json`` field for field; ``tests/test_schemas.py`` checks the
two never drift apart. Decoding uses msgspec (a typed decoder validates while it parses, ~0.5 µs per
network event) instead of ``json`` + ``jsonschema`` (two orders of magnitude slower). A rejected
record raises :class:`InvalidEventError` whose reason names the field, what was expected and what
was found, and whose ``kind`` is one of :data:`REASON_KINDS`.

>>> ev = decode("network_event.v1", b'{"event_id":"e1","subscriber_id":"s1","ts_ms":1700000000000,'
...     b'"cell_id":"c1","region":"north","radio":"5G","service":"video","rsrp_dbm":-95,'
...     b'"sinr_db":12,"dl_mbps":80,"ul_mbps":10,"latency_ms":30,"jitter_ms":4,'
...     b'"packet_loss_pct":0.1,"call_drop":false,"video_stall_s":0}')
>>> ev.rsrp_dbm
-95.0
>>> try:
...     decode("network_event.v1", b'{"event_id":"e1"}')
... except InvalidEventError as err:
...     print(err.reason)
$.subscriber_id: Expected `str` of length 1..64, got nothing (missing required field)
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import inspect as mi

from monitor.records import topics
from monitor.records.errors import InvalidEventError

# Event time bounds shared by all input schemas: 2000-01-01 .. 2100-01-01 in epoch milliseconds.
TS_MIN_MS = 946_684_800_000
TS_MAX_MS = 4_102_444_800_000

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Short = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
TsMs = Annotated[int, msgspec.Meta(ge=TS_MIN_MS, le=TS_MAX_MS)]
NonNeg = Annotated[float, msgspec.Meta(ge=0)]
#: a date of the subscriber's account (customer since, contract end), epoch ms; may precede 2000
DateMs = Annotated[int, msgspec.Meta(ge=0, le=TS_MAX_MS)]

Radio = Literal["2G", "3G", "4G", "5G"]
Service = Literal["voice", "video", "gaming", "web", "social", "download", "messaging"]
Channel = Literal["call_center", "chat", "app", "web", "store", "email", "social"]
Category = Literal["network", "billing", "service", "product", "privacy", "other"]
Action = Literal["opened", "updated", "escalated", "reopened", "resolved"]
AppKindV1 = Literal["self_service_success", "self_service_failure", "bot_to_human", "error", "survey_answer"]
#: app_event.v2 adds ``port_out``: the subscriber's number was ported to another operator (churn)
AppKind = Literal["self_service_success", "self_service_failure", "bot_to_human", "error", "survey_answer",
                  "port_out"]

# Cross-field rules the schemas state with ``allOf: [{if, then}]``: schema -> (field, value, required
# field). ``__post_init__`` enforces them (hard-coded there, for speed); tests check this table
# against the schemas and the behaviour against the table.
CONDITIONAL_REQUIREMENTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "ticket_event.v1": (("action", "resolved", "resolution_minutes"),),
    "app_event.v1": (("kind", "survey_answer", "nps"),),
    "app_event.v2": (("kind", "survey_answer", "nps"),),
}
# The messages ``__post_init__`` raises; msgspec reports them at the record's path, and
# :func:`explain` turns them back into a reason naming the required field.
_RESOLUTION_REQUIRED = '`resolution_minutes` is required when action is "resolved"'
_NPS_REQUIRED = '`nps` is required when kind is "survey_answer"'
_CONDITIONAL_MESSAGES = {_RESOLUTION_REQUIRED: CONDITIONAL_REQUIREMENTS["ticket_event.v1"][0],
                         _NPS_REQUIRED: CONDITIONAL_REQUIREMENTS["app_event.v1"][0]}


class NetworkEvent(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One subscriber session's KPIs on one cell (``network_event.v1``, topic ``network-events``)."""

    event_id: Id
    subscriber_id: Id
    ts_ms: TsMs
    cell_id: Id
    region: Id
    radio: Radio
    service: Service
    rsrp_dbm: Annotated[float, msgspec.Meta(ge=-156, le=-31)]
    sinr_db: Annotated[float, msgspec.Meta(ge=-23, le=40)]
    dl_mbps: Annotated[float, msgspec.Meta(ge=0, le=10_000)]
    ul_mbps: Annotated[float, msgspec.Meta(ge=0, le=10_000)]
    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)]
    jitter_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)]
    packet_loss_pct: Annotated[float, msgspec.Meta(ge=0, le=100)]
    call_drop: bool
    video_stall_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)]
    segment: Short | None = None
    device: Annotated[str, msgspec.Meta(max_length=64)] | None = None

    stream = "network"


class TicketEvent(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A step in a care ticket's life (``ticket_event.v1``, topic ``care-tickets``)."""

    event_id: Id
    ticket_id: Id
    subscriber_id: Id
    ts_ms: TsMs
    channel: Channel
    category: Category
    action: Action
    resolution_minutes: Annotated[float, msgspec.Meta(ge=0, le=525_600)] | None = None
    first_contact_resolution: bool | None = None
    region: Id | None = None
    segment: Short | None = None
    customer_since_ms: DateMs | None = None
    contract_end_ms: DateMs | None = None

    stream = "tickets"

    def __post_init__(self) -> None:
        if self.action == "resolved" and self.resolution_minutes is None:
            raise ValueError(_RESOLUTION_REQUIRED)


class AppEvent(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A self-service interaction, survey answer or port-out (``app_event.v2``, topic ``app-interactions``)."""

    event_id: Id
    session_id: Id
    subscriber_id: Id
    ts_ms: TsMs
    kind: AppKind
    feature: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    error_code: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    nps: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None
    app_version: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    region: Id | None = None
    segment: Short | None = None
    customer_since_ms: DateMs | None = None
    contract_end_ms: DateMs | None = None

    stream = "app"

    def __post_init__(self) -> None:
        if self.kind == "survey_answer" and self.nps is None:
            raise ValueError(_NPS_REQUIRED)


class AppEventV1(AppEvent, frozen=True, gc=False, kw_only=True):
    """``app_event.v1``: as :class:`AppEvent` without ``port_out`` (records of v1 producers decode as v2)."""

    kind: AppKindV1


InputEvent = Union[NetworkEvent, TicketEvent, AppEvent]


class Reason(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One contributing factor behind a risk score, in plain words."""

    code: str
    text: str
    contribution: float
    value: float | None = None


class OutcomeProbabilities(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Probability of each outcome a team acts on: a complaint and a detractor answer within 72 h,
    a port-out (churn) within 7 days."""

    complaint: Annotated[float, msgspec.Meta(ge=0, le=1)]
    detractor: Annotated[float, msgspec.Meta(ge=0, le=1)]
    churn: Annotated[float, msgspec.Meta(ge=0, le=1)]


class RiskScore(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``risk_score.v1``: a subscriber's score, emitted on material change (topic ``risk-scores``)."""

    subscriber_id: Id
    ts_ms: int
    scored_at_ms: int
    score: Annotated[float, msgspec.Meta(ge=0, le=1)]
    at_risk: bool
    reasons: Annotated[list[Reason], msgspec.Meta(max_length=5)]
    model_version: Annotated[int, msgspec.Meta(ge=0)]
    prior: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    model_weight: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    #: probability of each outcome within its horizon (docs/MODEL.md)
    outcomes: OutcomeProbabilities | None = None
    at_risk_since_ms: int | None = None
    region: str | None = None
    segment: str | None = None
    cell_id: str | None = None


class Alert(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``alert.v1``: one state change of an alert (topic ``alerts``)."""

    alert_id: Annotated[str, msgspec.Meta(min_length=1)]
    alertname: Annotated[str, msgspec.Meta(pattern="^[A-Z][A-Za-z0-9]*$")]
    kind: Literal["hotspot_cell", "hotspot_region", "data_drift", "concept_drift"]
    status: Literal["firing", "resolved"]
    severity: Literal["info", "warning", "critical"]
    labels: dict[str, str]
    summary: str
    description: str
    runbook_url: str
    starts_at_ms: int
    updated_at_ms: int
    sequence: Annotated[int, msgspec.Meta(ge=0)]
    ends_at_ms: int | None = None
    details: dict[str, Any] | None = None


class Incident(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``incident.v1``: one state change of an incident -- cells of one region degrading together
    (topic ``incidents``, key ``incident_id``; built by :class:`monitor.detection.incidents.IncidentTracker`)."""

    incident_id: Annotated[str, msgspec.Meta(min_length=1)]
    status: Literal["firing", "resolved"]
    severity: Literal["info", "warning", "critical"]
    region: str
    cells: Annotated[list[str], msgspec.Meta(max_length=10_000)]
    kpis: Annotated[list[str], msgspec.Meta(max_length=64)]
    affected_subscribers: Annotated[int, msgspec.Meta(ge=0)]
    alert_ids: Annotated[list[str], msgspec.Meta(max_length=10_000)]
    summary: str
    started_at_ms: int
    updated_at_ms: int
    sequence: Annotated[int, msgspec.Meta(ge=0)]
    ended_at_ms: int | None = None


class DeadLetter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``dead_letter.v1``: an input record that failed decoding, with its original bytes."""

    source_topic: str
    partition: int | None
    offset: int | None
    value_b64: str
    reason: Annotated[str, msgspec.Meta(min_length=1)]
    schema: str
    received_at_ms: int
    key_b64: str | None = None
    field: str | None = None
    worker: str | None = None

    def original_value(self) -> bytes:
        """The exact bytes that were rejected."""
        return base64.b64decode(self.value_b64)


# schema name -> record type. The schema name is the file stem in ``schemas/``.
RECORD_TYPES: dict[str, type[msgspec.Struct]] = {
    "network_event.v1": NetworkEvent,
    "ticket_event.v1": TicketEvent,
    "app_event.v1": AppEventV1,
    "app_event.v2": AppEvent,
    "risk_score.v1": RiskScore,
    "alert.v1": Alert,
    "incident.v1": Incident,
    "dead_letter.v1": DeadLetter,
}

# The three input streams: topic -> schema name.
INPUT_TOPICS: dict[str, str] = {
    topics.NETWORK_EVENTS: "network_event.v1",
    topics.CARE_TICKETS: "ticket_event.v1",
    topics.APP_INTERACTIONS: "app_event.v2",
}

_DECODERS = {name: msgspec.json.Decoder(t) for name, t in RECORD_TYPES.items()}
_ENCODER = msgspec.json.Encoder()

# Why a record was rejected, as a bounded set of classes (they become Prometheus label values; the
# full reason goes in the dead letter). Every InvalidEventError raised here carries one as ``.kind``.
REASON_KINDS: tuple[str, ...] = (
    "empty",          # zero bytes or only whitespace
    "not_json",       # malformed JSON, trailing data, invalid UTF-8
    "too_deep",       # nested deeper than the decoder's recursion limit
    "missing_field",  # a required field is absent
    "wrong_type",     # e.g. a string where a number is expected, an array instead of an object
    "out_of_range",   # a number outside its bounds, a string or array too long or too short
    "bad_enum",       # a value outside the field's enumeration
    "bad_format",     # a string not matching the field's pattern
    "unknown_field",  # an extra field in a record whose schema forbids them (outputs only)
    "conditional",    # a field required by another field's value (resolved ticket, survey answer)
    "unknown_schema", # decode() was asked for a schema that does not exist
)

# Integer fields receiving a float with no fractional part (``1700000000000.0``, which pandas writes
# for nullable integer columns) are valid JSON Schema integers; msgspec's strict decoder rejects
# them, so the slow path rewrites them and decodes again, at most this many times per record (more
# than any record has integer fields).
_MAX_INT_REPAIRS = 16
_INT_GOT_FLOAT = re.compile(r"Expected `int( \| null)?`, got `float`")


def _invalid(reason: str, field: str | None, kind: str) -> InvalidEventError:
    err = InvalidEventError(reason, field)
    err.kind = kind  # type: ignore[attr-defined]
    return err


def decode(schema: str, raw: bytes | bytearray | memoryview | str) -> Any:
    """Decode and validate one JSON record against ``schema`` (e.g. ``"network_event.v1"``).

    Raises :class:`InvalidEventError` with a precise reason on any failure, and only that: the
    reason names the field (``err.field``, a JSON path), what was expected and what was found;
    ``err.kind`` is one of :data:`REASON_KINDS`.

    >>> try:
    ...     decode("app_event.v1", b'{"event_id":"e","session_id":"s","subscriber_id":"u",'
    ...            b'"ts_ms":1700000000000,"kind":"survey_answer","nps":null}')
    ... except InvalidEventError as err:
    ...     print(err.kind, err.field)
    ...     print(err.reason)
    conditional $.nps
    $.nps: Expected `int` >= 0 and <= 10 (required when kind is "survey_answer"), got `null`
    """
    try:
        decoder = _DECODERS[schema]
    except KeyError:
        raise _invalid(f"unknown schema {schema!r}; known: {', '.join(sorted(_DECODERS))}", None,
                       "unknown_schema") from None
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError as err:
            raise _invalid(f"not valid JSON: text is not encodable as UTF-8 ({err.reason} at "
                           f"character {err.start})", None, "not_json") from None
    if not raw:
        raise _invalid("empty message: expected a JSON object, got 0 bytes", None, "empty")
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as err:
        return _decode_slow(schema, decoder, bytes(raw), err)
    except RecursionError:
        raise _too_deep() from None
    except UnicodeDecodeError as err:  # msgspec raises it for invalid UTF-8 in an object key
        raise _not_utf8(bytes(raw), err) from None


def decoder_for(schema: str) -> msgspec.json.Decoder:
    """The raw msgspec decoder, for hot loops.

    It is strict about integers (``1.0`` is rejected where an integer is expected, although JSON
    Schema accepts it) and raises ``msgspec.DecodeError`` or ``RecursionError``: on either, call
    :func:`decode` on the same bytes, which returns the record or raises the reason.
    :class:`monitor.records.ingest.Ingest` does exactly that.
    """
    return _DECODERS[schema]


def explain(raw: bytes, err: msgspec.DecodeError, schema: str | None = None) -> InvalidEventError:
    """Build the :class:`InvalidEventError` for a failure caught from :func:`decoder_for`.

    Prefer calling :func:`decode` on failure (it also accepts integral floats in integer fields, as
    the schemas do); with ``schema`` the reason names the expected type or enumeration precisely.
    """
    if not raw:
        return _invalid("empty message: expected a JSON object, got 0 bytes", None, "empty")
    return _describe_failure(schema, bytes(raw), err)


def _not_utf8(raw: bytes, err: UnicodeDecodeError) -> InvalidEventError:
    return _invalid(f"not valid JSON: invalid UTF-8 ({err.reason}); found {_preview(raw, f'(byte {err.start})')}",
                    None, "not_json")


def _too_deep() -> InvalidEventError:
    return _invalid(f"$: Expected JSON nested fewer than {sys.getrecursionlimit()} levels deep, got "
                    "deeper nesting", None, "too_deep")


def _decode_slow(schema: str, decoder: msgspec.json.Decoder, raw: bytes, err: msgspec.DecodeError) -> Any:
    """The failure path of :func:`decode`: repair integral floats in integer fields, else explain."""
    doc: Any = _MISSING
    original = raw
    for _ in range(_MAX_INT_REPAIRS):
        if not (isinstance(err, msgspec.ValidationError) and _INT_GOT_FLOAT.match(str(err))):
            break
        if doc is _MISSING:
            try:
                doc = _load(raw)
            except (_Unparsable, RecursionError):
                break
        path = _split_message(str(err))[1]
        parent, key = _parent_at(doc, path) if path else (None, None)
        if parent is None:
            break
        value = parent[key]
        if not (isinstance(value, float) and value.is_integer()):
            break
        parent[key] = int(value)
        raw = json.dumps(doc).encode()  # ASCII: a lone surrogate stays escaped, and msgspec rejects it
        try:
            return decoder.decode(raw)
        except msgspec.DecodeError as again:
            err = again
        except RecursionError:
            raise _too_deep() from None
        except UnicodeDecodeError as bad:
            raise _not_utf8(original, bad) from None
    # the reason quotes the record as it was sent (same paths; ``1e+30`` rather than its repair)
    raise _describe_failure(schema, original, err) from None


def _split_message(message: str) -> tuple[str, str | None]:
    """msgspec's ``"<message> - at `$.path`"`` -> (message, path)."""
    if message.endswith("`") and " - at `" in message:
        message, _, tail = message.rpartition(" - at `")
        return message, tail[:-1]
    return message, None


def _describe_failure(schema: str | None, raw: bytes, err: msgspec.DecodeError) -> InvalidEventError:
    """Turn a msgspec error into a reason naming the field, what was expected and what was found."""
    message, path = _split_message(str(err))
    if not isinstance(err, msgspec.ValidationError):
        if not raw.strip():
            return _invalid(f"empty message: expected a JSON object, got {len(raw)} bytes of whitespace",
                            None, "empty")
        return _invalid(f"not valid JSON: {message}; found {_preview(raw, message)}", None, "not_json")
    where = path or "$"
    types = _FIELD_TYPES.get(schema, {}) if schema else {}
    # msgspec validates while it parses and stops at the first bad field, so a document that is
    # malformed further on (truncated, invalid UTF-8 in a skipped key) can surface as a field error
    # here: judge the whole document first, as a schema validator would.
    try:
        doc = _load(raw)
    except RecursionError:
        return _too_deep()
    except _Unparsable as err:
        return _invalid(f"not valid JSON: {err}; found {_preview(raw, str(err).replace('char ', '(byte ') + ')')}",
                        None, "not_json")
    declared = types.get(_pattern(where))
    if where.endswith("[...]"):  # msgspec does not say which entry of a mapping failed: find it
        where, path = (_entry_at(doc, where, declared),) * 2

    rule = _CONDITIONAL_MESSAGES.get(message)
    if rule is not None:
        trigger, value, required = rule
        field = f"{where}.{required}"
        expected = _expected(_drop_none(types.get(_pattern(field))), f"`{required}`")
        return _invalid(f"{field}: Expected {expected} (required when {trigger} is {_json(value)}), "
                        f"got {_found(_value_at(doc, field))}", field, "conditional")
    if message.startswith("Object missing required field `"):
        name = message[len("Object missing required field `"):-1]
        field = f"{where}.{name}"
        expected = _expected(types.get(_pattern(field)), "a value")
        return _invalid(f"{field}: Expected {expected}, got nothing (missing required field)", field,
                        "missing_field")
    if message.startswith("Object contains unknown field `"):
        name = message[len("Object contains unknown field `"):-1]
        field = f"{where}.{name}"
        return _invalid(f"{field}: Expected no field `{name}` (unknown fields are not allowed here), got "
                        f"{_found(_value_at(doc, field))}", field, "unknown_field")

    if message.startswith("Invalid enum value"):
        kind = "bad_enum"
    elif "matching regex" in message:
        kind = "bad_format"
    elif "out of range" in message or " of length " in message or any(
            op in message for op in (" >= ", " <= ", " > ", " < ")):
        kind = "out_of_range"
    elif message.startswith("Expected `"):
        kind = "wrong_type"
    else:  # a message msgspec may add in a later version: keep it verbatim
        kind = "wrong_type"
    if declared is not None:
        expected = _expected(declared, "")
    elif message.startswith("Expected "):
        expected = message[len("Expected "):].partition(", got")[0]
    else:
        expected = message
    got = _value_at(doc, where)
    if message == "Number out of range":  # a literal beyond float range, e.g. 1e400
        found = "a number beyond the range of a 64-bit float"
    else:
        found = _found(got) if got is not _MISSING else "a value that does not fit"
    return _invalid(f"{where}: Expected {expected}, got {found}", path, kind)


_MISSING = object()


class _Unparsable(Exception):
    """Python's strict parse of the document failed too: it is not JSON at all."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Digits(str):
    """An integer literal too long for ``int()`` (Python refuses over 4,300 digits): its text."""


def _parse_int(text: str) -> Any:
    return int(text) if len(text) <= 4000 else _Digits(text)


def _load(raw: bytes) -> Any:
    """The document as Python values, for explaining (error path only: cost is fine). Unlike
    orjson, ``json`` keeps integers of any size exact (beyond 4,000 digits as :class:`_Digits`,
    so a 5,000-digit number is out of range, not "not JSON"); NaN and Infinity are refused as in
    msgspec."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_int=_parse_int)
    except RecursionError:
        raise
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise _Unparsable(str(err)) from None


_STEP = re.compile(r'\.([^.\[]+)|\[(\d+|\.\.\.)\]|\[("(?:[^"\\]|\\.)*")\]')


def _steps(path: str) -> list[str | int] | None:
    steps: list[str | int] = []
    for name, index, quoted in _STEP.findall(path[1:]):
        if index == "...":  # msgspec does not say which key of a mapping failed
            return None
        steps.append(name if name else json.loads(quoted) if quoted else int(index))
    return steps


def _parent_at(doc: Any, path: str) -> tuple[Any, Any]:
    """(container, key) of the value at a msgspec path like ``$.reasons[2].code``."""
    steps = _steps(path)
    if doc is _MISSING or not steps:
        return None, None
    node = doc
    for step in steps[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None, None
    last = steps[-1]
    if isinstance(node, dict) and isinstance(last, str) and last in node:
        return node, last
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        return node, last
    return None, None


def _value_at(doc: Any, path: str) -> Any:
    if path == "$":
        return doc
    parent, key = _parent_at(doc, path)
    return _MISSING if parent is None else parent[key]


_JSON_TYPES: dict[type, tuple[type, ...]] = {
    mi.StrType: (str,), mi.IntType: (int,), mi.FloatType: (int, float), mi.BoolType: (bool,),
    mi.NoneType: (type(None),), mi.ListType: (list,), mi.DictType: (dict,), mi.StructType: (dict,),
}


def _entry_at(doc: Any, path: str, declared: Any) -> str:
    """``$.labels[...]`` -> ``$.labels.region``: the first entry whose value has the wrong type."""
    container = _value_at(doc, path[: -len("[...]")])
    accepted = _JSON_TYPES.get(type(declared))
    if isinstance(container, dict) and accepted:
        for key, value in container.items():
            if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
                prefix = path[: -len("[...]")]
                return f"{prefix}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f"{prefix}[{json.dumps(key)}]"
    return path


def _pattern(path: str) -> str:
    """``$.reasons[3].code`` -> ``$.reasons[].code``: the key of :data:`_FIELD_TYPES`."""
    return re.sub(r"\[\d+\]", "[]", path)


def _field_types(t: Any, path: str, out: dict[str, Any]) -> dict[str, Any]:
    out[path] = t
    for member in t.types if isinstance(t, mi.UnionType) else (t,):
        _children(member, path, out)
    return out


def _children(t: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(t, mi.StructType):
        for f in t.fields:
            _field_types(f.type, f"{path}.{f.encode_name}", out)
    elif isinstance(t, mi.ListType):
        _field_types(t.item_type, f"{path}[]", out)
    elif isinstance(t, mi.DictType):
        _field_types(t.value_type, f"{path}[...]", out)


# schema -> {path pattern -> msgspec type info}: what each field expects, for the reasons.
_FIELD_TYPES: dict[str, dict[str, Any]] = {
    name: _field_types(mi.type_info(t), "$", {}) for name, t in RECORD_TYPES.items()
}


def _drop_none(t: Any) -> Any:
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        return members[0] if len(members) == 1 else mi.UnionType(tuple(members))
    return t


def _bounds(t: Any) -> str:
    parts = [f"{op} {_json(v)}" for op, v in ((">=", t.ge), (">", t.gt), ("<=", t.le), ("<", t.lt)) if v is not None]
    return (" " + " and ".join(parts)) if parts else ""


def _lengths(t: Any, what: str) -> str:
    lo, hi = t.min_length, t.max_length
    if lo is not None and hi is not None:
        return f" of {what} {lo}..{hi}"
    if hi is not None:
        return f" of {what} <= {hi}"
    if lo is not None:
        return f" of {what} >= {lo}"
    return ""


def _expected(t: Any, default: str) -> str:
    """What a field of msgspec type ``t`` accepts, in words (``\\`float\\` >= 0 and <= 100``)."""
    if isinstance(t, mi.UnionType):
        return " or ".join(_expected(m, default) for m in t.types)
    if isinstance(t, mi.StrType):
        text = "`str`" + _lengths(t, "length")
        return text + (f" matching {t.pattern!r}" if t.pattern else "")
    if isinstance(t, (mi.IntType, mi.FloatType)):
        return ("`int`" if isinstance(t, mi.IntType) else "`float`") + _bounds(t)
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(_json(v) for v in t.values)
    if isinstance(t, mi.ListType):
        return "`array`" + _lengths(t, "length")
    if isinstance(t, (mi.DictType, mi.StructType)):
        return "`object`"
    simple = {mi.BoolType: "`bool`", mi.NoneType: "`null`", mi.AnyType: "any JSON value"}
    return simple.get(type(t), default)


def _json(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _found(value: Any, limit: int = 60) -> str:
    """A found value with its JSON type: ``\\`str\\` "abc"``, ``\\`int\\` 5``, ``\\`null\\```."""
    if value is _MISSING:
        return "nothing (missing)"
    if isinstance(value, _Digits):
        return f"`int` an integer of {len(value.lstrip('-'))} digits"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return "`bool` " + ("true" if value else "false")
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**limit else f"an integer of {len(str(abs(value)))} digits"
        return f"`int` {text}"
    if isinstance(value, float):
        return f"`float` {value!r}" if math.isfinite(value) else "a number beyond the range of a 64-bit float"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        text = "..."
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if isinstance(value, str):
        return f"`str` {text}" if len(value) <= limit else f"`str` of length {len(value)} {text}"
    if isinstance(value, list):
        return f"`array` of {len(value)} items {text}"
    return f"`object` {text}"


def _preview(raw: bytes, message: str, width: int = 24) -> str:
    """The bytes around the error position msgspec reports (``(byte 42)``), else the start."""
    at = re.search(r"\(byte (\d+)\)", message)
    pos = int(at.group(1)) if at else 0
    lo = max(0, pos - width // 2)
    chunk = raw[lo: lo + width]
    return ("..." if lo else "") + repr(chunk) + ("..." if lo + width < len(raw) else "")


def encode(record: msgspec.Struct) -> bytes:
    """JSON bytes of a record, omitting nothing (``None`` fields are written as ``null``)."""
    return _ENCODER.encode(record)


def dead_letter(
    *,
    source_topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    value: bytes | None,
    error: InvalidEventError,
    schema: str,
    received_at_ms: int,
    worker: str | None = None,
) -> DeadLetter:
    """Wrap a rejected input record, keeping its original bytes, its origin and the reason."""
    return DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key_b64=base64.b64encode(key).decode() if key is not None else None,
        value_b64=base64.b64encode(value or b"").decode(),
        reason=error.reason,
        field=error.field,
        schema=schema,
        received_at_ms=received_at_ms,
        worker=worker,
    )
