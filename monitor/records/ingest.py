"""Raw input records in, decoded events or dead letters out: the one ingest path every consumer uses.

The Faust agents, ``satmon replay`` and the tests all hand Kafka records (topic, partition, offset,
key, value) to an :class:`Ingest` and get back either a decoded input event or a
:class:`~monitor.records.events.DeadLetter` that keeps the original bytes (subscriber ids pseudonymised, see
below) and says why. It is pure: no Kafka
import, no event loop; the caller produces the dead letters to ``satmon-dead-letter``.

What ingest rejects, beyond what the schema decoder rejects (see :data:`REASON_KINDS`):

* ``unknown_topic``: a topic that is not one of :data:`monitor.records.events.INPUT_TOPICS`.
* ``too_large``: a value over :data:`MAX_MESSAGE_BYTES`, refused before parsing.
* ``clock_skew``: an event dated more than ``max_clock_skew_ms`` ahead of the wall clock (when
  set; the worker sets it from ``max_clock_skew_s``). One event from 2099 would otherwise move its
  partition's watermark decades ahead: every later event late, every cached state evicted.
  Watermarks are maxima of ingested event times, so none passes wall clock + skew.
* ``bad_format`` also for a ``region``, ``segment`` or ``cell_id`` outside :data:`LABEL_PATTERN`
  (letters and digits of any script, ``_.:-`` and spaces): they become metric labels and page text, so an input
  stream cannot invent ``<img src=x onerror=...>`` as a region.
* ``key_mismatch``: a record whose Kafka key is present and differs from its ``subscriber_id``.
  Inputs are partitioned by subscriber id so that one worker owns all of a subscriber's events; a
  record keyed otherwise sits on the wrong partition and would be scored by a core that does not
  hold that subscriber's state. A record without a key is accepted (it cannot be checked, and
  replay from a file has none).

Duplicates are not ingest's business: the partition core drops them by ``event_id``.

**Dead letters and subscriber ids.** With ``pseudonymise`` (the worker passes its keyed
pseudonymiser when pseudonymisation is on), a dead letter's key and the ids quoted in its reason
are pseudonyms, and its ``value_b64`` holds the original bytes with the subscriber id replaced by
its pseudonym (dropped entirely when no id can be located in bytes that mention one), unless
``keep_original`` (setting ``dead_letter_keep_original``) keeps the bytes exactly as received.

>>> ingest = Ingest(worker="w1", clock_ms=lambda: 1_700_000_000_000)
>>> raw = (b'{"event_id":"a1","session_id":"x","subscriber_id":"s1","ts_ms":1700000000000,'
...        b'"kind":"survey_answer","nps":3}')
>>> ingest.decode("app-interactions", 0, 41, b"s1", raw).nps
3
>>> letter = ingest.decode("app-interactions", 0, 42, b"s2", raw)
>>> letter.field, letter.original_value() == raw
('$.subscriber_id', True)
>>> ingest.decoded, ingest.dead_lettered
({'app': 1}, {('app', 'key_mismatch'): 1})
"""

from __future__ import annotations

import base64
import operator
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from monitor.records import events
from monitor.records.errors import InvalidEventError

# The largest value ingest will parse. A dead letter carries the rejected value in base64 (4/3 of
# its size) plus an envelope, and must itself fit in Kafka's default ``message.max.bytes``
# (1 MiB + 12 bytes); 512 KiB leaves room for both. Real events are a few hundred bytes. A value
# over this limit is dead-lettered with only its first MAX_KEPT_BYTES kept (see the reason).
MAX_MESSAGE_BYTES = 512 * 1024
MAX_KEPT_BYTES = 4 * 1024

# Ingest's own reasons, after the decoder's (events.REASON_KINDS). Bounded: they are label values.
INGEST_REASON_KINDS: tuple[str, ...] = ("unknown_topic", "too_large", "key_mismatch", "clock_skew")
REASON_KINDS: tuple[str, ...] = events.REASON_KINDS + INGEST_REASON_KINDS

# The stream label of a record from a topic that is not an input.
UNKNOWN_STREAM = "unknown"

#: what a region, segment or cell id may look like (the API's filter pattern, too)
LABEL_PATTERN = re.compile(r"[\w.:\- ]{1,64}")   # \w: letters and digits of any script, "_"
_LABEL_FIELDS = ("region", "segment", "cell_id")
# label values already checked (bounded: a stream inventing values cannot grow it without limit)
_MAX_KNOWN_LABELS = 100_000
# where a subscriber id sits in the bytes of a record that could not be decoded
_SID_IN_BYTES = re.compile(rb'"subscriber_id"\s*:\s*"((?:[^"\\]|\\.){1,256})"')

# What the fast decoder raises for input it rejects: DecodeError for invalid records, RecursionError
# for absurd nesting, UnicodeDecodeError for invalid UTF-8 in a key, TypeError for a None value.
_FAST_FAILURES = (msgspec.DecodeError, RecursionError, UnicodeDecodeError, TypeError)


_TS = operator.attrgetter("ts_ms")


def _label_fields(event: Any) -> tuple[str, ...]:
    """The label fields the record's type has (network events have a cell, the others do not)."""
    return tuple(n for n in _LABEL_FIELDS if n in type(event).__struct_fields__)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _error(reason: str, field: str | None, kind: str) -> InvalidEventError:
    err = InvalidEventError(reason, field)
    err.kind = kind  # type: ignore[attr-defined]
    return err


class Ingest:
    """Decode raw input records by topic; turn every rejected one into a dead letter, counted.

    Parameters
    ----------
    worker
        Name of this worker, written into every dead letter.
    clock_ms
        Wall clock in epoch milliseconds, for the dead letters' ``received_at_ms`` and the skew guard.
    max_clock_skew_ms
        Dead-letter (``clock_skew``) events dated more than this ahead of ``clock_ms()``; ``None``
        (default, for replaying files) accepts any date the schema accepts.
    pseudonymise
        ``subscriber_id -> pseudonym``: applied to the ids in dead letters (see the module doc).
    keep_original
        With ``pseudonymise``: keep the rejected bytes exactly as received (ids included).

    Attributes
    ----------
    decoded : dict[str, int]
        Events decoded per stream (``network``, ``tickets``, ``app``).
    dead_lettered : dict[tuple[str, str], int]
        Dead letters per (stream, reason kind); stream is ``"unknown"`` for an unknown topic and
        kind is one of :data:`REASON_KINDS`: both are bounded, fit for metric labels.

    Examples
    --------
    >>> ingest = Ingest(clock_ms=lambda: 0)
    >>> letter = ingest.decode("care-tickets", 3, 7, None, b'{"event_id": 1}')
    >>> print(letter.reason)
    $.event_id: Expected `str` of length 1..64, got `int` 1
    >>> events_, letters = ingest.decode_batch("network-events", 3, [(8, None, b""), (9, None, b"{")])
    >>> events_, [letter.offset for letter in letters]
    ([], [8, 9])
    >>> ingest.dead_lettered
    {('tickets', 'wrong_type'): 1, ('network', 'empty'): 1, ('network', 'not_json'): 1}
    """

    def __init__(self, *, worker: str | None = None, clock_ms: Callable[[], int] = _wall_clock_ms,
                 max_clock_skew_ms: int | None = None, pseudonymise: Callable[[str], str] | None = None,
                 keep_original: bool = False) -> None:
        self.worker = worker
        self.clock_ms = clock_ms
        self.max_clock_skew_ms = max_clock_skew_ms
        self.pseudonymise = pseudonymise
        self.keep_original = keep_original
        self._labels_ok: set[str | None] = {None}   # None: an optional label that is absent
        self.decoded: dict[str, int] = {}
        self.dead_lettered: dict[tuple[str, str], int] = {}
        # topic -> (schema, fast decoder, stream), resolved once
        self._routes: dict[str, tuple[str, msgspec.json.Decoder, str]] = {
            topic: (schema, events.decoder_for(schema), events.RECORD_TYPES[schema].stream)  # type: ignore[attr-defined]
            for topic, schema in events.INPUT_TOPICS.items()
        }

    def decode(self, topic: str, partition: int | None, offset: int | None, key: bytes | None,
               value: bytes | None) -> events.InputEvent | events.DeadLetter:
        """The decoded event for one record, or the dead letter that replaces it."""
        route = self._routes.get(topic)
        if route is None:
            return self._unknown_topic(topic, partition, offset, key, value)
        schema, decoder, stream = route
        if value is not None and len(value) > MAX_MESSAGE_BYTES:
            return self._too_large(topic, schema, stream, partition, offset, key, value)
        try:
            event = decoder.decode(value)  # type: ignore[arg-type]
        except _FAST_FAILURES:
            try:
                event = events.decode(schema, value or b"")
            except InvalidEventError as err:
                return self._reject(topic, schema, stream, partition, offset, key, value, err)
        if key is not None and key != event.subscriber_id.encode():
            mismatch = self._key_mismatch(key, event)
            if mismatch is not None:
                return self._reject(topic, schema, stream, partition, offset, key, value, mismatch)
        bad = self._screen([event])
        if bad:
            return self._reject(topic, schema, stream, partition, offset, key, value, bad[0][1])
        self.decoded[stream] = self.decoded.get(stream, 0) + 1
        return event

    def decode_batch(self, topic: str, partition: int | None,
                     records: Iterable[tuple[int | None, bytes | None, bytes | None]],
                     ) -> tuple[list[events.InputEvent], list[events.DeadLetter]]:
        """Decode ``(offset, key, value)`` records of one topic-partition, in order.

        Returns the decoded events and the dead letters, each in input order. The topic's schema
        and decoder are looked up once and counters updated once per batch, so a valid record
        costs little more than the msgspec decode itself.
        """
        route = self._routes.get(topic)
        if route is None:
            return [], [self._unknown_topic(topic, partition, offset, key, value)
                        for offset, key, value in records]
        schema, decoder, stream = route
        fast_decode = decoder.decode
        decoded: list[events.InputEvent] = []
        sources: list[Any] = []   # each decoded event's record, for the rare late rejection
        letters: list[events.DeadLetter] = []
        append, keep_source = decoded.append, sources.append
        for record in records:
            offset, key, value = record
            try:
                if value is not None and len(value) > MAX_MESSAGE_BYTES:
                    letters.append(self._too_large(topic, schema, stream, partition, offset, key, value))
                    continue
                event = fast_decode(value)
            except _FAST_FAILURES:
                try:
                    event = events.decode(schema, value or b"")
                except InvalidEventError as err:
                    letters.append(self._reject(topic, schema, stream, partition, offset, key, value, err))
                    continue
            if key is not None and key != event.subscriber_id.encode():
                mismatch = self._key_mismatch(key, event)
                if mismatch is not None:
                    letters.append(self._reject(topic, schema, stream, partition, offset, key, value, mismatch))
                    continue
            append(event)
            keep_source(record)
        kept = decoded
        bad = dict(self._screen(decoded)) if decoded else None
        if bad:
            kept = []
            for i, event in enumerate(decoded):
                if i in bad:
                    offset, key, value = sources[i]
                    letters.append(self._reject(topic, schema, stream, partition, offset, key, value, bad[i]))
                else:
                    kept.append(event)
            letters.sort(key=lambda letter: -1 if letter.offset is None else letter.offset)
        if kept:
            self.decoded[stream] = self.decoded.get(stream, 0) + len(kept)
        return kept, letters

    def _screen(self, decoded: list[Any]) -> list[tuple[int, InvalidEventError]]:
        """Valid records this worker still refuses: dated too far ahead of the wall clock, or a
        label (region, segment, cell) outside :data:`LABEL_PATTERN`. ``(index, error)`` pairs,
        at most one per record. The common case (nothing to refuse) costs a ``max`` and a set
        per label field, in C; only a batch with something to refuse is walked record by record."""
        skew = self.max_clock_skew_ms
        limit = self.clock_ms() + skew if skew is not None else None
        too_new = limit is not None and max(map(_TS, decoded)) > limit
        ok = self._labels_ok
        names = _label_fields(decoded[0])
        refused: set[str] = set()
        for name in names:
            for text in set(map(operator.attrgetter(name), decoded)) - ok:
                if LABEL_PATTERN.fullmatch(text):
                    if len(ok) >= _MAX_KNOWN_LABELS:
                        ok.clear()
                        ok.add(None)
                    ok.add(text)
                else:
                    refused.add(text)
        if not too_new and not refused:
            return []
        bad: list[tuple[int, InvalidEventError]] = []
        for i, event in enumerate(decoded):
            if too_new and event.ts_ms > limit:  # type: ignore[operator]
                ahead_s = (event.ts_ms - limit + skew) / 1000  # type: ignore[operator]
                bad.append((i, _error(f"$.ts_ms: Expected an event time at most {skew / 1000:g} s ahead of "  # type: ignore[operator]
                                      f"the worker's clock, got `int` {event.ts_ms} ({ahead_s:.0f} s ahead)",
                                      "$.ts_ms", "clock_skew")))
                continue
            for name in names:
                text = getattr(event, name)
                if text in refused:
                    bad.append((i, _error(f"$.{name}: Expected 1-64 letters, digits, spaces or '_.:-' (no markup), "
                                          f"got `str` {text[:40]!r}", f"$.{name}", "bad_format")))
                    break
        return bad

    # -- rejections (the slow path: cost does not matter here) ----------------------------------

    @staticmethod
    def _key_mismatch(key: Any, event: Any) -> InvalidEventError | None:
        if isinstance(key, str) and key == event.subscriber_id:
            return None
        shown = key.decode("utf-8", "backslashreplace") if isinstance(key, (bytes, bytearray)) else str(key)
        return _error(f"$.subscriber_id: Expected the record's key {shown!r}, got `str` {event.subscriber_id!r} "
                      "(a record keyed by another id lands on the wrong partition)",
                      "$.subscriber_id", "key_mismatch")

    def _unknown_topic(self, topic: str, partition: int | None, offset: int | None, key: Any,
                       value: bytes | None) -> events.DeadLetter:
        err = _error(f"unknown topic {topic!r}: expected one of {', '.join(sorted(self._routes))}",
                     None, "unknown_topic")
        return self._reject(topic, "none", UNKNOWN_STREAM, partition, offset, key, value, err)

    def _too_large(self, topic: str, schema: str, stream: str, partition: int | None, offset: int | None,
                   key: Any, value: bytes) -> events.DeadLetter:
        err = _error(f"message too large: expected at most {MAX_MESSAGE_BYTES} bytes, got {len(value)} bytes "
                     f"(value_b64 keeps only the first {MAX_KEPT_BYTES})", None, "too_large")
        return self._reject(topic, schema, stream, partition, offset, key, value[:MAX_KEPT_BYTES], err)

    def _reject(self, topic: str, schema: str, stream: str, partition: int | None, offset: int | None,
                key: Any, value: bytes | None, err: InvalidEventError) -> events.DeadLetter:
        kind = getattr(err, "kind", None)
        if kind not in REASON_KINDS:  # never let an unforeseen class become a new label value
            kind = "wrong_type"
        counter = (stream, kind)
        self.dead_lettered[counter] = self.dead_lettered.get(counter, 0) + 1
        if isinstance(key, str):
            key = key.encode()
        value = bytes(value) if value is not None else None
        if self.pseudonymise is not None:
            key, value, err = self._redact(key, value, err)
        return events.dead_letter(source_topic=topic, partition=partition, offset=offset, key=key,
                                  value=value, error=err, schema=schema, received_at_ms=self.clock_ms(),
                                  worker=self.worker)

    def _redact(self, key: bytes | None, value: bytes | None,
                err: InvalidEventError) -> tuple[bytes | None, bytes | None, InvalidEventError]:
        """Subscriber ids in a dead letter replaced by their pseudonyms (key, reason, bytes)."""
        ids: set[str] = set()
        if key is not None:
            try:
                ids.add(key.decode())
            except UnicodeDecodeError:
                pass
        for match in _SID_IN_BYTES.finditer(value or b""):
            try:
                ids.add(match.group(1).decode())
            except UnicodeDecodeError:
                pass
        ids.discard("")
        names = {sid: self.pseudonymise(sid) for sid in ids}  # type: ignore[misc]
        reason = err.reason
        for sid in sorted(names, key=len, reverse=True):
            reason = reason.replace(repr(sid), repr(names[sid])).replace(sid, names[sid])
        if reason != err.reason:
            kind = getattr(err, "kind", None)
            err = _error(reason, err.field, kind) if kind else InvalidEventError(reason, err.field)
        if key is not None:  # a key that is not an id we could name is not kept
            text = key.decode(errors="replace")
            key = names[text].encode() if text in names else None
        if value is not None and not self.keep_original:
            if names:
                for sid in sorted(names, key=len, reverse=True):
                    value = value.replace(sid.encode(), names[sid].encode())
            elif b"subscriber_id" in value:
                value = b""  # an id is in there somewhere, and we cannot find it: keep nothing
        return key, value, err
