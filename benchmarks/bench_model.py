"""The risk model's tuning experiment (docs/MODEL.md): several model settings learn from the same
labels of one replay (the worker's pipeline, :mod:`monitor.replay`), beside the untrained prior, a model learned from zero and the simulator's
oracle (its true hazard), all scored at the same instants against the outcomes that followed.

Run it on *tuning* worlds (seeds that ``satmon evaluate`` does not report on)::

    satmon simulate --subscribers 2000 --hours 96 --seed 901 --out /tmp/w901
    python benchmarks/bench_model.py /tmp/w901 --json

Per outcome (``complaint``, ``churn``) and horizon (72 h), pooled over instants every
``--every-h`` hours after the first ``--from-h`` whose whole horizon lies in the run: exact ROC-AUC
and lift in the top 1 %. Every system scores the same subscribers (those seen and not gone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor import replay  # noqa: E402
from monitor.scoring.core import PartitionCore  # noqa: E402
from monitor.scoring.features import feature_vector  # noqa: E402
from monitor.scoring.risk import RiskModel, roc_auc  # noqa: E402

HOUR_MS = 3_600_000
#: the settings compared (name -> RiskModel keyword arguments); "prior" never learns
GRID: dict[str, dict] = {
    "lr0.005": {"lr": 0.005}, "lr0.02": {"lr": 0.02}, "lr0.05": {"lr": 0.05},
    "lr0.02_l2_0.01": {"lr": 0.02, "l2": 0.01}, "lr0.02_l2_0.1": {"lr": 0.02, "l2": 0.1},
    "zero_prior": {"use_prior": False},
    "prior": {"lr": 0.0, "calibration_lr": 0.0},
}


def lift_at(y: np.ndarray, s: np.ndarray, share: float = 0.01) -> float:
    k = max(1, int(len(s) * share))
    top = np.argsort(-s, kind="stable")[:k]
    base = y.mean()
    return float(y[top].mean() / base) if base > 0 else float("nan")


def run(d: Path, *, every_h: float, from_h: float, horizon_h: float, grid: dict[str, dict],
        partitions: int = 4) -> dict:
    """Replay ``d`` through the worker's pipeline (:func:`monitor.replay.run`); its cores score with
    the grid's first model and every label they learn teaches every model of the grid."""
    truth = {}
    for line in open(d / "ground_truth" / "labels.jsonl"):
        r = json.loads(line)
        truth[r["subscriber_id"]] = {"complaint": r.get("complaints_ms", []), "churn": r.get("churn_ms", [])}
    oracle = np.load(d / "ground_truth" / "oracle.npz")
    o_ts = oracle["ts_ms"]
    models = {name: RiskModel(**params) for name, params in grid.items()}
    main = next(iter(models.values()))

    def sink(rec):
        for m in models.values():
            m.learn(rec)

    def make_core(partition, state_loader):
        return PartitionCore(partition, model=main, label_sink=sink, state_loader=state_loader, clock_ms=lambda: 0)

    records = list(replay.file_records(d))
    stamped = [r[3] for r in records if r[3] is not None]
    start, end = min(stamped), max(stamped)
    H = int(horizon_h * HOUR_MS)
    instants = [int(t) for t in o_ts if t >= start + from_h * HOUR_MS and t + H <= end
                and (t - o_ts[0]) % int(every_h * HOUR_MS) == 0]
    rows: dict[str, dict[str, list]] = {o: {"y": [], **{n: [] for n in [*grid, "oracle"]}} for o in ("complaint", "churn")}
    t0 = time.perf_counter()
    result = replay.run_records(records, partitions=partitions, instants=instants, hotspots=False,
                                make_core=make_core,
                                on_instant=lambda t, pipe: _score(t, pipe.cores.values(), models, truth, oracle,
                                                                  rows, H, horizon_h))
    out = {"dir": str(d), "events": result.events, "instants": len(instants), "labels": main.n_labels,
           "seconds": round(time.perf_counter() - t0, 1), "outcomes": {}}
    for o, r in rows.items():
        y = np.array(r["y"], dtype=bool)
        res = {"base_rate": round(float(y.mean()), 5), "positives": int(y.sum()), "n": len(y), "systems": {}}
        for n in [*grid, "oracle"]:
            s = np.array(r[n])
            res["systems"][n] = {"roc_auc": round(roc_auc(y.tolist(), s.tolist()), 4),
                                 "lift_at_1pct": round(lift_at(y, s), 2)}
        out["outcomes"][o] = res
    return out


def _score(t, cores, models, truth, oracle, rows, H, horizon_h):
    i = int(np.searchsorted(oracle["ts_ms"], t))
    hz = int(horizon_h)
    for core in cores:
        for sid, st in core.states.items():
            if st.gone_ts and st.gone_ts <= t:
                continue
            x = feature_vector(st, max(t, st.last_ts))
            idx = int(sid.rsplit("-", 1)[1])
            for o in ("complaint", "churn"):
                r = rows[o]
                r["y"].append(any(t < ts <= t + H for ts in truth.get(sid, {}).get(o, [])))
                for n, m in models.items():
                    r[n].append(m.predict(x)[o])
                r["oracle"].append(float(oracle[f"{o}_{hz}h"][i, idx]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--every-h", type=float, default=6.0)
    ap.add_argument("--from-h", type=float, default=24.0)
    ap.add_argument("--horizon-h", type=float, default=72.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = [run(d, every_h=args.every_h, from_h=args.from_h, horizon_h=args.horizon_h, grid=GRID)
               for d in args.dirs]
    summary: dict = {}
    for o in ("complaint", "churn"):
        summary[o] = {n: {k: round(float(np.nanmean([r["outcomes"][o]["systems"][n][k] for r in results])), 4)
                          for k in ("roc_auc", "lift_at_1pct")} for n in [*GRID, "oracle"]}
    report = {"worlds": results, "mean": summary}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for o, systems in summary.items():
            print(f"{o} within {args.horizon_h:.0f} h:")
            for n, v in sorted(systems.items(), key=lambda kv: -kv[1]["roc_auc"]):
                print(f"  {n:18s} ROC-AUC {v['roc_auc']:.4f}  lift@1% {v['lift_at_1pct']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
