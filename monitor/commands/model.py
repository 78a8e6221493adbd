"""``satmon model warm-start``: pre-train the risk model from a historical CSV export."""

from __future__ import annotations

import argparse
import json

HELP = "risk model tools: warm-start (pre-train from a CSV of customer attributes with a label)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    ws = sub.add_parser("warm-start", help="stream a labelled CSV once through the risk model (test-then-train), "
                        "print the prequential ROC-AUC and save a checkpoint workers start from",
                        description="Columns named like satmon's stream features transfer to the workers; other "
                        "numeric columns are standardised, text columns one-hot encoded, blanks are missing values. "
                        "The label must be Yes/No, True/False or 1/0.")
    ws.add_argument("--csv", required=True, help="the CSV file (header line first)")
    ws.add_argument("--label", required=True, help="label column: Yes/No or 1/0 (churned, detractor, complained)")
    ws.add_argument("--id", dest="id_column", help="customer id column (never used as a feature; must be unique)")
    ws.add_argument("--out", help="checkpoint file to write (default: DATA_DIR/model/warm-start.ckpt)")
    ws.add_argument("--lr", type=float, default=None, help="SGD step in standardised units (default 0.05)")
    ws.add_argument("--outcome", default="churn", choices=("complaint", "detractor", "churn"),
                    help="which outcome the label is: stream-feature columns teach the workers' head of it")
    ws.add_argument("--check", type=int, metavar="SEED", default=None,
                    help="also compare one online pass with batch logistic regression: rows shuffled with "
                    "SEED, both fitted on 70%%, exact ROC-AUC on the other 30%%")
    ws.add_argument("--json", action="store_true", help="print the report as JSON")
    from monitor.config import add_flags

    add_flags(ws, ("data_dir",))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from monitor.config import from_args
    from monitor.scoring.warmstart import WARM_LR, check, save, warm_start

    settings = from_args(args)
    lr = args.lr if args.lr is not None else WARM_LR
    report = warm_start(args.csv, label=args.label, id_column=args.id_column, lr=lr, outcome=args.outcome)
    if args.check is not None:
        report["check"] = check(args.csv, label=args.label, id_column=args.id_column, seed=args.check, lr=lr)
    out = save(report.pop("checkpoint"), args.out or Path(settings.data_dir) / "model" / "warm-start.ckpt")
    report["checkpoint"] = str(out)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    cols = report["columns"]
    print(f"{report['rows']:,} rows ({report['positives']:,} positive) from {report['csv']}")
    print(f"prequential ROC-AUC {report['prequential_roc_auc']} (exact), log-loss {report['prequential_log_loss']}")
    if "check" in report:
        c = report["check"]
        print(f"hold-out (seed {c['seed']}, {c['train_rows']:,} rows learned, {c['test_rows']:,} scored): one online "
              f"pass {c['online_roc_auc']}, batch logistic regression {c['batch_logistic_roc_auc']} "
              f"(gap {c['gap']:+.4f})")
    print(f"columns: {len(cols['numeric'])} numeric ({len(cols['log1p'])} log1p), "
          f"{len(cols['categorical'])} categorical, "
          f"{len(cols['stream_features'])} stream features ({', '.join(cols['stream_features']) or 'none'})")
    if cols["stream_features"]:
        print(f"workers start from it: SATMON_MODEL_CHECKPOINT={out}")
    else:
        print("note: no column is a stream feature, so the workers' model stays at the prior; the checkpoint "
              f"({out}) holds the attribute model for reference only")
    return 0
