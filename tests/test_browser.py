"""The outreach web page end to end in headless Chromium (Debian's ``/usr/bin/chromium`` driven by
the Python ``playwright`` package; its browser download is never used), against a real server."""

from __future__ import annotations

import random
import shutil

import orjson
import pytest

from monitor.outreach.api import ApiConfig, build_api
from monitor.config import load
from monitor.records.events import Reason, RiskScore
from monitor.outreach.store import OutreachPolicy, OutreachStore
from monitor.outreach.privacy import AuditLog, TokenStore
from monitor.outreach.view import HotspotBoard, RiskView
from support.browser import CHROMIUM, login, serve

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")]

T0 = 1_700_000_000_000
TOKENS = {"noc": "noc-token-0123456789", "outreach": "outreach-token-0123456789"}
XSS = '<img src=x onerror="document.title=\'pwned\'">'


@pytest.fixture
def site(tmp_path):
    view, store = RiskView(), OutreachStore()
    rng = random.Random(3)
    for i in range(80):
        s = round(rng.uniform(0.3, 1.0), 3)
        view.apply(RiskScore(subscriber_id=f"s{i:03d}", ts_ms=T0, scored_at_ms=T0, score=s, at_risk=s >= 0.5,
                             model_version=1, region=["north", "south"][i % 2], segment="consumer", cell_id="c1",
                             reasons=[Reason(code="video_stall", text="Video stalled 40 s in the last hour", contribution=0.3)]))
    view.apply(RiskScore(subscriber_id="s999", ts_ms=T0, scored_at_ms=T0, score=0.999, at_risk=True, model_version=1,
                         region="north", segment="consumer", reasons=[Reason(code="odd", text=XSS, contribution=0.1)]))
    tokens = TokenStore.from_json(orjson.dumps({k: {"token": v, "role": k} for k, v in TOKENS.items()}))
    audit = AuditLog(tmp_path / "audit.jsonl")
    app = build_api(load({}), view, store, audit, hotspots=HotspotBoard(), tokens=tokens,
                    policy=OutreachPolicy(holdout_share=0.0), config=ApiConfig(rate_burst=1000, rate_per_s=1000))
    with serve(app) as url:
        yield url, view, store
    audit.close()


def expect(locator):
    return playwright_sync.expect(locator)


def until(condition, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_outreach_flow_login_list_filter_detail_contact_csv_logout(browser, site, tmp_path):
    url, view, store = site
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{url}/")  # redirects to the page
        assert page.is_visible("#login") and not page.is_visible("#app")
        login(page, url, "wrong-token-0123456789")
        page.wait_for_selector("#login-error:has-text('invalid token')")
        assert page.evaluate("sessionStorage.getItem('satmon.token')") is None

        login(page, url, TOKENS["outreach"])
        page.wait_for_selector("#at-risk tbody tr")
        assert page.inner_text("#who") == "outreach" and page.inner_text("#role") == "outreach"
        assert page.evaluate("sessionStorage.getItem('satmon.token')") == TOKENS["outreach"]
        assert page.evaluate("localStorage.length") == 0
        assert page.locator("#at-risk tbody tr").count() == 25 and page.is_visible("#next-page")
        # A reason text with markup is shown as text, never run.
        first = page.locator("#at-risk tbody tr").first
        assert first.get_attribute("data-sid") == "s999" and XSS in first.inner_text()
        assert page.locator("#at-risk img").count() == 0 and page.title() != "pwned"

        page.click("#next-page")
        # (wait_for_function would need 'unsafe-eval', which the page's CSP rightly forbids)
        expect(page.locator("#at-risk tbody tr")).to_have_count(min(50, view.at_risk_count))

        page.fill("#f-region", "south")
        page.click("#apply")
        until(lambda: set(page.locator("#at-risk tbody tr td:nth-child(4)").all_inner_texts()) == {"south"})
        target = page.locator("#at-risk tbody tr").first.get_attribute("data-sid")
        page.locator("#at-risk tbody tr").first.click()
        page.wait_for_selector(f"#d-id:has-text('{target}')")
        assert "Video stalled" in page.inner_text("#d-reasons")
        assert page.locator("#d-history li").count() == 1

        page.select_option("#c-channel", "sms")
        page.select_option("#c-outcome", "resolved")
        page.click("#mark-contacted")
        page.wait_for_selector("#message:has-text('Recorded contact')")
        assert target not in page.locator("#at-risk tbody tr").evaluate_all("rows => rows.map(r => r.dataset.sid)")
        assert store.last_contact_ms(target) is not None and store.contacts(target)[0].by == "outreach"
        assert "sms: resolved" in page.inner_text("#d-contacts")

        with page.expect_download() as info:
            page.click("#csv")
        path = tmp_path / "dl.csv"
        info.value.save_as(path)
        lines = path.read_text().splitlines()
        assert lines[0].startswith("subscriber_id,score") and len(lines) > 1
        assert all(",south," in line for line in lines[1:]) and target not in path.read_text()

        page.reload()  # the token survives a reload of this tab
        page.wait_for_selector("#at-risk tbody tr")
        page.click("#logout")
        assert page.is_visible("#login") and not page.is_visible("#app")
        assert page.evaluate("sessionStorage.getItem('satmon.token')") is None
        assert errors == []
    finally:
        context.close()


def test_noc_token_sees_aggregates_but_no_subscriber_rows(browser, site):
    url, view, _ = site
    context = browser.new_context()
    page = context.new_page()
    try:
        login(page, url, TOKENS["noc"])
        page.wait_for_selector("#regions tbody tr")
        assert page.inner_text("#role") == "noc"
        assert page.is_visible("#noc-note") and not page.is_visible("#list")
        assert page.locator("#at-risk tbody tr").count() == 0
        counts = page.locator("#regions tbody tr").evaluate_all("rows => rows.map(r => r.textContent)")
        assert any("north" in c for c in counts)
        assert "s0" not in page.content() and "s999" not in page.content()
        # Even calling the API from the page with the noc token is refused.
        status = page.evaluate("""async () => (await fetch('../api/v1/at-risk',
            {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('satmon.token')}})).status""")
        assert status == 403
    finally:
        context.close()
