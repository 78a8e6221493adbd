"""The HTTP API against a real aiohttp server, fed with RiskScore records: roles, audit, outreach
suppression, do-not-contact, hold-out, cursor walks, validation, rate limits."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import random
from typing import Any

import orjson
import pytest

from monitor.outreach.api import API_KEY, ApiConfig
from monitor.records.events import Alert, Reason, RiskScore
from monitor.outreach.store import OutreachPolicy, OutreachRecord
from support.api import DAY, T0, TOKENS, Env, auth, get_json, run, score


async def walk(client, role="outreach", limit=7, between=None, **filters) -> list[str]:
    rows, cursor, n = [], None, 0
    while True:
        body = await get_json(client, "/api/v1/at-risk", role, limit=str(limit), **filters,
                              **({"cursor": cursor} if cursor else {}))
        rows += [r["subscriber_id"] for r in body["rows"]]
        cursor = body["next_cursor"]
        if not cursor:
            return rows
        n += 1
        if between:
            between(n)


# --------------------------------------------------------------------------- auth and roles

ENDPOINTS = [  # (method, path, body, expected status per role noc/outreach/admin)
    ("GET", "/api/v1/whoami", None, (200, 200, 200)),
    ("GET", "/api/v1/summary", None, (200, 200, 200)),
    ("GET", "/api/v1/hotspots", None, (200, 200, 200)),
    ("GET", "/api/v1/outreach/effect", None, (200, 200, 200)),
    ("GET", "/api/v1/at-risk", None, (403, 200, 200)),
    ("GET", "/api/v1/worklist", None, (403, 200, 200)),
    ("GET", "/api/v1/subscribers/s001", None, (403, 200, 200)),
    ("GET", "/api/v1/hotspots/c1/affected", None, (403, 200, 200)),
    ("POST", "/api/v1/outreach", {"subscriber_id": "s002", "channel": "sms", "outcome": "no_answer"}, (403, 201, 201)),
    ("POST", "/api/v1/consent", {"subscriber_id": "s003", "do_not_contact": True}, (403, 201, 201)),
    ("POST", "/api/v1/consent", {"subscriber_id": "s003", "do_not_contact": False, "reason": "recorded_in_error"},
     (403, 403, 201)),
    ("GET", "/api/v1/audit", None, (403, 403, 200)),
]


def test_roles_matrix_and_authentication(tmp_path):
    env = Env(tmp_path)
    env.populate()
    env.hotspots.apply(_alert("c1"))

    async def scenario(client):
        for method, path, body, expected in ENDPOINTS:
            env.now += 10  # two failed logins per endpoint: let the address's lockout bucket refill
            resp = await client.request(method, path, json=body)
            assert resp.status == 401, path
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await resp.json())["error"] == "unauthorized"
            resp = await client.request(method, path, json=body, headers={"Authorization": "Bearer wrong-token-0123456789"})
            assert resp.status == 401
            for role, status in zip(("noc", "outreach", "admin"), expected):
                resp = await client.request(method, path, json=body, headers=auth(role))
                assert resp.status == status, (role, path, await resp.text())
                assert resp.headers["Cache-Control"] == "no-store"
                if status == 403:
                    data = await resp.json()
                    assert data["error"] == "forbidden" and role in data["detail"]
        # A noc token sees no subscriber id anywhere it is allowed.
        for path in ("/api/v1/summary", "/api/v1/hotspots", "/api/v1/outreach/effect"):
            text = await (await client.get(path, headers=auth("noc"))).text()
            assert "s0" not in text, path
        me = await get_json(client, "/api/v1/whoami", "noc")
        assert me == {"name": "noc", "role": "noc"}

    run(env, scenario)


def test_every_row_read_and_write_is_audited_with_who_what_and_count(tmp_path):
    env = Env(tmp_path)
    env.populate()
    env.hotspots.apply(_alert("c1"))

    async def scenario(client):
        await get_json(client, "/api/v1/at-risk", region="north", limit="5")
        await get_json(client, "/api/v1/subscribers/s001")
        await get_json(client, "/api/v1/hotspots/c1/affected", "admin")
        await get_json(client, "/api/v1/at-risk", "noc", status=403)
        await get_json(client, "/api/v1/summary")  # aggregates: not audited
        await get_json(client, "/api/v1/subscribers/nobody", status=404)
        entries = env.audit_entries()
        assert [(e["who"], e["endpoint"], e["status"], e["rows"]) for e in entries] == [
            ("outreach", "GET /api/v1/at-risk", 200, 5),
            ("outreach", "GET /api/v1/subscribers/{sid}", 200, 1),
            ("admin", "GET /api/v1/hotspots/{cell}/affected", 200, len(env.view.on_cell("c1"))),
            ("noc", "GET /api/v1/at-risk", 403, 0),
            ("outreach", "GET /api/v1/subscribers/{sid}", 404, 0),
        ]
        assert entries[0]["filter"] == {"region": "north", "limit": 5, "format": "json"}
        assert entries[1]["subject"] == "s001"
        assert all(e["ts_ms"] > 0 for e in entries)
        # The audit log itself is readable by admin only, and reading it is audited too.
        body = await get_json(client, "/api/v1/audit", "admin", limit="3")
        assert [e["endpoint"] for e in body["entries"]][-1] == "GET /api/v1/subscribers/{sid}"
        assert env.audit_entries()[-1]["endpoint"] == "GET /api/v1/audit"
        raw = env.audit_path.read_text()
        assert all(token not in raw for token in TOKENS.values())

    run(env, scenario)


def test_no_data_is_served_when_the_audit_log_cannot_be_written(tmp_path):
    env = Env(tmp_path)
    env.populate()
    os.close(env.audit._fd)
    env.audit._fd = os.open(os.devnull, os.O_RDONLY)  # writes now fail with EBADF

    async def scenario(client):
        body = await get_json(client, "/api/v1/at-risk", status=503)
        assert body["error"] == "audit_unavailable" and "rows" not in body

    run(env, scenario)


# --------------------------------------------------------------------------- lists, outreach, consent


def test_list_is_ranked_filtered_and_complete(tmp_path):
    env = Env(tmp_path)
    env.populate(60)

    async def scenario(client):
        rows = (await get_json(client, "/api/v1/at-risk", limit="500"))["rows"]
        expected = sorted(((-e.latest.score, sid) for sid in _ids(env) if (e := env.view.get(sid)).latest.at_risk))
        assert [r["subscriber_id"] for r in rows] == [sid for _, sid in expected]
        r0 = rows[0]
        assert set(r0) >= {"score", "reasons", "at_risk_since_ms", "region", "segment", "group"}
        assert r0["reasons"][0]["text"].endswith("explained") and r0["at_risk_since_ms"] == T0
        north = (await get_json(client, "/api/v1/at-risk", region="north", segment="business", min_score="0.7",
                                reason="video_stall"))["rows"]
        assert north and all(r["region"] == "north" and r["segment"] == "business" and r["score"] >= 0.7
                             and r["reasons"][0]["code"] == "video_stall" for r in north)
        assert len(await walk(client, limit=4)) == len(rows)
        text = await get_json(client, "/api/v1/at-risk", format="csv", limit="500")
        parsed = list(csv.DictReader(io.StringIO(text)))
        assert [p["subscriber_id"] for p in parsed] == [r["subscriber_id"] for r in rows]
        assert parsed[0]["at_risk_since"] == "2023-11-14T22:13:20Z"

    run(env, scenario)


def test_contact_suppresses_for_the_fatigue_window_and_not_contacted_since_filter(tmp_path):
    env = Env(tmp_path)
    env.populate()

    async def scenario(client):
        top = (await get_json(client, "/api/v1/at-risk"))["rows"][0]["subscriber_id"]
        resp = await client.post("/api/v1/outreach", json={"subscriber_id": top, "channel": "call", "outcome": "reached"},
                                 headers=auth("outreach"))
        assert resp.status == 201
        rec = await resp.json()
        assert rec["by"] == "outreach" and rec["kind"] == "contact"
        ids = [r["subscriber_id"] for r in (await get_json(client, "/api/v1/at-risk", limit="500"))["rows"]]
        assert top not in ids
        detail = await get_json(client, f"/api/v1/subscribers/{top}")
        assert detail["suppressed"] == "recently_contacted" and detail["contacts"][0]["channel"] == "call"
        env.now += 15 * 86_400  # past the 14-day window
        rows = (await get_json(client, "/api/v1/at-risk", limit="500"))["rows"]
        back = next(r for r in rows if r["subscriber_id"] == top)
        assert back["last_contact_ms"] == rec["ts_ms"]
        since = await get_json(client, "/api/v1/at-risk", limit="500", not_contacted_since="2023-11-01")
        assert top not in [r["subscriber_id"] for r in since["rows"]]

    run(env, scenario)


def test_do_not_contact_is_honoured_by_every_endpoint(tmp_path):
    env = Env(tmp_path)
    env.populate()
    env.hotspots.apply(_alert("c1", start=T0 - 1))
    victim = next(sid for sid, _ in env.view.on_cell("c1") if env.view.get(sid).latest.at_risk)

    async def scenario(client):
        assert victim in await walk(client)
        resp = await client.post("/api/v1/consent", json={"subscriber_id": victim, "do_not_contact": True},
                                 headers=auth("outreach"))
        assert resp.status == 201
        for role in ("outreach", "admin"):
            assert victim not in await walk(client, role)
            assert victim not in await get_json(client, "/api/v1/at-risk", role, format="csv", limit="500")
            affected = await get_json(client, "/api/v1/hotspots/c1/affected", role, limit="500")
            assert victim not in [r["subscriber_id"] for r in affected["rows"]]
            assert (await get_json(client, f"/api/v1/subscribers/{victim}", role, status=403))["error"] == "do_not_contact"
            resp = await client.post("/api/v1/outreach", headers=auth(role),
                                     json={"subscriber_id": victim, "channel": "sms", "outcome": "reached"})
            assert resp.status == 409 and (await resp.json())["error"] == "do_not_contact"
        # An opt-out recorded as a contact outcome has the same effect.
        other = (await get_json(client, "/api/v1/at-risk"))["rows"][0]["subscriber_id"]
        await client.post("/api/v1/outreach", json={"subscriber_id": other, "channel": "call", "outcome": "opted_out"},
                          headers=auth("outreach"))
        env.now += 100 * 86_400
        assert other not in await walk(client)
        # Consent given again: an outreach token cannot lift it, an admin without a reason neither;
        # an admin with a reason can, and both attempts are audited with who, reason and status.
        resp = await client.post("/api/v1/consent", headers=auth("outreach"),
                                 json={"subscriber_id": victim, "do_not_contact": False, "reason": "subscriber_request"})
        assert resp.status == 403
        assert victim not in await walk(client)
        resp = await client.post("/api/v1/consent", json={"subscriber_id": victim, "do_not_contact": False},
                                 headers=auth("admin"))
        assert resp.status == 400 and "reason" in (await resp.json())["detail"]
        resp = await client.post("/api/v1/consent", headers=auth("admin"),
                                 json={"subscriber_id": victim, "do_not_contact": False, "reason": "subscriber_request"})
        assert resp.status == 201
        lifts = [e for e in env.audit_entries() if e["endpoint"] == "POST /api/v1/consent"
                 and e["filter"] == {"do_not_contact": False}]
        assert [(e["role"], e["status"], e.get("reason")) for e in lifts] == [
            ("outreach", 403, "subscriber_request"), ("admin", 400, None), ("admin", 201, "subscriber_request")]
        assert victim in await walk(client)

    run(env, scenario)


def test_control_group_is_withheld_deterministically_and_flagged(tmp_path):
    env = Env(tmp_path, holdout=0.3)
    env.populate(80)
    at_risk = {sid for sid in _ids(env) if env.view.get(sid).latest.at_risk}
    control = {sid for sid in at_risk if OutreachPolicy(holdout_share=0.3, holdout_key=b"test-holdout-key").in_control(sid)}
    assert 0 < len(control) < len(at_risk)

    async def scenario(client):
        listed = set(await walk(client))
        assert listed == at_risk - control
        for sid in control:
            detail = await get_json(client, f"/api/v1/subscribers/{sid}")
            assert detail["group"] == "control" and detail["suppressed"] == "control_group"
        rows = (await get_json(client, "/api/v1/at-risk", limit="500"))["rows"]
        assert {r["group"] for r in rows} == {"treatment"}
        effect = await get_json(client, "/api/v1/outreach/effect", "noc")
        assert effect["groups"]["control"]["subscribers"] == len(control)
        assert effect["groups"]["treatment"]["subscribers"] == len(at_risk) - len(control)

    run(env, scenario)


def test_effect_counts_outcomes_after_becoming_at_risk(tmp_path):
    env = Env(tmp_path, holdout=0.5)
    env.populate(60)
    cohort = [sid for sid in _ids(env) if env.view.get(sid).latest.at_risk]
    for sid in cohort:
        if env.policy.in_control(sid):
            env.store.apply(OutreachRecord(record_id=f"o{sid}", kind="outcome", subscriber_id=sid, ts_ms=T0 + DAY,
                                           event="complaint"))

    async def scenario(client):
        g = (await get_json(client, "/api/v1/outreach/effect"))["groups"]
        assert g["control"]["complained_share"] == 1.0 and g["treatment"]["complained_share"] == 0.0

    run(env, scenario)


# --------------------------------------------------------------------------- cursor walks


def test_cursor_walk_is_stable_under_concurrent_updates(tmp_path):
    env = Env(tmp_path)
    env.populate(150)
    rng = random.Random(9)

    async def scenario(client):
        expected = [r["subscriber_id"] for r in (await get_json(client, "/api/v1/at-risk", limit="500"))["rows"]]

        def churn(n: int) -> None:
            for _ in range(25):
                i = rng.randrange(170)
                env.view.apply(score(f"s{i:03d}", round(rng.uniform(0.2, 1.0), 3), ts=T0 + n,
                                     region=["north", "south"][i % 2]), partition=i % 3)

        assert await walk(client, limit=6, between=churn) == expected
        # A new walk sees the new scores.
        assert await walk(client, limit=500) != expected

    run(env, scenario)


def test_cursor_errors(tmp_path):
    env = Env(tmp_path)
    env.populate(30)

    async def scenario(client):
        first = await get_json(client, "/api/v1/at-risk", limit="3")
        cursor = first["next_cursor"]
        bad = await get_json(client, "/api/v1/at-risk", status=400, cursor=cursor, region="north")
        assert bad["error"] == "invalid_cursor" and "other filters" in bad["detail"]
        assert (await get_json(client, "/api/v1/at-risk", status=400, cursor="!!nonsense"))["error"] == "invalid_cursor"
        # A cursor from a worker that has read further than this one: wait, then 503 with Retry-After.
        env.app[API_KEY].config = ApiConfig(cursor_wait_s=0.2, rate_burst=1000, rate_per_s=1000)
        from monitor.outreach.api import encode_cursor, _filter_hash

        ahead = encode_cursor((-0.9, "s001"), (999, 0, 0), _filter_hash(
            {"region": None, "segment": None, "min_score": None, "reason": None, "not_contacted_since": None}))
        resp = await client.get("/api/v1/at-risk", params={"cursor": ahead}, headers=auth("outreach"))
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"] == "view_behind"

    run(env, scenario)


# --------------------------------------------------------------------------- validation and limits


@pytest.mark.parametrize("params, fragment", [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"min_score": "1.5"}, "min_score"), ({"min_score": "high"}, "min_score"),
    ({"format": "xml"}, "format"), ({"regin": "north"}, "unknown parameter 'regin'"),
    ({"not_contacted_since": "last tuesday"}, "not_contacted_since"), ({"region": "<script>"}, "region"),
])
def test_malformed_parameters_are_400_with_a_clear_reason(tmp_path, params, fragment):
    env = Env(tmp_path)

    async def scenario(client):
        body = await get_json(client, "/api/v1/at-risk", status=400, **params)
        assert body["error"] == "invalid_parameter" and fragment in body["detail"]

    run(env, scenario)


@pytest.mark.parametrize("body, status, fragment", [
    ({"subscriber_id": "s001", "channel": "pigeon", "outcome": "reached"}, 400, "channel"),
    ({"subscriber_id": "s001", "channel": "call"}, 400, "outcome"),
    ({"subscriber_id": "s001", "channel": "call", "outcome": "reached", "note": "x"}, 400, "note"),
    ({"subscriber_id": "s 1/..", "channel": "call", "outcome": "reached"}, 400, "subscriber id"),
    ({"subscriber_id": "unknown", "channel": "call", "outcome": "reached"}, 404, "no risk score"),
    ({"subscriber_id": "s001", "channel": "call", "outcome": "reached", "ts_ms": 5}, 400, "ts_ms"),
    ("not json", 400, "JSON"),
])
def test_malformed_outreach_bodies(tmp_path, body, status, fragment):
    env = Env(tmp_path)
    env.populate()

    async def scenario(client):
        kw = {"json": body} if not isinstance(body, str) else {"data": body, "headers": {"Content-Type": "application/json"}}
        headers = {**auth("outreach"), **kw.pop("headers", {})}
        resp = await client.post("/api/v1/outreach", headers=headers, **kw)
        data = await resp.json()
        assert resp.status == status, data
        assert fragment in data["detail"]
        resp = await client.post("/api/v1/outreach", data=b"x", headers={**auth("outreach"), "Content-Type": "text/plain"})
        assert resp.status == 415

    run(env, scenario)


def test_rate_limit_per_token_answers_429_with_retry_after(tmp_path):
    env = Env(tmp_path, rate_burst=5, rate_per_s=0.5)

    async def scenario(client):
        for _ in range(5):
            await get_json(client, "/api/v1/summary", "noc")
        resp = await client.get("/api/v1/summary", headers=auth("noc"))
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"
        assert (await resp.json())["error"] == "too_many_requests"
        await get_json(client, "/api/v1/summary", "admin")  # other tokens have their own bucket
        env.now += 2
        await get_json(client, "/api/v1/summary", "noc")
        assert env.registry.get_sample_value("satmon_api_rate_limited_total") == 1

    run(env, scenario)


def test_failed_authentication_is_rate_limited_per_address(tmp_path):
    env = Env(tmp_path)

    async def scenario(client):
        statuses = [(await client.get("/api/v1/summary", headers={"Authorization": "Bearer guess-0123456789abcdef"})).status
                    for _ in range(22)]
        assert statuses[:20] == [401] * 20 and statuses[20:] == [429, 429]

    run(env, scenario)


def test_not_ready_until_the_view_caught_up(tmp_path):
    ready = [False]
    env = Env(tmp_path, ready=lambda: ready[0])

    async def scenario(client):
        resp = await client.get("/api/v1/at-risk", headers=auth("outreach"))
        assert resp.status == 503 and (await resp.json())["error"] == "not_ready"
        ready[0] = True
        await get_json(client, "/api/v1/at-risk")

    run(env, scenario)


def test_metrics_use_route_patterns_never_subscriber_ids(tmp_path):
    env = Env(tmp_path)
    env.populate()

    async def scenario(client):
        await get_json(client, "/api/v1/subscribers/s001")
        from prometheus_client import generate_latest

        text = generate_latest(env.registry).decode()
        assert "s001" not in text
        assert env.registry.get_sample_value("satmon_api_requests_total",
                                             {"route": "/api/v1/subscribers/{sid}", "code": "200"}) == 1

    run(env, scenario)


def test_csv_neutralises_spreadsheet_formulas(tmp_path):
    env = Env(tmp_path)
    env.view.apply(RiskScore(subscriber_id="s1", ts_ms=T0, scored_at_ms=T0, score=0.9, at_risk=True, model_version=1,
                             reasons=[Reason(code="x", text="=HYPERLINK(\"http://evil\")", contribution=0.1)],
                             region="=cmd", segment="+1"))

    async def scenario(client):
        row = next(csv.DictReader(io.StringIO(await get_json(client, "/api/v1/at-risk", format="csv"))))
        assert row["region"] == "'=cmd" and row["segment"] == "'+1" and row["reason_texts"].startswith("'=")

    run(env, scenario)


def test_hotspots_list_counts_and_affected_rows(tmp_path):
    env = Env(tmp_path)
    env.view.apply(score("a", 0.9, cell="c7", ts=T0 + 10))
    env.view.apply(score("b", 0.2, cell="c7", ts=T0 + 20))
    env.view.apply(score("c", 0.8, cell="c7", ts=T0 - 10))  # scored before the hot spot started
    env.view.apply(score("d", 0.8, cell="c8", ts=T0 + 10))
    env.hotspots.apply(_alert("c7", start=T0))

    async def scenario(client):
        hs = (await get_json(client, "/api/v1/hotspots", "noc"))["hotspots"]
        assert [(h["cell"], h["affected"]) for h in hs] == [("c7", 2)]
        body = await get_json(client, "/api/v1/hotspots/c7/affected")
        assert [r["subscriber_id"] for r in body["rows"]] == ["a", "b"]
        assert (await get_json(client, "/api/v1/hotspots/c8/affected", status=404))["error"] == "not_found"
        env.hotspots.apply(_alert("c7", status="resolved", seq=1))
        await get_json(client, "/api/v1/hotspots/c7/affected", status=404)

    run(env, scenario)


def test_web_page_is_served_with_a_strict_content_security_policy(tmp_path):
    env = Env(tmp_path)

    async def scenario(client):
        resp = await client.get("/ui/")
        assert resp.status == 200 and "<form id=\"login-form\">" in await resp.text()
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert (await client.get("/ui/assets/app.js")).status == 200
        resp = await client.get("/", allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"].endswith("/ui/")

    run(env, scenario)


def test_cli_at_risk_against_a_running_server(tmp_path):
    """``satmon at-risk`` over real HTTP (server in a thread: the CLI is synchronous)."""
    import threading

    from aiohttp import web

    from monitor.cli import main

    env = Env(tmp_path)
    env.populate(60)
    started, stop = threading.Event(), None
    box: dict[str, Any] = {}

    def serve():
        async def body():
            runner = web.AppRunner(env.app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            box["port"] = runner.addresses[0][1]
            box["stop"] = asyncio.Event()
            box["loop"] = asyncio.get_running_loop()
            started.set()
            await box["stop"].wait()
            await runner.cleanup()

        asyncio.run(body())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS["outreach"] + "\n")
    url = f"http://127.0.0.1:{box['port']}"
    try:
        out = tmp_path / "out.csv"
        with open(out, "w") as fh, contextlib.redirect_stdout(fh):
            assert main(["at-risk", "--url", url, "--token-file", str(token_file), "--region", "north",
                         "--limit", "7", "--format", "csv"]) == 0
        rows = list(csv.DictReader(open(out, newline="")))
        assert len(rows) == 7 and {r["region"] for r in rows} == {"north"}
        buf = io.StringIO()
        os.environ["SATMON_TOKEN"] = TOKENS["outreach"]
        try:
            with contextlib.redirect_stdout(buf):
                assert main(["at-risk", "--url", url, "--limit", "1000", "--format", "json"]) == 0
        finally:
            del os.environ["SATMON_TOKEN"]
        assert len(orjson.loads(buf.getvalue())) == env.view.at_risk_count
        token_file.write_text(TOKENS["noc"])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["at-risk", "--url", url, "--token-file", str(token_file)]) == 2
        assert "403" in err.getvalue() and "forbidden" in err.getvalue()
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


def _ids(env: Env) -> list[str]:
    return [f"s{i:03d}" for i in range(200) if env.view.get(f"s{i:03d}") is not None]


def _alert(cell: str, *, status: str = "firing", seq: int = 0, start: int = T0) -> Alert:
    return Alert(alert_id=f"hs-{cell}", alertname="SatmonHotSpotActive", kind="hotspot_cell", status=status,
                 severity="warning", labels={"cell_id": cell, "region": "north"}, summary=f"hot spot on {cell}",
                 description="d", runbook_url="https://runbooks.example/hotspot", starts_at_ms=start,
                 updated_at_ms=start + seq, sequence=seq)


def test_openapi_document_lists_exactly_the_api_routes(tmp_path):
    from pathlib import Path

    import yaml

    doc = yaml.safe_load((Path(__file__).parent.parent / "docs" / "openapi.yaml").read_text())
    env = Env(tmp_path)
    routes = {(r.method.lower(), r.resource.canonical) for r in env.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == routes
    env.audit.close()


def test_mount_api_on_an_existing_app_keeps_its_routes_open(tmp_path):
    """What the worker does with Faust's aiohttp app: /metrics stays public, /api/ needs a token."""
    from aiohttp import web

    from monitor.outreach.api import mount_api

    env = Env(tmp_path)
    env.populate()

    async def metrics(request):
        return web.Response(text="satmon_up 1\n")

    root = web.Application()
    root.router.add_get("/metrics", metrics)
    mount_api(root, env.app)
    env.app = root

    async def scenario(client):
        resp = await client.get("/metrics")
        assert resp.status == 200 and await resp.text() == "satmon_up 1\n"
        assert (await client.get("/api/v1/at-risk")).status == 401
        assert len((await get_json(client, "/api/v1/at-risk", limit="3"))["rows"]) == 3
        assert (await client.get("/ui/")).status == 200
        assert len(env.audit_entries()) == 1

    run(env, scenario)


def test_worklist_is_each_regions_budget_of_contactable_subscribers_audited(tmp_path):
    """The worklist from scores the real core emitted (outcome probabilities and reasons): the
    capacity per region, ranked, without the subscribers who asked not to be contacted; audited."""
    from monitor.sim import simulate
    from monitor.replay import run_records

    env = Env(tmp_path)
    config = simulate.SimConfig(subscribers=600, hours=3, seed=8, malformed_share=0.0)
    run_records(simulate.generate(config, simulate.Simulator(config)), partitions=2, hotspots=False,
                on_scores=lambda scores: [env.view.apply(s, partition=0) for s in scores])
    regions = {r for r, n in env.view.subscribers_by_region().items() if n >= 5}
    assert len(regions) >= 2

    async def scenario(client):
        body = await get_json(client, "/api/v1/worklist", team="retention", capacity="5")
        rows = body["rows"]
        assert body["outcome"] == "churn" and len(rows) == 5 * len(regions)
        top = rows[0]["subscriber_id"]
        assert all(r["probability"] == r["outcomes"]["churn"] for r in rows)
        resp = await client.post("/api/v1/consent", json={"subscriber_id": top, "do_not_contact": True},
                                 headers=auth("outreach"))
        assert resp.status == 201
        again = (await get_json(client, "/api/v1/worklist", team="retention", capacity="5"))["rows"]
        assert top not in {r["subscriber_id"] for r in again} and len(again) == len(rows)
        text = await get_json(client, "/api/v1/worklist", team="care", capacity="3", format="csv")
        assert text.splitlines()[0].startswith("team,region,rank,subscriber_id,probability")
        await get_json(client, "/api/v1/worklist", team="sales", status=400)

    run(env, scenario)
    entries = [e for e in env.audit_entries() if e["endpoint"].endswith("worklist")]
    assert entries and entries[0]["rows"] == 5 * len(regions) and len(entries[0]["subjects"]) == entries[0]["rows"]
