"""monitor.config: every option from its env var and its flag; every problem reported at once."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from monitor import config
from monitor.config import OPTIONS, ConfigError, Settings, add_flags, from_args, load

# A valid non-default text for every option, and the value it must parse to.
GOOD = {
    "broker": ("kafka://k1:9092,k2:9093", "kafka://k1:9092,k2:9093"),
    "data_dir": ("/srv/satmon", Path("/srv/satmon")),
    "partitions": ("12", 12),
    "store": ("memory://", "memory://"),
    "runbook_base": ("https://wiki.example/noc/runbooks/", "https://wiki.example/noc/runbooks"),
    "cell_inventory": ("/etc/satmon/cells.json", "/etc/satmon/cells.json"),
    "web_host": ("0.0.0.0", "0.0.0.0"),
    "web_port": ("0", 0),
    "worker_id": ("w-7", "w-7"),
    "log_level": ("DEBUG", "DEBUG"),
    "alertmanager_url": ("http://am:9093/", "http://am:9093"),
    "at_risk_threshold": ("0.8", 0.8),
    "list_capacity": ("200", 200),
    "label_horizon_hours": ("24", 24.0),
    "model_checkpoint": ("/srv/satmon/model.ckpt", "/srv/satmon/model.ckpt"),
    "state_cache_per_partition": ("1000", 1000),
    "standby_replicas": ("1", 1),
    "state_ttl_days": ("0.5", 0.5),
    "checkpoint_interval_s": ("5", 5.0),
    "malloc_trim_s": ("0", 0.0),
    "max_poll_records": ("500", 500),
    "gc_full_s": ("60", 60.0),
    "pseudonymise": ("off", False),
    "pseudonym_key_file": ("/run/secrets/key", "/run/secrets/key"),
    "tokens_file": ("/run/secrets/tokens.json", "/run/secrets/tokens.json"),
    "holdout_share": ("0.2", 0.2),
    "contact_fatigue_days": ("7", 7.0),
    "rate_per_s": ("10", 10.0),
    "rate_burst": ("30", 30),
    "effect_horizon_days": ("14", 14.0),
    "max_clock_skew_s": ("60", 60.0),
    "dead_letter_keep_original": ("true", True),
    "api_max_concurrency": ("4", 4),
    "api_max_queue": ("64", 64),
}
# An invalid text for every option that can be invalid.
BAD = {
    "broker": "localhost:9092",
    "data_dir": "",
    "partitions": "0",
    "store": "redis://",
    "web_host": " ",
    "web_port": "65536",
    "log_level": "LOUD",
    "alertmanager_url": "am:9093",
    "at_risk_threshold": "1.5",
    "list_capacity": "0",
    "label_horizon_hours": "-1",
    "state_cache_per_partition": "0",
    "standby_replicas": "-1",
    "state_ttl_days": "inf",
    "checkpoint_interval_s": "nan",
    "malloc_trim_s": "-1",
    "max_poll_records": "0",
    "gc_full_s": "never",
    "pseudonymise": "maybe",
    "holdout_share": "1.2",
    "contact_fatigue_days": "0",
    "rate_per_s": "-5",
    "rate_burst": "0",
    "effect_horizon_days": "x",
    "runbook_base": "  ",
    "max_clock_skew_s": "0",
    "api_max_concurrency": "-1",
}


def test_the_tables_above_cover_every_option():
    names = {opt.name for opt in OPTIONS}
    assert set(GOOD) == names
    assert set(BAD) <= names
    assert names == {f.name for f in dataclasses.fields(Settings)}


def test_defaults():
    s = load({})
    assert s.broker is None and s.embedded_broker
    assert (s.partitions, s.store, s.web_port, s.log_level) == (4, "rocksdb://", 6066, "INFO")
    assert s.data_dir == Path("var") and s.pseudonymise is True and s.alertmanager_url is None


@pytest.mark.parametrize("name", sorted(GOOD))
def test_option_parses_from_env(name):
    text, expected = GOOD[name]
    opt = next(o for o in OPTIONS if o.name == name)
    assert opt.env == "SATMON_" + name.upper()
    assert getattr(load({opt.env: text}), name) == expected


@pytest.mark.parametrize("name", sorted(GOOD))
def test_option_parses_from_its_flag_and_the_flag_wins_over_env(name):
    text, expected = GOOD[name]
    opt = next(o for o in OPTIONS if o.name == name)
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args([opt.flag, text])
    env = {opt.env: BAD.get(name, "ignored-because-the-flag-wins")}
    assert getattr(from_args(args, env), name) == expected


def test_flags_are_only_those_asked_for():
    parser = argparse.ArgumentParser()
    add_flags(parser, ("partitions", "broker"))
    assert parser.parse_args(["--partitions", "3"]).setting_partitions == "3"
    with pytest.raises(SystemExit):
        parser.parse_args(["--web-port", "1"])


def test_every_bad_value_is_listed_at_once():
    env = {opt.env: BAD[opt.name] for opt in OPTIONS if opt.name in BAD}
    with pytest.raises(ConfigError) as info:
        load(env)
    problems = info.value.problems
    assert len(problems) == len(BAD)
    for name, text in BAD.items():
        env_var = "SATMON_" + name.upper()
        [line] = [p for p in problems if p.startswith(env_var + ":")]
        assert "expected" in line, line
        assert repr(text) in line or "empty" in line, line
    # and the message shows all of them
    assert str(info.value).count("\n  - ") == len(BAD)


def test_bad_flag_is_reported_under_the_flag_name():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    with pytest.raises(ConfigError) as info:
        from_args(parser.parse_args(["--partitions", "many", "--web-port", "-1"]), {})
    assert sorted(p.split(":")[0] for p in info.value.problems) == ["--partitions", "--web-port"]
    assert "expected a positive integer, got 'many'" in info.value.problems[0] + info.value.problems[1]


def test_unknown_satmon_env_var_is_reported_with_the_other_problems():
    with pytest.raises(ConfigError) as info:
        load({"SATMON_PARTITONS": "8", "SATMON_WEB_PORT": "x", "OTHER_VAR": "fine", "SATMON_API_TOKENS": "{}"})
    problems = info.value.problems
    assert len(problems) == 2
    assert any("SATMON_PARTITONS" in p and "unknown" in p for p in problems)
    assert not any("OTHER_VAR" in p or "SATMON_API_TOKENS" in p for p in problems)


def test_secret_env_vars_owned_by_other_modules_are_known():
    load({"SATMON_PSEUDONYM_KEY": "k", "SATMON_API_TOKENS": "{}", "SATMON_TANSU_BIN": "/bin/tansu"})


def test_unknown_override_is_reported():
    with pytest.raises(ConfigError, match="unknown settings: partition"):
        load({}, partition="3")


@pytest.mark.parametrize(("name", "value"), [("partitions", 0), ("web_port", 70000), ("at_risk_threshold", 2.0),
                                             ("checkpoint_interval_s", float("inf"))])
def test_typed_overrides_are_checked_too(name, value):
    with pytest.raises(ConfigError, match=name):
        load({}, **{name: value})


def test_typed_overrides_are_kept():
    s = load({}, partitions=2, data_dir=Path("/x"), pseudonymise=False, at_risk_threshold=0.25)
    assert (s.partitions, s.data_dir, s.pseudonymise, s.at_risk_threshold) == (2, Path("/x"), False, 0.25)


@pytest.mark.parametrize(("text", "ok"), [
    ("", True), ("embedded", True), ("kafka://h:1", True), ("kafka://h:65535,[::1]:9092", True),
    ("kafka://h", False), ("kafka://:9092", False), ("kafka://h:0", False), ("kafka://h:99999", False),
    ("http://h:9092", False), ("kafka://h:9092,", False),
])
def test_broker_urls(text, ok):
    if ok:
        load({"SATMON_BROKER": text})
    else:
        with pytest.raises(ConfigError, match="SATMON_BROKER"):
            load({"SATMON_BROKER": text})


@pytest.mark.parametrize(("text", "value"), [("1", True), ("YES", True), (" on ", True), ("true", True),
                                             ("0", False), ("No", False), ("off", False), ("false", False)])
def test_booleans(text, value):
    assert load({"SATMON_PSEUDONYMISE": text}).pseudonymise is value


def test_settings_are_frozen_and_derive_broker_facts():
    s = load({"SATMON_BROKER": "kafka://a:1,b:2"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.partitions = 9  # type: ignore[misc]
    assert s.bootstrap_servers == ["a:1", "b:2"] and not s.embedded_broker
    embedded = load({})
    with pytest.raises(ConfigError):
        embedded.bootstrap_servers
    moved = embedded.with_broker("kafka://127.0.0.1:39092")
    assert moved.bootstrap_servers == ["127.0.0.1:39092"] and embedded.broker is None
    assert embedded.replace(partitions=8).partitions == 8


def test_help_mentions_env_var_and_default():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    text = " ".join(parser.format_help().split())  # undo argparse's wrapping
    for opt in OPTIONS:
        assert opt.flag in text
        assert f"[env {opt.env}, default {opt.default!r}]" in text


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SATMON_PARTITIONS", "6")
    assert config.load().partitions == 6
