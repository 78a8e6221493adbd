"""Hot-spot detection: per-key window detectors with time-of-day baselines, and the region grouping.

:class:`HotspotDetector` judges each closed window of each key (a cell or a region) against that
key's own baseline and keeps a small state machine per key: *k* consecutive bad windows (or one
very bad one) fire, *m* consecutive clear windows resolve (hysteresis), a key without data for
``stale_windows`` resolves as stale. It is the one detector core: the worker's cells and regions
(count metrics) and ``satmon detect`` (one key, one ``level`` metric judged by a
:class:`monitor.detection.detectors.SeasonalDetector`) run it.

Baselines (see ``docs/DETECTION.md``)
    For count rates and means (``rate``/``mean`` metrics) the expected value of key *c* in hour *h*
    is ``g · f[c, h]``: ``g`` is the network-wide rate, an exponentially weighted pool over all
    keys' normal windows (fast: it follows the time of day and network-wide load), ``f[c, h]`` is
    the key's own factor for that hour of day, shrunk towards the key's all-hours factor, itself
    shrunk towards 1 (a cold cell starts at the global prior). The noise allowed around it is the
    sampling noise of the window (binomial, or the within-window variance) plus the key's own
    learned over-dispersion (a noisy-but-normal cell earns a wider band) plus a floor. ``level``
    metrics (a univariate KPI series) are judged by a per-key univariate detector
    (``level_detector``, default ``SeasonalDetector``: seasonal residuals, calibrated tails; NAB 65.2).
    Baselines learn only from windows that are neither bad nor part of an active hot spot
    (score first, then learn).

:class:`HotspotEngine` wires it together for the worker and replays: merged cell windows in,
``alert.v1`` records out (``SatmonHotSpotActive`` per cell, ``SatmonRegionDegraded`` per region,
and ``SatmonDataDrift`` from an optional :class:`monitor.detection.drift.DataDriftMonitor`).

>>> from monitor.detection.windows import Partial
>>> det = HotspotDetector(warmup_windows=3)
>>> def w(t, degraded, sessions=200):
...     return {"c1": cell_observation(Partial(cell_id="c1", region="r", start_ms=t * 60_000,
...             width_ms=60_000, sessions=sessions, degraded=degraded))}
>>> for t in range(30):
...     _ = det.step(t * 60_000, w(t, 10))
>>> [det.step(t * 60_000, w(t, 120))["c1"].event for t in (30, 31)]   # outage: fires at once
['fire', 'update']
>>> [det.step(t * 60_000, w(t, 10))["c1"].event for t in (32, 33, 34)]
['update', 'update', 'resolve']
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from monitor.detection.alerting import HOTSPOT_CELL, HOTSPOT_REGION, AlertLifecycle
from monitor.records.events import Alert
from monitor.detection.windows import NETWORK_KPIS, Partial, group_by_window, rollup

_LAT = NETWORK_KPIS.index("latency_ms")


@dataclasses.dataclass(frozen=True)
class Metric:
    """One symptom a detector watches.

    ``kind``: ``rate`` (count / trials, binomial noise), ``mean`` (sum / count, within-window noise)
    or ``level`` (one value per window, a univariate KPI series: judged by a per-key clone of the
    detector's ``level_detector``, by default :class:`monitor.detection.detectors.SeasonalDetector`,
    the configuration measured on NAB; ``satmon detect`` is this detector with one key and one
    ``level`` metric). ``min_support``: the window's
    denominator must reach it for the metric to count. ``min_delta``: excess over the baseline
    needed to call a window bad (absolute, in the metric's unit) — significance alone is not enough
    on a busy cell. ``floor``: absolute noise floor (std) added to the band. ``direction``: which
    deviation is bad (``up``, ``down`` or ``both``).
    """

    name: str
    kind: str
    min_support: float
    min_delta: float
    floor: float
    label: str
    unit: str = ""
    direction: str = "up"
    #: a window is judged on this metric only with at least this many events (its numerator):
    #: one complaint in a quiet cell's minute is not a hot spot
    min_events: float = 0.0
    #: an outcome that trails the network (complaints, risk): it can fire, but does not keep a
    #: hot spot open once the network symptoms are back to normal
    lagging: bool = False

    def fmt(self, value: float) -> str:
        if self.unit == "%":
            return f"{100 * value:.1f}%"
        if self.unit:
            return f"{value:.0f} {self.unit}"
        return f"{value:.3g}"


# Symptoms of a cell hot spot, in order of preference when naming the worst one.
CELL_METRICS: tuple[Metric, ...] = (
    Metric("degraded_share", "rate", 20, 0.08, 0.01, "degraded sessions", "%"),
    Metric("drop_rate", "rate", 20, 0.03, 0.005, "dropped calls", "%"),
    Metric("stall_rate", "rate", 20, 0.05, 0.01, "video stalls", "%"),
    Metric("latency_ms", "mean", 20, 25.0, 2.0, "latency", "ms"),
    Metric("complaint_rate", "rate", 20, 0.02, 0.004, "complaints per session", "%", min_events=3, lagging=True),
    Metric("app_failure_rate", "rate", 10, 0.15, 0.02, "app failures", "%", min_events=3),
)


#: Symptoms of a degraded region (its rolled-up window): the same as a cell's. Neither watches the
#: risk model's output (``mean_risk``): a mean risk moves when the model learns (its calibration
#: offset climbs or falls through a run, region-wide: with cold-start offsets two log-odds lower it
#: raised 29 false ``SatmonRegionDegraded`` on the quiet scenario) and when non-network drivers
#: move scores (the demo's NPS campaign and billing wave fired a cell's mean risk at z 11 with its
#: network at z <= 2.3, and one such alert on a cell an outage then darkened opened that outage's
#: incident 4 minutes early, issue 19). A hot spot is what the NOC can act on: the network, and the
#: complaints and app failures that follow it. The model's own drift is ``SatmonModelDrift``'s.
REGION_METRICS: tuple[Metric, ...] = CELL_METRICS


def _directed(m: Metric, d: float) -> float:
    """A deviation from the baseline as the excess that counts for ``m`` (its ``direction``)."""
    return -d if m.direction == "down" else abs(d) if m.direction == "both" else d


#: the symptoms judged on evidence accumulated over windows (see ``HotspotDetector``)
NETWORK_SYMPTOMS = ("degraded_share", "drop_rate", "stall_rate", "latency_ms")


def cell_observation(p: Partial) -> dict[str, tuple[float, float, float | None]]:
    """``metric -> (numerator, denominator, sum of squares or None)`` of a (merged) window."""
    n = p.sessions
    return {
        "degraded_share": (p.degraded, n, None),
        "drop_rate": (p.drops, n, None),
        "stall_rate": (p.stalls, n, None),
        "latency_ms": (p.kpi_sums[_LAT], n, p.latency_sumsq),
        "complaint_rate": (p.complaints, n, None),
        "app_failure_rate": (p.app_failures, p.app_events, None),
    }


@dataclasses.dataclass
class Verdict:
    """The detector's judgement of one key in one window.

    ``event`` is ``"fire"``, ``"update"`` (still firing, new window), ``"resolve"`` or ``None``.
    ``score`` in [0, 1] (0.5 at the firing threshold). ``metrics``: per metric with support,
    ``(observed, expected, z)``.
    """

    key: str
    start_ms: int
    score: float
    bad: bool
    active: bool
    event: str | None
    worst: str | None
    since_ms: int | None
    severity: str
    metrics: dict[str, tuple[float, float, float]]
    ends_at_ms: int | None = None
    stale: bool = False


class _Stat:
    """Exponentially weighted pooled sums for one metric of one key (or hour bucket)."""

    __slots__ = ("num", "den", "phi", "phi_w", "mean", "var", "n")

    def __init__(self) -> None:
        self.num = self.den = 0.0     # EW sums of numerator and expected denominator (den * g)
        self.phi = self.phi_w = 0.0   # EW sum of relative excess variance and its weight
        self.mean = self.var = 0.0    # level metrics
        self.n = 0

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for s, v in zip(self.__slots__, state):
            setattr(self, s, v)


#: per metric of a key: EW sums (numerator, expected denominator) for each hour of day, in one
#: array of doubles -- all 24 hours from the first window that teaches the metric
_NO_HOURS = array("d", bytes(8 * 2 * 24))


def _hours_from_stats(hours: dict) -> dict[str, array]:
    """Hour baselines of a checkpoint written when each (metric, hour) was its own ``_Stat``."""
    out: dict[str, array] = {}
    for key, st in hours.items():
        if isinstance(key, tuple):
            name, hour = key
            sums = out.setdefault(name, array("d", _NO_HOURS))
            sums[2 * hour], sums[2 * hour + 1] = st.num, st.den
        else:
            out[key] = st
    return out


class _Baselines(NamedTuple):
    """One window's network-wide baselines, as :meth:`HotspotDetector._window_baselines` makes them."""

    hour2: int                 # twice the hour of day: the index of its sums in a key's hour array
    scoring: list[tuple]       # per metric judged by z-score (level metrics: name, kind, metric)
    evidence: list[tuple]      # per sequential metric


class _Key:
    __slots__ = ("stats", "hours", "bad_streak", "good_streak", "missing", "active", "since_ms",
                 "first_bad_ms", "first_good_ms", "severity", "last_ms", "windows", "cusum", "seen",
                 "cusum_since_ms", "raw", "levels")

    def __init__(self) -> None:
        self.cusum: dict[str, float] = {}  # per sequential metric: accumulated log-likelihood ratio
        self.seen = 0.0                     # denominator units observed (sessions): the key's history
        self.cusum_since_ms: int | None = None  # first window of the current run of evidence
        self.raw: dict[str, list[float]] = {}  # per sequential metric: EW sums [numerator, denominator]
        self.stats: dict[str, _Stat] = {}
        self.hours: dict[str, array] = {}   # metric -> [num, den] x 24 hours of day
        self.bad_streak = self.good_streak = self.missing = 0
        self.active = False
        self.since_ms: int | None = None
        self.first_bad_ms: int | None = None
        self.first_good_ms: int | None = None
        self.severity = "warning"
        self.last_ms: int | None = None
        self.windows = 0
        self.levels: dict[str, Any] = {}    # per ``level`` metric: the key's univariate detector

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        self.levels = {}   # checkpoints written before level metrics had detectors of their own
        for s, v in zip(self.__slots__, state):
            setattr(self, s, v)
        self.hours = _hours_from_stats(self.hours)


class HotspotDetector:
    """Per-key window detector with hysteresis (River-style: hyper-parameters in, state inside).

    Parameters
    ----------
    metrics
        The :class:`Metric` s to watch (default :data:`CELL_METRICS`).
    z_fire, z_strong, z_clear
        A window is *bad* when a metric's z-score reaches ``z_fire`` (and its excess ``min_delta``);
        *strongly* bad at ``z_strong`` and twice ``min_delta`` (fires on its own); *clear* when
        every metric is below ``z_clear`` or within half its ``min_delta``.
    k_fire, m_resolve
        Consecutive bad windows to fire; consecutive clear windows to resolve.
    stale_windows
        An active key without data for this many windows resolves (marked stale).
    warmup_windows
        Windows of network-wide data before anything may fire.
    global_halflife, key_halflife
        Half-lives (in windows) of the network-wide rate and of each key's own factor.
    prior_weight, hour_prior_weight
        Pseudo-support (in denominator units) pulling a key's factor towards 1 and an hour's
        factor towards the key's all-hours factor.
    rel_floor
        Relative noise floor (fraction of the expected value) in every band.
    critical_z
        z-score (with thrice ``min_delta``) from which a hot spot is ``critical``.
    hour_offset_ms
        Shift from UTC to the local time whose hour of day the baselines follow.
    level_detector
        The univariate detector (:class:`monitor.detection.detectors.Detector`) cloned for each key's
        ``level`` metrics, with the metric's ``direction``; None: ``SeasonalDetector()``.
    adapt_after_windows
        A key that has been firing this long starts learning again: a permanent change becomes
        the new baseline and the alert resolves instead of firing forever.
    sequential, cusum_h, cusum_shift, cusum_min_history
        Evidence across windows for the ``rate`` metrics named in ``sequential`` (and ``mean``
        ones, capped per window): a one-sided CUSUM of the log-likelihood ratio of "a share
        ``cusum_shift`` of the healthy sessions went bad" against the key's baseline (its upper
        band, so an uncertain baseline does not fire), firing at ``cusum_h`` nats. So a sparse
        cell (a handful of sessions a window, below any ``min_support``) fires within a window or
        two of an outage, while noise needs ~e^h windows to cross once. A key needs
        ``cusum_min_history`` sessions of history before its evidence counts.
    """

    def __init__(self, *, metrics: Sequence[Metric] = CELL_METRICS, z_fire: float = 5.0,
                 z_strong: float = 9.0, z_clear: float = 3.0, k_fire: int = 2, m_resolve: int = 3,
                 stale_windows: int = 10, warmup_windows: int = 10, global_halflife: float = 20.0,
                 key_halflife: float = 240.0, prior_weight: float = 200.0,
                 hour_prior_weight: float = 2000.0, rel_floor: float = 0.05, critical_z: float = 15.0,
                 hour_offset_ms: int = 0, adapt_after_windows: int = 120,
                 level_detector: Any = None, sequential: Sequence[str] = (),
                 cusum_h: float = 12.0, cusum_shift: float = 0.3, cusum_min_history: float = 20.0,
                 cusum_prior: float = 20.0, cusum_z: float = 2.3) -> None:
        self.metrics = tuple(metrics)
        self.sequential = tuple(sequential)
        self.cusum_prior = cusum_prior
        self.cusum_z = cusum_z
        self.cusum_h = cusum_h
        self.cusum_shift = cusum_shift
        self.cusum_min_history = cusum_min_history
        self.z_fire = z_fire
        self.z_strong = z_strong
        self.z_clear = z_clear
        self.k_fire = k_fire
        self.m_resolve = m_resolve
        self.stale_windows = stale_windows
        self.warmup_windows = warmup_windows
        self.global_halflife = global_halflife
        self.key_halflife = key_halflife
        self.prior_weight = prior_weight
        self.hour_prior_weight = hour_prior_weight
        self.rel_floor = rel_floor
        self.critical_z = critical_z
        self.hour_offset_ms = hour_offset_ms
        self.adapt_after_windows = adapt_after_windows
        self.level_detector = level_detector
        self._keys: dict[str, _Key] = {}
        self._global: dict[str, _Stat] = {m.name: _Stat() for m in self.metrics}
        self._cv2: dict[str, float] = {}
        self.windows = 0
        self.last_start_ms: int | None = None
        self.width_ms: int | None = None

    # -- scoring -------------------------------------------------------------------------------
    def _metric_by(self) -> dict[str, Metric]:
        """``name -> Metric`` of :attr:`metrics`, built once (checkpoints of older versions lack it)."""
        by = self.__dict__.get("_by")
        if by is None:
            by = self.__dict__["_by"] = {m.name: m for m in self.metrics}
        return by

    def _hour(self, start_ms: int) -> int:
        return ((start_ms + self.hour_offset_ms) // 3_600_000) % 24

    def _expected(self, m: Metric, key: _Key | None, hour: int) -> tuple[float, float] | None:
        """(expected value, variance excluding the window's own sampling noise), or None if cold.

        The definition; :meth:`_judge` and :meth:`_learn` make the same operations inline with the
        window's shared parts computed once (tests/test_hotspots.py checks that they agree)."""
        g = self._global[m.name]
        if g.den <= 0:
            return None
        rate = g.num / g.den
        factor = 1.0
        phi = g.phi / g.phi_w if g.phi_w > 0 else 0.0
        if key is not None:
            st = key.stats.get(m.name)
            if st is not None:
                c = self.prior_weight * rate
                factor = (st.num + c) / (st.den + c) if st.den + c > 0 else 1.0
                cp = 5.0
                phi = (st.phi + cp * phi) / (st.phi_w + cp)
                hs = key.hours.get(m.name)
                if hs is not None and hs[2 * hour + 1] > 0:
                    ch = self.hour_prior_weight * rate
                    factor = (hs[2 * hour] + ch * factor) / (hs[2 * hour + 1] + ch)
        mu = rate * factor
        return mu, phi * mu * mu + (self.rel_floor * mu) ** 2 + m.floor ** 2

    def score_one(self, key: str, start_ms: int,
                  obs: Mapping[str, tuple[float, float, float | None]]) -> dict[str, tuple[float, float, float, float]]:
        """``metric -> (observed, expected, z, excess)`` for the metrics with support (no learning)."""
        k = self._keys.get(key)
        return self._judge(k if k is not None else _Key(), start_ms, obs, self._window_baselines(start_ms))

    def _window_baselines(self, start_ms: int) -> _Baselines:
        """What judging every key of one window shares: per metric the network-wide rate and
        over-dispersion and the constants made of them. They are fixed while a window is judged
        (the network-wide pools learn after every key was scored), so :meth:`step` computes them
        once a window instead of once a key and metric (:meth:`_expected` is the same arithmetic
        for one key; the two must agree, and the replays' outputs are byte-identical)."""
        hour = self._hour(start_ms)
        scoring: list[tuple] = []
        evidence: list[tuple] = []
        by = self._metric_by()
        for m in self.metrics:
            if m.kind == "level":
                scoring.append((m.name, "level", m))
                continue
            g = self._global[m.name]
            if g.den <= 0:
                continue   # cold: no expected value
            rate = g.num / g.den
            phi = g.phi / g.phi_w if g.phi_w > 0 else 0.0
            scoring.append((m.name, m.kind, m, m.min_support, m.min_events, rate, phi, 5.0 * phi,
                            self.prior_weight * rate, self.hour_prior_weight * rate, m.floor ** 2,
                            self._cv2.get(m.name, 0.25), m.direction))
        for name in self.sequential:
            m = by[name]
            g = self._global[name]
            if g.den <= 0:
                continue
            c = self.cusum_prior
            phi = g.phi / g.phi_w if g.phi_w > 0 else 0.0
            evidence.append((name, m.kind, c * g.num / g.den, c, phi, 5.0 * phi,
                             max(self._cv2.get(name, 0.25), 1e-6), m.min_delta))
        return _Baselines(2 * hour, scoring, evidence)

    def _judge(self, k: _Key, start_ms: int, obs: Mapping[str, tuple[float, float, float | None]],
               base: _Baselines) -> dict[str, tuple[float, float, float, float]]:
        """:meth:`score_one` of key state ``k`` against the window's :meth:`_window_baselines`."""
        out = {}
        h = base.hour2
        stats, hours = k.stats, k.hours
        rel = self.rel_floor
        sqrt = math.sqrt
        for entry in base.scoring:
            name = entry[0]
            o = obs.get(name)
            if o is None:
                continue
            num, den = o[0], o[1]
            kind = entry[1]
            if kind == "level":
                if den > 0 and name in k.levels:
                    out[name] = self._score_level(entry[2], k.levels[name], num / den, start_ms)
                continue
            _n, _k, _m, min_support, min_events, rate, phi, cphi, c, ch, floor2, cv2, direction = entry
            if den < min_support or den <= 0 or num < min_events:
                continue
            value = num / den
            # _expected, inline
            factor = 1.0
            st = stats.get(name)
            if st is not None:
                factor = (st.num + c) / (st.den + c) if st.den + c > 0 else 1.0
                phi = (st.phi + cphi) / (st.phi_w + 5.0)
                hs = hours.get(name)
                if hs is not None and hs[h + 1] > 0:
                    factor = (hs[h] + ch * factor) / (hs[h + 1] + ch)
            mu = rate * factor
            var = phi * mu * mu + (rel * mu) ** 2 + floor2
            # the window's sampling variance (binomial for a rate, the learned within-window
            # spread for a mean); min and max written as the comparisons they make
            if kind == "rate":
                p = 1e-6 if 1e-6 > mu else mu
                if 1 - 1e-6 < p:
                    p = 1 - 1e-6
                samp = p * (1 - p) / den
            elif kind == "mean":
                samp = cv2 * mu * mu / den
            else:
                samp = 0.0
            sd = sqrt(var + samp)
            d = value - mu
            excess = -d if direction == "down" else abs(d) if direction == "both" else d
            out[name] = (value, mu, excess / sd if sd > 0 else 0.0, excess)
        return out

    def _level_detector(self, m: Metric) -> Any:
        """A fresh univariate detector for one key's ``level`` metric ``m``."""
        det = self.level_detector
        if det is None:
            from monitor.detection.detectors import SeasonalDetector

            return SeasonalDetector(direction=m.direction)
        return det.clone(direction=m.direction) if "direction" in det._get_params() else det.clone()

    def _score_level(self, m: Metric, det: Any, value: float, start_ms: int) -> tuple[float, float, float, float]:
        """``(observed, expected, z, excess)`` of a ``level`` metric: the detector's score ``s`` in
        [0, 1] as the z-score that :meth:`_score` maps back to it (``s = z² / (z² + z_fire²)``, so
        its 0.5 is this detector's firing threshold)."""
        s = det.score_one(value, start_ms)
        mu = det.expected(start_ms) if hasattr(det, "expected") else None
        mu = value if mu is None else mu
        z = math.inf if s >= 1.0 else self.z_fire * math.sqrt(s / (1.0 - s))
        return value, mu, z, _directed(m, value - mu)

    def _add_evidence(self, k: _Key, obs: Mapping[str, tuple[float, float, float | None]],
                      base: _Baselines) -> bool:
        """Add the window's log-likelihood ratio (degraded vs baseline) of each sequential metric
        to the key's CUSUM; returns whether the window looks normal on all of them (every ratio
        <= 0). (min and max are written as the comparisons they make: same values, no calls.)"""
        normal = True
        raw, stats, cusum = k.raw, k.stats, k.cusum
        cap = 1.5 * self.cusum_h
        zc, shift = self.cusum_z, self.cusum_shift
        sqrt, log = math.sqrt, math.log
        for name, kind, cg, c, phi, cphi, cv2, min_delta in base.evidence:
            o = obs.get(name)
            if o is None or o[1] <= 0:
                continue
            num, den = o[0], o[1]
            # the key's own rate (EW sums of its normal windows) shrunk towards the network-wide
            # rate with ``cusum_prior`` pseudo-sessions, and judged from its upper bound
            # (``cusum_z`` standard errors): a cell with little history faces a higher bar
            xs, ns = raw.get(name, (0.0, 0.0))
            support = ns + c
            mu = (xs + cg) / support
            # over-dispersion (the key's learned relative excess variance, shrunk to the network's):
            # sessions of one window are not independent (a busy minute, one bad device), so a
            # dense window's evidence is divided by its design effect
            st = stats.get(name)
            if st is not None:
                phi_k = (st.phi + cphi) / (st.phi_w + 5.0)
            else:
                phi_k = phi
            if kind == "rate":
                if 1e-4 > mu:
                    mu = 1e-4
                if 0.9 < mu:
                    mu = 0.9
                q = 1.0 - mu
                p0 = mu + zc * sqrt(mu * q / support)
                if 0.9 < p0:
                    p0 = 0.9
                q0 = 1.0 - p0
                p1 = p0 + shift * q0
                rho = phi_k * mu / q
                if not rho < 1.0:
                    rho = 1.0
                design = 1.0 + (den - 1.0) * rho
                if num:
                    llr = (num * log(p1 / p0) + (den - num) * log((1.0 - p1) / q0)) / design
                else:
                    # no bad session (most windows of drops and stalls): the first term is 0.0, and
                    # 0.0 + y is y (the second is negative, never -0.0), so one log instead of two
                    llr = ((den - num) * log((1.0 - p1) / q0)) / design
            elif kind == "mean" and mu > 0:
                # the window mean against the bound shifted by cusum_shift of the baseline; one
                # heavy-tailed window can add at most 3 nats
                base_mu = mu * (1.0 + zc * sqrt(cv2 / support))
                delta = shift * mu
                if min_delta > delta:
                    delta = min_delta
                design = 1.0 + den * phi_k / cv2
                llr = delta * den / (cv2 * mu * mu) * (num / den - base_mu - delta / 2.0) / design
                if not llr < 3.0:
                    llr = 3.0
                if not llr > -3.0:
                    llr = -3.0
            else:
                continue
            if not llr <= 0:
                normal = False
            total = cusum.get(name, 0.0) + llr
            if not total > 0.0:
                total = 0.0
            if cap < total:
                total = cap
            cusum[name] = total
        return normal

    def _score(self, scored: Mapping[str, tuple[float, float, float, float]]) -> float:
        best = 0.0
        for m in self.metrics:
            s = scored.get(m.name)
            if s is None:
                continue
            z = s[2]
            if m.min_delta > 0:
                z = min(z, self.z_fire * s[3] / m.min_delta)
            if z == math.inf:
                best = 1.0
            elif z > 0:
                best = max(best, z * z / (z * z + self.z_fire * self.z_fire))
        return best

    # -- one window of every key ----------------------------------------------------------------
    def step(self, start_ms: int, observations: Mapping[str, Mapping[str, tuple[float, float, float | None]]]
             ) -> dict[str, Verdict]:
        """Judge, then learn from, one window of every key that has data; advance the others.

        Returns a :class:`Verdict` per key observed, plus one per active key without data.
        Windows must come in order of ``start_ms`` (a window older than the last is ignored).
        """
        if self.last_start_ms is not None and start_ms < self.last_start_ms:
            return {}
        if self.last_start_ms is not None and start_ms > self.last_start_ms:
            step = start_ms - self.last_start_ms
            self.width_ms = step if self.width_ms is None else min(self.width_ms, step)
        gap = 1
        if self.last_start_ms is not None and self.width_ms:
            gap = max(1, (start_ms - self.last_start_ms) // self.width_ms)
        self.last_start_ms = start_ms
        warm = self.windows >= self.warmup_windows
        verdicts: dict[str, Verdict] = {}
        learn: list[tuple[str, Mapping[str, tuple[float, float, float | None]], bool]] = []
        base = self._window_baselines(start_ms)
        lam = 0.5 ** (1.0 / self.key_halflife)
        keys = self._keys
        # what every key of the window reads, looked up once
        judge, add_evidence, transition = self._judge, self._add_evidence, self._transition
        by = self._metric_by()
        sequential = self.sequential
        first = sequential[0] if sequential else None
        min_history, cusum_h, cusum_learn = self.cusum_min_history, self.cusum_h, self.cusum_h / 3
        width, adapt = self.width_ms, self.adapt_after_windows
        for key, obs in observations.items():
            k = keys.get(key)
            if k is None:
                k = keys[key] = _Key()   # a new key is judged as a key without state would be
            scored = judge(k, start_ms, obs, base)
            if gap > 1 and not k.active:
                k.bad_streak = 0
            k.missing = 0
            evidence = None
            if sequential:
                normal = add_evidence(k, obs, base)
                if k.active and normal:
                    k.cusum.clear()  # a firing key is judged on its latest windows: evidence restarts
                top = max(k.cusum.values(), default=0.0)
                if top <= 0:
                    k.cusum_since_ms = None
                elif k.cusum_since_ms is None:
                    k.cusum_since_ms = start_ms
                seasoned = k.seen >= min_history
                evidence = (top >= cusum_h and seasoned, normal)
                k.seen += obs[first][1] if first in obs else 0.0
            v = transition(key, k, start_ms, scored, warm, evidence, by)
            verdicts[key] = v
            skip = v.bad or v.active or v.event == "resolve"
            if v.active and v.since_ms is not None and width and (start_ms - v.since_ms) // width >= adapt:
                skip = False   # a lasting change is the new normal: learn it (the alert then resolves)
            # the key's largest evidence as it stands: _transition leaves it as it was, or empty
            # (a resolve clears it)
            if evidence is not None and (top if k.cusum else 0.0) > cusum_learn:
                skip = True   # evidence building up: keep the window out of the baseline
            if sequential and not (skip and warm):
                raw = k.raw
                for name in sequential:
                    o = obs.get(name)
                    if o is not None and o[1] > 0:
                        acc = raw.get(name)
                        if acc is None:
                            acc = raw[name] = [0.0, 0.0]
                        acc[0] = lam * acc[0] + o[0]
                        acc[1] = lam * acc[1] + o[1]
            learn.append((key, obs, skip))
        for key, k in self._keys.items():
            if key in observations or not k.active:
                continue
            k.missing += gap
            if k.missing >= self.stale_windows:
                verdicts[key] = self._resolve(key, k, start_ms, stale=True)
        self._learn(start_ms, learn)
        self.windows += 1
        return verdicts

    def _transition(self, key: str, k: _Key, start_ms: int,
                    scored: Mapping[str, tuple[float, float, float, float]], warm: bool,
                    evidence: tuple[bool, bool] | None = None, by: Mapping[str, Metric] | None = None) -> Verdict:
        if by is None:
            by = self._metric_by()
        bad = strong = False
        clear = True
        worst, worst_rank = None, -math.inf
        crit = False
        for name, (value, mu, z, excess) in scored.items():
            m = by[name]
            is_bad = z >= self.z_fire and excess >= m.min_delta
            if is_bad:
                bad = True
                strong = strong or (z >= self.z_strong and excess >= 2 * m.min_delta)
                crit = crit or (z >= self.critical_z and excess >= 3 * m.min_delta)
                rank = min(z / self.z_fire, excess / m.min_delta if m.min_delta else z)
                if rank > worst_rank:
                    worst, worst_rank = name, rank
            if z >= self.z_clear and excess >= m.min_delta / 2 and not m.lagging:
                clear = False
        if evidence is not None:
            # sequential metrics: the accumulated evidence decides (the z-scores still name the
            # worst symptom and the severity); a window looks clear only if it looks normal
            fired, normal = evidence
            if fired:
                bad = strong = True
                if worst is None:
                    worst = max(k.cusum, key=k.cusum.get)
                if k.bad_streak == 0 and not k.active:
                    k.first_bad_ms = k.cusum_since_ms
            else:
                seq_only_bad = bad and all(n in self.sequential for n, s in scored.items()
                                           if s[2] >= self.z_fire and s[3] >= by[n].min_delta)
                if seq_only_bad:
                    bad = strong = False
            clear = clear and normal
        if not warm:
            bad = strong = False
        score = self._score(scored) if warm and scored else 0.0   # nothing scored: 0.0
        event = None
        ends = None
        k.windows += 1
        k.last_ms = start_ms
        if not k.active:
            if bad:
                if k.bad_streak == 0 and k.first_bad_ms is None:
                    k.first_bad_ms = start_ms
                k.bad_streak += 1
                if strong or k.bad_streak >= self.k_fire:
                    k.active = True
                    k.since_ms = k.first_bad_ms
                    k.good_streak = 0
                    k.severity = "critical" if crit else "warning"
                    event = "fire"
            else:
                k.bad_streak = 0
                k.first_bad_ms = None
        else:
            if crit:
                k.severity = "critical"
            if clear and not bad:
                if k.good_streak == 0:
                    k.first_good_ms = start_ms
                k.good_streak += 1
                if k.good_streak >= self.m_resolve:
                    return self._resolve(key, k, start_ms, scored=scored, score=score)
            else:
                k.good_streak = 0
            event = "update"
        metrics = {n: (s[0], s[1], s[2]) for n, s in scored.items()} if scored else {}
        return Verdict(key=key, start_ms=start_ms, score=score, bad=bad, active=k.active, event=event,
                       worst=worst, since_ms=k.since_ms if k.active else None, severity=k.severity,
                       metrics=metrics, ends_at_ms=ends)

    def _resolve(self, key: str, k: _Key, start_ms: int, *, stale: bool = False,
                 scored: Mapping[str, tuple[float, float, float, float]] | None = None,
                 score: float = 0.0) -> Verdict:
        since = k.since_ms
        ends = start_ms if stale or k.first_good_ms is None else k.first_good_ms
        k.active = False
        k.bad_streak = k.good_streak = k.missing = 0
        k.since_ms = k.first_bad_ms = k.first_good_ms = None
        k.cusum.clear()
        k.cusum_since_ms = None
        metrics = {n: (s[0], s[1], s[2]) for n, s in (scored or {}).items()}
        return Verdict(key=key, start_ms=start_ms, score=score, bad=False, active=False, event="resolve",
                       worst=None, since_ms=since, severity=k.severity, metrics=metrics, ends_at_ms=ends,
                       stale=stale)

    # -- learning ------------------------------------------------------------------------------
    def _learn(self, start_ms: int, items: list[tuple[str, Mapping[str, tuple[float, float, float | None]], bool]]) -> None:
        hour = self._hour(start_ms)
        lam_g = 0.5 ** (1.0 / self.global_halflife)
        lam_k = 0.5 ** (1.0 / self.key_halflife)
        warm = self.windows >= self.warmup_windows
        pooled = {m.name: [0.0, 0.0] for m in self.metrics}  # num, den
        levels = [m for m in self.metrics if m.kind == "level"]
        # per metric, what every key's learning shares this window: the network-wide rate (its
        # pool learns after every key, below) and the constants of _expected made of it
        plan = []
        for m in self.metrics:
            if m.kind == "level":
                continue
            g = self._global[m.name]
            rate = g.num / g.den if g.den > 0 else None
            plan.append((m.name, m.kind, m.min_support, m.name in self.sequential, g, rate,
                         None if rate is None else self.prior_weight * rate,
                         None if rate is None else self.hour_prior_weight * rate,
                         m.floor ** 2, pooled[m.name]))
        h = 2 * hour
        rel = self.rel_floor
        cv2s = self._cv2
        for key, obs, skip in items:
            k = self._keys[key]
            for m in levels:
                # a level metric's detector learns every window it scored (test-then-train: it has
                # its own robust statistics; an anomaly is counted, not allowed to widen its band)
                o = obs.get(m.name)
                if o is not None and o[1] > 0:
                    det = k.levels.get(m.name)
                    if det is None:
                        det = k.levels[m.name] = self._level_detector(m)
                    det.learn_one(o[0] / o[1], start_ms)
            if skip and warm:
                continue
            stats, hours = k.stats, k.hours
            for name, kind, min_support, sequential, g, rate, c, ch, floor2, pool in plan:
                o = obs.get(name)
                # sequential metrics learn from every window: a sparse cell's baseline is built
                # from many small windows (their sums are what the baseline is made of)
                if o is None or o[1] <= 0 or (o[1] < min_support and not sequential):
                    continue
                num, den, sq = o
                pool[0] += num
                pool[1] += den
                if rate is None:
                    continue
                st = stats.get(name)
                # relative excess variance of this window, winsorised so one odd window cannot
                # blow the band open (sparse windows: too noisy; their baseline is not asked for)
                if den >= min_support:
                    # _expected and the sampling variance as in _judge, with the network-wide
                    # over-dispersion as it stands (it learns key by key, here)
                    phi = g.phi / g.phi_w if g.phi_w > 0 else 0.0
                    factor = 1.0
                    if st is not None:
                        factor = (st.num + c) / (st.den + c) if st.den + c > 0 else 1.0
                        phi = (st.phi + 5.0 * phi) / (st.phi_w + 5.0)
                        hs = hours.get(name)
                        if hs is not None and hs[h + 1] > 0:
                            factor = (hs[h] + ch * factor) / (hs[h + 1] + ch)
                    mu = rate * factor
                    if mu > 0:
                        var = phi * mu * mu + (rel * mu) ** 2 + floor2
                        if kind == "rate":
                            p = 1e-6 if 1e-6 > mu else mu
                            if 1 - 1e-6 < p:
                                p = 1 - 1e-6
                            samp = p * (1 - p) / den
                        elif kind == "mean":
                            samp = cv2s.get(name, 0.25) * mu * mu / den
                        else:
                            samp = 0.0
                        e = ((num / den - mu) ** 2 - samp) / (mu * mu)
                        if 0.0 > e:
                            e = 0.0
                        cap = 16.0 * (var + samp) / (mu * mu)
                        if cap < e:
                            e = cap
                        if st is None:
                            st = stats[name] = _Stat()
                        st.phi = lam_k * st.phi + e
                        st.phi_w = lam_k * st.phi_w + 1.0
                        g.phi = lam_g * g.phi + e
                        g.phi_w = lam_g * g.phi_w + 1.0
                if st is None:
                    st = stats[name] = _Stat()
                if kind == "mean" and sq is not None and num > 0 and den >= 2:
                    # one session has no spread within its window: learning from it drove cv2 to 0
                    # (ZeroDivisionError in _evidence on a 200-subscriber replay through the pipeline)
                    mean = num / den
                    within = max(sq / den - mean * mean, 0.0) / (mean * mean)
                    prev = cv2s.get(name)
                    cv2s[name] = within if prev is None else 0.99 * prev + 0.01 * within
                expected = den * rate
                st.num = lam_k * st.num + num
                st.den = lam_k * st.den + expected
                hs = hours.get(name)
                if hs is None:
                    hs = hours[name] = array("d", _NO_HOURS)
                hs[h] = lam_k * hs[h] + num
                hs[h + 1] = lam_k * hs[h + 1] + expected
        for m in self.metrics:
            if m.kind == "level":
                continue
            g = self._global[m.name]
            num, den = pooled[m.name][0], pooled[m.name][1]
            if den <= 0:
                continue
            # a plain mean until the pool has history, then exponentially weighted
            lam = min(lam_g, g.n / (g.n + 1.0))
            g.num = lam * g.num + num
            g.den = lam * g.den + den
            g.n += 1

    # -- queries -------------------------------------------------------------------------------
    def active_keys(self) -> list[str]:
        return sorted(k for k, s in self._keys.items() if s.active)

    @property
    def baselines(self) -> int:
        """Baseline accumulators held: per key, one per metric and one array of the 24 hours of
        day per metric -- at most keys x metrics x 2, each allocated by the first window that
        teaches the key that metric (not hour by hour); and one detector per ``level`` metric."""
        return sum(len(k.stats) + len(k.hours) + len(k.levels) for k in self._keys.values())

    def is_active(self, key: str) -> bool:
        k = self._keys.get(key)
        return bool(k and k.active)

    def expected(self, key: str, start_ms: int) -> dict[str, float]:
        """The baseline a window of ``key`` starting at ``start_ms`` would be compared with."""
        hour = self._hour(start_ms)
        k = self._keys.get(key)
        out = {}
        for m in self.metrics:
            if m.kind == "level":
                det = k.levels.get(m.name) if k is not None else None
                e = det.expected(start_ms) if det is not None and hasattr(det, "expected") else None
                if e is not None:
                    out[m.name] = e
                continue
            e = self._expected(m, k, hour)
            if e is not None:
                out[m.name] = e[0]
        return out

    def forget(self, key: str) -> None:
        """Drop a key's state (a decommissioned cell)."""
        self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)


# ------------------------------------------------------------------------------------------------
class HotspotEngine:
    """Merged cell windows in, ``alert.v1`` records out: cells, regions, and (optionally) drift.

    Parameters
    ----------
    cell_detector, region_detector
        :class:`HotspotDetector` s for cells and for whole regions (rolled-up cell windows).
    region_min_cells, region_min_share
        A region is degraded when its own rolled-up window fires, or when at least
        ``region_min_cells`` of its cells, or at least ``region_min_share`` of its active cells
        (and two or more), are hot at once.
    region_cells_ttl_windows
        A cell counts as one of its region's active cells if it had data this recently.
    lifecycle
        The :class:`AlertLifecycle` (shared with drift if given one); a new one by default.
    drift
        Optional :class:`monitor.detection.drift.DataDriftMonitor` fed the region windows.
    max_affected
        Cap on the affected-subscriber hashes kept per active hot spot (memory bound).

    Feed it with :meth:`process` (any number of merged :class:`Partial` s, in window order per
    window start); it returns the alert records to send.
    """

    def __init__(self, *, cell_detector: HotspotDetector | None = None,
                 region_detector: HotspotDetector | None = None, region_min_cells: int = 3,
                 region_min_share: float = 0.3, region_cells_ttl_windows: int = 60,
                 lifecycle: AlertLifecycle | None = None, drift: Any = None,
                 max_affected: int = 200_000) -> None:
        self.cell_detector = cell_detector or HotspotDetector(sequential=NETWORK_SYMPTOMS)
        self.region_detector = region_detector or HotspotDetector(metrics=REGION_METRICS, z_fire=6.0,
                                                                  z_strong=10.0, sequential=NETWORK_SYMPTOMS)
        self.region_min_cells = region_min_cells
        self.region_min_share = region_min_share
        self.region_cells_ttl_windows = region_cells_ttl_windows
        self.lifecycle = lifecycle if lifecycle is not None else AlertLifecycle()
        self.drift = drift
        self.max_affected = max_affected
        self._cell_region: dict[str, str] = {}
        self._cell_seen: dict[str, int] = {}
        self._affected: dict[str, set[int]] = {}   # active (or pending) hot cell -> hashes
        self._pending: dict[str, list[Partial]] = {}
        self._region_clear: dict[str, int] = {}
        self._region_since: dict[str, int] = {}
        self.last_verdicts: dict[str, Verdict] = {}
        self._last_worst: dict[str, str] = {}   # active cell -> its latest named symptom
        self.windows = 0

    @property
    def baselines(self) -> int:
        """Baseline accumulators of the cell and region detectors (see HotspotDetector.baselines)."""
        return self.cell_detector.baselines + self.region_detector.baselines

    def process(self, partials: Iterable[Partial]) -> list[Alert]:
        """Run the detectors over merged windows (grouped by window start, oldest first)."""
        out: list[Alert] = []
        for start, ws in group_by_window(partials):
            out.extend(self.step(start, ws))
        return out

    def step(self, start_ms: int, windows: Sequence[Partial]) -> list[Alert]:
        """One window start: every cell with data in it."""
        out: list[Alert] = []
        self.windows += 1
        width = windows[0].width_ms if windows else 60_000
        cell_region, cell_seen, n = self._cell_region, self._cell_seen, self.windows
        by_cell: dict[str, Partial] = {}
        observations = {}
        for p in windows:
            cell = p.cell_id
            cell_region[cell] = p.region
            cell_seen[cell] = n
            by_cell[cell] = p
            observations[cell] = cell_observation(p)
        verdicts = self.cell_detector.step(start_ms, observations)
        self.last_verdicts = verdicts
        pending = self._pending
        for cell in sorted(verdicts):
            v = verdicts[cell]
            p = by_cell.get(cell)
            if v.bad and not v.active and p is not None:
                pending.setdefault(cell, []).append(p)
            elif not v.active and v.event != "resolve" and pending:
                pending.pop(cell, None)
            if v.event is None:
                continue   # nothing to send (most cells, most windows)
            region = cell_region.get(cell, "")
            labels = {"cell_id": cell, "region": region}
            if v.event in ("fire", "update") and p is not None:
                hashes = self._affected.setdefault(cell, set())
                for q in self._pending.pop(cell, []):
                    hashes.update(q.affected)
                if len(hashes) < self.max_affected:
                    hashes.update(p.affected)
            if v.event in ("fire", "update"):
                # updated as of this window's end; started where its run of evidence began
                alert = self.lifecycle.fire(HOTSPOT_CELL, labels, ts_ms=start_ms + width,
                                            starts_at_ms=v.since_ms or start_ms,
                                            severity=v.severity, **self._cell_text(cell, v, p, width))
                if alert is not None:
                    out.append(alert)
            elif v.event == "resolve":
                text = self._cell_text(cell, v, p, width)
                alert = self.lifecycle.resolve(HOTSPOT_CELL, labels, ts_ms=v.ends_at_ms or start_ms,
                                               details=text["details"] | {"stale": v.stale})
                self._affected.pop(cell, None)
                self._pending.pop(cell, None)
                self._last_worst.pop(cell, None)
                if alert is not None:
                    out.append(alert)
        rolled = self._rollups(windows)
        out.extend(self._regions(start_ms, rolled, width))
        if self.drift is not None:
            out.extend(self.drift.update(start_ms, rolled, self.lifecycle))
        return out

    def _rollups(self, windows: Sequence[Partial]) -> dict[str, Partial]:
        by_region: dict[str, list[Partial]] = {}
        for p in windows:
            by_region.setdefault(p.region, []).append(p)
        return {r: rollup(ps, r) for r, ps in by_region.items()}

    def _regions(self, start_ms: int, rolled: Mapping[str, Partial], width: int) -> list[Alert]:
        out: list[Alert] = []
        rverdicts = self.region_detector.step(start_ms, {r: cell_observation(p) for r, p in rolled.items()})
        hot_by_region: dict[str, list[str]] = {}
        for cell in self.cell_detector.active_keys():
            hot_by_region.setdefault(self._cell_region.get(cell, ""), []).append(cell)
        n_cells: dict[str, int] = {}
        horizon = self.windows - self.region_cells_ttl_windows
        for cell, seen in self._cell_seen.items():
            if seen > horizon:
                r = self._cell_region.get(cell, "")
                n_cells[r] = n_cells.get(r, 0) + 1
        regions = set(hot_by_region) | {r for r in rverdicts} | {
            a.labels.get("region", "") for a in self.lifecycle.active(HOTSPOT_REGION)}
        for region in sorted(regions):
            hot = sorted(hot_by_region.get(region, []))
            total = max(n_cells.get(region, 0), len(hot), 1)
            rv = rverdicts.get(region)
            by_rollup = self.region_detector.is_active(region)
            by_cells = len(hot) >= self.region_min_cells or (
                len(hot) >= 2 and len(hot) / total >= self.region_min_share)
            labels = {"region": region}
            active = self.lifecycle.is_active(HOTSPOT_REGION, labels)
            if by_rollup or by_cells:
                self._region_clear[region] = 0
                since = self._region_since.setdefault(region, (rv.since_ms if rv and rv.since_ms else start_ms))
                severity = "critical" if (len(hot) >= 2 * self.region_min_cells or
                                          (rv is not None and rv.severity == "critical" and by_rollup)) else "warning"
                worst = rv.worst if rv is not None and rv.worst else None
                if worst is None and hot:
                    worst = self._worst_of(hot)
                affected = set()
                for c in hot:
                    affected |= self._affected.get(c, set())
                rp = rolled.get(region)
                if rp is not None and by_rollup:
                    affected.update(rp.affected)
                desc = (f"{len(hot)} of {total} cells hot" + (f" ({', '.join(hot[:10])}"
                        + (", ..." if len(hot) > 10 else "") + ")" if hot else "")
                        + (f"; region-wide {_metric_text(self.region_detector, worst, rv)}" if by_rollup and rv else "")
                        + f"; {len(affected)} subscribers affected")
                alert = self.lifecycle.fire(
                    HOTSPOT_REGION, labels, ts_ms=start_ms + width, starts_at_ms=since, severity=severity,
                    summary=f"Region {region} is degraded",
                    description=desc,
                    details={"hot_cells": hot, "cells": total, "region_wide": by_rollup,
                             "worst_symptom": worst, "affected_subscribers": len(affected),
                             "since_ms": since, "window_start_ms": start_ms})
                if alert is not None:
                    out.append(alert)
            elif active:
                self._region_clear[region] = self._region_clear.get(region, 0) + 1
                if self._region_clear[region] >= self.cell_detector.m_resolve:
                    alert = self.lifecycle.resolve(HOTSPOT_REGION, labels, ts_ms=start_ms)
                    self._region_since.pop(region, None)
                    if alert is not None:
                        out.append(alert)
            else:
                self._region_since.pop(region, None)
        return out

    def _worst_of(self, cells: list[str]) -> str | None:
        counts: dict[str, int] = {}
        for c in cells:
            v = self.last_verdicts.get(c)
            if v is not None and v.worst:
                counts[v.worst] = counts.get(v.worst, 0) + 1
        return max(counts, key=lambda k: counts[k]) if counts else None

    def _cell_text(self, cell: str, v: Verdict, p: Partial | None, width: int) -> dict[str, Any]:
        affected = len(self._affected.get(cell, ()))
        worst = v.worst or self._last_worst.get(cell)
        if v.worst:
            self._last_worst[cell] = v.worst
        desc = _metric_text(self.cell_detector, worst, v)
        since = v.since_ms
        duration = ((v.start_ms + width - since) // 60_000) if since is not None else 0
        details = {
            "since_ms": since, "window_start_ms": v.start_ms, "affected_subscribers": affected,
            "worst_symptom": worst, "score": round(v.score, 3),
            "sessions": p.sessions if p is not None else 0,
            "metrics": {n: {"observed": round(o, 4), "expected": round(e, 4), "z": round(z, 1)}
                        for n, (o, e, z) in v.metrics.items()},
        }
        return {"summary": f"Cell {cell} is a hot spot",
                "description": f"{desc} for {duration} min; {affected} subscribers affected",
                "details": details}

    # -- queries for the API and metrics shells ------------------------------------------------
    def active_hotspots(self) -> list[Alert]:
        """Active cell and region alerts (for gauges: one series per active cell / region)."""
        return self.lifecycle.active(HOTSPOT_CELL) + self.lifecycle.active(HOTSPOT_REGION)

    def affected_hashes(self, cell: str) -> set[int]:
        """Hashes of the subscribers affected by the active hot spot on ``cell`` (all sources)."""
        return set(self._affected.get(cell, ()))


def _metric_text(det: HotspotDetector, worst: str | None, v: Verdict | None) -> str:
    if worst is None or v is None or worst not in v.metrics:
        return "degraded service"
    m = next(m for m in det.metrics if m.name == worst)
    obs, exp, _z = v.metrics[worst]
    ratio = f" ({obs / exp:.1f}x)" if exp > 0 else ""
    return f"{m.label} {m.fmt(obs)} vs baseline {m.fmt(exp)}{ratio}"
