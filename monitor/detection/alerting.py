"""The alert lifecycle, shared by hot-spot and drift detection: fire, update, resolve, deduplicate.

An alert is identified by its ``alertname`` and identifying ``labels`` while it is active; its
``alert_id`` is derived deterministically from those and its start time, so a replay of the same
events produces the same ids and the same ``alert.v1`` records. Every state change returns one
:class:`monitor.records.events.Alert` record (the shell sends it to the ``alerts`` topic, keyed by
``alert_id``, and to Alertmanager); a repeated fire with nothing new returns ``None``.

Consumers of the active set (Prometheus gauges: one series per *active* hot spot, removed on
resolve) either read :meth:`AlertLifecycle.active` or register ``on_change`` callbacks.

>>> lc = AlertLifecycle()
>>> a = lc.fire("SatmonHotSpotActive", {"cell_id": "c1", "region": "north"}, ts_ms=60_000,
...             severity="warning", summary="Cell c1 is a hot spot", description="drops 5x")
>>> a.status, a.sequence, a.runbook_url
('firing', 0, 'https://github.com/satmon/satmon/blob/main/docs/runbook/SatmonHotSpotActive.md')
>>> lc.fire("SatmonHotSpotActive", {"cell_id": "c1", "region": "north"}, ts_ms=120_000,
...         severity="warning", summary="Cell c1 is a hot spot", description="drops 5x") is None
True
>>> r = lc.resolve("SatmonHotSpotActive", {"cell_id": "c1", "region": "north"}, ts_ms=300_000)
>>> r.status, r.sequence, r.ends_at_ms, r.alert_id == a.alert_id, lc.active()
('resolved', 1, 300000, True, [])
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from monitor.config import DEFAULT_RUNBOOK_BASE
from monitor.records.events import Alert

HOTSPOT_CELL = "SatmonHotSpotActive"
HOTSPOT_REGION = "SatmonRegionDegraded"
DATA_DRIFT = "SatmonDataDrift"
MODEL_DRIFT = "SatmonModelDrift"

# alertname -> alert.v1 ``kind``; every alert satmon's detectors raise is here.
ALERT_KINDS: dict[str, str] = {
    HOTSPOT_CELL: "hotspot_cell",
    HOTSPOT_REGION: "hotspot_region",
    DATA_DRIFT: "data_drift",
    MODEL_DRIFT: "concept_drift",
}
_ID_PREFIX = {"hotspot_cell": "hs", "hotspot_region": "rg", "data_drift": "dd", "concept_drift": "md"}

# Runbooks live in the repository (docs/runbook/<alertname>.md). The alerts the workers push and the
# ones Prometheus evaluates (deploy/prometheus/rules) link to the same rendered copy, so Alertmanager
# merges them with identical annotations; a fork changes this and the rules together
# (tests/test_rules.py checks that they agree and that every page exists).
# The base is a setting (``runbook_base``, SATMON_RUNBOOK_BASE); DEFAULT_RUNBOOK_BASE is its default.
SEVERITIES = ("info", "warning", "critical")


def alert_key(alertname: str, labels: Mapping[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Identity of an alert while it is active: its name and sorted identifying labels."""
    return alertname, tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def alert_id(alertname: str, labels: Mapping[str, str], starts_at_ms: int) -> str:
    """Deterministic id: the same alert starting at the same time gets the same id on every run.

    >>> alert_id("SatmonHotSpotActive", {"cell_id": "c1"}, 0) == alert_id("SatmonHotSpotActive", {"cell_id": "c1"}, 0)
    True
    """
    name, items = alert_key(alertname, labels)
    text = name + "|" + ";".join(f"{k}={v}" for k, v in items) + f"|{starts_at_ms}"
    prefix = _ID_PREFIX.get(ALERT_KINDS.get(alertname, ""), "al")
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def runbook_url(alertname: str, base: str = DEFAULT_RUNBOOK_BASE) -> str:
    return f"{base.rstrip('/')}/{alertname}.md"


class AlertLifecycle:
    """Active alerts and their state changes.

    Parameters
    ----------
    runbook_base
        Prefix of every ``runbook_url`` (``<base>/<alertname>.md``).
    on_change
        Callables receiving every emitted :class:`Alert` (fire, update, resolve), e.g. the metrics
        shell keeping one gauge series per active alert. Not pickled.

    ``fire`` on an active alert is an *update* when severity, summary, description or details
    changed (``sequence`` + 1), else a duplicate (returns ``None``). ``resolve`` on an inactive alert
    returns ``None``. Times are event times (ms); ``updated_at_ms`` never goes backwards.
    """

    def __init__(self, *, runbook_base: str = DEFAULT_RUNBOOK_BASE,
                 on_change: Iterable[Callable[[Alert], Any]] = ()) -> None:
        self.runbook_base = runbook_base
        self.on_change: list[Callable[[Alert], Any]] = list(on_change)
        self._active: dict[tuple, Alert] = {}
        self.fired = self.updated = self.resolved = self.duplicates = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["on_change"] = []
        state["_active"] = {k: msgspec.json.encode(v) for k, v in self._active.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_active"] = {k: msgspec.json.decode(v, type=Alert) for k, v in state["_active"].items()}
        self.__dict__.update(state)

    def fire(self, alertname: str, labels: Mapping[str, str], *, ts_ms: int, severity: str,
             summary: str, description: str, details: Mapping[str, Any] | None = None,
             starts_at_ms: int | None = None) -> Alert | None:
        """Fire (or update) the alert ``alertname`` with ``labels`` as of event time ``ts_ms`` (its
        ``updated_at_ms``). ``starts_at_ms``: when the condition began, if earlier (a hot spot's
        evidence starts windows before it fires); it names the alert (its id) and never moves."""
        if alertname not in ALERT_KINDS:
            raise ValueError(f"unknown alertname {alertname!r}; known: {', '.join(ALERT_KINDS)}")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        key = alert_key(alertname, labels)
        det = dict(details) if details is not None else None
        cur = self._active.get(key)
        if cur is None:
            start = ts_ms if starts_at_ms is None else min(starts_at_ms, ts_ms)
            alert = Alert(
                alert_id=alert_id(alertname, labels, start), alertname=alertname,
                kind=ALERT_KINDS[alertname], status="firing", severity=severity,  # type: ignore[arg-type]
                labels={str(k): str(v) for k, v in labels.items()}, summary=summary,
                description=description, runbook_url=runbook_url(alertname, self.runbook_base),
                starts_at_ms=start, updated_at_ms=ts_ms, sequence=0, ends_at_ms=None, details=det)
            self.fired += 1
        elif (cur.severity, cur.summary, cur.description, cur.details) == (severity, summary, description, det):
            self.duplicates += 1
            return None
        else:
            alert = msgspec.structs.replace(
                cur, severity=severity, summary=summary, description=description, details=det,
                updated_at_ms=max(cur.updated_at_ms, ts_ms), sequence=cur.sequence + 1)
            self.updated += 1
        self._active[key] = alert
        self._emit(alert)
        return alert

    def resolve(self, alertname: str, labels: Mapping[str, str], *, ts_ms: int,
                description: str | None = None, details: Mapping[str, Any] | None = None) -> Alert | None:
        """Resolve the active alert (``ends_at_ms = ts_ms``); ``None`` if it is not active."""
        cur = self._active.pop(alert_key(alertname, labels), None)
        if cur is None:
            return None
        ts = max(cur.updated_at_ms, ts_ms)
        alert = msgspec.structs.replace(
            cur, status="resolved", updated_at_ms=ts, ends_at_ms=ts, sequence=cur.sequence + 1,
            description=description if description is not None else cur.description,
            details=dict(details) if details is not None else cur.details)
        self.resolved += 1
        self._emit(alert)
        return alert

    def get(self, alertname: str, labels: Mapping[str, str]) -> Alert | None:
        """The active alert with this name and labels, if any."""
        return self._active.get(alert_key(alertname, labels))

    def is_active(self, alertname: str, labels: Mapping[str, str]) -> bool:
        return alert_key(alertname, labels) in self._active

    def active(self, alertname: str | None = None) -> list[Alert]:
        """Active (firing) alerts, optionally of one name, oldest first."""
        alerts = [a for a in self._active.values() if alertname is None or a.alertname == alertname]
        return sorted(alerts, key=lambda a: (a.starts_at_ms, a.alert_id))

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Adopt the latest state of alerts (e.g. read back from the ``alerts`` topic after a
        restart): firing ones become active again, resolved ones are forgotten. No records."""
        for a in alerts:
            key = alert_key(a.alertname, a.labels)
            if a.status == "firing":
                cur = self._active.get(key)
                if cur is None or (cur.alert_id == a.alert_id and a.sequence >= cur.sequence) \
                        or a.starts_at_ms > cur.starts_at_ms:
                    self._active[key] = a
            else:
                cur = self._active.get(key)
                if cur is not None and cur.alert_id == a.alert_id:
                    del self._active[key]

    def _emit(self, alert: Alert) -> None:
        for cb in self.on_change:
            cb(alert)
