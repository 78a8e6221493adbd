"""The traffic simulator: a telecom population, three input streams, injected incidents, ground truth.

It owns the synthetic world satmon is evaluated on (see ``docs/SIMULATOR.md``):

* a **population** held in compact numpy arrays (~30 bytes per subscriber): segment, device, app
  version, home and serving cell, activity, and a latent satisfaction that evolves with experience
  (worst and most recent moments weigh most -- the peak-end effect -- and it recovers slowly);
* **cells** grouped in regions, with coordinates, a coverage level and 5G availability;
* time advances in steps (60 s by default); in each step every session, app interaction and
  billing surprise of the step is drawn at once with numpy, serialised with a pre-formatted
  template, and fed back into the subscribers' state; tickets and survey answers (rare) follow
  a small event heap;
* **incidents** from a YAML scenario (``monitor/sim/scenarios/*.yaml``): cell outage and congestion,
  regional latency spike, billing-error wave, app release bug, and a sustained KPI drift;
* **noise**: malformed records, duplicates (same ``event_id`` re-sent) and late records;
* **ground truth**: incidents, per-subscriber complaint and detractor times, injected faults.

Everything is driven by one ``seed``: the same configuration gives byte-identical output.

>>> cfg = SimConfig(subscribers=200, hours=0.1, scenario="quiet", seed=1)
>>> topics = {t for t, _key, _value in generate(cfg)}
>>> sorted(topics)[0]
'app-interactions'
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import heapq
import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monitor.records.errors import ConfigError
from monitor.records.topics import INPUT_TOPICS

TOPICS = INPUT_TOPICS   # the order of the simulator's files and fault indices
NET, TIX, APP = 0, 1, 2
SCENARIO_DIR = Path(__file__).with_name("scenarios")

# Monday 2025-03-03 06:00 UTC: the default start, so that runs are reproducible and a 6 h run
# covers the morning ramp-up of the diurnal load.
DEFAULT_START_MS = 1_740_981_600_000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

# --- the world ---------------------------------------------------------------------------------

# name, centre latitude, centre longitude, share of cells (a fictional country around 46-50 N).
REGIONS: tuple[tuple[str, float, float, float], ...] = (
    ("metro", 48.85, 2.35, 0.24),
    ("north", 50.40, 3.10, 0.13),
    ("east", 48.60, 7.70, 0.12),
    ("west", 48.10, -1.70, 0.12),
    ("south", 43.60, 1.40, 0.12),
    ("coast", 43.30, 5.40, 0.11),
    ("central", 46.80, 3.00, 0.09),
    ("highlands", 45.20, 5.70, 0.07),
)
REGION_NAMES = tuple(r[0] for r in REGIONS)

SEGMENTS = ("prepaid", "postpaid", "business", "premium")
SEGMENT_SHARE = (0.42, 0.38, 0.12, 0.08)
# Latent satisfaction offset and propensity to complain, per segment: business and premium
# customers expect more and pick up the phone sooner; prepaid customers churn silently.
SEGMENT_SAT_SHIFT = (-0.03, 0.0, -0.01, 0.02)
SEGMENT_COMPLAIN = (0.7, 1.0, 1.5, 1.4)

# device name, 5G capable, share
DEVICES: tuple[tuple[str, bool, float], ...] = (
    ("iPhone 15", True, 0.18), ("iPhone 12", True, 0.14), ("iPhone 11", False, 0.08),
    ("Galaxy S24", True, 0.12), ("Galaxy A54", True, 0.14), ("Galaxy A13", False, 0.09),
    ("Pixel 8", True, 0.05), ("Redmi Note 12", True, 0.10), ("Moto G32", False, 0.06),
    ("Nokia 105", False, 0.04),
)
APP_VERSIONS = ("5.1.4", "5.2.0", "5.3.0")
APP_VERSION_SHARE = (0.15, 0.40, 0.45)

SERVICES = ("voice", "video", "gaming", "web", "social", "download", "messaging")
SERVICE_SHARE = (0.14, 0.22, 0.05, 0.22, 0.20, 0.05, 0.12)
V_VOICE, V_VIDEO, V_GAMING, V_WEB, V_SOCIAL, V_DOWNLOAD, V_MESSAGING = range(7)
RADIOS = ("2G", "3G", "4G", "5G")

APP_FEATURES = ("billing", "plan_change", "top_up", "support", "network_check", "account")
APP_FEATURE_SHARE = (0.25, 0.08, 0.22, 0.15, 0.12, 0.18)
APP_ERROR_CODES = ("HTTP_500", "TIMEOUT", "AUTH_EXPIRED", "PAYMENT_DECLINED", "CRASH")

CHANNELS = ("call_center", "chat", "app", "web", "store", "email", "social")
# ticket channel mix per segment (rows follow SEGMENTS)
CHANNEL_SHARE = (
    (0.30, 0.25, 0.25, 0.05, 0.10, 0.00, 0.05),
    (0.40, 0.25, 0.15, 0.08, 0.07, 0.03, 0.02),
    (0.55, 0.10, 0.05, 0.05, 0.00, 0.25, 0.00),
    (0.55, 0.20, 0.10, 0.05, 0.08, 0.02, 0.00),
)
CAUSES = ("network", "billing", "service")  # ticket category of a subscriber's last bad moment

# --- KPI calibration ----------------------------------------------------------------------------
# Derived from the Beyond5G production traces (Raca et al., MMSys 2020; 188k one-second samples,
# LTE and NSA 5G, driving and static; /work/shared/data/beyond5g). Pooled quantiles:
#   RSRP dBm   p5 -104  p25 -100  p50 -93  p75 -81  p95 -65
#   SNR dB     p5   -7  p25   -1  p50   2  p75   7  p95  17    (corr with RSRP ~ +0.5)
#   DL Mbps (samples with traffic, >0.5 Mbps)  p10 1.6  p25 4.3  p50 10.3  p75 23  p90 108
#   ping ms    5G p50 72 (p5 66, p95 91);  LTE p50 84 (p5 68, p95 106)
# The simulator draws per session: RSRP = cell coverage + N(0, RSRP_SESSION_SD) (a normal fit of
# the quantiles), SINR linear in RSRP plus noise, DL log-normal rising with SINR, latency
# log-normal around the measured ping medians. ``tests/test_simulate.py`` compares the result with
# the traces when they are present.
CAL_RSRP_MEDIAN = -91.0
CAL_RSRP_CELL_SD = 6.0
RSRP_SESSION_SD = 10.0
CAL_SINR_AT_MEDIAN_RSRP = 2.5
CAL_SINR_PER_DB_RSRP = 0.30
CAL_SINR_SD = 5.5
CAL_DL_MEDIAN_MBPS = 10.0     # at median SINR, 4G; 5G x1.8, 3G x0.15, 2G x0.02
CAL_DL_PER_DB_SINR = 0.075    # log-throughput slope
CAL_DL_LOG_SD = 1.05
RADIO_DL_FACTOR = np.array([0.02, 0.15, 1.0, 1.8])
RADIO_LATENCY_MS = np.array([300.0, 110.0, 82.0, 70.0])  # medians (4G, 5G from the ping traces)
CAL_LATENCY_LOG_SD = 0.18
VIDEO_NEED_MBPS = 3.0  # below this a video stream rebuffers

# --- rates (per subscriber) -----------------------------------------------------------------------
# Mean rates at diurnal factor 1 (the 24 h average). A 06:00-12:00 run averages ~0.75 of it:
# 20,000 subscribers x 6 h give ~0.9 M sessions, ~50 k app interactions, a few hundred tickets
# (1-2 % of subscribers complain in 6 h on a quiet network) and a few hundred survey answers.
SESSIONS_PER_HOUR = 10.0
APP_PER_HOUR = 0.55
BILL_SURPRISE_PER_HOUR = 0.0004
#: v3.5's silent pre-history simulates at most this many sessions; a larger population (or a longer
#: pre-history) draws a proportional sample of sessions, app interactions and bills and counts each
#: for the ones it stands for (noisier rates per person: the grudge's shrinkage absorbs it)
PREHISTORY_MAX_SESSIONS = 2_000_000
RELATIONSHIP_SURVEY_PER_HOUR = 0.003  # share answering an unsolicited NPS survey per hour
MOVES_PER_HOUR = 0.15

# satisfaction dynamics (times in minutes)
SAT_RECOVERY_MIN = 12 * 60.0   # latent satisfaction drifts back to its baseline with this time constant
WORST_DECAY_MIN = 24 * 60.0    # the worst recent moment fades over a day ...
RECENT_DECAY_MIN = 90.0        # ... the most recent ones within hours
PEAK_WEIGHT = 0.30
RECENT_WEIGHT = 0.25
# Baseline satisfaction per subscriber (shifted by segment): the part of satisfaction no stream
# shows until the subscriber answers a survey. Narrow on purpose: in this simulator, as in the
# mission it serves, dissatisfaction is mostly made by experience that can be seen coming.
BASE_SAT_MEAN = 0.78
BASE_SAT_SD = 0.06
# Complaint hazard per bad moment: a small floor (anyone can call about anything) plus a term that
# rises steeply once experienced satisfaction falls below COMPLAINT_BELOW.
COMPLAINT_FLOOR = 0.00002
COMPLAINT_SLOPE = 0.06
COMPLAINT_BELOW = 0.60
SAT_HIT = 0.04                 # lasting damage of one bad moment of badness 1
NPS_NOISE = 1.3                # sd of a survey answer around 10 x experienced satisfaction + 0.9
#: every this often the ground truth records each subscriber's probability of being a detractor
SATISFACTION_EVERY_MS = 30 * MINUTE_MS
#: ... for populations up to this size (the snapshot costs 2 bytes per subscriber and instant)
SATISFACTION_MAX_SUBSCRIBERS = 500_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Everything a simulation depends on.

    ``step_s`` (default: :func:`auto_step_s`, 60 s up to ~700k subscribers) is the granularity of
    mobility and incident state; event times are exact to the millisecond regardless.

    ``hours=0`` runs until stopped. ``start_ms`` is the event time of the first step (default
    :data:`DEFAULT_START_MS`). ``scenario`` is a name in ``monitor/sim/scenarios``, a path to a YAML
    file or an already parsed mapping. Noise shares are per clean record.

    ``utc_offset_h`` is the subscribers' local time minus UTC, in hours: the diurnal load (trough at
    04:00, day peak, evening bump) follows local time. The live demo sets it so that the wall clock's
    *now* is mid-afternoon where its subscribers live, whatever the hour it runs at.
    """

    subscribers: int = 20_000
    hours: float = 6.0
    seed: int = 42
    scenario: str | Path | Mapping[str, Any] = "default"
    start_ms: int | None = None
    step_s: float | None = None
    cells: int | None = None
    utc_offset_h: float = 0.0
    malformed_share: float = 0.001
    duplicate_share: float = 0.002
    late_share: float = 0.003
    late_min_s: float = 90.0
    late_max_s: float = 600.0
    sessions_per_hour: float = SESSIONS_PER_HOUR
    app_per_hour: float = APP_PER_HOUR
    #: ``v3`` (default): the people of :mod:`monitor.sim.world` (drivers drawn per seed, hazards with a
    #: lead, port-outs); ``v2``: the earlier latent-satisfaction model (labels within 30 s of their cause)
    world: str = "v3"
    #: emitted hours before the evaluated ``hours`` (the model warms up; no oracle instants there)
    burn_in_hours: float = 0.0
    #: hours the world runs on after the last emitted event, unseen: outcomes only (so that every
    #: evaluation instant's horizon lies in the run)
    followup_hours: float = 0.0
    #: v3: share of active subscribers offered an outreach contact each day at 10:00 local (half of
    #: them held out at random; ``ground_truth/treatment.jsonl`` records both arms)
    treatment_share: float = 0.0
    #: v3: hours the world runs silently before ``start_ms`` (no records, outcomes or incidents) to
    #: settle each person's accumulators at the steady state of their own experience (simulator
    #: v3.5, :meth:`monitor.sim.world.People.settle`); 0 = a cold start (a small grudge only)
    prehistory_hours: float = 48.0
    #: v3: app and care records carry the account's dates from the operator's CRM
    #: (``customer_since_ms``, ``contract_end_ms``: tenure and contract, which drive churn)
    account_fields: bool = True

    def validate(self) -> None:
        problems = []
        if self.world not in ("v2", "v3"):
            problems.append(f"world: expected v2 or v3, got {self.world!r}")
        for name in ("burn_in_hours", "followup_hours", "prehistory_hours"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                problems.append(f"{name}: expected >= 0, got {v}")
        if not 0 <= self.treatment_share <= 0.5:
            problems.append(f"treatment_share: expected 0..0.5, got {self.treatment_share}")
        if self.world == "v2" and (self.followup_hours or self.treatment_share):
            problems.append("followup_hours and treatment_share need world v3")
        if self.subscribers < 1:
            problems.append(f"subscribers: expected >= 1, got {self.subscribers}")
        if self.hours < 0 or not math.isfinite(self.hours):
            problems.append(f"hours: expected >= 0 (0 = until stopped), got {self.hours}")
        if not -24 < self.utc_offset_h < 24:
            problems.append(f"utc_offset_h: expected -24 < h < 24, got {self.utc_offset_h}")
        if self.step_s is not None and not 0.1 <= self.step_s <= 3600:
            problems.append(f"step_s: expected 1..3600, got {self.step_s}")
        for name in ("malformed_share", "duplicate_share", "late_share"):
            if not 0 <= getattr(self, name) <= 0.2:
                problems.append(f"{name}: expected 0..0.2, got {getattr(self, name)}")
        if not 0 < self.late_min_s <= self.late_max_s:
            problems.append("late_min_s/late_max_s: expected 0 < min <= max")
        if problems:
            raise ConfigError(problems)


# --- scenarios ----------------------------------------------------------------------------------

INCIDENT_TYPES = ("cell_outage", "cell_congestion", "regional_latency", "billing_error", "app_bug", "kpi_drift",
                  "survey_campaign")
#: share of a survey campaign's target invited per hour at severity 1 (most answer within minutes)
CAMPAIGN_INVITES_PER_HOUR = 1.0
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


def duration_ms(value: Any, what: str) -> int:
    """A duration like ``"80m"``, ``"1h30m"``, ``"90s"`` (or ms) in milliseconds.

    >>> duration_ms("1h30m", "--history")
    5400000
    """
    return _time_ms(value, 0, what)


def _time_ms(value: Any, start_ms: int, what: str) -> int:
    """A scenario time: offset like ``"1h30m"``/``"45m"``/``"90s"``, an offset in ms (< 1e12),
    epoch ms, or an ISO-8601 timestamp."""
    if isinstance(value, bool):
        raise ConfigError([f"{what}: expected a time, got {value!r}"])
    if isinstance(value, (int, float)):
        return int(value) if value >= 946_684_800_000 else start_ms + int(value)
    if isinstance(value, _dt.datetime):
        return int(value.timestamp() * 1000)
    text = str(value)
    m = _DURATION.match(text)
    if m and any(m.groups()):
        h, mi, s = (float(g or 0) for g in m.groups())
        return start_ms + int(round((h * 3600 + mi * 60 + s) * 1000))
    try:
        return int(_dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise ConfigError([f"{what}: expected an offset like 45m / 1h30m, ms, or an ISO time, got {value!r}"]) from None


def load_scenario(scenario: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The parsed scenario: a name from ``monitor/sim/scenarios``, a YAML path, or a mapping."""
    if isinstance(scenario, Mapping):
        doc = dict(scenario)
    else:
        import yaml

        path = Path(scenario)
        if not path.suffix:
            path = SCENARIO_DIR / f"{scenario}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
            raise ConfigError([f"scenario {str(scenario)!r} not found (known: {known}; or a path to a .yaml)"])
        doc = yaml.safe_load(path.read_text()) or {}
        doc.setdefault("name", path.stem)
    doc.setdefault("name", "custom")
    doc.setdefault("incidents", [])
    return doc


@dataclasses.dataclass
class Incident:
    id: str
    type: str
    onset_ms: int
    end_ms: int | None
    severity: float
    cells: list[int]
    regions: list[int]
    segments: list[int]
    app_version: str | None = None
    shift_db: float = 0.0
    #: billing_error: share of the segment given a wrong bill per hour at severity 1
    share_per_hour: float = 0.10

    def active_at(self, ts: int) -> bool:
        return self.onset_ms <= ts and (self.end_ms is None or ts < self.end_ms)


def _resolve_incidents(doc: Mapping[str, Any], start_ms: int, world: "World", seed: int) -> list[Incident]:
    rng = np.random.default_rng([seed, 7])
    out: list[Incident] = []
    used_cells: set[int] = set()
    problems: list[str] = []
    for i, spec in enumerate(doc.get("incidents") or []):
        kind = spec.get("type")
        what = f"incidents[{i}]"
        if kind not in INCIDENT_TYPES:
            problems.append(f"{what}.type: expected one of {', '.join(INCIDENT_TYPES)}, got {kind!r}")
            continue
        try:
            onset = _time_ms(spec.get("onset", 0), start_ms, f"{what}.onset")
            if spec.get("end") is not None:
                end = _time_ms(spec["end"], start_ms, f"{what}.end")
            elif spec.get("duration") is not None:
                end = onset + _time_ms(spec["duration"], 0, f"{what}.duration")
            else:
                end = None
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        if end is not None and end <= onset:
            problems.append(f"{what}: end must be after onset")
            continue
        regions = [_region_index(r, problems, what) for r in _as_list(spec.get("regions", spec.get("region")))]
        regions = [r for r in regions if r is not None]
        cells: list[int] = []
        for c in _as_list(spec.get("cells")):
            if isinstance(c, str) and c.startswith("cell-") and c[5:].isdigit() and int(c[5:]) < world.n_cells:
                cells.append(int(c[5:]))
            elif not (isinstance(c, int) and not isinstance(c, bool)):
                problems.append(f"{what}.cells: expected cell ids or a count, got {c!r}")
        counts = [c for c in _as_list(spec.get("cells")) if isinstance(c, int) and not isinstance(c, bool)]
        if kind in ("cell_outage", "cell_congestion") and not cells:
            n = counts[0] if counts else 1
            pool = np.concatenate([np.arange(*world.region_cells[r]) for r in regions]) if regions else np.arange(world.n_cells)
            pool = np.array([c for c in pool.tolist() if c not in used_cells] or pool.tolist())
            cells = sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())
        used_cells.update(cells)
        if kind in ("regional_latency", "kpi_drift") and not regions:
            regions = [int(rng.integers(len(REGIONS)))]
        if kind in ("cell_outage", "cell_congestion"):
            regions = sorted({int(world.cell_region[c]) for c in cells})
        segments = []
        for s in _as_list(spec.get("segments", spec.get("segment"))):
            if s in SEGMENTS:
                segments.append(SEGMENTS.index(s))
            else:
                problems.append(f"{what}.segments: expected some of {', '.join(SEGMENTS)}, got {s!r}")
        if kind == "billing_error" and not segments:
            segments = [SEGMENTS.index("postpaid")]
        version = spec.get("app_version")
        if kind == "app_bug":
            version = str(version or APP_VERSIONS[-1])
            if version not in APP_VERSIONS:
                problems.append(f"{what}.app_version: expected one of {', '.join(APP_VERSIONS)}, got {version!r}")
        severity = float(spec.get("severity", 0.8))
        if not 0 < severity <= 1:
            problems.append(f"{what}.severity: expected 0 < severity <= 1, got {severity}")
        out.append(Incident(id=str(spec.get("id", f"{kind}-{i + 1}")), type=kind, onset_ms=onset, end_ms=end,
                            severity=severity, cells=cells, regions=regions, segments=segments,
                            app_version=version if kind == "app_bug" else None,
                            shift_db=float(spec.get("shift_db", 6.0 * severity)),
                            share_per_hour=float(spec.get("share_per_hour", 0.10))))
    if problems:
        raise ConfigError(problems)
    return out


def _as_list(v: Any) -> list[Any]:
    return [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]


def _region_index(name: Any, problems: list[str], what: str) -> int | None:
    if name in REGION_NAMES:
        return REGION_NAMES.index(name)
    problems.append(f"{what}.regions: expected some of {', '.join(REGION_NAMES)}, got {name!r}")
    return None


# --- the world ----------------------------------------------------------------------------------


def _diurnal(hour: float) -> float:
    """Load relative to the 24 h mean: trough at 04:00, broad day peak, evening bump at 21:00."""
    v = 0.55 - 0.45 * math.cos(2 * math.pi * (hour - 4.0) / 24.0) + 0.15 * math.exp(-((hour - 21.0) ** 2) / 4.0)
    return v / 0.5943


def _pick(rng: np.random.Generator, shares: Any, n: int) -> np.ndarray:
    cum = np.cumsum(np.asarray(shares, dtype=np.float64))
    return np.minimum(np.searchsorted(cum / cum[-1], rng.random(n), side="right"), len(cum) - 1).astype(np.uint8)


_CHUNK = 1 << 20


class World:
    """Cells and subscribers as numpy arrays (no per-subscriber Python objects)."""

    def __init__(self, n_subscribers: int, n_cells: int | None, rng: np.random.Generator):
        n = n_subscribers
        self.n = n
        # ~45 subscribers per cell (20k -> 444 cells), at least 4 per region.
        nc = n_cells or max(len(REGIONS) * 4, int(round(n / 45)))
        self.n_cells = nc
        shares = np.array([r[3] for r in REGIONS])
        per = np.maximum(1, np.floor(shares / shares.sum() * nc)).astype(int)
        per[0] += nc - per.sum()
        bounds = np.concatenate([[0], np.cumsum(per)])
        self.region_cells = [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(REGIONS))]
        self.cell_region = np.repeat(np.arange(len(REGIONS), dtype=np.uint8), per)
        lat0 = np.array([r[1] for r in REGIONS])[self.cell_region]
        lon0 = np.array([r[2] for r in REGIONS])[self.cell_region]
        self.cell_lat = np.round(lat0 + rng.normal(0, 0.25, nc), 5)
        self.cell_lon = np.round(lon0 + rng.normal(0, 0.35, nc), 5)
        self.cell_rsrp = (CAL_RSRP_MEDIAN + rng.normal(0, CAL_RSRP_CELL_SD, nc)).astype(np.float32)
        self.cell_5g = rng.random(nc) < np.where(self.cell_region == 0, 0.85, 0.55)
        self.cell_capacity = np.exp(rng.normal(0, 0.25, nc)).astype(np.float32)
        # subscribers, built in chunks so that float64 temporaries stay small at 10 M
        self.segment = np.empty(n, np.uint8)
        self.device = np.empty(n, np.uint8)
        self.app_version = np.empty(n, np.uint8)
        self.home = np.empty(n, np.int32)
        self.activity = np.empty(n, np.uint8)
        self.base_sat = np.empty(n, np.float32)
        self.worst = np.empty(n, np.float32)
        self.recent = np.empty(n, np.float32)
        sat_shift = np.array(SEGMENT_SAT_SHIFT)
        for a in range(0, n, _CHUNK):
            b = min(n, a + _CHUNK)
            m = b - a
            self.segment[a:b] = _pick(rng, SEGMENT_SHARE, m)
            self.device[a:b] = _pick(rng, [d[2] for d in DEVICES], m)
            self.app_version[a:b] = _pick(rng, APP_VERSION_SHARE, m)
            self.home[a:b] = rng.integers(0, nc, m, dtype=np.int32)
            # activity weight, quantised to 1..255; sessions are drawn by rejection against it.
            self.activity[a:b] = np.clip(np.exp(rng.normal(0, 0.6, m)) * 64, 1, 255)
            self.base_sat[a:b] = np.clip(rng.normal(BASE_SAT_MEAN, BASE_SAT_SD, m) + sat_shift[self.segment[a:b]],
                                         0.05, 1.0)
            # no hidden history: every bad moment a subscriber remembers is one satmon can see
            self.worst[a:b] = 0.0
            self.recent[a:b] = 0.0
        self.cell = self.home.copy()
        self.sat = self.base_sat.copy()
        self.t_last = np.zeros(n, np.float32)     # minutes since start of the last state update
        self.cause = np.zeros(n, np.uint8)        # index into CAUSES of the last bad moment
        self.open_ticket = np.zeros(n, np.bool_)
        self.dev5g = np.array([d[1] for d in DEVICES])
        self.activity_mean = float(self.activity.mean()) if n < 2_000_000 else float(self.activity[:2_000_000].mean())

    def nbytes(self) -> int:
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    # -- satisfaction -----------------------------------------------------------------------------

    def decay(self, subs: np.ndarray, t_min: float) -> None:
        """Bring the latent state of ``subs`` (unique) forward to ``t_min`` (lazy recovery)."""
        dt = t_min - self.t_last[subs]
        base = self.base_sat[subs]
        self.sat[subs] = base + (self.sat[subs] - base) * np.exp(-dt / SAT_RECOVERY_MIN)
        self.worst[subs] *= np.exp(-dt / WORST_DECAY_MIN)
        self.recent[subs] *= np.exp(-dt / RECENT_DECAY_MIN)
        self.t_last[subs] = t_min

    def hit(self, subs: np.ndarray, bad: np.ndarray, cause: np.ndarray, t_min: float) -> None:
        """Apply bad moments (``bad`` in 0..1, one per unique subscriber) at ``t_min``."""
        self.decay(subs, t_min)
        self.worst[subs] = np.maximum(self.worst[subs], bad)
        r = self.recent[subs]
        self.recent[subs] = r + (1 - r) * bad * 0.6
        self.sat[subs] = np.maximum(0.0, self.sat[subs] - SAT_HIT * bad)
        strong = bad >= 0.3
        self.cause[subs[strong]] = cause[strong]

    def effective(self, subs: np.ndarray) -> np.ndarray:
        """Experienced satisfaction 0..1: baseline-anchored, pulled down by the peak and the end."""
        return self.sat[subs] - PEAK_WEIGHT * self.worst[subs] - RECENT_WEIGHT * self.recent[subs]

    def p_detractor_at(self, t_min: float) -> np.ndarray:
        """Every subscriber's probability of answering a survey at ``t_min`` with NPS 0-6 (the
        survey model of :meth:`Simulator._due`), from the state decayed to ``t_min`` without
        touching it (so taking this snapshot changes nothing in the run)."""
        dt = np.maximum(0.0, t_min - self.t_last)
        base = self.base_sat
        e = (base + (self.sat - base) * np.exp(-dt / SAT_RECOVERY_MIN)
             - PEAK_WEIGHT * self.worst * np.exp(-dt / WORST_DECAY_MIN)
             - RECENT_WEIGHT * self.recent * np.exp(-dt / RECENT_DECAY_MIN))
        # NPS = round(10 e + 0.9 + N(0, NPS_NOISE)) <= 6  <=>  noise < 6.5 - 10 e - 0.9
        from scipy.special import ndtr  # the normal CDF, vectorised (scipy comes with river)

        return ndtr((6.5 - 10.0 * e - 0.9) / NPS_NOISE)


# --- templates (the fast serialisation path) -------------------------------------------------------

_NET_TMPL = ('{"event_id":"%s-n%%d","subscriber_id":"sub-%%08d","ts_ms":%%d,"cell_id":"cell-%%06d",'
             '"region":"%%s","radio":"%%s","service":"%%s","rsrp_dbm":%%.1f,"sinr_db":%%.1f,'
             '"dl_mbps":%%.2f,"ul_mbps":%%.2f,"latency_ms":%%.1f,"jitter_ms":%%.1f,"packet_loss_pct":%%.2f,'
             '"call_drop":%%s,"video_stall_s":%%.1f,"segment":"%%s","device":"%%s"}\n')
_APP_TMPL = ('{"event_id":"%s-a%%d","session_id":"%s-as%%d","subscriber_id":"sub-%%08d","ts_ms":%%d,'
             '"kind":"%%s","feature":%%s,"error_code":%%s,"nps":%%s,"app_version":"%%s","region":"%%s",'
             '"segment":"%%s"%%s}\n')
_TIX_TMPL = ('{"event_id":"%s-t%%d","ticket_id":"%s-tk%%d","subscriber_id":"sub-%%08d","ts_ms":%%d,'
             '"channel":"%%s","category":"%%s","action":"%%s","resolution_minutes":%%s,'
             '"first_contact_resolution":%%s,"region":"%%s","segment":"%%s"%%s}\n')
_EVENT_ID = re.compile(r'"event_id":"([^"]*)"')
_TS = re.compile(r'"ts_ms":(\d+)')


def subscriber_id(index: int) -> str:
    """The id of subscriber ``index`` as it appears in the streams."""
    return f"sub-{index:08d}"


def cell_id(index: int) -> str:
    return f"cell-{index:06d}"


@dataclasses.dataclass
class Step:
    """The records one step emits, per topic, in emission order.

    ``lines[t]`` are newline-terminated JSON strings; ``subs[t]`` the subscriber index of each
    (-1 for a malformed record that lost it is never the case: the key is always kept);
    ``ordered[t]`` how many leading lines are in event-time order (the rest are late/duplicates).
    """

    ts_ms: int
    lines: list[list[str]]
    subs: list[list[int]]
    ts: list[list[int]]
    ordered: list[int]


def auto_step_s(config: SimConfig) -> float:
    """60 s, shortened for large populations so that a step holds at most ~200k sessions (the
    step's records are the only memory that grows with the population besides its arrays)."""
    per_minute_at_peak = config.subscribers * config.sessions_per_hour / 60 * 1.7
    return float(max(1, min(60, int(60 * 200_000 / max(per_minute_at_peak, 1)))))


class Simulator:
    """One run. Iterate :meth:`steps` (or use :func:`generate`, :func:`write_files`); afterwards
    :attr:`labels`, :attr:`faults`, :meth:`manifest` and :meth:`ground_truth` describe it."""

    def __init__(self, config: SimConfig):
        config.validate()
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.start_ms = int(config.start_ms if config.start_ms is not None else DEFAULT_START_MS)
        self.step_ms = int(1000 * (config.step_s or auto_step_s(config)))
        self.end_ms = None if config.hours == 0 else self.start_ms + int((config.hours + config.burn_in_hours) * HOUR_MS)
        #: first instant of the evaluated period (after the burn-in)
        self.eval_start_ms = self.start_ms + int(config.burn_in_hours * HOUR_MS)
        #: the world runs unseen until here (outcomes only)
        self.world_end_ms = None if self.end_ms is None else self.end_ms + int(config.followup_hours * HOUR_MS)
        self.scenario = load_scenario(config.scenario)
        self.world = World(config.subscribers, config.cells, self.rng)
        self.incidents = _resolve_incidents(self.scenario, self.start_ms, self.world, config.seed)
        self.tag = f"{config.seed:x}"
        self._net = _NET_TMPL % self.tag
        self._app = _APP_TMPL % (self.tag, self.tag)
        self._tix = _TIX_TMPL % (self.tag, self.tag)
        self.counter = [0, 0, 0]           # next event number per stream
        self.app_session = 0
        self.ticket_seq = 0
        self.heap: list[tuple[int, int, str, tuple]] = []  # (ts, seq, kind, payload): tickets, surveys
        self.heap_seq = 0
        self.held: list[tuple[int, int, int, str, int, int, str]] = []  # (release, seq, topic, line, sub, ts, kind)
        self.emitted = [0, 0, 0]           # lines written per topic (positions for faults)
        self.clean = [0, 0, 0]             # clean events per topic (each counted once)
        self.fault_counts = {k: [0, 0, 0] for k in ("malformed", "duplicate", "late")}
        self.faults: list[dict[str, Any]] = []
        self.labels: dict[int, dict[str, list[int]]] = {}
        #: (event time, every subscriber's probability of being a detractor then), see steps()
        self.satisfaction: list[tuple[int, np.ndarray]] = []
        self.kind_counts: dict[str, int] = {}
        self.last_ts_ms = self.start_ms
        self.tickets: dict[int, dict[str, Any]] = {}   # open tickets by subscriber
        #: share of the usual volume of sessions, app interactions and bills drawn (below 1 only in a
        #: large world's pre-history)
        self._volume = 1.0
        # constants for the vectorised path
        self._region_names = np.array(REGION_NAMES, dtype=object)
        self._radio_names = np.array(RADIOS, dtype=object)
        self._service_names = np.array(SERVICES, dtype=object)
        self._segment_names = np.array(SEGMENTS, dtype=object)
        self._device_names = np.array([d[0] for d in DEVICES], dtype=object)
        self._bool_names = np.array(["false", "true"], dtype=object)
        self._service_cum = np.cumsum(SERVICE_SHARE) / sum(SERVICE_SHARE)
        self._outage = np.zeros(self.world.n_cells, np.float32)
        self._congestion = np.zeros(self.world.n_cells, np.float32)
        self._billing_subs = np.zeros(0, np.int64)
        self.emitting = True
        #: v3: the subscribers' hidden side (monitor.sim.world.People); None for v2
        self.people = None
        #: v3: (instant, {outcome_h: probability per subscriber}) every hour of the evaluated period
        self.oracle: list[tuple[int, dict[str, np.ndarray]]] = []
        #: v3: per subscriber, the driver behind each outcome: {sub: {kind: [driver, ...]}}
        self.drivers: dict[int, dict[str, list[str]]] = {}
        #: v3: outreach contacts (treated and held out)
        self.treatments: list[dict[str, Any]] = []
        if config.world == "v3":
            from monitor.sim.world import People

            self.people = People(self.world.segment, seed=config.seed, start_ms=self.start_ms,
                                 utc_offset_h=config.utc_offset_h)
        #: per subscriber, the end of an app or care record: the account's dates (v3 with
        #: ``account_fields``) or nothing
        self._account = self._account_suffixes(config)

    def _account_suffixes(self, config: "SimConfig") -> np.ndarray:
        """The account fields as they end each subscriber's app and care records: when they became a
        customer and when their contract ends (``null``: none, e.g. prepaid), whole days as the CRM
        keeps them. Empty strings without them (v2, or ``account_fields`` off)."""
        if self.people is None or not config.account_fields:
            return np.full(self.world.n, "", dtype=object)
        since = self.start_ms - self.people.tenure_months.astype(np.float64) * (30.4375 * DAY_MS)
        since = (since // DAY_MS * DAY_MS).astype(np.int64)
        end = self.people.contract_end_ms
        return np.array([',"customer_since_ms":%d,"contract_end_ms":%s' % (s, "null" if e != e else "%d" % (e // DAY_MS * DAY_MS))
                         for s, e in zip(since.tolist(), end.tolist())], dtype=object)

    # -- labels ---------------------------------------------------------------------------------

    def _label(self, sub: int, kind: str, ts: int, driver: str | None = None) -> None:
        self.labels.setdefault(sub, {}).setdefault(kind, []).append(ts)
        if driver is not None:
            self.drivers.setdefault(sub, {}).setdefault(kind, []).append(driver)

    def _count(self, kind: str, n: int = 1) -> None:
        if not self.emitting:
            return
        self.kind_counts[kind] = self.kind_counts.get(kind, 0) + n

    def _push(self, ts: int, kind: str, payload: tuple) -> None:
        self.heap_seq += 1
        heapq.heappush(self.heap, (ts, self.heap_seq, kind, payload))

    # -- the step loop ----------------------------------------------------------------------------

    def steps(self) -> Iterator[Step]:
        """Every step until ``hours`` (forever when ``hours`` is 0)."""
        t = self.start_ms
        snap = self.start_ms + SATISFACTION_EVERY_MS
        keep = self.end_ms is not None and self.world.n <= SATISFACTION_MAX_SUBSCRIBERS
        v3 = self.people is not None
        # v3 oracle instants: every full hour of the evaluated period
        hourly = -(-self.eval_start_ms // HOUR_MS) * HOUR_MS
        treat_at = self._next_treatment(self.start_ms)
        if v3 and self.config.prehistory_hours > 0:
            self._prehistory(self.config.prehistory_hours)
        while self.end_ms is None or t < self.end_ms:
            t_end = t + self.step_ms if self.end_ms is None else min(t + self.step_ms, self.end_ms)
            if v3 and treat_at is not None and t >= treat_at:
                self._treat(treat_at)
                treat_at = self._next_treatment(treat_at + 1)
            yield self._step(t, t_end)
            t = t_end
            if keep and not v3 and t >= snap:
                self.satisfaction.append((snap, self.world.p_detractor_at((snap - self.start_ms) / MINUTE_MS)
                                          .astype(np.float16)))
                snap += SATISFACTION_EVERY_MS
            if keep and v3 and t >= hourly:
                if self.eval_start_ms <= hourly and (self.end_ms is None or hourly < self.end_ms):
                    probs = self.people.oracle(hourly)
                    probs.update({f"blind_{k}": v for k, v in self.people.oracle(
                        hourly, person=False, crm=self.config.account_fields).items()})
                    self.oracle.append((hourly, probs))
                hourly += HOUR_MS
        if v3 and self.world_end_ms is not None and self.world_end_ms > t:
            # the follow-up: the world goes on unseen, only outcomes are recorded
            self.emitting = False
            while t < self.world_end_ms:
                t_end = min(t + max(self.step_ms, 5 * MINUTE_MS), self.world_end_ms)
                self._step(t, t_end)
                t = t_end
            self.emitting = True
        # release what is still held back (late records and duplicates) at the end
        rest = Step(t, [[], [], []], [[], [], []], [[], [], []], [0, 0, 0])
        self._release(rest, None)
        for t in range(3):
            self.emitted[t] += len(rest.lines[t])
        if any(rest.lines):
            yield rest

    def _prehistory(self, hours: float) -> None:
        """v3.5: run the world silently for ``hours`` before ``start_ms`` -- sessions, app interactions
        and bill surprises, but no records, outcomes or incidents -- and start every person at the
        steady state of what they experienced (:meth:`monitor.sim.world.People.settle`).

        It draws from its own random stream and puts the subscribers back in the cells they started
        in, so the streamed world's network and mobility draw exactly what a cold start would; above
        :data:`PREHISTORY_MAX_SESSIONS` it samples (``_volume``) and counts each experience for the
        ones it stands for."""
        people, w = self.people, self.world
        t0 = self.start_ms - int(hours * HOUR_MS)
        half = t0 + int(hours * HOUR_MS / 2)
        step = max(self.step_ms, 5 * MINUTE_MS)
        main_rng, serving = self.rng, w.cell.copy()
        self.rng = np.random.default_rng([self.config.seed, 0x9E5])
        self._volume = min(1.0, PREHISTORY_MAX_SESSIONS / max(1.0, w.n * self.config.sessions_per_hour * hours))
        self.emitting = False
        t = t0
        while t < self.start_ms:
            people.record(0 if t < half else 1, 1.0 / self._volume)
            t_end = min(t + step, half if t < half else self.start_ms)
            span = t_end - t
            load = _diurnal(((t + span / 2) / HOUR_MS + self.config.utc_offset_h) % 24)
            self._move(span)
            self._network(t, span, load, (), [], [], [])
            self._app_events(t, span, load, (), [], [], [])
            self._billing(t, span, (), [], [], [])
            t = t_end
        self._pending_checks = None   # the pre-history's network checks are not records
        self.emitting = True
        self.rng, self._volume = main_rng, 1.0
        w.cell[:] = serving
        people.settle(hours)

    def _next_treatment(self, after_ms: int) -> int | None:
        """The next 10:00 local at or after ``after_ms`` (None without treatment)."""
        if self.people is None or not self.config.treatment_share:
            return None
        off = int(self.config.utc_offset_h * HOUR_MS)
        day = 24 * HOUR_MS
        t = ((after_ms + off) // day) * day + 10 * HOUR_MS - off
        return t if t >= after_ms else t + day

    def _treat(self, ts: int) -> None:
        """Outreach: a share of the active subscribers, the most dissatisfied first (as a good list
        would pick them), split at random into contacted and held out."""
        p = self.people
        active = np.flatnonzero(p.active)
        k = int(len(active) * self.config.treatment_share)
        if k < 2:
            return
        load = (p.irritation[active].sum(axis=1) + p.grudge[active].sum(axis=1))
        pick = active[np.argsort(-load, kind="stable")[:k]]
        arm = p.rng.random(k) < 0.5
        p.treat(pick[arm])
        for s, a in zip(pick.tolist(), arm.tolist()):
            self.treatments.append({"subscriber_id": subscriber_id(s), "ts_ms": ts, "treated": a,
                                    "effect": p.params.treatment_effect if a else 0.0})

    def _step(self, t0: int, t1: int) -> Step:
        rng, w = self.rng, self.world
        span = t1 - t0
        hour = ((t0 + span / 2) / HOUR_MS + self.config.utc_offset_h) % 24   # local time of day
        load = _diurnal(hour)
        t_min = (t1 - self.start_ms) / MINUTE_MS
        active = [inc for inc in self.incidents if inc.onset_ms < t1 and (inc.end_ms is None or inc.end_ms > t0)]
        self._move(span)
        touched_s: list[np.ndarray] = []
        touched_b: list[np.ndarray] = []
        touched_c: list[np.ndarray] = []
        net = self._network(t0, span, load, active, touched_s, touched_b, touched_c)
        app = self._app_events(t0, span, load, active, touched_s, touched_b, touched_c)
        self._billing(t0, span, active, touched_s, touched_b, touched_c)
        self._experience(t1, t_min, touched_s, touched_b, touched_c)
        self._surveys(t0, span, active)
        tix_lines, tix_subs, tix_ts, app_extra = self._due(t1)
        # app lines from the heap (survey answers) merge with the vectorised ones by time
        app_lines, app_subs, app_ts = app
        if app_extra[0]:
            merged = sorted(zip(app_ts + app_extra[2], range(len(app_ts) + len(app_extra[2])),
                                app_lines + app_extra[0], app_subs + app_extra[1]))
            app_ts = [m[0] for m in merged]
            app_lines = [m[2] for m in merged]
            app_subs = [m[3] for m in merged]
        step = Step(t0, [net[0], tix_lines, app_lines], [net[1], tix_subs, app_subs],
                    [net[2], tix_ts, app_ts], [0, 0, 0])
        if not self.emitting:
            return step
        self.last_ts_ms = t1
        self._noise(step, t1)
        return step

    def _move(self, span: int) -> None:
        rng, w = self.rng, self.world
        m = rng.binomial(w.n, min(1.0, MOVES_PER_HOUR * span / HOUR_MS))
        if not m:
            return
        subs = rng.integers(0, w.n, m)
        home = w.home[subs]
        at_home = w.cell[subs] == home
        go_home = ~at_home & (rng.random(m) < 0.6)
        reg = w.cell_region[home]
        lo = np.array([w.region_cells[r][0] for r in range(len(REGIONS))])[reg]
        hi = np.array([w.region_cells[r][1] for r in range(len(REGIONS))])[reg]
        target = (lo + (rng.random(m) * (hi - lo)).astype(np.int64)).astype(np.int32)
        w.cell[subs] = np.where(go_home, home, target)

    def _draw_subscribers(self, k: int) -> np.ndarray:
        """``k`` subscribers drawn in proportion to their activity (rejection sampling)."""
        rng, w = self.rng, self.world
        want = int(k * 255 / w.activity_mean * 1.15) + 16
        cand = rng.integers(0, w.n, want)
        keep = cand[rng.integers(0, 255, want) < w.activity[cand]]
        if self.people is not None:
            keep = keep[self.people.active[keep]]
        return keep[:k]

    def _network(self, t0, span, load, active, ts_, tb_, tc_):
        rng, w = self.rng, self.world
        k = rng.poisson(w.n * self.config.sessions_per_hour * load * span / HOUR_MS * self._volume)
        subs = self._draw_subscribers(k)
        k = len(subs)
        if not k:
            return [], [], []
        ts = np.sort(t0 + rng.integers(0, span, k))
        cell = w.cell[subs]
        reg = w.cell_region[cell]
        service = np.minimum(np.searchsorted(self._service_cum, rng.random(k), side="right"), 6)
        u = rng.random(k)
        is5g = w.dev5g[w.device[subs]] & w.cell_5g[cell] & (u < 0.85)
        radio = np.where(is5g, 3, np.where(u > 0.985, 1, np.where(u > 0.982, 0, 2)))
        # incident modifiers (per session, exact to the millisecond)
        outage = np.zeros(k, np.float32)
        cong = np.zeros(k, np.float32)
        backhaul = np.zeros(k, np.float32)
        shift = np.zeros(k, np.float32)
        for inc in active:
            if inc.type in ("cell_outage", "cell_congestion"):
                m = np.isin(cell, inc.cells)
            elif inc.type in ("regional_latency", "kpi_drift"):
                m = np.isin(reg, inc.regions)
            else:
                continue
            m &= ts >= inc.onset_ms
            if inc.end_ms is not None:
                m &= ts < inc.end_ms
            if not m.any():
                continue
            if inc.type == "cell_outage":
                outage[m] = np.maximum(outage[m], inc.severity)
            elif inc.type == "cell_congestion":
                cong[m] = np.maximum(cong[m], inc.severity)
            elif inc.type == "regional_latency":
                backhaul[m] = np.maximum(backhaul[m], inc.severity)
            else:
                shift[m] += inc.shift_db
        rsrp = w.cell_rsrp[cell] + rng.normal(0, RSRP_SESSION_SD, k) - shift - outage * 35
        rsrp = np.clip(rsrp, -140, -44)
        sinr = (CAL_SINR_AT_MEDIAN_RSRP + CAL_SINR_PER_DB_RSRP * (rsrp - CAL_RSRP_MEDIAN)
                + rng.normal(0, CAL_SINR_SD, k) - shift * 0.5 - outage * 12 - cong * 3)
        sinr = np.clip(sinr, -20, 35)
        busy = 1.0 / (1.0 + 0.25 * load)  # cells share capacity: the evening peak is slower
        dl = (CAL_DL_MEDIAN_MBPS * RADIO_DL_FACTOR[radio] * w.cell_capacity[cell] * busy * 1.2
              * np.exp(CAL_DL_PER_DB_SINR * (sinr - CAL_SINR_AT_MEDIAN_RSRP) + rng.normal(0, CAL_DL_LOG_SD, k)))
        dl *= (1 - 0.85 * cong) * (1 - 0.99 * outage)
        dl = np.clip(dl, 0, 2000)
        ul = np.clip(dl * 0.12 * np.exp(rng.normal(0, 0.5, k)), 0, 500)
        lat = (RADIO_LATENCY_MS[radio] * np.exp(rng.normal(0, CAL_LATENCY_LOG_SD, k))
               + np.maximum(0, -sinr) * 2.0 + cong * 150 * (0.5 + rng.random(k)) + outage * 900 * (0.5 + rng.random(k))
               + backhaul * 220 * (0.7 + 0.6 * rng.random(k)))
        jit = lat * 0.08 * np.exp(rng.normal(0, 0.5, k)) * (1 + 3 * backhaul + 2 * cong)
        loss = np.clip(0.15 * np.exp(rng.normal(0, 1.0, k)) + np.maximum(0, -sinr) * 0.12
                       + cong * 3 * rng.random(k) + outage * 45 * (0.5 + rng.random(k)) + backhaul * 1.5, 0, 100)
        p_drop = np.where(service == V_VOICE, 0.004 + 0.25 / (1 + np.exp((sinr + 6) / 1.5)), 0.001) + outage * 0.6 + cong * 0.03
        drop = rng.random(k) < p_drop
        video = service == V_VIDEO
        deficit = np.clip((VIDEO_NEED_MBPS - dl) / VIDEO_NEED_MBPS, 0, 1)
        stall = np.where(video, deficit * 40 * rng.random(k) + (loss > 5) * 10 * rng.random(k)
                         + backhaul * 6 * rng.random(k), 0.0)
        stall = np.where(video & (rng.random(k) < 0.03), stall + rng.exponential(2.0, k), stall)
        if self.people is not None:
            felt = self.people.sessions(subs, service, rsrp, dl, lat, drop, stall)
            # a badly served subscriber sometimes checks the network in the app (a visible signal)
            chk = (felt > 0.4) & (rng.random(k) < 0.12)
            self._pending_checks = (subs[chk], np.minimum(ts[chk] + rng.integers(30_000, 300_000, int(chk.sum())),
                                                          t0 + span - 1))
            return self._serialise_sessions(subs, ts, cell, reg, radio, service, rsrp, sinr, dl, ul, lat, jit, loss,
                                            drop, stall)
        # how bad the session felt (0..1)
        demanding = (service == V_VIDEO) | (service == V_GAMING) | (service == V_VOICE)
        bad = np.maximum.reduce([
            drop * 0.7,
            np.minimum(1, stall / 30),
            demanding * np.clip((lat - 150) / 400, 0, 0.8),
            np.isin(service, (V_VIDEO, V_WEB, V_SOCIAL, V_DOWNLOAD)) * np.clip(1 - dl, 0, 1) * 0.4,
            np.clip((loss - 5) / 30, 0, 0.5),
        ])
        sel = bad > 0.02
        ts_.append(subs[sel]); tb_.append(bad[sel]); tc_.append(np.zeros(int(sel.sum()), np.uint8))
        # a badly served subscriber sometimes checks the network in the app (a visible signal)
        chk = bad > 0.5
        chk &= rng.random(k) < 0.12
        self._pending_checks = (subs[chk], np.minimum(ts[chk] + rng.integers(30_000, 300_000, int(chk.sum())), t0 + span - 1))
        return self._serialise_sessions(subs, ts, cell, reg, radio, service, rsrp, sinr, dl, ul, lat, jit, loss,
                                        drop, stall)

    def _serialise_sessions(self, subs, ts, cell, reg, radio, service, rsrp, sinr, dl, ul, lat, jit, loss, drop, stall):
        w = self.world
        k = len(subs)
        if not self.emitting:
            return [], [], []
        first = self.counter[NET]
        self.counter[NET] += k
        self.clean[NET] += k
        self._count("network_session", k)
        seg = w.segment[subs]
        cols = (range(first, first + k), subs.tolist(), ts.tolist(), cell.tolist(),
                self._region_names[reg].tolist(), self._radio_names[radio].tolist(),
                self._service_names[service].tolist(), rsrp.tolist(), sinr.tolist(), dl.tolist(), ul.tolist(),
                lat.tolist(), jit.tolist(), loss.tolist(), self._bool_names[drop.view(np.uint8)].tolist(),
                stall.tolist(), self._segment_names[seg].tolist(), self._device_names[w.device[subs]].tolist())
        tmpl = self._net
        lines = [tmpl % row for row in zip(*cols)]
        self._count("call_drop", int(drop.sum()))
        return lines, cols[1], cols[2]

    def _app_events(self, t0, span, load, active, ts_, tb_, tc_):
        rng, w = self.rng, self.world
        k = rng.poisson(w.n * self.config.app_per_hour * load * span / HOUR_MS * self._volume)
        subs = rng.integers(0, w.n, k)
        ts = t0 + rng.integers(0, span, k)
        feature = _pick(rng, APP_FEATURE_SHARE, k).astype(np.int64)
        if self.people is not None:
            alive = self.people.active[subs]
            subs, ts, feature = subs[alive], ts[alive], feature[alive]
        checks, check_ts = getattr(self, "_pending_checks", None) or (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._pending_checks = None
        subs = np.concatenate([subs, checks]).astype(np.int64)
        ts = np.concatenate([ts, check_ts]).astype(np.int64)
        feature = np.concatenate([feature, np.full(len(checks), APP_FEATURES.index("network_check"))])
        k = len(subs)
        if not k:
            return [], [], []
        order = np.argsort(ts, kind="stable")
        subs, ts, feature = subs[order], ts[order], feature[order]
        version = w.app_version[subs]
        p_fail = np.full(k, 0.05)
        p_err = np.full(k, 0.015)
        for inc in active:
            if inc.type != "app_bug":
                continue
            m = (version == APP_VERSIONS.index(inc.app_version)) & (ts >= inc.onset_ms)
            if inc.end_ms is not None:
                m &= ts < inc.end_ms
            if inc.regions:
                m &= np.isin(w.cell_region[w.home[subs]], inc.regions)
            p_fail[m] += 0.45 * inc.severity
            p_err[m] += 0.25 * inc.severity
        u = rng.random(k)
        support = feature == APP_FEATURES.index("support")
        # 0 success, 1 failure, 2 bot_to_human, 3 error
        kind = np.where(u < p_err, 3, np.where(u < p_err + p_fail, 1, 0))
        # a failed attempt at self-service often ends with the bot handing over to a human;
        # support chats do so on their own a fifth of the time
        bounce = ((kind == 1) & (rng.random(k) < 0.35)) | (support & (kind == 0) & (rng.random(k) < 0.2))
        kind = np.where(bounce, 2, kind)
        sel = kind > 0
        if self.people is not None:
            self.people.app(subs[sel], kind[sel])
            if not self.emitting:
                return [], [], []
        else:
            bad = np.array([0.0, 0.3, 0.4, 0.25])[kind]
            ts_.append(subs[sel]); tb_.append(bad[sel]); tc_.append(np.full(int(sel.sum()), 2, np.uint8))
        kinds = np.array(["self_service_success", "self_service_failure", "bot_to_human", "error"], dtype=object)
        feat = np.array(['"%s"' % f for f in APP_FEATURES], dtype=object)[feature]
        err = np.where(kind == 3, np.array(['"%s"' % c for c in APP_ERROR_CODES], dtype=object)[rng.integers(0, len(APP_ERROR_CODES), k)], "null")
        first = self.counter[APP]
        self.counter[APP] += k
        self.clean[APP] += k
        sess0 = self.app_session
        self.app_session += k
        for i, name in enumerate(kinds):
            self._count("app_" + name, int((kind == i).sum()))
        seg = w.segment[subs]
        cols = (range(first, first + k), range(sess0, sess0 + k), subs.tolist(), ts.tolist(), kinds[kind].tolist(),
                feat.tolist(), err.tolist(), ["null"] * k, np.array(APP_VERSIONS, dtype=object)[version].tolist(),
                self._region_names[w.cell_region[w.home[subs]]].tolist(), self._segment_names[seg].tolist(),
                self._account[subs].tolist())
        tmpl = self._app
        return [tmpl % row for row in zip(*cols)], cols[2], cols[3]

    def _billing(self, t0, span, active, ts_, tb_, tc_):
        """Bill shocks: invisible in the streams except through what the customer does next."""
        rng, w = self.rng, self.world
        k = rng.poisson(w.n * BILL_SURPRISE_PER_HOUR * span / HOUR_MS * self._volume)
        subs = [rng.integers(0, w.n, k)]
        bad = [rng.uniform(0.4, 0.9, k)]
        for inc in active:
            if inc.type != "billing_error":
                continue
            on = max(t0, inc.onset_ms)
            off = t0 + span if inc.end_ms is None else min(t0 + span, inc.end_ms)
            share = sum(SEGMENT_SHARE[s] for s in inc.segments)
            # while the wave lasts ~10 %/h (``share_per_hour``) of the segment get a wrong bill (at severity 1)
            m = rng.poisson(w.n * share * inc.share_per_hour * inc.severity * (off - on) / HOUR_MS)
            cand = rng.integers(0, w.n, int(m / max(share, 1e-6) * 1.3) + 8)
            cand = cand[np.isin(w.segment[cand], inc.segments)][:m]
            subs.append(cand)
            bad.append(rng.uniform(0.7, 1.0, len(cand)))
        subs_a = np.concatenate(subs)
        bad_a = np.concatenate(bad)
        if self.people is not None:
            alive = self.people.active[subs_a]
            subs_a, bad_a = subs_a[alive], bad_a[alive]
            if self.emitting:
                self._count("bill_surprise", len(subs_a))
            self.people.bills(subs_a, bad_a)
            return
        self._count("bill_surprise", len(subs_a))
        ts_.append(subs_a); tb_.append(bad_a); tc_.append(np.ones(len(subs_a), np.uint8))
        self._billing_subs = subs_a

    def _experience(self, t1, t_min, ts_, tb_, tc_) -> None:
        """Fold the step's bad moments into the latent state; some subscribers complain."""
        rng, w = self.rng, self.world
        if self.people is not None:
            complaints, churns = self.people.advance(int(self.people.t_ms), t1)
            for s, ts, driver in complaints:
                from monitor.sim.world import CATEGORY, D

                category = CATEGORY[D[driver]] if driver != "none" else CAUSES[int(rng.integers(3))]
                self._push(ts, "complain", (s, category, driver))
            for s, ts, driver in churns:
                self._push(ts, "port_out", (s, driver))
            return
        if not ts_:
            return
        subs = np.concatenate(ts_).astype(np.int64)
        if not len(subs):
            return
        bad = np.concatenate(tb_).astype(np.float32)
        cause = np.concatenate(tc_)
        # the worst moment of the step per subscriber, with its cause
        order = np.lexsort((-bad, subs))
        subs, bad, cause = subs[order], bad[order], cause[order]
        first = np.ones(len(subs), bool)
        first[1:] = subs[1:] != subs[:-1]
        subs, bad, cause = subs[first], bad[first], cause[first]
        w.hit(subs, bad, cause, t_min)
        e = w.effective(subs)
        # complaint hazard: rises steeply as experienced satisfaction falls; a bill shock is a
        # reason to call in itself
        billing = np.isin(subs, self._billing_subs) if len(self._billing_subs) else np.zeros(len(subs), bool)
        p = (COMPLAINT_FLOOR + COMPLAINT_SLOPE * np.clip(COMPLAINT_BELOW - e, 0, 1) ** 1.4 + billing * 0.22 * bad) \
            * np.array(SEGMENT_COMPLAIN)[w.segment[subs]]
        who = subs[rng.random(len(subs)) < p]
        if not len(who):
            return
        at = t1 - 1 - rng.integers(0, min(self.step_ms, 30_000), len(who))
        for s, ts, c in zip(who.tolist(), at.tolist(), w.cause[who].tolist()):
            self._push(ts, "complain", (s, CAUSES[c], None))

    def _surveys(self, t0, span, active=()) -> None:
        rng, w = self.rng, self.world
        per_hour = RELATIONSHIP_SURVEY_PER_HOUR if self.people is None else self.people.params.survey_per_h
        k = rng.poisson(w.n * per_hour * span / HOUR_MS)
        for s, ts in zip(rng.integers(0, w.n, k).tolist(), (t0 + rng.integers(0, span, k)).tolist()):
            if self.people is None or self.people.active[s]:
                self._push(ts + self._answer_delay(), "survey", (s,))
        for inc in active:
            # an NPS campaign (by SMS/app): many answers within minutes, every one a label
            if inc.type != "survey_campaign":
                continue
            on = max(t0, inc.onset_ms)
            off = t0 + span if inc.end_ms is None else min(t0 + span, inc.end_ms)
            target = np.ones(w.n, bool)
            if inc.segments:
                target &= np.isin(w.segment, inc.segments)
            if inc.regions:
                target &= np.isin(w.cell_region[w.home], inc.regions)
            pool = np.flatnonzero(target)
            m = rng.poisson(len(pool) * CAMPAIGN_INVITES_PER_HOUR * inc.severity * (off - on) / HOUR_MS)
            if not len(pool) or not m:
                continue
            delays = np.minimum(HOUR_MS, rng.lognormal(math.log(4 * MINUTE_MS), 0.6, m)).astype(np.int64)
            for s, ts in zip(rng.choice(pool, m).tolist(), (on + rng.integers(0, max(off - on, 1), m) + delays).tolist()):
                self._push(ts, "survey", (s,))

    def _answer_delay(self) -> int:
        # answers arrive a while after the invitation: median ~40 min, from minutes to a day
        return int(min(24 * HOUR_MS, self.rng.lognormal(math.log(40 * MINUTE_MS), 0.9)))

    # -- tickets and survey answers (rare: a heap, one record at a time) ----------------------------

    def _due(self, t1: int):
        lines, subs, tss = [], [], []
        app_lines, app_subs, app_ts = [], [], []
        rng, w = self.rng, self.world
        while self.heap and self.heap[0][0] < t1:
            ts, _, kind, payload = heapq.heappop(self.heap)
            if kind == "port_out":
                s, driver = payload
                if self.people is None or not self.people.active[s]:
                    continue
                self.people.leave(s, ts)
                self._label(s, "churn", ts, driver)
                self.tickets.pop(s, None)
                if not self.emitting:
                    continue
                self._count("port_out")
                n = self.counter[APP]
                self.counter[APP] += 1
                self.clean[APP] += 1
                sess = self.app_session
                self.app_session += 1
                app_lines.append(self._app % (n, sess, s, ts, "port_out", '"porting"', "null", "null",
                                              APP_VERSIONS[w.app_version[s]], REGION_NAMES[w.cell_region[w.home[s]]],
                                              SEGMENTS[w.segment[s]], self._account[s]))
                app_subs.append(s)
                app_ts.append(ts)
                continue
            if kind == "survey":
                (s,) = payload
                if self.people is not None:
                    if not self.people.active[s]:
                        continue
                    nps, driver = self.people.answer(s)
                    if nps is None:
                        continue
                    self._label(s, "survey", ts)
                    if nps <= 6:
                        self._label(s, "detractor", ts, driver)
                else:
                    tm = (ts - self.start_ms) / MINUTE_MS
                    idx = np.array([s])
                    w.decay(idx, max(tm, float(w.t_last[s])))
                    e = float(w.effective(idx)[0])
                    nps = int(min(10, max(0, round(10 * e + 0.9 + rng.normal(0, NPS_NOISE)))))
                    self._label(s, "survey", ts)
                    if nps <= 6:
                        self._label(s, "detractor", ts)
                if not self.emitting:
                    continue
                self._count("survey_answer")
                n = self.counter[APP]
                self.counter[APP] += 1
                self.clean[APP] += 1
                sess = self.app_session
                self.app_session += 1
                app_lines.append(self._app % (n, sess, s, ts, "survey_answer", '"survey"', "null", nps,
                                              APP_VERSIONS[w.app_version[s]], REGION_NAMES[w.cell_region[w.home[s]]],
                                              SEGMENTS[w.segment[s]], self._account[s]))
                app_subs.append(s)
                app_ts.append(ts)
                continue
            if kind == "complain":
                s, category, driver = payload
                if self.people is not None:
                    if not self.people.active[s]:
                        continue
                    self.people.complained(s)
                tk = self.tickets.get(s)
                if tk is None:
                    self._open_ticket(s, ts, category, lines, subs, tss, driver)
                else:
                    # a repeated contact about an open ticket: a bad sign and a bad experience
                    self._ticket_line(tk, ts, "updated", None, None, lines, subs, tss)
                    self._hurt(s, ts, 0.35, "not_fixed")
                continue
            # ticket lifecycle steps
            s, tid, action = payload
            tk = self.tickets.get(s)
            if tk is None or tk["id"] != tid:
                continue
            if action == "escalated":
                self._ticket_line(tk, ts, "escalated", None, None, lines, subs, tss)
                self._label(s, "escalation", ts)
                self._hurt(s, ts, 0.3, "escalated")
            elif action == "updated":
                self._ticket_line(tk, ts, "updated", None, None, lines, subs, tss)
            elif action == "resolved":
                minutes = round((ts - tk["opened"]) / MINUTE_MS, 1)
                fcr = tk["fcr"] and not tk["reopened"]
                self._ticket_line(tk, ts, "resolved", "%.1f" % minutes, "true" if fcr else "false", lines, subs, tss)
                self._count("ticket_resolved")
                if minutes > 240:
                    self._hurt(s, ts, min(0.6, 0.15 + minutes / 2000), "slow_handling")  # slow handling hurts
                elif fcr and self.people is None:
                    w.sat[s] = min(w.base_sat[s], w.sat[s] + 0.03)  # a quick fix restores a little
                if self.people is not None and not fcr:
                    self._hurt(s, ts, 0.3, "not_fixed")
                p_survey = 0.2 if self.people is None else self.people.params.survey_after_ticket
                if rng.random() < p_survey:  # transactional survey after the ticket closes
                    self._push(ts + self._answer_delay(), "survey", (s,))
                p_reopen = 0.08 + 0.12 * (tk["category"] == "network") + 0.1 * (minutes > 240)
                if not tk["reopened"] and rng.random() < p_reopen:
                    self._push(ts + int(rng.lognormal(math.log(120 * MINUTE_MS), 0.7)), "ticket", (s, tid, "reopened"))
                    tk["resolved_at"] = ts
                else:
                    del self.tickets[s]
                    w.open_ticket[s] = False
            elif action == "reopened":
                tk["reopened"] = True
                self._ticket_line(tk, ts, "reopened", None, None, lines, subs, tss)
                self._label(s, "reopened", ts)
                self._hurt(s, ts, 0.6, "reopened")
                self._push(ts + int(rng.lognormal(math.log(240 * MINUTE_MS), 0.8)), "ticket", (s, tid, "resolved"))
        return lines, subs, tss, (app_lines, app_subs, app_ts)

    def _hurt(self, s: int, ts: int, bad: float, driver: str = "not_fixed") -> None:
        if self.people is not None:
            self.people.care(s, driver, bad)
            return
        w = self.world
        tm = max((ts - self.start_ms) / MINUTE_MS, float(w.t_last[s]))
        w.hit(np.array([s]), np.array([bad], np.float32), np.array([w.cause[s]], np.uint8), tm)

    def _open_ticket(self, s, ts, category, lines, subs, tss, driver=None) -> None:
        rng, w = self.rng, self.world
        seg = int(w.segment[s])
        channel = CHANNELS[int(_pick(rng, CHANNEL_SHARE[seg], 1)[0])]
        if self.people is not None and channel in ("call_center", "store"):
            from monitor.sim.world import opening_factor

            if float(opening_factor(ts, self.config.utc_offset_h)) < 1.0:
                channel = ("app", "web", "email", "chat")[int(rng.integers(4))]  # closed: digital channels only
        self.ticket_seq += 1
        tk = {"id": self.ticket_seq, "sub_id": s, "opened": ts, "channel": channel, "category": category,
              "reopened": False, "fcr": False}
        self.tickets[s] = tk
        w.open_ticket[s] = True
        self._label(s, "complaint", ts, driver if self.people is not None else None)
        self._ticket_line(tk, ts, "opened", None, None, lines, subs, tss)
        live = channel in ("call_center", "chat", "store")
        p_fcr = (0.55 if live else 0.3) * (0.45 if category == "network" else 1.0)
        if rng.random() < p_fcr:
            tk["fcr"] = True
            self._push(ts + int(rng.uniform(4, 25) * MINUTE_MS), "ticket", (s, tk["id"], "resolved"))
            return
        p_esc = 0.15 + 0.15 * (seg >= 2) + 0.1 * (category == "network")
        escalate = rng.random() < p_esc
        if rng.random() < 0.5:
            self._push(ts + int(rng.lognormal(math.log(60 * MINUTE_MS), 0.6)), "ticket", (s, tk["id"], "updated"))
        if escalate:
            self._push(ts + int(rng.lognormal(math.log(90 * MINUTE_MS), 0.6)), "ticket", (s, tk["id"], "escalated"))
        median = {"network": 360, "billing": 240, "service": 150}[category] * (2.0 if escalate else 1.0)
        self._push(ts + int(rng.lognormal(math.log(median * MINUTE_MS), 0.8)), "ticket", (s, tk["id"], "resolved"))

    def _ticket_line(self, tk, ts, action, minutes, fcr, lines, subs, tss) -> None:
        if not self.emitting:
            return
        w = self.world
        n = self.counter[TIX]
        self.counter[TIX] += 1
        self.clean[TIX] += 1
        if action != "resolved":
            self._count("ticket_" + action)
        sub = tk["sub_id"]
        lines.append(self._tix % (n, tk["id"], sub, ts, tk["channel"], tk["category"], action,
                                  minutes or "null", fcr or "null", REGION_NAMES[w.cell_region[w.home[sub]]],
                                  SEGMENTS[w.segment[sub]], self._account[sub]))
        subs.append(sub)
        tss.append(ts)

    # -- noise ----------------------------------------------------------------------------------

    def _noise(self, step: Step, now: int) -> None:
        cfg, rng = self.config, self.rng
        for t in range(3):
            lines, subs, tss = step.lines[t], step.subs[t], step.ts[t]
            n = len(lines)
            if n and (cfg.malformed_share or cfg.duplicate_share or cfg.late_share):
                u = rng.random(n)
                bad = np.flatnonzero(u < cfg.malformed_share).tolist()
                dup = np.flatnonzero((u >= cfg.malformed_share) & (u < cfg.malformed_share + cfg.duplicate_share)).tolist()
                late = np.flatnonzero((u >= cfg.malformed_share + cfg.duplicate_share)
                                      & (u < cfg.malformed_share + cfg.duplicate_share + cfg.late_share)).tolist()
                for i in dup:
                    delay = int(rng.integers(0, 3 * self.step_ms))
                    self._hold(now + delay, t, lines[i], subs[i], tss[i], "duplicate")
                if late:
                    delays = (rng.uniform(cfg.late_min_s, cfg.late_max_s, len(late)) * 1000).astype(np.int64)
                    if self.end_ms is not None:  # a record due after the end of the run stays in place
                        keep_late = np.array(tss, dtype=np.int64)[late] + delays < self.end_ms
                        late = [i for i, k in zip(late, keep_late.tolist()) if k]
                        delays = delays[keep_late]
                    for i, delay in zip(late, delays.tolist()):
                        self._hold(max(now, tss[i] + delay), t, lines[i], subs[i], tss[i], "late")
                late_arr = np.array(late, dtype=np.int64)
                for i in bad:
                    lines[i] = self._corrupt(lines[i])
                    self.fault_counts["malformed"][t] += 1
                    pos = i - int(np.searchsorted(late_arr, i))  # late records leave the step
                    self.faults.append({"topic": TOPICS[t], "kind": "malformed", "line": self.emitted[t] + pos,
                                        "ts_ms": tss[i]})
                if late:
                    drop = set(late)
                    keep = [i for i in range(n) if i not in drop]
                    step.lines[t] = [lines[i] for i in keep]
                    step.subs[t] = [subs[i] for i in keep]
                    step.ts[t] = [tss[i] for i in keep]
            step.ordered[t] = len(step.lines[t])
        self._release(step, now)
        for t in range(3):
            self.emitted[t] += len(step.lines[t])

    def _hold(self, release: int, topic: int, line: str, sub: int, ts: int, kind: str) -> None:
        self.heap_seq += 1
        heapq.heappush(self.held, (release, self.heap_seq, topic, line, sub, ts, kind))

    def _release(self, step: Step, now: int | None) -> None:
        while self.held and (now is None or self.held[0][0] <= now):
            _, _, t, line, sub, ts, kind = heapq.heappop(self.held)
            pos = self.emitted[t] + len(step.lines[t])
            step.lines[t].append(line)
            step.subs[t].append(sub)
            step.ts[t].append(ts)
            self.fault_counts[kind][t] += 1
            m = _EVENT_ID.search(line)
            self.faults.append({"topic": TOPICS[t], "kind": kind, "line": pos, "event_id": m.group(1) if m else None,
                                "ts_ms": ts})

    def _corrupt(self, line: str) -> str:
        """A schema-violating or unparsable version of ``line`` (still one line)."""
        how = int(self.rng.integers(4))
        if how == 0:   # truncated in transit
            return line[: max(1, len(line) // 2)] + "\n"
        if how == 1:   # a required field lost
            return re.sub(r'"subscriber_id":"[^"]*",', "", line, count=1)
        if how == 2:   # a number where none can be
            return _TS.sub('"ts_ms":12345', line, count=1)
        return _TS.sub(lambda m: '"ts_ms":"%s"' % m.group(1), line, count=1)  # wrong type

    # -- summaries ----------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        per_kind: dict[str, int] = {}
        for inc in self.incidents:
            if self.end_ms is None or inc.onset_ms < self.end_ms:
                per_kind[inc.type] = per_kind.get(inc.type, 0) + 1
        return {
            "seed": self.config.seed,
            "scenario": self.scenario.get("name"),
            "subscribers": self.world.n,
            "cells": self.world.n_cells,
            "regions": list(REGION_NAMES),
            "start_ms": self.start_ms,
            "end_ms": self.last_ts_ms,
            "step_ms": self.step_ms,
            "counts": {TOPICS[t]: {"lines": self.emitted[t], "clean": self.clean[t]} for t in range(3)},
            "events_by_kind": dict(sorted(self.kind_counts.items())),
            "faults": {k: {TOPICS[t]: v[t] for t in range(3)} for k, v in self.fault_counts.items()},
            "incidents": per_kind,
            "labels": {k: sum(len(v.get(k, ())) for v in self.labels.values())
                       for k in ("complaint", "reopened", "escalation", "survey", "detractor", "churn")},
            "world": self.config.world,
            "eval_start_ms": self.eval_start_ms,
            "world_end_ms": self.world_end_ms,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.config).items()
                       if not isinstance(v, Mapping)},
        }

    def incidents_json(self) -> dict[str, Any]:
        incs, drifts = [], []
        for inc in self.incidents:
            if self.end_ms is not None and inc.onset_ms >= self.end_ms:
                continue
            rec = {"id": inc.id, "type": inc.type, "kind": inc.type, "onset_ms": inc.onset_ms, "end_ms": inc.end_ms,
                   "cells": [cell_id(c) for c in inc.cells], "regions": [REGION_NAMES[r] for r in inc.regions],
                   "segments": [SEGMENTS[s] for s in inc.segments], "severity": inc.severity,
                   "scope": {"cell_outage": "cell", "cell_congestion": "cell", "regional_latency": "region",
                             "kpi_drift": "region", "billing_error": "segment", "app_bug": "app",
                             "survey_campaign": "survey"}[inc.type]}
            if len(inc.regions) == 1:
                rec["region"] = REGION_NAMES[inc.regions[0]]
            if inc.app_version:
                rec["app_version"] = inc.app_version
            if inc.type == "kpi_drift":
                rec["shift_db"] = inc.shift_db
                drifts.append(rec)
            else:
                incs.append(rec)
        return {"scenario": self.scenario.get("name"), "incidents": incs, "drifts": drifts}


# --- the public API ---------------------------------------------------------------------------------


def generate(config: SimConfig, sim: Simulator | None = None) -> Iterator[tuple[str, bytes, bytes]]:
    """``(topic, key, value)`` for every record in emission order across the three topics (event
    time order, except late records and duplicates, which come when they are released)."""
    sim = sim or Simulator(config)
    for step in sim.steps():
        merged = []
        for t in range(3):
            o = step.ordered[t]
            merged.extend(zip(step.ts[t][:o], [t] * o, step.subs[t][:o], step.lines[t][:o]))
        merged.sort(key=lambda r: r[0])
        for t in range(3):
            o = step.ordered[t]
            merged.extend(zip(step.ts[t][o:], [t] * (len(step.lines[t]) - o), step.subs[t][o:], step.lines[t][o:]))
        for _ts, t, s, line in merged:
            yield TOPICS[t], b"sub-%08d" % s, line[:-1].encode()


def write_files(config: SimConfig, out_dir: str | Path, progress: Any = None) -> dict[str, Any]:
    """Write ``<topic>.jsonl`` for the three streams and the ground truth into ``out_dir``;
    returns the manifest (also written as ``manifest.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sim = Simulator(config)
    files = [open(out / f"{t}.jsonl", "w", encoding="utf-8", newline="\n") for t in TOPICS]
    try:
        for step in sim.steps():
            for t in range(3):
                if step.lines[t]:
                    files[t].write("".join(step.lines[t]))
            if progress is not None:
                progress(sim)
    finally:
        for f in files:
            f.close()
    return write_ground_truth(sim, out)


def write_ground_truth(sim: Simulator, out_dir: str | Path) -> dict[str, Any]:
    """``manifest.json``, ``cells.json`` and ``ground_truth/`` (incidents, labels, faults)."""
    out = Path(out_dir)
    gt = out / "ground_truth"
    gt.mkdir(parents=True, exist_ok=True)
    w = sim.world
    (gt / "incidents.json").write_text(json.dumps(sim.incidents_json(), indent=1) + "\n")
    with open(gt / "labels.jsonl", "w") as f:
        for s in sorted(sim.labels):
            v = sim.labels[s]
            f.write(json.dumps({"subscriber_id": subscriber_id(s), "region": REGION_NAMES[w.cell_region[w.home[s]]],
                                "segment": SEGMENTS[w.segment[s]],
                                "complaints_ms": v.get("complaint", []), "reopened_ms": v.get("reopened", []),
                                "escalations_ms": v.get("escalation", []),
                                "detractor_ms": v.get("detractor", []), "surveys_ms": v.get("survey", []),
                                "churn_ms": v.get("churn", [])}) + "\n")
    if sim.people is not None:
        _write_v3_truth(sim, gt)
    if sim.satisfaction:
        # the latent truth behind the labels: row i is every subscriber's (by index) probability
        # of answering a survey at ts_ms[i] as a detractor
        np.savez_compressed(gt / "satisfaction.npz", ts_ms=np.array([t for t, _ in sim.satisfaction], np.int64),
                            p_detractor=np.stack([p for _, p in sim.satisfaction]))
    with open(gt / "faults.jsonl", "w") as f:
        for rec in sim.faults:
            f.write(json.dumps(rec) + "\n")
    cells = [{"cell_id": cell_id(i), "region": REGION_NAMES[r], "lat": float(la), "lon": float(lo)}
             for i, (r, la, lo) in enumerate(zip(w.cell_region.tolist(), w.cell_lat.tolist(), w.cell_lon.tolist()))]
    (out / "cells.json").write_text(json.dumps(cells) + "\n")
    manifest = sim.manifest()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_v3_truth(sim: Simulator, gt: Path) -> None:
    """v3's ground truth: the oracle, outcomes with their drivers, the world, the hidden attributes."""
    from monitor.sim.world import HORIZONS_H, OUTCOMES, SIM_VERSION

    p = sim.people
    if sim.oracle:
        # the oracle, and the person-blind oracle (``blind_*``: World.oracle(person=False))
        arrays = {f"{b}{o}_{h}h": np.stack([snap[f"{b}{o}_{h}h"] for _, snap in sim.oracle]).astype(np.float32)
                  for b in ("", "blind_") for o in OUTCOMES for h in HORIZONS_H}
        # instants x subscribers; column i = sub-%08d of i
        np.savez_compressed(gt / "oracle.npz", ts_ms=np.array([t for t, _ in sim.oracle], np.int64), **arrays)
    with open(gt / "outcomes.jsonl", "w") as f:
        for s in sorted(set(sim.labels) | set(sim.drivers)):
            v, d = sim.labels.get(s, {}), sim.drivers.get(s, {})
            rec = {"subscriber_id": subscriber_id(s)}
            for kind, key in (("complaint", "complaint"), ("detractor", "detractor"), ("churn", "churn")):
                if v.get(kind):
                    rec[key] = [{"ts_ms": t, "driver": dr} for t, dr in zip(v[kind], d.get(kind, ()))]
            if v.get("survey"):
                rec["surveys_ms"] = v["survey"]
            f.write(json.dumps(rec) + "\n")
    hidden = p.hidden()
    np.savez_compressed(gt / "subscribers.npz", **hidden)
    (gt / "world.json").write_text(json.dumps({
        "version": 3, "sim_version": SIM_VERSION, "seed": sim.config.seed, "params": p.params.to_json(),
        "prehistory_hours": sim.config.prehistory_hours, "grudge_ref": p.grudge_ref,
        "eval_start_ms": sim.eval_start_ms, "end_ms": sim.end_ms, "world_end_ms": sim.world_end_ms,
        "utc_offset_h": sim.config.utc_offset_h, "horizons_h": list(HORIZONS_H)}, indent=1) + "\n")
    if sim.treatments:
        with open(gt / "treatment.jsonl", "w") as f:
            for rec in sim.treatments:
                f.write(json.dumps(rec) + "\n")


def write_cells(config: SimConfig, path: str | Path) -> int:
    """The cell inventory of ``config``'s world (``cells.json``: ``[{cell_id, region, lat, lon}]``)
    without running the simulation; returns the number of cells."""
    w = Simulator(config).world
    cells = [{"cell_id": cell_id(i), "region": REGION_NAMES[r], "lat": float(la), "lon": float(lo)}
             for i, (r, la, lo) in enumerate(zip(w.cell_region.tolist(), w.cell_lat.tolist(), w.cell_lon.tolist()))]
    Path(path).write_text(json.dumps(cells) + "\n")
    return len(cells)


def load_ground_truth(out_dir: str | Path) -> dict[str, Any]:
    """The ground truth of a run written by :func:`write_files`: ``manifest``, ``incidents``,
    ``drifts``, ``cells``, ``labels`` (subscriber id -> record) and ``faults``."""
    d = Path(out_dir)
    inc = json.loads((d / "ground_truth" / "incidents.json").read_text())
    labels = {}
    with open(d / "ground_truth" / "labels.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            labels[rec["subscriber_id"]] = rec
    faults = [json.loads(x) for x in (d / "ground_truth" / "faults.jsonl").read_text().splitlines() if x]
    return {"manifest": json.loads((d / "manifest.json").read_text()), "incidents": inc["incidents"],
            "drifts": inc.get("drifts", []), "cells": json.loads((d / "cells.json").read_text()),
            "labels": labels, "faults": faults}
