"""Offline replay of simulator output through the risk core, and its evaluation against ground truth.

Replay order: the three input files are decoded (invalid lines counted and skipped, as the worker
dead-letters them), merged by event time (stable), and split by Kafka's default partitioner
(murmur2 of the subscriber id) over ``partitions`` :class:`~monitor.core.PartitionCore` objects.

Evaluation: at every whole hour ``t`` of the run (after the first), each subscriber seen so far is
scored with the latest score emitted at or before ``t``; the label is positive if the ground truth
has a complaint opening or a detractor answer (NPS 0-6) for that subscriber in ``(t, t + horizon]``.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from monitor.core import HOUR_MS, PartitionCore
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


def replay(events: list[Any], *, partitions: int = 4, settings: Any = None) -> Iterator[RiskScore]:
    """Run ``events`` through per-partition cores; yield every emitted score in order."""
    cores = [PartitionCore(p, settings=settings, clock_ms=lambda: 0) for p in range(partitions)]
    cache: dict[str, int] = {}
    for event in events:
        sid = event.subscriber_id
        p = cache.get(sid)
        if p is None:
            p = cache[sid] = partition_of(sid, partitions)
        score = cores[p].process(event)
        if score is not None:
            yield score


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


def _ece(y: np.ndarray, s: np.ndarray, bins: int = 10) -> float:
    idx = np.minimum((s * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.sum() / len(s) * abs(s[m].mean() - y[m].mean())
    return float(err)


def evaluate(sim_dir: str | Path, *, partitions: int = 4, settings: Any = None, top_share: float = 0.05) -> dict[str, Any]:
    """Replay ``sim_dir`` and score it against its ground truth (see the module docstring)."""
    d = Path(sim_dir)
    labels_path = d / "ground_truth" / "labels.jsonl"
    if not labels_path.exists():
        raise MonitorError(f"{d}: no ground truth ({labels_path})")
    horizon_ms = int(getattr(settings, "label_horizon_hours", 72.0) * HOUR_MS)
    threshold = getattr(settings, "at_risk_threshold", 0.5)
    truth: dict[str, list[int]] = {}
    for line in open(labels_path, "rb"):
        rec = orjson.loads(line)
        times = sorted(rec.get("complaints_ms", []) + rec.get("detractor_ms", []))
        if times:
            truth[rec["subscriber_id"]] = times
    t0 = time.perf_counter()
    events, invalid = read_events(d)
    t_decoded = time.perf_counter()
    scores = list(replay(events, partitions=partitions, settings=settings))
    t_done = time.perf_counter()
    if not events:
        raise MonitorError(f"{d}: no valid events")
    start, end = events[0].ts_ms, events[-1].ts_ms
    instants = list(range(start - start % HOUR_MS + HOUR_MS, end, HOUR_MS))[0:]
    latest: dict[str, float] = {}
    first_at_risk: dict[str, int] = {}
    ys: list[int] = []
    ss: list[float] = []
    i = 0
    for t in instants:
        while i < len(scores) and scores[i].ts_ms <= t:
            sc = scores[i]
            latest[sc.subscriber_id] = sc.score
            if sc.at_risk and sc.subscriber_id not in first_at_risk:
                first_at_risk[sc.subscriber_id] = sc.ts_ms
            i += 1
        for sid, score in latest.items():
            times = truth.get(sid)
            pos = 0
            if times:
                k = bisect.bisect_right(times, t)
                pos = int(k < len(times) and times[k] <= t + horizon_ms)
            ys.append(pos)
            ss.append(score)
    y = np.array(ys, dtype=np.int64)
    s = np.array(ss)
    k = max(1, int(len(s) * top_share))
    top = np.argsort(-s, kind="mergesort")[:k]
    leads = []
    for sid, since in first_at_risk.items():
        later = [x for x in truth.get(sid, []) if x > since]
        if later:
            leads.append((later[0] - since) / 60_000)
    return {
        "sim_dir": str(d),
        "events": len(events),
        "invalid_lines": invalid,
        "scores_emitted": len(scores),
        "replay_events_per_s": round(len(events) / max(1e-9, t_done - t0), 1),
        "core_events_per_s": round(len(events) / max(1e-9, t_done - t_decoded), 1),
        "evaluated": {"instants": len(instants), "rows": len(y), "positives": int(y.sum())},
        "roc_auc": round(_auc(y, s), 4),
        "pr_auc": round(_average_precision(y, s), 4),
        "base_rate": round(float(y.mean()), 4) if len(y) else None,
        f"precision_at_top_{round(top_share * 100)}pct": round(float(y[top].mean()), 4),
        "expected_calibration_error": round(_ece(y, s), 4),
        "at_risk_threshold": threshold,
        "lead_time_minutes": {"subscribers": len(leads),
                              "median": round(float(np.median(leads)), 1) if leads else None},
    }
