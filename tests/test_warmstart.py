"""``satmon model warm-start``: a labelled CSV streamed once through the workers' model type, the
checkpoint the workers start from, and a clear error for every file it cannot use."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
import types
from pathlib import Path

import pytest

from monitor import simulate
from monitor.core import PartitionCore
from monitor.errors import ConfigError
from monitor.features import FEATURES, PRIOR_BIAS, PRIOR_WEIGHTS
from monitor.warmstart import WarmStartError, load_model, warm_start


def satmon(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def telco_csv(path: Path, rows: int = 3000, seed: int = 3, stream_columns: bool = True) -> Path:
    """A churn export in the shape operators have (ids, numbers, categories, blanks, Yes/No),
    plus two of satmon's stream features; churn depends on tenure, contract and drops."""
    rnd = random.Random(seed)
    header = ["customerID", "gender", "SeniorCitizen", "tenure", "Contract", "MonthlyCharges", "TotalCharges"]
    if stream_columns:
        header += ["drops", "worst_moment"]
    header.append("Churn")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(rows):
            tenure = rnd.randint(0, 72)
            contract = rnd.choice(["Month-to-month", "One year", "Two year"])
            monthly = round(rnd.uniform(20, 110), 2)
            drops = rnd.choice([0, 0, 0, 1, 2, 4])
            z = -1.0 - 0.04 * tenure + (1.2 if contract == "Month-to-month" else 0.0) + 0.02 * (monthly - 60)
            if stream_columns:
                z += 0.8 * drops
            churn = rnd.random() < 1 / (1 + 2.718 ** -z)
            row = [f"{i:04d}-X", rnd.choice(["Female", "Male"]), rnd.choice([0, 1]), tenure, contract, monthly,
                   "" if tenure == 0 else round(monthly * tenure, 2)]  # blanks, as in real exports
            if stream_columns:
                row += [drops, round(min(1.0, drops / 3), 3)]
            row.append("Yes" if churn else "No")
            w.writerow(row)
    return path


def test_warm_start_reports_prequential_auc_and_saves_a_checkpoint_workers_use(tmp_path):
    src = telco_csv(tmp_path / "churn.csv")
    out = tmp_path / "model.ckpt"
    r = satmon("model", "warm-start", "--csv", str(src), "--label", "Churn", "--id", "customerID",
               "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["rows"] == 3000 and 0 < report["positives"] < 3000
    assert report["prequential_roc_auc"] > 0.75  # learnable signal, scored before each row is learned
    assert report["columns"]["stream_features"] == ["drops", "worst_moment"]
    assert report["columns"]["numeric"] == ["MonthlyCharges", "SeniorCitizen", "TotalCharges", "tenure"]
    assert report["columns"]["categorical"] == ["Contract", "gender"]
    assert "customerID" not in json.dumps(report["columns"])  # the id is never a feature
    model = load_model(out)
    assert model.n_labels == 3000
    assert model._w[FEATURES.index("drops")] != PRIOR_WEIGHTS[FEATURES.index("drops")]
    # a partition starts from it (a copy each: partitions learn on their own)
    settings = types.SimpleNamespace(model_checkpoint=str(out))
    a, b = PartitionCore(0, settings=settings), PartitionCore(1, settings=settings)
    assert a.model.n_labels == 3000 and a.model is not b.model
    assert a.model._w == model._w
    # the human-readable report says the workers can start from it
    text = satmon("model", "warm-start", "--csv", str(src), "--label", "Churn", "--id", "customerID",
                  "--out", str(out))
    assert "prequential ROC-AUC" in text.stdout and "SATMON_MODEL_CHECKPOINT=" in text.stdout


def test_attributes_only_csv_leaves_the_stream_model_at_the_prior(tmp_path):
    report = warm_start(telco_csv(tmp_path / "c.csv", stream_columns=False), label="Churn", id_column="customerID")
    model = report["checkpoint"]["model"]
    assert report["columns"]["stream_features"] == []
    assert report["prequential_roc_auc"] > 0.7
    assert model._b == PRIOR_BIAS and model._w == list(PRIOR_WEIGHTS) and model.n_labels == 0


def test_label_log_from_a_replay_round_trips(tmp_path):
    run = tmp_path / "sim"
    simulate.write_files(simulate.SimConfig(subscribers=3000, hours=4, seed=5), run)
    labels = tmp_path / "labels.csv"
    r = satmon("replay", str(run), "--labels-csv", str(labels))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(labels)))
    assert rows and set(rows[0]) == {"subscriber_id", "label", "kind", *FEATURES}
    report = warm_start(labels, label="label", id_column="subscriber_id")
    assert report["rows"] == len(rows) and report["columns"]["stream_features"] == sorted(FEATURES)
    assert report["repeated_ids"] == len(rows) - len({r["subscriber_id"] for r in rows})
    assert report["prequential_roc_auc"] > 0.6


BAD_FILES = {
    "label_value": ("a,b,y\n1,x,Yes\n2,x,maybe\n", "line 3: label column 'y' is 'maybe': expected Yes/No"),
    "label_blank": ("a,y\n1,Yes\n2,\n", "line 3: label column 'y' is blank"),
    "ragged_row": ("a,b,y\n1,2,Yes\n1,No\n", "line 3: 2 fields, the header has 3"),
    "empty": ("", "empty file"),
    "header_only": ("a,y\n", "no data rows"),
    "one_class": ("a,y\n1,Yes\n2,yes\n", "every label is Yes"),
    "duplicate_column": ("a,a,y\n1,2,Yes\n", "column 'a' appears twice"),
    "stream_feature_text": ("drops,y\n1,Yes\nmany,No\n", "line 3: stream feature column 'drops' is 'many'"),
    "missing_label": ("a,b\n1,2\n", "no column --label 'y' (columns: a, b)"),
    "blank_id": ("id,a,y\nx,1,Yes\n,2,No\n", "line 3: id column 'id' is blank"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unusable_files_get_a_clear_error_naming_the_line(tmp_path, case):
    text, message = BAD_FILES[case]
    src = tmp_path / "bad.csv"
    src.write_text(text)
    id_col = ["--id", "id"] if case == "blank_id" else []
    r = satmon("model", "warm-start", "--csv", str(src), "--label", "y", *id_col, "--out", str(tmp_path / "m.ckpt"))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "m.ckpt").exists()  # nothing half-written


def test_missing_file_and_foreign_checkpoint_are_config_errors(tmp_path):
    r = satmon("model", "warm-start", "--csv", str(tmp_path / "nope.csv"), "--label", "y")
    assert r.returncode == 2 and "nope.csv" in r.stderr
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="not a satmon model checkpoint"):
        load_model(junk)
    with pytest.raises(ConfigError, match="No such file"):
        load_model(tmp_path / "absent.ckpt")
    with pytest.raises(WarmStartError, match="no column --label 'z'"):
        warm_start(telco_csv(tmp_path / "c.csv", rows=10), label="z")
