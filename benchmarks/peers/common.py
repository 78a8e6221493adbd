"""Shared by the end-to-end benchmark and its peers: the event generator and the core to run.

Every contender does the same per-event work: msgspec decode + validate, then the risk core
(``monitor.scoring.core.PartitionCore``, one per input partition) and encoding of the scores it emits.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import orjson

INPUTS = ("network-events", "care-tickets", "app-interactions")
BASE_TS = 1_700_000_000_000


def generate(n: int, subscribers: int = 20_000, seed: int = 7) -> Iterator[tuple[str, bytes, bytes]]:
    """``n`` valid ``(topic, key, value)`` input records over ``subscribers`` subscribers, in time order.

    Uses ``monitor.sim.simulate`` (default scenario, its noise included) when it exists, else a plain
    mix of valid events: 85 % network sessions, 10 % app interactions (with survey answers), 5 %
    care tickets.
    """
    try:
        from monitor.sim import simulate
    except ImportError:
        simulate = None
    if simulate is not None:
        import itertools

        # The simulator's default scenario, run until n records (its noise -- malformed records,
        # duplicates, late records -- included: every contender gets the same bytes).
        config = simulate.SimConfig(subscribers=subscribers, hours=0, seed=seed)
        yield from itertools.islice(simulate.generate(config), n)
        return
    rnd = random.Random(seed)
    regions = ("north", "south", "east", "west")
    for i in range(n):
        sub = f"sub-{rnd.randrange(subscribers):06d}"
        ts = BASE_TS + i * 10
        r = rnd.random()
        if r < 0.85:
            bad = rnd.random() < 0.05
            rec = {"event_id": f"n{i}", "subscriber_id": sub, "ts_ms": ts, "cell_id": f"cell-{rnd.randrange(400)}",
                   "region": regions[i % 4], "radio": "5G" if rnd.random() < 0.5 else "4G",
                   "service": rnd.choice(("voice", "video", "web", "gaming")),
                   "rsrp_dbm": -120.0 if bad else -90.0 + rnd.random() * 10, "sinr_db": 2.0 if bad else 15.0,
                   "dl_mbps": 3.0 if bad else 80.0, "ul_mbps": 5.0, "latency_ms": 180.0 if bad else 30.0,
                   "jitter_ms": 4.0, "packet_loss_pct": 4.0 if bad else 0.1, "call_drop": bad and rnd.random() < 0.3,
                   "video_stall_s": 6.0 if bad else 0.0}
            yield "network-events", sub.encode(), orjson.dumps(rec)
        elif r < 0.95:
            survey = rnd.random() < 0.3
            rec = {"event_id": f"a{i}", "session_id": f"sess{i}", "subscriber_id": sub, "ts_ms": ts,
                   "kind": "survey_answer" if survey else rnd.choice(("self_service_success", "self_service_failure")),
                   "nps": rnd.randrange(11) if survey else None}
            yield "app-interactions", sub.encode(), orjson.dumps(rec)
        else:
            action = rnd.choice(("opened", "resolved"))
            rec = {"event_id": f"t{i}", "ticket_id": f"tk{i}", "subscriber_id": sub, "ts_ms": ts,
                   "channel": "call_center", "category": "network", "action": action,
                   "resolution_minutes": 30.0 if action == "resolved" else None}
            yield "care-tickets", sub.encode(), orjson.dumps(rec)


class CountingCore:
    """Stand-in used only while ``monitor.scoring.core`` does not exist: counts events per subscriber and
    emits a score every fifth event. The JSON output says when it was used."""

    def __init__(self, partition: int, state_loader: Any) -> None:
        self.partition, self.load, self.cache, self.dirty, self.n = partition, state_loader, {}, set(), 0

    def process_batch(self, events: list[Any]) -> list[Any]:
        from monitor.records.events import RiskScore

        out = []
        for e in events:
            s = e.subscriber_id
            c = self.cache.get(s)
            if c is None:
                b = self.load(s)
                c = int(b) if b else 0
            c += 1
            self.cache[s] = c
            self.dirty.add(s)
            self.n += 1
            if c % 5 == 0:
                out.append(RiskScore(subscriber_id=s, ts_ms=e.ts_ms, scored_at_ms=int(time.time() * 1000),
                                     score=0.5, at_risk=False, reasons=[], model_version=self.n))
        return out

    def take_dirty(self) -> dict[str, bytes | None]:
        d = {s: str(self.cache[s]).encode() for s in self.dirty}
        self.dirty.clear()
        return d

    def checkpoint(self) -> bytes:
        return str(self.n).encode()

    def restore(self, blob: bytes) -> None:
        self.n = int(blob)


def core_factory() -> tuple[str, Any]:
    """``(name, make(partition, state_loader))`` for the real core, or the counting stand-in."""
    try:
        from monitor.pipeline import default_core_factory
        from monitor.config import load

        make = default_core_factory(load({}))
        return "monitor.scoring.core.PartitionCore", make
    except ImportError:
        return "CountingCore (monitor.scoring.core not present)", CountingCore
