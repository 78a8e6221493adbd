"""The wheel: built from the source tree, installed into a fresh virtual environment outside it, run.

The dependencies are not installed again (that would take minutes): the new environment sees the
project venv's site-packages as a plain path entry, so its packages import but none of its ``.pth``
hooks run -- in particular not the editable install's, which would import ``monitor`` from the
source tree and hide a wheel that lacks files (how ``No module named 'monitor.commands'`` went
unseen)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools writes build/ and *.egg-info next to the sources
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info",
                                                             "build", ".pytest_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                   check=True, cwd=out, timeout=300)
    [whl] = out.glob("satmon-*.whl")
    return whl


def test_the_wheel_holds_every_subpackage_and_the_page(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "monitor").rglob("*.py")}
    assert on_disk - names == set()
    for data in ("monitor/outreach/web/index.html", "monitor/outreach/web/assets/app.js", "monitor/outreach/web/assets/style.css",
                 "monitor/sim/scenarios/default.yaml"):
        assert data in names


def test_the_installed_wheel_runs_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "project_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # install the wheel's files with the project's pip, into the new environment only
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(purelib),
                    str(wheel)], check=True, timeout=300)
    (env_dir / "bin" / "satmon").write_text(f"#!{py}\nfrom monitor.cli import main\nraise SystemExit(main())\n")
    (env_dir / "bin" / "satmon").chmod(0o755)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=300)

    where = run(str(py), "-c", "import monitor, monitor.commands, monitor.outreach.api; print(monitor.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(purelib)), where.stdout
    assert site.getsitepackages()   # the project's own environment is untouched
    helptext = run(str(env_dir / "bin" / "satmon"), "--help")
    assert helptext.returncode == 0, helptext.stderr
    for command in ("simulate", "replay", "evaluate", "worker", "demo", "detect"):
        assert command in helptext.stdout
    sim = run(str(env_dir / "bin" / "satmon"), "simulate", "--subscribers", "200", "--hours", "0.25",
              "--seed", "5", "--out", "sim")
    assert sim.returncode == 0, sim.stderr
    replay = run(str(env_dir / "bin" / "satmon"), "replay", "sim", "--out", "scores.jsonl")
    assert replay.returncode == 0, replay.stderr
    assert (work / "scores.jsonl").stat().st_size > 0
    page = run(str(py), "-c", "from monitor.outreach.api import WEB_DIR; print((WEB_DIR / 'assets' / 'app.js').is_file())")
    assert page.stdout.strip() == "True", page.stderr
