"""The docs name what the code has: every module in docs/ARCHITECTURE.md's table (a newcomer finds the
one module that owns a behaviour there), every command in the README's command table and no command
the CLI does not have."""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import monitor
from monitor import cli

ROOT = Path(__file__).resolve().parents[1]


def modules() -> list[str]:
    """Every module of the package, as its path under monitor/ (``scoring/core.py``), but the
    sub-commands (one module each, named in the README's command table) and ``__main__``."""
    out = []
    for m in pkgutil.walk_packages(monitor.__path__, "monitor."):
        if m.ispkg or m.name.startswith("monitor.commands.") or m.name == "monitor.__main__":
            continue
        out.append(m.name.split(".", 1)[1].replace(".", "/") + ".py")
    return sorted(out)


def architecture_rows() -> list[tuple[str, str]]:
    """``(package cell, module cell)`` of the module table's rows (the package cell is empty on a
    package's second and later rows: it is carried down)."""
    rows, package = [], ""
    for line in (ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip()[1:-1].split("|")]
        if not line.startswith("|") or len(cells) < 3 or re.fullmatch(r"[-: ]+", cells[1]):
            continue
        package = cells[0] or package
        rows.append((package, cells[1]))
    return rows


def named_in_architecture() -> set[str]:
    named = set()
    for package, module in architecture_rows():
        folders = re.findall(r"`monitor/([a-z_]+)/`", package)
        top = re.findall(r"`monitor/([a-z_]+\.py)`", package)      # top-level modules name themselves
        named.update(top)
        if folders:
            named.update(f"{folders[0]}/{f}" for f in re.findall(r"`([a-z_]+\.py)`", module) if f not in top)
    return named


def test_every_module_is_in_the_architecture_table():
    missing = [m for m in modules() if m not in named_in_architecture()]
    assert not missing, f"docs/ARCHITECTURE.md's module table does not name {missing}"


def test_the_architecture_table_names_no_module_that_does_not_exist():
    gone = sorted(f for f in named_in_architecture() if not (ROOT / "monitor" / f).exists())
    assert not gone, f"docs/ARCHITECTURE.md names modules that do not exist: {gone}"


def test_the_readme_lists_every_command_and_no_other():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Commands"):]
    table = table[: table.index("\n## ", 3)]
    listed = set(re.findall(r"^\| `satmon ([a-z-]+)", table, re.M))
    commands = {name.replace("_", "-") for name, _ in cli._command_modules()}
    assert listed == commands, f"README lists {sorted(listed - commands)} that the CLI lacks, " \
                               f"and not {sorted(commands - listed)}"
