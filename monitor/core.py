"""The risk core of one input partition: per-subscriber feature state, the online River model,
late-label joining, scores with reasons, material-change emission. Pure: no Kafka, no event loop.

The same object runs in the Faust worker (one per assigned partition), in ``satmon replay`` and in
the tests. Every time-dependent rule runs on event time, so equal input gives equal scores.

>>> from monitor.events import decode
>>> core = PartitionCore(0)
>>> raw = (b'{"event_id":"e1","subscriber_id":"s1","ts_ms":1700000000000,"cell_id":"c1",'
...        b'"region":"north","radio":"4G","service":"video","rsrp_dbm":-121,"sinr_db":-3,'
...        b'"dl_mbps":0.5,"ul_mbps":0.1,"latency_ms":250,"jitter_ms":40,"packet_loss_pct":6,'
...        b'"call_drop":true,"video_stall_s":30}')
>>> [s] = core.process_batch([decode("network_event.v1", raw)])
>>> s.at_risk, s.reasons[0].code in {"worst_moment", "recent_moments", "weak_coverage", "drops", "stalls", "latency"}
(True, True)
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import msgspec
from river import linear_model, optim

from monitor.events import AppEvent, NetworkEvent, Reason, RiskScore, TicketEvent
from monitor.features import (
    FEATURES,
    PRIOR_BIAS,
    PRIOR_WEIGHTS,
    SubscriberState,
    apply_event,
    describe,
    event_key,
    feature_vector,
    pack,
    seen_before,
    unpack,
)

HOUR_MS = 3_600_000
#: a score moving by at least this much is a material change worth a ``risk_score.v1`` record
MATERIAL_DELTA = 0.05
#: ... and this much while both the old and the new score are below half the at-risk threshold
LOW_DELTA = 0.15
#: labels after which the learned model carries half of the blend with the rule-based prior
BLEND_HALF_LABELS = 100
#: sample weight of a complaint label relative to a survey answer (see :class:`RiskModel`)
COMPLAINT_WEIGHT = 0.5
#: at most one feature snapshot per subscriber per this interval is kept for joining late labels
SNAPSHOT_EVERY_MS = HOUR_MS
#: default of the ``state_cache_per_partition`` setting
STATE_CACHE_PER_PARTITION = 250_000
#: how often (in events) quiet subscribers are evicted from the cache
EVICT_EVERY = 20_000

_encode_state = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(SubscriberState).decode

log = logging.getLogger(__name__)

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


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class LabelJoin(NamedTuple):
    """One label learned: where, whose, what kind (``complaint``/``survey``), the features it was
    joined to, the model's prediction before learning it (test-then-train), and the label."""

    partition: int
    subscriber_id: str
    kind: str
    x: list[float]
    p: float
    y: bool


class RiskModel:
    """Online logistic regression (River) on the features, starting from a transparent prior.

    The River model's weights start at the rule-based prior (:data:`~monitor.features.PRIOR_WEIGHTS`,
    :data:`~monitor.features.PRIOR_BIAS`), so at cold start the model *is* the prior; every label
    then moves it by stochastic gradient (test-then-train). The score is a blend
    ``(1 - a) * prior + a * model`` with ``a = n / (n + blend_half_labels)``, so a handful of early
    labels cannot swing the scores of every subscriber.

    ``complaint_weight`` is the sample weight of a complaint label. Complaints are positives only
    (nobody files a "happy" ticket): they teach the model *what* makes people unhappy, but they
    would inflate *how many*. So the learned log-odds go through a calibrator (Platt scaling: a
    one-feature River logistic regression, starting at the identity) that learns from survey
    answers only -- the labels that sample satisfied and dissatisfied subscribers alike.

    Hyper-parameters are constructor arguments stored under the same names (River's protocol);
    learned state is the River model and the counters.
    """

    def __init__(self, *, lr: float = 0.02, l2: float = 0.0, blend_half_labels: int = BLEND_HALF_LABELS,
                 complaint_weight: float = COMPLAINT_WEIGHT, calibration_lr: float = 0.05) -> None:
        self.lr = lr
        self.l2 = l2
        self.blend_half_labels = blend_half_labels
        self.complaint_weight = complaint_weight
        self.calibration_lr = calibration_lr
        self.calibrator = linear_model.LogisticRegression(optimizer=optim.SGD(calibration_lr),
                                                          intercept_lr=calibration_lr)
        self.calibrator._weights["z"] = 1.0
        self._ca, self._cb = 1.0, 0.0
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(lr), l2=l2, intercept_init=PRIOR_BIAS,
                                                     intercept_lr=lr)
        for name, w in zip(FEATURES, PRIOR_WEIGHTS):
            self.model._weights[name] = w
        self.n_labels = 0
        self.n_positive = 0
        self.logloss_sum = 0.0
        self._w = list(PRIOR_WEIGHTS)
        self._b = PRIOR_BIAS

    def blend(self) -> float:
        """Weight of the learned model in [0, 1): 0 at cold start, 0.5 after ``blend_half_labels``."""
        return self.n_labels / (self.n_labels + self.blend_half_labels)

    def score(self, x: Sequence[float]) -> float:
        """The blended probability only (what evaluation and the API's fresh scores need)."""
        a = self.blend()
        prior_z = PRIOR_BIAS
        model_z = self._b
        for xi, pw, w in zip(x, PRIOR_WEIGHTS, self._w):
            if xi:
                prior_z += pw * xi
                model_z += w * xi
        return (1 - a) * _sigmoid(prior_z) + a * _sigmoid(self._ca * model_z + self._cb)

    def _model_z(self, x: Sequence[float]) -> float:
        return self._b + sum(w * xi for w, xi in zip(self._w, x) if xi)

    def contributions(self, x: Sequence[float]) -> tuple[float, float, list[float]]:
        """(score, prior, per-feature contribution to the blended log-odds)."""
        a = self.blend()
        w, pw = self._w, PRIOR_WEIGHTS
        prior_z = PRIOR_BIAS
        model_z = self._b
        contrib = []
        for i, xi in enumerate(x):
            if xi:
                pz = pw[i] * xi
                mz = w[i] * xi
                prior_z += pz
                model_z += mz
                contrib.append((1 - a) * pz + a * self._ca * mz)
            else:
                contrib.append(0.0)
        prior = _sigmoid(prior_z)
        score = (1 - a) * prior + a * _sigmoid(self._ca * model_z + self._cb)
        return score, prior, contrib

    def learn(self, x: Sequence[float], y: bool, weight: float = 1.0, *, calibrate: bool = True) -> float:
        """Test-then-train: returns the prediction made before learning (also in the running
        log-loss). ``calibrate``: the label samples both classes (a survey answer), so the
        calibrator learns from it too."""
        p = self.score(x)
        q = min(max(p, 1e-6), 1 - 1e-6)
        self.logloss_sum += -math.log(q if y else 1 - q)
        if calibrate:
            self.calibrator.learn_one({"z": self._model_z(x)}, y)
        self.model.learn_one(dict(zip(FEATURES, x)), y, w=weight)
        self.n_labels += 1
        self.n_positive += int(y)
        self.refresh()
        return p

    def learn_row(self, x: dict[str, float], y: bool, *, stream: bool, weight: float = 1.0,
                  calibrate: bool = True) -> None:
        """Learn one row of a warm-start file (any named features, see :mod:`monitor.warmstart`);
        only rows carrying stream features count towards the blend weight."""
        if calibrate:
            z = sum(self.model._weights.get(k, 0.0) * v for k, v in x.items()) + self.model.intercept
            self.calibrator.learn_one({"z": z}, y)
        self.model.learn_one(x, y, w=weight)
        if stream:
            self.n_labels += 1
            self.n_positive += int(y)
        self.refresh()

    def to_state(self) -> dict[str, Any]:
        """Everything learned, as plain data (numbers, strings, lists, dicts): what a partition
        checkpoint stores (msgpack), never a pickle. **Keep complete**: every learned attribute
        a later version adds must be written here and read back in :meth:`from_state`;
        ``tests/test_security.py`` round-trips a trained model and compares its scores."""
        def river(m: Any) -> dict[str, Any]:
            return {"weights": {str(k): float(v) for k, v in m._weights.items()}, "intercept": float(m.intercept),
                    "n_iterations": int(m.optimizer.n_iterations)}

        return {"class": "RiskModel",
                "params": {"lr": self.lr, "l2": self.l2, "blend_half_labels": self.blend_half_labels,
                           "complaint_weight": self.complaint_weight, "calibration_lr": self.calibration_lr},
                "model": river(self.model), "calibrator": river(self.calibrator), "n_labels": self.n_labels,
                "n_positive": self.n_positive, "logloss_sum": self.logloss_sum}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "RiskModel":
        """The model :meth:`to_state` wrote (raises KeyError/TypeError/ValueError on a bad state)."""
        if state.get("class") != "RiskModel":
            raise ValueError(f"not a RiskModel state: {state.get('class')!r}")
        m = cls(**state["params"])
        for river, data in ((m.model, state["model"]), (m.calibrator, state["calibrator"])):
            river._weights.clear()
            for k, v in data["weights"].items():
                river._weights[k] = float(v)
            river.intercept = float(data["intercept"])
            river.optimizer.n_iterations = int(data["n_iterations"])
        m.n_labels, m.n_positive = int(state["n_labels"]), int(state["n_positive"])
        m.logloss_sum = float(state["logloss_sum"])
        m.refresh()
        return m

    def refresh(self) -> None:
        """Re-read the stream features' weights from the River model (the fast scoring path)."""
        weights = self.model._weights
        self._w = [float(weights.get(f, 0.0)) for f in FEATURES]
        self._b = float(self.model.intercept)
        self._ca = float(self.calibrator._weights.get("z", 1.0))
        self._cb = float(self.calibrator.intercept)


class PartitionCore:
    """All risk state of one input partition.

    Parameters
    ----------
    partition
        The Kafka partition these subscribers hash to.
    settings
        :class:`monitor.config.Settings` (threshold, label horizon, state TTL); defaults if None.
    state_loader
        ``subscriber_id -> bytes | None``: a cache miss is looked up here (the worker's table).
    """

    def __init__(self, partition: int, *, settings: Any = None,
                 state_loader: Callable[[str], bytes | None] | None = None,
                 clock_ms: Callable[[], int] | None = None) -> None:
        self.partition = partition
        self.threshold = getattr(settings, "at_risk_threshold", 0.5)
        self.horizon_ms = int(getattr(settings, "label_horizon_hours", 24.0) * HOUR_MS)
        self.ttl_ms = int(getattr(settings, "state_ttl_days", 30.0) * 24 * HOUR_MS)
        self.state_loader = state_loader
        self.clock_ms = clock_ms or wall_clock_ms
        #: a restored watermark is clamped to wall clock + this (ingest refuses later events)
        self.max_skew_ms = int(getattr(settings, "max_clock_skew_s", MAX_CLOCK_SKEW_S) * 1000)
        #: checkpoints refused at restore (an old pickle, a corrupt blob): the partition started fresh
        self.checkpoints_refused = 0
        start_from = getattr(settings, "model_checkpoint", None)
        if start_from:
            from monitor.warmstart import load_model

            self.model = load_model(start_from)  # a warm start; a partition checkpoint overrides it
        else:
            self.model = RiskModel()
        self.states: dict[str, SubscriberState] = {}
        self.dirty: set[str] = set()
        self.evicted: set[str] = set()
        self.watermark_ms = 0
        self.labels_dropped = 0
        #: subscribers kept in memory when a state table backs the cache (see shrink_cache)
        self.cache_max = int(getattr(settings, "state_cache_per_partition", STATE_CACHE_PER_PARTITION))
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
        out: dict[str, bytes | None] = {sid: _encode_state(self.states[sid]) for sid in self.dirty if sid in self.states}
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
        self.model = model
        limit = self.clock_ms() + self.max_skew_ms
        if watermark > limit:
            log.warning("partition %d: checkpointed watermark %d is %.0f s ahead of the clock; clamped",
                        self.partition, watermark, (watermark - limit + self.max_skew_ms) / 1000)
            watermark = limit
        self.watermark_ms = max(self.watermark_ms, watermark)
        return True

    # -- processing ------------------------------------------------------------------------------

    def process_batch(self, events: Iterable[Any]) -> list[RiskScore]:
        out: list[RiskScore] = []
        for event in events:
            score = self.process(event)
            if score is not None:
                out.append(score)
        return out

    def process(self, event: NetworkEvent | TicketEvent | AppEvent) -> RiskScore | None:
        sid = event.subscriber_id
        ts = event.ts_ms
        st = self.state(sid)
        if st is None:
            st = self.states[sid] = SubscriberState(last_ts=ts)
        key = event_key(event.event_id)
        if seen_before(st, key):
            self.duplicates += 1
            return None
        self.events += 1
        if ts > self.watermark_ms:
            self.watermark_ms = ts
        self._join_labels(st, event)
        apply_event(st, event, key)
        x = feature_vector(st, max(ts, st.last_ts))
        if isinstance(event, NetworkEvent) and ts - st.snap_ts >= SNAPSHOT_EVERY_MS:
            # the snapshot a *late* label is joined to; taken from network activity only, so a
            # label's own event (ticket, survey) is never inside it
            st.snap_ts, st.snap_x = ts, pack(x)
        self.dirty.add(sid)
        if len(self.states) > self.cache_max:
            self.shrink_cache()  # never drops ``sid``: it is dirty until the next take_dirty
        self._since_evict += 1
        if self._since_evict >= EVICT_EVERY:
            self._since_evict = 0
            self.evict_quiet()
        return self._maybe_emit(sid, st, x, ts)

    def _join_labels(self, st: SubscriberState, event: Any) -> None:
        """Labels from the streams: a complaint opening (positive, weighted ``complaint_weight``)
        or a survey answer (NPS 0-6 positive, 7-10 negative) teaches the model the features the
        subscriber had *just before* it -- the state before this event is applied, so the label's
        own event is never in its features. A label arriving late (older than the subscriber's
        newest event) is joined to the last snapshot taken before it, if that snapshot is at most
        ``label_horizon_hours`` older than the label; otherwise it is dropped and counted."""
        if isinstance(event, TicketEvent):
            if event.action != "opened":
                return
            label, weight, kind = True, self.model.complaint_weight, "complaint"
        elif isinstance(event, AppEvent) and event.kind == "survey_answer" and event.nps is not None:
            label, weight, kind = event.nps <= 6, 1.0, "survey"
        else:
            return
        ts = event.ts_ms
        if ts >= st.last_ts:
            x = feature_vector(st, ts)
        elif st.snap_x and st.snap_ts <= ts and ts - st.snap_ts <= self.horizon_ms:
            x = unpack(st.snap_x)
        else:
            self.labels_dropped += 1
            return
        p = self.model.learn(x, label, weight, calibrate=kind == "survey")
        if self.on_label is not None:
            self.on_label(LabelJoin(self.partition, event.subscriber_id, kind, x, p, label))

    def scores_at(self, t_ms: int) -> Iterator[tuple[str, float]]:
        """``(subscriber_id, score)`` of every cached subscriber as of event time ``t_ms``, from the
        current state and model (nothing is emitted or changed)."""
        score = self.model.score
        for sid, st in self.states.items():
            yield sid, score(feature_vector(st, max(t_ms, st.last_ts)))

    def _maybe_emit(self, sid: str, st: SubscriberState, x: list[float], ts: int) -> RiskScore | None:
        """A ``risk_score.v1`` record when the change is material: the first score of a subscriber,
        an at-risk flip, a move of ``MATERIAL_DELTA`` near or above the threshold (``LOW_DELTA``
        well below it, where nobody acts on the score), or a new top reason while at risk."""
        was_at_risk = st.at_risk_since > 0
        if not was_at_risk and st.last_score >= 0:
            # fast path, most events: a subscriber well clear of the list stays quiet
            score = self.model.score(x)
            low = self.threshold * 0.5
            if score < self.threshold and abs(score - st.last_score) < (
                    MATERIAL_DELTA if max(score, st.last_score) >= low else LOW_DELTA):
                return None
        score, prior, contrib = self.model.contributions(x)
        at_risk = score >= self.threshold
        ranked = sorted((c, i) for i, c in enumerate(contrib) if c > 0.05)[::-1][:4]
        top = FEATURES[ranked[0][1]] if ranked else ""
        delta = MATERIAL_DELTA if max(score, st.last_score) >= self.threshold * 0.5 else LOW_DELTA
        changed = (abs(score - st.last_score) >= delta or at_risk != was_at_risk
                   or (at_risk and top != st.last_top))
        if not changed:
            return None
        if at_risk and not st.at_risk_since:
            st.at_risk_since = ts
        elif not at_risk:
            st.at_risk_since = 0
        st.last_score, st.last_top = score, top
        reasons: list[Reason] = []
        for c, i in ranked:  # one reason per code (coverage now and at its worst merge)
            code, text, value = describe(FEATURES[i], st, x[i])
            if all(r.code != code for r in reasons):
                reasons.append(Reason(code=code, text=text, value=value, contribution=round(c, 4)))
        return RiskScore(subscriber_id=sid, ts_ms=ts, scored_at_ms=self.clock_ms(), score=round(score, 4),
                         at_risk=at_risk, reasons=reasons, model_version=self.model.n_labels,
                         prior=round(prior, 4), model_weight=round(self.model.blend(), 4),
                         at_risk_since_ms=st.at_risk_since or None, region=st.region,
                         segment=st.segment, cell_id=st.cell)


def migrate_checkpoint(src: str, dst: str) -> str:
    """Convert an old pickled checkpoint **from a trusted local file** (one written by this
    project's earlier versions: a partition checkpoint ``{"model", "watermark_ms"}`` or a pickled
    model) to the data-only format; returns ``dst``. Run it once, by hand, on a file you trust:
    unpickling runs whatever the file says. Workers never unpickle."""
    import pickle
    from pathlib import Path

    data = pickle.loads(Path(src).read_bytes())  # noqa: S301 -- trusted local file, by contract
    model = data["model"] if isinstance(data, dict) else data
    blob = msgspec.msgpack.encode({"format": CHECKPOINT_FORMAT, "model": model.to_state(),
                                   "watermark_ms": int(data.get("watermark_ms", 0)) if isinstance(data, dict) else 0})
    Path(dst).write_bytes(blob)
    return dst
