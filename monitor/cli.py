"""The ``satmon`` command line.

Each sub-command is a module in :mod:`monitor.commands` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules import their heavy dependencies inside
``run`` so that ``satmon --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import monitor
import monitor.commands
from monitor.records.errors import MonitorError


def _command_modules():
    for info in sorted(pkgutil.iter_modules(monitor.commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield info.name, importlib.import_module(f"monitor.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="satmon",
        description="Streaming, real-time customer-satisfaction monitor for telecom operators.",
    )
    parser.add_argument("--version", action="version", version=f"satmon {monitor.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _command_modules():
        cmd = sub.add_parser(name.replace("_", "-"), help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except MonitorError as err:
        print(f"satmon {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
