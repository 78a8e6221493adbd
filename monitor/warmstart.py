"""Pre-training the risk model from history: a CSV export of customer attributes with a label.

``satmon model warm-start --csv FILE --label COLUMN [--id COLUMN]`` streams the file once through
the same model type the workers run (:class:`monitor.core.RiskModel`: River logistic regression
starting at the rule-based prior), test-then-train, and saves a checkpoint the workers start from
(setting ``model_checkpoint``). Columns:

* the label: Yes/No, True/False, Y/N or 1/0 (any case); anything else, or a blank, is an error
  naming the line;
* the id column (``--id``) is never a feature; blank ids are an error, repeated ones are counted
  (a label log has one row per label, so a subscriber can appear more than once);
* a column ``kind`` with values ``complaint``/``survey`` (what ``satmon replay --labels-csv``
  writes) is label metadata, not a feature: complaint rows get the workers' complaint weight;
* a column whose name is one of satmon's stream features (:data:`monitor.features.FEATURES`, e.g.
  ``drops``, ``worst_moment``, ``complaints``) is taken as is, in the stream's units: its learned
  weight is what the workers use;
* any other column is numeric when every non-blank value parses as a number (standardised online,
  River's ``StandardScaler``), else categorical (one-hot ``column=value``); blanks are missing values.

Customer attributes the streams do not carry (tenure, contract, ...) help the prequential fit on the
file but cannot be used by the workers, which only see stream features; the report says which
columns transfer. ``satmon replay DIR --labels-csv FILE`` writes the labels a run learned, with
their feature snapshots, in exactly this format: the way to carry learning from one deployment (or a
backfill of recorded topics) to the next.
"""

from __future__ import annotations

import csv
import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from river import metrics, preprocessing

from monitor.core import RiskModel
from monitor.errors import ConfigError, MonitorError
from monitor.features import FEATURES, PRIOR_BIAS

FORMAT = "satmon-model-v1"
_TRUE = {"yes", "y", "true", "1", "1.0"}
_FALSE = {"no", "n", "false", "0", "0.0"}
_STREAM = frozenset(FEATURES)


class WarmStartError(MonitorError):
    """The CSV cannot be used; the message names the line and the column."""


def parse_label(text: str, line: int, column: str) -> bool:
    v = text.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    if not v:
        raise WarmStartError(f"line {line}: label column {column!r} is blank")
    raise WarmStartError(f"line {line}: label column {column!r} is {text!r}: expected Yes/No, True/False or 1/0")


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError([f"--csv {path}: {exc.strerror or exc}"]) from exc
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise WarmStartError(f"{path}: empty file (no header line)") from None
        except csv.Error as exc:
            raise WarmStartError(f"{path}: line 1: {exc}") from None
        header = [h.strip() for h in header]
        seen: set[str] = set()
        for h in header:
            if not h:
                raise WarmStartError(f"{path}: line 1: a column has no name")
            if h in seen:
                raise WarmStartError(f"{path}: line 1: column {h!r} appears twice")
            seen.add(h)
        yield 1, {h: h for h in header}
        try:
            for fields in reader:
                line = reader.line_num
                if not fields or all(not x.strip() for x in fields):
                    continue
                if len(fields) != len(header):
                    raise WarmStartError(f"{path}: line {line}: {len(fields)} fields, the header has {len(header)}")
                yield line, dict(zip(header, fields))
        except csv.Error as exc:
            raise WarmStartError(f"{path}: line {reader.line_num}: {exc}") from None


def _column_kinds(path: Path, skip: set[str]) -> dict[str, str]:
    """First pass: ``numeric`` or ``categorical`` per feature column (a column is numeric when
    every non-blank value is a finite number)."""
    kinds: dict[str, str] = {}
    for line, row in _rows(path):
        if line == 1:
            kinds = {c: "numeric" for c in row if c not in skip}
            continue
        for c, kind in kinds.items():
            if kind == "numeric":
                v = row[c].strip()
                if v and _number(v) is None:
                    if c in _STREAM:
                        raise WarmStartError(f"{path}: line {line}: stream feature column {c!r} is {row[c]!r}: "
                                             "expected a number")
                    kinds[c] = "categorical"
    return kinds


def warm_start(path: str | Path, *, label: str, id_column: str | None = None, lr: float = 0.02) -> dict[str, Any]:
    """Stream ``path`` once through a fresh :class:`RiskModel`; returns the report and the model
    (key ``checkpoint``: what :func:`save` writes)."""
    path = Path(path)
    header = next(_rows(path))[1]
    missing = [f"--{flag} {c!r}" for flag, c in (("label", label), ("id", id_column)) if c and c not in header]
    if missing:
        raise WarmStartError(f"{path}: no column {' or '.join(missing)} (columns: {', '.join(header)})")
    meta = "kind" if "kind" in header else None
    kinds = _column_kinds(path, {label, id_column, meta} - {None})
    model = RiskModel(lr=lr)
    scaler = preprocessing.StandardScaler()
    auc = metrics.ROCAUC()
    logloss = metrics.LogLoss()
    ids: set[str] = set()
    rows = positives = stream_rows = repeated = 0
    for line, row in _rows(path):
        if line == 1:
            continue
        y = parse_label(row[label], line, label)
        if id_column:
            key = row[id_column].strip()
            if not key:
                raise WarmStartError(f"{path}: line {line}: id column {id_column!r} is blank")
            repeated += key in ids
            ids.add(key)
        stream: dict[str, float] = {}
        numeric: dict[str, float] = {}
        x: dict[str, float] = {}
        for c, kind in kinds.items():
            v = row[c].strip()
            if not v:
                continue
            if c in _STREAM:
                stream[c] = float(v)
            elif kind == "numeric":
                numeric[c] = float(v)
            else:
                x[f"{c}={v}"] = 1.0
        if numeric:
            scaler.learn_one(numeric)
            x.update(scaler.transform_one(numeric))
        x.update(stream)
        p = model.model.predict_proba_one(x).get(True, 0.5)  # test ...
        auc.update(y, p)
        logloss.update(y, p)
        weight, survey = 1.0, True
        if meta:
            k = row[meta].strip()
            if k not in ("complaint", "survey"):
                raise WarmStartError(f"{path}: line {line}: column 'kind' is {row[meta]!r}: expected complaint or survey")
            survey = k == "survey"
            weight = 1.0 if survey else model.complaint_weight
        model.learn_row(x, y, stream=bool(stream), weight=weight, calibrate=survey)  # ... then train
        rows += 1
        positives += y
        stream_rows += bool(stream)
    if rows == 0:
        raise WarmStartError(f"{path}: no data rows")
    if positives in (0, rows):
        raise WarmStartError(f"{path}: every label is {'Yes' if positives else 'No'}: a model needs both classes")
    transfer = sorted(c for c in kinds if c in _STREAM)
    if not transfer:
        # nothing the workers can use: keep the stream model at the prior (a CSV's base rate of
        # churn is not the streams' base rate of dissatisfaction)
        model.model.intercept = PRIOR_BIAS
        model.refresh()
    return {
        "csv": str(path),
        "rows": rows,
        "positives": positives,
        "prequential_roc_auc": round(auc.get(), 4),
        "prequential_log_loss": round(logloss.get(), 4),
        "columns": {"stream_features": transfer,
                    "numeric": sorted(c for c, k in kinds.items() if k == "numeric" and c not in _STREAM),
                    "categorical": sorted(c for c, k in kinds.items() if k == "categorical")},
        "stream_rows": stream_rows,
        "repeated_ids": repeated,
        "checkpoint": {"format": FORMAT, "model": model, "scaler": scaler, "label": label, "rows": rows,
                       "stream_features": transfer},
    }


def save(checkpoint: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(pickle.dumps(checkpoint, protocol=5))
    tmp.replace(out)
    return out


_LOADED: dict[tuple[str, float], RiskModel] = {}


def load_model(path: str | Path) -> RiskModel:
    """The :class:`RiskModel` of a warm-start checkpoint (a fresh copy per call: each partition
    learns on its own). A checkpoint is a pickle: load only files you wrote (the operator's own)."""
    path = Path(path)
    try:
        stamp = (str(path.resolve()), path.stat().st_mtime)
    except OSError as exc:
        raise ConfigError([f"model_checkpoint {path}: {exc.strerror or exc}"]) from exc
    model = _LOADED.get(stamp)
    if model is None:
        try:
            data = pickle.loads(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 -- any unpickling failure means the same thing
            raise ConfigError([f"model_checkpoint {path}: not a satmon model checkpoint ({exc})"]) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("model"), RiskModel):
            raise ConfigError([f"model_checkpoint {path}: not a {FORMAT} checkpoint (write one with "
                               "`satmon model warm-start`)"])
        model = _LOADED[stamp] = data["model"]
    return pickle.loads(pickle.dumps(model, protocol=5))
