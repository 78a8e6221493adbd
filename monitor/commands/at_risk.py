"""``satmon at-risk``: fetch the at-risk list from a running worker (any worker: each has the whole list).

The token comes from ``--token-file`` or ``SATMON_TOKEN`` -- never a flag, so it stays out of shell
history and ``ps``. Pages are walked with the API's cursor, so the list is one consistent snapshot.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "print the at-risk subscribers of a running worker as CSV or JSON (needs an outreach/admin token)"
TOKEN_ENV = "SATMON_TOKEN"
DEFAULT_URL = "http://127.0.0.1:6066"
PAGE_MAX = 500  # the API's largest page


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"worker base URL (default {DEFAULT_URL})")
    parser.add_argument("--token-file", help=f"file holding the API token (else env {TOKEN_ENV})")
    parser.add_argument("--region", help="only this region")
    parser.add_argument("--segment", help="only this segment")
    parser.add_argument("--min-score", type=float, help="only scores at or above this (0-1)")
    parser.add_argument("--reason", help="only subscribers with this reason code")
    parser.add_argument("--not-contacted-since", help="leave out subscribers contacted at/after this date or epoch ms")
    parser.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    parser.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default csv)")
    parser.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")


def _token(args: argparse.Namespace) -> str:
    from monitor.records.errors import MonitorError

    if args.token_file:
        try:
            with open(args.token_file) as fh:
                token = fh.read().strip()
        except OSError as err:
            raise MonitorError(f"cannot read token file {args.token_file}: {err.strerror}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise MonitorError(f"no API token: pass --token-file FILE or set {TOKEN_ENV}")
    return token


def fetch(url: str, token: str, filters: dict[str, str], limit: int, timeout: float) -> list[dict]:
    """All rows (up to ``limit``) of the at-risk list, walking pages with the cursor."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from monitor.records.errors import MonitorError

    rows: list[dict] = []
    cursor = None
    while len(rows) < limit:
        params = {**filters, "limit": str(min(PAGE_MAX, limit - len(rows)))}
        if cursor:
            params["cursor"] = cursor
        req = urllib.request.Request(f"{url.rstrip('/')}/api/v1/at-risk?{urllib.parse.urlencode(params)}",
                                     headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                page = json.load(resp)
        except urllib.error.HTTPError as err:
            try:
                body = json.load(err)
                detail = f"{body.get('error')}: {body.get('detail')}"
            except ValueError:
                detail = err.reason
            raise MonitorError(f"{url} answered {err.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            raise MonitorError(f"cannot reach {url}: {getattr(err, 'reason', err)}") from None
        rows.extend(page["rows"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return rows[:limit]


def run(args: argparse.Namespace) -> int:
    import json

    from monitor.records.errors import MonitorError

    if args.limit < 1:
        raise MonitorError("--limit must be at least 1")
    filters = {k: str(v) for k, v in {
        "region": args.region, "segment": args.segment, "min_score": args.min_score, "reason": args.reason,
        "not_contacted_since": args.not_contacted_since}.items() if v is not None}
    rows = fetch(args.url, _token(args), filters, args.limit, args.timeout)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from monitor.outreach.api import csv_text

        sys.stdout.write(csv_text(rows))
    print(f"{len(rows)} at-risk subscriber(s)", file=sys.stderr)
    return 0
