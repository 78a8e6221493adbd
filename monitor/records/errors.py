"""The exception tree. Every error satmon raises on purpose derives from :class:`MonitorError`."""

from __future__ import annotations


class MonitorError(Exception):
    """Base class for satmon's own errors."""


class ConfigError(MonitorError):
    """Settings are invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid settings:\n  - " + "\n  - ".join(self.problems))


class InvalidEventError(MonitorError):
    """An input record failed decoding or validation.

    ``reason`` is human-readable (field, what was expected, what was found); ``field`` is the
    JSON path of the offending field when there is one (``$.rsrp_dbm``), else ``None``;
    ``kind`` is a bounded reason class (``monitor.records.events.REASON_KINDS``), usable as a metric label.
    """

    def __init__(self, reason: str, field: str | None = None, kind: str | None = None):
        self.reason = reason
        self.field = field
        self.kind = kind
        super().__init__(reason)


class BrokerError(MonitorError):
    """The Kafka-compatible broker could not be started, reached, or lost its data underneath us."""
