"""Why churn learns slowly (docs/MODEL.md, issue 18): what the worker's labels hold, and what offline
learners make of them, on the tuning worlds.

Per world (``satmon simulate --subscribers 3000 --hours 168 --seed S --sessions-per-hour 4``, seeds
14-16, every other setting the simulator's default; a world already in ``--work`` is reused), one
replay through the worker's pipeline (:func:`monitor.replay.run` with the cores of
:func:`monitor.pipeline.default_core_factory`, as ``satmon evaluate`` runs it) captures

* every label the cores mature (:class:`~monitor.scoring.risk.LabelRecord`, through the cores'
  ``label_sink``: :func:`monitor.evaluation.risk._teaching_both`), and
* every subscriber's feature snapshot every ``--every-h`` hours (and at 09:00 local), with the online
  model's probabilities (:class:`monitor.evaluation.risk._Collector`),

then grades the evaluator's systems on them (:func:`monitor.evaluation.risk.grade_world`: the online
model, the oracle, the person-blind oracle, the cross-fitted batch references) and fits offline:

* ``logistic_24h_labels``: scikit-learn's logistic regression (the evaluator's ``batch_logistic``
  pipeline) on the cores' 24-hour labels known at the middle of the evaluated period (snapshot plus
  horizon before it): what an online learner has had by then;
* ``logistic_7d_labels``: the same on the first half's snapshots with the evaluator's 7-day labels
  (outcomes that happen during the second half included), fitted on all subscribers;
  ``batch_logistic`` in the grade is the same cross-fitted over subscribers;
* the churn head's label schemes (``schemes``): a fresh :class:`~monitor.scoring.risk.RiskModel`'s
  churn head learns the snapshots as labels, each once its horizon has passed, and scores the
  second half's snapshots as it stands then: daily snapshots with a 24 h horizon (the base), every
  6 h, a 72 h horizon, both, positives learned 5 times.

Every learner is scored on the second half's snapshots against churn within 7 days (exact ROC-AUC,
pairs within an instant only, as the evaluator counts them)::

    python benchmarks/bench_learnability.py            # ~15 min on 2 shared cores; JSON to benchmarks/learnability.json
    python benchmarks/bench_learnability.py --seeds 14 --subscribers 300 --hours 48 --out /tmp/l.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# one thread for scikit-learn's OpenMP: on a loaded 2-core machine HistGradientBoosting's threads
# wait on each other (a 300-subscriber grade took 191 s with them, 14 s without)
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor import replay  # noqa: E402
from monitor.evaluation import risk as ev  # noqa: E402
from monitor.scoring.risk import OUTCOMES, RiskModel  # noqa: E402

HOUR_MS = 3_600_000
SEEDS = (14, 15, 16)
#: the tuning worlds' size (docs/MODEL.md, "Why churn learns slowly")
SUBSCRIBERS, HOURS, SESSIONS_PER_HOUR = 3000, 168, 4.0
#: snapshot spacing of the capture (hours)
EVERY_H = 3
CHURN = OUTCOMES.index("churn")
#: the churn head's label schemes: name -> (snapshot spacing in hours, 0 for the daily 09:00 ones;
#: horizon in hours; times each positive is learned)
SCHEMES: dict[str, tuple[int, int, int]] = {
    "daily_24h": (0, 24, 1), "every_6h_24h": (6, 24, 1), "daily_72h": (0, 72, 1),
    "every_6h_72h": (6, 72, 1), "daily_24h_positives_x5": (0, 24, 5),
}


def simulate(work: Path, seed: int, *, subscribers: int, hours: int, sessions_per_hour: float) -> Path:
    """The world's directory under ``work``, simulated with ``satmon simulate`` unless already there."""
    d = work / f"w{seed}-{subscribers}x{hours}-sph{sessions_per_hour:g}"
    if (d / "ground_truth" / "world.json").exists() and (d / "manifest.json").exists():
        return d
    tmp = d.with_name(d.name + ".part")
    subprocess.run([sys.executable, "-m", "monitor", "simulate", "--subscribers", str(subscribers),
                    "--hours", str(hours), "--seed", str(seed), "--sessions-per-hour", f"{sessions_per_hour:g}",
                    "--out", str(tmp)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    tmp.rename(d)
    return d


class LabelCapture:
    """Stands where :func:`monitor.evaluation.risk._teaching_both` puts its second model: keeps every
    label the cores mature, in the order the pipeline's model learns them."""

    def __init__(self) -> None:
        self.labels: list[Any] = []

    def learn(self, rec: Any) -> None:
        self.labels.append(rec)


def capture(sim_dir: Path, *, every_h: int = EVERY_H, partitions: int = 4) -> dict[str, Any]:
    """One replay of ``sim_dir`` through the worker's pipeline: the data :func:`monitor.evaluation.risk.grade_world`
    grades (as :func:`~monitor.evaluation.risk.replay_world` builds it) plus ``labels``, the cores' matured labels."""
    truth = ev.load_truth(sim_dir)
    w = truth["world"]
    off = w.get("utc_offset_h", 0.0)
    instants = [int(t) for j, t in enumerate(truth["oracle"]["ts_ms"])
                if j % every_h == 0 or abs(ev._local_hour(int(t), off) - 9.0) < 1e-9]
    labels = LabelCapture()
    collector = ev._Collector(truth, instants, reasons=False)
    t0 = time.perf_counter()
    result = replay.run(sim_dir, partitions=partitions, instants=instants, on_instant=collector, hotspots=False,
                        make_core=ev._teaching_both(None, labels))
    return {"truth": truth, "instants": instants, "rows": collector.rows, "reasons": {},
            "labels_learned": ev._labels_learned(collector.model), "events": result.events,
            "dead_letters": result.dead_letters, "replay_s": round(time.perf_counter() - t0, 1),
            "labels": labels.labels}


def _auc_within(ts: list[int], y: dict[int, np.ndarray], s: dict[int, np.ndarray]) -> float | None:
    """Exact ROC-AUC over pairs within an instant, pooled over ``ts`` (the evaluator's count)."""
    c = p = 0.0
    for t in ts:
        cc, pp = ev._auc_counts(y[t], s[t])
        c, p = c + cc, p + pp
    return ev._r(c / p) if p else None


def learnability(data: dict[str, Any], grade: dict[str, Any]) -> dict[str, Any]:
    """The figures of one captured world (see the module doc)."""
    truth, rows = data["truth"], data["rows"]
    w = truth["world"]
    off = w.get("utc_offset_h", 0.0)
    instants = [t for t in data["instants"] if t in rows]
    half = instants[0] + (instants[-1] - instants[0]) / 2
    h7 = 168 * HOUR_MS
    valid = [t for t in instants if t + h7 <= w["world_end_ms"]]
    first, second = [t for t in valid if t <= half], [t for t in valid if t > half]
    daily = [t for t in instants if abs(ev._local_hour(t, off) - 9.0) < 1e-9]
    churn_times = truth["times"]["churn"]
    y7 = {t: ev._labels(churn_times, rows[t]["subs"], t, h7) for t in valid}

    # the cores' labels
    labels = data["labels"]
    lh_ms = 24 * HOUR_MS   # the cores' learning horizon (RiskModel's default; settings=None)
    known = [r for r in labels if r.ts_ms + lh_ms <= half]
    out: dict[str, Any] = {
        "seed": w["seed"], "events": data["events"], "replay_s": data["replay_s"],
        "port_outs": {"emitted": sum(1 for v in churn_times.values() if v[0] <= w["end_ms"]),
                      "with_follow_up": len(churn_times)},
        "labels": {"matured": len(labels),
                   "positive": {o: sum(r.y[i] for r in labels) for i, o in enumerate(OUTCOMES)},
                   "known_at_middle": len(known),
                   "positive_known_at_middle": {o: sum(r.y[i] for r in known) for i, o in enumerate(OUTCOMES)}},
        "snapshots": {"every_h": EVERY_H, "instants_first_half": len(first), "instants_second_half": len(second),
                      "rows_first_half": int(sum(len(y7[t]) for t in first)),
                      "churn_7d_positive_rows_first_half": int(sum(y7[t].sum() for t in first))},
    }

    # offline learners, scored on the second half against churn within 7 days
    xs = {t: rows[t]["x"] for t in valid}
    learners: dict[str, Any] = {}
    x24 = np.array([r.x for r in known], dtype=np.float64)
    y24 = np.array([r.y[CHURN] for r in known], dtype=np.int8)
    if 0 < y24.sum() < len(y24):
        m = ev._logistic().fit(x24, y24)
        learners["logistic_24h_labels"] = {
            "fitted_on": "the cores' 24 h labels known at the middle", "rows": len(y24), "positives": int(y24.sum()),
            "roc_auc_second_half": _auc_within(second, y7, {t: m.predict_proba(xs[t])[:, 1] for t in second})}
    x1 = np.concatenate([xs[t] for t in first])
    y1 = np.concatenate([y7[t] for t in first])
    if 0 < y1.sum() < len(y1):
        m = ev._logistic().fit(x1, y1)
        learners["logistic_7d_labels"] = {
            "fitted_on": "the first half's snapshots, 7-day labels, all subscribers", "rows": len(y1),
            "positives": int(y1.sum()),
            "roc_auc_second_half": _auc_within(second, y7, {t: m.predict_proba(xs[t])[:, 1] for t in second})}
    out["offline"] = learners
    out["schemes"] = _schemes(data, valid, second, y7, daily)

    # the evaluator's systems on churn within 7 days (daily 09:00 instants; second half)
    sysres = grade["outcomes"]["churn_7d"]["systems"]
    out["churn_7d"] = {s: {k: sysres[s].get(k) for k in ("roc_auc", "roc_auc_second_half", "lift_at_1pct")}
                       for s in ("model", "prior", "oracle", "oracle_blind", "batch_logistic", "batch_reference")
                       if s in sysres}
    out["churn_7d"]["base_rate"] = grade["outcomes"]["churn_7d"]["base_rate"]

    # the drift: the oracle's mean daily churn hazard, the observed 7-day churn rate and the model's mean
    # 7-day probability, at each daily instant (subscribers still with the operator)
    oracle = truth["oracle"]
    oj = {int(t): j for j, t in enumerate(oracle["ts_ms"])}
    out["by_day"] = [{"t_h": round((t - w["eval_start_ms"]) / HOUR_MS, 1),
                      "oracle_churn_24h_mean": ev._r(float(oracle["churn_24h"][oj[t]][rows[t]["subs"]].mean()), 5),
                      "churn_7d_rate": ev._r(float(y7[t].mean()), 5) if t in y7 else None,
                      "model_churn_7d_mean": ev._r(float(rows[t]["model"][:, CHURN].mean()), 5)}
                     for t in daily]
    return out


def _schemes(data: dict[str, Any], valid: list[int], second: list[int], y7: dict[int, np.ndarray],
             daily: list[int]) -> dict[str, Any]:
    """The churn head's label schemes: a fresh model learns the snapshots as churn labels once their
    horizon has passed and scores the second half's snapshots as it stands at each instant."""
    rows, churn_times = data["rows"], data["truth"]["times"]["churn"]
    t0 = data["instants"][0]
    out: dict[str, Any] = {}
    for name, (spacing, horizon_h, repeats) in SCHEMES.items():
        h_ms = horizon_h * HOUR_MS
        snaps = [t for t in data["instants"] if t in rows
                 and (t in daily if spacing == 0 else (t - t0) % (spacing * HOUR_MS) == 0)]
        model = RiskModel(learn_horizon_hours=horizon_h)
        queue = sorted(snaps, key=lambda t: t + h_ms)   # learned once matured, in that order
        qi = 0
        scores: dict[int, np.ndarray] = {}
        n = pos = 0
        for t in second:
            while qi < len(queue) and queue[qi] + h_ms <= t:
                s = queue[qi]
                qi += 1
                y = ev._labels(churn_times, rows[s]["subs"], s, h_ms)
                for x, yy in zip(rows[s]["x"].tolist(), y.tolist()):
                    rec = _churn_label(s, x, yy)
                    for _ in range(repeats if yy else 1):
                        model.learn(rec, only="churn")
                    n += 1
                    pos += yy
            scores[t] = np.array([model.predict(x)["churn"] for x in rows[t]["x"].tolist()])
        out[name] = {"snapshot_every_h": spacing or 24, "horizon_h": horizon_h, "positive_repeats": repeats,
                     "labels_learned": n, "positive_labels": pos,
                     "roc_auc_second_half": _auc_within(second, y7, scores)}
    base = out["daily_24h"]["roc_auc_second_half"]
    for v in out.values():
        a = v["roc_auc_second_half"]
        v["minus_daily_24h"] = ev._r(a - base) if a is not None and base is not None else None
    return out


def _churn_label(ts_ms: int, x: list[float], churned: int) -> Any:
    """A churn label on a captured snapshot (the other outcomes are not taught: ``learn(only="churn")``)."""
    from monitor.scoring.risk import LabelRecord

    y = [0] * len(OUTCOMES)
    y[CHURN] = int(churned)
    return LabelRecord(ts_ms=ts_ms, x=x, y=y)


def provenance() -> dict[str, Any]:
    """The commit the harness ran at and the simulator's version (the world format's and the one
    docs/SIMULATOR.md calls current, and a hash of monitor/sim's sources)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    h = hashlib.sha256()
    for p in sorted((ROOT / "monitor" / "sim").rglob("*")):
        if p.is_file() and p.suffix in (".py", ".yaml"):
            h.update(p.relative_to(ROOT).as_posix().encode())
            h.update(p.read_bytes())
    doc = (ROOT / "docs" / "SIMULATOR.md")
    current = re.findall(r"v(3\.\d+) \(current\)", doc.read_text()) if doc.exists() else []
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty_monitor": bool(git("status", "--porcelain", "monitor")),
            "simulator": {"world_version": 3, "doc_current": ("v" + max(current, key=lambda v: int(v.split(".")[1])))
                          if current else None, "sources_sha256": h.hexdigest()[:16]}}


def _summary(worlds: list[dict[str, Any]]) -> None:
    def row(name: str, vals: list[Any]) -> None:
        print(f"  {name:34s} " + " / ".join("-" if v is None else f"{v}" for v in vals))
    print("world                              " + " / ".join(str(w["seed"]) for w in worlds))
    row("port-outs (emitted)", [w["port_outs"]["emitted"] for w in worlds])
    row("labels matured", [w["labels"]["matured"] for w in worlds])
    row("churn labels (24 h)", [w["labels"]["positive"]["churn"] for w in worlds])
    row("  ... known at the middle", [w["labels"]["positive_known_at_middle"]["churn"] for w in worlds])
    row("7-day positive rows, first half", [w["snapshots"]["churn_7d_positive_rows_first_half"] for w in worlds])
    print("churn_7d ROC-AUC, second half:")
    for n in ("logistic_24h_labels", "logistic_7d_labels"):
        row(n, [w["offline"].get(n, {}).get("roc_auc_second_half") for w in worlds])
    for s in ("batch_logistic", "batch_reference", "model", "oracle", "oracle_blind"):
        row(s, [w["churn_7d"].get(s, {}).get("roc_auc_second_half") for w in worlds])
    for n in SCHEMES:
        row(f"head {n}", [f'{w["schemes"][n]["roc_auc_second_half"]} ({w["schemes"][n]["minus_daily_24h"]:+})'
                          for w in worlds])
    row("model churn_7d (daily, whole run)", [w["churn_7d"]["model"]["roc_auc"] for w in worlds])
    row("oracle daily churn hazard %", [f'{100 * w["by_day"][0]["oracle_churn_24h_mean"]:.2f} -> '
                                        f'{100 * w["by_day"][-1]["oracle_churn_24h_mean"]:.2f}' for w in worlds])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--subscribers", type=int, default=SUBSCRIBERS)
    ap.add_argument("--hours", type=int, default=HOURS)
    ap.add_argument("--sessions-per-hour", type=float, default=SESSIONS_PER_HOUR)
    ap.add_argument("--work", type=Path, default=Path("/tmp/satmon-learnability"),
                    help="scratch directory for the worlds (reused when already there)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "learnability.json")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    worlds = []
    for seed in args.seeds:
        ts = time.perf_counter()
        d = simulate(args.work, seed, subscribers=args.subscribers, hours=args.hours,
                     sessions_per_hour=args.sessions_per_hour)
        data = capture(d)
        grade = ev.grade_world(data)
        res = learnability(data, grade)
        res["seconds"] = round(time.perf_counter() - ts, 1)
        worlds.append(res)
        print(f"world {seed}: {res['seconds']} s", file=sys.stderr)
    report = {"generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **provenance(),
              "config": {"seeds": args.seeds, "subscribers": args.subscribers, "hours": args.hours,
                         "sessions_per_hour": args.sessions_per_hour, "snapshot_every_h": EVERY_H},
              "worlds": worlds, "seconds": round(time.perf_counter() - t0, 1)}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    _summary(worlds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
