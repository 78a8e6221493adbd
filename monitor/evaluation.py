"""Offline replay of simulator output through the risk core, and its evaluation against ground truth.

Replay order: the three input files are decoded (invalid lines counted and skipped, as the worker
dead-letters them), merged by event time (stable), and split by Kafka's default partitioner
(murmur2 of the subscriber id) over ``partitions`` :class:`~monitor.core.PartitionCore` objects.

Evaluation: see :func:`evaluate`.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from monitor.core import HOUR_MS, LabelJoin, PartitionCore
from monitor.errors import InvalidEventError, MonitorError
from monitor.events import INPUT_TOPICS, RiskScore, decode


def partition_of(subscriber_id: str, partitions: int) -> int:
    """Kafka's default partition for a key (murmur2, as aiokafka and the Java client do)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(subscriber_id.encode()) & 0x7FFFFFFF) % partitions


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


def replay(events: list[Any], *, partitions: int = 4, settings: Any = None,
           on_label: Callable[[LabelJoin], None] | None = None) -> Iterator[RiskScore]:
    """Run ``events`` through per-partition cores; yield every emitted score in order (``on_label``
    sees every label the cores learn)."""
    cores = [PartitionCore(p, settings=settings, clock_ms=lambda: 0) for p in range(partitions)]
    for core in cores:
        core.on_label = on_label
    core_of = _router(cores)
    for event in events:
        score = core_of(event.subscriber_id).process(event)
        if score is not None:
            yield score


def _router(cores: list[PartitionCore]) -> Callable[[str], PartitionCore]:
    """``subscriber_id -> core`` by Kafka's default partitioner, cached per subscriber."""
    cache: dict[str, PartitionCore] = {}
    n = len(cores)

    def core_of(sid: str) -> PartitionCore:
        core = cache.get(sid)
        if core is None:
            core = cache[sid] = cores[partition_of(sid, n)]
        return core

    return core_of


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    # average ranks of ties
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = sums[inv] / counts[inv]
    pos = y.sum()
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(-s, kind="mergesort")
    yy = y[order]
    tp = np.cumsum(yy)
    precision = tp / np.arange(1, len(yy) + 1)
    return float((precision * yy).sum() / max(1, yy.sum()))


def _ranking(y: np.ndarray, s: np.ndarray, top_share: float) -> dict[str, Any]:
    k = max(1, int(len(s) * top_share))
    top = np.argsort(-s, kind="mergesort")[:k]
    return {"rows": int(len(y)), "positives": int(y.sum()),
            "base_rate": round(float(y.mean()), 4) if len(y) else None,
            "roc_auc": round(_auc(y, s), 4), "pr_auc": round(_average_precision(y, s), 4),
            f"precision_at_top_{round(top_share * 100)}pct": round(float(y[top].mean()), 4) if len(y) else None,
            # the best any ranking could do: top-k cannot hold more positives than there are
            f"precision_at_top_{round(top_share * 100)}pct_ceiling": round(min(1.0, float(y.sum()) / k), 4)}


def _calibration_error(p_true: np.ndarray, s: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |mean score - mean truth| per score decile, weighted by the
    decile's share; the truth is known probabilities or 0/1 outcomes."""
    idx = np.minimum((s * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.sum() / len(s) * abs(s[m].mean() - p_true[m].mean())
    return float(err)


def evaluate(sim_dir: str | Path, *, partitions: int = 4, settings: Any = None, top_share: float = 0.05) -> dict[str, Any]:
    """Replay ``sim_dir`` through the risk core and score it against the simulator's ground truth.

    At each evaluation instant ``t`` every subscriber seen so far is scored *as of t* (the core's
    current state and model, what the API would answer then). Two truths:

    * ``satisfaction`` (primary, when ``ground_truth/satisfaction.npz`` exists): the simulator's
      latent state -- positive when the subscriber would answer a survey at ``t`` as a detractor
      with probability >= 0.5; calibration is measured against that probability itself;
    * ``events``: positive when a complaint opening or a detractor answer follows within the
      label horizon (cut at the end of the run). Short runs have few such events, so its
      precision@top-k is bounded by its ceiling, reported next to it.

    Lead time: from a subscriber's first emitted at-risk score to their next complaint.
    """
    d = Path(sim_dir)
    labels_path = d / "ground_truth" / "labels.jsonl"
    if not labels_path.exists():
        raise MonitorError(f"{d}: no ground truth ({labels_path})")
    horizon_ms = int(getattr(settings, "label_horizon_hours", 24.0) * HOUR_MS)
    threshold = getattr(settings, "at_risk_threshold", 0.5)
    truth: dict[str, list[int]] = {}
    complaints: dict[str, list[int]] = {}
    for line in open(labels_path, "rb"):
        rec = orjson.loads(line)
        times = sorted(rec.get("complaints_ms", []) + rec.get("detractor_ms", []))
        if times:
            truth[rec["subscriber_id"]] = times
        if rec.get("complaints_ms"):
            complaints[rec["subscriber_id"]] = sorted(rec["complaints_ms"])
    sat_path = d / "ground_truth" / "satisfaction.npz"
    latent = np.load(sat_path) if sat_path.exists() else None
    t0 = time.perf_counter()
    events, invalid = read_events(d)
    t_decoded = time.perf_counter()
    if not events:
        raise MonitorError(f"{d}: no valid events")
    start, end = events[0].ts_ms, events[-1].ts_ms
    if latent is not None:
        instants = [int(t) for t in latent["ts_ms"]]
        p_latent = latent["p_detractor"].astype(np.float64)
    else:
        instants = list(range(start - start % HOUR_MS + HOUR_MS, end, HOUR_MS))
        p_latent = None
    cores = [PartitionCore(p, settings=settings, clock_ms=lambda: 0) for p in range(partitions)]
    first_at_risk: dict[str, int] = {}
    ev_y: list[int] = []
    lat_y: list[float] = []
    scores: list[float] = []
    row_instant: list[int] = []
    emitted = 0

    def score_all(j: int) -> None:
        t = instants[j]
        for core in cores:
            for sid, s in core.scores_at(t):
                scores.append(s)
                row_instant.append(j)
                times = truth.get(sid)
                pos = 0
                if times:
                    k = bisect.bisect_right(times, t)
                    pos = int(k < len(times) and times[k] <= t + horizon_ms)
                ev_y.append(pos)
                if p_latent is not None:
                    lat_y.append(p_latent[j, int(sid.rsplit("-", 1)[1])])

    j = 0
    core_of = _router(cores)
    for event in events:
        while j < len(instants) and event.ts_ms > instants[j]:
            score_all(j)
            j += 1
        sid = event.subscriber_id
        sc = core_of(sid).process(event)
        if sc is not None:
            emitted += 1
            if sc.at_risk and sid not in first_at_risk:
                first_at_risk[sid] = sc.ts_ms
    t_done = time.perf_counter()
    while j < len(instants) and instants[j] <= end:
        score_all(j)
        j += 1
    s = np.array(scores)
    leads = []
    for sid, since in first_at_risk.items():
        later = [x for x in complaints.get(sid, []) if x > since]
        if later:
            leads.append((later[0] - since) / 60_000)
    out: dict[str, Any] = {
        "sim_dir": str(d),
        "events": len(events),
        "invalid_lines": invalid,
        "scores_emitted": emitted,
        "replay_events_per_s": round(len(events) / max(1e-9, t_done - t0), 1),
        "core_events_per_s": round(len(events) / max(1e-9, t_done - t_decoded), 1),
        "instants": j,
        "labels_learned": sum(c.model.n_labels for c in cores),
        "at_risk_threshold": threshold,
        "lead_time_minutes": {"subscribers": len(leads),
                              "median": round(float(np.median(leads)), 1) if leads else None},
    }
    ev = np.array(ev_y, dtype=np.int64)
    out["events_truth"] = {**_ranking(ev, s, top_share), "horizon_hours": horizon_ms / HOUR_MS,
                           "expected_calibration_error": round(_calibration_error(ev, s), 4)}
    if p_latent is not None:
        pl = np.array(lat_y)
        # what a perfect satisfaction model (the simulator's own latent probability) scores on the
        # events truth: complaints follow sudden incidents and invisible bills, so even it is weak
        out["events_truth"]["oracle_roc_auc"] = round(_auc(ev, pl), 4)
        out["satisfaction_truth"] = {**_ranking((pl >= 0.5).astype(np.int64), s, top_share),
                                     "expected_calibration_error": round(_calibration_error(pl, s), 4)}
    # progressive: the primary truth's metrics over every instant so far, as the run unfolds
    y_primary = (np.array(lat_y) >= 0.5).astype(np.int64) if p_latent is not None else ev
    inst_of = np.array(row_instant)
    out["progressive"] = []
    for jj in range(j):
        m = inst_of <= jj
        if m.any():
            r = _ranking(y_primary[m], s[m], top_share)
            out["progressive"].append({"ts_ms": instants[jj], "rows": r["rows"], "roc_auc": r["roc_auc"],
                                       f"precision_at_top_{round(top_share * 100)}pct":
                                           r[f"precision_at_top_{round(top_share * 100)}pct"]})
    primary = out.get("satisfaction_truth", out["events_truth"])
    out["truth"] = "satisfaction" if p_latent is not None else "events"
    for key in ("roc_auc", "pr_auc", "base_rate", f"precision_at_top_{round(top_share * 100)}pct",
                "expected_calibration_error"):
        out[key] = primary[key]
    return out
