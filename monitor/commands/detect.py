"""``satmon detect FILE.csv``: run satmon's detector over one KPI's time series and score every row: the
worker's keyed detector (:class:`monitor.detection.hotspots.HotspotDetector`) with one key and one level
metric, judged by :class:`monitor.detection.detectors.SeasonalDetector`; or, with ``--drift``, the drift
monitor's change test.

Input: CSV with a header containing ``timestamp`` and ``value`` (other columns are ignored);
timestamps ISO-8601 (``2024-05-01T10:00:00Z``, naive = UTC) or epoch seconds / milliseconds.
Output: ``timestamp,value,anomaly_score`` (score in [0, 1], a calibrated tail probability: 0.5 = the
firing threshold: rarer than 1 in 10,000 under the learned normal model, or half a percent of the
range of the last 5,000 values beyond it, or weaker evidence together with a run of levels the series
never made; see docs/DETECTION.md), or with
``--drift`` ``timestamp,value,change_point`` (1 on the row where a change was detected), one row per
input row, in input order.
"""

from __future__ import annotations

import argparse
import sys

HELP = "score a timestamp,value CSV with the anomaly detector (or --drift for change points)"

# Epoch numbers above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
_EPOCH_MS_ABOVE = 100_000_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="CSV with columns timestamp,value ('-' for standard input)")
    parser.add_argument("--out", default="-", help="output CSV (default: standard output)")
    parser.add_argument("--drift", action="store_true", help="detect change points instead of anomalies")
    parser.add_argument("--direction", choices=("both", "up", "down"), default="both",
                        help="which deviations are anomalous (default both; 'up' for error rates)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="rows learned before any score (default: the detector's, 100)")
    parser.add_argument("--refractory", type=int, default=None,
                        help="rows kept quiet after an anomaly unless a rarer one comes (default: the detector's)")


def parse_timestamp(text: str) -> int:
    """Epoch milliseconds from ISO-8601 or epoch seconds/milliseconds; ``ValueError`` otherwise.

    >>> parse_timestamp("2024-05-01T10:00:00Z"), parse_timestamp("1714557600"), parse_timestamp("1714557600000")
    (1714557600000, 1714557600000, 1714557600000)
    """
    from datetime import datetime, timezone

    t = text.strip()
    if not t:
        raise ValueError("empty timestamp")
    try:
        x = float(t)
    except ValueError:
        pass
    else:
        if x != x or x in (float("inf"), float("-inf")):
            raise ValueError(f"not a timestamp: {text!r}")
        return int(round(x)) if abs(x) >= _EPOCH_MS_ABOVE else int(round(x * 1000))
    try:
        dt = datetime.fromisoformat(t.replace("z", "Z").replace("Z", "+00:00") if t.endswith(("Z", "z")) else t)
    except ValueError:
        raise ValueError(f"not an ISO-8601 or epoch timestamp: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(round(dt.timestamp() * 1000))


def read_series(path: str) -> tuple[list[tuple[str, str]], list[int], list[float]]:
    """((timestamp text, value text) per row, epoch ms, values) of the CSV; ``MonitorError`` naming
    the line and the problem otherwise."""
    import csv
    import math

    from monitor.records.errors import MonitorError

    try:
        stream = sys.stdin if path == "-" else open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise MonitorError(f"cannot read {path}: {err.strerror or err}") from None
    texts, stamps, values = [], [], []
    with stream:
        reader = csv.reader(stream)
        try:
            header = next(reader)
        except StopIteration:
            raise MonitorError(f"{path}: empty file (expected a header with timestamp,value)") from None
        except (csv.Error, UnicodeDecodeError) as err:
            raise MonitorError(f"{path}: not a readable CSV: {err}") from None
        names = [h.strip().lower() for h in header]
        missing = [c for c in ("timestamp", "value") if c not in names]
        if missing:
            raise MonitorError(f"{path}: missing column(s) {', '.join(missing)} in header {header!r} "
                               "(expected timestamp,value)")
        it, iv = names.index("timestamp"), names.index("value")
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) <= max(it, iv):
                    raise MonitorError(f"{path}:{line}: expected {len(header)} columns, got {len(row)}")
                try:
                    ts = parse_timestamp(row[it])
                except ValueError as err:
                    raise MonitorError(f"{path}:{line}: {err}") from None
                try:
                    v = float(row[iv])
                except ValueError:
                    raise MonitorError(f"{path}:{line}: value {row[iv]!r} is not a number") from None
                if not math.isfinite(v):
                    raise MonitorError(f"{path}:{line}: value {row[iv]!r} is not a finite number")
                texts.append((row[it].strip(), row[iv].strip()))
                stamps.append(ts)
                values.append(v)
        except (csv.Error, UnicodeDecodeError) as err:
            raise MonitorError(f"{path}: not a readable CSV: {err}") from None
    if not values:
        raise MonitorError(f"{path}: no data rows")
    return texts, stamps, values


class SeriesScorer:
    """One KPI series through the worker's detector: a :class:`monitor.detection.hotspots.HotspotDetector`
    with one key and one ``level`` metric, judged by its per-key clone of ``level_detector``
    (:class:`monitor.detection.detectors.SeasonalDetector`, the configuration measured on NAB). The
    worker's cells and regions use the same class with count metrics; ``process_one(x, t)`` returns
    the point's score in [0, 1] (0.5 = the firing threshold), scored then learned.

    >>> s = SeriesScorer(warmup=20)
    >>> scores = [s.process_one(10.0 + (i % 3), i * 60_000) for i in range(30)]
    >>> max(scores) < 0.5 < s.process_one(60.0, 30 * 60_000)
    True
    """

    KEY = "series"

    def __init__(self, direction: str = "both", warmup: int | None = None, refractory: int | None = None) -> None:
        from monitor.detection.detectors import SeasonalDetector
        from monitor.detection.hotspots import HotspotDetector, Metric

        params: dict = {"direction": direction}
        if warmup is not None:
            params["warmup"] = warmup
        if refractory is not None:
            params["refractory"] = refractory
        metric = Metric("value", "level", 0.0, 0.0, 0.0, "value", direction=direction)
        # every point is a window of the one key; the level detector has its own warm-up and
        # onsets-only scores, so the keyed detector adds none (fires and resolves on each point)
        self.detector = HotspotDetector(metrics=(metric,), level_detector=SeasonalDetector(**params),
                                        k_fire=1, m_resolve=1, warmup_windows=0)

    def process_one(self, x: float, t: int) -> float:
        v = self.detector.step(t, {self.KEY: {"value": (x, 1.0, None)}}).get(self.KEY)
        return v.score if v is not None else 0.0


def anomaly_scores(stamps: list[int], values: list[float], *, direction: str = "both",
                   warmup: int | None = None, refractory: int | None = None) -> list[float]:
    """Score of every point (input order) by :class:`SeriesScorer`, fed in time order (test-then-train).

    >>> s = anomaly_scores(list(range(0, 200 * 60_000, 60_000)), [10.0, 11.0, 10.5] * 50 + [50.0] + [10.0] * 49)
    >>> max(s[:150]) < 0.5 < s[150]
    True
    """
    scorer = SeriesScorer(direction, warmup, refractory)
    order = sorted(range(len(values)), key=lambda i: stamps[i])
    scores = [0.0] * len(values)
    for i in order:
        scores[i] = round(scorer.process_one(values[i], stamps[i]), 6)
    return scores


def change_points(stamps: list[int], values: list[float]) -> list[int]:
    """1 on the rows where the drift detector reports a change (time order), else 0."""
    from monitor.detection.drift import DataDriftMonitor

    mon = DataDriftMonitor(features=("latency_ms",), reference_windows=15, min_rel_change=0.0)
    order = sorted(range(len(values)), key=lambda i: stamps[i])
    flags = [0] * len(values)
    for i in order:
        if mon.update_one("series", "value", values[i], stamps[i]) is not None:
            flags[i] = 1
    return flags


def run(args: argparse.Namespace) -> int:
    import contextlib
    import csv

    from monitor.records.errors import MonitorError

    texts, stamps, values = read_series(args.file)
    if args.drift:
        column, result = "change_point", change_points(stamps, values)
    else:
        column, result = "anomaly_score", anomaly_scores(stamps, values, direction=args.direction,
                                                          warmup=args.warmup, refractory=args.refractory)
    try:
        out = sys.stdout if args.out == "-" else open(args.out, "w", newline="", encoding="utf-8")
    except OSError as err:
        raise MonitorError(f"cannot write {args.out}: {err.strerror or err}") from None
    with out if out is not sys.stdout else contextlib.nullcontext(out) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["timestamp", "value", column])
        for (t, v), r in zip(texts, result):
            w.writerow([t, v, r])
    if args.out != "-":
        flagged = sum(1 for r in result if (r >= 0.5 if column == "anomaly_score" else r))
        print(f"{len(values)} rows, {flagged} {'anomalous' if column == 'anomaly_score' else 'change points'}"
              f" -> {args.out}", file=sys.stderr)
    return 0

