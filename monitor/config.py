"""One frozen, validated settings object, built from ``SATMON_*`` environment variables and CLI flags.

Every setting is declared once in :data:`OPTIONS` with its env var, type, default and help; the CLI
builds its flags from the same table. :func:`load` collects *every* problem and raises one
:class:`~monitor.records.errors.ConfigError` listing them all, so an operator fixes a bad deployment in one go.

>>> s = load({"SATMON_PARTITIONS": "8"})
>>> s.partitions, s.broker
(8, None)
>>> try:
...     load({"SATMON_PARTITIONS": "zero", "SATMON_BROKER": "http://x"})
... except ConfigError as err:
...     print(len(err.problems))
2
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monitor.records.errors import ConfigError


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _parse_broker(text: str) -> str | None:
    """``kafka://host:port[,host:port]`` -> ``kafka://...``; empty or ``embedded`` -> ``None``."""
    text = text.strip()
    if text in {"", "embedded"}:
        return None
    if not text.startswith("kafka://"):
        raise ValueError(f"expected kafka://host:port[,host:port] or 'embedded', got {text!r}")
    for hostport in text[len("kafka://"):].split(","):
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port in broker URL, got {hostport!r}")
    return text


def _parse_url(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s):// URL, got {text!r}")
    return text.rstrip("/")


def _number(text: str, kind: type, expected: str) -> Any:
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError(f"expected {expected}, got {text!r}") from None


#: docs/runbook/ of this repository, rendered: the base of every alert's runbook_url, for the alerts
#: the workers push and for deploy/prometheus/rules (tests/test_rules.py keeps them equal)
DEFAULT_RUNBOOK_BASE = "https://github.com/satmon/satmon/blob/main/docs/runbook"


def _runbook_base(text: str) -> str:
    # a URL (the rendered repository, a wiki) or a path (file:// or relative, for air-gapped sites)
    if not text:
        return DEFAULT_RUNBOOK_BASE
    base = text.strip().rstrip("/")
    if not base or any(c.isspace() for c in base):
        raise ValueError(f"expected a URL or path prefix without spaces, got {text!r}")
    return base


def _positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer")
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _number(text, int, "a TCP port 0-65535")
    if not 0 <= value < 65536:
        raise ValueError(f"expected a TCP port 0-65535, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if not 0 < value < math.inf:  # also refuses nan and inf: an interval of inf never fires
        raise ValueError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, float, "a number >= 0")
    if not 0 <= value < math.inf:
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return value


def _probability(text: str) -> float:
    value = _number(text, float, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a number in [0, 1], got {text!r}")
    return value


def _directory(text: str) -> Path:
    if not text.strip():
        raise ValueError("expected a directory path, got an empty string")
    return Path(text)


def _host(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a host name or address, got an empty string")
    return text.strip()


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text

    return parse


def _optional_str(text: str) -> str | None:
    return text or None


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its attribute name, env var, parser, default (as text) and help."""

    name: str
    parse: Callable[[str], Any]
    default: str
    help: str

    @property
    def env(self) -> str:
        return "SATMON_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("broker", _parse_broker, "", "Kafka bootstrap as kafka://host:port[,host:port]; empty = start the embedded Tansu broker"),
    Option("data_dir", _directory, "var", "Directory for worker state (RocksDB), checkpoints, audit log and demo files"),
    Option("partitions", _positive_int, "4", "Partitions of each input topic (and of the tables keyed like them)"),
    Option("store", _choice("rocksdb://", "memory://"), "rocksdb://", "Faust table store for workers"),
    Option("web_host", _host, "127.0.0.1", "Address the worker's HTTP server (metrics, API) binds to"),
    Option("web_port", _port, "6066", "Port of the worker's HTTP server (metrics, API); 0 picks a free port"),
    Option("worker_id", _optional_str, "", "Name of this worker in logs, metrics and dead letters (default: host-pid)"),
    Option("log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "Log level"),
    Option("alertmanager_url", _parse_url, "", "Alertmanager base URL (http://host:9093); empty = do not push alerts"),
    Option("runbook_base", _runbook_base, "",
           "Prefix of every alert's runbook_url (<base>/<alertname>.md); empty = this repository's docs/runbook "
           "on GitHub, which the rules in deploy/prometheus link to"),
    Option("cell_inventory", _optional_str, "",
           "JSON cell inventory [{cell_id, lat, lon}] (what `satmon simulate --out` writes as cells.json): places active hot spots on the geo map"),
    Option("at_risk_threshold", _probability, "0.2", "Calibrated probability of any outcome at or above which a record is flagged at_risk (the "
           "worklist is a ranked budget: see list_capacity)"),
    Option("list_capacity", _positive_int, "50", "Daily capacity of each team (care: complaints, retention: churn) "
           "in each region: the worklist holds that many subscribers, ranked by the team's outcome probability"),
    Option("label_horizon_hours", _positive_float, "24", "A label arriving late is joined to a feature snapshot at most this much older"),
    Option("state_ttl_days", _positive_float, "30", "Forget a subscriber's state after this long without events"),
    Option("state_cache_per_partition", _positive_int, "250000", "Subscribers per partition kept in memory; the rest stay in the state table"),
    Option("standby_replicas", _non_negative_int, "0", "Standby copies of each partition's state on other workers (faster failover, costs CPU)"),
    Option("model_checkpoint", _optional_str, "", "Warm-start model file (from `satmon model warm-start`) new partitions start from"),
    Option("checkpoint_interval_s", _positive_float, "30", "How often the risk model is checkpointed"),
    Option("malloc_trim_s", _non_negative_float, "30", "How often a worker hands freed heap memory back to the "
           "OS (glibc malloc_trim, with at most 2 malloc arenas); 0 leaves the allocator alone"),
    Option("max_poll_records", _positive_int, "2000", "Input records a worker takes from the broker per batch: "
           "bounds one batch's memory and latency (a worker catching up takes full batches)"),
    Option("gc_full_s", _non_negative_float, "600", "How often a worker runs a full cyclic garbage collection: its "
           "collector's thresholds are raised for speed, so a reference cycle that outlived a young collection "
           "would otherwise wait for hours; 0 never"),
    Option("pseudonymise", _parse_bool, "true", "Replace subscriber ids by a keyed hash at ingest"),
    Option("pseudonym_key_file", _optional_str, "", "File holding the secret key for pseudonymisation (else SATMON_PSEUDONYM_KEY)"),
    Option("tokens_file", _optional_str, "", "JSON file of API tokens and roles (else SATMON_API_TOKENS)"),
    Option("holdout_share", _probability, "0.1", "Share of at-risk subscribers withheld from outreach lists as a control group"),
    Option("contact_fatigue_days", _positive_float, "14", "Suppress a contacted subscriber from lists for this long"),
    Option("rate_per_s", _positive_float, "5", "API requests per second allowed per token (sustained)"),
    Option("rate_burst", _positive_int, "60", "API request burst allowed per token"),
    Option("effect_horizon_days", _positive_float, "30", "Window after contact in which outreach outcomes are counted"),
    Option("max_clock_skew_s", _positive_float, "300", "Events dated more than this ahead of the worker's clock are "
           "dead-lettered (reason clock_skew); watermarks never pass wall clock + this"),
    Option("dead_letter_keep_original", _parse_bool, "false", "Keep rejected records' bytes exactly as received in "
           "satmon-dead-letter (subscriber ids included); default: ids replaced by pseudonyms"),
    Option("api_max_concurrency", _non_negative_int, "1", "API requests computed at once, all tokens together "
           "(threads off the stream's event loop); 0 computes on the event loop (only to measure the difference)"),
    Option("api_max_queue", _positive_int, "256", "API requests waiting for that budget before further ones get 503"),
)

_BY_NAME = {opt.name: opt for opt in OPTIONS}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """satmon's settings. Build with :func:`load`; every field is documented in :data:`OPTIONS`."""

    broker: str | None
    data_dir: Path
    partitions: int
    store: str
    web_host: str
    web_port: int
    worker_id: str | None
    log_level: str
    alertmanager_url: str | None
    runbook_base: str
    cell_inventory: str | None
    at_risk_threshold: float
    list_capacity: int
    label_horizon_hours: float
    model_checkpoint: str | None
    standby_replicas: int
    state_cache_per_partition: int
    state_ttl_days: float
    checkpoint_interval_s: float
    malloc_trim_s: float
    max_poll_records: int
    gc_full_s: float
    pseudonymise: bool
    pseudonym_key_file: str | None
    tokens_file: str | None
    holdout_share: float
    contact_fatigue_days: float
    rate_per_s: float
    rate_burst: int
    effect_horizon_days: float
    max_clock_skew_s: float
    dead_letter_keep_original: bool
    api_max_concurrency: int
    api_max_queue: int

    @property
    def embedded_broker(self) -> bool:
        """True when satmon must start its own local broker."""
        return self.broker is None

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` list for Kafka clients (only meaningful with an external broker)."""
        if self.broker is None:
            raise ConfigError(["no external broker configured: start the embedded broker first"])
        return self.broker[len("kafka://"):].split(",")

    def with_broker(self, url: str) -> "Settings":
        """The same settings pointing at ``url`` (used once the embedded broker is up)."""
        return dataclasses.replace(self, broker=_parse_broker(url))

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def load(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``env`` (default ``os.environ``) with ``overrides`` (CLI flags, as text or
    already typed; ``None`` means "not given"). Raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    problems: list[str] = []
    unknown = sorted(k for k in overrides if k not in _BY_NAME)
    if unknown:
        problems.append(f"unknown settings: {', '.join(unknown)}")
    for opt in OPTIONS:
        given = overrides.get(opt.name)
        if given is not None and not isinstance(given, str):
            # already typed (from code, not a command line): check it as its text, keep the value
            try:
                opt.parse(str(given))
            except ValueError as err:
                problems.append(f"{opt.name}: {err}")
            values[opt.name] = given
            continue
        source = opt.flag if given is not None else opt.env
        text = given if given is not None else env.get(opt.env, opt.default)
        try:
            values[opt.name] = opt.parse(text)
        except ValueError as err:
            problems.append(f"{source}: {err}")
    known_env = {opt.env for opt in OPTIONS} | _EXTRA_ENV
    stray = sorted(k for k in env if k.startswith("SATMON_") and k not in known_env)
    if stray:
        problems.append(f"unknown environment variables (typo?): {', '.join(stray)}")
    if problems:
        raise ConfigError(problems)
    return Settings(**values)


# Env vars read directly by the modules that own them (secrets are never CLI flags).
_EXTRA_ENV = {"SATMON_PSEUDONYM_KEY", "SATMON_API_TOKENS", "SATMON_TANSU_BIN", "SATMON_TOKEN"}


def add_flags(parser: Any, names: tuple[str, ...] | None = None) -> None:
    """Add ``--flag`` arguments for the given settings (all when ``names`` is None) to an
    argparse parser; their values go to :func:`load` via :func:`from_args`."""
    for opt in OPTIONS:
        if names is None or opt.name in names:
            parser.add_argument(opt.flag, dest=f"setting_{opt.name}", default=None, metavar=opt.name.upper(),
                                help=f"{opt.help} [env {opt.env}, default {opt.default!r}]")


def from_args(args: Any, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from parsed argparse ``args`` (flags added by :func:`add_flags`) and the environment."""
    overrides = {k[len("setting_"):]: v for k, v in vars(args).items() if k.startswith("setting_")}
    return load(env, **overrides)
