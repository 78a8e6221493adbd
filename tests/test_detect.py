"""``satmon detect``: score a timestamp,value CSV; change points with --drift; clear errors."""

from __future__ import annotations

import csv
import math
import random

import pytest

from monitor.cli import main
from monitor.commands.detect import parse_timestamp


def write(path, rows, header="timestamp,value"):
    path.write_text(header + "\n" + "".join(f"{t},{v}\n" for t, v in rows))
    return path


def series(n=300, spike=(150, 155), shift_at=220, fmt=lambda i: 1714557600 + 60 * i):
    rng = random.Random(1)
    out = []
    for i in range(n):
        v = 100 + 10 * math.sin(i / 30) + rng.gauss(0, 2)
        v += 40 if spike[0] <= i < spike[1] else 0
        v += 30 if i >= shift_at else 0
        out.append((fmt(i), f"{v:.2f}"))
    return out


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_scores_every_row_and_flags_the_incident(tmp_path):
    src = write(tmp_path / "kpi.csv", series())
    out = tmp_path / "scored.csv"
    assert main(["detect", str(src), "--out", str(out)]) == 0
    rows = read(out)
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score"] and len(rows) == 300
    scores = [float(r["anomaly_score"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    flagged = {i for i, s in enumerate(scores) if s >= 0.5}
    # the spike's onset fires; the points after it, and the shift 70 rows later, fall in the refractory
    # period (the incident is already reported), and the daily curve is normal
    assert 150 in flagged and not flagged & (set(range(10, 150)) | set(range(151, 300)))
    assert rows[7]["timestamp"] == str(1714557600 + 420) and rows[7]["value"] == series()[7][1]
    # without the refractory period the level shift's onset is the most anomalous row after the spike
    assert main(["detect", str(src), "--out", str(out), "--refractory", "0"]) == 0
    quiet = [float(r["anomaly_score"]) for r in read(out)]
    assert quiet[150] >= 0.5 and max(range(165, 300), key=quiet.__getitem__) in (220, 221)
    assert quiet[220] > max(quiet[10:150])


def test_input_order_is_kept_and_iso_or_ms_timestamps_agree(tmp_path):
    rows = series(n=200, shift_at=10_000)
    iso = [(f"2024-05-01T{10 + i // 60:02d}:{i % 60:02d}:00Z", v) for i, (_, v) in enumerate(rows)]
    ms = [(1714557600000 + 60_000 * i, v) for i, (_, v) in enumerate(rows)]
    shuffled = rows[:]
    random.Random(2).shuffle(shuffled)
    results = []
    for name, data in (("iso", iso), ("ms", ms), ("s", rows), ("shuffled", shuffled)):
        out = tmp_path / f"{name}.out"
        assert main(["detect", str(write(tmp_path / f"{name}.csv", data)), "--out", str(out)]) == 0
        results.append({parse_timestamp(r["timestamp"]): r["anomaly_score"] for r in read(out)})
        assert [r["timestamp"] for r in read(out)] == [str(t) for t, _ in data]
    assert results[0] == results[1] == results[2] == results[3]


def test_drift_mode_marks_the_change_point(tmp_path):
    rng = random.Random(4)
    rows = [(1714557600 + 60 * i, f"{(50 if i < 120 else 65) + rng.gauss(0, 1.5):.2f}") for i in range(200)]
    out = tmp_path / "cp.csv"
    assert main(["detect", "--drift", str(write(tmp_path / "x.csv", rows)), "--out", str(out)]) == 0
    got = read(out)
    assert list(got[0]) == ["timestamp", "value", "change_point"] and len(got) == 200
    points = [i for i, r in enumerate(got) if r["change_point"] == "1"]
    assert len(points) == 1 and 120 <= points[0] <= 125


@pytest.mark.parametrize("content,message", [
    ("time,val\n1,2\n", "missing column(s) timestamp, value"),
    ("timestamp,value\n1714557600,abc\n", ":2: value 'abc' is not a number"),
    ("timestamp,value\n1714557600,1\nyesterday,2\n", ":3: not an ISO-8601 or epoch timestamp: 'yesterday'"),
    ("timestamp,value\n1714557600,nan\n", "not a finite number"),
    ("timestamp,value\n", "no data rows"),
    ("", "empty file"),
    ("timestamp,value\n1714557600\n", ":2: expected 2 columns, got 1"),
])
def test_bad_csv_gives_a_clear_error(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    assert main(["detect", str(bad), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "satmon detect: error:" in err and message in err
    assert not (tmp_path / "o.csv").exists()


def test_missing_file(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "nope.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_extra_columns_and_case_are_tolerated(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("Cell,Timestamp,Value\n" + "".join(f"c1,{1714557600 + 60 * i},{10 + i % 3}\n" for i in range(30)))
    out = tmp_path / "o.csv"
    assert main(["detect", str(p), "--out", str(out)]) == 0
    assert len(read(out)) == 30


def test_parse_timestamp_forms():
    assert parse_timestamp("2024-05-01T10:00:00+02:00") == 1714550400000
    assert parse_timestamp("2024-05-01 10:00:00") == 1714557600000     # naive = UTC
    assert parse_timestamp("1714557600.5") == 1714557600500
    with pytest.raises(ValueError):
        parse_timestamp("inf")
