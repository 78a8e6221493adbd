"""``satmon evaluate DIR...``: grade the risk model on outcomes in simulator v3 worlds, with references.

Each DIR (``satmon simulate --out DIR``) is one world; its streams are replayed through the
worker's pipeline and, at list instants after the burn-in, every system is graded on complaints,
detractor answers and port-outs that follow (see :mod:`monitor.evaluation.risk`). Several DIRs give 95 %
intervals by bootstrap over worlds. The hot-spot section (recall, precision, delay) is kept.
"""

from __future__ import annotations

import argparse
import json

HELP = ("grade risk scores on outcomes (complaint, detractor, churn) in simulated worlds against the oracle, "
        "a batch reference, the prior and a model learned from zero; hot-spot recall and precision")

#: systems in the order the table prints them
ORDER = ("oracle", "oracle_blind", "batch_reference", "batch_logistic", "model", "zero_prior", "prior", "best_single_feature")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.config import add_flags

    parser.add_argument("dir", nargs="+", help="output directories of `satmon simulate` (one world each)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--no-hotspots", action="store_true", help="skip the hot-spot and drift section")
    parser.add_argument("--no-zero-prior", action="store_true",
                        help="skip the second replay that learns from zero weights (halves the time)")
    parser.add_argument("--every-h", type=int, default=1,
                        help="grade every Nth hourly instant (the 09:00 list instants always; default 1)")
    parser.add_argument("--svg", metavar="PATH",
                        help="also write the lift curves of complaint_72h and churn_7d as an SVG picture")
    parser.add_argument("--calibration-svg", metavar="PATH",
                        help="also write the reliability curves (observed rate against probability) of the "
                             "oracle, the model and the prior per headline outcome as an SVG picture")
    parser.add_argument("--oracle-only", action="store_true",
                        help="only the oracle's ROC-AUC per outcome, from the ground truth (no replay)")
    add_flags(parser, ("partitions", "model_checkpoint"))


def run(args: argparse.Namespace) -> int:
    from monitor.config import from_args
    from monitor.evaluation.risk import evaluate, oracle_only

    if args.oracle_only:
        result = {"oracle_only": [oracle_only(d) for d in args.dir]}
        print(json.dumps(result, indent=1))
        return 0
    settings = from_args(args)
    result = evaluate(*args.dir, settings=settings, partitions=settings.partitions,
                      zero_prior=not args.no_zero_prior, every_h=args.every_h)
    if args.svg:
        from pathlib import Path

        from monitor.evaluation.risk import lift_curve_svg

        worlds = ", ".join(str(w) for w in result["worlds"])
        Path(args.svg).write_text(lift_curve_svg(result, title=f"Lift at a budget, worlds {worlds} "
                                                               "(daily 09:00 lists; batch: second half)"))
    if args.calibration_svg:
        from pathlib import Path

        from monitor.evaluation.risk import reliability_svg

        worlds = ", ".join(str(w) for w in result["worlds"])
        Path(args.calibration_svg).write_text(reliability_svg(
            result, title=f"Calibration, worlds {worlds}: observed rate against probability (ten equal-count bins)"))
    if not args.no_hotspots:
        from monitor.evaluation.hotspots import evaluate_hotspots

        result["hotspots"] = [evaluate_hotspots(d, partitions=settings.partitions) for d in args.dir]
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    print(f"worlds {result['worlds']}: list instants at 09:00 local (ROC-AUC within instants; "
          f"hourly in brackets); 95% interval over worlds")
    for name, o in result["outcomes"].items():
        print(f"{name}  base rate {o['base_rate']}")
        for s in ORDER:
            m = o["systems"].get(s)
            if not m:
                continue
            print(f"  {s:20s} ROC-AUC {m.get('roc_auc')} [{m.get('roc_auc_hourly')}] ci {m.get('roc_auc_ci95')}  "
                  f"PR-AUC {m.get('pr_auc')}  lift@1% {m.get('lift_at_1pct')}  precision@5% {m.get('precision_at_5pct')}"
                  f"  2nd half {m.get('roc_auc_second_half')}  lead {m.get('median_lead_h')} h")
        for k, d in o.get("differences", {}).items():
            print(f"  {k}: {d['mean']} ci {d['ci95']} ({d['metric']})")
    print(f"reasons: top reason names the driver {result['reasons']['fidelity_top1']} "
          f"of {result['reasons']['outcomes_with_driver']} outcomes")
    print(f"list: {result['list']}")
    for h in result.get("hotspots", []):
        print(f"hot spots: recall {h.get('recall')}, precision {h.get('precision')}, median delay "
              f"{h.get('median_delay_windows')} windows, {h.get('false_alerts_per_1000_cell_hours')} false alerts/1000 cell-h")
    return 0
