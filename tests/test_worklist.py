"""The list a team can work: a ranked budget per team and region from the scores the cores emit,
and the Prometheus gauges that count subscribers per risk band."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from monitor.scoring.core import PartitionCore
from monitor.records.events import NetworkEvent, TicketEvent
from monitor.observability.metrics import Metrics
from monitor.scoring.risk import RISK_BANDS, TEAMS
from monitor.outreach.view import RiskView

T0 = 1_740_000_000_000
MIN = 60_000


def _traffic(n: int = 120, worst_sessions: int = 4) -> list:
    """Four sessions per subscriber at a level of experience from clean to awful; the worst tenth
    (level 9 and above) have ``worst_sessions`` sessions: an outage they sit through."""
    evs = []
    for k in range(n):
        level = (k * 37 % n) / n * 10  # a level of experience per subscriber, from clean to awful
        for i in range(worst_sessions if level >= 9 else 4):
            evs.append(NetworkEvent(
                event_id=f"n{k}-{i}", subscriber_id=f"s{k:03d}", ts_ms=T0 + (k * 4 + i) * MIN, cell_id=f"c{k % 5}",
                region="north" if k % 2 else "south", radio="4G", service="video", rsrp_dbm=-90.0 - 4 * level,
                sinr_db=15.0 - 2 * level, dl_mbps=50.0 / (1 + level), ul_mbps=1.0, latency_ms=30.0 + 30 * level,
                jitter_ms=2.0, packet_loss_pct=0.5 * level, call_drop=level >= 7 and i % 2 == 0,
                video_stall_s=4.0 * level if i == 3 else 0.0, segment="prepaid"))
        if level >= 8:
            evs.append(TicketEvent(event_id=f"t{k}", ticket_id=f"k{k}", subscriber_id=f"s{k:03d}",
                                   ts_ms=T0 + (k * 4 + 3) * MIN + 1, channel="call_center", category="network",
                                   action="opened"))
    return evs


def _view(**traffic: int) -> RiskView:
    core = PartitionCore(0, clock_ms=lambda: 0)
    view = RiskView()
    for score in core.process_batch(sorted(_traffic(**traffic), key=lambda e: e.ts_ms)):
        view.apply(score)
    return view


def test_worklist_is_the_budget_per_region_ranked_by_the_teams_outcome():
    view = _view()
    for team, outcome in TEAMS.items():
        rows = view.worklist(team, capacity=7)
        assert len(rows) == 14  # 7 per region, whatever the scores: no threshold decides
        for region in ("north", "south"):
            mine = [r for r in rows if r["region"] == region]
            assert [r["rank"] for r in mine] == list(range(1, 8))
            probs = [r["probability"] for r in mine]
            assert probs == sorted(probs, reverse=True)
            assert all(r["outcomes"][outcome] == r["probability"] for r in mine)
            assert len(set(probs)) > 1  # the top rows differ in probability
            pool = sorted((e.latest.outcomes.complaint if outcome == "complaint" else e.latest.outcomes.churn)
                          for sid in [f"s{k:03d}" for k in range(120)]
                          if (e := view.get(sid)) is not None and e.current.region == region)
            assert probs[-1] >= pool[-7]  # nobody outside the list ranks above its last row
        assert any(r["reasons"] for r in rows)
    assert len(view.worklist("care", capacity=3, region="north")) == 3


def test_risk_band_gauges_count_every_subscriber_once():
    view = _view(worst_sessions=60)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_risk_bands(view.risk_bands())
    labels = {b for _, b in RISK_BANDS}
    total = 0.0
    for region in ("north", "south"):
        for band in labels:
            total += registry.get_sample_value("satmon_risk_band_subscribers", {"region": region, "band": band}) or 0.0
    assert total == len(view) == 120
    bands = {b for (_, b) in view.risk_bands()}
    assert bands <= labels and len(bands) >= 2
    metrics.set_risk_bands({})  # series for bands that emptied are removed
    assert registry.get_sample_value("satmon_risk_band_subscribers", {"region": "north", "band": next(iter(bands))}) is None
