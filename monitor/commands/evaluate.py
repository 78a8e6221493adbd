"""``satmon evaluate DIR``: replay a simulator run and score risk (and hot-spot) quality against its ground truth."""

from __future__ import annotations

import argparse
import datetime
import json

HELP = "score a replay of a simulator run against its ground truth (ROC-AUC, PR-AUC, precision at top 5 percent, calibration, lead time, hot spots)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.config import add_flags

    parser.add_argument("dir", help="output directory of `satmon simulate`")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--no-hotspots", action="store_true", help="skip the hot-spot and drift section")
    add_flags(parser, ("partitions", "at_risk_threshold", "label_horizon_hours", "model_checkpoint"))


def run(args: argparse.Namespace) -> int:
    from monitor.config import from_args
    from monitor.evaluation import evaluate

    settings = from_args(args)
    result = {"risk": evaluate(args.dir, partitions=settings.partitions, settings=settings)}
    if not args.no_hotspots:
        from monitor.hotspots_eval import evaluate_hotspots

        result["hotspots"] = evaluate_hotspots(args.dir, partitions=settings.partitions)
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    r = result["risk"]
    print(f"risk, progressive ({r['truth']} truth):")
    for row in r["progressive"]:
        at = datetime.datetime.fromtimestamp(row["ts_ms"] / 1000, datetime.timezone.utc).strftime("%H:%M")
        print(f"  {at}: {row['rows']:>8,} rows  ROC-AUC {row['roc_auc']}  "
              f"precision@top-5% {row['precision_at_top_5pct']}")
    print(f"risk ({r['truth']} truth): ROC-AUC {r['roc_auc']}, PR-AUC {r['pr_auc']} (base rate {r['base_rate']}), "
          f"precision@top-5% {r['precision_at_top_5pct']}, ECE {r['expected_calibration_error']}, "
          f"median lead time {r['lead_time_minutes']['median']} min over {r['lead_time_minutes']['subscribers']} subscribers")
    e = r["events_truth"]
    print(f"      against later complaints/detractor answers within {e['horizon_hours']:g} h: ROC-AUC {e['roc_auc']} "
          f"(perfect satisfaction knowledge: {e.get('oracle_roc_auc')}), precision@top-5% {e['precision_at_top_5pct']} "
          f"(ceiling {e['precision_at_top_5pct_ceiling']})")
    print(f"      {r['events']:,} events, {r['scores_emitted']:,} scores, {r['labels_learned']} labels learned, "
          f"replay {r['replay_events_per_s']:,.0f} events/s")
    if "hotspots" in result:
        h = result["hotspots"]
        print(f"hot spots: recall {h.get('recall')}, precision {h.get('precision')}, median delay "
              f"{h.get('median_delay_windows')} windows, {h.get('false_alerts_per_1000_cell_hours')} false alerts/1000 cell-h")
    return 0
