"""NAB (Numenta Anomaly Benchmark) for satmon's detectors, scored by NAB's own code.

Runs each detector of :data:`DETECTORS` over the 58 NAB series (one configuration for all, streamed
test-then-train, as satmon runs it), writes NAB's results layout into a temporary copy of the NAB
folder, and runs NAB's scorer there in its own virtual environment (``.venv-nab``: NAB needs
``pandas==1.5.3``, ``numpy<2``, ``simplejson``; created on first use). NAB's null detector is run
first (normalisation needs it) and its ``windowedGaussian`` as an in-run reference.

    .venv/bin/python benchmarks/bench_nab.py                 # all detectors -> benchmarks/nab.json
    .venv/bin/python benchmarks/bench_nab.py --detectors satmon --limit 6

The NAB copy is read from ``$SATMON_NAB_DIR`` or ``../shared/data/nab`` (next to the checkout); the
benchmark exits 0 with a message when it is absent. Nothing from it is copied into the project.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAB_DIR = Path(os.environ.get("SATMON_NAB_DIR", ROOT.parent / "shared" / "data" / "nab"))
NAB_VENV = ROOT / ".venv-nab"
NAB_PINS = ("pandas==1.5.3", "numpy<2", "simplejson")
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
#: NAB's own detectors run in the same scoring run as references (null is required for normalisation)
NAB_REFERENCES = ("windowedGaussian",)
#: published scores (NAB README scoreboard, standard / low FP / low FN), for the table only
PUBLISHED = {"ARTime": (74.9, 65.1, 80.4), "Numenta HTM": (70.1, 63.1, 74.3), "CAD OSE": (69.9, 67.0, 73.2),
             "KNN CAD": (58.0, 43.4, 64.8), "windowedGaussian": (39.6, 20.9, 47.4)}


def _satmon():
    # what ``satmon detect`` runs: the worker's keyed detector with one level metric (SeasonalDetector)
    from monitor.commands.detect import SeriesScorer
    return SeriesScorer()


def _satmon_no_context():
    from monitor.detection.detectors import SeasonalDetector
    return SeasonalDetector(context_levels=0)


def _satmon_no_range():
    from monitor.detection.detectors import SeasonalDetector
    return SeasonalDetector(range_window=0)


def _satmon_lenient():
    from monitor.detection.detectors import SeasonalDetector
    return SeasonalDetector(robust=False)


def _ewma():
    from monitor.detection.detectors import EWMAZScore
    return EWMAZScore()


def _pagehinkley():
    from monitor.detection.detectors import PageHinkleyDetector
    return PageHinkleyDetector()


def _hst():
    from monitor.detection.detectors import HalfSpaceTreesDetector
    return HalfSpaceTreesDetector(seed=42)


#: NAB detector name (letters only: NAB puts it in paths and JSON keys) -> factory of a fresh detector
#: (satmon = the configuration ``satmon detect`` runs; satmonNoContext / satmonNoRange = the same
#: without its context / range statistic, ablations; satmonLenient = the same without winsorising
#: alarms)
DETECTORS = {"satmon": _satmon, "satmonNoContext": _satmon_no_context, "satmonNoRange": _satmon_no_range,
             "satmonLenient": _satmon_lenient, "ewmaZ": _ewma, "pageHinkley": _pagehinkley, "riverHST": _hst}


def series_files(nab_dir: Path) -> list[Path]:
    """The NAB series (``data/<folder>/<file>.csv``), sorted."""
    return sorted(p for p in (nab_dir / "data").glob("*/*.csv"))


def read_series(path: Path) -> tuple[list[str], list[str], list[int], list[float]]:
    """(timestamp texts, value texts, epoch ms, values) of a NAB data file."""
    texts, vtexts, stamps, values = [], [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            texts.append(row["timestamp"])
            vtexts.append(row["value"])
            dt = datetime.fromisoformat(row["timestamp"]).replace(tzinfo=timezone.utc)
            stamps.append(int(dt.timestamp() * 1000))
            values.append(float(row["value"]))
    return texts, vtexts, stamps, values


def score_series(name: str, path: Path) -> tuple[list[float], float]:
    """Scores of one series by a fresh detector (test-then-train), and the seconds it took."""
    _, _, stamps, values = read_series(path)
    det = DETECTORS[name]()
    t0 = time.perf_counter()
    scores = [det.process_one(x, t) for x, t in zip(values, stamps)]
    return scores, time.perf_counter() - t0


def write_results(results_dir: Path, detector: str, rel: Path, texts: list[str], vtexts: list[str],
                  scores: list[float]) -> Path:
    """NAB's layout: ``<results>/<detector>/<folder>/<detector>_<file>.csv`` with
    ``timestamp,value,anomaly_score,label`` (label is filled from NAB's windows by its scorer)."""
    out = results_dir / detector / rel.parent / f"{detector}_{rel.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for t, v, s in zip(texts, vtexts, scores):
            w.writerow([t, v, f"{min(1.0, max(0.0, s)):.6f}", 0])
    return out


def ensure_venv() -> Path:
    """NAB's scorer environment (created with pip and :data:`NAB_PINS` if absent)."""
    py = NAB_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(NAB_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *NAB_PINS], check=True)
    return py


def _task(args: tuple[str, str]) -> tuple[str, str, list[float], float]:
    name, path = args
    scores, secs = score_series(name, Path(path))
    return name, path, scores, secs


class _InProcess:
    """``Pool``'s interface, run in this process (``workers=1``)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap_unordered(fn, items):
        return map(fn, items)


def run(detectors: list[str], *, limit: int | None = None, workers: int = 2, nab_dir: Path = NAB_DIR,
        keep: Path | None = None, references: tuple[str, ...] = NAB_REFERENCES) -> dict:
    """Detect, write, score; returns ``{"detectors": {name: {profile: score, "us_per_event": ..}}}``."""
    from multiprocessing import Pool

    files = series_files(nab_dir)
    if limit:      # a quick check: the first series that have labelled anomalies (NAB normalises by them)
        windows = json.loads((nab_dir / "labels" / "combined_windows.json").read_text())
        files = [p for p in files if windows.get(str(p.relative_to(nab_dir / "data")))][:limit]
    py = ensure_venv()
    tmp = Path(tempfile.mkdtemp(prefix="satmon-nab-"))
    try:
        work = tmp / "nab"
        shutil.copytree(nab_dir, work, ignore=shutil.ignore_patterns("results", "*.pyc", "__pycache__"))
        if limit:                                      # a subset: score only those files
            keep_rel = {str(p.relative_to(nab_dir / "data")) for p in files}
            for p in series_files(work):
                if str(p.relative_to(work / "data")) not in keep_rel:
                    p.unlink()
            for labels in (work / "labels").glob("combined_*.json"):     # NAB's labels of those files only
                data = json.loads(labels.read_text())
                labels.write_text(json.dumps({k: v for k, v in data.items() if k in keep_rel}))
        shutil.copy(work / "config" / "thresholds.json", work / "config" / "T.json")
        res = work / "R"
        nab = [str(py), "run.py", "--optimize", "--score", "--normalize", "--skipConfirmation",
               "-n", str(workers), "--resultsDir", "R", "-t", "config/T.json"]
        t0 = time.perf_counter()
        subprocess.run(nab + ["--detect", "-d", ",".join(("null", *references))], cwd=work, check=True,
                       stdout=subprocess.DEVNULL)
        ref_secs = time.perf_counter() - t0
        tasks = [(d, str(p)) for d in detectors for p in files]
        cost: dict[str, list[float]] = {d: [0.0, 0] for d in detectors}
        with Pool(workers) if workers > 1 else _InProcess() as pool:
            for name, path, scores, secs in pool.imap_unordered(_task, tasks):
                p = Path(path)
                texts, vtexts, _, _ = read_series(p)
                write_results(res, name, p.relative_to(nab_dir / "data"), texts, vtexts, scores)
                cost[name][0] += secs
                cost[name][1] += len(scores)
        subprocess.run(nab + ["-d", ",".join(detectors)], cwd=work, check=True, stdout=subprocess.DEVNULL)
        final = json.loads((res / "final_results.json").read_text())
        if keep:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(res, keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"series": len(files), "events": int(next(iter(cost.values()))[1]) if cost else 0,
           "nab_commit_dir": str(nab_dir), "reference_detect_seconds": round(ref_secs, 1), "detectors": {}}
    for name in (*detectors, *references):
        row = {p: round(final[name][p], 1) for p in PROFILES}
        if name in cost:
            row["us_per_event"] = round(1e6 * cost[name][0] / max(1, cost[name][1]), 1)
        out["detectors"][name] = row
    return out


def table(result: dict) -> str:
    lines = [f"NAB ({result['series']} series, {result['events']} events), NAB's own scorer",
             f"{'detector':<22}{'standard':>10}{'low FP':>10}{'low FN':>10}{'us/event':>10}"]
    for name, row in result["detectors"].items():
        us = f"{row['us_per_event']:>10}" if "us_per_event" in row else f"{'-':>10}"
        lines.append(f"{name:<22}" + "".join(f"{row[p]:>10}" for p in PROFILES) + us)
    for name, vals in PUBLISHED.items():
        lines.append(f"{name + ' (published)':<22}" + "".join(f"{v:>10}" for v in vals) + f"{'-':>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated (default: all)")
    ap.add_argument("--limit", type=int, default=None,
                    help="only the first N series with labelled anomalies (a quick check, not NAB's score)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "nab.json"), help="'-' for none")
    ap.add_argument("--keep-results", default=None, help="copy NAB's results folder here")
    args = ap.parse_args(argv)
    if not (NAB_DIR / "run.py").exists():
        print(f"NAB not found at {NAB_DIR} (set SATMON_NAB_DIR); skipping the NAB benchmark.")
        return 0
    names = [d for d in args.detectors.split(",") if d]
    unknown = [d for d in names if d not in DETECTORS]
    if unknown:
        ap.error(f"unknown detector(s) {unknown}; known: {list(DETECTORS)}")
    t0 = time.perf_counter()
    result = run(names, limit=args.limit, workers=args.workers,
                 keep=Path(args.keep_results) if args.keep_results else None)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["command"] = "python benchmarks/bench_nab.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(table(result))
    if args.out != "-" and not args.limit:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
