"""Simulated traffic with an injected cell outage, and the alerts the real detector raises on it.

Tests that need hot-spot alerts or incidents take them from here, never from a dict typed by hand:
the simulator's records go through the worker's pipeline (:func:`monitor.replay.run_records`: the
input partitions' window aggregators, the merger, the hot-spot engine and the incident tracker of
:class:`~monitor.pipeline.HotspotStage`), so they have exactly the shape production emits.
"""

from __future__ import annotations

import dataclasses
import functools

from monitor.sim import simulate
from monitor.records.events import Alert, Incident, RiskScore

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
    incidents: list[tuple[int, Incident]]   # the same for the incident records
    scores: list[RiskScore]                 # the risk-scores records the pipeline produced, in order

    @property
    def alerts(self) -> list[Alert]:
        return [a for _, a in self.emitted]


@functools.lru_cache(maxsize=4)
def outage_run(subscribers: int = 1500, hours: float = 1.5, seed: int = 21, cells: int = 30) -> OutageRun:
    """The default: 1,500 subscribers, 30 cells, 90 minutes, three metro cells dark from 40 to 70 min."""
    from monitor.replay import run_records

    config = simulate.SimConfig(subscribers=subscribers, hours=hours, seed=seed, scenario=OUTAGE, cells=cells,
                                malformed_share=0, duplicate_share=0, late_share=0)
    sim = simulate.Simulator(config)
    records = list(simulate.generate(config, sim))
    [incident] = sim.incidents
    scores: list[RiskScore] = []
    result = run_records(records, partitions=4, on_scores=scores.extend)
    return OutageRun(records, frozenset(simulate.cell_id(c) for c in incident.cells),
                     simulate.REGION_NAMES[incident.regions[0]], incident.onset_ms, incident.end_ms,
                     result.alerts, result.incidents, scores)
