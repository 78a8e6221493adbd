"""The outreach API across two real worker processes: each owns half the partitions, yet either
answers the complete at-risk list; a contact recorded on one suppresses the subscriber on the other;
each read is in the audit log of the worker that served it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from support.kafka import Broker, produce, read_topic, run
from monitor.sim import simulate
from monitor.records.topics import partition_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKENS = {"noc": "noc-token-0123456789abcdef", "outreach": "outreach-token-0123456789abcdef",
          "admin": "admin-token-0123456789abcdef"}
SCENARIO = {"name": "two-outages", "incidents": [
    {"id": "o1", "type": "cell_outage", "onset": "30m", "end": "80m", "cells": 3, "severity": 1.0}]}


def call(port: int, path: str, role: str = "outreach", body: dict | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {TOKENS[role]}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, answer = resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        status, answer = err.code, json.loads(err.read() or b"null")
    if path.startswith("/api/v1/at-risk") and status != 429:   # rate-limited calls never reach a handler
        READS.setdefault(port, []).append((role, status, len(answer["rows"]) if status == 200 else 0))
    return status, answer


#: port -> [(role, status, rows)] of every at-risk read this test made (to check the audit logs)
READS: dict[int, list[tuple[str, int, int]]] = {}


def at_risk(port: int) -> list[str]:
    """The whole list, page after page (stable cursor)."""
    out: list[str] = []
    cursor = ""
    while True:
        status, body = call(port, "/api/v1/at-risk?limit=500" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, body
        out += [r["subscriber_id"] for r in body["rows"]]
        cursor = body.get("next_cursor")
        if not cursor:
            return out


def test_any_worker_serves_the_complete_list_and_contacts_suppress_everywhere(broker: Broker, workers: Any,
                                                                              tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({f"test-{role}": {"token": t, "role": role} for role, t in TOKENS.items()}))
    # the v2 people model: outcomes within minutes of their cause, so a 90-minute run has complaints
    config = simulate.SimConfig(subscribers=2000, hours=1.5, seed=8, scenario=SCENARIO, cells=20,
                                malformed_share=0, duplicate_share=0, late_share=0, world="v2")
    records = list(simulate.generate(config))
    # the list under test is the flagged one: at the default threshold (a calibrated 20 %) a
    # 90-minute world flags too few subscribers to land on all four partitions
    args = ("--tokens-file", str(tokens), "--at-risk-threshold", "0.05")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = workers(broker, app_id="t-api2", worker_id="wa", data_dir=tmp_path / "a", extra_args=args)
    b = workers(broker, app_id="t-api2", worker_id="wb", data_dir=tmp_path / "b", extra_args=args)
    for w in (a, b):
        w.wait_for(lambda w=w: w.total("satmon_worker_partitions_assigned") >= 1, timeout_s=60, what="partitions")
    run(produce(broker.bootstrap, records))
    a.wait_for(lambda: a.total("satmon_ingest_events_decoded_total") + b.total("satmon_ingest_events_decoded_total") >= len(records),
               timeout_s=120, what="all events processed by the pair")
    owned = {w.worker_id: w.total("satmon_worker_partitions_assigned") for w in (a, b)}
    assert owned == {"wa": 2, "wb": 2}

    # the truth: the latest score of every subscriber on risk-scores (all of them: the workers say how many)
    emitted = int(a.total("satmon_risk_scores_emitted_total") + b.total("satmon_risk_scores_emitted_total"))
    latest: dict[str, dict] = {}
    for r in sorted(run(read_topic(broker.bootstrap, "risk-scores", expect=emitted, timeout_s=60)),
                    key=lambda r: (r.partition, r.offset)):
        s = orjson.loads(r.value)
        latest[s["subscriber_id"]] = s
    truth = {sid for sid, s in latest.items() if s["at_risk"]}
    assert len({partition_for(sid.encode(), 4) for sid in truth}) == 4   # at-risk subscribers on every partition

    # the view is built from risk-scores, so it is eventually consistent: wait until both workers
    # serve the same list and it reflects every emitted score (nothing listed that is no longer at risk)
    def settled() -> bool:
        la = set(at_risk(a.port))
        return bool(la) and la == set(at_risk(b.port)) and la <= truth
    deadline = time.monotonic() + 30
    while not settled():
        assert time.monotonic() < deadline, ("the two workers' lists never agreed with risk-scores",
                                             sorted(set(at_risk(a.port)) - truth)[:5])
        time.sleep(0.5)
    listed = set(at_risk(a.port))
    # complete: every at-risk subscriber is listed, except the hold-out control group (flagged, 10 %)
    assert listed <= truth and len(listed) >= 0.8 * len(truth), (sorted(listed - truth)[:5], len(listed), len(truth))
    status, noc = call(b.port, "/api/v1/at-risk?limit=10", role="noc")
    assert status == 403                                        # noc: aggregates only

    top = at_risk(b.port)[0]
    status, rec = call(a.port, "/api/v1/outreach", body={"subscriber_id": top, "channel": "call", "outcome": "reached"})
    assert status == 201, rec
    deadline = time.monotonic() + 30
    while top in at_risk(b.port):                               # recorded on A, suppressed on B too
        assert time.monotonic() < deadline, "contact recorded on A never reached B"
        time.sleep(0.5)
    assert top not in at_risk(a.port)

    # outcomes (complaints, detractor answers) reach the effect report through the ingest path
    complaints = sum(1 for t, _k, v in records if t == "care-tickets" and orjson.loads(v)["action"] == "opened")
    assert complaints > 0
    status, effect = call(b.port, "/api/v1/outreach/effect", role="admin")
    assert status == 200, effect
    groups = effect["groups"]
    assert groups["treatment"]["subscribers"] + groups["control"]["subscribers"] > 0
    assert groups["treatment"]["complained"] + groups["control"]["complained"] > 0

    # every read -- served or refused -- is in the audit log of the worker that answered it, in order,
    # with who, the filter and the row count
    for w, root in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        entries = [json.loads(x) for x in (root / "audit" / "audit.jsonl").read_text().splitlines() if x]
        reads = [e for e in entries if e.get("endpoint", "").startswith("GET /api/v1/at-risk")]
        made = READS[w.port]
        assert [(e["who"], e["status"], e["rows"]) for e in reads] == [(f"test-{r}", st, n) for r, st, n in made]
        assert all("filter" in e and e["ts_ms"] > 0 for e in reads)
        assert any(e["status"] == 403 and e["role"] == "noc" for e in reads) == (w is b)
