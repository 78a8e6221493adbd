"""Simulator v3: the people of the simulated world -- what they feel, when they call, answer, leave.

:mod:`monitor.sim.simulate` owns the network, the traffic and the serialisation; this module owns the
*subscribers' side*: how much each experience matters in this world, how each person reacts, and
the outcomes that follow with a lead (complaints, survey answers, port-outs). It is written apart
from the scoring code on purpose: it imports nothing from ``monitor.scoring.features``, ``monitor.scoring.core``,
``monitor.scoring.warmstart`` or ``monitor.evaluation.risk`` and shares no formula with them
(``tests/test_simulate.py`` checks the imports). See ``docs/SIMULATOR.md``.

* **A world per seed** (:class:`WorldParams`): each driver's weight (coverage, drops, stalls,
  latency per service, throughput, billing surprises, slow/reopened/escalated/unfixed tickets, app
  failures, bot-to-human bounces), tolerances, time constants and base rates are drawn from the
  seed, so no fixed prior fits every world.
* **Per subscriber** (hidden): sensitivity per group of drivers, a propensity to call, a baseline
  satisfaction, loyalty, tenure and contract end (postpaid segments). None of them is in a stream.
* **Dynamics** per driver: an experience lands in ``fresh`` (not yet acted on), flows into
  ``irritation`` within hours (``lag_h``) which fades within a day or two (``irritation_h``), and
  irritation feeds a slow ``grudge`` that fades over weeks (``grudge_days``).
* **Outcomes**: complaints are a hazard driven by irritation, propensity and the call centre's
  opening hours; a survey answer (and whether one comes at all) depends on current satisfaction;
  churn (port-out) is a multi-day hazard driven by the grudge, loyalty, tenure and the contract.
  Each outcome records the driver behind it (sampled in proportion to its share of the hazard).

>>> import numpy as np
>>> p = People(np.zeros(50, np.uint8), seed=3, start_ms=0)
>>> p.params.weight.shape == (len(DRIVERS),)
True
>>> snap = p.oracle(3_600_000)
>>> sorted(snap)[:2]
['churn_168h', 'churn_24h']
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: the simulator's version (docs/SIMULATOR.md): 3.5 settles each person's history before the streams
SIM_VERSION = "3.5"
#: the everyday amount of experience per subscriber-hour at weight 1 that the session and app
#: constants below are scaled to (the nominal settled grudge, :attr:`WorldParams.grudge_ref`, uses it)
EVERYDAY_PER_H = 0.002

#: the drivers of dissatisfaction the world knows (ground-truth codes)
DRIVERS: tuple[str, ...] = (
    "coverage", "drops", "stalls", "latency_voice", "latency_video", "latency_gaming", "throughput",
    "billing", "slow_handling", "reopened", "escalated", "not_fixed", "app_failures", "bot_bounces",
)
D = {name: i for i, name in enumerate(DRIVERS)}
#: group of each driver: 0 network, 1 billing, 2 care, 3 app (a subscriber has one sensitivity per group)
GROUP = np.array([0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 3, 3])
#: ticket category a complaint about each driver is filed under
CATEGORY: tuple[str, ...] = ("network",) * 7 + ("billing",) + ("service",) * 6
#: complaint horizons and churn horizons written to the oracle (hours)
HORIZONS_H: tuple[int, ...] = (24, 72, 168)
OUTCOMES: tuple[str, ...] = ("complaint", "detractor", "churn")

# services as numbered by monitor.sim.simulate.SERVICES (voice, video, gaming, web, social, download, messaging)
_VOICE, _VIDEO, _GAMING = 0, 1, 2
_DATA_HEAVY = np.array([False, True, False, True, True, True, False])
# app interaction kinds as coded by monitor.sim.simulate (0 success, 1 failure, 2 bot_to_human, 3 error)


@dataclasses.dataclass(frozen=True)
class WorldParams:
    """What matters in one world, drawn from its seed (:meth:`draw`)."""

    weight: np.ndarray           # per driver: irritation per unit of experience
    rsrp_floor_dbm: float        # below this signal a session feels poor
    latency_tolerance_ms: tuple[float, float, float]   # voice, video, gaming
    need_mbps: float             # data sessions below this feel slow
    stall_tolerance_s: float
    lag_h: float                 # experience -> irritation
    irritation_h: float          # irritation fades
    grudge_days: float           # grudge fades
    grudge_gain: float           # irritation -> grudge per hour
    complaint_base_per_h: float  # complaints about nothing in particular
    complaint_per_h: float       # complaint hazard per unit of irritation ** complaint_power
    complaint_power: float
    churn_base_per_h: float
    churn_gain: float            # log-hazard per unit of grudge, in units of the nominal settled grudge
    survey_per_h: float          # relationship-survey invitations per subscriber and hour
    survey_after_ticket: float   # share of closed tickets followed by a survey invitation
    nps_noise: float
    treatment_effect: float      # share of irritation and grudge an outreach contact removes

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "WorldParams":
        # median weights per driver; each world scales them by a log-normal factor and drops about
        # one in five to a tenth (a driver that barely matters there)
        median = np.array([0.6, 1.0, 0.8, 0.7, 0.6, 0.5, 0.5, 1.6, 1.0, 1.4, 1.0, 0.9, 0.6, 0.7])
        w = median * np.exp(rng.normal(0.0, 0.6, len(DRIVERS)))
        w *= np.where(rng.random(len(DRIVERS)) < 0.2, 0.1, 1.0)
        return cls(
            weight=w,
            rsrp_floor_dbm=float(rng.uniform(-112, -101)),
            # above everyday latency (4G ~80 ms): only degraded sessions are noticed
            latency_tolerance_ms=(float(rng.uniform(150, 260)), float(rng.uniform(200, 400)), float(rng.uniform(100, 180))),
            need_mbps=float(rng.uniform(1.0, 4.0)),
            stall_tolerance_s=float(rng.uniform(4, 15)),
            lag_h=float(rng.uniform(2.0, 6.0)),
            irritation_h=float(rng.uniform(18, 40)),
            grudge_days=float(rng.uniform(10, 25)),
            grudge_gain=float(rng.uniform(0.008, 0.016)),
            complaint_base_per_h=float(rng.uniform(0.25e-4, 0.5e-4)),
            complaint_per_h=float(rng.uniform(3.0e-3, 6.0e-3)),
            complaint_power=float(rng.uniform(1.5, 2.0)),
            churn_base_per_h=float(rng.uniform(2.5e-5, 5.0e-5)),
            churn_gain=float(rng.uniform(1.2, 2.0)),
            survey_per_h=float(rng.uniform(0.002, 0.004)),
            survey_after_ticket=float(rng.uniform(0.15, 0.35)),
            nps_noise=float(rng.uniform(1.0, 1.6)),
            treatment_effect=float(rng.uniform(0.2, 0.5)),
        )

    @property
    def nominal_grudge(self) -> float:
        """The grudge an everyday experience rate would settle at in this world (:data:`EVERYDAY_PER_H`
        per unit of weight, over the network and app drivers, which every subscriber meets): the
        steady state ``grudge_gain × irritation_h × grudge_h × rate`` of :meth:`People.advance`'s
        accumulators. Churn counts a person's grudge against it until :meth:`People.settle`
        measures the population's own."""
        everyday = EVERYDAY_PER_H * float(self.weight[(GROUP == 0) | (GROUP == 3)].sum())
        return self.grudge_gain * self.irritation_h * self.grudge_days * 24.0 * everyday

    def to_json(self) -> dict[str, Any]:
        out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(self).items()}
        out["weight"] = dict(zip(DRIVERS, [round(float(x), 4) for x in self.weight]))
        out["nominal_grudge"] = self.nominal_grudge
        return out


def opening_factor(t_ms: np.ndarray | int, utc_offset_h: float) -> np.ndarray:
    """How reachable care is at ``t_ms`` (relative to weekday office hours = 1): the call centre and
    stores open 08:00-20:00 Monday to Saturday; outside, only digital channels take complaints."""
    t = np.asarray(t_ms, dtype=np.float64)
    local_h = (t / HOUR_MS + utc_offset_h)
    hour = local_h % 24
    dow = np.floor(local_h / 24 + 3) % 7   # 1970-01-01 was a Thursday: 0 = Monday
    day = (hour >= 8) & (hour < 20)
    return np.where(day & (dow < 6), 1.0, np.where(day, 0.4, 0.12))


class People:
    """The subscribers' hidden side, as arrays over the population (index = subscriber number).

    Parameters
    ----------
    segment
        Segment index per subscriber (as :data:`monitor.sim.simulate.SEGMENTS`: prepaid, postpaid, business, premium).
    seed
        The world's seed: world parameters and every hidden attribute derive from it.
    start_ms
        Event time the world starts at. The hidden history before it is a small grudge, or, after
        :meth:`record` and :meth:`settle` (the simulator's silent pre-history), each person's own
        steady state.
    utc_offset_h
        Local time minus UTC (opening hours follow local time).
    """

    def __init__(self, segment: np.ndarray, *, seed: int, start_ms: int, utc_offset_h: float = 0.0,
                 params: WorldParams | None = None) -> None:
        rng = np.random.default_rng([seed, 0x3C0DE])
        self.rng = np.random.default_rng([seed, 0x3C0DF])
        self.params = params or WorldParams.draw(rng)
        n = len(segment)
        self.n = n
        self.utc_offset_h = utc_offset_h
        self.t_ms = int(start_ms)
        seg = np.asarray(segment, dtype=np.int64)
        self.segment = seg
        # hidden attributes
        self.sensitivity = np.exp(rng.normal(0.0, 0.5, (n, 4))).astype(np.float32)
        self.propensity = np.exp(rng.normal(-0.1, 0.45, n)).astype(np.float32)   # mean ~1
        self.propensity *= np.array([0.7, 1.0, 1.4, 1.3], np.float32)[seg]
        self.base_satisfaction = np.clip(rng.beta(8, 2.2, n), 0.05, 1.0).astype(np.float32)
        self.loyalty = rng.normal(0.0, 0.5, n).astype(np.float32)
        self.tenure_months = rng.exponential(30.0, n).astype(np.float32)
        self.survey_responsiveness = np.clip(rng.beta(2, 5, n), 0.02, 0.95).astype(np.float32)
        contracted = seg > 0
        end = start_ms + rng.uniform(-365, 730, n) * DAY_MS
        self.contract_end_ms = np.where(contracted, end, np.nan)
        # state per driver
        nd = len(DRIVERS)
        self.fresh = np.zeros((n, nd), np.float32)
        self.irritation = np.zeros((n, nd), np.float32)
        # the history before the streams start: a grudge at its steady level, spread over drivers
        # in proportion to their weight (nobody in the streams can see it)
        share = self.params.weight / self.params.weight.sum()
        level = rng.gamma(0.6, 0.1, n).astype(np.float32)
        self.grudge = (level[:, None] * share[None, :]).astype(np.float32)
        self._start_ms = int(start_ms)
        # the pre-history part of each accumulator at the start (fresh, irritation, grudge), for the
        # person-blind oracle; :meth:`settle` replaces it
        self._pre0 = (np.zeros_like(self.fresh), np.zeros_like(self.irritation), self.grudge.copy())
        self.active = np.ones(n, bool)
        self.left_ms = np.full(n, -1, np.int64)
        #: while the silent pre-history runs: what each person experienced per driver, per half
        self._recorded: list[np.ndarray] | None = None
        self._half = 0
        self._scale = 1.0
        #: the grudge churn counts a person's against: what is normal in this world (the population's
        #: mean settled grudge after :meth:`settle`; the world's nominal one before)
        self.grudge_ref = self.params.nominal_grudge

    # -- the pre-history (v3.5) -----------------------------------------------------------------------

    def record(self, half: int, scale: float = 1.0) -> None:
        """From now on, experiences are recorded (into the pre-history's ``half`` 0 or 1, each counted
        ``scale`` times: a sample of the experiences stands for all), not felt."""
        if self._recorded is None:
            self._recorded = [np.zeros(self.fresh.shape), np.zeros(self.fresh.shape)]
        self._half = half
        self._scale = scale

    def settle(self, hours: float) -> None:
        """Start everyone at the steady state of their own accumulators, from what :meth:`record`
        saw over ``hours`` (two equal halves); recording stops.

        A constant rate ``r`` per hour sustains ``fresh = r·lag_h``, ``irritation = r·irritation_h``
        and ``grudge = grudge_gain·irritation_h·grudge_h·r``. Fresh and irritation take the raw rate
        (their windows, hours to two days, are as noisy as the record). The grudge averages weeks:
        per driver, each person's deviation from the mean rate is scaled so that its variance across
        people is the persistent part (the two halves' covariance) plus the noise a grudge-long
        window keeps, not the record's two days of luck.

        >>> p = People(np.zeros(400, np.uint8), seed=1, start_ms=0)
        >>> p.record(0); p.bills(np.arange(200), np.ones(200)); p.record(1); p.bills(np.arange(200), np.ones(200))
        >>> p.settle(48.0)
        >>> bool(p.grudge[:200].sum() > 0 and p.grudge[200:].sum() == 0 and p.fresh[200:].sum() == 0)
        True
        """
        assert self._recorded is not None, "record() first"
        p = self.params
        half_h = hours / 2.0
        a, b = (x / half_h for x in self._recorded)
        self._recorded = None
        rate = 0.5 * (a + b)
        mean = rate.mean(axis=0)
        da, db = a - a.mean(axis=0), b - b.mean(axis=0)
        persistent = np.maximum((da * db).mean(axis=0), 0.0)
        noise = np.maximum(0.5 * ((da ** 2).mean(axis=0) + (db ** 2).mean(axis=0)) - persistent, 0.0)   # per half
        grudge_h = p.grudge_days * 24.0
        want = persistent + noise * half_h / (2.0 * grudge_h)
        have = rate.var(axis=0)
        scale = np.where(have > 0, np.sqrt(want / np.where(have > 0, have, 1.0)), 0.0)
        slow = np.maximum(mean + scale * (rate - mean), 0.0)
        self.fresh = (rate * p.lag_h).astype(np.float32)
        self.irritation = (rate * p.irritation_h).astype(np.float32)
        self.grudge = (slow * p.grudge_gain * p.irritation_h * grudge_h).astype(np.float32)
        self._pre0 = (self.fresh.copy(), self.irritation.copy(), self.grudge.copy())
        total = float(self.grudge.sum(axis=1).mean())
        if total > 0:
            self.grudge_ref = total

    def _pre_at(self, t_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What is left at ``t_ms`` of the state the world started with (its free decay: the same
        linear chain as :meth:`advance`, without new experience)."""
        p = self.params
        u = max(0.0, (t_ms - self._start_ms) / HOUR_MS)
        lag, tau, tg = p.lag_h, p.irritation_h, p.grudge_days * 24.0
        f0, i0, g0 = self._pre0
        c = tau / (tau - lag)
        ef, ei, eg = math.exp(-u / lag), math.exp(-u / tau), math.exp(-u / tg)

        def conv(a: float) -> float:   # integral of exp(-s/a) exp(-(u-s)/tg) over s in [0, u]
            return (math.exp(-u / a) - eg) / (1.0 / tg - 1.0 / a)
        fresh = f0 * ef
        irritation = i0 * ei + f0 * (c * (ei - ef))
        grudge = g0 * eg + p.grudge_gain * ((i0 + c * f0) * conv(tau) - c * f0 * conv(lag))
        return fresh, irritation, grudge

    # -- experiences ------------------------------------------------------------------------------

    def _add(self, subs: np.ndarray, driver: int | np.ndarray, amount: np.ndarray) -> None:
        if not len(subs):
            return
        g = GROUP[driver]
        k = self.params.weight[driver] * self.sensitivity[subs, g] * amount
        if self._recorded is not None:
            np.add.at(self._recorded[self._half], (subs, driver), k * self._scale)
            return
        np.add.at(self.fresh, (subs, driver), k.astype(np.float32))

    def sessions(self, subs: np.ndarray, service: np.ndarray, rsrp: np.ndarray, dl: np.ndarray,
                 latency: np.ndarray, drop: np.ndarray, stall: np.ndarray) -> np.ndarray:
        """Fold network sessions in; returns how unpleasant each felt (0..), for side effects such as
        checking the network in the app."""
        p = self.params
        # how far past this world's tolerance each session went (0 = unnoticed), in units that the
        # constants below bring to comparable everyday levels (~0.002 per subscriber and hour)
        coverage = np.clip((p.rsrp_floor_dbm - rsrp) / 12.0, 0, 2) ** 2
        dropped = drop.astype(np.float64)
        stalls = np.where(service == _VIDEO, np.clip(stall / p.stall_tolerance_s - 1.0, 0, 4) ** 1.5, 0.0)
        lat = np.zeros((3, len(subs)))
        for j, svc in enumerate((_VOICE, _VIDEO, _GAMING)):
            lat[j] = np.where(service == svc, np.clip(np.log(latency / p.latency_tolerance_ms[j]), 0, 2), 0.0)
        slow = np.where(_DATA_HEAVY[service], np.clip(np.log2(p.need_mbps / np.maximum(dl, 0.01)) - 1.0, 0, 4), 0.0)
        total = np.zeros(len(subs))
        for driver, amount in ((D["coverage"], coverage * 0.007), (D["drops"], dropped * 0.03),
                               (D["stalls"], stalls * 0.004), (D["latency_voice"], lat[0] * 0.3),
                               (D["latency_video"], lat[1] * 0.3), (D["latency_gaming"], lat[2] * 0.3),
                               (D["throughput"], slow * 0.01)):
            m = amount > 0
            if m.any():
                self._add(subs[m], driver, amount[m])
                total[m] += amount[m]
        return total

    def app(self, subs: np.ndarray, kind: np.ndarray) -> None:
        """App interactions by kind code (1 failure, 2 bot-to-human, 3 error)."""
        fail = (kind == 1) | (kind == 3)
        self._add(subs[fail], D["app_failures"], np.full(int(fail.sum()), 0.1))
        bounce = kind == 2
        self._add(subs[bounce], D["bot_bounces"], np.full(int(bounce.sum()), 0.1))

    def bills(self, subs: np.ndarray, severity: np.ndarray) -> None:
        """Billing surprises (severity ~0.4..1): not in any stream."""
        self._add(subs, D["billing"], severity * 0.8)

    def care(self, sub: int, driver: str, amount: float) -> None:
        """Complaint handling that went wrong (slow, reopened, escalated, not fixed)."""
        self._add(np.array([sub]), D[driver], np.array([amount]))

    def complained(self, sub: int) -> None:
        """Having called takes some of the edge off (until the handling disappoints)."""
        self.irritation[sub] *= 0.85
        self.fresh[sub] *= 0.85

    def leave(self, sub: int, ts_ms: int) -> None:
        self.active[sub] = False
        self.left_ms[sub] = ts_ms

    def treat(self, subs: np.ndarray) -> None:
        """An outreach contact: removes a share of irritation and grudge (the true uplift)."""
        keep = 1.0 - self.params.treatment_effect
        self.irritation[subs] *= keep
        self.fresh[subs] *= keep
        self.grudge[subs] *= keep

    # -- hazards ------------------------------------------------------------------------------------

    def _complaint_rate(self, irritation_total: np.ndarray, t_ms: Any) -> np.ndarray:
        p = self.params
        return (self.propensity * (p.complaint_base_per_h + p.complaint_per_h * irritation_total ** p.complaint_power)
                * opening_factor(t_ms, self.utc_offset_h))

    def _contract_term(self, t_ms: float) -> np.ndarray:
        """Log-hazard of the contract: locked in before its end, free and courted right after it."""
        since = (t_ms - self.contract_end_ms) / DAY_MS
        out = np.where(np.isnan(since), 0.2, np.where(since < 0, -0.6, np.where(since < 60, 0.7, 0.2)))
        return out

    def _grudge_log(self, grudge_total: Any) -> Any:
        """The grudge's term of the churn log-hazard, the grudge counted against what is normal in this
        world (:attr:`grudge_ref`); its effect saturates (at most x e^4)."""
        return 4.0 * np.tanh(self.params.churn_gain * grudge_total / (4.0 * self.grudge_ref))

    def _churn_rate(self, grudge_total: np.ndarray, t_ms: float) -> np.ndarray:
        p = self.params
        log = (self._grudge_log(grudge_total) + self._contract_term(t_ms) + self.loyalty * -1.0
               - 0.3 * np.log1p(self.tenure_months / 12.0))
        return p.churn_base_per_h * np.exp(log)

    def satisfaction(self, subs: np.ndarray | int) -> np.ndarray:
        irr = self.irritation[subs].sum(axis=-1)
        gr = self.grudge[subs].sum(axis=-1)
        return self.base_satisfaction[subs] - 0.35 * np.tanh(0.8 * irr) - 0.3 * np.tanh(0.7 * gr)

    def _response_prob(self, sat: np.ndarray, subs: Any) -> np.ndarray:
        # the unhappy (and the delighted) answer more often
        return np.clip(self.survey_responsiveness[subs] * (0.6 + 1.6 * np.abs(sat - 0.65)), 0, 1)

    def advance(self, t0: int, t1: int) -> tuple[list[tuple[int, int, str]], list[tuple[int, int, str]]]:
        """Move every subscriber from ``t0`` to ``t1``; returns the complaints ``(sub, ts, driver)``
        and port-outs ``(sub, ts, driver)`` that fire in between (driver ``none`` for the base rate)."""
        p = self.params
        dt_h = (t1 - t0) / HOUR_MS
        if dt_h <= 0:
            return [], []
        ef = math.exp(-dt_h / p.lag_h)
        ei = math.exp(-dt_h / p.irritation_h)
        eg = math.exp(-dt_h / (p.grudge_days * 24))
        flow = p.irritation_h / (p.irritation_h - p.lag_h) * (ei - ef)
        # irritation integrated over the step feeds the grudge (trapezoid)
        irr_before = self.irritation
        irr_after = irr_before * ei + self.fresh * flow
        self.grudge = self.grudge * eg + p.grudge_gain * dt_h * 0.5 * (irr_before + irr_after)
        self.irritation = irr_after
        self.fresh *= ef
        self.t_ms = t1
        act = self.active
        rng = self.rng
        irr_total = self.irritation.sum(axis=1)
        lam_c = self._complaint_rate(irr_total, (t0 + t1) / 2) * act
        fire_c = np.flatnonzero(rng.random(self.n) < -np.expm1(-lam_c * dt_h))
        complaints = []
        for s in fire_c.tolist():
            base = self.propensity[s] * p.complaint_base_per_h
            total = self.propensity[s] * (p.complaint_base_per_h + p.complaint_per_h * irr_total[s] ** p.complaint_power)
            complaints.append((s, int(t0 + rng.integers(0, t1 - t0)), self._pick_driver(self.irritation[s], base / total)))
        gr_total = self.grudge.sum(axis=1)
        lam_ch = self._churn_rate(gr_total, (t0 + t1) / 2) * act
        fire_ch = np.flatnonzero(rng.random(self.n) < -np.expm1(-lam_ch * dt_h))
        churns = []
        for s in fire_ch.tolist():
            # share of the hazard the grudge is responsible for: 1 - exp(-its log-hazard term)
            none = math.exp(-float(self._grudge_log(float(gr_total[s]))))
            churns.append((s, int(t0 + rng.integers(0, t1 - t0)), self._pick_driver(self.grudge[s], none)))
        return complaints, churns

    def _pick_driver(self, contributions: np.ndarray, p_none: float) -> str:
        total = float(contributions.sum())
        if total <= 0 or self.rng.random() < p_none:
            return "none"
        return DRIVERS[int(np.searchsorted(np.cumsum(contributions) / total, self.rng.random(), side="right").clip(0, len(DRIVERS) - 1))]

    def answer(self, sub: int) -> tuple[int | None, str]:
        """A survey invitation to ``sub`` now: their NPS (None if they do not answer) and the driver
        that weighs most on their dissatisfaction (``none`` when they are content)."""
        sat = float(self.satisfaction(sub))
        if self.rng.random() >= float(self._response_prob(np.array(sat), sub)):
            return None, "none"
        nps = int(min(10, max(0, round(10 * sat + 0.5 + self.rng.normal(0, self.params.nps_noise)))))
        load = self.irritation[sub] + self.grudge[sub]
        driver = DRIVERS[int(np.argmax(load))] if nps <= 6 and float(load.sum()) > 0.15 else "none"
        return nps, driver

    # -- the oracle -------------------------------------------------------------------------------

    def _blind(self, t_ms: int, crm: bool = False) -> dict[str, np.ndarray]:
        """The person's side replaced by what the world's population says of someone of their
        segment: what a perfect model of the world that sees only the streams' exposures could know.

        Per driver and accumulator (fresh, irritation, grudge), the state the streams caused is the
        state less what is left of the pre-history (:meth:`_pre_at`; nobody saw that history),
        divided by the person's sensitivity to the driver's group and multiplied by the population's
        mean sensitivity; what is left of the pre-history becomes its population mean.
        Propensity, base satisfaction, survey responsiveness become their segment means; loyalty,
        tenure and the contract enter the churn hazard as the segment's mean of their factor
        (``crm``: the contract and tenure as they are, as an operator's CRM knows them; loyalty
        still the segment's mean).
        """
        p = self.params
        seg = self.segment
        nseg = int(seg.max()) + 1 if len(seg) else 0

        def seg_mean(x: np.ndarray) -> np.ndarray:
            tot = np.bincount(seg, weights=x.astype(np.float64), minlength=nseg)
            cnt = np.maximum(np.bincount(seg, minlength=nseg), 1)
            return (tot / cnt)[seg]

        sens = self.sensitivity[:, GROUP]                       # n x drivers
        mean_sens = float(np.exp(0.5 * 0.5 ** 2))               # E[exp(N(0, 0.5^2))]
        pre_f, pre_i, pre_g = self._pre_at(t_ms)

        def seen(state: np.ndarray, pre: np.ndarray) -> np.ndarray:
            return np.maximum(state - pre, 0.0) / sens * mean_sens + pre.mean(axis=0)[None, :]
        known = self._contract_term(t_ms) - 0.3 * np.log1p(self.tenure_months / 12.0)
        person = known - self.loyalty
        churn_log = (known + np.log(seg_mean(np.exp(-self.loyalty))) if crm
                     else np.log(seg_mean(np.exp(person))))
        return {"propensity": seg_mean(self.propensity),
                "fresh": seen(self.fresh, pre_f),
                "irritation": seen(self.irritation, pre_i),
                "grudge": seen(self.grudge, pre_g),
                "base_satisfaction": seg_mean(self.base_satisfaction),
                "survey_responsiveness": seg_mean(self.survey_responsiveness),
                "churn_person_log": churn_log}

    def oracle(self, t_ms: int, grid_h: float = 1.0, *, person: bool = True, crm: bool = False) -> dict[str, np.ndarray]:
        """Every subscriber's true probability of each outcome within each horizon from ``t_ms``,
        given their state now and no new experience (``{outcome}_{h}h`` -> float32 per subscriber;
        0 for subscribers who have left). What a perfect model of *this* world could know.

        ``person=False``: the same world without the person's hidden side (:meth:`_blind`), the
        ceiling of a model that knows the world but sees each subscriber only through the streams.
        The contract term is held at ``t_ms`` over the horizon there; ``crm`` (with ``person=False``):
        the contract and tenure count as seen (a what-if for CRM data in the streams)."""
        p = self.params
        if person:
            fresh, irritation, grudge = self.fresh, self.irritation, self.grudge
            propensity, base_sat, resp_k = self.propensity, self.base_satisfaction, self.survey_responsiveness
            churn_rate = self._churn_rate
        else:
            b = self._blind(t_ms, crm)
            fresh, irritation, grudge = b["fresh"], b["irritation"], b["grudge"]
            propensity, base_sat, resp_k = b["propensity"], b["base_satisfaction"], b["survey_responsiveness"]
            person_log = b["churn_person_log"]

            def churn_rate(gr_total: np.ndarray, _t: float) -> np.ndarray:
                return p.churn_base_per_h * np.exp(self._grudge_log(gr_total) + person_log)
        n_steps = int(max(HORIZONS_H) / grid_h)
        u = (np.arange(n_steps) + 0.5) * grid_h                     # mid-points, hours ahead
        ef = np.exp(-u / p.lag_h)
        ei = np.exp(-u / p.irritation_h)
        eg = np.exp(-u / (p.grudge_days * 24))
        flow = p.irritation_h / (p.irritation_h - p.lag_h) * (ei - ef)
        irr0 = irritation.sum(axis=1)[:, None]
        fresh0 = fresh.sum(axis=1)[:, None]
        irr = irr0 * ei[None, :] + fresh0 * flow[None, :]            # n x steps
        # grudge: decays, fed by irritation (integral of gain * irr, approximated per grid step)
        gr0 = grudge.sum(axis=1)[:, None]
        feed = np.cumsum(p.grudge_gain * irr * grid_h, axis=1)
        gr = gr0 * eg[None, :] + feed * 0.9
        times = t_ms + u * HOUR_MS
        open_f = opening_factor(times, self.utc_offset_h)[None, :]
        lam_c = propensity[:, None] * (p.complaint_base_per_h + p.complaint_per_h * irr ** p.complaint_power) * open_f
        lam_ch = np.empty_like(irr)
        for j in range(n_steps):
            lam_ch[:, j] = churn_rate(gr[:, j], float(times[j]))
        sat = (base_sat[:, None] - 0.35 * np.tanh(0.8 * irr) - 0.3 * np.tanh(0.7 * gr))
        from scipy.special import ndtr

        p_det = ndtr((6.5 - (10.0 * sat + 0.5)) / p.nps_noise)
        resp = np.clip(resp_k[:, None] * (0.6 + 1.6 * np.abs(sat - 0.65)), 0, 1)
        invite = p.survey_per_h + lam_c * p.survey_after_ticket
        lam_d = invite * resp * p_det
        out: dict[str, np.ndarray] = {}
        for name, lam in (("complaint", lam_c), ("detractor", lam_d), ("churn", lam_ch)):
            cum = np.cumsum(lam * grid_h, axis=1)
            for h in HORIZONS_H:
                prob = -np.expm1(-cum[:, int(h / grid_h) - 1])
                out[f"{name}_{h}h"] = np.where(self.active, prob, 0.0).astype(np.float32)
        return out

    def hidden(self) -> dict[str, np.ndarray]:
        """The hidden attributes, for the ground truth."""
        return {"propensity": self.propensity, "base_satisfaction": self.base_satisfaction, "loyalty": self.loyalty,
                "tenure_months": self.tenure_months, "contract_end_ms": self.contract_end_ms,
                "sensitivity": self.sensitivity, "left_ms": self.left_ms}
