"""Pre-training the risk model from history: a CSV export of customer attributes with a label.

``satmon model warm-start --csv FILE --label COLUMN [--id COLUMN]`` reads the file twice: a first
pass settles each column's kind and scaling, a second streams the rows once, test-then-train,
through an :class:`~monitor.scoring.risk.OnlineLogit` (the learner the workers' heads use) and, for columns
named like stream features, through the workers' :class:`~monitor.scoring.risk.RiskModel` head of the
outcome the label is (``--outcome``, default churn). It reports the exact prequential ROC-AUC and
saves a checkpoint the workers start from (setting ``model_checkpoint``). ``--check SEED`` also
measures the one online pass against batch logistic regression under the same protocol (shuffle,
70 % to learn, 30 % to score). Columns:

* the label: Yes/No, True/False, Y/N or 1/0 (any case); anything else, or a blank, is an error
  naming the line;
* the id column (``--id``) is never a feature; blank ids are an error, repeated ones are counted
  (a label log has one row per label, so a subscriber can appear more than once);
* a column ``kind`` with values ``complaint``/``survey`` (what ``satmon replay --labels-csv``
  writes) is label metadata, not a feature: complaint rows get the workers' complaint weight;
* a column whose name is one of satmon's stream features (:data:`monitor.scoring.features.FEATURES`, e.g.
  ``drops``, ``worst_moment``, ``complaints``) is taken as is, in the stream's units: its learned
  weight is what the workers use;
* any other column is numeric when every non-blank value parses as a number, else categorical
  (one-hot ``column=value``, never rescaled). A numeric column with more than two values is
  standardised with the first pass's mean and deviation, after ``log1p`` when it is non-negative
  and right-skewed (skewness above :data:`SKEW_LOG`); a 0/1 column stays as it is; a blank is a
  ``column=missing`` indicator.

Customer attributes the streams do not carry (tenure, contract, ...) help the prequential fit on the
file but cannot be used by the workers, which only see stream features; the report says which
columns transfer. ``satmon replay DIR --labels-csv FILE`` writes the labels a run learned, with
their feature snapshots, in exactly this format: the way to carry learning from one deployment (or a
backfill of recorded topics) to the next.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from monitor.records.errors import ConfigError, MonitorError
from monitor.scoring.features import FEATURES
from monitor.scoring.risk import OUTCOMES, LabelRecord, OnlineLogit, RiskModel, roc_auc

FORMAT = "satmon-model-v2"
#: a non-negative numeric column more right-skewed than this is learned as log1p(value)
SKEW_LOG = 0.75
#: the warm-start learner's step in standardised coordinates (docs/MODEL.md)
WARM_LR = 0.05
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


class Encoder:
    """Column kinds and scaling settled by a first pass; :meth:`encode` turns a row into the
    learner's input (stream features as they are, in the stream's units)."""

    def __init__(self, kinds: dict[str, str]) -> None:
        self.kinds = kinds
        self._n: dict[str, list[float]] = {c: [0.0, 0.0, 0.0, 0.0, math.inf] for c, k in kinds.items()
                                           if k == "numeric" and c not in _STREAM}
        self._values: dict[str, set[float]] = {c: set() for c in self._n}
        #: per numeric column ``(log1p?, mean, std)``; 0/1 columns are absent (kept as they are)
        self.scaling: dict[str, tuple[bool, float, float]] = {}

    def observe(self, row: dict[str, str]) -> None:
        for c, acc in self._n.items():
            v = row[c].strip()
            if v:
                f = float(v)
                acc[0] += 1
                acc[1] += f
                acc[2] += f * f
                acc[3] += f * f * f
                acc[4] = min(acc[4], f)
                if len(self._values[c]) < 3:
                    self._values[c].add(f)

    def settle(self, rows: list[dict[str, str]] | None = None) -> None:
        """Fix the scaling from what :meth:`observe` saw (``rows``: a second look for the
        log-transformed columns' mean and deviation)."""
        for c, (n, s1, s2, s3, lo) in self._n.items():
            if n < 2 or self._values[c] <= {0.0, 1.0}:
                continue
            m = s1 / n
            var = max(s2 / n - m * m, 0.0)
            sd = math.sqrt(var)
            skew = (s3 / n - 3 * m * s2 / n + 2 * m ** 3) / sd ** 3 if sd > 0 else 0.0
            self.scaling[c] = (lo >= 0 and skew > SKEW_LOG, m, sd or 1.0)
        logged = [c for c, (lg, _, _) in self.scaling.items() if lg]
        if logged and rows is not None:
            for c in logged:
                vals = [math.log1p(float(r[c])) for r in rows if r[c].strip()]
                m = sum(vals) / len(vals)
                sd = math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)) or 1.0
                self.scaling[c] = (True, m, sd)

    def encode(self, row: dict[str, str]) -> tuple[dict[str, float], dict[str, float]]:
        """``(attribute features, stream features)`` of a row (the row is not modified)."""
        x: dict[str, float] = {}
        stream: dict[str, float] = {}
        for c, kind in self.kinds.items():
            v = row[c].strip()
            if c in _STREAM:
                if v:
                    stream[c] = float(v)
            elif not v:
                x[f"{c}=missing"] = 1.0
            elif kind == "numeric":
                f = float(v)
                sc = self.scaling.get(c)
                if sc is not None:
                    lg, m, sd = sc
                    f = ((math.log1p(f) if lg else f) - m) / sd
                x[c] = f
            else:
                x[f"{c}={v}"] = 1.0
        return x, stream


def _column_kinds(path: Path, skip: set[str]) -> Encoder:
    """First pass: ``numeric`` or ``categorical`` per feature column (a column is numeric when
    every non-blank value is a finite number) and the numeric columns' moments."""
    kinds: dict[str, str] = {}
    rows: list[dict[str, str]] = []
    for line, row in _rows(path):
        if line == 1:
            kinds = {c: "numeric" for c in row if c not in skip}
            continue
        rows.append(row)
        for c, kind in kinds.items():
            if kind == "numeric":
                v = row[c].strip()
                if v and _number(v) is None:
                    if c in _STREAM:
                        raise WarmStartError(f"{path}: line {line}: stream feature column {c!r} is {row[c]!r}: "
                                             "expected a number")
                    kinds[c] = "categorical"
    enc = Encoder(kinds)
    for row in rows:
        enc.observe(row)
    enc.settle(rows)
    return enc


def batch_logistic(rows: list[dict[str, float]], y: list[bool], *, l2: float = 1.0) -> dict[str, float]:
    """Batch logistic regression by Newton's method (L2 penalty ``l2/2 * |w|^2``, intercept free:
    scikit-learn's default ``C=1``); returns weights by key and ``"__bias__"``."""
    keys = sorted({k for x in rows for k in x})
    idx = {k: i for i, k in enumerate(keys)}
    A = np.zeros((len(rows), len(keys) + 1))
    A[:, -1] = 1.0
    for i, x in enumerate(rows):
        for k, v in x.items():
            A[i, idx[k]] = v
    t = np.asarray(y, dtype=float)
    pen = np.eye(len(keys) + 1) * l2
    pen[-1, -1] = 0.0
    w = np.zeros(len(keys) + 1)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(A @ w)))
        grad = A.T @ (p - t) + pen @ w
        hess = (A * (p * (1 - p))[:, None]).T @ A + pen + np.eye(len(w)) * 1e-9
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    out = {k: float(w[i]) for k, i in idx.items()}
    out["__bias__"] = float(w[-1])
    return out


def _batch_z(w: dict[str, float], x: dict[str, float]) -> float:
    return w["__bias__"] + sum(w.get(k, 0.0) * v for k, v in x.items())


def check(path: str | Path, *, label: str, id_column: str | None = None, seed: int = 0,
          test_fraction: float = 0.3, lr: float = WARM_LR) -> dict[str, Any]:
    """One online pass against batch logistic regression under the same protocol: the rows
    shuffled with ``seed``, the scaling and both fits from the first ``1 - test_fraction``, exact
    ROC-AUC of both on the rest. (Loads the file in memory.)"""
    path = Path(path)
    header = next(_rows(path))[1]
    meta = "kind" if "kind" in header else None
    data = [(line, row) for line, row in _rows(path) if line > 1]
    random.Random(seed).shuffle(data)
    cut = int(len(data) * (1 - test_fraction))
    train, test = data[:cut], data[cut:]
    skip = {label, id_column, meta} - {None}
    probe = _column_kinds(path, skip)  # kinds from the whole file; scaling refitted on train only
    enc = Encoder(probe.kinds)
    for _, row in train:
        enc.observe(row)
    enc.settle([row for _, row in train])

    def xy(part: list[tuple[int, dict[str, str]]]) -> tuple[list[dict[str, float]], list[bool]]:
        xs, ys = [], []
        for line, row in part:
            x, stream = enc.encode(row)
            x.update(stream)
            xs.append(x)
            ys.append(parse_label(row[label], line, label))
        return xs, ys

    xtr, ytr = xy(train)
    xte, yte = xy(test)
    online = OnlineLogit(lr=lr, average=len(xtr), scale=True)
    for x, y in zip(xtr, ytr):
        online.learn(x, y)
    batch = batch_logistic(xtr, ytr)
    a_online = roc_auc(yte, [online.z(x) for x in xte])
    a_batch = roc_auc(yte, [_batch_z(batch, x) for x in xte])
    return {"seed": seed, "train_rows": len(xtr), "test_rows": len(xte), "online_roc_auc": round(a_online, 4),
            "batch_logistic_roc_auc": round(a_batch, 4), "gap": round(a_batch - a_online, 4)}


def warm_start(path: str | Path, *, label: str, id_column: str | None = None, lr: float = WARM_LR,
               outcome: str = "churn") -> dict[str, Any]:
    """Stream ``path`` once, test-then-train; returns the report and the checkpoint (key
    ``checkpoint``: what :func:`save` writes). Rows with stream features teach the workers' head
    of ``outcome`` (or of the row's ``kind`` column: complaint, detractor/survey, churn)."""
    if outcome not in OUTCOMES:
        raise WarmStartError(f"--outcome {outcome!r}: expected one of {', '.join(OUTCOMES)}")
    path = Path(path)
    header = next(_rows(path))[1]
    missing = [f"--{flag} {c!r}" for flag, c in (("label", label), ("id", id_column)) if c and c not in header]
    if missing:
        raise WarmStartError(f"{path}: no column {' or '.join(missing)} (columns: {', '.join(header)})")
    meta = "kind" if "kind" in header else None
    enc = _column_kinds(path, {label, id_column, meta} - {None})
    kinds = enc.kinds
    attributes = OnlineLogit(lr=lr, average=1 << 30, scale=True)  # Polyak: the mean of all iterates
    model = RiskModel()
    ids: set[str] = set()
    ys: list[bool] = []
    ps: list[float] = []
    logloss = 0.0
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
        head = outcome
        if meta:
            k = row[meta].strip()
            head = {"survey": "detractor"}.get(k, k)
            if head not in OUTCOMES:
                raise WarmStartError(f"{path}: line {line}: column 'kind' is {row[meta]!r}: expected "
                                     f"{', '.join(OUTCOMES)} or survey")
        x, stream = enc.encode(row)
        x.update(stream)
        p = attributes.predict(x)  # test ...
        ys.append(y)
        ps.append(p)
        q = min(max(p, 1e-9), 1 - 1e-9)
        logloss += -math.log(q if y else 1 - q)
        attributes.learn(x, y)  # ... then train
        if stream:
            vec = [stream.get(f, 0.0) for f in FEATURES]
            model.learn(LabelRecord(ts_ms=0, x=vec, y=[int(y) if o == head else 0 for o in OUTCOMES]),
                        only=head)
            stream_rows += 1
        rows += 1
        positives += y
    if rows == 0:
        raise WarmStartError(f"{path}: no data rows")
    if positives in (0, rows):
        raise WarmStartError(f"{path}: every label is {'Yes' if positives else 'No'}: a model needs both classes")
    transfer = sorted(c for c in kinds if c in _STREAM)
    return {
        "csv": str(path),
        "rows": rows,
        "positives": positives,
        "outcome": outcome,
        "prequential_roc_auc": round(roc_auc(ys, ps), 4),
        "prequential_log_loss": round(logloss / rows, 4),
        "columns": {"stream_features": transfer,
                    "numeric": sorted(c for c, k in kinds.items() if k == "numeric" and c not in _STREAM),
                    "log1p": sorted(c for c, (lg, _, _) in enc.scaling.items() if lg),
                    "categorical": sorted(c for c, k in kinds.items() if k == "categorical")},
        "stream_rows": stream_rows,
        "repeated_ids": repeated,
        "checkpoint": {"format": FORMAT, "model": model.to_state(), "attributes": attributes.to_state(),
                       "label": label, "outcome": outcome, "rows": rows, "stream_features": transfer},
    }


def save(checkpoint: dict[str, Any], out: str | Path) -> Path:
    """Write a checkpoint (msgpack: data only, nothing executable)."""
    import msgspec

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(msgspec.msgpack.encode(checkpoint))
    tmp.replace(out)
    return out


_LOADED: dict[tuple[str, float], dict[str, Any]] = {}


def load_model(path: str | Path) -> RiskModel:
    """The :class:`RiskModel` of a warm-start checkpoint (a fresh object per call)."""
    import msgspec

    path = Path(path)
    try:
        stamp = (str(path.resolve()), path.stat().st_mtime)
    except OSError as exc:
        raise ConfigError([f"model_checkpoint {path}: {exc.strerror or exc}"]) from exc
    state = _LOADED.get(stamp)
    if state is None:
        try:
            data = msgspec.msgpack.decode(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 -- any decoding failure means the same thing
            raise ConfigError([f"model_checkpoint {path}: not a satmon model checkpoint ({exc})"]) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("model"), dict):
            raise ConfigError([f"model_checkpoint {path}: not a {FORMAT} checkpoint (write one with "
                               "`satmon model warm-start`)"])
        state = _LOADED[stamp] = data["model"]
    try:
        return RiskModel.from_state(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError([f"model_checkpoint {path}: {exc}"]) from exc
