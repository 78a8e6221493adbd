"""Risk quality on outcomes: ``satmon evaluate`` over simulator v3 worlds, with references in the same run.

:func:`evaluate` replays each world's streams through the worker's pipeline (:mod:`monitor.replay`,
the same :class:`~monitor.pipeline.RiskPipeline` and cores) and, at list instants after the
burn-in (every hour; the headline at 09:00 local each day), takes every subscriber's feature
snapshot and the model's probability per outcome. Labels come from the world's ground truth
(``ground_truth/outcomes.jsonl``: complaints, detractor answers, port-outs, each with its driver),
including the unseen follow-up, and only instants whose whole horizon lies in the run count.

Systems graded on the same rows: ``model`` (the pipeline's), ``prior`` (an untrained model: the
rule-based prior), ``zero_prior`` (a model that starts from zero weights and learns the same labels),
``oracle`` (the world's true probability, ``ground_truth/oracle.npz``), ``batch_reference``
(scikit-learn's ``HistGradientBoostingClassifier`` with default settings, trained on the snapshots
of the first half of the evaluated period, scored on the second, cross-fitted over subscribers: a
subscriber's rows are scored by a model fitted on other subscribers only), ``batch_logistic``
(scikit-learn's ``LogisticRegression``, default ``C``, on standardised features, same rows, split
and folds: what a linear model like the online heads can reach offline) and
``best_single_feature`` (one feature, chosen and signed on the first half). Each headline outcome also carries a ``lift_curve`` (lift at the
budgets of :data:`CURVE_BUDGETS`, daily instants) for a picture. ROC-AUC is exact and counts pairs *within* an
instant only (pooling instants would reward knowing the time of day). Intervals: bootstrap over
worlds. :func:`read_events` reads a directory's decoded events for tools that want them.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from monitor.scoring.core import HOUR_MS
from monitor.records.errors import InvalidEventError, MonitorError
from monitor.records.events import INPUT_TOPICS, decode


def read_events(sim_dir: str | Path) -> tuple[list[Any], int]:
    """Decoded input events of a simulator directory in replay order, and the count of invalid lines."""
    d = Path(sim_dir)
    events: list[Any] = []
    invalid = 0
    found = False
    for topic, schema in INPUT_TOPICS.items():
        path = d / f"{topic}.jsonl"
        if not path.exists():
            continue
        found = True
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    try:
                        events.append(decode(schema, line))
                    except InvalidEventError:
                        invalid += 1
    if not found:
        raise MonitorError(f"{d}: no input files ({', '.join(t + '.jsonl' for t in INPUT_TOPICS)})")
    events.sort(key=lambda e: e.ts_ms)
    return events, invalid


# --- metrics ------------------------------------------------------------------------------------


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """Exact ROC-AUC (Mann-Whitney with mid-ranks for ties); NaN with one class.

    >>> _auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    c, pairs = _auc_counts(y, s)
    return c / pairs if pairs else float("nan")


def _auc_counts(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """``(concordant pairs + half the tied ones, positive x negative pairs)``."""
    y = np.asarray(y, dtype=bool)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return 0.0, 0.0
    s = np.asarray(s, dtype=np.float64)
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid = ends - (counts - 1) / 2.0          # mid-rank of each distinct value
    ranks = mid[inv]
    return float(ranks[y].sum() - pos * (pos + 1) / 2), float(pos * neg)


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(-np.asarray(s), kind="mergesort")
    yy = np.asarray(y)[order]
    if not yy.sum():
        return float("nan")
    tp = np.cumsum(yy)
    precision = tp / np.arange(1, len(yy) + 1)
    return float((precision * yy).sum() / yy.sum())


def _top(s: np.ndarray, share: float) -> np.ndarray:
    """Indices of the top ``share`` of ``s`` (at least one), ties broken by position."""
    k = max(1, int(round(len(s) * share)))
    return np.argsort(-s, kind="mergesort")[:k]


def _equal_count_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[tuple[int, float, float]]:
    """``(rows, mean p, observed rate)`` of ``bins`` equal-count bins of ``p``, lowest first."""
    order = np.argsort(p, kind="mergesort")
    y = np.asarray(y)
    return [(len(chunk), float(p[chunk].mean()), float(y[chunk].mean()))
            for chunk in np.array_split(order, bins) if len(chunk)]


def _calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-count bins of ``p`` (|mean p - observed rate|)."""
    if not len(p):
        return float("nan")
    err = 0.0
    for n, mean_p, rate in _equal_count_bins(y, p, bins):
        err += n / len(p) * abs(mean_p - rate)
    return err


# --- one world ----------------------------------------------------------------------------------

#: outcome -> horizons graded (hours); the headline of each outcome is its first name in HEADLINE
HORIZONS_H: dict[str, tuple[int, ...]] = {"complaint": (24, 72, 168), "detractor": (24, 72, 168),
                                          "churn": (24, 72, 168)}
HEADLINE: tuple[str, ...] = ("complaint_72h", "detractor_72h", "churn_7d")
#: how an outcome and horizon are named in the report
def outcome_name(outcome: str, h: int) -> str:
    return f"{outcome}_7d" if h == 168 else f"{outcome}_{h}h"


#: the budgets the list is graded at (share of the scored subscribers)
BUDGETS = (0.01, 0.05)
#: the budgets of each headline outcome's lift curve (share of the scored subscribers)
CURVE_BUDGETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
#: the simulator's drivers -> the model's reason codes that name them (explanation fidelity)
DRIVER_REASONS: dict[str, tuple[str, ...]] = {
    "coverage": ("weak_coverage", "worst_coverage", "interference", "low_sinr"),
    "drops": ("drops",), "stalls": ("stalls",),
    "latency_voice": ("latency",), "latency_video": ("latency",), "latency_gaming": ("latency",),
    "throughput": ("throughput",), "billing": ("billing",), "slow_handling": ("slow_resolution", "handling"),
    "reopened": ("reopened", "handling"), "escalated": ("escalated", "handling"),
    "not_fixed": ("fcr_fail", "open_tickets", "handling"),
    "app_failures": ("app_failures",), "bot_bounces": ("bot_to_human", "app_failures"),
}
#: words in a "worst moment" reason's text that name a network driver
DRIVER_WORDS: dict[str, tuple[str, ...]] = {
    "drops": ("dropped",), "stalls": ("stall",), "latency_voice": ("latency",), "latency_video": ("latency",),
    "latency_gaming": ("latency",), "throughput": ("mbit",), "coverage": ("rsrp", "coverage", "signal"),
}


def _sub_index(sid: str) -> int:
    return int(sid.rsplit("-", 1)[1])


def load_truth(sim_dir: str | Path) -> dict[str, Any]:
    """A v3 world's ground truth: ``world`` (world.json), ``oracle`` (npz), ``times[outcome]``
    (subscriber index -> sorted outcome times), ``drivers[outcome]`` (index -> [(ts, driver)]),
    ``surveys`` (index -> sorted answer times), ``churned`` (index -> port-out time)."""
    d = Path(sim_dir)
    gt = d / "ground_truth"
    if not (gt / "world.json").exists():
        if (gt / "satisfaction.npz").exists():
            raise MonitorError(f"{d}: a v2 run (latent satisfaction). The latent-satisfaction figure graded the "
                               "score against a formula shared with the features and was removed; simulate a "
                               "v3 world (the default) to evaluate on outcomes")
        raise MonitorError(f"{d}: no v3 ground truth (ground_truth/world.json); run `satmon simulate --out {d}`")
    world = json.loads((gt / "world.json").read_text())
    times: dict[str, dict[int, list[int]]] = {o: {} for o in HORIZONS_H}
    drivers: dict[str, dict[int, list[tuple[int, str]]]] = {o: {} for o in HORIZONS_H}
    surveys: dict[int, list[int]] = {}
    with open(gt / "outcomes.jsonl", "rb") as f:
        for line in f:
            rec = orjson.loads(line)
            i = _sub_index(rec["subscriber_id"])
            for o in HORIZONS_H:
                if rec.get(o):
                    evs = sorted((e["ts_ms"], e["driver"]) for e in rec[o])
                    times[o][i] = [t for t, _ in evs]
                    drivers[o][i] = evs
            if rec.get("surveys_ms"):
                surveys[i] = sorted(rec["surveys_ms"])
    oracle_path = gt / "oracle.npz"
    oracle = dict(np.load(oracle_path)) if oracle_path.exists() else None
    churned = {i: v[0] for i, v in times["churn"].items()}
    return {"world": world, "oracle": oracle, "times": times, "drivers": drivers, "surveys": surveys,
            "churned": churned}


def _labels(times: dict[int, list[int]], subs: np.ndarray, t: int, h_ms: int) -> np.ndarray:
    """1 where the subscriber has an outcome in ``(t, t + h]``."""
    y = np.zeros(len(subs), np.int8)
    for j, s in enumerate(subs.tolist()):
        ts = times.get(s)
        if ts:
            k = bisect.bisect_right(ts, t)
            y[j] = k < len(ts) and ts[k] <= t + h_ms
    return y


def _predict(model: Any, x: list[float]) -> tuple[float, float, float]:
    """Per-outcome probabilities from the pipeline's model (one score for all if it has no heads)."""
    predict = getattr(model, "predict", None)
    if predict is not None:
        p = predict(x)
        if isinstance(p, Mapping):
            return p.get("complaint", 0.0), p.get("detractor", 0.0), p.get("churn", 0.0)
    s = model.score(x)
    return s, s, s


def _top_reason(model: Any, st: Any, x: list[float]) -> tuple[str, str]:
    """``(code, text)`` of the model's top reason for ``x`` (what the list shows first)."""
    from monitor.scoring.features import FEATURES, describe

    contrib = model.contributions(x)[-1]
    i = max(range(len(contrib)), key=lambda k: contrib[k])
    if contrib[i] <= 0:
        return "", ""
    code, text, _ = describe(FEATURES[i], st, x[i])
    return code, text


def _names_driver(driver: str, code: str, text: str) -> bool:
    if code in DRIVER_REASONS.get(driver, ()):
        return True
    if code in ("worst_moment", "recent_moments"):
        return any(w in text.lower() for w in DRIVER_WORDS.get(driver, ()))
    return False


class _Collector:
    """``on_instant`` of a replay: every active subscriber's snapshot at each list instant."""

    def __init__(self, truth: dict[str, Any], instants: list[int], *, reasons: bool,
                 zero_model: Any = None) -> None:
        self.truth = truth
        #: the learned-from-zero model, scored on the same snapshots (its rows under ``zero``)
        self.zero_model = zero_model
        self.rows: dict[int, dict[str, np.ndarray]] = {}
        self.reasons = reasons
        # outcomes with a known driver: (subscriber, time, driver, outcome) -> latest top reason before it
        self.pending: dict[int, list[tuple[int, str, str]]] = {}
        if reasons:
            for o in HORIZONS_H:
                for s, evs in truth["drivers"][o].items():
                    for ts, drv in evs:
                        if drv != "none":
                            self.pending.setdefault(s, []).append((ts, drv, o))
        self.last_reason: dict[tuple[int, int, str], tuple[int, str, str]] = {}
        self.instants = instants
        self.model: Any = None

    def __call__(self, t: int, pipeline: Any) -> None:
        from monitor.scoring.features import feature_vector

        churned = self.truth["churned"]
        subs, xs, probs, zprobs = [], [], [], []
        zero = self.zero_model
        for core in pipeline.cores.values():
            model = self.model = core.model
            for sid, st in core.states.items():
                s = _sub_index(sid)
                c = churned.get(s)
                if (c is not None and c <= t) or getattr(st, "gone_ts", 0):
                    continue
                x = feature_vector(st, max(t, st.last_ts))
                subs.append(s)
                xs.append(x)
                probs.append(_predict(model, x))
                if zero is not None:
                    zprobs.append(_predict(zero, x))
                if self.reasons and s in self.pending:
                    for ts, drv, o in self.pending[s]:
                        if t < ts <= t + 72 * HOUR_MS:
                            code, text = _top_reason(model, st, x)
                            self.last_reason[(s, ts, o)] = (t, drv, code + "|" + text)
        order = np.argsort(np.array(subs, dtype=np.int64), kind="stable")
        self.rows[t] = {"subs": np.array(subs, dtype=np.int64)[order],
                        "x": np.array(xs, dtype=np.float32).reshape(len(subs), -1)[order],
                        "model": np.array(probs, dtype=np.float64).reshape(len(subs), 3)[order]}
        if zero is not None:
            self.rows[t]["zero"] = np.array(zprobs, dtype=np.float64).reshape(len(subs), 3)[order]


def _prior_scores(x: np.ndarray) -> np.ndarray:
    """Per-outcome probabilities of an untrained model (the rule-based prior alone)."""
    from monitor.scoring.core import RiskModel

    m = RiskModel()
    return np.array([_predict(m, row) for row in x.tolist()], dtype=np.float64).reshape(len(x), 3)


def _zero_prior_model(settings: Any) -> Any:
    """The learned-from-zero ablation's model: the pipeline's settings, zero starting weights."""
    from monitor.scoring.core import RiskModel, model_options

    return RiskModel(use_prior=False, **model_options(settings))


def _teaching_both(settings: Any, zero: Any) -> Any:
    """The worker's cores (:func:`monitor.pipeline.default_core_factory`), whose matured labels
    teach the pipeline's model and, in the same order, the learned-from-zero model ``zero``.

    Labels do not depend on the model (a snapshot is the feature state, its outcome what followed),
    so ``zero`` ends every instant exactly where a second replay with zero-weight cores would, at
    half the cost: one pass over the streams instead of two."""
    from monitor.pipeline import default_core_factory

    make_main = default_core_factory(settings)

    def make(partition: int, state_loader: Any) -> Any:
        core = make_main(partition, state_loader)
        model = core.model

        def sink(rec: Any) -> None:
            model.learn(rec)   # what the core does without a sink
            zero.learn(rec)

        core.label_sink = sink
        return core

    return make


def replay_world(sim_dir: str | Path, *, settings: Any = None, partitions: int = 4, zero_prior: bool = True,
                 every_h: int = 1, truth: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay one world and collect, at every list instant, the rows of each system (see module doc).

    One pass: with ``zero_prior`` the learned-from-zero model learns the same matured labels as the
    pipeline's model, in the same order, and scores the same snapshots (:func:`_teaching_both`)."""
    from monitor import replay as replay_driver

    truth = truth or load_truth(sim_dir)
    w = truth["world"]
    if truth["oracle"] is None:
        raise MonitorError(f"{sim_dir}: no ground_truth/oracle.npz (the run was too large or had no evaluated period)")
    oracle_ts = [int(t) for t in truth["oracle"]["ts_ms"]]
    off = w.get("utc_offset_h", 0.0)
    instants = [t for j, t in enumerate(oracle_ts) if j % every_h == 0 or abs(_local_hour(t, off) - 9.0) < 1e-9]
    t0 = time.perf_counter()
    zero = _zero_prior_model(settings) if zero_prior else None
    main = _Collector(truth, instants, reasons=True, zero_model=zero)
    result = replay_driver.run(sim_dir, settings=settings, partitions=partitions, instants=instants,
                               on_instant=main, hotspots=False,
                               make_core=_teaching_both(settings, zero) if zero is not None else None)
    out = {"truth": truth, "instants": instants, "rows": main.rows, "reasons": main.last_reason,
           "labels_learned": _labels_learned(main.model), "events": result.events, "dead_letters": result.dead_letters, "replay_s": round(time.perf_counter() - t0, 1)}
    if zero is not None:
        out["zero_prior_rows"] = {t: {"subs": r["subs"], "model": r["zero"]} for t, r in main.rows.items()}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _labels_learned(model: Any) -> dict[str, Any]:
    """How many matured labels (and positives per outcome) the pipeline's model had learned by the
    last instant: what learning had to go on."""
    if model is None:
        return {}
    return {"labels": int(getattr(model, "n_labels", 0)),
            "positives": {o: int(v) for o, v in getattr(model, "n_positive", {}).items()}}


def _local_hour(t: int, utc_offset_h: float) -> float:
    return ((t / HOUR_MS) + utc_offset_h) % 24


def grade_world(data: dict[str, Any], *, list_hour: float = 9.0) -> dict[str, Any]:
    """Metrics of every system on one replayed world (:func:`replay_world`)."""
    truth = data["truth"]
    w = truth["world"]
    world_end = w["world_end_ms"]
    oracle = truth["oracle"]
    oracle_ts = {int(t): j for j, t in enumerate(oracle["ts_ms"])}
    instants = [t for t in data["instants"] if t in data["rows"]]
    daily = [t for t in instants if abs(_local_hour(t, w.get("utc_offset_h", 0.0)) - list_hour) < 1e-9]
    rows = data["rows"]
    zrows = data.get("zero_prior_rows")
    half = instants[0] + (instants[-1] - instants[0]) / 2 if instants else 0
    out: dict[str, Any] = {"seed": w["seed"], "events": data["events"], "replay_s": data["replay_s"],
                           "daily_instants": len(daily), "hourly_instants": len(instants),
                           "labels_learned": data.get("labels_learned", {}), "outcomes": {}}
    # prior scores and the snapshot matrices once per instant
    prior = {t: _prior_scores(rows[t]["x"]) for t in instants}
    for oi, o in enumerate(("complaint", "detractor", "churn")):
        for h in HORIZONS_H[o]:
            name = outcome_name(o, h)
            h_ms = h * HOUR_MS
            valid = [t for t in instants if t + h_ms <= world_end]
            if not valid:
                continue
            per_t: dict[int, dict[str, Any]] = {}
            for t in valid:
                r = rows[t]
                subs = r["subs"]
                y = _labels(truth["times"][o], subs, t, h_ms)
                sc = {"model": r["model"][:, oi], "prior": prior[t][:, oi],
                      "oracle": oracle[f"{o}_{h}h"][oracle_ts[t]][subs].astype(np.float64)}
                if f"blind_{o}_{h}h" in oracle:
                    # the world's hazard without the person's hidden side (World.oracle(person=False))
                    sc["oracle_blind"] = oracle[f"blind_{o}_{h}h"][oracle_ts[t]][subs].astype(np.float64)
                if zrows is not None and t in zrows:
                    z = zrows[t]
                    # same rows: the zero-prior replay saw the same subscribers
                    zmap = dict(zip(z["subs"].tolist(), z["model"][:, oi].tolist()))
                    sc["zero_prior"] = np.array([zmap.get(s, 0.0) for s in subs.tolist()])
                per_t[t] = {"y": y, "scores": sc, "x": r["x"], "subs": subs}
            _batch_and_single_feature(per_t, valid, half)
            res = {"base_rate": _mean([per_t[t]["y"].mean() for t in valid if t in daily] or
                                      [per_t[t]["y"].mean() for t in valid])}
            systems: dict[str, Any] = {}
            names = sorted({k for t in valid for k in per_t[t]["scores"]})
            for sysname in names:
                systems[sysname] = _grade_system(per_t, valid, daily, sysname, half)
            if o == "detractor":
                res["calibration_surveyed"] = _surveyed_calibration(per_t, valid, truth["surveys"], h_ms)
            res["lead"] = {}
            res["systems"] = systems
            # each system's reliability bins (from _grade_system), kept at the headline outcomes' level
            reliability = {s: systems[s].pop("reliability") for s in RELIABILITY_SYSTEMS
                           if "reliability" in systems.get(s, {})}
            if name in HEADLINE:
                res["lift_curve"] = {"budgets": list(CURVE_BUDGETS),
                                     "systems": {s: _lift_curve(per_t, [t for t in valid if t in daily] or valid, s)
                                                 for s in names}}
                res["reliability"] = reliability
            feat = per_t[valid[-1]].get("best_feature")
            if feat is not None:
                res["best_single_feature_name"] = feat
            out["outcomes"][name] = res
    # median lead time from first listing (top 5 % at an hourly instant) to the outcome, per headline
    for name in HEADLINE:
        if name in out["outcomes"]:
            o = name.split("_")[0]
            h_ms = (168 if name.endswith("7d") else int(name.split("_")[1][:-1])) * HOUR_MS
            for sysname, sysres in out["outcomes"][name]["systems"].items():
                lead = _median_lead(data, truth, o, h_ms, sysname, prior)
                sysres["median_lead_h"] = lead["median_h"]
                sysres["listed_before_share"] = lead["listed_share"]
    out["reasons"] = _fidelity(data, daily_only=False)
    last = daily[-1] if daily else (instants[-1] if instants else None)
    n_last = len(rows[last]["subs"]) if last is not None else 0
    k = max(1, int(round(n_last * BUDGETS[0]))) if n_last else 0
    # the list graded at the last 09:00 instant: the top 1 % of the subscribers scored
    out["list"] = {"subscribers": n_last, "listed": k, "budget": k, "budget_share": BUDGETS[0]}
    return out


def _mean(v: list[float]) -> float:
    v = [x for x in v if x == x]
    return float(np.mean(v)) if v else float("nan")


def _lift_curve(per_t: dict[int, dict[str, Any]], ts: list[int], sysname: str) -> list[float | None]:
    """Lift (precision over the base rate) of ``sysname`` at each of :data:`CURVE_BUDGETS`, over the
    instants ``ts`` where it scored."""
    ts = [t for t in ts if sysname in per_t[t]["scores"]]
    pos = sum(int(per_t[t]["y"].sum()) for t in ts)
    n = sum(len(per_t[t]["y"]) for t in ts)
    out: list[float | None] = []
    for b in CURVE_BUDGETS:
        tp = k = 0
        for t in ts:
            top = _top(per_t[t]["scores"][sysname], b)
            tp += int(per_t[t]["y"][top].sum())
            k += len(top)
        out.append(_r((tp / k) / (pos / n), 3) if k and pos else None)
    return out


def _batch_and_single_feature(per_t: dict[int, dict[str, Any]], valid: list[int], half: float) -> None:
    """Add ``batch_reference``, ``batch_logistic`` and ``best_single_feature`` scores to the
    second-half instants."""
    first = [t for t in valid if t <= half]
    second = [t for t in valid if t > half]
    if not first or not second:
        return
    x1 = np.concatenate([per_t[t]["x"] for t in first])
    y1 = np.concatenate([per_t[t]["y"] for t in first])
    # one feature, signed on the first half (within-instant pairs)
    best, best_auc, best_sign = None, -1.0, 1.0
    for f in range(x1.shape[1]):
        c = p = 0.0
        for t in first:
            cc, pp = _auc_counts(per_t[t]["y"], per_t[t]["x"][:, f])
            c, p = c + cc, p + pp
        if not p:
            continue
        a = c / p
        sign = 1.0 if a >= 0.5 else -1.0
        if max(a, 1 - a) > best_auc:
            best, best_auc, best_sign = f, max(a, 1 - a), sign
    try:
        from monitor.scoring.features import FEATURES
        fname = FEATURES[best] if best is not None else None
    except (ImportError, IndexError):
        fname = str(best)
    # the batch references are cross-fitted over subscribers: each fold is fitted on the first half's
    # rows of one half of the subscribers and scores the second half's rows of the *other* half. A
    # subscriber's outcome in the second half also labels their first-half rows (the 72 h / 7 d
    # horizons straddle the split), so a model fitted on the same subscribers recognises them by
    # their slow features and scores the outcome it was shown: on tuning worlds 11-13 HGB fitted on
    # the same subscribers ranked complaints at 0.74-0.77, on others at 0.49-0.59 (docs/MODEL.md)
    fold1 = np.concatenate([per_t[t]["subs"] for t in first]) % 2
    fitted: dict[str, list[Any]] = {"batch_reference": [], "batch_logistic": []}
    from threadpoolctl import threadpool_limits   # scikit-learn's own dependency

    # One OpenMP thread: HGB's threads fought the replay and everything else on a busy 2-core
    # machine (a small world's grading took > 300 s, 11.5 s with one thread), and the figures
    # should not depend on how many cores the machine that made them had.
    with threadpool_limits(limits=1):
        for k in (0, 1):
            xk, yk = x1[fold1 == k], y1[fold1 == k]
            if 5 <= yk.sum() < len(yk):
                fitted["batch_reference"].append(_hgb().fit(xk, yk))
                fitted["batch_logistic"].append(_logistic().fit(xk, yk))
    for t in second:
        if best is not None:
            per_t[t]["scores"]["best_single_feature"] = best_sign * per_t[t]["x"][:, best].astype(np.float64)
            per_t[t]["best_feature"] = fname
        fold = per_t[t]["subs"] % 2
        for name, models in fitted.items():
            if len(models) == 2:   # subscribers of fold k are scored by the model fitted on the other fold
                s = np.empty(len(fold))
                for k, m in enumerate(models):
                    rows = fold == 1 - k
                    if rows.any():
                        s[rows] = m.predict_proba(per_t[t]["x"][rows])[:, 1]
                per_t[t]["scores"][name] = s


def _hgb() -> Any:
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError as err:   # pragma: no cover - depends on the environment
        raise MonitorError("the batch reference needs scikit-learn: pip install 'satmon[dev]' "
                           "(or pass --no-batch-reference)") from err
    return HistGradientBoostingClassifier(random_state=0)


def _logistic() -> Any:
    """Batch logistic regression, scikit-learn's defaults (``C=1``), on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _grade_system(per_t: dict[int, dict[str, Any]], valid: list[int], daily: list[int], sysname: str,
                  half: float) -> dict[str, Any]:
    """One system's metrics: daily list instants (headline), hourly ROC-AUC, and the second half
    (the rows the batch reference is scored on)."""
    def block(ts: list[int]) -> dict[str, Any]:
        ts = [t for t in ts if sysname in per_t[t]["scores"]]
        if not ts:
            return {}
        c = p = 0.0
        ap, apw = 0.0, 0.0
        res: dict[str, Any] = {}
        tp = {b: 0 for b in BUDGETS}
        k = {b: 0 for b in BUDGETS}
        pos = 0
        n = 0
        for t in ts:
            y, s = per_t[t]["y"], per_t[t]["scores"][sysname]
            cc, pp = _auc_counts(y, s)
            c, p = c + cc, p + pp
            npos = int(y.sum())
            pos += npos
            n += len(y)
            if npos:
                ap += _average_precision(y, s) * npos
                apw += npos
            for b in BUDGETS:
                top = _top(s, b)
                tp[b] += int(y[top].sum())
                k[b] += len(top)
        base = pos / n if n else float("nan")
        res["roc_auc"] = _r(c / p) if p else None
        res["pr_auc"] = _r(ap / apw) if apw else None
        for b in BUDGETS:
            tag = f"{round(b * 100)}pct"
            prec = tp[b] / k[b] if k[b] else float("nan")
            res[f"precision_at_{tag}"] = _r(prec)
            res[f"recall_at_{tag}"] = _r(tp[b] / pos) if pos else None
            res[f"lift_at_{tag}"] = _r(prec / base) if base else None
        res["positives"] = pos
        res["rows"] = n
        return res

    head = block(daily) or block(valid)
    hourly = block(valid)
    second = block([t for t in valid if t > half])
    out = dict(head)
    out["roc_auc_hourly"] = hourly.get("roc_auc")
    out["roc_auc_second_half"] = second.get("roc_auc")
    out["lift_at_1pct_second_half"] = second.get("lift_at_1pct")
    # calibration of the probabilities (hourly rows)
    ys = np.concatenate([per_t[t]["y"] for t in valid if sysname in per_t[t]["scores"]])
    ss = np.concatenate([per_t[t]["scores"][sysname] for t in valid if sysname in per_t[t]["scores"]])
    if sysname in ("model", "prior", "zero_prior", "oracle", "oracle_blind", "batch_reference", "batch_logistic") and len(ss):
        out["mean_probability"] = _r(float(ss.mean()))
        out["calibration_error"] = _r(_calibration_error(ys, ss))
        if sysname in RELIABILITY_SYSTEMS:
            # the reliability curve: ``[mean probability, observed rate]`` of the same bins
            # (grade_world moves it to the outcome's ``reliability``)
            out["reliability"] = [[_r(mean_p, 5), _r(rate, 5)] for _n, mean_p, rate in _equal_count_bins(ys, ss)]
    return out


#: the systems whose probabilities get a reliability curve (the others' are rankings, or a reference)
RELIABILITY_SYSTEMS = ("oracle", "model", "prior")


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or v != v else round(float(v), nd)


def _surveyed_calibration(per_t: dict[int, dict[str, Any]], valid: list[int], surveys: dict[int, list[int]],
                          h_ms: int) -> dict[str, Any]:
    """Calibration of the detractor probability among subscribers who answered a survey in the horizon."""
    out: dict[str, Any] = {}
    for sysname in ("model", "prior", "oracle"):
        ys, ps = [], []
        for t in valid:
            r = per_t[t]
            if sysname not in r["scores"]:
                continue
            answered = _labels(surveys, r["subs"], t, h_ms).astype(bool)
            ys.append(r["y"][answered])
            ps.append(r["scores"][sysname][answered])
        if ys:
            y, p = np.concatenate(ys), np.concatenate(ps)
            out[sysname] = {"rows": int(len(y)), "observed": _r(float(y.mean())) if len(y) else None,
                            "mean_probability": _r(float(p.mean())) if len(p) else None,
                            "calibration_error": _r(_calibration_error(y, p))}
    return out


def _median_lead(data: dict[str, Any], truth: dict[str, Any], outcome: str, h_ms: int, sysname: str,
                 prior: dict[int, np.ndarray]) -> dict[str, Any]:
    """Hours from a subscriber's first listing (top 5 % at an hourly instant, within the horizon
    before the outcome) to their first outcome in the evaluated period."""
    instants = data["instants"]
    if not instants:
        return {"median_h": None, "listed_share": None}
    oi = ("complaint", "detractor", "churn").index(outcome)
    oracle = truth["oracle"]
    oracle_ts = {int(t): j for j, t in enumerate(oracle["ts_ms"])}
    listed: dict[int, list[int]] = {}
    for t in instants:
        r = data["rows"][t]
        if sysname == "model":
            s = r["model"][:, oi]
        elif sysname == "prior":
            s = prior[t][:, oi]
        elif sysname in ("oracle", "oracle_blind"):
            h = 168 if h_ms >= 168 * HOUR_MS else h_ms // HOUR_MS
            s = oracle[f"{'blind_' if sysname == 'oracle_blind' else ''}{outcome}_{h}h"][oracle_ts[t]][r["subs"]]
        elif sysname == "zero_prior" and data.get("zero_prior_rows"):
            z = data["zero_prior_rows"][t]
            zmap = dict(zip(z["subs"].tolist(), z["model"][:, oi].tolist()))
            s = np.array([zmap.get(x, 0.0) for x in r["subs"].tolist()])
        else:
            return {"median_h": None, "listed_share": None}
        for sub in r["subs"][_top(s, 0.05)].tolist():
            listed.setdefault(sub, []).append(t)
    leads, total = [], 0
    start, end = instants[0], instants[-1]
    for sub, ts in truth["times"][outcome].items():
        first = next((x for x in ts if start < x <= end), None)
        if first is None:
            continue
        total += 1
        at = [t for t in listed.get(sub, ()) if first - h_ms <= t < first]
        if at:
            leads.append((first - min(at)) / HOUR_MS)
    return {"median_h": _r(float(np.median(leads)), 1) if leads else None,
            "listed_share": _r(len(leads) / total) if total else None}


def _fidelity(data: dict[str, Any], *, daily_only: bool) -> dict[str, Any]:
    """How often the model's top reason, at the last instant before an outcome with a known driver,
    names that driver."""
    hits = n = 0
    per_outcome: dict[str, list[int]] = {}
    for (_s, _ts, o), (_t, drv, reason) in data["reasons"].items():
        code, _, text = reason.partition("|")
        ok = _names_driver(drv, code, text)
        hits += ok
        n += 1
        c = per_outcome.setdefault(o, [0, 0])
        c[0] += ok
        c[1] += 1
    return {"fidelity_top1": _r(hits / n) if n else None, "outcomes_with_driver": n,
            "per_outcome": {o: _r(h / m) if m else None for o, (h, m) in per_outcome.items()}}


# --- several worlds -----------------------------------------------------------------------------


def _bootstrap(values: list[float], *, seed: int = 0, rounds: int = 2000) -> list[float] | None:
    v = np.array([x for x in values if x is not None and x == x], dtype=np.float64)
    if not len(v):
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (rounds, len(v)))].mean(axis=1)
    return [_r(float(np.quantile(means, 0.025))), _r(float(np.quantile(means, 0.975)))]


def combine(worlds: list[dict[str, Any]]) -> dict[str, Any]:
    """The report over worlds: each figure is the mean over worlds, with a 95 % bootstrap interval
    over worlds for ROC-AUC and for the model's margin over the prior and the batch reference."""
    out: dict[str, Any] = {"worlds": [w["seed"] for w in worlds], "outcomes": {}}
    names = [n for n in worlds[0]["outcomes"]] if worlds else []
    for name in names:
        per = [w["outcomes"].get(name) for w in worlds if name in w["outcomes"]]
        systems: dict[str, Any] = {}
        sysnames = sorted({s for p in per for s in p["systems"]})
        for s in sysnames:
            vals = [p["systems"][s] for p in per if s in p["systems"]]
            agg: dict[str, Any] = {}
            for key in vals[0]:
                xs = [v.get(key) for v in vals]
                nums = [x for x in xs if isinstance(x, (int, float)) and x == x]
                if nums:
                    agg[key] = _r(float(np.mean(nums)))
            agg["roc_auc_ci95"] = _bootstrap([v.get("roc_auc") for v in vals])
            systems[s] = agg
        res: dict[str, Any] = {"base_rate": _r(float(np.mean([p["base_rate"] for p in per]))), "systems": systems}
        diffs: dict[str, Any] = {}
        for a, b, key in (("model", "prior", "roc_auc"), ("model", "zero_prior", "roc_auc"),
                          ("model", "batch_reference", "roc_auc_second_half"),
                          ("model", "batch_logistic", "roc_auc_second_half"),
                          ("model", "oracle", "roc_auc"), ("model", "oracle_blind", "roc_auc")):
            d = [p["systems"][a].get(key) - p["systems"][b].get(key) for p in per
                 if a in p["systems"] and b in p["systems"] and p["systems"][a].get(key) is not None
                 and p["systems"][b].get(key) is not None]
            if d:
                diffs[f"{a}_minus_{b}"] = {"metric": key, "mean": _r(float(np.mean(d))), "ci95": _bootstrap(d)}
        # share of the oracle's margin over chance the model captures
        m = systems.get("model", {}).get("roc_auc")
        orc = systems.get("oracle", {}).get("roc_auc")
        if m is not None and orc is not None and orc > 0.5:
            res["model_share_of_oracle_margin"] = _r((m - 0.5) / (orc - 0.5))
            # the ceiling of that share for any model that sees a subscriber only through the streams
            blind = systems.get("oracle_blind", {}).get("roc_auc")
            if blind is not None:
                res["blind_oracle_share_of_oracle_margin"] = _r((blind - 0.5) / (orc - 0.5))
        mb = systems.get("model", {}).get("roc_auc_second_half")
        bb = systems.get("batch_reference", {}).get("roc_auc_second_half")
        if mb is not None and bb:
            res["model_over_batch_reference"] = _r(mb / bb)
        res["differences"] = diffs
        curves = [p["lift_curve"] for p in per if "lift_curve" in p]
        if curves:
            res["lift_curve"] = {"budgets": curves[0]["budgets"], "systems": {
                s: [_r(float(np.mean(v)), 3) if v else None
                    for v in ([c["systems"][s][i] for c in curves if s in c["systems"] and c["systems"][s][i] is not None]
                              for i in range(len(curves[0]["budgets"])))]
                for s in sorted({s for c in curves for s in c["systems"]})}}
        rel = [p["reliability"] for p in per if "reliability" in p]
        if rel:
            # bin by bin, the mean over worlds (each world's bins hold equal counts)
            res["reliability"] = {s: [[_r(float(np.mean([r[s][i][k] for r in rel])), 5) for k in (0, 1)]
                                      for i in range(min(len(r[s]) for r in rel))]
                                  for s in rel[0] if all(s in r for r in rel)}
        for key in ("calibration_surveyed", "best_single_feature_name"):
            if key in per[0]:
                res[key] = per[0][key] if len(per) == 1 else [p.get(key) for p in per]
        out["outcomes"][name] = res
    fid = [w["reasons"] for w in worlds]
    n = sum(f["outcomes_with_driver"] for f in fid)
    hit = sum((f["fidelity_top1"] or 0) * f["outcomes_with_driver"] for f in fid)
    out["reasons"] = {"fidelity_top1": _r(hit / n) if n else None, "outcomes_with_driver": n,
                      "fidelity_top1_ci95": _bootstrap([f["fidelity_top1"] for f in fid])}
    out["list"] = worlds[-1]["list"] if worlds else {}
    out["per_world"] = [{k: w.get(k) for k in ("seed", "events", "replay_s", "daily_instants", "hourly_instants",
                                               "labels_learned")}
                        for w in worlds]
    return out


def evaluate(*sim_dirs: str | Path, settings: Any = None, partitions: int = 4, zero_prior: bool = True,
             every_h: int = 1) -> dict[str, Any]:
    """Replay each world directory and report every system on outcomes (the ``satmon evaluate --json`` shape:
    ``worlds``, ``outcomes.{name}.systems.{system}``, ``reasons.fidelity_top1``, ``list``)."""
    if not sim_dirs:
        raise MonitorError("evaluate: give at least one simulator directory")
    graded = []
    for d in sim_dirs:
        data = replay_world(d, settings=settings, partitions=partitions, zero_prior=zero_prior, every_h=every_h)
        graded.append(grade_world(data))
    return combine(graded)


def oracle_only(sim_dir: str | Path, *, list_hour: float = 9.0) -> dict[str, Any]:
    """The oracle's ROC-AUC per outcome at the daily list instants, over every subscriber still
    with the operator -- no replay (checks a world's noise level before any model sees it)."""
    truth = load_truth(sim_dir)
    w, oracle = truth["world"], truth["oracle"]
    if oracle is None:
        raise MonitorError(f"{sim_dir}: no ground_truth/oracle.npz")
    out: dict[str, Any] = {"seed": w["seed"]}
    ts_all = [int(t) for t in oracle["ts_ms"]]
    for o in ("complaint", "detractor", "churn"):
        for h in HORIZONS_H[o]:
            c = p = pos = n = cb = pb = 0.0
            blind = oracle.get(f"blind_{o}_{h}h")
            for j, t in enumerate(ts_all):
                if abs(_local_hour(t, w.get("utc_offset_h", 0.0)) - list_hour) > 1e-9 or t + h * HOUR_MS > w["world_end_ms"]:
                    continue
                subs = np.array([s for s in range(oracle[f"{o}_{h}h"].shape[1])
                                 if not (s in truth["churned"] and truth["churned"][s] <= t)])
                y = _labels(truth["times"][o], subs, t, h * HOUR_MS)
                cc, pp = _auc_counts(y, oracle[f"{o}_{h}h"][j][subs])
                c, p, pos, n = c + cc, p + pp, pos + y.sum(), n + len(y)
                if blind is not None:
                    cc, pp = _auc_counts(y, blind[j][subs])
                    cb, pb = cb + cc, pb + pp
            if p:
                out[outcome_name(o, h)] = {"roc_auc": _r(c / p), "base_rate": _r(pos / n), "positives": int(pos)}
                if pb:
                    out[outcome_name(o, h)]["blind_roc_auc"] = _r(cb / pb)
    return out


#: systems drawn by :func:`lift_curve_svg`, with their colours (Okabe-Ito: distinguishable in colour blindness)
CURVE_STYLE: dict[str, tuple[str, str]] = {
    "oracle": ("#000000", "oracle (true hazard)"), "oracle_blind": ("#999999", "person-blind oracle"),
    "batch_reference": ("#E69F00", "batch HistGradientBoosting"),
    "batch_logistic": ("#56B4E9", "batch logistic"), "model": ("#D55E00", "model (online)"),
    "prior": ("#009E73", "prior only"), "zero_prior": ("#CC79A7", "learned from zero"),
}


def _svg_start(width: float, height: float, title: str) -> list[str]:
    """The opening of a picture of :func:`reliability_svg` or :func:`lift_curve_svg`: white, titled."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{title}</text>')
    return out


def _svg_panel(out: list[str], x0: float, y0: float, pw: float, ph: float, name: str, xlabel: str,
               ylabel: str) -> None:
    """A panel's frame: its name above, the axis titles below and to the left."""
    out.append(f'<text x="{x0 + pw / 2}" y="{y0 - 12}" text-anchor="middle" font-size="12">{name}</text>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    out.append(f'<text x="{x0 + pw / 2}" y="{y0 + ph + 32}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text x="{x0 - 36}" y="{y0 + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 {x0 - 36} {y0 + ph / 2})">{ylabel}</text>')


def _svg_line(out: list[str], colour: str, pts: list[tuple[float, float]]) -> None:
    if pts:
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                   + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')


def _svg_key(out: list[str], x: float, y: float, colour: str, label: str) -> None:
    out.append(f'<line x1="{x}" x2="{x + 22}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2"/>')
    out.append(f'<text x="{x + 28}" y="{y + 4}">{label}</text>')


def reliability_svg(result: Mapping[str, Any], outcomes: tuple[str, ...] = HEADLINE, *, title: str = "") -> str:
    """An SVG of the reliability curves in an :func:`evaluate` result: one panel per outcome, the
    observed rate against the mean probability of equal-count bins (both on log scales), one line
    per system of :data:`RELIABILITY_SYSTEMS`, the diagonal where a calibrated system lies.

    >>> r = {"outcomes": {"churn_7d": {"reliability": {"model": [[0.01, 0.012], [0.1, 0.09]],
    ...      "oracle": [[0.005, 0.004], [0.2, 0.21]]}}}}
    >>> svg = reliability_svg(r, ("churn_7d",))
    >>> svg.startswith("<svg") and svg.count("<polyline") == 2
    True
    """
    import math

    panels = [(o, result["outcomes"][o]["reliability"]) for o in outcomes
              if "reliability" in result.get("outcomes", {}).get(o, {})]
    pw, ph, ml, mr, mt, mb = 260, 260, 52, 16, 40, 46
    lo, hi = -4.0, 0.0   # log10 of the probabilities drawn: 0.0001 to 1
    width = max(1, len(panels)) * (pw + ml + mr)
    top = 24 if title else 0
    height = top + mt + ph + mb + 28
    out = _svg_start(width, height, title)
    for i, (name, systems) in enumerate(panels):
        x0, y0 = i * (pw + ml + mr) + ml, top + mt

        def px(v: float) -> float:
            return x0 + (min(max(math.log10(max(v, 1e-9)), lo), hi) - lo) / (hi - lo) * pw

        def py(v: float) -> float:
            return y0 + ph - (min(max(math.log10(max(v, 1e-9)), lo), hi) - lo) / (hi - lo) * ph

        _svg_panel(out, x0, y0, pw, ph, name, "mean probability of the bin", "observed rate")
        for e in range(int(lo), int(hi) + 1):
            v = 10.0 ** e
            out.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
            out.append(f'<text x="{px(v):.1f}" y="{y0 + ph + 15}" text-anchor="middle">{v:g}</text>')
        out.append(f'<line x1="{px(10 ** lo):.1f}" y1="{py(10 ** lo):.1f}" x2="{px(1):.1f}" y2="{py(1):.1f}" '
                   f'stroke="#888" stroke-dasharray="4 3"/>')
        for s in RELIABILITY_SYSTEMS:
            _svg_line(out, CURVE_STYLE[s][0],
                      [(px(p), py(y)) for p, y in systems.get(s, []) if p is not None and y is not None])
    for j, s in enumerate(RELIABILITY_SYSTEMS):
        _svg_key(out, ml + j * 200, top + mt + ph + mb + 14, *CURVE_STYLE[s])
    out.append("</svg>")
    return "\n".join(out) + "\n"


def lift_curve_svg(result: Mapping[str, Any], outcomes: tuple[str, ...] = ("complaint_72h", "churn_7d"),
                   *, title: str = "") -> str:
    """An SVG of the lift curves in an :func:`evaluate` result: one panel per outcome, lift against
    the share of subscribers listed (log scale), one line per system of :data:`CURVE_STYLE`.

    >>> r = {"outcomes": {"complaint_72h": {"lift_curve": {"budgets": [0.01, 0.1],
    ...      "systems": {"model": [5.0, 2.0], "oracle": [9.0, 3.0]}}}}}
    >>> svg = lift_curve_svg(r, ("complaint_72h",))
    >>> svg.startswith("<svg") and svg.count("<polyline") == 2
    True
    """
    import math

    panels = [(o, result["outcomes"][o]["lift_curve"]) for o in outcomes
              if "lift_curve" in result.get("outcomes", {}).get(o, {})]
    pw, ph, ml, mr, mt, mb = 360, 260, 52, 16, 40, 46
    legend_h = 18 * ((len(CURVE_STYLE) + 2) // 3) + 10
    width, height = len(panels) * (pw + ml + mr), ph + mt + mb + legend_h + (24 if title else 0)
    top = 24 if title else 0
    out = _svg_start(width, height, title)
    for i, (name, curve) in enumerate(panels):
        budgets = curve["budgets"]
        lx0, lx1 = math.log10(budgets[0]), math.log10(budgets[-1])
        ymax = max([v for s in CURVE_STYLE for v in curve["systems"].get(s, []) if v is not None] + [1.0])
        ymax = math.ceil(ymax)
        x0, y0 = i * (pw + ml + mr) + ml, top + mt

        def px(b: float) -> float:
            return x0 + (math.log10(b) - lx0) / (lx1 - lx0) * pw

        def py(v: float) -> float:
            return y0 + ph - v / ymax * ph

        _svg_panel(out, x0, y0, pw, ph, name, "share of subscribers listed", "lift (precision / base rate)")
        step = 1 if ymax <= 10 else 2 if ymax <= 20 else 5
        for v in range(0, ymax + 1, step):
            out.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v}</text>')
        for b in budgets:
            out.append(f'<text x="{px(b):.1f}" y="{y0 + ph + 15}" text-anchor="middle">{b * 100:g}%</text>')
        out.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{py(1):.1f}" y2="{py(1):.1f}" stroke="#888" '
                   f'stroke-dasharray="4 3"/>')
        for s, (colour, _label) in CURVE_STYLE.items():
            _svg_line(out, colour, [(px(b), py(v)) for b, v in zip(budgets, curve["systems"].get(s, [])) if v is not None])
    ly = top + mt + ph + mb
    for j, (_s, (colour, label)) in enumerate(CURVE_STYLE.items()):
        lx = ml + (j % 3) * 230
        yy = ly + 18 * (j // 3)
        _svg_key(out, lx, yy, colour, label)
    out.append("</svg>")
    return "\n".join(out) + "\n"
