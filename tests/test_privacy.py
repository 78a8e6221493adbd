"""Pseudonymisation, tokens and roles, the append-only audit log."""

from __future__ import annotations

import asyncio
import os
import pickle
import re
import stat

import pytest

from monitor.config import load
from monitor.records.errors import ConfigError
from monitor.records.events import decode
from monitor.outreach.privacy import (AuditLog, Principal, Pseudonymiser, Role, TokenStore, ensure_demo_tokens, ensure_key_file,
                             load_key, load_tokens, pseudonymiser_for)

KEY = b"k" * 32


def test_pseudonym_is_stable_readable_and_keyed():
    p = Pseudonymiser(KEY)
    a = p("s000001")
    assert a == p("s000001") == Pseudonymiser(KEY)("s000001")
    assert re.fullmatch(r"p[a-z2-7]{16}", a)
    assert a != p("s000002")
    assert a != Pseudonymiser(b"j" * 32)("s000001")
    assert len({p(f"s{i}") for i in range(20_000)}) == 20_000


def test_pseudonymise_event_replaces_only_the_id():
    ev = decode("ticket_event.v1", b'{"event_id":"e1","ticket_id":"t1","subscriber_id":"s42","ts_ms":1700000000000,'
                                   b'"channel":"chat","category":"network","action":"opened"}')
    p = Pseudonymiser(KEY)
    out = p.event(ev)
    assert out.subscriber_id == p("s42") and out.ticket_id == "t1" and ev.subscriber_id == "s42"


def test_pseudonymiser_refuses_short_keys_and_pickling():
    with pytest.raises(ConfigError):
        Pseudonymiser(b"short")
    with pytest.raises(TypeError):
        pickle.dumps(Pseudonymiser(KEY))


def test_key_from_env_wins_over_file(tmp_path):
    f = tmp_path / "key"
    f.write_bytes(b"file-key-0123456789abcdef\n")
    settings = load({}, pseudonym_key_file=str(f))
    assert load_key(settings, {}) == b"file-key-0123456789abcdef"
    assert load_key(settings, {"SATMON_PSEUDONYM_KEY": "env-key-0123456789abcdef"}) == b"env-key-0123456789abcdef"
    assert load_key(load({}), {}) is None
    with pytest.raises(ConfigError, match="at least 16"):
        load_key(load({}), {"SATMON_PSEUDONYM_KEY": "tiny"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_key(load({}, pseudonym_key_file=str(tmp_path / "missing")), {})


def test_pseudonymiser_for_settings():
    off = pseudonymiser_for(load({}, pseudonymise="false"), {})
    assert off("s1") == "s1" and off.event("unchanged") == "unchanged"
    with pytest.raises(ConfigError, match="no key"):
        pseudonymiser_for(load({}), {})
    on = pseudonymiser_for(load({}), {"SATMON_PSEUDONYM_KEY": KEY.decode()})
    assert on("s1") == Pseudonymiser(KEY)("s1")


def test_demo_key_file_is_private_random_and_never_overwritten(tmp_path):
    path = ensure_key_file(tmp_path / "secrets" / "pseudonym.key")
    first = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first.strip()) == 64
    assert ensure_key_file(path).read_bytes() == first
    assert ensure_key_file(tmp_path / "other.key").read_bytes() != first


def test_tokens_both_json_forms_and_constant_time_lookup():
    a = TokenStore.from_json('{"ana": {"token": "tok-ana-0123456789", "role": "outreach"},'
                             ' "wall": {"token": "tok-noc-0123456789", "role": "noc"}}')
    b = TokenStore.from_json('[{"name": "ana", "token": "tok-ana-0123456789", "role": "outreach"}]')
    assert a.authenticate("tok-noc-0123456789") == Principal("wall", Role.NOC)
    assert b.authenticate("tok-ana-0123456789") == Principal("ana", Role.OUTREACH)
    assert a.authenticate("tok-ana-012345678") is None and a.authenticate("") is None
    # Only digests are held.
    assert "tok-ana-0123456789" not in repr(vars(a))


@pytest.mark.parametrize("text, message", [
    ("not json", "not valid JSON"),
    ('{"x": {"token": "short", "role": "noc"}}', "shorter than 16"),
    ('{"x": {"token": "0123456789abcdefgh", "role": "root"}}', "role must be one of"),
    ('[{"name": "x"}]', "expected name, token and role"),
    ('[{"name":"x","token":"0123456789abcdefgh","role":"noc"},{"name":"x","token":"0123456789abcdefgX","role":"noc"}]',
     "appears twice"),
])
def test_bad_token_config_is_reported(text, message):
    with pytest.raises(ConfigError, match=message):
        TokenStore.from_json(text)


def test_load_tokens_from_env_or_file(tmp_path):
    f = tmp_path / "tokens.json"
    f.write_text('{"f": {"token": "file-token-0123456789", "role": "admin"}}')
    settings = load({}, tokens_file=str(f))
    assert load_tokens(settings, {}).authenticate("file-token-0123456789").role is Role.ADMIN
    env = {"SATMON_API_TOKENS": '{"e": {"token": "env-token-0123456789", "role": "noc"}}'}
    store = load_tokens(settings, env)
    assert store.authenticate("env-token-0123456789").name == "e" and store.authenticate("file-token-0123456789") is None
    assert len(load_tokens(load({}), {})) == 0


def test_demo_tokens_one_per_role(tmp_path):
    tokens = ensure_demo_tokens(tmp_path / "tokens.json")
    assert set(tokens) == {"noc", "outreach", "admin"}
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    assert ensure_demo_tokens(tmp_path / "tokens.json") == tokens
    store = load_tokens(load({}, tokens_file=str(tmp_path / "tokens.json")), {})
    assert store.authenticate(tokens["admin"]).role is Role.ADMIN


def test_audit_log_appends_and_never_rewrites(tmp_path):
    path = tmp_path / "audit" / "audit.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"ts_ms": 1, "who": "earlier"}\n')
    audit = AuditLog(path)

    async def writes():
        await asyncio.gather(*(audit.write({"who": "ana", "n": i}) for i in range(20)))

    asyncio.run(writes())
    audit.close()
    lines = path.read_bytes().splitlines()
    assert lines[0] == b'{"ts_ms": 1, "who": "earlier"}'
    entries = AuditLog(path).read(limit=1000)
    assert [e["n"] for e in entries[1:]] == list(range(20))  # in order, none lost
    assert all(e["ts_ms"] > 1 for e in entries[1:])
    assert len(AuditLog(path).read(limit=5)) == 5
    assert [e["who"] for e in AuditLog(path).read(since_ms=2)] == ["ana"] * 20


def test_audit_log_fd_is_append_only(tmp_path):
    import fcntl

    audit = AuditLog(tmp_path / "a.jsonl")
    flags = fcntl.fcntl(audit._fd, fcntl.F_GETFL)
    assert flags & os.O_APPEND and flags & os.O_ACCMODE == os.O_WRONLY
    assert stat.S_IMODE((tmp_path / "a.jsonl").stat().st_mode) == 0o600
    audit.close()
