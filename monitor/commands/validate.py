"""``satmon validate FILE.jsonl --schema NAME``: check every line of a JSONL file against a schema."""

from __future__ import annotations

import argparse
import sys

HELP = "check every line of a JSONL file against a schema; exit 1 if any line is invalid"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.records.events import RECORD_TYPES

    parser.add_argument("file", help="JSONL file, one record per line ('-' for standard input)")
    parser.add_argument("--schema", required=True, choices=sorted(RECORD_TYPES), help="schema name")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def run(args: argparse.Namespace) -> int:
    from monitor.records.errors import InvalidEventError, MonitorError
    from monitor.records.events import decode

    try:
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    except OSError as err:  # reported by the CLI as "satmon validate: error: ...", exit 2
        raise MonitorError(f"cannot read {args.file}: {err.strerror or err}") from None
    valid = invalid = 0
    with stream:
        for lineno, line in enumerate(stream, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                decode(args.schema, line)
                valid += 1
            except InvalidEventError as err:
                invalid += 1
                if not args.quiet:
                    print(f"{args.file}:{lineno}: {err.reason}")
    print(f"{valid} valid, {invalid} invalid ({args.schema})", file=sys.stderr)
    return 1 if invalid else 0
