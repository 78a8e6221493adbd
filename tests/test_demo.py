"""The README's demo, walked through the way a newcomer and an outreach user would: ``satmon demo``
with two workers (embedded broker, simulator replaying the demo scenario's history, Prometheus and
Alertmanager from the Debian packages), then

* the NOC: both workers scraped by Prometheus, the rules loaded and healthy, the demo's incidents
  in Alertmanager (pushed by the workers) and firing in Prometheus;
* outreach: the top-100 at-risk list of a region as CSV from the CLI against either worker, some
  subscribers marked contacted on one worker and gone from the other's list, the page (headless
  Chromium) showing the same list; a ``noc`` token refused rows; every read in the audit logs.

One demo for the module (its history takes a minute or two to process).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from support.browser import CHROMIUM, chromium, login
from support.kafka import free_port

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
pytestmark = [
    pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600),
    pytest.mark.skipif(not (os.access(PROMETHEUS, os.X_OK) and os.access(ALERTMANAGER, os.X_OK)),
                       reason="Prometheus/Alertmanager Debian packages not installed"),
]
REGION = "metro"   # the demo scenario's outage region


class Demo:
    def __init__(self, root: Path) -> None:
        from monitor.commands.demo import HISTORY_DONE

        self.root = root
        self.port = free_port()
        env = dict(os.environ, SATMON_DATA_DIR=str(root))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "demo", "--workers", "2", "--web-port", str(self.port),
             "--subscribers", "10000", "--rate", "500"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:   # also keeps the pipe drained for the demo's whole life
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.append(line)
                if line.startswith(HISTORY_DONE):
                    ready.set()

        threading.Thread(target=read, name="demo-stdout", daemon=True).start()
        deadline = time.monotonic() + 420
        self.started = time.monotonic()
        while not ready.wait(0.5):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError("satmon demo did not process its history:\n" + "".join(self.lines[-30:]))
        self.history_s = time.monotonic() - self.started
        text = "".join(self.lines)
        self.workers = [f"http://127.0.0.1:{p}" for p in re.findall(r"worker \d+\s+http://127\.0\.0\.1:(\d+)/metrics", text)]
        self.prometheus = re.search(r"Prometheus\s+(http://\S+?)/\s", text).group(1)
        self.alertmanager = re.search(r"Alertmanager\s+(http://\S+?)/\s", text).group(1)
        self.tokens = dict(re.findall(r"(noc|outreach|admin)=([A-Za-z0-9_\-]+)", text.split("API tokens", 1)[1].split("\n", 1)[0]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = Demo(tmp_path_factory.mktemp("demo"))
    try:
        yield d
    finally:
        d.stop()
        assert d.proc.returncode == 0, "".join(d.lines[-30:])


def get_json(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def promql(demo: Demo, expr: str) -> list[dict]:
    answer = get_json(f"{demo.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def eventually(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(1)


def cli(demo: Demo, worker: int, role: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SATMON_TOKEN=demo.tokens[role])
    return subprocess.run([sys.executable, "-m", "monitor", "at-risk", "--url", demo.workers[worker], *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_noc_sees_both_workers_in_prometheus_and_the_incidents_in_alertmanager(demo: Demo) -> None:
    assert len(demo.workers) == 2
    ups = eventually(lambda: [r for r in promql(demo, 'up{job="satmon"}') if r["value"][1] == "1"] if len(
        promql(demo, 'up{job="satmon"} == 1')) == 2 else None, 60, "both workers up in Prometheus")
    assert len(ups) == 2
    # both workers consume (the consumer group split the partitions) and the metrics carry no ids
    per_worker = promql(demo, "sum by (instance) (satmon_ingest_events_decoded_total)")
    assert len(per_worker) == 2 and all(float(r["value"][1]) > 0 for r in per_worker)
    # the rules deploy/prometheus ships are loaded and evaluate without error
    groups = get_json(f"{demo.prometheus}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 9 and all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    # the workers pushed the demo's incidents to Alertmanager: hot spots in the outage region,
    # the region alert that groups them, and data drift in the drifting region
    alerts = get_json(f"{demo.alertmanager}/api/v2/alerts")
    names = {(a["labels"]["alertname"], a["labels"].get("region")) for a in alerts}
    assert ("SatmonHotSpotActive", REGION) in names and ("SatmonRegionDegraded", REGION) in names, names
    assert any(n == "SatmonDataDrift" for n, _ in names), names
    for a in alerts:
        assert a["annotations"]["summary"] and a["annotations"]["runbook_url"].endswith(".md")
        assert not any(k in a["labels"] for k in ("subscriber_id", "subscriber")), a["labels"]
    # and Prometheus sees them as firing (satmon_hotspot_active through the rules)
    firing = eventually(lambda: promql(demo, 'ALERTS{alertname="SatmonHotSpotActive",alertstate="firing"}'),
                        120, "a hot-spot alert firing in Prometheus")
    assert {r["metric"]["region"] for r in firing} >= {REGION}


def test_outreach_pulls_a_region_as_csv_from_either_worker_contacts_suppress_and_reads_are_audited(demo: Demo) -> None:
    def rows(worker: int) -> list[dict]:
        done = cli(demo, worker, "outreach", "--region", REGION, "--limit", "100", "--format", "csv")
        assert done.returncode == 0, done.stderr
        return list(csv.DictReader(io.StringIO(done.stdout)))

    # the view is built from risk-scores on each worker: the same complete list from both
    first = eventually(lambda: (lambda a, b: a if a and [r["subscriber_id"] for r in a] == [r["subscriber_id"] for r in b]
                                else None)(rows(0), rows(1)), 60, "the same list from both workers")
    assert 0 < len(first) <= 100
    assert all(r["region"] == REGION and r["reasons"] and r["reason_texts"] for r in first)
    scores = [float(r["score"]) for r in first]
    assert scores == sorted(scores, reverse=True)

    # mark the top three contacted on worker 0; worker 1 stops listing them (contact fatigue)
    marked = [r["subscriber_id"] for r in first[:3]]
    for sid in marked:
        body = json.dumps({"subscriber_id": sid, "channel": "call", "outcome": "reached"}).encode()
        req = urllib.request.Request(f"{demo.workers[0]}/api/v1/outreach", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {demo.tokens['outreach']}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 201
    eventually(lambda: not set(marked) & {r["subscriber_id"] for r in rows(1)}, 30,
               "contacts recorded on worker 0 suppress the list on worker 1")
    assert not set(marked) & {r["subscriber_id"] for r in rows(0)}

    # a noc token gets aggregates only: the CLI exits with a clear error
    refused = cli(demo, 1, "noc", "--region", REGION)
    assert refused.returncode == 2 and "403" in refused.stderr and "noc" in refused.stderr
    assert refused.stdout == ""

    # every read is in the answering worker's audit log: who, the filter, how many rows
    audit = [json.loads(line) for f in sorted(demo.root.glob("demo/workers/*/audit/audit.jsonl"))
             for line in f.read_text().splitlines() if line]
    reads = [e for e in audit if e["endpoint"] == "GET /api/v1/at-risk"]
    assert any(e["who"] == "outreach" and e["status"] == 200 and e["filter"].get("region") == REGION
               and e["rows"] == len(first) for e in reads)
    assert any(e["who"] == "noc" and e["status"] == 403 and e["rows"] == 0 for e in reads)
    contacts = [e for e in audit if e["endpoint"] == "POST /api/v1/outreach"]
    assert len(contacts) >= 3


@pytest.mark.browser
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")
def test_the_page_lists_the_region_and_marks_a_contact_against_the_demo(demo: Demo, tmp_path: Path) -> None:
    with chromium() as browser:
        page = browser.new_context(accept_downloads=True).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        login(page, demo.workers[1], demo.tokens["outreach"])
        page.wait_for_selector("#at-risk tbody tr")
        page.fill("#f-region", REGION)
        page.click("#apply")
        eventually(lambda: set(page.locator("#at-risk tbody tr td:nth-child(4)").all_inner_texts()) == {REGION},
                   15, "the region filter applied")
        target = page.locator("#at-risk tbody tr").first.get_attribute("data-sid")
        page.locator("#at-risk tbody tr").first.click()
        page.wait_for_selector(f"#d-id:has-text('{target}')")
        assert page.inner_text("#d-reasons").strip()
        page.click("#mark-contacted")
        page.wait_for_selector("#message:has-text('Recorded contact')")
        with page.expect_download() as info:
            page.click("#csv")
        path = tmp_path / "page.csv"
        info.value.save_as(path)
        lines = path.read_text().splitlines()
        assert lines[0].startswith("subscriber_id,score") and len(lines) > 1 and target not in path.read_text()
        assert errors == []
    # the contact made on the page (worker 1) suppresses the subscriber on worker 0 too
    eventually(lambda: target not in cli(demo, 0, "outreach", "--region", REGION, "--limit", "1000").stdout,
               30, "the page's contact reached worker 0")
