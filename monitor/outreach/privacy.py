"""Privacy and access control: pseudonymisation at ingest, API tokens and roles, the audit log.

* **Pseudonyms.** :class:`Pseudonymiser` replaces a subscriber id by ``HMAC-SHA256(key, id)``
  truncated to 80 bits and written as ``p`` + 16 base32 characters (``pq3vx0...``): stable for a
  given key, readable on a phone call, and not reversible without the key. The key comes from
  ``SATMON_PSEUDONYM_KEY`` or ``settings.pseudonym_key_file`` (never from the repo); the demo makes a
  random one with :func:`ensure_key_file`. The ingest path calls :func:`pseudonymiser_for` once and
  the returned function on every input event's ``subscriber_id`` (identity when
  ``settings.pseudonymise`` is false).
* **Tokens.** :class:`TokenStore` holds API tokens as SHA-256 digests only and compares them in
  constant time; each token has a name (who, in the audit log) and a role (:class:`Role`).
* **Audit.** :class:`AuditLog` appends one JSON line per customer-data read or write, opened with
  ``O_APPEND`` and fsync'd before the data leaves the server; it is never rewritten.

>>> p = Pseudonymiser(b"0123456789abcdef-not-a-real-key")
>>> p("s000042") == p("s000042"), len(p("s000042")), p("s000042")[0]
(True, 17, 'p')
>>> store = TokenStore.from_json('{"ana": {"token": "tok-ana-0123456789", "role": "outreach"}}')
>>> store.authenticate("tok-ana-0123456789")
Principal(name='ana', role=<Role.OUTREACH: 'outreach'>)
>>> store.authenticate("wrong") is None
True
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import orjson

from monitor.records.errors import ConfigError

log = logging.getLogger(__name__)

KEY_ENV = "SATMON_PSEUDONYM_KEY"
TOKENS_ENV = "SATMON_API_TOKENS"
# A shorter secret would be guessable offline from a handful of known (id, pseudonym) pairs.
MIN_KEY_BYTES = 16
MIN_TOKEN_CHARS = 16
# 80 bits: collision-free in practice for 10^8 subscribers (birthday bound ~ 10^8^2 / 2^81 < 1e-8).
PSEUDONYM_BYTES = 10


# --------------------------------------------------------------------------- pseudonyms


class Pseudonymiser:
    """Keyed, stable pseudonyms for subscriber ids (HMAC-SHA256, 80 bits, base32).

    Parameters
    ----------
    key
        The secret key (at least 16 bytes).
    """

    __slots__ = ("_mac",)

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError([f"pseudonym key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}"])
        # Keyed once; copy() per id skips re-hashing the key (about 2x faster on the ingest path).
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, subscriber_id: str) -> str:
        mac = self._mac.copy()
        mac.update(subscriber_id.encode())
        return "p" + base64.b32encode(mac.digest()[:PSEUDONYM_BYTES]).decode().lower()

    def event(self, event: Any) -> Any:
        """A copy of an input event (any record with ``subscriber_id``) carrying the pseudonym."""
        return msgspec.structs.replace(event, subscriber_id=self(event.subscriber_id))

    def __reduce__(self):  # the key must not travel inside pickles (checkpoints, multiprocessing)
        raise TypeError("Pseudonymiser holds a secret key and cannot be pickled")


class NoPseudonyms:
    """What :func:`pseudonymiser_for` returns when pseudonymisation is off: ids pass unchanged."""

    def __call__(self, subscriber_id: str) -> str:
        return subscriber_id

    def event(self, event: Any) -> Any:
        return event


def load_key(settings: Any, env: Mapping[str, str] | None = None) -> bytes | None:
    """The pseudonymisation key: ``SATMON_PSEUDONYM_KEY`` wins over ``settings.pseudonym_key_file``;
    ``None`` when neither is set. Raises ConfigError for an unreadable file or a short key."""
    env = os.environ if env is None else env
    text = env.get(KEY_ENV, "").strip()
    if text:
        key = text.encode()
    elif getattr(settings, "pseudonym_key_file", None):
        path = Path(settings.pseudonym_key_file)
        try:
            key = path.read_bytes().strip()
        except OSError as err:
            raise ConfigError([f"pseudonym_key_file: cannot read {path}: {err.strerror}"]) from None
        if path.stat().st_mode & 0o077:
            log.warning("pseudonym key file %s is readable by group/others; chmod 600 it", path)
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError([f"pseudonym key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}"])
    return key


def pseudonymiser_for(settings: Any, env: Mapping[str, str] | None = None) -> Pseudonymiser | NoPseudonyms:
    """The function the ingest path applies to every input event's ``subscriber_id``.

    Call it on an id, or ``.event(ev)`` on a whole input event. Identity when
    ``settings.pseudonymise`` is false; otherwise a :class:`Pseudonymiser` with the
    configured key. Raises ConfigError when pseudonymisation is on and no key is configured (the
    demo calls :func:`ensure_key_file` first).
    """
    if not settings.pseudonymise:
        return NoPseudonyms()
    key = load_key(settings, env)
    if key is None:
        raise ConfigError([f"pseudonymise is on but no key: set {KEY_ENV} or --pseudonym-key-file"])
    return Pseudonymiser(key)


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (fails if it exists: never overwrite a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def ensure_key_file(path: str | os.PathLike[str]) -> Path:
    """For the demo: create a random 256-bit key file (mode 0600) unless one exists; return its path."""
    path = Path(path)
    if not path.exists():
        _write_private(path, secrets.token_hex(32).encode() + b"\n")
    return path


# --------------------------------------------------------------------------- tokens and roles


class Role(str, enum.Enum):
    """What a token may read. ``noc`` sees aggregates only (counts, hot spots without rows);
    ``outreach`` also sees subscriber rows and records contacts; ``admin`` also reads the audit log."""

    NOC = "noc"
    OUTREACH = "outreach"
    ADMIN = "admin"


class Principal(NamedTuple):
    """An authenticated caller: the token's name (used in the audit log) and its role."""

    name: str
    role: Role


class TokenStore:
    """API tokens, kept as SHA-256 digests; lookup compares against every digest in constant time.

    Accepted JSON (``SATMON_API_TOKENS`` or the tokens file), either form::

        {"ana": {"token": "...", "role": "outreach"}, "noc-wall": {"token": "...", "role": "noc"}}
        [{"name": "ana", "token": "...", "role": "outreach"}]
    """

    def __init__(self, entries: list[tuple[str, str, Role]]):
        problems = []
        self._entries: list[tuple[bytes, Principal]] = []
        seen: set[str] = set()
        for name, token, role in entries:
            if name in seen:
                problems.append(f"API token name {name!r} appears twice")
            seen.add(name)
            if len(token) < MIN_TOKEN_CHARS:
                problems.append(f"API token {name!r} is shorter than {MIN_TOKEN_CHARS} characters")
            self._entries.append((hashlib.sha256(token.encode()).digest(), Principal(name, role)))
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_json(cls, text: str | bytes) -> "TokenStore":
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as err:
            raise ConfigError([f"API tokens: not valid JSON: {err}"]) from None
        if isinstance(data, dict):
            data = [{"name": name, **(spec if isinstance(spec, dict) else {"token": spec})} for name, spec in data.items()]
        if not isinstance(data, list):
            raise ConfigError(["API tokens: expected a JSON object or list"])
        entries, problems = [], []
        roles = ", ".join(r.value for r in Role)
        for i, item in enumerate(data):
            if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("name", "token", "role")):
                problems.append(f"API tokens[{i}]: expected name, token and role as strings")
                continue
            try:
                entries.append((item["name"], item["token"], Role(item["role"])))
            except ValueError:
                problems.append(f"API token {item['name']!r}: role must be one of {roles}, got {item['role']!r}")
        if problems:
            raise ConfigError(problems)
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal for ``token``, or ``None``. Every stored digest is compared, matched or not."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def load_tokens(settings: Any, env: Mapping[str, str] | None = None) -> TokenStore:
    """Tokens from ``SATMON_API_TOKENS`` (JSON) or ``settings.tokens_file``. An empty store is
    allowed (every API request is then refused with 401) and logged as a warning."""
    env = os.environ if env is None else env
    text = env.get(TOKENS_ENV, "").strip()
    if not text and getattr(settings, "tokens_file", None):
        try:
            text = Path(settings.tokens_file).read_text()
        except OSError as err:
            raise ConfigError([f"tokens_file: cannot read {settings.tokens_file}: {err.strerror}"]) from None
    store = TokenStore.from_json(text) if text else TokenStore([])
    if not len(store):
        log.warning("no API tokens configured (%s or --tokens-file): the API refuses every request", TOKENS_ENV)
    return store


def ensure_demo_tokens(path: str | os.PathLike[str]) -> dict[str, str]:
    """For the demo: a tokens file with one random token per role (mode 0600) unless it exists.
    Returns ``{name: token}`` so the demo can print how to log in."""
    path = Path(path)
    if not path.exists():
        tokens = {role.value: {"token": secrets.token_urlsafe(24), "role": role.value} for role in Role}
        _write_private(path, orjson.dumps(tokens, option=orjson.OPT_INDENT_2))
    return {name: spec["token"] for name, spec in orjson.loads(path.read_bytes()).items()}


# --------------------------------------------------------------------------- audit log


class AuditLog:
    """Append-only JSON-lines audit log: who read or wrote what, when, with which filter, how many rows.

    The file is opened with ``O_APPEND`` (concurrent writers never overwrite each other) and every
    entry is fsync'd before :meth:`write` returns, so no customer data is served without a durable
    record of it. Nothing here truncates, rotates or rewrites the file.

    Parameters
    ----------
    path
        The log file; its directory is created with mode 0700.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = asyncio.Lock()

    def write_sync(self, entry: Mapping[str, Any]) -> None:
        line = orjson.dumps({"ts_ms": int(time.time() * 1000), **entry}) + b"\n"
        # One write() of one line: O_APPEND makes it atomic with respect to other appenders.
        os.write(self._fd, line)
        os.fsync(self._fd)

    async def write(self, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` (plus ``ts_ms``) and fsync, off the event loop; entries keep their order."""
        async with self._lock:
            await asyncio.to_thread(self.write_sync, entry)

    def read(self, *, since_ms: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` entries at or after ``since_ms``, oldest first."""
        out: list[dict[str, Any]] = []
        with open(self.path, "rb") as fh:
            for line in fh:
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn last line after a crash: skip, never repair in place
                if entry.get("ts_ms", 0) >= since_ms:
                    out.append(entry)
        return out[-limit:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
