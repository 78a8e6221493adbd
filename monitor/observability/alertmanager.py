"""Alertmanager v2 client: push satmon's alerts without ever blocking the stream.

:meth:`AlertmanagerClient.notify` is synchronous and O(1): it puts the alert's latest state in a
bounded queue (coalesced by ``alert_id``: a newer state of a queued alert replaces it in place;
when full the oldest is dropped and counted). A background task posts batches to
``POST /api/v2/alerts``; a failed post is retried with exponential back-off and jitter, the failure
counted, and alerts superseded meanwhile are not re-sent in their old state. Firing alerts are
re-posted every ``resend_interval_s`` (Alertmanager forgets an alert whose ``endsAt`` passes, and
a firing alert is posted with ``endsAt = now + 4 × resend_interval_s``, the way Prometheus does it,
so a dead satmon's alerts expire on their own); a resolved alert is posted with its ``endsAt``.

Mapping from ``alert.v1``: labels = ``alertname``, ``severity`` and the alert's labels (cell_id /
region / feature — bounded values, no subscriber ids); annotations = ``summary``, ``description``,
``runbook_url`` and ``alert_id``; ``startsAt`` = ``starts_at_ms``.

Use from a running event loop::

    client = AlertmanagerClient("http://127.0.0.1:9093")
    await client.start()
    client.notify(alert)        # from the stream, any number of times, never awaits
    await client.stop()         # tries to deliver what is queued, then closes
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from monitor.records.events import Alert

log = logging.getLogger(__name__)


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def postable(alert: Alert, *, now_ms: float, resend_interval_s: float) -> dict[str, Any]:
    """The Alertmanager v2 ``PostableAlert`` for an ``alert.v1`` record.

    >>> from monitor.detection.alerting import AlertLifecycle
    >>> a = AlertLifecycle().fire("SatmonHotSpotActive", {"cell_id": "c1", "region": "r"}, ts_ms=0,
    ...     severity="critical", summary="s", description="d")
    >>> p = postable(a, now_ms=60_000, resend_interval_s=60)
    >>> p["labels"]["alertname"], p["labels"]["cell_id"], p["startsAt"], p["endsAt"]
    ('SatmonHotSpotActive', 'c1', '1970-01-01T00:00:00.000Z', '1970-01-01T00:05:00.000Z')
    """
    labels = {"alertname": alert.alertname, "severity": alert.severity, **alert.labels}
    starts = alert.starts_at_ms
    if alert.status == "firing":
        ends = max(now_ms, starts) + 4 * resend_interval_s * 1000
    else:
        # resolved: its end, but never in the future (it would look firing until then) and
        # never before the start (Alertmanager rejects that)
        ends = min(alert.ends_at_ms if alert.ends_at_ms is not None else now_ms, now_ms)
        ends = max(ends, starts + 1)
    return {
        "labels": labels,
        "annotations": {"summary": alert.summary, "description": alert.description,
                        "runbook_url": alert.runbook_url, "alert_id": alert.alert_id},
        "startsAt": _iso(starts),
        "endsAt": _iso(ends),
    }


class AlertmanagerClient:
    """Non-blocking, retrying Alertmanager v2 client (see the module docstring).

    Parameters
    ----------
    url
        Alertmanager base URL (``http://host:9093``), e.g. ``Settings.alertmanager_url``.
    max_queue
        Distinct alerts waiting for delivery before the oldest is dropped (``dropped``).
    batch_size
        Alerts per POST.
    resend_interval_s
        How often firing alerts are re-posted.
    timeout_s
        Per-request timeout.
    backoff_initial_s, backoff_max_s
        Retry delay: ``min(max, initial * 2**attempt)`` times a random factor in [0.5, 1].
    seed
        Seed of the jitter.
    clock
        Wall clock in seconds (for ``endsAt`` of firing alerts); ``time.time`` by default.

    Counters (plain ints, read by the metrics shell): ``enqueued``, ``delivered`` (alerts accepted
    by Alertmanager), ``failures`` (failed POSTs), ``dropped`` (queue overflow), ``rejected`` (alerts
    refused with a 4xx: not retried), ``resent``.
    """

    def __init__(self, url: str, *, max_queue: int = 1000, batch_size: int = 64,
                 resend_interval_s: float = 60.0, timeout_s: float = 5.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, seed: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be positive")
        self.url = url.rstrip("/")
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.resend_interval_s = resend_interval_s
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self._rng = random.Random(seed)
        self._pending: OrderedDict[str, Alert] = OrderedDict()
        self._in_flight = 0   # alerts of the POST under way: popped from _pending, not yet delivered
        self._firing: dict[str, Alert] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._resend_task: asyncio.Task | None = None
        self._session: Any = None
        self._attempt = 0
        self.enqueued = self.delivered = self.failures = self.dropped = self.resent = self.rejected = 0
        self.last_error: str | None = None

    # -- the stream side: synchronous, O(1) ------------------------------------------------------
    def notify(self, alert: Alert) -> None:
        """Queue the alert's latest state for delivery. Never blocks, never raises on overload."""
        if alert.status == "firing":
            self._firing[alert.alert_id] = alert
        else:
            self._firing.pop(alert.alert_id, None)
        self._put(alert)
        self.enqueued += 1

    def _put(self, alert: Alert) -> None:
        pending = self._pending
        if alert.alert_id in pending:
            pending[alert.alert_id] = alert   # newer state, same place in line
        else:
            pending[alert.alert_id] = alert
            if len(pending) > self.max_queue:
                pending.popitem(last=False)
                self.dropped += 1
        if self._wake is not None:
            self._wake.set()

    @property
    def queued(self) -> int:
        """Alert states not yet accepted by Alertmanager: waiting, plus those of the POST under way
        (a caller that waits for ``queued == 0`` has seen every state delivered)."""
        return len(self._pending) + self._in_flight

    @property
    def firing(self) -> list[Alert]:
        """Firing alerts this client keeps re-posting."""
        return list(self._firing.values())

    def stats(self) -> dict[str, Any]:
        return {"enqueued": self.enqueued, "delivered": self.delivered, "failures": self.failures,
                "dropped": self.dropped, "rejected": self.rejected, "resent": self.resent, "queued": self.queued,
                "firing": len(self._firing), "last_error": self.last_error}

    # -- the delivery side ------------------------------------------------------------------------
    async def start(self) -> None:
        import aiohttp

        if self._task is not None:
            return
        self._wake = asyncio.Event()
        if self._pending:
            self._wake.set()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._task = asyncio.create_task(self._run(), name="alertmanager-sender")
        self._resend_task = asyncio.create_task(self._resend(), name="alertmanager-resend")

    async def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Try to deliver what is queued for up to ``flush_timeout_s``, then stop."""
        if self._task is None:
            return
        deadline = time.monotonic() + flush_timeout_s
        while self.queued and time.monotonic() < deadline and self._attempt == 0:
            await asyncio.sleep(0.02)
        for task in (self._resend_task, self._task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._task = self._resend_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def backoff_s(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, capped, jittered."""
        base = min(self.backoff_max_s, self.backoff_initial_s * (2 ** (attempt - 1)))
        return base * self._rng.uniform(0.5, 1.0)

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(self.resend_interval_s)
            for alert in list(self._firing.values()):
                if alert.alert_id not in self._pending:
                    self._put(alert)
                    self.resent += 1

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = []
            while self._pending and len(batch) < self.batch_size:
                batch.append(self._pending.popitem(last=False)[1])
            self._in_flight = len(batch)
            try:
                outcome = await self._post(batch)
            finally:
                self._in_flight = 0
            if outcome == "ok":
                self._attempt = 0
                self.delivered += len(batch)
                continue
            self.failures += 1
            if outcome == "rejected":  # Alertmanager refused the payload: retrying cannot help
                self.rejected += len(batch)
                continue
            self._attempt += 1
            # put back what was not superseded meanwhile, at the front, in order
            for alert in reversed(batch):
                if alert.alert_id not in self._pending:
                    self._pending[alert.alert_id] = alert
                    self._pending.move_to_end(alert.alert_id, last=False)
            while len(self._pending) > self.max_queue:
                self._pending.popitem(last=False)
                self.dropped += 1
            await asyncio.sleep(self.backoff_s(self._attempt))

    async def _post(self, batch: list[Alert]) -> str:
        now_ms = self.clock() * 1000.0
        body = [postable(a, now_ms=now_ms, resend_interval_s=self.resend_interval_s) for a in batch]
        try:
            async with self._session.post(f"{self.url}/api/v2/alerts", json=body) as resp:
                if resp.status // 100 == 2:
                    return "ok"
                text = (await resp.text())[:200]
                self.last_error = f"HTTP {resp.status}: {text}"
                if resp.status // 100 == 4 and resp.status not in (408, 429):
                    log.error("alertmanager rejected %d alerts: %s", len(batch), self.last_error)
                    return "rejected"
        except asyncio.CancelledError:
            # stopping mid-post: keep the batch for a later start
            for alert in reversed(batch):
                if alert.alert_id not in self._pending:
                    self._pending[alert.alert_id] = alert
                    self._pending.move_to_end(alert.alert_id, last=False)
            raise
        except Exception as exc:  # connection refused, timeout, DNS ...
            self.last_error = f"{type(exc).__name__}: {exc}"
        log.warning("alertmanager post of %d alerts failed (attempt %d): %s", len(batch),
                    self._attempt + 1, self.last_error)
        return "retry"
