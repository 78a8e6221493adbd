"""Streaming univariate anomaly detectors (pure: no Kafka, no clock, no I/O).

Every detector follows River's protocol: constructor arguments are hyper-parameters stored under the
same names, learned state lives in ``_``-prefixed attributes, randomness only through ``seed``, and
the caller scores a point *before* learning it (test-then-train)::

    score = det.score_one(x, t)    # in [0, 1]; does not change the detector
    det.learn_one(x, t)

``x`` is a float, ``t`` the point's time in epoch milliseconds (used for time-of-day / time-of-week
slots and to infer the sampling period; ``None`` is accepted and disables seasonality).

Scores are calibrated tail probabilities: :func:`surprise_score` maps the p-value ``p`` of what the
detector saw under its learned normal model to ``log10(1/p) / (2 log10(1/p_fire))``, clipped to
[0, 1], so the default threshold 0.5 means "rarer than ``p_fire``" (1 in 10,000 by default) and 1.0
means rarer than ``p_fire`` squared. :class:`SeasonalDetector` also scores a value beyond the range
of its recent past (0.5 = half a percent of that range beyond the record) and reports the larger;
below 0.5 it damps points whose recent run of coarse levels is a known one (the context statistic).
See docs/DETECTION.md for what each detector scored on NAB.

>>> import math
>>> det = SeasonalDetector()
>>> day = 86_400_000
>>> xs = [100 + 20 * math.sin(2 * math.pi * i / 96) + (i * 7919 % 13) / 4 for i in range(96 * 8)]
>>> ts = [i * day // 96 for i in range(len(xs))]
>>> scores = [det.process_one(x, t) for x, t in zip(xs, ts)]
>>> max(scores[96 * 3:]) < 0.5
True
>>> det.process_one(40.0, ts[-1] + day // 96) >= 0.5         # a sudden drop fires
True
"""

from __future__ import annotations

import bisect
import inspect
import math
from array import array
from collections import deque
from typing import Any

__all__ = ["Detector", "SeasonalDetector", "EWMAZScore", "PageHinkleyDetector", "PageHinkleyTest", "HalfSpaceTreesDetector",
           "surprise_score", "DEFAULT_THRESHOLD"]

#: the score at and above which a point is anomalous (p-value below the detector's ``p_fire``)
DEFAULT_THRESHOLD = 0.5

_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
#: the horizon correction stops growing here (a detector that runs for months must still page)
_HORIZON_CAP = 10_000
#: at most this many time-of-day slots (5-minute slots); finer series share a slot
_MAX_DAY_SLOTS = 288
#: the context statistic looks at runs of 2 .. this + 1 levels
_CONTEXT_ORDERS = 3


def surprise_score(p: float, p_fire: float = 1e-4) -> float:
    """Map a p-value to [0, 1] so that ``p == p_fire`` gives 0.5 and ``p == p_fire**2`` gives 1.

    >>> surprise_score(1e-4), surprise_score(1.0), surprise_score(1e-8), surprise_score(0.0)
    (0.5, 0.0, 1.0, 1.0)
    """
    if p <= 0.0:
        return 1.0
    s = math.log10(1.0 / p) / (2.0 * math.log10(1.0 / p_fire)) if p < 1.0 else 0.0
    return min(1.0, max(0.0, s))


class Detector:
    """Base class: River-style parameters, ``clone``, and test-then-train ``process_one``."""

    def _get_params(self) -> dict[str, Any]:
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {n: getattr(self, n) for n in names}

    def clone(self, **params: Any) -> Detector:
        """A fresh detector with the same hyper-parameters (overridden by ``params``)."""
        return type(self)(**{**self._get_params(), **params})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({args})"

    def score_one(self, x: float, t: int | None = None) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def learn_one(self, x: float, t: int | None = None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def process_one(self, x: float, t: int | None = None) -> float:
        """Score ``x`` then learn it (the streaming order); returns the score."""
        s = self.score_one(x, t)
        self.learn_one(x, t)
        return s


class _Tail:
    """Empirical upper-tail probability of a non-negative statistic over a sliding window, with an
    exponential (generalised-Pareto, shape 0) tail fitted to the top ``tail`` fraction beyond it, as
    in SPOT (Siffer et al., KDD 2017): p-values far below 1/window stay meaningful."""

    __slots__ = ("window", "tail", "heavy", "_sorted", "_fifo")

    def __init__(self, window: int, tail: float = 0.05, heavy: bool = True) -> None:
        self.window, self.tail, self.heavy = window, tail, heavy
        self._sorted: list[float] = []
        self._fifo: deque[float] = deque()

    def __getstate__(self) -> tuple:
        return self.window, self.tail, self.heavy, self._sorted, list(self._fifo)

    def __setstate__(self, s: tuple) -> None:
        self.window, self.tail, self.heavy, self._sorted, fifo = s
        self._fifo = deque(fifo)

    def __len__(self) -> int:
        return len(self._sorted)

    def pvalue(self, s: float) -> float:
        srt = self._sorted
        n = len(srt)
        if n == 0:
            return 1.0
        m = max(5, int(self.tail * n))
        if m >= n:
            return (n - bisect.bisect_left(srt, s) + 1) / (n + 1)
        u = srt[n - m - 1]
        if s <= u:
            return (n - bisect.bisect_left(srt, s) + 1) / (n + 1)
        top = srt[n - m:]
        mean = sum(top) / m - u
        if mean <= 1e-12 * max(1.0, abs(u)):
            return 1e-12 if s > srt[-1] else (m + 1) / (n + 1)
        q = (m + 1) / (n + 1)
        if not self.heavy:
            return q * math.exp(-(s - u) / mean)
        # generalised Pareto by the method of moments on the excesses (shape clipped to [0, 0.9]:
        # heavy-tailed series such as bursty counts earn a heavier tail, light ones stay exponential)
        var = sum((v - u - mean) ** 2 for v in top) / max(1, m - 1)
        xi = 0.5 * (1.0 - mean * mean / var) if var > 0 else 0.0
        xi = min(0.9, max(0.0, xi))
        if xi < 1e-6:
            return q * math.exp(-(s - u) / mean)
        sigma = mean * (1.0 - xi)
        return q * (1.0 + xi * (s - u) / sigma) ** (-1.0 / xi)

    def max(self) -> float:
        return self._sorted[-1] if self._sorted else 0.0

    def add(self, s: float) -> None:
        bisect.insort(self._sorted, s)
        self._fifo.append(s)
        if len(self._fifo) > self.window:
            old = self._fifo.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]


class _SlotMeans:
    """Per-slot exponentially weighted means (time-of-day or time-of-week baselines)."""

    __slots__ = ("mean", "count")

    def __init__(self, n: int) -> None:
        self.mean = array("d", bytes(8 * n))
        self.count = array("l", bytes(array("l").itemsize * n))

    def __getstate__(self) -> tuple:
        return self.mean, self.count

    def __setstate__(self, s: tuple) -> None:
        self.mean, self.count = s

    def update(self, slot: int, x: float, alpha: float) -> None:
        c = self.count[slot]
        a = max(alpha, 1.0 / (c + 1))
        self.mean[slot] += a * (x - self.mean[slot])
        self.count[slot] = c + 1


class SeasonalDetector(Detector):
    """Residuals from the best of three online predictors, calibrated tail probabilities, onsets only.

    Predictors (all learned online): a fast level (EW mean, ``level_halflife`` points), the
    time-of-day slot baseline and the time-of-week slot baseline (an EW mean per slot, active once
    ``season_min_periods`` days / weeks are seen; the slot width comes from the sampling period,
    inferred from the first timestamps). Each keeps the EW mean absolute error of its one-step
    prediction (the seasonal ones also per time of day, shrunk to their all-day error:
    ``slot_scale``); a point's residual z-score is taken from the predictors within 1.5x of the best
    one's error (the smallest |z| among them: a point one good model explains is not anomalous).
    Three statistics are calibrated against their own recent ``history`` (an empirical tail with
    an exponential, SPOT-style extrapolation beyond its top 5 %): the point's |z| (spikes, dips,
    onsets of level shifts), the mean |z| of the last ``collective`` points (bursts, variance
    changes, slow drift) and the distance of the last ``shape`` points to their nearest neighbour
    among the last ``memory`` subsequences (a pattern never seen before). The score is the smallest
    p-value, Bonferroni-corrected for the statistics and (``horizon``) for the number of points
    watched beyond 1,000, through :func:`surprise_score`.

    Range: a value beyond the range (min to max) of the last ``range_window`` values by ``e`` times
    that range's width scores ``e / (e + range_excess)`` if that is higher (0.5 = ``range_excess``
    beyond a record; counted once the series has been watched for ``range_min_ms``). A level not
    seen for weeks is news even when the residual models have widened their bands (on NAB it is
    worth more than the three residual statistics together; docs/DETECTION.md).

    Context (CAD's idea on an online scale): the value's level is one of ``context_levels`` equal
    steps over the range of every value seen so far (half as many more on each side beyond it); the
    novelty is the share of the runs of 2, 3 and 4 levels ending at the point that were never seen.
    A point whose residual/range score reaches 0.5 keeps it; below that the score is
    ``(1 - context_weight) * score + context_weight * novelty``, so moderate evidence counts only with
    a transition the series never made, and novelty alone (at most ``context_weight``) never pages.

    Onsets only: within ``refractory`` points (and at most ``refractory_ms``) after a score, a
    point that does not exceed it scores 0 (the incident is already reported; NAB and an on-call
    person both pay for repeats; the comparison uses the scores before they are clipped to 1, so a
    rarer point after a saturated one still fires). No score before ``warmup`` points.

    Parameters
    ----------
    level_halflife : float
        Half-life (points) of the level and the predictors' error scales.
    season_alpha : float
        Weight of the newest period in a slot baseline.
    season_min_periods : int
        Days (weeks) seen before the daily (weekly) predictor counts.
    collective : int
        Points averaged for the collective statistic (1 = off).
    history : int
        Points in the sliding window the tail probabilities are calibrated on.
    p_fire : float
        The p-value that maps to the default threshold 0.5.
    warmup : int
        Points learned before the first non-zero score.
    refractory, refractory_ms : int
        Length of the quiet period after a score, in points and at most in milliseconds (0 = off).
    shape, memory : int
        Subsequence length (0 = off) and number of past subsequences for the novelty statistic.
    direction : str
        ``both``, or only ``up`` / ``down`` deviations of the best predictor count.
    heavy_tail : bool
        Fit a generalised-Pareto (not exponential) tail (ablation: worse on NAB).
    robust : bool
        Winsorise alarming points in the point statistic's calibration history (clip them to its
        current maximum; SPOT leaves them out), so one outage does not make the next look ordinary.
    horizon : float
        Exponent of the correction for the points watched: p x (n / 1000) ** horizon, n capped at
        10,000.
    slot_scale : bool
        Per-time-of-day error scale for the seasonal predictors.
    range_window : int
        Values whose range the range statistic compares a point with (0 = off).
    range_excess : float
        Excess beyond that range, as a fraction of its width, that scores 0.5.
    range_min_ms : int
        Time watched before the range and context statistics count (a young series sets records and
        makes new transitions all the time).
    context_levels : int
        Levels of the context statistic over the range seen so far (0 = off).
    context_weight : float
        Weight of the context novelty in the score of points below the threshold (< 0.5, so that
        novelty alone does not page).
    seed : int | None
        Unused (the detector is deterministic); kept for the protocol.

    >>> det = SeasonalDetector(warmup=20)
    >>> [round(det.process_one(10.0 + (i % 3), i * 60_000), 2) for i in range(25)][-1] < 0.5
    True
    >>> det.process_one(60.0, 25 * 60_000) > 0.9
    True
    """

    def __init__(self, level_halflife: float = 8.0, season_alpha: float = 0.3, season_min_periods: int = 2,
                 collective: int = 10, history: int = 2000, p_fire: float = 1e-4, warmup: int = 100,
                 refractory: int = 150, shape: int = 4, memory: int = 1000, direction: str = "both",
                 heavy_tail: bool = False, robust: bool = True, horizon: float = 3.0,
                 slot_scale: bool = True, refractory_ms: int = _DAY_MS, range_window: int = 5000,
                 range_excess: float = 0.005, range_min_ms: int = _DAY_MS, context_levels: int = 8,
                 context_weight: float = 0.45, seed: int | None = None) -> None:
        if direction not in ("both", "up", "down"):
            raise ValueError(f"direction must be 'both', 'up' or 'down', not {direction!r}")
        self.level_halflife = level_halflife
        self.season_alpha = season_alpha
        self.season_min_periods = season_min_periods
        self.collective = collective
        self.history = history
        self.p_fire = p_fire
        self.warmup = warmup
        self.refractory = refractory
        self.shape = shape
        self.memory = memory
        self.direction = direction
        self.heavy_tail = heavy_tail
        self.robust = robust
        self.horizon = horizon
        self.slot_scale = slot_scale
        self.refractory_ms = refractory_ms
        self.range_window = range_window
        self.range_excess = range_excess
        self.range_min_ms = range_min_ms
        self.context_levels = context_levels
        self.context_weight = context_weight
        self.seed = seed
        self._alpha = 1.0 - 0.5 ** (1.0 / level_halflife)
        self._n = 0
        self._level: float | None = None
        self._spread = 0.0            # EW mean |x - level|: the series' own scale, for the noise floor
        self._err = [0.0, 0.0, 0.0]   # EW mean |residual| of each predictor
        self._nerr = [0, 0, 0]
        self._t0: int | None = None
        self._dt: list[int] = []      # first sampling intervals (ms), to size the slots
        self._slot_ms: int | None = None
        self._day: _SlotMeans | None = None
        self._week: _SlotMeans | None = None
        self._recent: deque[float] = deque(maxlen=collective)
        self._recent_sum = 0.0
        self._point = _Tail(history, heavy=heavy_tail)
        self._coll = _Tail(history, heavy=heavy_tail)
        self._raw: deque[tuple[int, int | None, float]] = deque()   # (index, t, raw score): sliding max
        self._shape_tail = _Tail(history, heavy=heavy_tail)
        self._past: Any = None        # ring of past subsequences (numpy, raw units) for ``shape``
        self._window: deque[float] = deque(maxlen=max(1, shape))
        self._delay: deque[tuple] = deque()
        self._nstored = 0
        self._norms: Any = None
        self._slot_err: tuple[_SlotMeans, _SlotMeans] | None = None
        self._last_t: int | None = None
        self._cache: tuple | None = None
        self._hi: deque[tuple[int, float]] = deque()   # sliding max / min of the last ``range_window``
        self._lo: deque[tuple[int, float]] = deque()   # values (monotonic queues of (index, value))
        self._seen: set[tuple[int, ...]] = set()         # contexts (runs of levels) seen so far
        self._levels: deque[int] = deque(maxlen=_CONTEXT_ORDERS + 1)   # the last levels
        self._vmin: float | None = None                   # range of every value seen (the levels' scale)
        self._vmax: float | None = None

    # -- state -----------------------------------------------------------------------------------
    def _slots(self, t: int | None) -> tuple[int, int] | None:
        if t is None or not self._slot_ms:
            return None
        k = int(t) // self._slot_ms
        return k % (_DAY_MS // self._slot_ms), k % (_WEEK_MS // self._slot_ms)

    def _predictions(self, t: int | None) -> list[float | None]:
        lvl = self._level
        preds: list[float | None] = [lvl, None, None]
        sl = self._slots(t)
        if sl is None or lvl is None or self._t0 is None:
            return preds
        age = t - self._t0
        if self._day is not None and age >= self.season_min_periods * _DAY_MS and self._day.count[sl[0]]:
            preds[1] = self._day.mean[sl[0]]
        if self._week is not None and age >= self.season_min_periods * _WEEK_MS and self._week.count[sl[1]]:
            preds[2] = self._week.mean[sl[1]]
        return preds

    def _z(self, x: float, t: int | None) -> tuple[float, float, list[float | None]]:
        preds = self._predictions(t)
        floor = 1e-3 * self._spread + 1e-9 * (abs(self._level or 0.0) + 1.0)
        errs = [self._err[i] if preds[i] is not None and self._nerr[i] >= 10 else None for i in range(3)]
        best = min((e for e in errs if e is not None), default=None)
        if best is None:
            return 0.0, 0.0, preds
        z, signed = math.inf, 0.0
        sl = self._slots(t) if self.slot_scale and self._slot_err is not None else None
        for i, (p, e) in enumerate(zip(preds, errs)):
            if p is None or e is None or e > 1.5 * best + floor:
                continue
            if i and sl is not None:
                # the seasonal predictors' error at this time of day, shrunk to their all-day error:
                # a KPI's noise is often proportional to its level (quiet nights, busy evenings)
                se = self._slot_err[i - 1]
                c = se.count[sl[0]]
                e = (c * se.mean[sl[0]] + 5.0 * e) / (c + 5.0)
            zi = (x - p) / (1.2533 * e + floor)
            if abs(zi) < z:
                z, signed = abs(zi), zi
        return (0.0 if z == math.inf else z), signed, preds

    def _evaluate(self, x: float, t: int | None) -> tuple[float, float, float, list[float | None]]:
        if self._cache is not None and self._cache[0] == (x, t):
            return self._cache[1]
        z, signed, preds = self._z(x, t)
        coll = (self._recent_sum + z - (self._recent[0] if len(self._recent) == self.collective else 0.0))
        coll /= min(len(self._recent) + 1, self.collective)
        nov = self._novelty(x)
        ps = (self._point.pvalue(z), self._coll.pvalue(coll) if self.collective > 1 else 1.0,
              self._shape_tail.pvalue(nov) if nov is not None else 1.0)
        p = min(ps) * (1 + (self.collective > 1) + (nov is not None))
        if self.horizon:      # the longer a series is watched, the rarer a point must be to page
            p *= (min(max(self._n, 1000), _HORIZON_CAP) / 1000.0) ** self.horizon
        if (self.direction == "up" and signed < 0) or (self.direction == "down" and signed > 0):
            p = 1.0                  # a deviation the caller does not count as bad
        out = (z, coll, min(1.0, p), preds, nov, ps, self._excess(x, t), self._context_novelty(x, t))
        self._cache = ((x, t), out)
        return out

    def expected(self, t: int | None = None) -> float | None:
        """The value the detector expects at ``t``: the prediction of its best predictor so far
        (the smallest one-step error among those that have a prediction), None before the first point."""
        preds = self._predictions(t)
        best, value = math.inf, self._level
        for p, e, n in zip(preds, self._err, self._nerr):
            if p is not None and n >= 10 and e < best:
                best, value = e, p
        return value

    # -- protocol --------------------------------------------------------------------------------
    def _novelty(self, x: float) -> float | None:
        """Distance from the last ``shape`` points to their nearest past subsequence, in units of the
        series' spread (a pattern never seen before is far from every stored one)."""
        if not self.shape or self._past is None or len(self._window) < self.shape or self._nstored < 50:
            return None
        import numpy as np

        w = np.fromiter(self._window, float, self.shape)
        w[:-1] = w[1:]
        w[-1] = x
        n = min(self._nstored, self.memory)
        # nearest past subsequence by squared Euclidean distance: |p|^2 - 2 p.w + |w|^2 (one mat-vec)
        d2 = float((self._norms[:n] - 2.0 * (self._past[:n] @ w)).min() + w @ w)
        return math.sqrt(max(0.0, d2) / self.shape) / (self._spread + 1e-9 * (abs(self._level or 0.0) + 1.0))

    def _expired(self, entry: tuple[int, int | None, float], t: int | None) -> bool:
        return entry[0] <= self._n - self.refractory or (
            t is not None and entry[1] is not None and bool(self.refractory_ms) and entry[1] <= t - self.refractory_ms)

    def _recent_max(self, t: int | None) -> float:
        """The highest raw score within the refractory period before a point at ``t`` (-1 if none);
        the deque is decreasing, so the first unexpired entry is the maximum."""
        for entry in self._raw:
            if not self._expired(entry, t):
                return entry[2]
        return -1.0

    def _raw_score(self, p: float, excess: float = 0.0) -> float:
        """The larger of the surprise of ``p`` and the range statistic's score ``e / (e + range_excess)``,
        *not* clipped at 1 (``p`` floored at 1e-300): the refractory period compares these, so a point
        rarer than an earlier saturated one (score 1.0) still fires."""
        if self._n < self.warmup:
            return 0.0
        s = math.log10(1.0 / max(p, 1e-300)) / (2.0 * math.log10(1.0 / self.p_fire)) if p < 1.0 else 0.0
        if excess > 0.0:
            s = max(s, excess / (excess + self.range_excess))
        return s

    def _watched(self, t: int | None) -> bool:
        """Whether the series has been watched for ``range_min_ms`` (without timestamps: for
        ``range_window`` points). A young series reaches new extremes and makes new transitions all
        the time (the first day of a daily curve): the range and context statistics wait for it."""
        if t is None or self._t0 is None:
            return self._n >= self.range_window
        return t - self._t0 >= self.range_min_ms

    def _excess(self, x: float, t: int | None) -> float:
        """How far ``x`` lies beyond the range of the last ``range_window`` values, in units of that
        range's width (0 inside it): a KPI at a level not seen for that long (a record low of
        successful sessions) is news whatever the residual models say."""
        if not self.range_window or not self._hi or not self._watched(t):
            return 0.0
        hi, lo = self._hi[0][1], self._lo[0][1]
        width = hi - lo
        if width <= 0.0:
            width = 1e-9 * (abs(hi) + 1.0)
        up, down = (x - hi) / width, (lo - x) / width
        if self.direction == "up":
            down = 0.0
        elif self.direction == "down":
            up = 0.0
        return max(0.0, up, down)

    def _level_of(self, x: float) -> int:
        """The value's level: ``context_levels`` equal steps over the range of every value seen so far,
        ``context_levels // 2`` more on each side for values beyond it (no future range needed)."""
        over = self.context_levels // 2
        if self._vmin is None or self._vmax is None:
            return over
        step = (self._vmax - self._vmin) / (self.context_levels - 1) or 1.0
        return max(0, min(self.context_levels + 2 * over - 1, over + int(math.floor((x - self._vmin) / step))))

    def _context_novelty(self, x: float, t: int | None) -> float:
        """The share of the runs of 2, 3 and 4 levels ending at ``x`` never seen before (a transition
        between coarse levels the series has not made: CAD's idea, on an online scale)."""
        if not self.context_levels or not self._watched(t):
            return 0.0
        run = (*self._levels, self._level_of(x))
        new = sum(run[-k - 1:] not in self._seen for k in range(1, _CONTEXT_ORDERS + 1) if len(run) > k)
        return new / _CONTEXT_ORDERS

    def _learn_context(self, x: float) -> None:
        if not self.context_levels:
            return
        self._levels.append(self._level_of(x))
        run = tuple(self._levels)
        for k in range(1, _CONTEXT_ORDERS + 1):
            if len(run) > k:
                self._seen.add(run[-k - 1:])
        self._vmin = x if self._vmin is None else min(self._vmin, x)
        self._vmax = x if self._vmax is None else max(self._vmax, x)

    def _combined(self, raw: float, novelty: float) -> float:
        """The detector's score before the refractory period. A point the residual and range
        statistics call anomalous (``raw`` >= 0.5) keeps its (unclipped) score; below that, the score
        is the weighted mean of ``raw`` and the context novelty: moderate evidence counts when the
        series also makes a transition it never made (on NAB most of the residual statistics' false
        alarms are repeats of known patterns)."""
        if not self.context_levels or self._n < self.warmup:
            return raw
        mean = (1.0 - self.context_weight) * min(1.0, raw) + self.context_weight * novelty
        return max(raw, mean) if raw >= DEFAULT_THRESHOLD else mean

    def _learn_range(self, x: float) -> None:
        if not self.range_window:
            return
        i, old = self._n, self._n - self.range_window
        for q, worse in ((self._hi, lambda v: v <= x), (self._lo, lambda v: v >= x)):
            while q and q[0][0] <= old:
                q.popleft()
            while q and worse(q[-1][1]):
                q.pop()
            q.append((i, x))

    def score_one(self, x: float, t: int | None = None) -> float:
        if self._n < self.warmup:
            return 0.0
        ev = self._evaluate(x, t)
        raw = self._combined(self._raw_score(ev[2], ev[6]), ev[7])
        # refractory: within ``refractory`` points of a higher (or equal) score, stay quiet
        if self.refractory and raw <= self._recent_max(t):
            return 0.0
        return min(1.0, raw)

    def learn_one(self, x: float, t: int | None = None) -> None:
        z, coll, p, preds, nov, ps, excess, novelty = self._evaluate(x, t)
        self._cache = None
        if self.refractory:
            raw = self._combined(self._raw_score(p, excess), novelty)
            while self._raw and self._expired(self._raw[0], t):
                self._raw.popleft()
            while self._raw and self._raw[-1][2] <= raw:
                self._raw.pop()
            self._raw.append((self._n, t, raw))
        # as in SPOT, a statistic rarer than ``p_fire`` is an anomaly, not part of the normal tail it
        # is judged against (else one outage makes the next one look ordinary)
        if self._level is not None:
            if self.robust and ps[0] < self.p_fire and len(self._point) >= 100:
                z = min(z, self._point.max())       # winsorised: counted, but not widening the tail
            self._point.add(z)
            self._coll.add(coll)
        if nov is not None:
            self._shape_tail.add(nov)
        if self.shape:
            self._store_shape(x)
        if len(self._recent) == self.collective:
            self._recent_sum -= self._recent[0]
        self._recent.append(z)
        self._recent_sum += z
        self._learn_range(x)
        self._learn_context(x)
        self._learn_predictors(x, t, preds)
        self._n += 1

    def _store_shape(self, x: float) -> None:
        import numpy as np

        self._window.append(x)
        if len(self._window) < self.shape:
            return
        if self._past is None:
            self._past = np.zeros((self.memory, self.shape))
            self._norms = np.zeros(self.memory)
            self._nstored = 0
        # keep the newest ``shape`` subsequences out of the memory (they overlap the current one)
        self._delay.append(tuple(self._window))
        if len(self._delay) > self.shape:
            row = self._nstored % self.memory
            v = self._delay.popleft()
            self._past[row] = v
            self._norms[row] = sum(a * a for a in v)
            self._nstored += 1

    def _learn_predictors(self, x: float, t: int | None, preds: list[float | None]) -> None:
        a = self._alpha
        for i, p in enumerate(preds):
            if p is not None:
                n = self._nerr[i]
                w = max(a, 1.0 / (n + 1))
                r = abs(x - p)
                self._err[i] += w * (r - self._err[i])
                self._nerr[i] = n + 1
                if i and self._slot_err is not None:
                    se, k = self._slot_err[i - 1], self._slots(t)[0]
                    if se.count[k] >= 3:       # an outage at this hour must not widen this hour's band
                        r = min(r, 3.0 * se.mean[k] + 1e-12)
                    se.update(k, r, 0.1)
        if self._level is None:
            self._level = x
        else:
            self._spread += a * (abs(x - self._level) - self._spread)
            self._level += a * (x - self._level)
        if t is None:
            return
        if self._t0 is None:
            self._t0 = t
        if self._slot_ms is None:
            if self._last_t is not None and t > self._last_t:
                self._dt.append(t - self._last_t)
            self._last_t = t
            if len(self._dt) >= 20:
                dt = sorted(self._dt)[len(self._dt) // 2]
                per_day = _DAY_MS // dt if dt > 0 else 0
                if per_day >= 4:
                    slot = max(dt, _DAY_MS // _MAX_DAY_SLOTS)
                    slot = _DAY_MS // (_DAY_MS // slot)                   # a whole number of slots a day
                    while _DAY_MS % slot:
                        slot -= 1
                    self._slot_ms = slot
                    self._day = _SlotMeans(_DAY_MS // slot)
                    self._week = _SlotMeans(_WEEK_MS // slot)
                    self._slot_err = (_SlotMeans(_DAY_MS // slot), _SlotMeans(_DAY_MS // slot))
                else:
                    self._slot_ms = 0                                     # no daily season to learn
            return
        sl = self._slots(t) if self._slot_ms else None
        if sl is not None and self._day is not None and self._week is not None:
            self._day.update(sl[0], x, self.season_alpha)
            self._week.update(sl[1], x, self.season_alpha)


class EWMAZScore(Detector):
    """Peer baseline: z-score against an exponentially weighted mean and variance (Gaussian p-value).

    >>> det = EWMAZScore(warmup=5)
    >>> _ = [det.process_one(10.0 + (i % 2), None) for i in range(30)]
    >>> det.score_one(30.0) > 0.9 > det.score_one(10.5)
    True
    """

    def __init__(self, halflife: float = 50.0, p_fire: float = 1e-4, warmup: int = 100,
                 seed: int | None = None) -> None:
        self.halflife, self.p_fire, self.warmup, self.seed = halflife, p_fire, warmup, seed
        self._a = 1.0 - 0.5 ** (1.0 / halflife)
        self._n, self._mean, self._var = 0, 0.0, 0.0

    def score_one(self, x: float, t: int | None = None) -> float:
        if self._n < self.warmup:
            return 0.0
        sd = math.sqrt(self._var) + 1e-9 * (abs(self._mean) + 1.0)
        return surprise_score(math.erfc(abs(x - self._mean) / sd / math.sqrt(2.0)), self.p_fire)

    def learn_one(self, x: float, t: int | None = None) -> None:
        a = self._a if self._n else 1.0
        d = x - self._mean
        self._mean += a * d
        self._var = (1.0 - a) * (self._var + a * d * d)
        self._n += 1


class PageHinkleyDetector(Detector):
    """Two-sided Page-Hinkley / CUSUM on the robust z-score of each point against a slow EW level:
    accumulates deviations beyond ``delta`` (in robust-scale units) and scores the running sum as a
    tail probability ``exp(-sum)`` (a CUSUM of standardised excesses is a log-likelihood ratio).
    Catches level shifts and slow drift; resets after a firing point.

    >>> det = PageHinkleyDetector(warmup=20)
    >>> _ = [det.process_one(10.0 + (i % 3), None) for i in range(200)]
    >>> max(det.process_one(13.0 + (i % 3), None) for i in range(20)) >= 0.5
    True
    """

    def __init__(self, halflife: float = 200.0, delta: float = 0.5, p_fire: float = 1e-4, warmup: int = 100,
                 seed: int | None = None) -> None:
        self.halflife, self.delta, self.p_fire, self.warmup, self.seed = halflife, delta, p_fire, warmup, seed
        self._a = 1.0 - 0.5 ** (1.0 / halflife)
        self._n, self._mean, self._mad = 0, 0.0, 0.0
        self._up = self._down = 0.0

    def _sums(self, x: float) -> tuple[float, float]:
        z = (x - self._mean) / (1.2533 * self._mad + 1e-9 * (abs(self._mean) + 1.0))
        z = max(-10.0, min(10.0, z))
        return max(0.0, self._up + z - self.delta), max(0.0, self._down - z - self.delta)

    def score_one(self, x: float, t: int | None = None) -> float:
        if self._n < self.warmup:
            return 0.0
        up, down = self._sums(x)
        return surprise_score(math.exp(-max(up, down)), self.p_fire)

    def learn_one(self, x: float, t: int | None = None) -> None:
        if self._n:
            up, down = self._sums(x)
            if self._n >= self.warmup and surprise_score(math.exp(-max(up, down)), self.p_fire) >= DEFAULT_THRESHOLD:
                up = down = 0.0
                self._mean = x
            self._up, self._down = up, down
        a = self._a if self._n else 1.0
        self._mad += max(a, 1.0 / (self._n + 1)) * (abs(x - self._mean) - self._mad) if self._n else 0.0
        self._mean += a * (x - self._mean)
        self._n += 1


class PageHinkleyTest:
    """The Page-Hinkley change test of River's ``drift.PageHinkley`` (a drift *test*: ``update`` then
    ``drift_detected``, not a [0, 1] scorer), with River's arithmetic: the same decisions on the same
    inputs (tests/test_detectors.py checks it against River on random streams). It is here so that
    data drift (:class:`monitor.detection.drift.DataDriftMonitor`) runs on the project's detector
    module without importing ``river.drift``, whose package pulls in scikit-learn (1.8 s at a worker's
    start, measured with ``python -X importtime``).

    The running mean (a plain mean since the last detection) is subtracted from each value; the
    faded sums of ``x - mean - delta`` and ``x - mean + delta`` are compared with their extremes,
    and an excursion beyond ``threshold`` (upwards, downwards or either: ``mode``) after
    ``min_instances`` values is a change. The test restarts after a detection.

    >>> ph = PageHinkleyTest(min_instances=1, delta=1.0, threshold=9.0, alpha=1.0)
    >>> hits = []
    >>> for i, x in enumerate([0.0] * 20 + [4.0] * 20):
    ...     ph.update(x)
    ...     if ph.drift_detected:
    ...         hits.append(i)
    >>> hits[:1]
    [23]
    """

    def __init__(self, min_instances: int = 30, delta: float = 0.005, threshold: float = 50.0,
                 alpha: float = 1 - 0.0001, mode: str = "both") -> None:
        if mode not in ("up", "down", "both"):
            raise ValueError(f"mode must be 'up', 'down' or 'both', not {mode!r}")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self._reset()

    def _reset(self) -> None:
        self.drift_detected = False
        self._n = 0.0
        self._mean = 0.0
        self._sum_increase = 0.0
        self._sum_decrease = 0.0
        self._min_increase = math.inf
        self._max_decrease = -1.0

    def update(self, x: float) -> None:
        if self.drift_detected:
            self._reset()
        self._n += 1.0
        self._mean += (1.0 / self._n) * (x - self._mean)
        dev = x - self._mean
        self._sum_increase = self.alpha * self._sum_increase + dev - self.delta
        self._sum_decrease = self.alpha * self._sum_decrease + dev + self.delta
        if self._sum_increase < self._min_increase:
            self._min_increase = self._sum_increase
        if self._sum_decrease > self._max_decrease:
            self._max_decrease = self._sum_decrease
        if self._n >= self.min_instances:
            up = self._sum_increase - self._min_increase > self.threshold
            down = self._max_decrease - self._sum_decrease > self.threshold
            self.drift_detected = up if self.mode == "up" else down if self.mode == "down" else (up or down)


class HalfSpaceTreesDetector(Detector):
    """Peer: River's :class:`river.anomaly.HalfSpaceTrees` on the min-max scaled value and its last
    ``lags`` differences (HST wants features in [0, 1]). Its raw score is already in [0, 1] but is not
    a tail probability.

    >>> det = HalfSpaceTreesDetector(seed=1, warmup=0)
    >>> 0.0 <= det.process_one(1.0) <= 1.0
    True
    """

    def __init__(self, n_trees: int = 10, height: int = 8, window_size: int = 250, lags: int = 1,
                 warmup: int = 100, seed: int | None = 42) -> None:
        from river import anomaly, preprocessing

        self.n_trees, self.height, self.window_size = n_trees, height, window_size
        self.lags, self.warmup, self.seed = lags, warmup, seed
        self._model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, seed=seed)
        self._prev: deque[float] = deque(maxlen=lags + 1)
        self._n = 0

    def _features(self, x: float) -> dict[str, float]:
        feats = {"x": x}
        prev = list(self._prev)
        for i in range(1, self.lags + 1):
            feats[f"d{i}"] = x - prev[-i] if len(prev) >= i else 0.0
        return feats

    def score_one(self, x: float, t: int | None = None) -> float:
        if self._n < self.warmup:
            return 0.0
        return float(min(1.0, max(0.0, self._model.score_one(self._features(x)))))

    def learn_one(self, x: float, t: int | None = None) -> None:
        self._model.learn_one(self._features(x))
        self._prev.append(x)
        self._n += 1
