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
>>> s.at_risk, s.reasons[0].code in {"weak_coverage", "drops", "stalls", "latency", "throughput"}
(True, True)
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

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
    feature_vector,
)

HOUR_MS = 3_600_000
#: a score moving by at least this much is a material change worth a ``risk_score.v1`` record
MATERIAL_DELTA = 0.05
#: labels after which the learned model carries half of the blend with the rule-based prior
BLEND_HALF_LABELS = 200
#: at most one feature snapshot per subscriber per this interval is kept for label joining
SNAPSHOT_EVERY_MS = HOUR_MS
#: how often (in events) quiet subscribers are evicted from the cache
EVICT_EVERY = 20_000

_encode_state = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(SubscriberState).decode


def wall_clock_ms() -> int:
    """``scored_at_ms`` of emitted records (the only wall-clock value in the core's output)."""
    return int(time.time() * 1000)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class RiskModel:
    """Online logistic regression (River) on the features, blended with a transparent prior.

    Hyper-parameters are constructor arguments stored under the same names (River's protocol);
    learned state is the River model and ``n_labels``.
    """

    def __init__(self, *, lr: float = 0.05, l2: float = 1e-4, blend_half_labels: int = BLEND_HALF_LABELS) -> None:
        self.lr = lr
        self.l2 = l2
        self.blend_half_labels = blend_half_labels
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(lr), l2=l2)
        self.n_labels = 0
        self.n_positive = 0
        self.logloss_sum = 0.0
        self._w = [0.0] * len(FEATURES)
        self._b = 0.0

    def blend(self) -> float:
        """Weight of the learned model in [0, 1): 0 at cold start, 0.5 after ``blend_half_labels``."""
        return self.n_labels / (self.n_labels + self.blend_half_labels)

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
                contrib.append((1 - a) * pz + a * mz)
            else:
                contrib.append(0.0)
        prior = _sigmoid(prior_z)
        score = (1 - a) * prior + a * _sigmoid(model_z)
        return score, prior, contrib

    def learn(self, x: Sequence[float], y: bool) -> None:
        """Test-then-train: the running log-loss uses the prediction made before learning."""
        p = min(max(self.contributions(x)[0], 1e-6), 1 - 1e-6)
        self.logloss_sum += -math.log(p if y else 1 - p)
        self.model.learn_one(dict(zip(FEATURES, x)), y)
        self.n_labels += 1
        self.n_positive += int(y)
        weights = self.model.weights
        self._w = [float(weights.get(f, 0.0)) for f in FEATURES]
        self._b = float(self.model.intercept)


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
        self.horizon_ms = int(getattr(settings, "label_horizon_hours", 72.0) * HOUR_MS)
        self.ttl_ms = int(getattr(settings, "state_ttl_days", 30.0) * 24 * HOUR_MS)
        self.state_loader = state_loader
        self.clock_ms = clock_ms or wall_clock_ms
        self.model = RiskModel()
        self.states: dict[str, SubscriberState] = {}
        self.dirty: set[str] = set()
        self.evicted: set[str] = set()
        self.watermark_ms = 0
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
        return pickle.dumps({"model": self.model, "watermark_ms": self.watermark_ms}, protocol=5)

    def restore(self, blob: bytes) -> None:
        data = pickle.loads(blob)
        self.model = data["model"]
        self.watermark_ms = max(self.watermark_ms, data["watermark_ms"])

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
        elif event.event_id in st.recent_ids:
            self.duplicates += 1
            return None
        self.events += 1
        if ts > self.watermark_ms:
            self.watermark_ms = ts
        self._join_labels(st, event)
        apply_event(st, event)
        x = feature_vector(st, max(ts, st.last_ts))
        if isinstance(event, NetworkEvent) and ts - st.snap_ts >= SNAPSHOT_EVERY_MS and not st.snap_x:
            # the snapshot a later label is joined to; taken from network activity only, so the
            # label's own event (ticket, survey) is never inside it
            st.snap_ts, st.snap_x = ts, x
        self.dirty.add(sid)
        self._since_evict += 1
        if self._since_evict >= EVICT_EVERY:
            self._since_evict = 0
            self.evict_quiet()
        return self._maybe_emit(sid, st, x, ts)

    def _join_labels(self, st: SubscriberState, event: Any) -> None:
        """Late labels: a complaint or a detractor answer labels the snapshot taken before it
        positive; a passive/promoter answer, or a horizon that passes quietly, negative."""
        if not st.snap_x:
            return
        label: bool | None = None
        if event.ts_ms - st.snap_ts > self.horizon_ms:
            label = False
        elif isinstance(event, TicketEvent) and event.action == "opened":
            label = True
        elif isinstance(event, AppEvent) and event.kind == "survey_answer" and event.nps is not None:
            label = event.nps <= 6
        if label is not None and event.ts_ms >= st.snap_ts:
            self.model.learn(st.snap_x, label)
            st.snap_x = []

    def _maybe_emit(self, sid: str, st: SubscriberState, x: list[float], ts: int) -> RiskScore | None:
        score, prior, contrib = self.model.contributions(x)
        at_risk = score >= self.threshold
        ranked = sorted((c, i) for i, c in enumerate(contrib) if c > 0.05)[::-1][:4]
        top = FEATURES[ranked[0][1]] if ranked else ""
        changed = (abs(score - st.last_score) >= MATERIAL_DELTA or at_risk != (st.at_risk_since > 0)
                   or top != st.last_top)
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
