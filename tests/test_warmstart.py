"""``satmon model warm-start``: a labelled CSV streamed once through the workers' model type, the
checkpoint the workers start from, and a clear error for every file it cannot use."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.sim import simulate
from monitor.scoring.core import PartitionCore
from monitor.records.errors import ConfigError
from monitor.scoring.features import FEATURES
from monitor.scoring.risk import OnlineLogit, RiskModel, roc_auc
from monitor.scoring.warmstart import Encoder, WarmStartError, batch_logistic, check, load_model, warm_start


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
    assert model.n_labels == 3000 and model.n_positive["churn"] == report["positives"]
    assert model.heads["churn"].wa["drops"] > RiskModel().heads["churn"].wa["drops"]  # churn rises with drops
    assert model.heads["complaint"].wa == RiskModel().heads["complaint"].wa  # a churn file teaches churn only
    # a core starts from it
    a = PartitionCore(0, model_checkpoint=str(out))
    assert a.model.to_state() == model.to_state()
    # the human-readable report says the workers can start from it
    text = satmon("model", "warm-start", "--csv", str(src), "--label", "Churn", "--id", "customerID",
                  "--out", str(out))
    assert "prequential ROC-AUC" in text.stdout and "SATMON_MODEL_CHECKPOINT=" in text.stdout


def test_attributes_only_csv_leaves_the_stream_model_at_the_prior(tmp_path):
    report = warm_start(telco_csv(tmp_path / "c.csv", stream_columns=False), label="Churn", id_column="customerID")
    model = RiskModel.from_state(report["checkpoint"]["model"])
    assert report["columns"]["stream_features"] == []
    assert report["prequential_roc_auc"] > 0.7
    assert model.to_state() == RiskModel().to_state()


def test_label_log_from_a_replay_round_trips(tmp_path):
    run = tmp_path / "sim"
    simulate.write_files(simulate.SimConfig(subscribers=400, hours=30, seed=5), run)  # labels mature after 24 h
    labels = tmp_path / "labels.csv"
    r = satmon("replay", str(run), "--labels-csv", str(labels), "--no-hotspots")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(labels)))
    assert rows and set(rows[0]) == {"subscriber_id", "label", "kind", *FEATURES}
    report = warm_start(labels, label="label", id_column="subscriber_id")
    assert report["rows"] == len(rows) and report["columns"]["stream_features"] == sorted(FEATURES)
    assert report["repeated_ids"] == len(rows) - len({r["subscriber_id"] for r in rows})
    model = RiskModel.from_state(report["checkpoint"]["model"])
    assert model.n_labels == len(rows)  # each row teaches the head of its kind
    for o in ("complaint", "detractor", "churn"):
        assert model.n_positive[o] == sum(r["kind"] == o and r["label"] == "1" for r in rows)
    assert {r["kind"] for r in rows} == {"complaint", "detractor", "churn"}


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


def test_one_online_pass_matches_batch_logistic_regression_on_a_shuffled_export(tmp_path):
    src = telco_csv(tmp_path / "churn.csv", rows=4000)
    for seed in (0, 1):
        c = check(src, label="Churn", id_column="customerID", seed=seed)
        assert c["train_rows"] == 2800 and c["test_rows"] == 1200
        assert c["batch_logistic_roc_auc"] > 0.75
        assert abs(c["gap"]) <= 0.005, c


TELCO = Path(os.environ.get("TELCO_CHURN_CSV", "/nonexistent"))


@pytest.mark.skipif(not TELCO.is_file(), reason="TELCO_CHURN_CSV (the IBM Telco churn export) not set; see docs/MODEL.md")
def test_public_telco_export_within_0005_of_batch():
    gaps = [check(TELCO, label="Churn", id_column="customerID", seed=s)["gap"] for s in range(3)]
    assert max(abs(g) for g in gaps) <= 0.005, gaps


def test_one_hot_keys_are_never_zeroed_and_skewed_columns_logged():
    enc = Encoder({"plan": "categorical", "spend": "numeric", "flag": "numeric"})
    rows = [{"plan": "a" if i % 4 else "b", "spend": str(2 ** (i % 12)), "flag": str(i % 2)} for i in range(200)]
    for r in rows:
        enc.observe(r)
    enc.settle(rows)
    assert enc.scaling["spend"][0] is True and "flag" not in enc.scaling  # log1p; a 0/1 column is kept
    x, _ = enc.encode(rows[0])
    assert x["plan=b"] == 1.0 and x["flag"] == 0.0
    # the learner standardises with absent keys counted as zeros: a one-hot key always present
    # where it is set still carries signal (River's per-key StandardScaler maps it to 0)
    m = OnlineLogit(lr=0.1)
    for i in range(600):
        m.learn({"plan=b": 1.0} if i % 4 == 0 else {"plan=a": 1.0}, i % 4 == 0)
    assert m.predict({"plan=b": 1.0}) > 0.8 and m.predict({"plan=a": 1.0}) < 0.2


def test_exact_roc_auc_and_batch_reference():
    assert roc_auc([0, 1, 1, 0, 1], [0.1, 0.9, 0.8, 0.3, 0.2]) == pytest.approx(5 / 6)
    rnd = random.Random(1)
    xs = [{"a": rnd.gauss(0, 1)} for _ in range(500)]
    ys = [rnd.random() < 1 / (1 + math.exp(-2 * x["a"])) for x in xs]
    w = batch_logistic(xs, ys)
    assert 1.5 < w["a"] < 2.6
