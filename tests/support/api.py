"""The outreach API on a real aiohttp test server: :class:`Env` (a view, stores, an audit log and the
API built as the worker builds it), scores as the cores emit them (:func:`score`), and requests with
a role's token (:func:`auth`, :func:`get_json`, :func:`run`)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from monitor.outreach.api import ApiConfig, build_api
from monitor.config import load
from monitor.records.events import Reason, RiskScore
from monitor.outreach.store import OutreachPolicy, OutreachStore
from monitor.outreach.privacy import AuditLog, TokenStore
from monitor.outreach.view import HotspotBoard, RiskView

T0 = 1_700_000_000_000
DAY = 86_400_000
TOKENS = {"noc": "noc-token-0123456789", "outreach": "outreach-token-0123456789", "admin": "admin-token-0123456789"}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def score(sid: str, s: float, *, ts: int = T0, region: str = "north", cell: str = "c1", segment: str = "consumer",
          reasons: tuple[str, ...] = ("video_stall",)) -> RiskScore:
    return RiskScore(subscriber_id=sid, ts_ms=ts, scored_at_ms=ts, score=s, at_risk=s >= 0.5, model_version=1,
                     reasons=[Reason(code=c, text=f"{c} explained", contribution=0.2) for c in reasons],
                     region=region, cell_id=cell, segment=segment)


class Env:
    """A view, stores and a running API server; ``now`` is the API's clock (seconds)."""

    def __init__(self, tmp_path, *, holdout: float = 0.0, rate_burst: int = 1000, rate_per_s: float = 1000.0, ready=None):
        self.view, self.hotspots, self.store = RiskView(), HotspotBoard(), OutreachStore()
        self.audit_path = tmp_path / "audit" / "audit.jsonl"
        self.audit = AuditLog(self.audit_path)
        self.now = T0 / 1000 + 3600
        self.policy = OutreachPolicy(holdout_share=holdout, holdout_key=b"test-holdout-key", fatigue_ms=14 * DAY)
        self.registry = CollectorRegistry()
        tokens = TokenStore.from_json(orjson.dumps({k: {"token": v, "role": k} for k, v in TOKENS.items()}))
        self.app = build_api(load({}), self.view, self.store, self.audit, self.registry, hotspots=self.hotspots,
                             tokens=tokens, policy=self.policy, ready=ready, clock=lambda: self.now,
                             config=ApiConfig(rate_burst=rate_burst, rate_per_s=rate_per_s, holdout_share=holdout))

    def audit_entries(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.audit_path.read_bytes().splitlines()]

    def populate(self, n: int = 40, seed: int = 1) -> None:
        rng = random.Random(seed)
        for i in range(n):
            self.view.apply(score(f"s{i:03d}", round(rng.uniform(0.3, 1.0), 3), region=["north", "south"][i % 2],
                                  segment=["consumer", "business"][i % 3 == 0], cell=f"c{i % 4}",
                                  reasons=(["video_stall", "call_drop", "ticket_open"][i % 3],)),
                            partition=i % 3)


def run(env: Env, scenario) -> None:
    async def main():
        async with TestClient(TestServer(env.app)) as client:
            await scenario(client)

    asyncio.run(main())
    env.audit.close()


async def get_json(client, path, role="outreach", status=200, **params) -> Any:
    resp = await client.get(path, params=params, headers=auth(role))
    text = await resp.text()
    assert resp.status == status, text
    return orjson.loads(text) if resp.content_type == "application/json" else text
