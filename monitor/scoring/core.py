"""The risk core of one input partition: per-subscriber feature state, the online River model,
late-label joining, scores with reasons, material-change emission. Pure: no Kafka, no event loop.

The same object runs in the Faust worker (one per assigned partition), in ``satmon replay`` and in
the tests. Every time-dependent rule runs on event time, so equal input gives equal scores.

>>> from monitor.records.events import decode
>>> core = PartitionCore(0)
>>> raw = (b'{"event_id":"e1","subscriber_id":"s1","ts_ms":1700000000000,"cell_id":"c1",'
...        b'"region":"north","radio":"4G","service":"video","rsrp_dbm":-121,"sinr_db":-3,'
...        b'"dl_mbps":0.5,"ul_mbps":0.1,"latency_ms":250,"jitter_ms":40,"packet_loss_pct":6,'
...        b'"call_drop":true,"video_stall_s":30}')
>>> [s] = core.process_batch([decode("network_event.v1", raw)])
>>> s.reasons[0].code in {"worst_moment", "recent_moments", "weak_coverage", "drops", "stalls", "latency"}
True
>>> 0.0 < s.outcomes.complaint < s.score < 1.0
True
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import msgspec
from monitor.records.events import AppEvent, NetworkEvent, OutcomeProbabilities, Reason, RiskScore, TicketEvent
from monitor.scoring.features import (
    FEATURE_TABLE,
    FEATURES,
    SubscriberState,
    apply_event,
    event_key,
    fast_round,
    feature_vector,
    outcome_of,
    pack_features,
    seen_before,
    unpack,
)
from monitor.scoring.risk import OUTCOMES, LabelRecord, RiskModel

__all__ = ["HOUR_MS", "LabelJoin", "LabelRecord", "PartitionCore", "RiskModel"]

HOUR_MS = 3_600_000
#: the default ``at_risk_threshold``: a calibrated probability of 20 % that some outcome follows
#: (complaint or detractor answer within 72 h, port-out within 7 days), 3-5 times the base rates of
#: the simulated worlds; about the top 1 % of a learned model's scores (docs/MODEL.md)
AT_RISK_THRESHOLD = 0.2
#: a score moving by at least this share of itself (of the larger of the old and the new score) is
#: a material change worth a ``risk_score.v1`` record: the odds of a calibrated probability of a few
#: percent move by about as much. Absolute steps (0.05, and 0.15 below 0.25) fitted the uncalibrated
#: scores; on calibrated ones (median 0.04) they left an outage's subscribers without a new record
MATERIAL_SHARE = 0.25
#: a label's snapshot matures this long after its horizon (outcome records arriving a little late)
LABEL_GRACE_MS = HOUR_MS
#: how often (event time) quiet subscribers' matured labels are collected
SWEEP_EVERY_MS = HOUR_MS
#: default of the ``state_cache_per_partition`` setting
STATE_CACHE_PER_PARTITION = 250_000
#: how often (in events) quiet subscribers are evicted from the cache
EVICT_EVERY = 20_000

_encode_state = msgspec.msgpack.Encoder().encode
#: a new subscriber's state is a copy of this one (a struct's copy shares its field values; the
#: constructor matches 56 defaults to keywords): equal to ``SubscriberState(last_ts=t)`` once
#: ``last_ts`` is set
_NEW_STATE = SubscriberState(last_ts=0)
_decode_state = msgspec.msgpack.Decoder(SubscriberState).decode

log = logging.getLogger(__name__)

#: each feature's wording (``Feature.words``) by index: :func:`describe` of a feature of the table
_WORDS = tuple(f.words for f in FEATURE_TABLE)
assert OUTCOMES == ("complaint", "detractor", "churn"), "_emit names OutcomeProbabilities' fields in order"

#: the partition checkpoint's format tag (msgpack: plain data only, see PartitionCore.checkpoint)
CHECKPOINT_FORMAT = "satmon-partition-checkpoint/2"
#: default of the ``max_clock_skew_s`` setting: how far ahead of the wall clock an event may be
MAX_CLOCK_SKEW_S = 300.0


class CheckpointRefused(ValueError):
    """A checkpoint that is not in the data-only format (e.g. an old pickle from a topic)."""


def _is_pickle(blob: bytes) -> bool:
    # protocol 2+ starts with PROTO (0x80); protocols 0/1 with an opcode such as "(", "}", "]", "c"
    return blob[:1] in (b"\x80", b"(", b"}", b"]", b"c")


def wall_clock_ms() -> int:
    """``scored_at_ms`` of emitted records (the only wall-clock value in the core's output)."""
    return int(time.time() * 1000)


def _further(model: RiskModel, than: RiskModel) -> bool:
    """Whether ``model`` has learned more than ``than``: further along the labels topic when both
    learn from it (a model read from offset 0 and one restored at a later offset hold the same
    labels below their offsets), else more labels."""
    if model.labels_offset is not None and than.labels_offset is not None:
        return model.labels_offset > than.labels_offset
    if model.labels_offset is not None and than.n_labels == 0:
        return True
    return model.n_labels > than.n_labels


class LabelJoin(NamedTuple):
    """One outcome label learned: where, whose, which outcome (``complaint``/``detractor``/
    ``churn``), the snapshot's features, the model's probability of the outcome within the learning
    horizon before learning it (test-then-train), and whether it happened."""

    partition: int
    subscriber_id: str
    kind: str
    x: list[float]
    p: float
    y: bool


def core_options(settings: Any) -> dict[str, Any]:
    """The core's keyword arguments from :class:`monitor.config.Settings` (None: the defaults): the
    one place settings are mapped onto a core."""
    return {} if settings is None else {k: getattr(settings, k) for k in PartitionCore.SETTINGS}


def model_options(settings: Any) -> dict[str, Any]:
    """The risk model's keyword arguments from settings: the label horizon."""
    return {} if settings is None else {"learn_horizon_hours": settings.label_horizon_hours}


class PartitionCore:
    """All risk state of one input partition.

    Parameters
    ----------
    partition
        The Kafka partition these subscribers hash to.
    at_risk_threshold
        Headline score from which a subscriber is "at risk" (the record's ``at_risk`` flag).
    state_ttl_days
        A subscriber with no event for this long is forgotten (state evicted).
    max_clock_skew_s
        A restored watermark is clamped to wall clock + this (ingest refuses later events).
    state_cache_per_partition
        Subscribers kept in memory when a state table backs the cache (see :meth:`shrink_cache`).
    model_checkpoint
        A warm-start file (``monitor.scoring.warmstart``) for a model of its own (ignored with ``model``).
    state_loader
        ``subscriber_id -> bytes | None``: a cache miss is looked up here (the worker's table).
    model
        The :class:`RiskModel` to score with, shared by every core of the process (the operator's
        one model: it must not depend on which partitions a worker owns). None: a model of its own.
    label_sink
        Where matured :class:`LabelRecord` go. None: straight into ``model`` (replay, tests, one
        process); a worker sends them to the labels topic every worker learns from instead, and
        feeds what it reads there to :meth:`RiskModel.learn` (see docs/MODEL.md).
    """

    #: the :class:`monitor.config.Settings` fields that are hyper-parameters of a core
    SETTINGS = ("at_risk_threshold", "state_ttl_days", "max_clock_skew_s", "state_cache_per_partition",
                "model_checkpoint")

    def __init__(self, partition: int, *, at_risk_threshold: float = AT_RISK_THRESHOLD, state_ttl_days: float = 30.0,
                 max_clock_skew_s: float = MAX_CLOCK_SKEW_S,
                 state_cache_per_partition: int = STATE_CACHE_PER_PARTITION, model_checkpoint: str | None = None,
                 state_loader: Callable[[str], bytes | None] | None = None,
                 clock_ms: Callable[[], int] | None = None, model: RiskModel | None = None,
                 label_sink: Callable[[LabelRecord], None] | None = None) -> None:
        self.partition = partition
        self.at_risk_threshold = at_risk_threshold
        self.state_ttl_days = state_ttl_days
        self.max_clock_skew_s = max_clock_skew_s
        self.state_cache_per_partition = state_cache_per_partition
        self.model_checkpoint = model_checkpoint
        self.threshold = at_risk_threshold
        self.ttl_ms = int(state_ttl_days * 24 * HOUR_MS)
        self.state_loader = state_loader
        self.clock_ms = clock_ms or wall_clock_ms
        self.max_skew_ms = int(max_clock_skew_s * 1000)
        #: checkpoints refused at restore (an old pickle, a corrupt blob): the partition started fresh
        self.checkpoints_refused = 0
        self.shared_model = model is not None
        if model is not None:
            self.model = model
        elif model_checkpoint:
            from monitor.scoring.warmstart import load_model

            self.model = load_model(model_checkpoint)  # a warm start; a partition checkpoint overrides it
        else:
            self.model = RiskModel()
        self.label_sink = label_sink
        self.label_horizon_ms = int(self.model.learn_horizon_hours * HOUR_MS)
        self.labels_matured = 0
        self._swept_ms = 0
        self.states: dict[str, SubscriberState] = {}
        self.dirty: set[str] = set()
        self.evicted: set[str] = set()
        self.watermark_ms = 0
        self.labels_dropped = 0
        self.cache_max = int(state_cache_per_partition)
        self.cache_dropped = 0
        #: called with a :class:`LabelJoin` for every label learned (metrics, feature exports)
        self.on_label: Callable[[LabelJoin], None] | None = None
        self.duplicates = 0
        self.events = 0
        self._since_evict = 0

    # -- state ----------------------------------------------------------------------------------

    def state(self, subscriber_id: str) -> SubscriberState | None:
        st = self.states.get(subscriber_id)
        if st is None and self.state_loader is not None:
            blob = self.state_loader(subscriber_id)
            if blob:
                st = self.states[subscriber_id] = _decode_state(blob)
        return st

    def shrink_cache(self) -> int:
        """With a state table behind the cache (``state_loader``), keep at most ``cache_max``
        subscribers in memory: drop the quietest (oldest event time) clean ones down to 90 % of it.
        They stay in the table and come back on their next event. Returns how many were dropped."""
        if self.state_loader is None or len(self.states) <= self.cache_max:
            return 0
        keep = int(self.cache_max * 0.9)
        excess = len(self.states) - keep
        dirty = self.dirty
        victims = heapq.nsmallest(excess, ((st.last_ts, sid) for sid, st in self.states.items() if sid not in dirty))
        for _, sid in victims:
            del self.states[sid]
        self.cache_dropped += len(victims)
        return len(victims)

    def cell_of(self, subscriber_id: str) -> tuple[str | None, str | None]:
        st = self.states.get(subscriber_id)
        return (st.cell, st.region) if st is not None else (None, None)

    def take_dirty(self) -> dict[str, bytes | None]:
        """Serialized states changed since the last call; ``None`` for evicted subscribers."""
        states, encode = self.states, _encode_state
        out: dict[str, bytes | None] = {sid: encode(st) for sid in self.dirty if (st := states.get(sid)) is not None}
        for sid in self.evicted:
            out[sid] = None
        self.dirty.clear()
        self.evicted.clear()
        return out

    def evict_quiet(self) -> int:
        cutoff = self.watermark_ms - self.ttl_ms
        gone = [sid for sid, st in self.states.items() if st.last_ts < cutoff]
        for sid in gone:
            del self.states[sid]
            self.dirty.discard(sid)
            self.evicted.add(sid)
        return len(gone)

    # -- model checkpoint -------------------------------------------------------------------------

    def checkpoint(self) -> bytes:
        """The model and watermark in a data-only format: msgpack of the model's ``to_state()``
        (weights and statistics), never a pickle -- whoever can write the model table's changelog
        topic must not be able to run code on the workers. The model class must provide
        ``to_state() -> dict`` and ``from_state(dict)`` of plain data, complete: every learned
        attribute (``tests/test_security.py`` round-trips a trained model and compares scores)."""
        return msgspec.msgpack.encode({"format": CHECKPOINT_FORMAT, "model": self.model.to_state(),
                                       "watermark_ms": self.watermark_ms})

    def restore(self, blob: bytes) -> bool:
        """Load a :meth:`checkpoint`. A blob in any other format -- an old pickled checkpoint
        read from the topic, a corrupt one -- is refused: logged, counted in
        ``checkpoints_refused``, and the partition keeps its fresh model (never unpickled; migrate
        a trusted local file with :func:`migrate_checkpoint`). A watermark beyond wall clock +
        ``max_clock_skew_s`` (a far-future event from before the skew guard) is clamped.
        Returns whether the checkpoint was used."""
        try:
            if _is_pickle(blob):
                raise CheckpointRefused("a pickled checkpoint (the old format); pickles are never loaded from a topic")
            data = msgspec.msgpack.decode(blob)
            if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointRefused(f"not a {CHECKPOINT_FORMAT} checkpoint")
            model = type(self.model).from_state(data["model"])
            watermark = int(data["watermark_ms"])
        except (CheckpointRefused, msgspec.DecodeError, KeyError, TypeError, ValueError) as err:
            self.checkpoints_refused += 1
            log.error("partition %d: model checkpoint refused (%s); starting from a fresh model", self.partition, err)
            return False
        if not self.shared_model:
            self.model = model
        elif _further(model, self.model):
            # one model per process: a partition's checkpoint brings it forward, never back
            self.model.__setstate__(model.to_state())
        limit = self.clock_ms() + self.max_skew_ms
        if watermark > limit:
            log.warning("partition %d: checkpointed watermark %d is %.0f s ahead of the clock; clamped",
                        self.partition, watermark, (watermark - limit + self.max_skew_ms) / 1000)
            watermark = limit
        self.watermark_ms = max(self.watermark_ms, watermark)
        return True

    # -- processing ------------------------------------------------------------------------------

    def process_batch(self, events: Iterable[Any]) -> list[RiskScore]:
        """Apply ``events`` in order (test-then-train: each is scored on the state and model as of
        its arrival); the ``risk_score.v1`` records of the material changes, in order.

        One loop over the batch with the per-event steps inline: the state cache and the label
        horizon are read once per batch, the watermark and the counters are locals written back
        before a step that reads them and at the end, and the quiet majority of events (no material
        change) leaves from here without a call to :meth:`_emit` (docs/WORKER.md, issue 22)."""
        out: list[RiskScore] = []
        states = self.states
        mark_dirty = self.dirty.add
        horizon = self.label_horizon_ms
        model = self.model
        threshold = self.threshold
        share = MATERIAL_SHARE
        new_state = _NEW_STATE.__copy__
        watermark, swept, since_evict = self.watermark_ms, self._swept_ms, self._since_evict
        applied = duplicates = 0
        try:
            for event in events:
                sid = event.subscriber_id
                ts = event.ts_ms
                st = states.get(sid)
                if st is None:
                    st = self.state(sid)   # a cache miss: the state table, if any
                    if st is None:
                        st = states[sid] = new_state()   # every field at its default ...
                        st.last_ts = ts                   # ... but the first event's time
                key = event_key(event.event_id)
                if key in st.recent_ids and seen_before(st, key):
                    duplicates += 1
                    continue
                applied += 1
                if ts > watermark:
                    watermark = ts
                if st.snap_ts and ts > st.snap_ts + horizon:
                    self._mature(sid, st)
                network = isinstance(event, NetworkEvent)
                outcome = None if network else outcome_of(event)
                if outcome is not None:
                    if st.snap_ts and ts > st.snap_ts:
                        st.lab_y |= 1 << OUTCOMES.index(outcome)
                    if outcome == "churn":
                        st.gone_ts = ts
                apply_event(st, event, key)
                x = feature_vector(st, st.last_ts)   # max(ts, last_ts): apply_event moved last_ts to it
                if network and not st.snap_ts and not st.gone_ts:
                    # a label's snapshot: what the subscriber looked like at ts; it matures into a label
                    # (did each outcome follow within the learning horizon?) once the horizon has passed
                    st.snap_ts, st.snap_x, st.lab_y = ts, pack_features(*x), 0
                mark_dirty(sid)
                if watermark - swept >= SWEEP_EVERY_MS:
                    self.watermark_ms = self._swept_ms = swept = watermark
                    self.sweep_labels()
                if len(states) > self.cache_max:
                    self.shrink_cache()  # never drops ``sid``: it is dirty until the next take_dirty
                since_evict += 1
                if since_evict >= EVICT_EVERY:
                    since_evict = 0
                    self.watermark_ms = watermark
                    self.evict_quiet()
                # the headline score and each outcome's probability (RiskModel.score_probs: the floats
                # of predict and score; looked up per event, a label learned above rebuilds it)
                score, p0, p1, p2 = model.score_probs(x)
                last = st.last_score
                if st.at_risk_since <= 0 and last >= 0 and score < threshold:
                    limit = share * (last if last > score else score)   # max()'s value
                    if -limit < score - last < limit:   # abs(score - last) < limit, NaN included
                        continue   # most events: a subscriber well clear of the list stays quiet
                emitted = self._emit(sid, st, x, ts, score, (p0, p1, p2))
                if emitted is not None:
                    out.append(emitted)
        finally:
            self.watermark_ms, self._swept_ms, self._since_evict = watermark, swept, since_evict
            self.events += applied
            self.duplicates += duplicates
        return out

    def process(self, event: NetworkEvent | TicketEvent | AppEvent) -> RiskScore | None:
        """:meth:`process_batch` of one event: its ``risk_score.v1`` record, or None."""
        scores = self.process_batch((event,))
        return scores[0] if scores else None

    def _mature(self, sid: str, st: SubscriberState) -> None:
        """Turn the subscriber's pending snapshot into a :class:`LabelRecord` and learn it (or
        hand it to ``label_sink``)."""
        x = unpack(st.snap_x)
        if len(x) < len(FEATURES):   # taken before features were added (the table only grows at its end)
            x += [0.0] * (len(FEATURES) - len(x))
        rec = LabelRecord(ts_ms=st.snap_ts, x=x, y=[(st.lab_y >> i) & 1 for i in range(len(OUTCOMES))],
                          partition=self.partition)
        st.snap_ts, st.snap_x, st.lab_y = 0, b"", 0
        self.dirty.add(sid)
        self.labels_matured += 1
        before = [self.model.hazard(o, x) for o in OUTCOMES] if self.on_label is not None else None
        if self.label_sink is not None:
            self.label_sink(rec)
        else:
            self.model.learn(rec)
        if before is not None:
            for o, p, y in zip(OUTCOMES, before, rec.y):
                self.on_label(LabelJoin(self.partition, sid, o, x, p, bool(y)))

    def sweep_labels(self) -> int:
        """Mature the snapshots of cached subscribers whose horizon (plus ``LABEL_GRACE_MS``) has
        passed in event time: the quiet and the gone have no next event to do it."""
        cutoff = self.watermark_ms - self.label_horizon_ms - LABEL_GRACE_MS
        due = [(sid, st) for sid, st in self.states.items() if st.snap_ts and st.snap_ts < cutoff]
        for sid, st in due:
            self._mature(sid, st)
        return len(due)

    def scores_at(self, t_ms: int) -> Iterator[tuple[str, float]]:
        """``(subscriber_id, score)`` of every cached subscriber as of event time ``t_ms``, from the
        current state and model (nothing is emitted or changed)."""
        score = self.model.score
        for sid, st in self.states.items():
            if not st.gone_ts:
                yield sid, score(feature_vector(st, max(t_ms, st.last_ts)))

    def outcome_scores_at(self, t_ms: int) -> Iterator[tuple[str, dict[str, float]]]:
        """``(subscriber_id, {outcome: probability within its horizon})`` of every cached
        subscriber not gone (ported out) as of event time ``t_ms``."""
        predict = self.model.predict
        for sid, st in self.states.items():
            if not st.gone_ts:
                yield sid, predict(feature_vector(st, max(t_ms, st.last_ts)))

    def _emit(self, sid: str, st: SubscriberState, x: list[float], ts: int, score: float,
              outcome_probs: tuple[float, float, float]) -> RiskScore | None:
        """A ``risk_score.v1`` record when the change is material: the first score of a subscriber,
        an at-risk flip, a move of :data:`MATERIAL_SHARE` of the score, or a new top reason while
        at risk.
        ``score`` and ``outcome_probs`` are :meth:`RiskModel.score_probs` of ``x``;
        :meth:`process_batch` has already let pass the events of a subscriber not at risk whose
        score moved too little."""
        was_at_risk = st.at_risk_since > 0
        model = self.model
        last = st.last_score
        threshold = self.threshold
        at_risk = score >= threshold
        # max(score, last) as the comparison it makes (the builtin parses keywords on every call)
        moved = abs(score - last) >= MATERIAL_SHARE * (last if last > score else score) or at_risk != was_at_risk
        if not moved and not at_risk:
            return None   # not material, and the top reason only counts while at risk
        # the reasons come from the head of the outcome most likely (the first of equals: what
        # max(OUTCOMES, key=(probability, -index)) picks), its contributions above 0.05, largest first
        p0, p1, p2 = outcome_probs
        best, p_best = 0, p0
        if p1 > p_best:
            best, p_best = 1, p1
        if p2 > p_best:
            best = 2
        ranked = model.contributions_above(OUTCOMES[best], x, 0.05)
        # (contribution, index) pairs are distinct (one per index): descending order is the
        # reverse of the ascending one
        ranked.sort(reverse=True)
        del ranked[4:]
        top = FEATURES[ranked[0][1]] if ranked else ""
        if not moved and top == st.last_top:
            return None
        if at_risk and not st.at_risk_since:
            st.at_risk_since = ts
        elif not at_risk:
            st.at_risk_since = 0
        st.last_score, st.last_top = score, top
        reasons: list[Reason] = []
        codes: list[str] = []
        for c, i in ranked:  # one reason per code (coverage now and at its worst merge)
            code, text, value = _WORDS[i](st, x[i])   # describe(FEATURES[i], st, x[i])
            if code not in codes:
                codes.append(code)
                reasons.append(Reason(code=code, text=text, value=value, contribution=fast_round(c, 4)))
        return RiskScore(subscriber_id=sid, ts_ms=ts, scored_at_ms=self.clock_ms(), score=fast_round(score, 4),
                         at_risk=at_risk, reasons=reasons, model_version=model.n_labels,
                         prior=fast_round(model.prior_score_of(x), 4),
                         outcomes=OutcomeProbabilities(complaint=fast_round(p0, 4), detractor=fast_round(p1, 4),
                                                       churn=fast_round(p2, 4)),
                         at_risk_since_ms=st.at_risk_since or None, region=st.region,
                         segment=st.segment, cell_id=st.cell)


def migrate_checkpoint(src: str, dst: str) -> str:
    """Convert an old pickled checkpoint **from a trusted local file** (a partition checkpoint
    ``{"model", "watermark_ms"}`` or a pickled model, of the current model class) into a warm-start
    file (``monitor.scoring.warmstart``'s data-only format) that ``SATMON_MODEL_CHECKPOINT`` loads; returns
    ``dst``. Run it once, by hand, on a file you trust: unpickling runs whatever the file says.
    Workers never unpickle."""
    import pickle
    from pathlib import Path

    from monitor.scoring.warmstart import FORMAT

    data = pickle.loads(Path(src).read_bytes())  # noqa: S301 -- trusted local file, by contract
    model = data["model"] if isinstance(data, dict) else data
    Path(dst).write_bytes(msgspec.msgpack.encode({"format": FORMAT, "model": model.to_state(),
                                                  "migrated_from": Path(src).name}))
    return dst
