"""The ``satmon`` command line, run as a user runs it: the venv's console script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitor import cli

SATMON = shutil.which("satmon", path=str(Path(sys.executable).parent)) or shutil.which("satmon")
NET = {"event_id": "e1", "subscriber_id": "s1", "ts_ms": 1_700_000_000_000, "cell_id": "c1",
       "region": "north", "radio": "5G", "service": "video", "rsrp_dbm": -95, "sinr_db": 12,
       "dl_mbps": 80, "ul_mbps": 10, "latency_ms": 30, "jitter_ms": 4, "packet_loss_pct": 0.1,
       "call_drop": False, "video_stall_s": 0}


def run(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATMON_")}
    return subprocess.run(list(argv), input=stdin.decode() if stdin is not None else None, capture_output=True,
                          text=True, timeout=60, env=env)


def command_names() -> list[str]:
    return [name.replace("_", "-") for name, _ in cli._command_modules()]


def test_satmon_is_installed_in_the_venv():
    assert SATMON is not None and Path(SATMON).parent == Path(sys.executable).parent


def test_help_lists_every_command():
    result = run(SATMON, "--help")
    assert result.returncode == 0, result.stderr
    assert "customer-satisfaction monitor" in result.stdout
    names = command_names()
    assert "validate" in names
    for name in names:
        assert f"    {name}" in result.stdout, name


def test_python_dash_m_monitor_is_the_same_cli():
    result = run(sys.executable, "-m", "monitor", "--help")
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in command_names())


def test_no_command_is_a_usage_error():
    result = run(SATMON)
    assert result.returncode == 2 and "usage: satmon" in result.stderr


def test_version():
    import monitor

    result = run(SATMON, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"satmon {monitor.__version__}"


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    lines = [
        json.dumps(NET),
        json.dumps({**NET, "rsrp_dbm": "abc"}),
        "",  # blank lines are skipped but still counted
        json.dumps({k: v for k, v in NET.items() if k != "cell_id"}),
        "{not json",
        json.dumps({**NET, "event_id": "e2", "extra": [1, 2]}),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_validate_prints_each_invalid_line_with_number_and_reason(mixed_file):
    result = run(SATMON, "validate", str(mixed_file), "--schema", "network_event.v1")
    assert result.returncode == 1
    out = result.stdout.splitlines()
    assert out == [
        f'{mixed_file}:2: $.rsrp_dbm: Expected `float` >= -156 and <= -31, got `str` "abc"',
        f"{mixed_file}:4: $.cell_id: Expected `str` of length 1..64, got nothing (missing required field)",
        f"{mixed_file}:5: not valid JSON: JSON is malformed: object keys must be strings (byte 1); "
        "found b'{not json'",
    ]
    assert "2 valid, 3 invalid (network_event.v1)" in result.stderr


def test_validate_quiet_prints_only_the_summary(mixed_file):
    result = run(SATMON, "validate", str(mixed_file), "--schema", "network_event.v1", "--quiet")
    assert result.returncode == 1 and result.stdout == ""
    assert "2 valid, 3 invalid" in result.stderr


def test_validate_all_valid_file_exits_0(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text("".join(json.dumps({**NET, "event_id": f"e{i}"}) + "\r\n" for i in range(5)))
    result = run(SATMON, "validate", str(path), "--schema", "network_event.v1")
    assert result.returncode == 0, result.stdout
    assert result.stdout == "" and "5 valid, 0 invalid" in result.stderr


def test_validate_reads_standard_input():
    body = (json.dumps(NET) + "\n" + json.dumps({**NET, "radio": "6G"}) + "\n").encode()
    result = run(SATMON, "validate", "-", "--schema", "network_event.v1", stdin=body)
    assert result.returncode == 1
    assert result.stdout.startswith('-:2: $.radio: Expected one of "2G"')


def test_validate_missing_file_is_a_clear_error_not_a_traceback(tmp_path):
    missing = tmp_path / "nope.jsonl"
    result = run(SATMON, "validate", str(missing), "--schema", "network_event.v1")
    assert result.returncode == 2
    assert result.stderr.strip() == f"satmon validate: error: cannot read {missing}: No such file or directory"
    assert "Traceback" not in result.stderr


def test_validate_a_directory_is_a_clear_error(tmp_path):
    result = run(SATMON, "validate", str(tmp_path), "--schema", "network_event.v1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot read" in result.stderr


def test_validate_rejects_an_unknown_schema_name(mixed_file):
    result = run(SATMON, "validate", str(mixed_file), "--schema", "network_event.v9")
    assert result.returncode == 2 and "invalid choice" in result.stderr


@pytest.mark.parametrize("schema", ["ticket_event.v1", "app_event.v1", "risk_score.v1", "alert.v1", "dead_letter.v1"])
def test_validate_every_schema_against_its_examples(tmp_path, schema):
    """The examples as one JSONL file: exactly the invalid one-line examples are reported."""
    examples = Path(__file__).resolve().parent.parent / "schemas" / "examples" / schema
    manifest = json.loads((examples / "manifest.json").read_text())
    lines, expect_invalid = [], []
    for name, entry in sorted(manifest.items()):
        text = (examples / name).read_bytes()
        try:
            one_line = json.dumps(json.loads(text))  # pretty-printed JSON to one line
        except ValueError:
            continue  # empty or not JSON: not representable as one line of a JSONL file
        lines.append(one_line)
        if not entry["valid"]:
            expect_invalid.append(len(lines))
    path = tmp_path / "examples.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run(SATMON, "validate", str(path), "--schema", schema)
    reported = [int(line.split(":")[1]) for line in result.stdout.splitlines()]
    assert reported == expect_invalid
    assert result.returncode == (1 if expect_invalid else 0)
