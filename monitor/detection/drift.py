"""Drift detection: data drift per region and feature over window aggregates, concept drift on the
risk model's running loss. Both raise alerts through :class:`monitor.detection.alerting.AlertLifecycle`.

*Data drift* (``SatmonDataDrift``): per event detection at 20k events/s is too slow and too noisy,
so :class:`DataDriftMonitor` takes one value per region, feature and window (the mean of the
feature over the region's merged window), standardises it against a reference period, and feeds a
change test (the Page-Hinkley test of :mod:`monitor.detection.detectors` by default; River's ``ADWIN``
and ``KSWIN`` selectable). On a detection it
alerts with the feature, the region and the before/after means, calls the ``on_drift`` hooks, and
re-learns its reference from the windows that follow (so one shift alerts once).

*Concept drift* (``SatmonModelDrift``): :class:`ConceptDriftMonitor` runs River's ``ADWIN`` over
the stream of per-label log-losses the risk core reports (one stream per model, i.e. per input
partition). A detected *increase* of the mean loss alerts and calls the ``on_concept_drift`` hooks
with a :class:`DriftEvent`; the risk core adapts there (see ``docs/DETECTION.md``).

Drift alerts describe a change, not a lasting state: they resolve after ``hold_ms`` of event time
without a new detection.

>>> mon = ConceptDriftMonitor(min_labels=50)
>>> seen = []
>>> mon.on_concept_drift.append(seen.append)
>>> alerts = [a for i in range(3000) for a in mon.update("p0", 0.2 if i < 2000 else 0.9, i * 1000)]
>>> [(a.alertname, a.status) for a in alerts][:1], round(seen[0].before, 1), round(seen[0].after, 1)
([('SatmonModelDrift', 'firing')], 0.2, 0.9)
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monitor.detection.alerting import DATA_DRIFT, MODEL_DRIFT, AlertLifecycle
from monitor.detection.detectors import PageHinkleyTest
from monitor.records.events import Alert
from monitor.detection.windows import NETWORK_KPIS, Partial


@dataclasses.dataclass(frozen=True)
class DriftEvent:
    """What drifted, where, and by how much."""

    kind: str                 # "data" or "concept"
    key: str                  # region (data) or model / partition (concept)
    feature: str              # feature name, or "log_loss"
    before: float             # mean before the change (reference)
    after: float              # mean since the change
    detected_at_ms: int
    windows: int = 0          # observations since the reference (data) / labels in ADWIN window

    @property
    def change(self) -> float:
        return self.after - self.before

    @property
    def relative_change(self) -> float | None:
        return self.change / abs(self.before) if self.before else None


def _mean(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


# Region features watched for data drift: name -> (extractor over a merged region window,
# minimum denominator). The risk model's key inputs are the network KPIs; the rest are symptoms.
def _kpi(i: int) -> Callable[[Partial], tuple[float, float]]:
    return lambda p: (p.kpi_sums[i], p.sessions)


DRIFT_FEATURES: dict[str, Callable[[Partial], tuple[float, float]]] = {
    **{name: _kpi(i) for i, name in enumerate(NETWORK_KPIS)},
    "degraded_share": lambda p: (p.degraded, p.sessions),
    "complaint_rate": lambda p: (p.complaints, p.sessions),
    "app_failure_rate": lambda p: (p.app_failures, p.app_events),
    "mean_risk": lambda p: (p.risk_sum, p.risk_n),
}
#: watched by default: what the network delivers. Complaint, app-failure and risk rates are
#: outcomes (hot spots and the model-quality metrics watch them); a handful of complaints a window
#: make them too noisy to call drift on (measured: a false drift alert on the quiet scenario)
DEFAULT_DRIFT_FEATURES: tuple[str, ...] = (*NETWORK_KPIS, "degraded_share")

#: drift events a detector keeps for inspection (the alerts are the record; these ride in checkpoints)
EVENTS_KEPT = 64


def _median_sorted(xs: Sequence[float]) -> float:
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def change_point(values: Sequence[float]) -> tuple[int, float, float]:
    """Most likely single change in ``values``: ``(index, mean before, mean after)``.

    The split maximising the two-sample statistic ``|m1 - m2| * sqrt(n1 n2 / n)`` — used to state
    before/after means once a detector has said *that* something changed.

    >>> change_point([1, 1, 1, 1, 5, 5, 5])
    (4, 1.0, 5.0)
    """
    values = list(values)
    n = len(values)
    if n < 2:
        m = float(values[0]) if n else 0.0
        return 0, m, m
    total = float(sum(values))
    best, best_i, left = -1.0, 1, 0.0
    for i in range(1, n):
        left += values[i - 1]
        m1, m2 = left / i, (total - left) / (n - i)
        stat = abs(m1 - m2) * math.sqrt(i * (n - i) / n)
        if stat > best:
            best, best_i = stat, i
    left = float(sum(values[:best_i]))
    return best_i, left / best_i, (total - left) / (n - best_i)


def make_detector(name: str, seed: int | None = None) -> Any:
    """A drift test tuned for one standardised value per window: the detector module's
    Page-Hinkley test (River's arithmetic, without importing River), or River's ADWIN / KSWIN."""
    if name == "page_hinkley":
        # inputs are z-scores clipped to +-4 (DataDriftMonitor.clip_z): ignore shifts under 1 sd
        # per window, alarm when the excess sums to 9 sd -- a large shift is caught in 3 windows,
        # a 3-sd one in 5, and a spike of one or two windows (a hot spot, not drift) never
        return PageHinkleyTest(min_instances=1, delta=1.0, threshold=9.0, alpha=1.0, mode="both")
    if name == "adwin":
        from river import drift

        return drift.ADWIN(delta=0.002, clock=1, min_window_length=3, grace_period=5)
    if name == "kswin":
        from river import drift

        return drift.KSWIN(alpha=0.0001, window_size=40, stat_size=10, seed=seed)
    raise ValueError(f"unknown drift detector {name!r}: page_hinkley, adwin or kswin")


class _Series:
    __slots__ = ("ref", "det", "recent", "n_since", "last_alert_ms", "ref_stats")

    def __init__(self, det: Any, recent: int) -> None:
        self.ref: list[float] = []
        #: the reference's (median, scaled MAD) while ``ref`` is unchanged (None: to compute): a
        #: full reference stays the same window after window, and two sorts of it each window cost
        #: more than the rest of the update (not checkpointed: recomputed)
        self.ref_stats: tuple[float, float] | None = None
        self.det = det
        self.recent: deque[float] = deque(maxlen=recent)
        self.n_since = 0
        self.last_alert_ms: int | None = None

    def __getstate__(self) -> tuple:
        return (self.ref, self.det, list(self.recent), self.recent.maxlen, self.n_since, self.last_alert_ms)

    def __setstate__(self, s: tuple) -> None:
        self.ref, self.det, recent, maxlen, self.n_since, self.last_alert_ms = s
        self.ref_stats = None
        self.recent = deque(recent, maxlen=maxlen)


class DataDriftMonitor:
    """Data drift per (region, feature) over merged region windows.

    Parameters
    ----------
    features
        Feature names from :data:`DRIFT_FEATURES` (default: :data:`DEFAULT_DRIFT_FEATURES`).
    detector
        ``"page_hinkley"`` (default), ``"adwin"`` or ``"kswin"`` (see :func:`make_detector`).
    reference_windows
        Windows that form the reference (median and MAD) before detection starts, and again
        after each detection.
    reference_max
        The reference keeps growing with the windows that raise no detection, up to this many:
        a median and MAD of 15 noisy windows misjudge the spread by ~20 %, enough for a run of
        ordinary high windows to sum to a false detection (measured: a false ``sinr_db`` drift on
        the quiet v3 scenario); 60 windows halve that error.
    min_support
        Minimum denominator (sessions, app events, scores) for a window's value to count.
    min_rel_change, min_abs_change
        A detection is reported only if the after-mean differs from the reference by both
        (relative to the reference mean, and absolute) — drift that matters, not drift that is
        merely detectable.
    max_windows_kept
        Windows kept after the reference to locate the change and average the "after" mean.
    rel_floor
        Floor of the reference spread, relative to its mean (a very steady feature would
        otherwise turn a 1 % wobble into a 10-sd shift).
    hold_ms
        A drift alert resolves after this much event time without a new detection.
    clip_z
        Standardised values are clipped to ``[-clip_z, clip_z]`` before the detector, so one
        extreme window (a spike) cannot trigger it alone.
    seed
        For the randomised detector (KSWIN).
    """

    def __init__(self, *, features: Sequence[str] | None = None, detector: str = "page_hinkley",
                 reference_windows: int = 15, reference_max: int = 60, min_support: float = 100,
                 min_rel_change: float = 0.1, min_abs_change: float = 0.0, max_windows_kept: int = 60,
                 rel_floor: float = 0.02, hold_ms: int = 1_800_000, clip_z: float = 4.0,
                 seed: int | None = None) -> None:
        self.features = tuple(features) if features is not None else DEFAULT_DRIFT_FEATURES
        unknown = [f for f in self.features if f not in DRIFT_FEATURES]
        if unknown:
            raise ValueError(f"unknown drift features {unknown}; known: {', '.join(DRIFT_FEATURES)}")
        make_detector(detector)  # fail early on a bad name
        self.detector = detector
        self.reference_windows = reference_windows
        self.reference_max = reference_max
        self.min_support = min_support
        self.min_rel_change = min_rel_change
        self.min_abs_change = min_abs_change
        self.max_windows_kept = max_windows_kept
        self.rel_floor = rel_floor
        self.hold_ms = hold_ms
        self.clip_z = clip_z
        self.seed = seed
        self.on_drift: list[Callable[[DriftEvent], Any]] = []
        self._series: dict[tuple[str, str], _Series] = {}
        self.events: deque[DriftEvent] = deque(maxlen=EVENTS_KEPT)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["on_drift"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["events"] = deque(state.get("events", ()), maxlen=EVENTS_KEPT)   # a list before the bound
        state.setdefault("reference_max", state.get("reference_windows", 15))   # checkpoints before it
        self.__dict__.update(state)

    def update_one(self, region: str, feature: str, value: float, ts_ms: int) -> DriftEvent | None:
        """Feed one window's value of ``feature`` in ``region``; a :class:`DriftEvent` on drift."""
        key = (region, feature)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(make_detector(self.detector, self.seed),
                                            self.reference_windows + self.max_windows_kept)
        s.recent.append(value)
        if len(s.ref) < self.reference_windows:
            s.ref.append(value)
            s.ref_stats = None
            return None
        # robust reference: median and MAD, so a spike inside the reference period (or the tail
        # of the previous regime) does not widen it
        stats = s.ref_stats
        if stats is None:
            ref = sorted(s.ref)
            median = _median_sorted(ref)
            stats = s.ref_stats = (median, 1.4826 * _median_sorted(sorted(abs(x - median) for x in ref)))
        mean, sd = stats
        sd = max(sd, self.rel_floor * abs(mean), 1e-9)
        s.n_since += 1
        s.det.update(max(-self.clip_z, min(self.clip_z, (value - mean) / sd)))
        if not s.det.drift_detected:
            if len(s.ref) < max(self.reference_max, self.reference_windows):
                s.ref.append(value)   # no change seen: the window is more evidence of the reference
                s.ref_stats = None
            return None
        cut, _, after = change_point(s.recent)
        change = after - mean
        if abs(change) < self.min_abs_change or (mean and abs(change) < self.min_rel_change * abs(mean)):
            # detectable but immaterial: keep watching against the same reference
            s.det = make_detector(self.detector, self.seed)
            return None
        ev = DriftEvent(kind="data", key=region, feature=feature, before=mean, after=after,
                        detected_at_ms=ts_ms, windows=s.n_since)
        # adapt: the new regime becomes the reference once enough of it has been seen
        s.ref = list(s.recent)[cut:][-self.reference_windows:]
        s.ref_stats = None
        s.recent.clear()
        s.recent.extend(s.ref)
        s.det = make_detector(self.detector, self.seed)
        s.n_since = 0
        s.last_alert_ms = ts_ms
        self.events.append(ev)
        for hook in self.on_drift:
            hook(ev)
        return ev

    def update(self, start_ms: int, regions: Mapping[str, Partial], lifecycle: AlertLifecycle) -> list[Alert]:
        """Feed one window of merged region aggregates; returns alert records (fire / resolve)."""
        out: list[Alert] = []
        for region in sorted(regions):
            p = regions[region]
            for feature in self.features:
                num, den = DRIFT_FEATURES[feature](p)
                if den < self.min_support:
                    continue
                ev = self.update_one(region, feature, num / den, start_ms)
                if ev is not None:
                    alert = self._fire(ev, lifecycle)
                    if alert is not None:
                        out.append(alert)
        for alert in lifecycle.active(DATA_DRIFT):
            s = self._series.get((alert.labels.get("region", ""), alert.labels.get("feature", "")))
            last = s.last_alert_ms if s is not None else alert.updated_at_ms
            if last is not None and start_ms - last >= self.hold_ms:
                r = lifecycle.resolve(DATA_DRIFT, alert.labels, ts_ms=start_ms)
                if r is not None:
                    out.append(r)
        return out

    def _fire(self, ev: DriftEvent, lifecycle: AlertLifecycle) -> Alert | None:
        rel = ev.relative_change
        how = f"{ev.before:.4g} -> {ev.after:.4g}" + (f" ({100 * rel:+.0f}%)" if rel is not None else "")
        labels = {"region": ev.key, "feature": ev.feature}
        alert = lifecycle.fire(
            DATA_DRIFT, labels, ts_ms=ev.detected_at_ms,
            severity="warning" if rel is None or abs(rel) >= 0.5 else "info",
            summary=f"{ev.feature} drifted in region {ev.key}",
            description=f"mean {ev.feature} {how}, detected after {ev.windows} windows",
            details={"before": ev.before, "after": ev.after, "detected_at_ms": ev.detected_at_ms,
                     "detector": self.detector, "windows": ev.windows})
        return alert


class ConceptDriftMonitor:
    """Concept drift on the risk model's running log-loss, one stream per model (partition).

    Parameters
    ----------
    delta
        ADWIN's confidence (smaller: fewer false alarms, slower detection).
    min_labels
        Labels seen on a stream before a detection may alert.
    min_increase
        Smallest increase of the mean loss (absolute, nats) worth an alert; decreases never alert.
    clip
        Losses are clipped to ``[0, clip]`` (one confident mistake is ~7 nats; ADWIN's bound
        assumes bounded values).
    hold_ms
        The alert resolves after this much event time without a new detection.

    ``on_concept_drift`` hooks receive each :class:`DriftEvent` (the risk core adapts there).
    """

    def __init__(self, *, delta: float = 0.002, min_labels: int = 200, min_increase: float = 0.05,
                 clip: float = 5.0, hold_ms: int = 1_800_000, recent: int = 1000) -> None:
        self.delta = delta
        self.min_labels = min_labels
        self.min_increase = min_increase
        self.clip = clip
        self.hold_ms = hold_ms
        self.recent = recent
        self.on_concept_drift: list[Callable[[DriftEvent], Any]] = []
        # River's ADWIN: imported now, not at the first label (river.drift pulls in scikit-learn:
        # 1.8 s that would stall the stream mid-run)
        from river import drift  # noqa: F401
        self._adwin: dict[str, Any] = {}
        self._recent: dict[str, deque[float]] = {}
        self._n: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self.lifecycle = AlertLifecycle()
        self.events: deque[DriftEvent] = deque(maxlen=EVENTS_KEPT)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["on_concept_drift"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["events"] = deque(state.get("events", ()), maxlen=EVENTS_KEPT)   # a list before the bound
        self.__dict__.update(state)

    def update(self, key: str, loss: float, ts_ms: int, lifecycle: AlertLifecycle | None = None) -> list[Alert]:
        """Feed one label's log-loss for model ``key``; returns alert records (fire / resolve)."""
        from river import drift

        lc = lifecycle if lifecycle is not None else self.lifecycle
        out: list[Alert] = []
        ad = self._adwin.get(key)
        if ad is None:
            ad = self._adwin[key] = drift.ADWIN(delta=self.delta)
        x = min(max(float(loss), 0.0), self.clip) if loss == loss else self.clip
        ring = self._recent.get(key)
        if ring is None:
            ring = self._recent[key] = deque(maxlen=self.recent)
        ring.append(x)
        ad.update(x)
        n = self._n[key] = self._n.get(key, 0) + 1
        labels = {"model": "risk", "partition": key}
        if ad.drift_detected and n >= self.min_labels:
            cut, before, after = change_point(ring)
            if after - before >= self.min_increase:
                ring_after = list(ring)[cut:]
                ring.clear()
                ring.extend(ring_after)
                ev = DriftEvent(kind="concept", key=key, feature="log_loss", before=before, after=after,
                                detected_at_ms=ts_ms, windows=len(ring_after))
                self.events.append(ev)
                self._last[key] = ts_ms
                alert = lc.fire(
                    MODEL_DRIFT, labels, ts_ms=ts_ms,
                    severity="warning" if after - before >= 2 * self.min_increase else "info",
                    summary=f"Risk model of partition {key} is drifting",
                    description=f"mean log-loss {before:.3f} -> {after:.3f} ({after - before:+.3f} nats)",
                    details={"before": before, "after": after, "detected_at_ms": ts_ms,
                             "labels_since_change": len(ring_after)})
                if alert is not None:
                    out.append(alert)
                for hook in self.on_concept_drift:
                    hook(ev)
        last = self._last.get(key)
        if last is not None and ts_ms - last >= self.hold_ms and lc.is_active(MODEL_DRIFT, labels):
            r = lc.resolve(MODEL_DRIFT, labels, ts_ms=ts_ms)
            if r is not None:
                out.append(r)
        return out
