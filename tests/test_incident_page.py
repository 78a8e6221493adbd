"""The page's Incidents section in headless Chromium, against a real server whose views hold what
the worker's pipeline produced 20 minutes into a simulated outage (tests/support/outage_traffic.py): the
incident with its cells, KPIs and start, its affected customers, and their CSV."""

from __future__ import annotations

import orjson
import pytest

from monitor.outreach.api import ApiConfig, build_api
from monitor.config import load
from monitor.records.events import encode
from monitor.detection.incidents import IncidentBoard
from monitor.outreach.store import OutreachPolicy, OutreachStore
from monitor.outreach.privacy import AuditLog, TokenStore
from monitor.outreach.view import HotspotBoard, RiskView
from support.outage_traffic import outage_run
from support.browser import login, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOKENS = {"noc": "noc-token-0123456789", "outreach": "outreach-token-0123456789"}


@pytest.fixture
def site(tmp_path):
    run = outage_run()
    now = run.onset_ms + 20 * 60_000          # the views as a worker has them 20 minutes into the outage
    view, board, incidents = RiskView(), HotspotBoard(), IncidentBoard()
    for s in run.scores:
        if s.ts_ms <= now:
            view.apply_raw(encode(s), 0, None)
    for at, a in run.emitted:
        if at <= now:
            board.apply_raw(encode(a))
    for at, i in run.incidents:
        if at <= now:
            incidents.apply_raw(encode(i))
    tokens = TokenStore.from_json(orjson.dumps({k: {"token": v, "role": k} for k, v in TOKENS.items()}))
    audit = AuditLog(tmp_path / "audit.jsonl")
    app = build_api(load({}), view, OutreachStore(), audit, hotspots=board, incidents=incidents, tokens=tokens,
                    policy=OutreachPolicy(holdout_share=0.1), config=ApiConfig(rate_burst=1000, rate_per_s=1000),
                    clock=lambda: now / 1000)
    with serve(app) as url:
        yield url, run, incidents
    audit.close()


def test_incidents_section_lists_the_outage_and_its_customers(browser, site, tmp_path):
    url, run, incidents = site
    [inc] = incidents.active()
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        login(page, url, TOKENS["outreach"])
        page.wait_for_selector("#incidents tbody tr")
        rows = page.locator("#incidents tbody tr")
        assert rows.count() == 1 and rows.first.get_attribute("data-incident") == inc.incident_id
        text = rows.first.inner_text()
        assert "metro" in text and "firing" in text
        assert all(c in text for c in run.cells) and all(k in text for k in inc.kpis)
        assert page.locator("#hotspots tbody tr").count() == len(run.cells)

        rows.first.locator("button").click()
        page.wait_for_selector("#affected-rows tbody tr")
        shown = page.locator("#affected-rows tbody tr")
        assert shown.count() > 0
        assert "contactable" in page.inner_text("#a-counts")
        with page.expect_download() as dl:
            page.click("#a-csv")
        csv_text = open(dl.value.path()).read()
        assert csv_text.startswith("subscriber_id,") and len(csv_text.strip().splitlines()) == shown.count() + 1
        # stricter filter: used the dark cells at least 3 times
        page.fill("#a-min-uses", "3")
        page.click("#a-apply")
        page.wait_for_timeout(500)
        assert page.locator("#affected-rows tbody tr").count() <= shown.count()
        assert errors == []
    finally:
        context.close()

    # the NOC sees the incident but no customers
    context = browser.new_context()
    page = context.new_page()
    try:
        login(page, url, TOKENS["noc"])
        page.wait_for_selector("#incidents tbody tr")
        assert page.locator("#incidents tbody tr button").count() == 0
    finally:
        context.close()
