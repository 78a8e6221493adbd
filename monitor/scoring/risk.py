"""The online risk model: scaled logistic regression per outcome, calibrated, with reasons.

Pure (no Kafka, no event loop). Three parts:

* :class:`OnlineLogit`: logistic regression learned one row at a time by SGD *in standardised
  coordinates* (each feature centred and divided by its running standard deviation, absent keys
  counted as zeros, so a one-hot key is never zeroed) with Polyak averaging of the weights and an L2
  pull towards a prior. Weights are kept in raw units, so ``w_i * x_i`` is a feature's contribution
  to the log-odds (the model's reasons) and the prior is written in the features' own units.
* :class:`RiskModel`: one :class:`OnlineLogit` head per outcome (complaint, detractor answer,
  churn) over the stream features of :data:`monitor.scoring.features.FEATURE_TABLE`, each followed by a
  Platt calibrator ``sigmoid(a * z + c)`` that starts at :data:`COLD_CALIBRATION` and learns
  both its slope and offset. A head learns "the outcome happens within ``learn_horizon_hours``
  after this snapshot"; the probability over a longer horizon follows from a constant hazard
  (``1 - (1 - p)^(H / L)``), which keeps the ranking and matures labels days before a 7-day window
  would.
* :class:`LabelRecord` and :func:`roc_auc`: what one matured label carries (the seam for a labels
  topic every worker learns from) and the exact, rank-based ROC-AUC used to grade everything.

>>> m = RiskModel(seed=1)
>>> x = [0.0] * len(m.features)
>>> bad = list(x); bad[m.features.index("worst_moment")] = 1.0
>>> p0, p1 = m.predict(x), m.predict(bad)
>>> all(p1[o] > p0[o] for o in m.outcomes)
True
>>> m.learn(LabelRecord(ts_ms=0, x=bad, y=[1, 0, 0]))
>>> m.n_labels, m.n_positive["complaint"]
(1, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from monitor.scoring.features import FEATURES, PRIOR_BIAS, PRIOR_WEIGHTS

#: the outcomes a care or retention team acts on, in :class:`LabelRecord` order
OUTCOMES: tuple[str, ...] = ("complaint", "detractor", "churn")
assert len(OUTCOMES) == 3, "RiskModel._sums scores three heads in one pass"
#: horizon (hours) of each outcome's reported probability: the list's horizons
OUTCOME_HORIZON_H: dict[str, float] = {"complaint": 72.0, "detractor": 72.0, "churn": 168.0}
#: cold-start log-odds offset of each outcome against the prior's bias (:data:`PRIOR_BIAS`). They put
#: the untrained mean at 66 % for a complaint within 72 h where 1.3 % happen (tuning worlds 11-13).
#: Offsets two lower (-3 / -3.5 / -5) calibrated the list better but were reverted (docs/MODEL.md):
#: the model's calibration then climbed through a run, and the hot-spot engine's region-wide
#: ``mean_risk`` read that climb as 29 false SatmonRegionDegraded in the quiet scenario; scores
#: emitted on an outage fell under the material-change rule; on untuned worlds they ranked no better.
OUTCOME_BIAS_OFFSET: dict[str, float] = {"complaint": -1.0, "detractor": -1.5, "churn": -3.0}
#: the share of the prior's weights each outcome starts from: the table's weights were written for
#: "dissatisfied now"; a daily outcome is damped (the worst subscribers stay below certainty, so
#: the cold-start list is still ranked), churn more (it follows weeks, not a day). The shares were
#: 0.5 / 0.5 / 0.3 when the table had 22 features; the doses of a day and of weeks added ~45 % to
#: the weights a bad day sums (14.5 -> 21.1), and at the old shares the worst subscribers of
#: tests/test_worklist.py all read 1.0000 again: scaled by 14.5 / 21.1. A uniform share does not
#: change how the prior ranks within an outcome.
OUTCOME_PRIOR_SCALE: dict[str, float] = {"complaint": 0.35, "detractor": 0.35, "churn": 0.2}
#: the Platt calibrator ``(a, c)`` each outcome starts from: a head's log-odds ``z`` (the prior's
#: sums of unbounded doses reach 18) become ``sigmoid(a * z + c)``, its probability within
#: ``LEARN_HORIZON_H``. Fitted by maximum likelihood of the untrained prior's ``z`` against the
#: outcome within 24 h, every subscriber at every hourly instant of tuning worlds 11-13 (3,000
#: subscribers, 96 h; docs/MODEL.md "Calibration"). With ``(1, 0)`` the worst subscribers of an
#: outage read 1.0000 on every outcome and the mean probability of a complaint within 72 h was
#: 0.14 where 0.014 happen. A positive slope changes no ranking within an outcome.
COLD_CALIBRATION: dict[str, tuple[float, float]] = {"complaint": (0.26, -5.6), "detractor": (0.13, -5.4),
                                                    "churn": (0.27, -4.7)}
#: the calibrator's slope never falls below this many log-odds per standard deviation of ``z``
#: (a slope at zero would tie every subscriber; a negative one would invert the list)
MIN_CALIBRATION_SLOPE = 0.05
#: the calibrator's slope learns only once this many labels have shown how the log-odds spread (its
#: step is taken per deviation of ``z``, and over the first labels, mostly healthy subscribers at
#: the prior's bias, that deviation is a few hundredths: a slope step there was hundreds of times
#: too large); its offset learns from the first label
CALIBRATION_WARMUP = 100
LEARN_HORIZON_H = 24.0
#: the prior's L2 pull fades after this many labels (``OnlineLogit(prior_labels=...)``): the prior
#: weighs about as much as a thousand labels, a tenth of a day's at 10,000 subscribers. Until
#: 2026-12-07 the pull never faded (0): with 0.1 per label it held every weight within a few
#: hundredths of the prior however many labels came, the main reason learning added nothing
#: (docs/MODEL.md "Learning what the prior does not know"). Set by that reasoning, not tuned.
PRIOR_LABELS = 1000
#: who works which list: each team ranks subscribers by the probability of its outcome
TEAMS: dict[str, str] = {"care": "complaint", "retention": "churn"}
#: upper bounds of the risk bands the gauges count subscribers in (headline score), and their labels
RISK_BANDS: tuple[tuple[float, str], ...] = (
    (0.01, "below_1pct"), (0.05, "1_to_5pct"), (0.2, "5_to_20pct"), (0.5, "20_to_50pct"), (1.01, "above_50pct"))


def band_of(p: float) -> str:
    """The :data:`RISK_BANDS` label of a probability.

    >>> band_of(0.003), band_of(0.07), band_of(0.9)
    ('below_1pct', '5_to_20pct', 'above_50pct')
    """
    for bound, label in RISK_BANDS:
        if p < bound:
            return label
    return RISK_BANDS[-1][1]


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def roc_auc(y: Sequence[Any], p: Sequence[float]) -> float:
    """Exact ROC-AUC (Mann-Whitney U with mid-ranks for ties); NaN with only one class.

    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])
    0.5
    """
    order = sorted(range(len(p)), key=p.__getitem__)
    ranks = [0.0] * len(p)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and p[order[j + 1]] == p[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mid
        i = j + 1
    pos = [r for r, yi in zip(ranks, y) if yi]
    n1, n0 = len(pos), len(p) - len(pos)
    if n1 == 0 or n0 == 0:
        return float("nan")
    return (sum(pos) - n1 * (n1 + 1) / 2) / (n1 * n0)


class OnlineLogit:
    """Logistic regression learned online in standardised coordinates, weights kept in raw units.

    Parameters
    ----------
    lr
        SGD step in standardised coordinates (a unit-variance feature moves by ``lr * error``).
    l2
        Pull of each standardised weight towards its prior, per row.
    prior_labels
        The pull stays ``l2`` for the first ``prior_labels`` rows, then fades as
        ``l2 * prior_labels / n``: the prior then weighs like a fixed number of rows, as a Gaussian
        prior does in a MAP fit, so the data outweigh it as they accumulate. 0: it never fades
        (a pull that grows with the data, which keeps the weights near the prior for ever).
    average
        Polyak averaging window in rows: predictions use the running mean of the last ~``average``
        weight vectors (0: the latest weights). Averaging is what lets one pass match a batch fit.
    prior, bias
        Starting weights (raw units, by key) and intercept; L2 pulls towards them.
    scale
        Standardise inside the learner (False when the caller already did).

    >>> m = OnlineLogit(lr=0.1)
    >>> for i in range(400):
    ...     m.learn({"a": 1.0} if i % 2 else {"b": 1.0}, bool(i % 2))
    >>> m.predict({"a": 1.0}) > 0.9 > 0.1 > m.predict({"b": 1.0})
    True
    """

    def __init__(self, *, lr: float = 0.05, l2: float = 0.0, average: int = 1000,
                 prior: Mapping[str, float] | None = None, bias: float = 0.0, scale: bool = True,
                 prior_labels: int = 0) -> None:
        self.lr = lr
        self.l2 = l2
        self.prior_labels = prior_labels
        self.average = average
        self.prior = dict(prior or {})
        self.bias = bias
        self.scale = scale
        self.w: dict[str, float] = dict(self.prior)
        self.b = bias
        self.wa: dict[str, float] = dict(self.prior)
        self.ba = bias
        self.n = 0
        self.sum: dict[str, float] = {k: 0.0 for k in self.prior}
        self.sumsq: dict[str, float] = {k: 0.0 for k in self.prior}

    def z(self, x: Mapping[str, float]) -> float:
        """Log-odds with the averaged weights (unknown keys count zero)."""
        wa = self.wa
        return self.ba + sum(wa.get(k, 0.0) * v for k, v in x.items() if v)

    def predict(self, x: Mapping[str, float]) -> float:
        return _sigmoid(self.z(x))

    def _stats(self, k: str) -> tuple[float, float]:
        if not self.scale or self.n < 2:
            return 0.0, 1.0
        m = self.sum[k] / self.n
        var = self.sumsq[k] / self.n - m * m
        return m, math.sqrt(var) if var > 1e-12 else 1.0

    def learn(self, x: Mapping[str, float], y: bool, weight: float = 1.0) -> None:
        """One SGD step on ``(x, y)``; ``x`` is not modified."""
        for k in x:
            if k not in self.sum:
                self.sum[k] = self.sumsq[k] = 0.0
                self.w.setdefault(k, 0.0)
                self.wa.setdefault(k, 0.0)
        self.n += 1
        for k, v in x.items():
            if v:
                self.sum[k] += v
                self.sumsq[k] += v * v
        w = self.w
        zc = self.b + sum(w[k] * v for k, v in x.items() if v)
        g = (_sigmoid(zc) - float(y)) * weight
        lr, l2, prior = self.lr, self.l2, self.prior
        if self.prior_labels and self.n > self.prior_labels:
            l2 = l2 * self.prior_labels / self.n
        coords = []
        norm2 = 1.0  # the intercept's coordinate
        for k in self.sum:
            m, s = self._stats(k)
            xs = (x.get(k, 0.0) - m) / s
            coords.append((k, m, s, xs))
            norm2 += xs * xs
        # a rare feature's first occurrences stand many deviations out: the row's step is damped
        # by its squared length above the typical one (normalised SGD), else one row can throw a
        # weight by tens of log-odds
        damp = max(1.0, norm2 / (len(coords) + 1))
        shift = 0.0
        for k, m, s, xs in coords:
            # the step in standardised coordinates: w' = w * s, so dw = dw' / s
            step = -lr * (g * xs / damp + l2 * (w[k] - prior.get(k, 0.0)) * s)
            dw = step / s
            w[k] += dw
            shift += dw * m
        self.b += -lr * g / damp - shift
        a = 1.0 / min(self.n, self.average) if self.average > 0 else 1.0
        wa = self.wa
        for k in w:
            wa[k] += a * (w[k] - wa[k])
        self.ba += a * (self.b - self.ba)

    def to_state(self) -> dict[str, Any]:
        return {"w": dict(self.w), "b": self.b, "wa": dict(self.wa), "ba": self.ba, "n": self.n,
                "sum": dict(self.sum), "sumsq": dict(self.sumsq)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Take a :meth:`to_state`; a key of the prior that the state lacks (a feature added since
        it was saved) starts at its prior weight with no statistics."""
        self.w = {**self.prior, **{str(k): float(v) for k, v in state["w"].items()}}
        self.wa = {**self.prior, **{str(k): float(v) for k, v in state["wa"].items()}}
        zeros = dict.fromkeys(self.prior, 0.0)
        self.sum = {**zeros, **{str(k): float(v) for k, v in state["sum"].items()}}
        self.sumsq = {**zeros, **{str(k): float(v) for k, v in state["sumsq"].items()}}
        self.b, self.ba, self.n = float(state["b"]), float(state["ba"]), int(state["n"])


class LabelRecord(msgspec.Struct, kw_only=True, array_like=True):
    """One matured label: the feature snapshot taken at ``ts_ms`` and, per outcome of
    :data:`OUTCOMES`, 1 when it happened within the learning horizon after it, else 0.

    Carries no subscriber id: what a labels topic that every worker learns from needs, no more.
    """

    ts_ms: int
    x: list[float]
    y: list[int]
    partition: int = 0


encode_label = msgspec.msgpack.Encoder().encode
decode_label = msgspec.msgpack.Decoder(LabelRecord).decode


def _scorer_source(n: int) -> str:
    """Python source of two functions, ``scorer(x)`` and ``prior(x)``, for feature vectors of exactly
    ``n`` values: the three heads' sums unrolled over the features (each set feature tested once),
    then the arithmetic of :meth:`RiskModel.predict` and :meth:`RiskModel.score` or, for ``prior``,
    of :meth:`RiskModel.prior_score` (the headline alone), operation for operation, so the floats
    are the same. Weights ``w{i}_{k}``, biases ``b{k}``, calibration ``a{k}``, ``c{k}`` and horizon
    powers ``e{k}`` are globals of the namespace :func:`_compile_scorer`'s ``make`` runs it in: a
    call loads only the weights of the set features (as closure cells, every call copied all
    ``3 n`` of them into its frame)."""
    xs = ", ".join(f"x{i}" for i in range(n))
    # the heads' sums, inline in both functions (one call less per score)
    sums = [f"    {xs}, = x", "    s0 = s1 = s2 = 0.0"]
    for i in range(n):
        sums += [f"    if x{i}:",
                 f"        s0 += w{i}_0 * x{i}", f"        s1 += w{i}_1 * x{i}", f"        s2 += w{i}_2 * x{i}"]
    # _sigmoid inline; ``min(h, 1 - 1e-9)`` as a comparison (the same value, NaN included)
    sig = ("    if z >= 0:\n        h = 1.0 / (1.0 + exp(-z))\n    else:\n"
           "        e = exp(z)\n        h = e / (1.0 + e)\n    if h > 1 - 1e-9:\n        h = 1 - 1e-9")
    lines = ["def scorer(x):", *sums]
    for k in range(3):
        lines += [f"    z = a{k} * (b{k} + s{k}) + c{k}", sig, f"    p{k} = 1.0 - (1.0 - h) ** e{k}"]
    lines += ["    return 1.0 - (1.0 - p0) * (1.0 - p1) * (1.0 - p2), p0, p1, p2",
              "def prior(x):", *sums]
    for k in range(3):
        lines += [f"    z = a{k} * (b{k} + s{k}) + c{k}", sig, f"    t{k} = (1.0 - h) ** e{k}"]
    lines += ["    return 1.0 - t0 * t1 * t2"]
    return "\n".join(lines) + "\n"


def _compile_scorer(n: int) -> Any:
    """``make(rows, biases, calib, powers, headline)``: the ``scorer`` (or with ``headline`` the
    ``prior``) of :func:`_scorer_source` over these weights, in a namespace of its own."""
    code = compile(_scorer_source(n), "<risk scorer>", "exec")
    names = [f"w{i}_{k}" for i in range(n) for k in range(3)]

    def make(rows: Sequence[Sequence[float]], biases: Sequence[float], calib: Sequence[Sequence[float]],
             powers: Sequence[float], headline: bool) -> Any:
        if len(rows) != n:
            raise ValueError(f"{len(rows)} weight rows for a scorer of {n} features")
        ns: dict[str, Any] = dict(zip(names, [w for row in rows for w in row]))
        ns["exp"] = math.exp
        ns["b0"], ns["b1"], ns["b2"] = biases
        ns["e0"], ns["e1"], ns["e2"] = powers
        (ns["a0"], ns["c0"]), (ns["a1"], ns["c1"]), (ns["a2"], ns["c2"]) = calib
        exec(code, ns)  # noqa: S102 -- generated above
        # The functions read ``ns`` as their globals, so ``ns`` must not keep them: a function <->
        # globals cycle per refresh (every label) is garbage only the cyclic collector frees, and
        # the worker's collector runs rarely (monitor.tuning.GC_THRESHOLDS): a 50-minute soak saw
        # up to 7.5 M blocks of dead scorers pile up between full collections, and the arenas
        # they fragmented kept the worker's resident memory 2.5x up.
        scorer, prior = ns.pop("scorer"), ns.pop("prior")
        return prior if headline else scorer

    return make


#: ``make(rows, biases, calib, powers, headline) -> scorer`` for vectors of len(FEATURES) (see _scorer_source)
_make_scorer = _compile_scorer(len(FEATURES))


class RiskModel:
    """One calibrated online logistic head per outcome over the stream features.

    Parameters
    ----------
    lr, l2, average, prior_labels
        The heads' :class:`OnlineLogit` hyper-parameters (docs/MODEL.md: how they were chosen).
    learn_horizon_hours
        A label says whether the outcome happened within this many hours of its snapshot.
    calibration_lr
        Step of each outcome's Platt calibrator ``sigmoid(a * z + c)`` (from
        :data:`COLD_CALIBRATION`), learned test-then-train on the head's log-odds before each label,
        in standardised coordinates (``z`` centred and divided by its running deviation, so the
        slope's step does not depend on where a rare outcome's log-odds lie).
    use_prior
        Start at the rule-based prior (False: from zero; the ablation in docs/MODEL.md).
    seed
        Unused by the logistic heads (they are deterministic); kept for River's protocol.
    """

    def __init__(self, *, lr: float = 0.02, l2: float = 0.1, average: int = 5000,
                 learn_horizon_hours: float = LEARN_HORIZON_H, calibration_lr: float = 0.01,
                 use_prior: bool = True, seed: int = 0, prior_labels: int = PRIOR_LABELS) -> None:
        self.lr = lr
        self.l2 = l2
        self.prior_labels = prior_labels
        self.average = average
        self.learn_horizon_hours = learn_horizon_hours
        self.calibration_lr = calibration_lr
        self.use_prior = use_prior
        self.seed = seed
        self.features = FEATURES
        self.outcomes = OUTCOMES
        self.heads: dict[str, OnlineLogit] = {}
        self.prior_heads: dict[str, tuple[list[float], float]] = {}
        for o in OUTCOMES:
            scale = OUTCOME_PRIOR_SCALE[o]
            pw = [w * scale for w in PRIOR_WEIGHTS] if use_prior else [0.0] * len(FEATURES)
            pb = PRIOR_BIAS + OUTCOME_BIAS_OFFSET[o]
            self.prior_heads[o] = (pw, pb)
            self.heads[o] = OnlineLogit(lr=lr, l2=l2, average=average, prior=dict(zip(FEATURES, pw)), bias=pb,
                                        prior_labels=prior_labels)
        #: per outcome the Platt calibrator's (a, c); the cold start was fitted to the prior's
        #: log-odds, so a model learned from zero starts at the identity
        self.calib: dict[str, list[float]] = {o: list(COLD_CALIBRATION[o]) if use_prior else [1.0, 0.0]
                                              for o in OUTCOMES}
        #: per outcome (count, mean, sum of squared deviations) of the head's log-odds at its labels
        self.zstats: dict[str, list[float]] = {o: [0.0, 0.0, 0.0] for o in OUTCOMES}
        self.n_labels = 0
        #: the next offset of the labels topic (``satmon-labels``) once this model learns from it:
        #: the model is the prior plus that topic's labels below it, in order (None: it learns in
        #: process, from the cores directly). Carried in every checkpoint, so a restarted worker
        #: resumes reading where its model stands.
        self.labels_offset: int | None = None
        self.n_positive: dict[str, int] = {o: 0 for o in OUTCOMES}
        self.logloss_sum: dict[str, float] = {o: 0.0 for o in OUTCOMES}
        self._powers = [OUTCOME_HORIZON_H[o] / learn_horizon_hours for o in OUTCOMES]
        # the prior never learns: its rows and its scorer are built once, not at every label
        self._prior_rows = list(zip(*(self.prior_heads[o][0] for o in OUTCOMES)))
        self.prior_score_of = _make_scorer(self._prior_rows, [self.prior_heads[o][1] for o in OUTCOMES],
                                           [COLD_CALIBRATION[o] for o in OUTCOMES], self._powers, True)
        self._refresh()

    # -- the fast path ------------------------------------------------------------------------------

    def _refresh(self) -> None:
        self._w = {o: [h.wa.get(f, 0.0) for f in FEATURES] for o, h in self.heads.items()}
        self._b = {o: h.ba for o, h in self.heads.items()}
        # per feature the three heads' weights: one pass over the (mostly zero: ~5 of 39 set)
        # feature vector scores every head -- 1.9 µs against 5.7 for a generator per head
        self._rows = list(zip(*(self._w[o] for o in OUTCOMES)))
        self.score_probs = _make_scorer(self._rows, [self._b[o] for o in OUTCOMES],
                                        [self.calib[o] for o in OUTCOMES], self._powers, False)

    @staticmethod
    def _sums(rows: Sequence[tuple[float, float, float]], x: Sequence[float]) -> tuple[float, float, float]:
        """Each head's weighted sum over the set features (summed in feature order from zero, as
        ``sum`` would: the same floats as one sum per head)."""
        s0 = s1 = s2 = 0.0
        for w, xi in zip(rows, x):
            if xi:
                s0 += w[0] * xi
                s1 += w[1] * xi
                s2 += w[2] * xi
        return s0, s1, s2

    def _z(self, o: str, x: Sequence[float]) -> float:
        return self._b[o] + sum(w * xi for w, xi in zip(self._w[o], x) if xi)

    def hazard(self, o: str, x: Sequence[float]) -> float:
        """Calibrated probability of outcome ``o`` within the learning horizon."""
        a, c = self.calib[o]
        return _sigmoid(a * self._z(o, x) + c)

    def predict(self, x: Sequence[float]) -> dict[str, float]:
        """Probability of each outcome within its :data:`OUTCOME_HORIZON_H`."""
        L = self.learn_horizon_hours
        b, calib = self._b, self.calib
        out = {}
        for o, s in zip(OUTCOMES, self._sums(self._rows, x)):
            a, c = calib[o]
            h = min(_sigmoid(a * (b[o] + s) + c), 1 - 1e-9)
            out[o] = 1.0 - (1.0 - h) ** (OUTCOME_HORIZON_H[o] / L)
        return out

    def score(self, x: Sequence[float]) -> float:
        """The headline score: probability that at least one outcome happens (heads taken as
        independent) -- what the record's ``score`` holds."""
        q = 1.0
        for p in self.predict(x).values():
            q *= 1.0 - p
        return 1.0 - q

    def prior_score(self, x: Sequence[float]) -> float:
        """The headline score of the untrained prior, cold calibration included (for the record's
        ``prior`` field)."""
        q = 1.0
        L = self.learn_horizon_hours
        for o, s in zip(OUTCOMES, self._sums(self._prior_rows, x)):
            a, c = COLD_CALIBRATION[o]
            h = _sigmoid(a * (self.prior_heads[o][1] + s) + c)
            q *= (1.0 - min(h, 1 - 1e-9)) ** (OUTCOME_HORIZON_H[o] / L)
        return 1.0 - q

    def contributions(self, x: Sequence[float]) -> tuple[dict[str, float], str, list[float]]:
        """``(probabilities, the outcome most likely, per-feature contribution to its log-odds)``:
        the reasons come from the head of the outcome that dominates the subscriber's risk."""
        probs = self.predict(x)
        top = max(OUTCOMES, key=lambda o: (probs[o], -OUTCOMES.index(o)))
        return probs, top, self.contributions_of(top, x)

    def contributions_of(self, outcome: str, x: Sequence[float]) -> list[float]:
        """Per-feature contribution to outcome ``outcome``'s calibrated log-odds."""
        a = self.calib[outcome][0]
        return [a * w * xi if xi else 0.0 for w, xi in zip(self._w[outcome], x)]

    def contributions_above(self, outcome: str, x: Sequence[float], least: float) -> list[tuple[float, int]]:
        """``(contribution, feature index)`` of the features whose :meth:`contributions_of` exceeds
        ``least`` (>= 0), in feature order: the candidates for a score's reasons, without a list
        of every feature's."""
        a = self.calib[outcome][0]
        return [(c, i) for i, (w, xi) in enumerate(zip(self._w[outcome], x)) if xi and (c := a * w * xi) > least]

    # -- learning -------------------------------------------------------------------------------------

    def learn(self, label: LabelRecord, *, only: str | None = None, offset: int | None = None) -> None:
        """Test-then-train on one matured label (``label`` is not modified); ``only``: teach that
        outcome's head alone (a label file about one outcome); ``offset``: the label's offset on the
        labels topic (:attr:`labels_offset` becomes the next one)."""
        x = dict(zip(FEATURES, label.x))
        for o, y in zip(OUTCOMES, label.y):
            if only is not None and o != only:
                continue
            head = self.heads[o]
            z = head.z(x)
            a, c = self.calib[o]
            p = min(max(_sigmoid(a * z + c), 1e-9), 1 - 1e-9)
            self.logloss_sum[o] += -math.log(p if y else 1 - p)
            self.calib[o] = self._platt_step(o, z, a, c, p - y)
            head.learn(x, bool(y))
            self.n_positive[o] += int(y)
        self.n_labels += 1
        if offset is not None:
            self.labels_offset = offset + 1
        self._refresh()

    def _platt_step(self, o: str, z: float, a: float, c: float, g: float) -> list[float]:
        """One SGD step of outcome ``o``'s calibrator on log-odds ``z`` with error ``g = p - y``,
        taken in standardised coordinates: ``sigmoid(a z + c) = sigmoid(alpha u + beta)`` with
        ``u = (z - mean) / sd`` over the log-odds seen at labels. Raw, a rare outcome's ``z`` lies
        far below zero, so every positive's ``(p - 1) z`` pulled the slope towards zero (what kept
        the slope fixed before); centred, a positive above the mean steepens it."""
        st = self.zstats[o]
        n, mean, m2 = st[0] + 1.0, st[1], st[2]
        d = z - mean
        mean += d / n
        m2 += d * (z - mean)
        self.zstats[o] = [n, mean, m2]
        sd = math.sqrt(m2 / (n - 1.0)) if n > 1 else 1.0
        if sd < 1e-6:
            sd = 1.0
        lr = self.calibration_lr
        beta = a * mean + c - lr * g
        if n > CALIBRATION_WARMUP:
            # the floor stops the slope falling below MIN_CALIBRATION_SLOPE; it never raises a
            # slope that lies below it (flooring ``a * sd`` at a deviation of hundredths multiplied
            # the slope many times over in one label)
            a = max(a * sd - lr * g * (z - mean) / sd, min(a * sd, MIN_CALIBRATION_SLOPE)) / sd
        return [a, beta - a * mean]

    # -- checkpoints (data only) -------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything learned, as plain data (msgpack/JSON-able); hyper-parameters included.

        This is the worker's model checkpoint (``PartitionCore.checkpoint``: msgpack, never a
        pickle), so keep it and :meth:`from_state` complete: a learned attribute left out here is
        lost at every restart and rebalance. ``tests/test_security.py`` round-trips a trained
        model and compares its predictions."""
        return {"kind": "satmon-risk-v2",
                "params": {"lr": self.lr, "l2": self.l2, "average": self.average, "prior_labels": self.prior_labels,
                           "learn_horizon_hours": self.learn_horizon_hours,
                           "calibration_lr": self.calibration_lr, "use_prior": self.use_prior, "seed": self.seed},
                "features": list(FEATURES), "heads": {o: h.to_state() for o, h in self.heads.items()},
                "calib": {o: list(v) for o, v in self.calib.items()},
                "zstats": {o: list(v) for o, v in self.zstats.items()}, "n_labels": self.n_labels,
                "labels_offset": self.labels_offset, "n_positive": dict(self.n_positive), "logloss_sum": dict(self.logloss_sum)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "RiskModel":
        saved = list(state.get("features", ()))
        # the table only grows at its end: a model saved before features were added loads, the new
        # ones at their prior weight (what was learned is kept across the upgrade)
        if state.get("kind") != "satmon-risk-v2" or not saved or saved != list(FEATURES)[:len(saved)]:
            raise ValueError("not a satmon-risk-v2 model state for these features")
        model = cls(**state["params"])
        for o, hs in state["heads"].items():
            model.heads[o].load_state(hs)
        model.calib = {o: [float(a), float(c)] for o, (a, c) in state["calib"].items()}
        model.zstats = {o: [float(v) for v in zs] for o, zs in state.get("zstats", model.zstats).items()}
        model.n_labels = int(state["n_labels"])
        offset = state.get("labels_offset")   # absent in checkpoints from before the labels topic
        model.labels_offset = None if offset is None else int(offset)
        model.n_positive = {o: int(v) for o, v in state["n_positive"].items()}
        model.logloss_sum = {o: float(v) for o, v in state["logloss_sum"].items()}
        model._refresh()
        return model

    def __getstate__(self) -> dict[str, Any]:
        return self.to_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(RiskModel.from_state(state).__dict__)
