"""Simulated traffic with an injected cell outage, and the alerts the real detector raises on it.

Tests that need hot-spot alerts take them from here, never from a dict typed by hand: the
simulator's events go through the worker's detection path (one
:class:`~monitor.windows.WindowAggregator` per input partition, the
:class:`~monitor.windows.WindowMerger`, :class:`~monitor.hotspots.HotspotEngine`) by
:func:`monitor.hotspots_eval.replay`, so the alerts have exactly the shape production emits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from monitor import simulate
from monitor.events import INPUT_TOPICS, Alert, decode

OUTAGE = {"name": "outage-test", "incidents": [
    {"id": "outage-x", "type": "cell_outage", "onset": "40m", "end": "70m", "cells": 3, "region": "metro",
     "severity": 1.0}]}


@dataclasses.dataclass(frozen=True)
class OutageRun:
    """One simulated run: raw input records, the injected cells, and the detector's alerts."""

    records: list[tuple[str, bytes, bytes]]
    cells: frozenset[str]
    region: str
    onset_ms: int
    end_ms: int
    emitted: list[tuple[int, Alert]]   # (end of the window that produced it, record), in order

    @property
    def alerts(self) -> list[Alert]:
        return [a for _, a in self.emitted]


@functools.lru_cache(maxsize=4)
def outage_run(subscribers: int = 1500, hours: float = 1.5, seed: int = 21, cells: int = 30) -> OutageRun:
    """The default: 1,500 subscribers, 30 cells, 90 minutes, three metro cells dark from 40 to 70 min."""
    from monitor.hotspots_eval import replay

    config = simulate.SimConfig(subscribers=subscribers, hours=hours, seed=seed, scenario=OUTAGE, cells=cells,
                                malformed_share=0, duplicate_share=0, late_share=0)
    sim = simulate.Simulator(config)
    records = list(simulate.generate(config, sim))
    [incident] = sim.incidents
    decoded: list[Any] = [decode(INPUT_TOPICS[topic], value) for topic, _key, value in records]
    emitted, _stats = replay(decoded)
    return OutageRun(records, frozenset(simulate.cell_id(c) for c in incident.cells),
                     simulate.REGION_NAMES[incident.regions[0]], incident.onset_ms, incident.end_ms, emitted)
