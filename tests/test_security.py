"""Issue 21's findings, each as a test through the production code: the worker's routes are an
allow-list, far-future events are dead-lettered, checkpoints are data (never unpickled), consent
and failed logins are guarded and audited, oversized numbers are 400s, dead letters carry
pseudonyms. The last test runs a real ``satmon worker`` on a real broker."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from monitor.records import events
from monitor.outreach.api import AUTH_FAILURE_BURST, AUTH_GLOBAL_FAILURE_BURST, PUBLIC_ROUTES, _roles
from monitor.config import load
from monitor.scoring.core import CHECKPOINT_FORMAT, PartitionCore, migrate_checkpoint
from monitor.records.ingest import Ingest
from monitor.outreach.privacy import Pseudonymiser
from support.api import TOKENS, Env, auth, get_json, run

NOW_MS = 1_700_000_000_000
NETWORK = {"event_id": "n1", "subscriber_id": "s-1", "ts_ms": NOW_MS, "cell_id": "c1", "region": "north",
           "radio": "4G", "service": "web", "rsrp_dbm": -101.0, "sinr_db": 3.5, "dl_mbps": 12.0, "ul_mbps": 2.0,
           "latency_ms": 45.0, "jitter_ms": 6.0, "packet_loss_pct": 0.4, "call_drop": False, "video_stall_s": 0.0}


def raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


# --------------------------------------------------------------------------- the worker's routes


def _worker_routes(tmp_path: Path) -> tuple[Any, list[tuple[str, str, Any]]]:
    """A real worker app object (no broker needed to build it) and every (method, path, handler)
    its web server serves once Faust has set it up."""
    from monitor.worker.app import build_worker

    worker = build_worker(load({}, broker="kafka://127.0.0.1:9", data_dir=str(tmp_path), store="memory://",
                               pseudonymise="false"))
    worker.app.web.init_server()   # what Faust does at start-up: blueprints, pages
    routes = [(r.method, r.resource.canonical, r.handler) for r in worker.app.web.web_app.router.routes()
              if r.resource is not None and r.method != "HEAD"]
    return worker, routes


def test_every_route_the_worker_serves_is_public_by_design_or_needs_a_token_and_role(tmp_path):
    worker, routes = _worker_routes(tmp_path)
    paths = {path for _m, path, _h in routes}
    assert {"/metrics", "/healthz", "/readyz", "/api/v1/at-risk"} <= paths
    private = []
    for method, path, handler in routes:
        if path in PUBLIC_ROUTES:
            continue
        # anything else is an API route with an explicit role mark: no framework page, no default
        assert path.startswith("/api/v1/"), f"{method} {path} is neither public by design nor an API route"
        roles = getattr(handler, "_roles", None)
        assert roles, f"{method} {path} has no role mark"
        private.append((method, path))
    assert len(private) >= 10

    async def scenario() -> None:
        async with TestClient(TestServer(worker.app.web.web_app)) as client:
            for method, path in private:
                url = path.replace("{sid}", "s1").replace("{cell}", "c1").replace("{incident_id}", "i1")
                resp = await client.request(method, url, json={} if method == "POST" else None)
                assert resp.status == 401, (method, path, resp.status)
            # Faust's built-in pages (issue 21: subscriber state and the pickled model, unauthenticated)
            for url in ("/table/subscriber-state/s1/", "/table/risk-model/0/", "/table/", "/router/topics",
                        "/router/", "/graph/", "/stats/", "/", "/performance/"):
                resp = await client.get(url)
                assert resp.status == 404, (url, resp.status)
                assert resp.headers["Server"] == "satmon"

    asyncio.run(scenario())


def test_an_api_route_without_a_role_mark_is_refused_to_every_role(tmp_path):
    env = Env(tmp_path)

    async def unmarked(request: web.Request) -> web.Response:
        return web.json_response({"secret": 1})

    @_roles()
    async def marked_for_nobody(request: web.Request) -> web.Response:
        return web.json_response({"secret": 2})

    env.app.router.add_get("/api/v1/unmarked", unmarked)
    env.app.router.add_get("/api/v1/nobody", marked_for_nobody)

    async def scenario(client):
        for role in ("noc", "outreach", "admin"):
            for path in ("/api/v1/unmarked", "/api/v1/nobody"):
                resp = await client.get(path, headers=auth(role))
                assert resp.status == 403, (role, path)
                assert (await resp.json())["error"] == "forbidden"

    run(env, scenario)


def test_responses_do_not_announce_python_or_aiohttp(tmp_path):
    env = Env(tmp_path)

    async def scenario(client):
        for path in ("/ui/", "/api/v1/whoami", "/nowhere"):
            resp = await client.get(path, headers=auth("noc"))
            assert resp.headers["Server"] == "satmon"

    run(env, scenario)


def test_a_client_that_leaves_mid_body_is_not_an_error(tmp_path, caplog):
    env = Env(tmp_path)
    env.populate()

    async def scenario(client):
        port = client.server.port
        for tail in (b"", b"eof"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /api/v1/outreach HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Authorization: Bearer {TOKENS['outreach']}\r\n".encode()
                         + b"Content-Length: 1000\r\n\r\n{\"subscriber_id\": ")
            await writer.drain()
            await asyncio.sleep(0.1)
            if tail:
                writer.write_eof()
                await asyncio.sleep(0.2)
            writer.close()
            await asyncio.sleep(0.2)
        assert (await client.get("/api/v1/whoami", headers=auth("noc"))).status == 200

    with caplog.at_level(logging.INFO):
        run(env, scenario)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_compose_publishes_ports_on_loopback_only():
    import yaml

    compose = yaml.safe_load((Path(__file__).parent.parent / "deploy/compose/docker-compose.yml").read_text())
    published = [p for svc in compose["services"].values() for p in svc.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published), published


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("params", [
    {"limit": "99999999999999999999999999"},
    {"limit": "9" * 5000},
    {"limit": "٥٥"},                       # Arabic-Indic digits: int() reads 55
    {"not_contacted_since": "99999999999999999999999999"},
    {"not_contacted_since": "9" * 5000},
    {"not_contacted_since": "٢٠٢٦-05-01"},
    {"not_contacted_since": "1" + "0" * 16},
])
def test_oversized_or_non_ascii_numbers_are_400_not_500(tmp_path, params):
    env = Env(tmp_path)
    env.populate()

    async def scenario(client):
        body = await get_json(client, "/api/v1/at-risk", "outreach", status=400, **params)
        assert body["error"] == "invalid_parameter"

    run(env, scenario)


@pytest.mark.parametrize("params", [{"since": "9" * 5000}, {"limit": "9" * 5000}, {"since": "٥٥"}])
def test_audit_parameters_too(tmp_path, params):
    env = Env(tmp_path)

    async def scenario(client):
        assert (await get_json(client, "/api/v1/audit", "admin", status=400, **params))["error"] == "invalid_parameter"

    run(env, scenario)


# --------------------------------------------------------------------------- consent


def test_consent_for_a_subscriber_nobody_has_seen_is_refused(tmp_path):
    env = Env(tmp_path)
    env.populate()

    async def scenario(client):
        resp = await client.post("/api/v1/consent", headers=auth("admin"),
                                 json={"subscriber_id": "never-seen", "do_not_contact": True})
        assert resp.status == 404
        resp = await client.post("/api/v1/consent", headers=auth("admin"),
                                 json={"subscriber_id": "s001", "do_not_contact": False, "reason": "because"})
        assert resp.status == 400 and "reason" in (await resp.json())["detail"]
        assert not env.store.is_dnc("never-seen")

    run(env, scenario)


# --------------------------------------------------------------------------- failed logins


def test_an_address_that_failed_too_often_is_locked_out_even_with_a_valid_token(tmp_path):
    env = Env(tmp_path)

    async def scenario(client):
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        for _ in range(AUTH_FAILURE_BURST):
            assert (await client.get("/api/v1/whoami", headers=wrong)).status == 401
        # locked out before the token is even looked at: guessing stops here
        resp = await client.get("/api/v1/whoami", headers=auth("noc"))
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        env.now += 10  # the bucket refills at 0.2/s: two tries later
        assert (await client.get("/api/v1/whoami", headers=auth("noc"))).status == 200
        # a success does not buy more guesses: one valid (noc) token must not unlock guessing the others
        assert (await client.get("/api/v1/whoami", headers=wrong)).status == 401
        assert (await client.get("/api/v1/whoami", headers=auth("noc"))).status == 200
        assert (await client.get("/api/v1/whoami", headers=wrong)).status == 401
        assert (await client.get("/api/v1/whoami", headers=wrong)).status == 429

    run(env, scenario)


def test_a_client_ignoring_retry_after_is_slowed_down(tmp_path):
    env = Env(tmp_path, rate_burst=1, rate_per_s=0.5)

    async def scenario(client):
        await get_json(client, "/api/v1/summary", "noc")
        t0 = time.monotonic()
        resp = await client.get("/api/v1/summary", headers=auth("noc"))
        assert resp.status == 429 and time.monotonic() - t0 >= 0.45   # answered after a pause, not at once

    run(env, scenario)


def _request_from(address: str, token: str = "wrong-token-0123456789") -> web.Request:
    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return (address, 40000) if name == "peername" else default

        def is_closing(self) -> bool:
            return False

    return make_mocked_request("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"},
                               transport=Transport())


def test_failure_table_is_bounded_and_pruned():
    from monitor.outreach.api import AUTH_FAILURE_RATE_PER_S, _AddressTable

    table = _AddressTable(AUTH_FAILURE_RATE_PER_S, AUTH_FAILURE_BURST, 1_000)
    for i in range(5_000):
        table.failed(f"10.0.{i >> 8}.{i & 255}", now=float(i))
        table.succeeded(f"10.1.{i >> 8}.{i & 255}", now=float(i))
    assert len(table.buckets) <= 1_000 and len(table.trusted) <= 1_000
    assert "10.0.19.135" in table.buckets       # the newest are kept (5,000 - 1)


def test_rotating_addresses_hit_a_global_failure_budget(tmp_path):
    from monitor.outreach.api import API_KEY, ApiError

    env = Env(tmp_path)
    api = env.app[API_KEY]

    async def main() -> None:
        async def attempt(i: int) -> int:
            try:
                await api._authenticate(_request_from(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"))
            except ApiError as err:
                return err.status
            return 200

        # a guesser with a fresh address each time, all at once (refusals are answered after a pause)
        codes = await asyncio.gather(*(attempt(i) for i in range(AUTH_GLOBAL_FAILURE_BURST + 100)))
        assert codes == [401] * AUTH_GLOBAL_FAILURE_BURST + [429] * 100
        assert len(api.failures.buckets) == AUTH_GLOBAL_FAILURE_BURST
        # an address that logged in lately is not held back by other addresses' failures
        api.failures.succeeded("192.0.2.7", env.now)
        assert (await api._authenticate(_request_from("192.0.2.7", TOKENS["noc"]))).name == "noc"

    asyncio.run(main())
    env.audit.close()


# --------------------------------------------------------------------------- audit


def test_audit_records_client_address_failed_logins_and_which_subscribers_an_export_returned(tmp_path):
    env = Env(tmp_path)
    env.populate()

    async def scenario(client):
        await client.get("/api/v1/at-risk", headers={"Authorization": "Bearer wrong-token-0123456789"})
        body = await get_json(client, "/api/v1/at-risk", "outreach", limit="5", format="json")
        returned = [r["subscriber_id"] for r in body["rows"]]
        failed, export = env.audit_entries()
        assert failed["status"] == 401 and failed["who"] is None and failed["client"] == "127.0.0.1"
        assert export["client"] == "127.0.0.1" and export["rows"] == 5
        assert export["subjects"] == returned

    run(env, scenario)


# --------------------------------------------------------------------------- ingest


def test_far_future_events_are_dead_lettered_and_within_skew_accepted():
    ingest = Ingest(worker="w", clock_ms=lambda: NOW_MS, max_clock_skew_ms=300_000)
    records = [(0, b"s-1", raw({**NETWORK, "event_id": "a", "ts_ms": NOW_MS + 299_000})),
               (1, b"s-1", raw({**NETWORK, "event_id": "b", "ts_ms": 4_070_908_800_000})),   # 2099
               (2, b"s-1", raw({**NETWORK, "event_id": "c", "ts_ms": NOW_MS}))]
    decoded, letters = ingest.decode_batch("network-events", 0, records)
    assert [e.event_id for e in decoded] == ["a", "c"]
    [letter] = letters
    assert letter.offset == 1 and letter.field == "$.ts_ms" and "ahead of the worker's clock" in letter.reason
    assert ingest.dead_lettered == {("network", "clock_skew"): 1}
    single = ingest.decode("network-events", 0, 1, b"s-1", records[1][2])
    assert isinstance(single, events.DeadLetter) and single.reason == letter.reason
    # a replay of a file (no skew set) accepts any date the schema accepts
    assert Ingest(clock_ms=lambda: NOW_MS).decode_batch("network-events", 0, records)[1] == []


def test_core_watermark_from_a_checkpoint_is_clamped_to_wall_clock_plus_skew():
    core = PartitionCore(0, clock_ms=lambda: NOW_MS)
    core.watermark_ms = 4_070_908_800_000   # what a 2099 event did before the guard
    blob = core.checkpoint()
    again = PartitionCore(0, clock_ms=lambda: NOW_MS)
    assert again.restore(blob)
    assert again.watermark_ms == NOW_MS + 300_000


@pytest.mark.parametrize(("field", "value", "ok"), [
    ("region", "<img src=x onerror=alert(1)>", False), ("region", "north\n", False),
    ("cell_id", "c1\" onmouseover=\"x", False), ("segment", "a&b", False),
    ("region", "Île-de-France", True), ("cell_id", "セル-東京-017", True), ("region", "north-east 2", True),
])
def test_labels_with_markup_are_dead_lettered(field, value, ok):
    ingest = Ingest(clock_ms=lambda: NOW_MS)
    out = ingest.decode("network-events", 0, 0, None, raw({**NETWORK, field: value}))
    assert isinstance(out, events.NetworkEvent) == ok
    if not ok:
        assert out.field == f"$.{field}" and ingest.dead_lettered == {("network", "bad_format"): 1}


def test_a_5000_digit_number_is_out_of_range_not_json_trouble():
    ingest = Ingest(clock_ms=lambda: NOW_MS)
    value = raw(NETWORK).replace(str(NOW_MS).encode(), b"9" * 5000)
    letter = ingest.decode("network-events", 0, 0, None, value)
    assert ingest.dead_lettered == {("network", "out_of_range"): 1}
    assert letter.field == "$.ts_ms" and "5000 digits" in letter.reason


def test_dead_letters_carry_pseudonyms_not_subscriber_ids():
    p = Pseudonymiser(b"0123456789abcdef-test-key")
    ingest = Ingest(clock_ms=lambda: NOW_MS, pseudonymise=p)
    mismatch = ingest.decode("network-events", 0, 0, b"s-other", raw(NETWORK))     # key != subscriber_id
    broken = ingest.decode("network-events", 0, 1, b"s-1", raw(NETWORK)[:-1])       # not JSON
    for letter in (mismatch, broken):
        text = orjson.dumps(msgspec_dict(letter)).decode() + letter.original_value().decode(errors="replace")
        assert "s-1" not in text and "s-other" not in text
    assert base64.b64decode(mismatch.key_b64).decode() == p("s-other")
    assert p("s-other") in mismatch.reason and p("s-1") in mismatch.reason
    assert json.loads(mismatch.original_value())["subscriber_id"] == p("s-1")
    # the operator may keep the bytes as received (documented retention applies)
    kept = Ingest(clock_ms=lambda: NOW_MS, pseudonymise=p, keep_original=True)
    assert kept.decode("network-events", 0, 0, b"s-other", raw(NETWORK)).original_value() == raw(NETWORK)


def msgspec_dict(letter: events.DeadLetter) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(letter)


# --------------------------------------------------------------------------- checkpoints


def _trained_core() -> PartitionCore:
    from monitor.scoring.risk import LabelRecord

    core = PartitionCore(0, clock_ms=lambda: NOW_MS)
    m = core.model
    for i in range(300):   # a few hundred labels of every outcome, through the model's own API
        x = [((i * 7 + j * 3) % 11) / 10 for j in range(len(m.features))]
        core.model.learn(LabelRecord(ts_ms=NOW_MS + i, x=x, y=[i % 3 == 0, i % 5 == 0, i % 7 == 0]))
    core.watermark_ms = NOW_MS
    return core


def test_checkpoint_is_data_only_and_round_trips_a_trained_model():
    import msgspec

    core = _trained_core()
    blob = core.checkpoint()
    data = msgspec.msgpack.decode(blob)   # plain data: maps, lists, numbers, strings
    assert data["format"] == CHECKPOINT_FORMAT and data["watermark_ms"] == NOW_MS
    again = PartitionCore(0, clock_ms=lambda: NOW_MS)
    assert again.restore(blob) and again.checkpoints_refused == 0
    assert again.model.n_labels == core.model.n_labels > 0
    probes = [[((k * 5 + j) % 9) / 8 for j in range(len(core.model.features))] for k in range(20)]
    assert [again.model.predict(x) for x in probes] == [core.model.predict(x) for x in probes]
    assert again.checkpoint() == blob


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_a_pickled_checkpoint_from_the_topic_is_refused_and_never_run(tmp_path, caplog):
    marker = tmp_path / "pwned"
    core = PartitionCore(0, clock_ms=lambda: NOW_MS)
    fresh = core.model.to_state()
    with caplog.at_level(logging.ERROR, logger="monitor.scoring.core"):
        assert not core.restore(pickle.dumps({"model": _RunsCode(marker), "watermark_ms": 0}))
        assert not core.restore(b"\x00garbage")
    assert not marker.exists()
    assert core.checkpoints_refused == 2 and core.model.to_state() == fresh
    assert "pickled checkpoint" in caplog.text and "starting from a fresh model" in caplog.text


def test_an_old_pickled_checkpoint_migrates_once_from_a_trusted_local_file(tmp_path):
    trained = _trained_core()
    old = tmp_path / "partition-0.pickle"
    old.write_bytes(pickle.dumps({"model": trained.model, "watermark_ms": NOW_MS}, protocol=5))
    new = tmp_path / "model.ckpt"
    migrate_checkpoint(str(old), str(new))
    assert not new.read_bytes().startswith(b"\x80")
    # what SATMON_MODEL_CHECKPOINT loads: new partitions start from the migrated model
    core = PartitionCore(0, model_checkpoint=str(new), clock_ms=lambda: NOW_MS)
    assert core.model.to_state() == trained.model.to_state()


# --------------------------------------------------------------------------- a real worker


@pytest.mark.integration
def test_a_running_worker_closes_the_doors(broker, workers, tmp_path):
    """On a real worker and broker: Faust's pages do not answer, a far-future event is
    dead-lettered with its reason, an outreach token cannot lift a do-not-contact."""
    from support.kafka import produce, read_topic

    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({k: {"token": v, "role": k} for k, v in TOKENS.items()}))
    w = workers(broker, app_id="sec-test", extra_args=("--tokens-file", str(tokens)))
    def ready() -> bool:
        try:
            return w.get("/readyz")[0] == 200
        except OSError:
            return False

    w.wait_for(ready, 120, "ready")
    for path in ("/table/subscriber-state/s-1/", "/table/risk-model/0/", "/router/topics", "/graph/", "/"):
        assert w.get(path)[0] == 404, path
    now = int(time.time() * 1000)
    good = raw({**NETWORK, "event_id": "now", "ts_ms": now, "video_stall_s": 40.0, "call_drop": True})
    future = raw({**NETWORK, "event_id": "2099", "ts_ms": 4_070_908_800_000})
    asyncio.run(produce(broker.bootstrap, [("network-events", b"s-1", future), ("network-events", b"s-1", good)]))
    [letter] = asyncio.run(read_topic(broker.bootstrap, "satmon-dead-letter", expect=1))
    dead = events.decode("dead_letter.v1", letter.value)
    assert dead.field == "$.ts_ms" and "ahead of the worker's clock" in dead.reason
    w.wait_for(lambda: w.total('satmon_ingest_records_dead_lettered_total{reason="clock_skew"') == 1, 30, "counted")

    import urllib.request

    def call(method: str, path: str, role: str, body: dict | None = None) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{w.port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={**auth(role), "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.headers["Server"] == "satmon"
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    w.wait_for(lambda: call("GET", "/api/v1/subscribers/s-1", "outreach") == 200, 60, "s-1 scored")
    assert call("POST", "/api/v1/consent", "outreach", {"subscriber_id": "s-1", "do_not_contact": True}) == 201
    assert call("POST", "/api/v1/consent", "outreach",
                {"subscriber_id": "s-1", "do_not_contact": False, "reason": "subscriber_request"}) == 403
    assert call("GET", "/api/v1/subscribers/s-1", "outreach") == 403      # still do-not-contact
    assert call("POST", "/api/v1/consent", "admin",
                {"subscriber_id": "s-1", "do_not_contact": False, "reason": "subscriber_request"}) == 201
    assert call("GET", "/api/v1/subscribers/s-1", "outreach") == 200
    assert os.path.exists(w.data_dir / "audit" / "audit.jsonl")
