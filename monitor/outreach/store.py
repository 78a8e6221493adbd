"""Outreach records (contacts, consent, outcomes), who may be contacted, and whether outreach works.

Pure core: no Kafka, no HTTP. Every worker holds an :class:`OutreachStore` fed from the
``satmon-outreach`` topic (1 partition, read from the beginning by every worker), so a contact
recorded through any worker suppresses the subscriber on all of them. A write goes to the topic
first (through the ``sink`` the shell provides) and is then applied locally; records carry a
``record_id`` so the copy that comes back from the topic is ignored.

Three kinds of :class:`OutreachRecord`:

* ``contact`` -- the outreach team contacted a subscriber (channel, outcome). An ``opted_out``
  outcome also puts the subscriber on the do-not-contact list.
* ``consent`` -- ``do_not_contact`` set or cleared (from the operator's consent system or the API).
* ``outcome`` -- something the outreach is meant to prevent happened: a ``complaint`` (a care
  ticket was opened) or a ``detractor`` survey answer (NPS 0-6). The ingest path publishes these
  with :func:`outcome_for_event`; :func:`effect_report` compares them between the treatment group and
  the hold-out control group.

:class:`OutreachPolicy` decides who appears on lists: never a do-not-contact subscriber, never one
in the hold-out control group (a deterministic keyed-hash share), and not one contacted within the
contact-fatigue window.

>>> policy = OutreachPolicy(holdout_share=0.5, holdout_key=b"k" * 16, fatigue_ms=86_400_000)
>>> policy.group("p123") == policy.group("p123")
True
>>> store = OutreachStore()
>>> _ = store.apply(OutreachRecord(record_id="r1", kind="consent", subscriber_id="p9", ts_ms=1, do_not_contact=True))
>>> policy.suppression("p9", store, now_ms=2)
'do_not_contact'
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import math
import uuid
from array import array
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, get_args

import msgspec

from monitor.records.topics import OUTREACH

OUTREACH_TOPIC = OUTREACH

Channel = Literal["call", "sms", "email", "app", "store", "other"]
Outcome = Literal["reached", "no_answer", "voicemail", "declined", "resolved", "opted_out"]
OutcomeEvent = Literal["complaint", "detractor"]
_EVENTS: tuple[str, ...] = get_args(OutcomeEvent)
_EVENT_CODE = {event: code for code, event in enumerate(_EVENTS)}
CHANNELS: tuple[str, ...] = Channel.__args__  # type: ignore[attr-defined]
OUTCOMES: tuple[str, ...] = Outcome.__args__  # type: ignore[attr-defined]

# An NPS answer of 0-6 is a detractor (the standard NPS bands).
DETRACTOR_MAX_NPS = 6
# Salt that separates hold-out hashing from pseudonymisation when both use the same key.
_HOLDOUT_DOMAIN = b"satmon-holdout-v1:"


class OutreachRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One record on the ``satmon-outreach`` topic (key: subscriber_id). No free text on purpose:
    notes typed by agents end up holding personal data that nothing here could govern."""

    record_id: str
    kind: Literal["contact", "consent", "outcome"]
    subscriber_id: str
    ts_ms: int
    by: str | None = None
    channel: Channel | None = None
    outcome: Outcome | None = None
    do_not_contact: bool | None = None
    event: OutcomeEvent | None = None
    #: a consent change's reason code (the API requires one to lift a do-not-contact)
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "contact" and (self.channel is None or self.outcome is None):
            raise ValueError("a contact record needs `channel` and `outcome`")
        if self.kind == "consent" and self.do_not_contact is None:
            raise ValueError("a consent record needs `do_not_contact`")
        if self.kind == "outcome" and self.event is None:
            raise ValueError("an outcome record needs `event`")
        if not 0 <= self.ts_ms < 1 << 60:   # the store packs it into 64 bits with the event kind
            raise ValueError("`ts_ms` must be milliseconds since 1970, before the year 36 million")


_DECODER = msgspec.json.Decoder(OutreachRecord)
_ENCODER = msgspec.json.Encoder()


def decode_record(raw: bytes) -> OutreachRecord:
    """Decode one ``satmon-outreach`` message (raises ``msgspec.ValidationError`` / ``DecodeError``)."""
    return _DECODER.decode(raw)


def encode_record(record: OutreachRecord) -> bytes:
    return _ENCODER.encode(record)


def new_record_id() -> str:
    return uuid.uuid4().hex


def outcome_for_event(event: Any) -> OutreachRecord | None:
    """The outcome record an input event implies, or ``None``.

    Called by the ingest path on every (already pseudonymised) ticket and app event: a care ticket
    being *opened* is a complaint; a survey answer with NPS 0-6 is a detractor. The record id is
    derived from the event id, so replays do not double count.
    """
    stream = getattr(event, "stream", None)
    if stream == "tickets" and event.action == "opened":
        kind = "complaint"
    elif stream == "app" and event.kind == "survey_answer" and event.nps is not None and event.nps <= DETRACTOR_MAX_NPS:
        kind = "detractor"
    else:
        return None
    return OutreachRecord(record_id=f"outcome:{event.event_id}", kind="outcome", subscriber_id=event.subscriber_id,
                          ts_ms=event.ts_ms, event=kind)


Sink = Callable[[OutreachRecord], Awaitable[None]]


def _ts(item: OutreachRecord) -> int:
    return item.ts_ms


def _id_hash(record_id: str) -> int:
    """64 bits of a record id: what the store keeps to recognise a copy of a kept outcome."""
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "little", signed=True)


def kafka_sink(producer: Any, topic: str = OUTREACH_TOPIC) -> Sink:
    """A sink publishing records with an aiokafka-style producer (``send_and_wait``), keyed by
    subscriber. The call returns once the broker acknowledged the record."""

    async def send(record: OutreachRecord) -> None:
        await producer.send_and_wait(topic, encode_record(record), key=record.subscriber_id.encode())

    return send


class OutreachStore:
    """Contacts, do-not-contact flags and outcomes per subscriber, built from outreach records.

    Memory is bounded per subscriber: the latest ``max_contacts`` contacts and ``max_outcomes``
    outcomes by event time are kept (a record older than all of them once the list is full is
    dropped, and counted in ``trimmed``), and a consent change keeps only the newest. A record is
    recognised as already applied by its ``record_id`` among what is kept, so the copy coming back
    from the topic, or an outcome re-derived from a replayed event, is not counted twice.

    Outcomes (one per complaint and detractor answer, the bulk of the records) are kept as 16
    bytes each: the event time and kind in one 64-bit key, and 64 bits of the record id's hash
    (a copy is missed only if its hash meets another kept for the subscriber: ~2^-58 per record).
    Kept as tuples with the id string they took ~190 bytes each, ~12 KB per subscriber at the
    bound, and the soaks saw them fill for as long as they ran.

    Parameters
    ----------
    sink
        Async callable that publishes a record to ``satmon-outreach`` (the shell passes
        :func:`kafka_sink`); ``None`` keeps records local (tests, single process).
    max_contacts, max_outcomes
        Records kept per subscriber. The effect report counts outcomes within a horizon after a
        subscriber became at risk: only a subscriber with more than ``max_outcomes`` complaints
        and detractor answers since could lose one from its count.
    """

    def __init__(self, sink: Sink | None = None, *, max_contacts: int = 32, max_outcomes: int = 64):
        self.sink = sink
        self.max_contacts = max_contacts
        self.max_outcomes = max_outcomes
        self.trimmed = 0
        self._contacts: dict[str, list[OutreachRecord]] = {}   # sorted by ts_ms
        self._dnc: dict[str, tuple[int, str]] = {}   # subscriber -> (ts_ms, record_id) of the latest consent change
        self._dnc_on: set[str] = set()
        # per subscriber [key, id hash, key, id hash, ...] sorted by key = ts_ms * 4 + event code
        self._outcomes: dict[str, array] = {}

    def apply(self, record: OutreachRecord) -> bool:
        """Apply one record; ``False`` if it was already applied (same ``record_id``) or is older
        than every record kept for the subscriber in a full list."""
        sid = record.subscriber_id
        rid = record.record_id
        if record.kind == "contact":
            contacts = self._contacts.setdefault(sid, [])
            if any(c.record_id == rid for c in contacts):
                return False
            kept = self._insort(contacts, record, self.max_contacts)
            if record.outcome == "opted_out":   # honoured even when the contact itself is too old to keep
                self._set_dnc(sid, True, record.ts_ms, rid)
            return kept
        if record.kind == "consent":
            held = self._dnc.get(sid)
            if held is not None and held[1] == rid:
                return False
            self._set_dnc(sid, bool(record.do_not_contact), record.ts_ms, rid)
            return True
        return self._add_outcome(sid, record.ts_ms * 4 + _EVENT_CODE[record.event], _id_hash(rid))

    def _add_outcome(self, sid: str, key: int, h: int) -> bool:
        kept = self._outcomes.get(sid)
        if kept is None:
            kept = self._outcomes[sid] = array("q")
        elif h in kept[1::2]:
            return False
        i = len(kept) // 2   # after every pair with a key <= this one (records mostly arrive in order)
        while i and kept[2 * i - 2] > key:
            i -= 1
        kept[2 * i:2 * i] = array("q", (key, h))
        if len(kept) // 2 <= self.max_outcomes:
            return True
        self.trimmed += 1
        del kept[:2]
        return i != 0

    def _insort(self, kept: list[Any], item: Any, cap: int) -> bool:
        bisect.insort(kept, item, key=_ts)
        if len(kept) <= cap:
            return True
        self.trimmed += 1
        return kept.pop(0) is not item

    def _set_dnc(self, sid: str, on: bool, ts_ms: int, record_id: str) -> None:
        # The newest consent change wins, whatever order the records arrive in.
        held = self._dnc.get(sid)
        if held is not None and ts_ms < held[0]:
            return
        self._dnc[sid] = (ts_ms, record_id)
        (self._dnc_on.add if on else self._dnc_on.discard)(sid)

    async def record(self, record: OutreachRecord) -> OutreachRecord:
        """Publish ``record`` (if there is a sink), then apply it here so the writer reads its write."""
        if self.sink is not None:
            await self.sink(record)
        self.apply(record)
        return record

    def is_dnc(self, sid: str) -> bool:
        return sid in self._dnc_on

    def contacts(self, sid: str) -> list[OutreachRecord]:
        return list(self._contacts.get(sid, ()))

    def last_contact_ms(self, sid: str) -> int | None:
        contacts = self._contacts.get(sid)
        return contacts[-1].ts_ms if contacts else None

    def outcomes(self, sid: str) -> list[tuple[int, str]]:
        """``(ts_ms, event)`` of the outcomes kept for ``sid``, oldest first."""
        return [(key >> 2, _EVENTS[key & 3]) for key in self._outcomes.get(sid, array("q"))[0::2]]

    @property
    def dnc_count(self) -> int:
        return len(self._dnc_on)


class OutreachPolicy:
    """Who may appear on outreach lists.

    Parameters
    ----------
    holdout_share
        Share of subscribers (0-1) in the hold-out control group: withheld from every list so the
        effect of outreach can be measured against them.
    holdout_key
        Key of the hash that assigns the group (the pseudonym key, domain-separated). The same key
        and share always give the same groups, on every worker and across restarts.
    fatigue_ms
        A subscriber contacted less than this long ago is suppressed from lists.
    """

    def __init__(self, *, holdout_share: float = 0.1, holdout_key: bytes = b"satmon-default-holdout-key",
                 fatigue_ms: int = 14 * 86_400_000):
        if not 0.0 <= holdout_share < 1.0:
            raise ValueError(f"holdout_share must be in [0, 1), got {holdout_share}")
        self.holdout_share = holdout_share
        self.holdout_key = holdout_key
        self.fatigue_ms = fatigue_ms
        self._mac = hmac.new(holdout_key, _HOLDOUT_DOMAIN, hashlib.sha256)
        self._threshold = int(holdout_share * 2**64)

    def in_control(self, sid: str) -> bool:
        mac = self._mac.copy()
        mac.update(sid.encode())
        return int.from_bytes(mac.digest()[:8], "big") < self._threshold

    def group(self, sid: str) -> str:
        return "control" if self.in_control(sid) else "treatment"

    def suppression(self, sid: str, store: OutreachStore, *, now_ms: int,
                    not_contacted_since_ms: int | None = None) -> str | None:
        """Why ``sid`` must not be listed now (``do_not_contact``, ``control_group``,
        ``recently_contacted``, ``contacted_since_filter``), or ``None`` if it may be."""
        if store.is_dnc(sid):
            return "do_not_contact"
        if self.in_control(sid):
            return "control_group"
        last = store.last_contact_ms(sid)
        if last is not None:
            if now_ms - last < self.fatigue_ms:
                return "recently_contacted"
            if not_contacted_since_ms is not None and last >= not_contacted_since_ms:
                return "contacted_since_filter"
        return None


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def _diff_ci(k1: int, n1: int, k0: int, n0: int) -> dict[str, float] | None:
    """Difference of two proportions (1 - 0) with a 95% normal-approximation interval."""
    if not n1 or not n0:
        return None
    p1, p0 = k1 / n1, k0 / n0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    d = p1 - p0
    return {"difference": d, "ci95_low": d - 1.96 * se, "ci95_high": d + 1.96 * se}


def effect_report(cohort: Iterable[tuple[str, int, bool]], store: OutreachStore, policy: OutreachPolicy, *,
                  horizon_ms: int) -> dict[str, Any]:
    """Treated vs control outcomes of the at-risk cohort (intention to treat).

    ``cohort`` yields ``(subscriber, first_at_risk_ms, at_risk_now)`` for every subscriber ever seen
    at risk. Do-not-contact subscribers are left out of both groups (they could not be treated).
    A subscriber *complained* / *turned detractor* if an outcome record of that kind has an event
    time within ``horizon_ms`` after it first became at risk; *recovered* means its latest score is
    no longer at risk. ``treatment`` is every non-control subscriber (contacted or not, which keeps
    the comparison unbiased); ``contacted`` is the part of it that was actually contacted.
    """
    groups = {name: {"subscribers": 0, "complained": 0, "detractor": 0, "complained_or_detractor": 0, "recovered": 0}
              for name in ("treatment", "control", "contacted")}
    for sid, first_ms, at_risk_now in cohort:
        if store.is_dnc(sid):
            continue
        events = {ev for ts, ev in store.outcomes(sid) if first_ms < ts <= first_ms + horizon_ms}
        names = ["control"] if policy.in_control(sid) else ["treatment"]
        if names == ["treatment"] and store.last_contact_ms(sid) is not None:
            names.append("contacted")
        for name in names:
            g = groups[name]
            g["subscribers"] += 1
            g["complained"] += "complaint" in events
            g["detractor"] += "detractor" in events
            g["complained_or_detractor"] += bool(events)
            g["recovered"] += not at_risk_now
    report: dict[str, Any] = {"holdout_share": policy.holdout_share, "horizon_ms": horizon_ms, "groups": {}}
    for name, g in groups.items():
        n = g["subscribers"]
        report["groups"][name] = {**g, **{f"{k}_share": _share(g[k], n) for k in
                                         ("complained", "detractor", "complained_or_detractor", "recovered")}}
    t, c = groups["treatment"], groups["control"]
    report["uplift"] = {k: _diff_ci(t[k], t["subscribers"], c[k], c["subscribers"])
                        for k in ("complained_or_detractor", "recovered")}
    return report
