"""Per-subscriber feature state and feature extraction (pure).

The state is a compact msgspec struct (serialised as a msgpack array: ~200-300 bytes) holding
exponentially decayed counters on event time, so "3 dropped calls in 24 h" needs no event history.
What it tracks follows how people judge service: the worst and the recent network moments, how
complaints were handled, billing surprises, app failures and bot-to-human bounces, the last survey.
"""

from __future__ import annotations

import ast
import functools
import math
import struct
import time
from collections.abc import Callable
from hashlib import blake2b
from sys import intern
from typing import NamedTuple

import msgspec

from monitor.records.degraded import DEGRADED
from monitor.records.events import AppEvent, NetworkEvent, TicketEvent

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# Half-lives of the decayed counters (event time).
NET_HALF_LIFE_MS = 24 * HOUR_MS  # network moments fade over a day
EW_HALF_LIFE_MS = 2 * HOUR_MS  # "recent" radio quality
CARE_HALF_LIFE_MS = 30 * DAY_MS  # complaints weigh for a month (repeat complaints within 30 days)
APP_HALF_LIFE_MS = 7 * DAY_MS
SURVEY_HALF_LIFE_MS = 30 * DAY_MS
RECENT_IDS = 8  # event ids kept per subscriber to drop duplicates (as 8-byte keys, see event_key)
ID_KEY_BYTES = 8
# Services for which latency is felt most.
LATENCY_SENSITIVE = {"video": 1.5, "gaming": 2.0, "voice": 1.2}
# Peak-end: how a subscriber remembers their service is weighted by its worst moment and by the
# most recent ones (Kahneman's peak-end rule). A session's *severity* (0..1) is how bad it felt:
REAL_TIME = frozenset(("voice", "video", "gaming"))  # latency is felt above REAL_TIME_LATENCY_MS
DATA_HEAVY = frozenset(("video", "web", "social", "download"))  # starved below 1 Mbit/s
REAL_TIME_LATENCY_MS = 150.0
RECENT_HALF_LIFE_MS = HOUR_MS  # the "end" of peak-end: the last hour or two
BURDEN_HALF_LIFE_MS = 8 * HOUR_MS  # lasting damage of many bad sessions, fading within a day
# "Doses": how much of each kind of trouble a subscriber went through, summed per session and
# decayed, on two time scales. Irritation that drives a call to care lasts a day or two (complaint
# models in the literature use 24-72 h windows); what drives a port-out is the grudge of weeks.
DOSE_HALF_LIFE_MS = DAY_MS
GRUDGE_HALF_LIFE_MS = 14 * DAY_MS
# Per-service latency a user starts to notice (ITU-T G.114 for voice; the usual budgets of cloud
# gaming and of video start-up), and the throughput below which a data session is slow (ms, Mbit/s).
NOTICED_LATENCY_MS = {"voice": 150.0, "video": 300.0, "gaming": 100.0}
SLOW_DATA_MBPS = 2.0
WEAK_RSRP_DBM = -100.0  # below this, coverage is marginal indoors (3GPP's "fair" band ends at -100)
STALL_NOTICED_S = 5.0
# The account (app and care records enriched from the operator's CRM, when the feed carries it):
YEAR_MS = 365 * DAY_MS
CONTRACT_FREE_HALF_LIFE_MS = 90 * DAY_MS  # "recently out of contract" fades over a quarter or two
RENEWAL_WINDOW_MS = 60 * DAY_MS  # the usual renewal-offer window before a contract's end


def session_severity(ev: NetworkEvent) -> tuple[float, str]:
    """How bad one session felt, 0..1, and in words: a dropped call, a long video stall, latency a
    real-time service cannot hide, a data service starved below 1 Mbit/s, heavy packet loss.
    Zero for a session the degraded-session policy (:mod:`monitor.records.degraded`) does not call degraded."""
    if not DEGRADED.is_degraded(ev):
        return 0.0, ""
    return _graded_severity(ev)


def _graded_severity(ev: NetworkEvent) -> tuple[float, str]:
    """:func:`session_severity` of a session already known to be degraded."""
    sev, what = 0.0, ""
    if ev.call_drop:
        sev, what = 0.7, "dropped call"
    stall = min(1.0, ev.video_stall_s / 30.0)
    if stall > sev:
        sev, what = stall, f"{ev.video_stall_s:.0f} s video stall"
    if ev.service in REAL_TIME and ev.latency_ms > REAL_TIME_LATENCY_MS:
        lat = min(0.8, (ev.latency_ms - REAL_TIME_LATENCY_MS) / 400.0)
        if lat > sev:
            sev, what = lat, f"{ev.latency_ms:.0f} ms latency on {ev.service}"
    if ev.service in DATA_HEAVY and ev.dl_mbps < 1.0:
        starved = 0.4 * (1.0 - ev.dl_mbps)
        if starved > sev:
            sev, what = starved, f"{ev.service} at {ev.dl_mbps:.1f} Mbit/s"
    loss = min(0.5, (ev.packet_loss_pct - 5.0) / 30.0)
    if loss > sev:
        sev, what = loss, f"{ev.packet_loss_pct:.0f}% packet loss"
    return sev, what


class SubscriberState(msgspec.Struct, array_like=True, kw_only=True):
    """Everything satmon keeps about one subscriber (compact; serialised with msgpack)."""

    last_ts: int
    cell: str | None = None
    region: str | None = None
    segment: str | None = None
    service: str | None = None
    net_ts: int = 0
    rsrp_ew: float = -95.0
    sinr_ew: float = 12.0
    dl_ew: float = 50.0
    lat_ew: float = 40.0
    worst_rsrp: float = -95.0
    drops: float = 0.0
    stalls_s: float = 0.0
    bad: float = 0.0
    sessions: float = 0.0
    worst_sev: float = 0.0
    worst_what: str = ""
    recent_sev: float = 0.0
    burden: float = 0.0
    care_ts: int = 0
    complaints: float = 0.0
    billing: float = 0.0
    reopened: float = 0.0
    escalated: float = 0.0
    fcr_fail: float = 0.0
    open_tickets: int = 0
    last_resolution_min: float = 0.0
    app_ts: int = 0
    app_fail: float = 0.0
    bot_human: float = 0.0
    nps: int = -1
    nps_ts: int = 0
    recent_ids: bytes = b""  # the last RECENT_IDS event keys (event_key), 8 bytes each
    snap_ts: int = 0  # a label's snapshot, pending until its horizon has passed (0: none)
    snap_x: bytes = b""  # the feature vector as float32 (see pack/unpack): 4 bytes a feature
    at_risk_since: int = 0
    last_score: float = -1.0
    last_top: str = ""
    lab_y: int = 0  # outcomes seen since snap_ts, one bit per monitor.scoring.risk.OUTCOMES
    gone_ts: int = 0  # ported out (churned) at
    # doses (decayed sums, see DOSE_HALF_LIFE_MS): network ones on net_ts, care on care_ts, app on app_ts
    cov_d: float = 0.0
    lat_voice_d: float = 0.0
    lat_video_d: float = 0.0
    lat_gaming_d: float = 0.0
    slow_d: float = 0.0
    stall_d: float = 0.0
    net_g: float = 0.0  # all network trouble over weeks (GRUDGE_HALF_LIFE_MS)
    checks_d: float = 0.0  # network checks in the app
    app_d: float = 0.0  # app failures and bot-to-human bounces
    complaint_d: float = 0.0  # contacts with care (opened, or a repeat contact on an open ticket)
    billing_d: float = 0.0
    handling_d: float = 0.0  # reopened, escalated, not fixed at first contact, slow resolution
    handling_g: float = 0.0
    # the account, as the latest enriched app or care record gave it (0: not known)
    since_ms: int = 0  # customer since
    contract_end_ms: int = 0  # the contract's end (0 with since_ms: no fixed-term contract)


def event_key(event_id: str) -> bytes:
    """A stable 8-byte key of an event id (BLAKE2b): what the state keeps to drop duplicates.
    Stable across processes (unlike ``hash``), so a re-delivery after a restart is still caught;
    a false match needs a 64-bit collision among a subscriber's last 8 events."""
    h = _new_key_hash()   # a copy of an empty 8-byte BLAKE2b: the constructor's keywords parsed once
    h.update(event_id.encode())
    return h.digest()


_new_key_hash = blake2b(digest_size=ID_KEY_BYTES).copy


def outcome_of(ev: NetworkEvent | TicketEvent | AppEvent) -> str | None:
    """The outcome an event *is*, if any: a complaint opened, a detractor answer (NPS 0-6), a
    port-out (churn); these are what the risk model predicts, never its input features."""
    if isinstance(ev, TicketEvent):
        return "complaint" if ev.action == "opened" else None
    if isinstance(ev, AppEvent):
        if ev.kind == "survey_answer":
            return "detractor" if ev.nps is not None and ev.nps <= 6 else None
        if ev.kind == "port_out":
            return "churn"
    return None


def seen_before(st: SubscriberState, key: bytes) -> bool:
    """True when ``key`` (:func:`event_key`) is among the subscriber's recent events."""
    ids = st.recent_ids
    i = ids.find(key)
    while i >= 0:
        if i % ID_KEY_BYTES == 0:
            return True
        i = ids.find(key, i + 1)
    return False


def recent_keys(st: SubscriberState) -> list[bytes]:
    ids = st.recent_ids
    return [ids[i:i + ID_KEY_BYTES] for i in range(0, len(ids), ID_KEY_BYTES)]


def pack(x: list[float]) -> bytes:
    """A feature vector as float32 bytes (a snapshot kept in the state for late labels)."""
    return _packer(len(x)).pack(*x)


def unpack(b: bytes) -> list[float]:
    return list(_packer(len(b) // 4).unpack(b))


def _packer(n: int) -> struct.Struct:
    """The kept ``struct.Struct`` of ``n`` float32 (the format is not parsed per snapshot)."""
    packer = _PACKERS.get(n)
    if packer is None:
        packer = _PACKERS[n] = struct.Struct("<%df" % n)
    return packer


#: ``struct.Struct`` of n float32 by n (one length in practice, the table's)
_PACKERS: dict[int, struct.Struct] = {}


#: ``10 ** ndigits`` for :func:`fast_round` (exact doubles)
_ROUND_SCALES = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def fast_round(x: float, ndigits: int, _floor: Callable[[float], int] = math.floor,
               _round: Callable[..., float] = round) -> float:
    """``round(x, ndigits)`` for ``ndigits`` 0 to 4, the same float, without the builtin's decimal
    string round trip (CPython rounds through ``_Py_dg_dtoa``, ``snprintf`` and ``strtod``: ~3k
    instructions a call; an emitted score rounds about a dozen numbers).

    ``round(x, ndigits)`` is the double nearest to ``n / 10**ndigits``, ``n`` the integer nearest to
    ``x * 10**ndigits`` exactly (ties to even). Away from a tie the product in floating point, within
    half an ulp (below 2**-20 here) of the exact one, gives the same ``n``, and ``n / 10.0**ndigits``
    of two exact doubles is rounded once, as ``strtod`` rounds. Near a tie, for zero (its sign),
    large values, NaN and infinities it is the builtin.

    >>> [fast_round(v, 4) == round(v, 4) for v in (0.123456789, 0.03125, -2.71828, 1e-5, 0.99995)]
    [True, True, True, True, True]
    >>> fast_round(-0.04, 1), fast_round(2.5, 0), fast_round(-121.25, 1)
    (-0.0, 2.0, -121.2)
    """
    scale = _ROUND_SCALES[ndigits]
    y = x * scale
    if -4294967296.0 < y < 4294967296.0:
        f = _floor(y)
        d = y - f
        if d < 0.49999:
            n = f
        elif d > 0.50001:
            n = f + 1
        else:
            return _round(x, ndigits)
        if n:
            return n / scale
    return _round(x, ndigits)


def _decay(dt_ms: int, half_life_ms: int) -> float:
    return 0.5 ** (dt_ms / half_life_ms) if dt_ms > 0 else 1.0


def apply_event(st: SubscriberState, ev: NetworkEvent | TicketEvent | AppEvent, key: bytes | None = None) -> None:
    """Update ``st`` in place with one event (the event itself is never mutated); ``key`` is the
    event's :func:`event_key` when the caller already has it."""
    ts = ev.ts_ms
    ids = st.recent_ids + (key or event_key(ev.event_id))
    st.recent_ids = ids[-RECENT_IDS * ID_KEY_BYTES:]
    if ts > st.last_ts:
        st.last_ts = ts
    if ev.segment is not None and ev.segment != st.segment:
        st.segment = intern(ev.segment)
    if isinstance(ev, NetworkEvent):
        # The event's fields and the state's previous values are read once into locals, and
        # ``min``/``max`` of two numbers are written as the comparison they make (``max(a, b)`` is
        # ``b if b > a else a``; ``min(a, b)`` is ``b if b < a else a``, NaN included): the same
        # floats with fewer attribute reads and no builtin calls (docs/WORKER.md, issue 22).
        net_ts = st.net_ts
        dt = ts - net_ts if net_ts else 0
        # The decays inline (_decay's formula; a call each cost ~5 %). The grudge, burden and
        # recent factors (kg, kb, kr) are computed below only for a value they decay that is not
        # 0.0 (0.0 times any factor is 0.0): a power each, where most subscribers have nothing there.
        if dt > 0:
            k = 0.5 ** (dt / NET_HALF_LIFE_MS)
            e = 0.5 ** (dt / EW_HALF_LIFE_MS)
            kd = k   # 0.5 ** (dt / DOSE_HALF_LIFE_MS): the same half-life (asserted below apply_event)
        else:
            k = e = kd = 1.0
        a = 1.0 - e if net_ts else 1.0
        if 0.2 > a:
            a = 0.2  # every session moves the recent means
        st.net_ts = net_ts if net_ts > ts else ts
        service = ev.service
        rsrp = ev.rsrp_dbm
        dl = ev.dl_mbps
        latency = ev.latency_ms
        stall_s = ev.video_stall_s
        call_drop = ev.call_drop
        # interned: a few thousand distinct values shared by millions of states
        if ev.cell_id != st.cell:
            st.cell = intern(ev.cell_id)
        if ev.region != st.region:
            st.region = intern(ev.region)
        if service != st.service:
            st.service = intern(service)
        rsrp_ew = st.rsrp_ew
        st.rsrp_ew = rsrp_ew = rsrp_ew + a * (rsrp - rsrp_ew)
        sinr_ew = st.sinr_ew
        st.sinr_ew = sinr_ew + a * (ev.sinr_db - sinr_ew)
        dl_ew = st.dl_ew
        st.dl_ew = dl_ew + a * (dl - dl_ew)
        sensitivity, noticed, data_heavy = _SERVICE_TRAITS.get(service, _OTHER_SERVICE)
        lat = latency * sensitivity
        lat_ew = st.lat_ew
        st.lat_ew = lat_ew + a * (lat - lat_ew)
        # the worst moment weighs most and fades only slowly back toward the recent mean
        worst_rsrp = st.worst_rsrp
        worst_rsrp = worst_rsrp + (rsrp_ew - worst_rsrp) * (1 - k)
        st.worst_rsrp = worst_rsrp if worst_rsrp < rsrp else rsrp
        bad = _is_degraded(ev)
        # A counter or dose at 0.0 that gets nothing added stays 0.0 (0.0 * k + 0.0): its write is
        # skipped. Most of a healthy subscriber's are 0.0, and a write to a msgspec struct's field
        # takes CPython's generic setattr path. (Every value added below is +0.0 or positive, so no
        # field is ever -0.0, the one zero the skip could not reproduce.)
        v = st.drops
        if v or call_drop:
            st.drops = v * k + call_drop
        cov = (WEAK_RSRP_DBM - rsrp) / 10.0
        cov = cov if cov > 0.0 else 0.0
        cov = cov if cov < 3.0 else 3.0
        if noticed and latency > 0:
            late = math.log2(latency / noticed)
            late = late if late > 0.0 else 0.0
            late = late if late < 3.0 else 3.0
        else:
            late = 0.0
        if data_heavy:
            slow = math.log2(SLOW_DATA_MBPS / (0.01 if 0.01 > dl else dl))
            slow = slow if slow > 0.0 else 0.0
            slow = slow if slow < 4.0 else 4.0
        else:
            slow = 0.0
        stall = stall_s / STALL_NOTICED_S - 1.0
        stall = stall if stall > 0.0 else 0.0
        stall = stall if stall < 4.0 else 4.0
        v = st.cov_d
        if v or cov:
            st.cov_d = v * kd + cov
        v = st.lat_voice_d
        if v or (late and service == "voice"):
            st.lat_voice_d = v * kd + (late if service == "voice" else 0.0)
        v = st.lat_video_d
        if v or (late and service == "video"):
            st.lat_video_d = v * kd + (late if service == "video" else 0.0)
        v = st.lat_gaming_d
        if v or (late and service == "gaming"):
            st.lat_gaming_d = v * kd + (late if service == "gaming" else 0.0)
        v = st.slow_d
        if v or slow:
            st.slow_d = v * kd + slow
        v = st.stall_d
        if v or stall:
            st.stall_d = v * kd + stall
        v = st.net_g
        if v or cov or late or slow or stall or call_drop:
            if v and dt > 0:
                v *= 0.5 ** (dt / GRUDGE_HALF_LIFE_MS)
            st.net_g = v + 0.2 * cov + late + 0.3 * slow + stall + 2.0 * call_drop
        v = st.stalls_s
        if v or stall_s:
            st.stalls_s = v * k + stall_s
        v = st.bad
        if v or bad:
            st.bad = v * k + bad
        st.sessions = st.sessions * k + 1.0
        burden = st.burden
        if bad:
            sev, what = _graded_severity(ev)
            if burden and dt > 0:
                burden *= 0.5 ** (dt / BURDEN_HALF_LIFE_MS)
            st.burden = burden + sev
        else:
            sev = 0.0
            if burden:
                st.burden = (burden * 0.5 ** (dt / BURDEN_HALF_LIFE_MS) if dt > 0 else burden) + 0.0
        worst_sev = st.worst_sev
        if worst_sev:
            st.worst_sev = worst_sev = worst_sev * k
        recent_sev = st.recent_sev
        if sev > 0.02:
            if recent_sev and dt > 0:
                recent_sev *= 0.5 ** (dt / RECENT_HALF_LIFE_MS)
            st.recent_sev = recent_sev + (1.0 - recent_sev) * sev * 0.6
            if sev >= worst_sev:
                st.worst_sev, st.worst_what = sev, what
        elif recent_sev and dt > 0:
            st.recent_sev = recent_sev * 0.5 ** (dt / RECENT_HALF_LIFE_MS)
    elif isinstance(ev, TicketEvent):
        # As for a session: decays inline, and a counter or dose at 0.0 is not written (0.0 * k
        # is 0.0). With no time passed (dt <= 0) every factor is 1.0 and nothing is decayed.
        care_ts = st.care_ts
        dt = ts - care_ts if care_ts else 0
        if dt > 0:
            k = 0.5 ** (dt / CARE_HALF_LIFE_MS)
            kd = 0.5 ** (dt / DOSE_HALF_LIFE_MS)
            v = st.complaints
            if v:
                st.complaints = v * k
            v = st.billing
            if v:
                st.billing = v * k
            v = st.reopened
            if v:
                st.reopened = v * k
            v = st.escalated
            if v:
                st.escalated = v * k
            v = st.fcr_fail
            if v:
                st.fcr_fail = v * k
            v = st.complaint_d
            if v:
                st.complaint_d = v * kd
            v = st.billing_d
            if v:
                st.billing_d = v * kd
            v = st.handling_d
            if v:
                st.handling_d = v * kd
            v = st.handling_g
            if v:
                st.handling_g = v * 0.5 ** (dt / GRUDGE_HALF_LIFE_MS)
        if ts > care_ts:
            st.care_ts = ts
        if ev.region is not None and st.region is None:
            st.region = ev.region
        if ev.customer_since_ms is not None:
            _take_account(st, ev)
        action = ev.action
        hurt = 0.0
        if action == "opened":
            st.complaints += 1
            st.open_tickets += 1
            st.complaint_d += 1
            if ev.category == "billing":
                st.billing += 1
                st.billing_d += 1
        elif action == "reopened":
            st.reopened += 1
            st.open_tickets += 1
            hurt = 1.0
        elif action == "escalated":
            st.escalated += 1
            hurt = 0.5
        elif action == "updated":
            hurt = 0.25  # an update, sometimes the subscriber chasing an open ticket
        elif action == "resolved":
            st.open_tickets = max(0, st.open_tickets - 1)
            st.last_resolution_min = ev.resolution_minutes or 0.0
            if ev.first_contact_resolution is False:
                st.fcr_fail += 1
                hurt += 0.5
            if st.last_resolution_min > 240.0:  # longer than a working morning
                hurt += min(1.0, st.last_resolution_min / 1440.0)
        if hurt:
            st.handling_d += hurt
            st.handling_g += hurt
    else:
        app_ts = st.app_ts
        dt = ts - app_ts if app_ts else 0
        if dt > 0:
            k = 0.5 ** (dt / APP_HALF_LIFE_MS)
            kd = 0.5 ** (dt / DOSE_HALF_LIFE_MS)
            v = st.app_fail
            if v:
                st.app_fail = v * k
            v = st.bot_human
            if v:
                st.bot_human = v * k
            v = st.checks_d
            if v:
                st.checks_d = v * kd
            v = st.app_d
            if v:
                st.app_d = v * kd
        if ts > app_ts:
            st.app_ts = ts
        if ev.region is not None and st.region is None:
            st.region = ev.region
        if ev.customer_since_ms is not None:
            _take_account(st, ev)
        kind = ev.kind
        if ev.feature == "network_check":
            st.checks_d += 1
        if kind == "self_service_failure" or kind == "error":
            st.app_fail += 1
            st.app_d += 1
        elif kind == "bot_to_human":
            st.bot_human += 1
            st.app_d += 1
        elif kind == "survey_answer" and ev.nps is not None:
            st.nps, st.nps_ts = ev.nps, ts



# apply_event decays a session's doses with the network counters' factor
assert DOSE_HALF_LIFE_MS == NET_HALF_LIFE_MS, "apply_event: kd = k"


#: what apply_event reads of a service in the tables above, in one lookup: (LATENCY_SENSITIVE's
#: factor, NOTICED_LATENCY_MS's latency or None, in DATA_HEAVY); any other service is _OTHER_SERVICE
_SERVICE_TRAITS = {s: (LATENCY_SENSITIVE.get(s, 1.0), NOTICED_LATENCY_MS.get(s), s in DATA_HEAVY)
                   for s in (*LATENCY_SENSITIVE, *NOTICED_LATENCY_MS, *DATA_HEAVY)}
_OTHER_SERVICE = (1.0, None, False)
_is_degraded = DEGRADED.is_degraded


def _take_account(st: SubscriberState, ev: TicketEvent | AppEvent) -> None:
    """The account's dates of an enriched record (``customer_since_ms`` set); no contract end
    means no fixed-term contract. The latest record read wins (the CRM's dates change rarely)."""
    since = ev.customer_since_ms
    if since != st.since_ms:
        st.since_ms = since
    end = ev.contract_end_ms or 0
    if end != st.contract_end_ms:
        st.contract_end_ms = end


def _date(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))


class Feature(NamedTuple):
    """One model input, defined in one place: its name, its cold-start prior weight (log-odds per
    unit, a unit being "clearly bad"), how it is read from the state, and how it reads in words
    (``(reason code, text, value)`` for a feature contributing to a score).

    ``extract`` is a Python expression over the state ``st`` and the decay factors of the instant:
    ``kn`` (network counters and one-day doses), ``kc`` (care), ``ka`` (app), ``ks`` (last survey),
    ``kr`` (recent moments), ``kb`` (burden), ``net`` (any network activity seen), ``kg`` (network
    doses of weeks), ``kcd``/``kcg`` (care doses of a day / of weeks), ``kad`` (app doses of a day).
    The expressions are compiled into one function (:func:`feature_vector`), as fast as a
    hand-written list."""

    name: str
    prior: float
    extract: str
    words: Callable[[SubscriberState, float], tuple[str, str, float | None]]


def _times(n: float) -> str:
    n = round(n)
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _dbm(rsrp: float) -> str:
    return f"weak coverage: RSRP {rsrp:.0f} dBm".replace("-", "\u2212")


def _dominant_trouble(st: SubscriberState, v: float) -> tuple[str, str, float | None]:
    """The reason for ``trouble_today``, named after its largest part (its parts decay alike
    within a day, so the undecayed doses rank them)."""
    parts = (
        (0.3 * st.cov_d, "weak_coverage", "weak coverage"),
        (st.lat_voice_d + st.lat_video_d + st.lat_gaming_d, "latency", "noticeable delay"),
        (st.stall_d, "stalls", "video stalls"), (2.0 * st.drops, "drops", "dropped calls"),
        (0.3 * st.slow_d, "throughput", "slow data"), (st.checks_d, "network_checks", "checking the network in the app"),
        (0.5 * st.app_d, "app_failures", "app failures"), (2.0 * st.complaint_d, "complaints", "a contact with care"),
        (2.0 * st.billing_d, "billing", "a billing complaint"),
        (2.0 * st.handling_d, "handling", "a complaint handled badly"),
    )
    _, code, what = max(parts)
    return code, f"a lot went wrong in the last day or two, mostly {what}", fast_round(v, 2)


#: every feature, in the order of :func:`feature_vector`
FEATURE_TABLE: tuple[Feature, ...] = (
    Feature("weak_coverage", 0.6, "max(0.0, (-105.0 - st.rsrp_ew) / 10.0) if net else 0.0",
            lambda st, v: ("weak_coverage", _dbm(st.rsrp_ew), fast_round(st.rsrp_ew, 1))),
    Feature("worst_coverage", 0.4, "max(0.0, (-110.0 - st.worst_rsrp) / 10.0) if net else 0.0",
            lambda st, v: ("weak_coverage", _dbm(st.worst_rsrp), fast_round(st.worst_rsrp, 1))),
    Feature("low_sinr", 0.4, "max(0.0, (5.0 - st.sinr_ew) / 5.0) if net else 0.0",
            lambda st, v: ("interference", f"poor signal quality: SINR {st.sinr_ew:.0f} dB", fast_round(st.sinr_ew, 1))),
    Feature("drops", 0.5, "st.drops * kn",
            lambda st, v: ("drops", f"{v:.0f} dropped calls in 24 h", fast_round(v, 1))),
    Feature("stalls", 0.4, "st.stalls_s * kn / 30.0",
            lambda st, v: ("stalls", f"{v * 30:.0f} s of video stalls in 24 h", fast_round(v * 30, 1))),
    Feature("latency", 0.5, "max(0.0, (st.lat_ew - 60.0) / 100.0) if net else 0.0",
            lambda st, v: ("latency", f"high latency for {st.service or 'data'}: {st.lat_ew:.0f} ms",
                           fast_round(st.lat_ew, 1))),
    Feature("throughput", 0.3, "max(0.0, (10.0 - st.dl_ew) / 10.0) if net else 0.0",
            lambda st, v: ("throughput", f"slow data: {st.dl_ew:.1f} Mbit/s", fast_round(st.dl_ew, 2))),
    Feature("bad_sessions", 1.5, "st.bad * kn / (st.sessions * kn + 1.0)",
            lambda st, v: ("bad_sessions", f"{100 * v:.0f}% of recent sessions degraded", fast_round(v, 3))),
    Feature("worst_moment", 2.0, "st.worst_sev * kn",
            lambda st, v: ("worst_moment", f"worst moment in 24 h: {st.worst_what}", fast_round(v, 2))),
    Feature("recent_moments", 1.5, "st.recent_sev * kr",
            lambda st, v: ("recent_moments", f"bad sessions in the last hour (worst: {st.worst_what})", fast_round(v, 2))),
    Feature("burden", 0.3, "st.burden * kb",
            lambda st, v: ("burden", f"many degraded sessions today (burden {v:.1f})", fast_round(v, 2))),
    Feature("complaints", 1.2, "st.complaints * kc",
            lambda st, v: ("complaints", f"{v:.0f} complaint(s) in 30 days", fast_round(v, 1))),
    Feature("billing", 0.8, "st.billing * kc",
            lambda st, v: ("billing", "billing complaint in 30 days", fast_round(v, 1))),
    Feature("reopened", 0.8, "st.reopened * kc",
            lambda st, v: ("reopened", f"complaint reopened {_times(v)}", fast_round(v, 1))),
    Feature("escalated", 0.6, "st.escalated * kc",
            lambda st, v: ("escalated", f"complaint escalated {_times(v)}", fast_round(v, 1))),
    Feature("open_tickets", 0.5, "float(st.open_tickets)",
            lambda st, v: ("open_tickets", f"{v:.0f} open ticket(s)", v)),
    Feature("slow_resolution", 0.4, "max(0.0, (st.last_resolution_min - 240.0) / 1440.0) * kc",
            lambda st, v: ("slow_resolution", f"last complaint took {st.last_resolution_min / 60:.0f} h to resolve",
                           fast_round(st.last_resolution_min, 0))),
    Feature("fcr_fail", 0.4, "st.fcr_fail * kc",
            lambda st, v: ("fcr_fail", "complaint not solved at first contact", fast_round(v, 1))),
    Feature("app_failures", 0.3, "st.app_fail * ka",
            lambda st, v: ("app_failures", f"{v:.0f} app failures in 7 days", fast_round(v, 1))),
    Feature("bot_to_human", 0.4, "st.bot_human * ka",
            lambda st, v: ("bot_to_human", f"bounced from bot to human {_times(v)} in 7 days", fast_round(v, 1))),
    Feature("detractor", 1.5, "(7 - st.nps) / 7.0 * ks if 0 <= st.nps <= 6 else 0.0",
            lambda st, v: ("detractor", f"last survey answer NPS {st.nps}", float(st.nps))),
    Feature("promoter", -0.8, "ks if st.nps >= 9 else 0.0",
            lambda st, v: ("promoter", f"last survey answer NPS {st.nps}", float(st.nps))),
    # doses of the last day or two (what makes people call) and of weeks (what makes them leave)
    Feature("coverage_dose", 0.1, "st.cov_d * kn",
            lambda st, v: ("weak_coverage", f"{v:.0f} sessions' worth of weak coverage in 24 h", fast_round(v, 1))),
    Feature("latency_voice", 0.3, "st.lat_voice_d * kn",
            lambda st, v: ("latency", "calls with noticeable delay in 24 h", fast_round(v, 2))),
    Feature("latency_video", 0.3, "st.lat_video_d * kn",
            lambda st, v: ("latency", "video with noticeable delay in 24 h", fast_round(v, 2))),
    Feature("latency_gaming", 0.3, "st.lat_gaming_d * kn",
            lambda st, v: ("latency", "games with noticeable lag in 24 h", fast_round(v, 2))),
    Feature("slow_data", 0.1, "st.slow_d * kn",
            lambda st, v: ("throughput", f"slow data sessions in 24 h (dose {v:.1f})", fast_round(v, 2))),
    Feature("stall_dose", 0.3, "st.stall_d * kn",
            lambda st, v: ("stalls", f"video stalls in 24 h (dose {v:.1f})", fast_round(v, 2))),
    Feature("network_checks", 0.5, "st.checks_d * kad",
            lambda st, v: ("network_checks", f"checked the network in the app {_times(v)} in 24 h", fast_round(v, 1))),
    Feature("app_trouble", 0.3, "st.app_d * kad",
            lambda st, v: ("app_failures", f"{v:.0f} app failures or bot bounces in 24 h", fast_round(v, 1))),
    Feature("recent_complaint", 1.0, "st.complaint_d * kcd",
            lambda st, v: ("complaints", "contacted care in the last day or two", fast_round(v, 1))),
    Feature("recent_billing", 0.8, "st.billing_d * kcd",
            lambda st, v: ("billing", "billing complaint in the last day or two", fast_round(v, 1))),
    Feature("recent_handling", 0.8, "st.handling_d * kcd",
            lambda st, v: ("handling", "complaint handled badly in the last day or two (reopened, escalated, "
                           "slow or not fixed)", fast_round(v, 2))),
    Feature("handling_weeks", 0.4, "st.handling_g * kcg",
            lambda st, v: ("handling", "complaints handled badly in recent weeks", fast_round(v, 2))),
    Feature("network_weeks", 0.3, "math.log1p(st.net_g * kg)",
            lambda st, v: ("network_weeks", "network trouble over recent weeks", fast_round(v, 2))),
    Feature("trouble_today", 0.8,
            "math.log1p(0.3 * st.cov_d * kn + (st.lat_voice_d + st.lat_video_d + st.lat_gaming_d + st.stall_d"
            " + 2.0 * st.drops + 0.3 * st.slow_d) * kn + (st.checks_d + 0.5 * st.app_d) * kad"
            " + 2.0 * (st.complaint_d + st.billing_d + st.handling_d) * kcd)",
            lambda st, v: _dominant_trouble(st, v)),
    Feature("prepaid", -0.3, "1.0 if st.segment == 'prepaid' else 0.0",
            lambda st, v: ("segment", "prepaid plan", v)),
    Feature("business", 0.3, "1.0 if st.segment == 'business' else 0.0",
            lambda st, v: ("segment", "business plan", v)),
    Feature("premium", 0.3, "1.0 if st.segment == 'premium' else 0.0",
            lambda st, v: ("segment", "premium plan", v)),
    # the account (enriched records only; 0.0 where the feed has no account fields). Prior weight 0:
    # the hand-written prior says nothing of contracts or tenure, whatever they weigh is learned
    Feature("in_contract", 0.0, "1.0 if st.contract_end_ms > now_ms else 0.0",
            lambda st, v: ("contract", f"in contract until {_date(st.contract_end_ms)}", v)),
    Feature("renewal_due", 0.0,
            "1.0 - (st.contract_end_ms - now_ms) / RENEWAL_WINDOW_MS"
            " if 0 < st.contract_end_ms - now_ms < RENEWAL_WINDOW_MS else 0.0",
            lambda st, v: ("contract", f"contract ends on {_date(st.contract_end_ms)}", fast_round(v, 2))),
    Feature("out_of_contract", 0.0,
            "0.5 ** ((now_ms - st.contract_end_ms) / CONTRACT_FREE_HALF_LIFE_MS)"
            " if 0 < st.contract_end_ms <= now_ms else 0.0",
            lambda st, v: ("contract", f"out of contract since {_date(st.contract_end_ms)}", fast_round(v, 2))),
    Feature("new_customer", 0.0, "YEAR_MS / (YEAR_MS + now_ms - st.since_ms) if 0 < st.since_ms <= now_ms else 0.0",
            lambda st, v: ("tenure", f"customer since {_date(st.since_ms)}", fast_round(v, 2))),
)
#: feature names, in the order of :func:`feature_vector`
FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURE_TABLE)
FEATURE_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURE_TABLE}
#: :func:`pack` of a :func:`feature_vector` (the table's length), called with the vector's items
pack_features: Callable[..., bytes] = _packer(len(FEATURES)).pack
# The transparent cold-start prior: the table's weights, and a bias for a ~5% base rate.
PRIOR_BIAS = -3.0
PRIOR_WEIGHTS: tuple[float, ...] = tuple(f.prior for f in FEATURE_TABLE)


class _ClampAtZero(ast.NodeTransformer):
    """``max(0.0, E)`` -> ``(_v if (_v := E) > 0.0 else 0.0)``: the value ``max`` returns (its second
    argument only when greater than the first; NaN included), without the builtin call, which in
    CPython 3.11 parses keyword arguments on every call (~550 instructions a call, callgrind)."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if (isinstance(node.func, ast.Name) and node.func.id == "max" and len(node.args) == 2 and not node.keywords
                and isinstance(node.args[0], ast.Constant) and repr(node.args[0].value) == "0.0"):   # +0.0, a float
            named = ast.NamedExpr(target=ast.Name("_v", ast.Store()), value=node.args[1])
            test = ast.Compare(left=named, ops=[ast.Gt()], comparators=[ast.Constant(0.0)])
            return ast.IfExp(test=test, body=ast.Name("_v", ast.Load()), orelse=ast.Constant(0.0))
        return node


class _AtLastSession(ast.NodeTransformer):
    """An expression at the instant of the subscriber's last network session: the network factors
    (:data:`_NET_DECAYS`) are exactly 1.0 and ``net`` is true, so ``E * 1.0`` is written ``E`` and
    ``A if net else B`` is written ``A``. The same floats: every operand the table multiplies by a
    factor is a float (a state's float field, or arithmetic on them), and ``x * 1.0`` is ``x``."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Mult):
            if self._is_factor(node.right):
                return node.left
            if self._is_factor(node.left):
                return node.right
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        return node.body if isinstance(node.test, ast.Name) and node.test.id == "net" else node

    @staticmethod
    def _is_factor(node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id in _NET_DECAYS


#: what a feature may depend on besides the network (see :func:`_vector_source`): the care decay
#: factors and the fields only a ticket sets; the app's factors (the last survey's too) and the
#: fields only an app event sets; the account's dates, which only an enriched ticket or app event sets
_CARE = ("kc", "kcd", "kcg", "care")
_APP = ("ka", "kad", "ks", "app")
_ACCOUNT = ("account",)
_FIELD_INPUTS = {
    **dict.fromkeys(("complaints", "billing", "reopened", "escalated", "fcr_fail", "open_tickets",
                     "last_resolution_min", "complaint_d", "billing_d", "handling_d", "handling_g"), "care"),
    **dict.fromkeys(("app_fail", "bot_human", "checks_d", "app_d", "nps"), "app"),
    **dict.fromkeys(("since_ms", "contract_end_ms"), "account"),
}


class _FoldAbsent(ast.NodeTransformer):
    """Arithmetic reading only absent inputs (their decay factors, 0.0, and fields only their
    records set, at their defaults: see :func:`_vector_source`) written as its value at those
    defaults, computed here: in ``trouble_today``, the app's and care's doses of a subscriber
    without an app event or a ticket."""

    def __init__(self, absent: tuple[str, ...]) -> None:
        self.absent = set(absent)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        if not all(self._absent(n) for n in ast.walk(node)):
            return self.generic_visit(node)
        factors = {n: 0.0 for n in self.absent & set(_DECAY_NAMES)}
        return ast.Constant(eval(compile(ast.Expression(node), "<fold>", "eval"),  # noqa: S307 -- the table's
                                 {"st": _DEFAULT_STATE, **factors}))

    def _absent(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute):
            return (isinstance(node.value, ast.Name) and node.value.id == "st"
                    and _FIELD_INPUTS.get(node.attr) in self.absent)
        if isinstance(node, ast.Name):
            return node.id == "st" or node.id in self.absent
        return isinstance(node, (ast.BinOp, ast.Constant, ast.operator, ast.expr_context))
#: the network decay factors (1.0 at the instant of the last session)
_NET_DECAYS = ("kn", "kr", "kb", "kg")


def _vector_source(absent: tuple[str, ...], at_last_session: bool = False) -> str:
    """The list's items: a feature whose inputs are all in ``absent`` written as ``0.0``, the rest
    as their expressions (``at_last_session``: see :class:`_AtLastSession`).

    A feature's inputs are the decay factors it reads and what sets the fields it reads
    (:data:`_FIELD_INPUTS`). A subscriber with no ticket yet (``care_ts`` 0: event times are
    positive) has every care field at its default and the care factors at 0.0, so each such feature
    is ``0.0 * 0.0``, a clamp at zero times 0.0 or ``float(0)``: +0.0, the constant. The same for the
    app's (``nps`` -1, so the survey's factor is 0.0 and its features their ``else 0.0``). Only an
    app or care record sets the account's dates, so with neither both are 0 and each account
    feature is its ``else 0.0`` (``now_ms`` is an event time, positive). A subscriber with only
    network sessions skips 21 of the 43 features."""
    items = []
    for f in FEATURE_TABLE:
        names, inputs = _reads(f.extract)
        if inputs and inputs <= set(absent):
            items.append("0.0")
            continue
        # each rewrite only where it can apply: generating the lists is most of importing the module
        tree = ast.parse(f.extract, mode="eval")
        if inputs & set(absent):
            tree = _FoldAbsent(absent).visit(tree)
        if at_last_session and names & {"net", *_NET_DECAYS}:
            tree = _AtLastSession().visit(tree)
        if "max" in names:
            tree = _ClampAtZero().visit(tree)
        items.append(f"({ast.unparse(tree)})")
    return ", ".join(items)


@functools.cache
def _reads(extract: str) -> tuple[frozenset[str], frozenset[str]]:
    """The names an extraction expression reads, and its inputs (see :func:`_vector_source`)."""
    nodes = list(ast.walk(ast.parse(extract, mode="eval")))
    names = frozenset(n.id for n in nodes if isinstance(n, ast.Name))
    fields = {_FIELD_INPUTS[n.attr] for n in nodes if isinstance(n, ast.Attribute) and n.attr in _FIELD_INPUTS}
    return names, frozenset(names & set(_DECAY_NAMES) | fields)


def _vector_returns(absent: tuple[str, ...], indent: str) -> str:
    """:func:`feature_vector`'s two ``return`` statements for one set of absent inputs."""
    return (f"if at_last_session:\n{indent}    return [{_vector_source(absent, True)}]\n"
            f"{indent}return [{_vector_source(absent)}]")


#: every decay factor (and ``net``) an extraction expression may read
_DECAY_NAMES = ("kn", "kc", "ka", "ks", "kr", "kb", "net", "kg", "kcd", "kcg", "kad")
#: every field at its default (what :class:`_FoldAbsent` evaluates at)
_DEFAULT_STATE = SubscriberState(last_ts=0)


# The table's extraction expressions as one compiled function (the table is code of this module),
# with the decay factors computed inline (``_decay``'s formula, the same floats, without eleven calls).
_FEATURE_VECTOR_SOURCE = f"""
def feature_vector(st, now_ms):
    net_ts = st.net_ts
    net = bool(net_ts)
    at_last_session = False
    if net:
        dt = now_ms - net_ts
        if dt > 0:
            kn = 0.5 ** (dt / NET_HALF_LIFE_MS)
            kr = 0.5 ** (dt / RECENT_HALF_LIFE_MS)
            kb = 0.5 ** (dt / BURDEN_HALF_LIFE_MS)
            kg = 0.5 ** (dt / GRUDGE_HALF_LIFE_MS)
        else:
            kn = kr = kb = kg = 1.0
            at_last_session = True   # most calls: scoring the session just applied
    else:
        kn = kr = kb = kg = 0.0
    care_ts = st.care_ts
    if care_ts:
        dt = now_ms - care_ts
        if dt > 0:
            kc = 0.5 ** (dt / CARE_HALF_LIFE_MS)
            kcd = 0.5 ** (dt / DOSE_HALF_LIFE_MS)
            kcg = 0.5 ** (dt / GRUDGE_HALF_LIFE_MS)
        else:
            kc = kcd = kcg = 1.0
    else:
        kc = kcd = kcg = 0.0
    app_ts = st.app_ts
    if app_ts:
        dt = now_ms - app_ts
        if dt > 0:
            ka = 0.5 ** (dt / APP_HALF_LIFE_MS)
            kad = 0.5 ** (dt / DOSE_HALF_LIFE_MS)
        else:
            ka = kad = 1.0
    else:
        ka = kad = 0.0
    if st.nps >= 0:
        dt = now_ms - st.nps_ts
        ks = 0.5 ** (dt / SURVEY_HALF_LIFE_MS) if dt > 0 else 1.0
    else:
        ks = 0.0
    if care_ts and app_ts:
        {_vector_returns((), "        ")}
    if care_ts:
        {_vector_returns(_APP, "        ")}
    if app_ts:
        {_vector_returns(_CARE, "        ")}
    {_vector_returns(_CARE + _APP + _ACCOUNT, "    ")}
"""
exec(compile(_FEATURE_VECTOR_SOURCE, "<feature_vector>", "exec"))  # noqa: S102 -- the constant table above
feature_vector: Callable[[SubscriberState, int], list[float]]
feature_vector.__doc__ = """The model's input for ``st`` at event time ``now_ms`` (decays applied, no mutation)."""


def describe(feature: str, st: SubscriberState, value: float) -> tuple[str, str, float | None]:
    """``(code, plain words, value)`` for a feature contributing to a score."""
    f = FEATURE_BY_NAME.get(feature)
    if f is None:
        return feature, feature.replace("_", " "), round(value, 3)
    return f.words(st, value)
