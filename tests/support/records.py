"""Input records for the integration tests, in the shape satmon's producers emit (the schemas'
fields, JSON, keyed by subscriber id), and :class:`RecordingCore`, a risk core that records what
it was given (the worker subprocesses of ``support.kafka`` import it)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import orjson


# -- events ---------------------------------------------------------------------------------------


def net(sid: str, ts: int, cell: str = "c1", region: str = "north", **kw: Any) -> Any:
    """A healthy 5G video session of ``sid`` at ``ts`` as the decoder builds it
    (:class:`monitor.records.events.NetworkEvent`); ``kw`` overrides any field."""
    from monitor.records.events import NetworkEvent

    base = dict(event_id=f"e-{sid}-{ts}", subscriber_id=sid, ts_ms=ts, cell_id=cell, region=region,
                radio="5G", service="video", rsrp_dbm=-95, sinr_db=12, dl_mbps=80, ul_mbps=10,
                latency_ms=30, jitter_ms=4, packet_loss_pct=0.1, call_drop=False, video_stall_s=0)
    base.update(kw)
    return NetworkEvent(**base)


def network_event(i: int, sub: str, **over: Any) -> dict:
    rec = {"event_id": f"n{i}", "subscriber_id": sub, "ts_ms": 1_700_000_000_000 + i * 1000, "cell_id": f"c{i % 7}",
           "region": "north", "radio": "5G", "service": "video", "rsrp_dbm": -95.0, "sinr_db": 12.0,
           "dl_mbps": 80.0, "ul_mbps": 10.0, "latency_ms": 30.0, "jitter_ms": 4.0, "packet_loss_pct": 0.1,
           "call_drop": False, "video_stall_s": 0.0}
    rec.update(over)
    return rec


def app_event(i: int, sub: str, **over: Any) -> dict:
    rec = {"event_id": f"a{i}", "session_id": f"s{i}", "subscriber_id": sub, "ts_ms": 1_700_000_000_000 + i * 1000,
           "kind": "survey_answer", "nps": i % 11}
    rec.update(over)
    return rec


def ticket_event(i: int, sub: str, **over: Any) -> dict:
    rec = {"event_id": f"t{i}", "ticket_id": f"tk{i}", "subscriber_id": sub, "ts_ms": 1_700_000_000_000 + i * 1000,
           "channel": "chat", "category": "network", "action": "opened"}
    rec.update(over)
    return rec


def valid_records(n: int, subscribers: int, start: int = 0) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(start, start + n):
        sub = f"sub-{i % subscribers:04d}"
        kind = i % 10
        if kind < 8:
            topic, rec = "network-events", network_event(i, sub)
        elif kind == 8:
            topic, rec = "app-interactions", app_event(i, sub)
        else:
            topic, rec = "care-tickets", ticket_event(i, sub)
        out.append((topic, sub.encode(), orjson.dumps(rec)))
    return out


# -- a core that records what it saw --------------------------------------------------------------

class RecordingCore:
    """A risk core for delivery tests: its per-subscriber state is the set of event ids applied,
    so a re-delivered event is recognised (deduplicated) and a lost one is visible. Appends every
    event id it is given to the file named by ``TEST_SEEN_LOG`` (duplicates included)."""

    def __init__(self, partition: int, state_loader: Callable[[str], bytes | None]) -> None:
        self.partition = partition
        self.load = state_loader
        self.cache: dict[str, set[str]] = {}
        self.dirty: set[str] = set()
        self.n = 0
        self.log = open(os.environ["TEST_SEEN_LOG"], "a")

    def process_batch(self, events: list[Any]) -> list[Any]:
        from monitor.records.events import RiskScore

        scores = []
        for e in events:
            self.log.write(f"{self.partition} {e.event_id}\n")
            seen = self.cache.get(e.subscriber_id)
            if seen is None:
                blob = self.load(e.subscriber_id)
                seen = self.cache[e.subscriber_id] = set(json.loads(blob)) if blob else set()
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
            self.dirty.add(e.subscriber_id)
            self.n += 1
            scores.append(RiskScore(subscriber_id=e.subscriber_id, ts_ms=e.ts_ms, scored_at_ms=0,
                                    score=min(1.0, len(seen) / 100), at_risk=False, reasons=[], model_version=self.n))
        self.log.flush()
        return scores

    def take_dirty(self) -> dict[str, bytes | None]:
        dirty = {s: json.dumps(sorted(self.cache[s])).encode() for s in self.dirty}
        self.dirty.clear()
        return dirty

    def checkpoint(self) -> bytes:
        return json.dumps({"n": self.n}).encode()

    def restore(self, blob: bytes) -> None:
        self.n = json.loads(blob)["n"]
