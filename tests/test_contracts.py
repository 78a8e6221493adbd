"""The import contracts in pyproject.toml ([tool.importlinter]) hold: checked by import-linter, not by convention."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_a_pipeline_module_that_imports_faust_breaks_the_contract(tmp_path):
    # the same contracts over a copy of the package where the pipeline reaches for Faust
    shutil.copytree(ROOT / "monitor", tmp_path / "monitor", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    pipeline = tmp_path / "monitor" / "pipeline.py"
    pipeline.write_text(pipeline.read_text() + "\n\ndef _table():\n    import faust\n    return faust\n")
    r = lint_imports(tmp_path)
    assert r.returncode != 0 and "BROKEN" in r.stdout and "monitor.pipeline -> faust" in r.stdout, r.stdout


def test_an_outreach_module_that_reads_kafka_breaks_the_contract(tmp_path):
    # the view's feeder lived in monitor.outreach.view until 2026-12-07: putting a Kafka consumer
    # back there must fail CI (the feeder belongs to monitor.worker.viewfeed)
    shutil.copytree(ROOT / "monitor", tmp_path / "monitor", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    view = tmp_path / "monitor" / "outreach" / "view.py"
    view.write_text(view.read_text() + "\n\ndef _consumer():\n    from aiokafka import AIOKafkaConsumer\n    return AIOKafkaConsumer\n")
    r = lint_imports(tmp_path)
    assert r.returncode != 0 and "monitor.outreach.view -> aiokafka" in r.stdout, r.stdout
