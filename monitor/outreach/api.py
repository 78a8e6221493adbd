"""The HTTP API and web page every worker serves: at-risk lists, subscriber detail, hot spots,
outreach recording and its measured effect, the audit log.

:func:`build_api` returns an :class:`aiohttp.web.Application`; the worker shell uses it as its root
app (adding ``/metrics`` and health routes onto it) or mounts it with ``add_subapp``. It reads from
the worker's :class:`~monitor.outreach.view.RiskView` and :class:`~monitor.outreach.view.HotspotBoard` (fed from
``risk-scores`` and ``alerts``, all partitions) and :class:`~monitor.outreach.store.OutreachStore` (fed
from ``satmon-outreach``), so every worker answers every request completely. See ``docs/API.md``.

Every ``/api/`` request needs ``Authorization: Bearer <token>``; the token's role decides what it
may see (:class:`~monitor.outreach.privacy.Role`). Reads of subscriber rows and every write are appended to
the audit log -- and fsync'd -- *before* the response leaves. Errors are JSON
``{"error": code, "detail": text}`` with a 4xx/5xx status; each token has a token bucket (429 with
``Retry-After`` when empty).

Closed by default: a route under ``/api/`` without a :func:`_roles` mark is refused (403) to
every role, and the worker's non-API routes are an explicit allow-list (:data:`PUBLIC_ROUTES`,
checked by ``tests/test_security.py`` over the worker's real router). The work of a request --
reading the view, building rows, serialising -- runs in a small thread pool under one global
concurrency budget (``api_max_concurrency``), never on the event loop that processes the streams;
the loop only parses, authenticates and writes bytes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import hashlib
import io
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
from aiohttp import web

from monitor.outreach.store import CHANNELS, OUTCOMES, OutreachPolicy, OutreachRecord, OutreachStore, effect_report, new_record_id
from monitor.outreach.privacy import AuditLog, Principal, Role, TokenStore, load_key, load_tokens
from monitor.detection.incidents import IncidentBoard
from monitor.observability.metrics import ApiMetrics
from monitor.outreach.view import CursorExpired, HotspotBoard, RiskView, Version, alert_cell

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("satmon_principal", Principal)
AUDIT_INFO: web.RequestKey[dict] = web.RequestKey("satmon_audit", dict)
API = "/api/v1"
DAY_MS = 86_400_000
_SUBSCRIBER_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_LABEL = re.compile(r"^[A-Za-z0-9_.:\- ]{1,64}$")
# ASCII digits only (str.isdigit() and int() accept "٥٥" as 55), short enough to convert cheaply.
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_DIGITS = re.compile(r"[0-9]{1,18}")
#: the latest instant a time parameter may name (2100-01-01, the input schemas' bound)
MAX_TIME_MS = 4_102_444_800_000
# Failed authentications allowed per client address before it is locked out (429, checked before
# the token is even looked at), and for all addresses together (a guesser rotating addresses):
# the global budget only stops addresses that have not logged in successfully lately.
AUTH_FAILURE_BURST = 20
AUTH_FAILURE_RATE_PER_S = 0.2
AUTH_GLOBAL_FAILURE_BURST = 200
AUTH_GLOBAL_FAILURE_RATE_PER_S = 2.0
#: client addresses tracked (failure buckets, recent successes); the table is pruned beyond this
MAX_TRACKED_ADDRESSES = 10_000
#: an address that authenticated within this long is not held back by the global failure budget
TRUSTED_ADDRESS_S = 3600.0
#: why a do-not-contact may be lifted (codes, not free text: free text attracts personal data)
LIFT_REASONS = ("subscriber_request", "recorded_in_error", "consent_system_sync")
#: routes outside /api/ that answer without a token, by design (canonical path -> why)
PUBLIC_ROUTES: dict[str, str] = {
    "/metrics": "Prometheus scrape: aggregates only, never a subscriber id in a label",
    "/healthz": "liveness: status and worker name",
    "/readyz": "readiness: status, reason and partition numbers",
    "/ui/": "the outreach page (static HTML; its data comes from /api/ with a token)",
    "/ui": "redirect to /ui/",
    "/ui/assets": "the page's static script and style",
}
#: a 429 is answered after min(Retry-After, this) seconds: a client hammering without waiting is
#: slowed to a few requests per second instead of costing the event loop a response each time
TARPIT_MAX_S = 0.5
#: at most this many refused requests wait at once (beyond, they are answered at once)
MAX_TARPITTED = 1024
#: rows built between voluntary GIL hand-overs in the API's thread (~1 ms of work)
YIELD_EVERY_ROWS = 50


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """Tunables of the API. :meth:`from_settings` reads the same names from the settings object
    when it has them (``SATMON_HOLDOUT_SHARE``, ...), else keeps these defaults."""

    holdout_share: float = 0.1
    contact_fatigue_days: float = 14.0
    rate_per_s: float = 5.0
    rate_burst: int = 60
    default_limit: int = 50
    max_limit: int = 500
    effect_horizon_days: float = 30.0
    cursor_wait_s: float = 2.0
    #: requests computed at once, all tokens together (threads of the API's pool); 0 computes on
    #: the event loop itself (the old behaviour, kept for the benchmark's comparison only). One
    #: thread measured best: a second only fights the event loop for the GIL (bench_api_load.py)
    api_max_concurrency: int = 1
    #: requests waiting for the budget before further ones are refused with 503
    api_max_queue: int = 256
    #: rows of a team's worklist per region when the request does not say (``SATMON_LIST_CAPACITY``)
    list_capacity: int = 50

    @classmethod
    def from_settings(cls, settings: Any) -> "ApiConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(settings, n) for n in names if getattr(settings, n, None) is not None})


class _ClientGone(Exception):
    """The client went away before its request body arrived: nothing to answer, nothing to log loudly."""


class ApiError(Exception):
    """An error answered as JSON ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, error: str, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, dict(headers or {})

    def response(self) -> web.Response:
        return web.json_response({"error": self.error, "detail": self.detail}, status=self.status,
                                 headers=self.headers, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


class TokenBucket:
    """``rate`` tokens per second up to ``burst``. :meth:`take` returns 0 when a token was taken,
    else the seconds until one will be there."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, float(burst), now

    def take(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class ViewLock:
    """Guards the views (risk view, hot-spot board, outreach store) between their one writer, the
    feeder on the event loop, and the API's reader threads.

    Readers (threads) take it with ``with lock.read():``; the feeder with ``async with lock:``,
    which never blocks the event loop: it polls, and while it waits new readers hold back
    (writer preference), so a busy API cannot starve the feeder. One reader at a time: the
    budget is small anyway and the GIL serialises the work.
    """

    #: how often the waiting writer polls (s); the longest reader hold is one page (~10 ms)
    POLL_S = 0.002

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writer_waiting = False

    @contextlib.contextmanager
    def read(self) -> Any:
        while self._writer_waiting:
            time.sleep(self.POLL_S / 2)
        with self._lock:
            yield

    async def __aenter__(self) -> "ViewLock":
        if not self._lock.acquire(blocking=False):
            self._writer_waiting = True
            try:
                while not self._lock.acquire(blocking=False):
                    await asyncio.sleep(self.POLL_S)
            finally:
                self._writer_waiting = False
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._lock.release()


class _AddressTable:
    """Per-address failure buckets and recent successes, bounded: beyond ``max_entries`` the
    recovered (full again) buckets go first, then the oldest."""

    def __init__(self, rate: float, burst: float, max_entries: int) -> None:
        self.rate, self.burst, self.max_entries = rate, burst, max_entries
        self.buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self.trusted: collections.OrderedDict[str, float] = collections.OrderedDict()

    def locked_out(self, peer: str, now: float) -> float:
        """Seconds until ``peer`` may try again (0: it may)."""
        b = self.buckets.get(peer)
        if b is None:
            return 0.0
        tokens = min(b.burst, b.tokens + (now - b.stamp) * b.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / b.rate

    def failed(self, peer: str, now: float) -> float:
        b = self.buckets.get(peer)
        if b is None:
            if len(self.buckets) >= self.max_entries:
                self.prune(now)
            b = self.buckets[peer] = TokenBucket(self.rate, self.burst, now)
        return b.take(now)

    def succeeded(self, peer: str, now: float) -> None:
        # A success does not reset the address's failures: whoever holds one valid token (a noc
        # one) must not buy unlimited guesses at the others by logging in between them.
        self.trusted[peer] = now
        self.trusted.move_to_end(peer)
        while len(self.trusted) > self.max_entries:
            self.trusted.popitem(last=False)

    def is_trusted(self, peer: str, now: float) -> bool:
        t = self.trusted.get(peer)
        return t is not None and now - t < TRUSTED_ADDRESS_S

    def prune(self, now: float) -> None:
        full = [k for k, b in self.buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.burst]
        for k in full:
            del self.buckets[k]
        while len(self.buckets) >= self.max_entries:
            self.buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self.buckets) + len(self.trusted)


# --------------------------------------------------------------------------- parameters


def _query(request: web.Request, allowed: set[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            raise ApiError(400, "invalid_parameter", f"unknown parameter {name!r}; known: {', '.join(sorted(allowed))}")
        if name in params:
            raise ApiError(400, "invalid_parameter", f"parameter {name!r} given twice")
        params[name] = value
    return params


def _int(params: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    text = params.get(name)
    if text is None:
        return default
    if not _INTEGER.fullmatch(text):
        if re.fullmatch(r"[+-]?[0-9]+", text):  # ASCII digits, just too many of them
            raise ApiError(400, "invalid_parameter", f"{name}: expected {lo}..{hi}, got {len(text)} digits")
        raise ApiError(400, "invalid_parameter", f"{name}: expected an integer, got {text[:40]!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name}: expected {lo}..{hi}, got {value}")
    return value


def _score(params: Mapping[str, str], name: str) -> float | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name}: expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ApiError(400, "invalid_parameter", f"{name}: expected a number in [0, 1], got {text!r}")
    return value


def _label(params: Mapping[str, str], name: str) -> str | None:
    text = params.get(name)
    if text is not None and not _LABEL.match(text):
        raise ApiError(400, "invalid_parameter", f"{name}: expected 1-64 letters, digits, '_.:- ', got {text[:70]!r}")
    return text


def _time_ms(params: Mapping[str, str], name: str) -> int | None:
    """Epoch milliseconds, or an ISO 8601 date/time (``2026-05-01``, ``2026-05-01T10:00:00Z``; UTC if no zone)."""
    text = params.get(name)
    if text is None:
        return None
    if text.isascii() and text.isdigit():
        if not _DIGITS.fullmatch(text) or int(text) > MAX_TIME_MS:
            raise ApiError(400, "invalid_parameter", f"{name}: expected epoch milliseconds up to {MAX_TIME_MS} "
                                                     f"(2100-01-01), got {len(text)} digits")
        return int(text)
    try:
        if not text.isascii():
            raise ValueError
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        value = int(dt.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise ApiError(400, "invalid_parameter",
                       f"{name}: expected epoch milliseconds or an ISO 8601 date/time, got {text[:40]!r}") from None
    return min(max(value, 0), MAX_TIME_MS)


def _format(request: web.Request, params: Mapping[str, str]) -> str:
    fmt = params.get("format")
    if fmt is None:
        return "csv" if "text/csv" in request.headers.get("Accept", "") else "json"
    if fmt not in ("json", "csv"):
        raise ApiError(400, "invalid_parameter", f"format: expected json or csv, got {fmt[:20]!r}")
    return fmt


def _subscriber_id(text: Any) -> str:
    if not isinstance(text, str) or not _SUBSCRIBER_ID.match(text):
        raise ApiError(400, "invalid_parameter", "subscriber id: expected 1-64 letters, digits or '_.:-'")
    return text


# --------------------------------------------------------------------------- cursors


def _filter_hash(filters: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(filters, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def encode_cursor(key: tuple[float, str], position: tuple[int, ...], fhash: str) -> str:
    """Opaque cursor: the ``(score, id)`` of the last row, the snapshot's view position, the filters' hash."""
    raw = orjson.dumps({"s": -key[0], "i": key[1], "p": list(position), "f": fhash})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, fhash: str) -> tuple[tuple[float, str], tuple[int, ...]]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        score, sid, position, got = float(data["s"]), str(data["i"]), tuple(int(p) for p in data["p"]), data["f"]
        if not (0 <= score <= 1 and all(p >= 0 for p in position) and len(position) <= 10_000):
            raise ValueError
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise ApiError(400, "invalid_cursor", "cursor is malformed; use next_cursor from the previous page") from None
    if got != fhash:
        raise ApiError(400, "invalid_cursor", "cursor belongs to a walk with other filters; start again without cursor")
    return (-score, sid), position


# --------------------------------------------------------------------------- rows and CSV

CSV_COLUMNS = ("subscriber_id", "score", "current_score", "at_risk_since", "region", "segment", "cell_id",
               "reasons", "reason_texts", "last_contact")


def _iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # Spreadsheet formula injection: a cell starting with = + - @ (or tab/CR) would be executed.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_text(rows: list[dict[str, Any]], header: bool = True) -> str:
    """CSV of at-risk rows (:data:`CSV_COLUMNS`), safe to open in a spreadsheet."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([_cell(v) for v in (
            r["subscriber_id"], f"{r['score']:.4f}", f"{r['current_score']:.4f}", _iso(r.get("at_risk_since_ms")),
            r.get("region"), r.get("segment"), r.get("cell_id"), ";".join(x["code"] for x in r["reasons"]),
            "; ".join(x["text"] for x in r["reasons"]), _iso(r.get("last_contact_ms")))])
    return out.getvalue()


#: columns of a worklist export
WORKLIST_COLUMNS = ("team", "region", "rank", "subscriber_id", "probability", "p_complaint", "p_detractor",
                    "p_churn", "segment", "reason_codes", "reasons", "scored_at")


def worklist_csv(rows: list[dict[str, Any]]) -> str:
    """CSV of worklist rows (:data:`WORKLIST_COLUMNS`), safe to open in a spreadsheet."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(WORKLIST_COLUMNS)
    for r in rows:
        o = r["outcomes"]
        writer.writerow([_cell(v) for v in (
            r["team"], r["region"], r["rank"], r["subscriber_id"], f"{r['probability']:.4f}",
            f"{o.get('complaint', 0.0):.4f}", f"{o.get('detractor', 0.0):.4f}", f"{o.get('churn', 0.0):.4f}",
            r.get("segment"), ";".join(x["code"] for x in r["reasons"]), "; ".join(x["text"] for x in r["reasons"]),
            _iso(r.get("scored_ts_ms")))])
    return out.getvalue()


def _reasons(entry: Any) -> list[dict[str, Any]]:
    return [msgspec.structs.asdict(r) for r in entry.latest.reasons]


# --------------------------------------------------------------------------- request bodies


class ContactBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    subscriber_id: str
    channel: str
    outcome: str
    ts_ms: int | None = None


class ConsentBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    subscriber_id: str
    do_not_contact: bool
    #: required to lift a do-not-contact (one of :data:`LIFT_REASONS`)
    reason: str | None = None


async def _body(request: web.Request, kind: type[msgspec.Struct]) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        raw = await request.read()
    except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.web_exceptions.HTTPException) as err:
        if isinstance(err, web.HTTPRequestEntityTooLarge):
            raise
        raise _ClientGone(repr(err)) from None
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as err:
        raise ApiError(400, "invalid_body", str(err)) from None


# --------------------------------------------------------------------------- the app


def _roles(*roles: Role, audited: bool = False) -> Callable[[Callable], Callable]:
    """Mark a handler with the roles that may call it and whether each call is audited."""

    def mark(handler: Callable) -> Callable:
        handler._roles = frozenset(roles)  # type: ignore[attr-defined]
        handler._audited = audited  # type: ignore[attr-defined]
        return handler

    return mark


ALL = (Role.NOC, Role.OUTREACH, Role.ADMIN)
ROWS = (Role.OUTREACH, Role.ADMIN)


class _Api:
    def __init__(self, settings: Any, view: RiskView, store: OutreachStore, audit: AuditLog, *,
                 hotspots: HotspotBoard, tokens: TokenStore, policy: OutreachPolicy, config: ApiConfig,
                 metrics: ApiMetrics | None, ready: Callable[[], bool] | None, clock: Callable[[], float],
                 incidents: IncidentBoard | None = None):
        self.settings, self.view, self.store, self.audit = settings, view, store, audit
        self.incidents = incidents if incidents is not None else IncidentBoard()
        self.hotspots, self.tokens, self.policy, self.config = hotspots, tokens, policy, config
        self.metrics, self.ready, self.clock = metrics, ready, clock
        self.buckets: dict[str, TokenBucket] = {}
        self.failures = _AddressTable(AUTH_FAILURE_RATE_PER_S, AUTH_FAILURE_BURST, MAX_TRACKED_ADDRESSES)
        self.global_failures = TokenBucket(AUTH_GLOBAL_FAILURE_RATE_PER_S, AUTH_GLOBAL_FAILURE_BURST, clock())
        #: the views' lock: the worker hands it to its feeder (``feeder.lock``)
        self.view_lock = ViewLock()
        n = config.api_max_concurrency
        self.pool = (concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="satmon-api")
                     if n > 0 else None)
        self.budget = asyncio.Semaphore(max(n, 1))
        self.waiting = 0
        self.tarpitted = 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        started = time.perf_counter()
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        try:
            if request.path.startswith(API + "/") or request.path == API:
                response = await self._api(request, handler)
                response.headers["Cache-Control"] = "no-store"
            else:
                response = await handler(request)
        except ApiError as err:
            response = err.response()
            response.headers["Cache-Control"] = "no-store"
        except web.HTTPException as exc:
            if not request.path.startswith(API):
                raise
            detail = "no such endpoint; see docs/API.md" if exc.status == 404 else exc.reason
            response = ApiError(exc.status, exc.reason.lower().replace(" ", "_"), detail).response()
        except _ClientGone as gone:
            log.info("client %s went away during %s %s (%s)", request.remote, request.method, route, gone)
            response = ApiError(400, "incomplete_body", "the request body did not arrive").response()
        except Exception:
            log.exception("internal error on %s %s", request.method, route)
            response = ApiError(500, "internal", "internal error; see the worker log").response()
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if self.metrics is not None:
            self.metrics.requests.labels(route, str(response.status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    async def _authenticate(self, request: web.Request) -> Principal:
        """The caller's principal. An address that failed too often is locked out *before* its
        token is checked (so guessing stops), and so is an address without a recent success
        while all addresses together failed too often (a guesser rotating addresses)."""
        now = self.clock()
        peer = request.remote or "?"
        wait = self.failures.locked_out(peer, now)
        if not wait and not self.failures.is_trusted(peer, now) and self.global_failures.tokens < 1:
            wait = self.global_failures.take(now)
        if wait:
            self._count_limited()
            await self._tarpit(wait)
            raise ApiError(429, "too_many_requests", "too many failed authentications from this address",
                           {"Retry-After": str(math.ceil(wait))})
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        principal = self.tokens.authenticate(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if principal is None:
            self.failures.failed(peer, now)
            self.global_failures.take(now)
            detail = "missing bearer token" if not header else "invalid token"
            if header:  # a wrong token is worth a line; a browser probing without one is not
                await self._audit_entry({"who": None, "endpoint": _endpoint(request), "status": 401,
                                         "client": peer, "error": "invalid token"})
            raise ApiError(401, "unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="satmon"'})
        self.failures.succeeded(peer, now)
        return principal

    def _count_limited(self) -> None:
        if self.metrics is not None:
            self.metrics.rate_limited.inc()

    async def _tarpit(self, wait: float) -> None:
        if self.tarpitted >= MAX_TARPITTED:
            return
        self.tarpitted += 1
        try:
            await asyncio.sleep(min(wait, TARPIT_MAX_S))
        finally:
            self.tarpitted -= 1

    async def _api(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        principal = await self._authenticate(request)
        bucket = self.buckets.setdefault(principal.name, TokenBucket(self.config.rate_per_s, self.config.rate_burst, self.clock()))
        wait = bucket.take(self.clock())
        if wait:
            self._count_limited()
            await self._tarpit(wait)
            raise ApiError(429, "too_many_requests", f"rate limit of {self.config.rate_per_s:g}/s for this token",
                           {"Retry-After": str(math.ceil(wait))})
        request[PRINCIPAL] = principal
        target = request.match_info.handler
        roles = getattr(target, "_roles", None)
        audited = getattr(target, "_audited", False)
        endpoint = _endpoint(request)
        try:
            if roles is None or principal.role not in roles:  # unmarked: nobody (closed by default)
                allowed = ", ".join(sorted(r.value for r in roles or ())) or "a role no token has"
                raise ApiError(403, "forbidden", f"role {principal.role.value} may not use {endpoint} (needs {allowed})")
            if self.ready is not None and not self.ready():
                raise ApiError(503, "not_ready", "the view is still reading risk scores; answers would be incomplete",
                               {"Retry-After": "2"})
            if self.waiting >= self.config.api_max_queue:
                raise ApiError(503, "busy", "too many requests in progress on this worker; retry", {"Retry-After": "1"})
            self.waiting += 1
            try:
                await self.budget.acquire()
            finally:
                self.waiting -= 1
            try:
                response = await handler(request)
            finally:
                self.budget.release()
            status = response.status
        except ApiError as err:
            status, response = err.status, None
            if audited:
                await self._audit(request, principal, endpoint, status)
            raise
        if audited:
            await self._audit(request, principal, endpoint, status)
        return response

    async def _audit(self, request: web.Request, principal: Principal, endpoint: str, status: int) -> None:
        info = request.get(AUDIT_INFO, {})
        entry = {"who": principal.name, "role": principal.role.value, "endpoint": endpoint, "status": status,
                 "client": request.remote,
                 "filter": info.get("filter", {k: v for k, v in request.query.items() if k != "cursor"}),
                 "rows": info.get("rows", 0)}
        for key in ("subject", "subjects", "reason"):
            if key in info:
                entry[key] = info[key]
        if "cursor" in request.query:
            entry["page"] = "next"
        await self._audit_entry(entry)

    async def _audit_entry(self, entry: dict[str, Any]) -> None:
        try:
            await self.audit.write(entry)
        except OSError as err:
            log.error("audit log write failed (%s): refusing to serve customer data", err.strerror)
            raise ApiError(503, "audit_unavailable", "the audit log cannot be written; no data is served") from None

    # ------------------------------------------------------------------ helpers

    async def _compute(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (reads the views, builds and serialises the answer) in the API's pool under
        the views' read lock: the event loop that processes the streams never does this work."""
        def locked() -> Any:
            with self.view_lock.read():
                return fn()

        if self.pool is None:
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self.pool, locked)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _covered(self, position: tuple[int, ...]) -> None:
        """Wait (briefly) until this worker's view has read as far as a cursor from another worker."""
        deadline = time.monotonic() + self.config.cursor_wait_s
        while not self.view.covers(position):
            if time.monotonic() > deadline:
                raise ApiError(503, "view_behind", "this worker has not yet read as far as the cursor; retry",
                               {"Retry-After": "1"})
            await asyncio.sleep(0.05)

    def _rows(self, pairs: list[tuple[str, Version]]) -> list[dict[str, Any]]:
        out = []
        for i, (sid, v) in enumerate(pairs):
            if i % YIELD_EVERY_ROWS == YIELD_EVERY_ROWS - 1:
                time.sleep(0)  # hand the GIL to the event loop now rather than at the 5 ms switch interval
            out.append(self._row(sid, v))
        return out

    def _row(self, sid: str, v: Version) -> dict[str, Any]:
        entry = self.view.get(sid)
        return {"subscriber_id": sid, "score": v.score, "current_score": entry.latest.score,
                "at_risk_since_ms": v.at_risk_since_ms, "region": v.region, "segment": v.segment,
                "cell_id": entry.latest.cell_id, "reasons": _reasons(entry), "group": self.policy.group(sid),
                "last_contact_ms": self.store.last_contact_ms(sid)}

    def _respond_rows(self, request: web.Request, fmt: str, body: dict[str, Any], next_cursor: str | None) -> web.Response:
        if fmt == "csv":
            headers = {"Content-Disposition": 'attachment; filename="at-risk.csv"'}
            if next_cursor:
                headers["X-Next-Cursor"] = next_cursor
            return web.Response(text=csv_text(body["rows"]), content_type="text/csv", charset="utf-8", headers=headers)
        return _json(body)

    # ------------------------------------------------------------------ handlers

    @_roles(*ALL)
    async def whoami(self, request: web.Request) -> web.Response:
        p: Principal = request[PRINCIPAL]
        return _json({"name": p.name, "role": p.role.value})

    @_roles(*ALL)
    async def summary(self, request: web.Request) -> web.Response:
        _query(request, set())

        def work() -> web.Response:
            subs = self.view.subscribers_by_region()
            risk = self.view.at_risk_by_region()
            regions = sorted(set(subs) | set(risk), key=lambda r: (r is None, r or ""))
            return _json({
                "subscribers": len(self.view), "at_risk": self.view.at_risk_count,
                "by_region": [{"region": r, "subscribers": subs.get(r, 0), "at_risk": risk.get(r, 0)} for r in regions],
                "active_hotspots": len(self.hotspots.active()), "view_position": list(self.view.position()),
            })

        return await self._compute(work)

    @_roles(*ROWS, audited=True)
    async def at_risk(self, request: web.Request) -> web.Response:
        params = _query(request, {"region", "segment", "min_score", "reason", "not_contacted_since", "limit", "cursor", "format"})
        filters = {"region": _label(params, "region"), "segment": _label(params, "segment"),
                   "min_score": _score(params, "min_score"), "reason": _label(params, "reason"),
                   "not_contacted_since": _time_ms(params, "not_contacted_since")}
        limit = _int(params, "limit", self.config.default_limit, 1, self.config.max_limit)
        fmt = _format(request, params)
        fhash = _filter_hash(filters)
        after, position = (decode_cursor(params["cursor"], fhash) if "cursor" in params else (None, None))
        if position is not None:
            await self._covered(position)
        now = self.now_ms()
        segment, min_score, reason, since = (filters["segment"], filters["min_score"], filters["reason"],
                                             filters["not_contacted_since"])
        policy, store = self.policy, self.store

        def eligible(sid: str, v: Version) -> bool:
            return ((segment is None or v.segment == segment) and (min_score is None or v.score >= min_score)
                    and (reason is None or reason in v.reasons)
                    and policy.suppression(sid, store, now_ms=now, not_contacted_since_ms=since) is None)

        def work() -> tuple[list[str], web.Response]:
            try:
                page = self.view.page(limit=limit, after=after, region=filters["region"], predicate=eligible,
                                      position=position)
            except CursorExpired as err:
                raise ApiError(410, "cursor_expired", f"{err}; start the walk again without cursor") from None
            rows = self._rows(page.rows)
            next_cursor = encode_cursor(page.next_key, page.position, fhash) if page.next_key else None
            body = {"rows": rows, "next_cursor": next_cursor, "as_of": list(page.position), "limit": limit}
            return [r["subscriber_id"] for r in rows], self._respond_rows(request, fmt, body, next_cursor)

        request[AUDIT_INFO] = {"rows": 0, "filter": {**{k: v for k, v in filters.items() if v is not None},
                                                     "limit": limit, "format": fmt}}
        returned, response = await self._compute(work)
        # Which subscribers left in this export: the ids the view holds, i.e. keyed pseudonyms
        # when pseudonymisation is on (the default) -- the same values the caller received.
        request[AUDIT_INFO].update(rows=len(returned), subjects=returned)
        return response

    @_roles(*ROWS, audited=True)
    async def worklist(self, request: web.Request) -> web.Response:
        """A team's ranked budget: per region the ``capacity`` contactable subscribers most likely to
        have the team's outcome (care: complaint, retention: churn); no score threshold."""
        from monitor.scoring.risk import TEAMS

        params = _query(request, {"team", "region", "capacity", "format"})
        team = params.get("team", "care")
        if team not in TEAMS:
            raise ApiError(400, "invalid_parameter", f"team: expected one of {sorted(TEAMS)}, got {team[:40]!r}")
        region = _label(params, "region")
        capacity = _int(params, "capacity", self.config.list_capacity, 1, self.config.max_limit)
        fmt = _format(request, params)
        now = self.now_ms()
        policy, store = self.policy, self.store

        def eligible(sid: str) -> bool:
            return policy.suppression(sid, store, now_ms=now) is None

        def work() -> tuple[list[str], web.Response]:
            rows = self.view.worklist(team, capacity=capacity, region=region, eligible=eligible)
            if fmt == "csv":
                text = worklist_csv(rows)
                return [r["subscriber_id"] for r in rows], web.Response(
                    text=text, content_type="text/csv", charset="utf-8",
                    headers={"Content-Disposition": f'attachment; filename="worklist-{team}.csv"'})
            return [r["subscriber_id"] for r in rows], _json({"team": team, "outcome": TEAMS[team],
                                                              "capacity": capacity, "rows": rows})

        request[AUDIT_INFO] = {"rows": 0, "filter": {"team": team, "region": region, "capacity": capacity,
                                                     "format": fmt}}
        returned, response = await self._compute(work)
        request[AUDIT_INFO].update(rows=len(returned), subjects=returned)
        return response

    @_roles(*ROWS, audited=True)
    async def subscriber(self, request: web.Request) -> web.Response:
        _query(request, set())
        sid = _subscriber_id(request.match_info["sid"])
        request[AUDIT_INFO] = {"subject": sid, "rows": 0, "filter": {}}
        if self.store.is_dnc(sid):
            raise ApiError(403, "do_not_contact", "this subscriber asked not to be contacted; no data is shown")
        if self.view.get(sid) is None:
            raise ApiError(404, "not_found", "no risk score for this subscriber")
        request[AUDIT_INFO]["rows"] = 1
        return await self._compute(lambda: self._subscriber_body(sid))

    def _subscriber_body(self, sid: str) -> web.Response:
        entry = self.view.get(sid)
        latest = entry.latest
        suppressed = self.policy.suppression(sid, self.store, now_ms=self.now_ms())
        return _json({
            "subscriber_id": sid, "score": latest.score, "at_risk": latest.at_risk,
            "at_risk_since_ms": entry.current.at_risk_since_ms, "ts_ms": latest.ts_ms, "scored_at_ms": latest.scored_at_ms,
            "region": latest.region, "segment": latest.segment, "cell_id": latest.cell_id, "reasons": _reasons(entry),
            "model_version": latest.model_version, "group": self.policy.group(sid), "suppressed": suppressed,
            "history": [{"ts_ms": v.ts_ms, "scored_at_ms": v.scored_at_ms, "score": v.score, "at_risk": v.at_risk}
                        for v in entry.history],
            "contacts": [{"ts_ms": c.ts_ms, "channel": c.channel, "outcome": c.outcome, "by": c.by}
                         for c in self.store.contacts(sid)],
        })

    @_roles(*ALL)
    async def hotspot_list(self, request: web.Request) -> web.Response:
        _query(request, set())

        def work() -> web.Response:
            out = []
            for a in self.hotspots.active():
                cell = alert_cell(a) or ""
                out.append({"alert_id": a.alert_id, "cell": cell, "region": a.labels.get("region"),
                            "severity": a.severity, "summary": a.summary, "starts_at_ms": a.starts_at_ms,
                            "updated_at_ms": a.updated_at_ms,
                            "affected": len(self.view.served_by([cell], since_ms=a.starts_at_ms))})
            return _json({"hotspots": out})

        return await self._compute(work)

    def _served(self, request: web.Request, cells: list[str], start_ms: int, key: dict[str, Any]) -> Awaitable[Any]:
        """The affected-customer rows of a hot spot or an incident: subscribers served by ``cells``
        at least ``min_uses`` times since ``since`` (default: its start), suppressed ones
        (do-not-contact, hold-out, contacted recently) left out; JSON or the audited CSV."""
        params = _query(request, {"limit", "format", "since", "min_uses"})
        limit = _int(params, "limit", self.config.default_limit, 1, self.config.max_limit)
        fmt = _format(request, params)
        since = _time_ms(params, "since")
        since = start_ms if since is None else since
        min_uses = _int(params, "min_uses", 1, 1, self.view.history)
        request[AUDIT_INFO] = {"rows": 0, "filter": {**key, "since_ms": since, "min_uses": min_uses}}
        now = self.now_ms()

        def work() -> tuple[list[str], web.Response]:
            everyone = self.view.served_by(cells, since_ms=since, min_uses=min_uses)
            eligible = [r for r in everyone if self.policy.suppression(r.sid, self.store, now_ms=now) is None]
            rows = [self._row(r.sid, r.version) | {"uses": r.uses, "last_served_ms": r.last_ms}
                    for r in eligible[:limit]]
            body = {**key, "starts_at_ms": start_ms, "since_ms": since, "min_uses": min_uses,
                    "affected": len(everyone), "eligible": len(eligible), "rows": rows,
                    "truncated": len(eligible) > limit}
            return [r["subscriber_id"] for r in rows], self._respond_rows(request, fmt, body, None)

        return self._compute(work)

    def _incident_json(self, inc: Any) -> dict[str, Any]:
        return {"incident_id": inc.incident_id, "status": inc.status, "severity": inc.severity,
                "region": inc.region, "cells": inc.cells, "kpis": inc.kpis, "summary": inc.summary,
                "started_at_ms": inc.started_at_ms, "updated_at_ms": inc.updated_at_ms,
                "ended_at_ms": inc.ended_at_ms, "affected_subscribers": inc.affected_subscribers,
                "alert_ids": inc.alert_ids,
                "customers": len(self.view.served_by(inc.cells, since_ms=inc.started_at_ms))}

    @_roles(*ALL)
    async def incident_list(self, request: web.Request) -> web.Response:
        params = _query(request, {"status"})
        status = params.get("status")
        if status not in (None, "firing", "resolved"):
            raise ApiError(400, "invalid_parameter", f"status: expected firing or resolved, got {status[:20]!r}")

        def work() -> web.Response:
            return _json({"incidents": [self._incident_json(i) for i in self.incidents.list(status=status)]})

        return await self._compute(work)

    @_roles(*ROWS, audited=True)
    async def incident_affected(self, request: web.Request) -> web.Response:
        iid = request.match_info["incident_id"]
        if not _LABEL.match(iid):
            raise ApiError(400, "invalid_parameter", "incident id: expected 1-64 letters, digits, '_.:- '")
        inc = self.incidents.get(iid)
        if inc is None:
            request[AUDIT_INFO] = {"rows": 0, "filter": {"incident_id": iid}}
            raise ApiError(404, "not_found", f"no incident {iid!r}")
        returned, response = await self._served(request, inc.cells, inc.started_at_ms,
                                                {"incident_id": iid, "region": inc.region, "cells": inc.cells})
        request[AUDIT_INFO].update(rows=len(returned), subjects=returned)
        return response

    @_roles(*ROWS, audited=True)
    async def affected(self, request: web.Request) -> web.Response:
        cell = request.match_info["cell"]
        if not _LABEL.match(cell):
            raise ApiError(400, "invalid_parameter", "cell: expected 1-64 letters, digits, '_.:- '")
        alert = self.hotspots.for_cell(cell)
        if alert is None:
            request[AUDIT_INFO] = {"rows": 0, "filter": {"cell": cell}}
            raise ApiError(404, "not_found", f"no active hot spot on cell {cell!r}")
        returned, response = await self._served(request, [cell], alert.starts_at_ms,
                                                {"cell": cell, "alert_id": alert.alert_id})
        request[AUDIT_INFO].update(rows=len(returned), subjects=returned)
        return response

    @_roles(*ROWS, audited=True)
    async def contact(self, request: web.Request) -> web.Response:
        _query(request, set())
        body: ContactBody = await _body(request, ContactBody)
        sid = _subscriber_id(body.subscriber_id)
        request[AUDIT_INFO] = {"subject": sid, "rows": 0, "filter": {"channel": body.channel, "outcome": body.outcome}}
        if body.channel not in CHANNELS:
            raise ApiError(400, "invalid_body", f"channel: expected one of {', '.join(CHANNELS)}")
        if body.outcome not in OUTCOMES:
            raise ApiError(400, "invalid_body", f"outcome: expected one of {', '.join(OUTCOMES)}")
        if self.store.is_dnc(sid):
            raise ApiError(409, "do_not_contact", "this subscriber asked not to be contacted")
        if self.view.get(sid) is None:
            raise ApiError(404, "not_found", "no risk score for this subscriber")
        now = self.now_ms()
        if body.ts_ms is not None and not now - 30 * DAY_MS <= body.ts_ms <= now + 60_000:
            raise ApiError(400, "invalid_body", "ts_ms: must be within the last 30 days and not in the future")
        record = OutreachRecord(record_id=new_record_id(), kind="contact", subscriber_id=sid,
                                ts_ms=body.ts_ms if body.ts_ms is not None else now, by=request[PRINCIPAL].name,
                                channel=body.channel, outcome=body.outcome)  # type: ignore[arg-type]
        await self._record(record)
        request[AUDIT_INFO]["rows"] = 1
        return _json(msgspec.structs.asdict(record), status=201)

    async def _record(self, record: OutreachRecord) -> None:
        """Publish, then apply under the views' lock (API threads may be reading the store)."""
        if self.store.sink is not None:
            await self.store.sink(record)
        async with self.view_lock:
            self.store.apply(record)

    @_roles(*ROWS, audited=True)
    async def consent(self, request: web.Request) -> web.Response:
        """Set a do-not-contact (outreach, admin), or lift one: admin only, with a reason code
        (:data:`LIFT_REASONS`); both land in the audit log. Only for subscribers the view knows."""
        _query(request, set())
        body: ConsentBody = await _body(request, ConsentBody)
        sid = _subscriber_id(body.subscriber_id)
        request[AUDIT_INFO] = {"subject": sid, "rows": 0, "filter": {"do_not_contact": body.do_not_contact}}
        if body.reason is not None:
            if body.reason not in LIFT_REASONS:
                raise ApiError(400, "invalid_body", f"reason: expected one of {', '.join(LIFT_REASONS)}")
            request[AUDIT_INFO]["reason"] = body.reason
        if not body.do_not_contact:
            if request[PRINCIPAL].role is not Role.ADMIN:
                raise ApiError(403, "forbidden", f"role {request[PRINCIPAL].role.value} may not lift a "
                                                 "do-not-contact (needs admin)")
            if body.reason is None:
                raise ApiError(400, "invalid_body", f"reason: required to lift a do-not-contact, one of "
                                                    f"{', '.join(LIFT_REASONS)}")
        if self.view.get(sid) is None and not self.store.is_dnc(sid):
            raise ApiError(404, "not_found", "no such subscriber: consent is recorded for subscribers the view knows")
        record = OutreachRecord(record_id=new_record_id(), kind="consent", subscriber_id=sid, ts_ms=self.now_ms(),
                                by=request[PRINCIPAL].name, do_not_contact=body.do_not_contact,
                                reason=body.reason)
        await self._record(record)
        request[AUDIT_INFO]["rows"] = 1
        return _json(msgspec.structs.asdict(record), status=201)

    @_roles(*ALL)
    async def effect(self, request: web.Request) -> web.Response:
        _query(request, set())
        horizon_ms = int(self.config.effect_horizon_days * DAY_MS)
        return await self._compute(lambda: _json(effect_report(self.view.cohort(), self.store, self.policy,
                                                               horizon_ms=horizon_ms)))

    @_roles(Role.ADMIN, audited=True)
    async def audit_log(self, request: web.Request) -> web.Response:
        params = _query(request, {"since", "limit"})
        since = _time_ms(params, "since") or 0
        limit = _int(params, "limit", 100, 1, 1000)
        entries = await asyncio.to_thread(self.audit.read, since_ms=since, limit=limit)
        request[AUDIT_INFO] = {"rows": len(entries), "filter": {k: v for k, v in params.items()}}
        return _json({"entries": entries})

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html", headers=_PAGE_HEADERS)


_PAGE_HEADERS = {
    # Only our own script and style; no inline code, no framing, no third-party anything.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-cache",
}


async def _to_ui(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(request.app.router["ui"].url_for() if "ui" in request.app.router else "/ui/")


API_KEY: web.AppKey[_Api] = web.AppKey("satmon_api", _Api)


def _endpoint(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical}" if resource is not None else f"{request.method} (no route)"


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp would announce "Python/3.x aiohttp/3.y": no version banner for scanners.
    response.headers["Server"] = "satmon"


def harden(app: web.Application) -> None:
    """Response hardening for any aiohttp app a worker serves (no version banner)."""
    if _server_header not in app.on_response_prepare:
        app.on_response_prepare.append(_server_header)


def build_api(settings: Any, view: RiskView, outreach_store: OutreachStore, audit: AuditLog,
              metrics: ApiMetrics | Any | None = None, *, hotspots: HotspotBoard | None = None,
              tokens: TokenStore | None = None, policy: OutreachPolicy | None = None,
              config: ApiConfig | None = None, ready: Callable[[], bool] | None = None,
              clock: Callable[[], float] = time.time, incidents: IncidentBoard | None = None) -> web.Application:
    """The API and web page as an aiohttp application.

    Parameters
    ----------
    settings
        :class:`~monitor.config.Settings` (tokens, pseudonym key for the hold-out hash, tunables).
    view, outreach_store, hotspots, incidents
        The worker's views, fed by :func:`monitor.worker.viewfeed.feeder_for`.
    audit
        The audit log (``AuditLog(settings.data_dir / "audit" / "audit.jsonl")``).
    metrics
        :class:`ApiMetrics`, or a ``prometheus_client`` registry to create them on, or ``None``.
    tokens, policy, config
        Override what is otherwise built from ``settings`` (tests).
    ready
        Returns false while the view is still catching up (``lambda: feeder.caught_up``): the API
        answers 503 rather than an incomplete list.
    clock
        Seconds since the epoch (tests move time).
    """
    config = config or ApiConfig.from_settings(settings)
    tokens = tokens if tokens is not None else load_tokens(settings)
    if policy is None:
        key = load_key(settings)  # the hold-out hash reuses the pseudonym key (domain-separated)
        policy = OutreachPolicy(holdout_share=config.holdout_share, fatigue_ms=int(config.contact_fatigue_days * DAY_MS),
                                **({"holdout_key": key} if key else {}))
    if hotspots is None:
        log.warning("build_api: no hot spot board given; /api/v1/hotspots will stay empty")
        hotspots = HotspotBoard()
    if metrics is not None and not isinstance(metrics, ApiMetrics):
        metrics = ApiMetrics(metrics)
    api = _Api(settings, view, outreach_store, audit, hotspots=hotspots, tokens=tokens, policy=policy, config=config,
               metrics=metrics, ready=ready, clock=clock, incidents=incidents)
    app = web.Application(middlewares=[api.middleware], client_max_size=64 * 1024)
    app[API_KEY] = api
    _register(app.router, api)
    harden(app)

    async def stop_pool(_app: web.Application) -> None:
        api.close()

    app.on_cleanup.append(stop_pool)
    return app


def _register(r: web.UrlDispatcher, api: _Api, *, root_redirect: bool = True) -> None:
    r.add_get(f"{API}/whoami", api.whoami)
    r.add_get(f"{API}/summary", api.summary)
    r.add_get(f"{API}/at-risk", api.at_risk)
    r.add_get(f"{API}/worklist", api.worklist)
    r.add_get(f"{API}/subscribers/{{sid}}", api.subscriber)
    r.add_get(f"{API}/hotspots", api.hotspot_list)
    r.add_get(f"{API}/hotspots/{{cell}}/affected", api.affected)
    r.add_get(f"{API}/incidents", api.incident_list)
    r.add_get(f"{API}/incidents/{{incident_id}}/affected", api.incident_affected)
    r.add_post(f"{API}/outreach", api.contact)
    r.add_post(f"{API}/consent", api.consent)
    r.add_get(f"{API}/outreach/effect", api.effect)
    r.add_get(f"{API}/audit", api.audit_log)
    r.add_get("/ui/", api.index, name="ui")
    r.add_get("/ui", _to_ui)
    if root_redirect:
        r.add_get("/", _to_ui)
    r.add_static("/ui/assets", WEB_DIR / "assets", append_version=False)


def mount_api(root: web.Application, api_app: web.Application) -> None:
    """Serve the API built by :func:`build_api` from an existing aiohttp app (e.g. Faust's
    ``app.web.web_app``) at the same paths (``/api/v1/...``, ``/ui/``). Call before the server
    starts. The API's middleware only authenticates ``/api/`` paths; other routes (``/metrics``,
    ``/healthz``) pass through it untouched apart from security headers."""
    api = api_app[API_KEY]
    root.middlewares.append(api.middleware)
    harden(root)
    # "/" is left to the host app (Faust registers its own index page there at start-up).
    _register(root.router, api, root_redirect=False)
