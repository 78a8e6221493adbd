"""What a *degraded* session is: the one definition used by the NOC's windows and the risk features.

A network session is degraded when the subscriber could notice it: a dropped call, any video stall,
latency or packet loss above what a service hides, a signal too noisy to hold, or a throughput
service starved of bandwidth. The cell windows (:mod:`monitor.detection.windows`) count degraded sessions for
the NOC's degraded share and the hot-spot detector; the risk features (:mod:`monitor.scoring.features`)
count the same sessions per subscriber and grade how bad each felt (``session_severity``: zero for
a session this policy does not call degraded). The dashboards read the windows' counts, so the
NOC's degraded share and the model's "degraded sessions" are the same thing.

>>> from monitor.records.events import NetworkEvent
>>> ok = NetworkEvent(event_id="e1", subscriber_id="s1", ts_ms=0, cell_id="c1", region="metro",
...                   radio="5G", service="web", rsrp_dbm=-90, sinr_db=15, dl_mbps=80, ul_mbps=10,
...                   latency_ms=30, jitter_ms=3, packet_loss_pct=0.1, call_drop=False, video_stall_s=0)
>>> DEGRADED.is_degraded(ok)
False
>>> import msgspec
>>> DEGRADED.is_degraded(msgspec.structs.replace(ok, latency_ms=400))
True
>>> DegradedSessionPolicy(max_latency_ms=500).is_degraded(msgspec.structs.replace(ok, latency_ms=400))
False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class DegradedSessionPolicy:
    """The thresholds past which a session counts as degraded (a call drop or a video stall always does).

    Parameters
    ----------
    max_latency_ms
        Round-trip latency above which any service is noticeably slow.
    max_loss_pct
        Packet loss above which voice breaks up and TCP stalls.
    min_sinr_db
        Signal-to-noise below which the radio link is barely held.
    min_dl_mbps
        Downlink throughput below which a throughput service (``throughput_services``) is starved.
    throughput_services
        The services that need throughput rather than latency.
    """

    max_latency_ms: float = 150.0
    max_loss_pct: float = 2.0
    min_sinr_db: float = -3.0
    min_dl_mbps: float = 1.5
    throughput_services: frozenset[str] = frozenset(("video", "download"))

    def is_degraded(self, ev: Any) -> bool:
        """Whether one network session (a :class:`~monitor.records.events.NetworkEvent`) was degraded."""
        # an if, not bool(...): the builtin's call costs more than the test (once per session, twice
        # in a worker: the risk features and the cell windows)
        if (ev.call_drop or ev.video_stall_s > 0 or ev.latency_ms > self.max_latency_ms
                or ev.packet_loss_pct > self.max_loss_pct or ev.sinr_db < self.min_sinr_db
                or (ev.dl_mbps < self.min_dl_mbps and ev.service in self.throughput_services)):
            return True
        return False


#: The policy satmon runs with (windows, features and the dashboards' degraded share).
DEGRADED = DegradedSessionPolicy()
