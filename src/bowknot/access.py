"""Who may do what: sources with write keys (ingestion) and admin tokens (everything else).

Keys and tokens are random 192-bit secrets shown once and stored only as SHA-256 hashes
(a slow password hash buys nothing for secrets this long). Both can be revoked; revoking a
token also ends the page sessions opened with it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import BowknotError, NotFound
from .store import Store
from .store.engine import run

WRITE_KEY_PREFIX = "bkw_"
TOKEN_PREFIX = "bkt_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CACHE_SECONDS = 5.0  # bounds how long a key revoked by another process keeps working


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise BowknotError(
            f"Invalid {kind} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit.",
            code="invalid_name",
        )
    return name


class Access:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._key_cache: dict[str, tuple[float, str | None]] = {}

    # -- sources and write keys ----------------------------------------------------------
    def create_source(self, name: str, description: str | None = None) -> str:
        """Create the source if needed and return a new write key for it (shown once)."""
        check_name("source", name)
        key = WRITE_KEY_PREFIX + secrets.token_urlsafe(24)
        cur = self._store.cursor()
        run(cur, "BEGIN")
        run(cur, "INSERT OR IGNORE INTO sources VALUES (?, ?, ?)", [name, _now(), description])
        run(
            cur,
            "INSERT INTO write_keys VALUES (?, ?, ?, ?, NULL)",
            [_hash(key), name, key[:10], _now()],
        )
        run(cur, "COMMIT")
        return key

    def sources(self) -> list[dict[str, Any]]:
        return self._store.query("""
            SELECT s.name, s.description, s.created_at,
                   count(k.key_hash) FILTER (WHERE k.revoked_at IS NULL) AS active_keys,
                   list(k.prefix || '…') FILTER (WHERE k.revoked_at IS NULL) AS key_prefixes
            FROM sources s LEFT JOIN write_keys k ON k.source = s.name
            GROUP BY ALL ORDER BY s.name""")

    def revoke_write_keys(self, source: str, prefix: str | None = None) -> int:
        """Revoke a source's keys (all, or the one starting with ``prefix``)."""
        rows = self._store.query(
            "UPDATE write_keys SET revoked_at = ? WHERE source = ? AND revoked_at IS NULL "
            "AND (? IS NULL OR starts_with(prefix, ?) OR starts_with(?, prefix)) "
            "RETURNING key_hash",
            [_now(), source, prefix, prefix, prefix],
        )
        if not rows:
            raise NotFound(
                f"No active write key for source {source!r}"
                + (f" starting with {prefix!r}" if prefix else "")
                + "; `bowknot sources list` shows them."
            )
        with self._lock:
            self._key_cache.clear()
        return len(rows)

    def source_for_key(self, key: str) -> str | None:
        """The source a write key belongs to, or None if unknown or revoked."""
        now = time.monotonic()
        with self._lock:
            hit = self._key_cache.get(key)
        if hit and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        rows = self._store.query(
            "SELECT source FROM write_keys WHERE key_hash = ? AND revoked_at IS NULL",
            [_hash(key)],
        )
        source = rows[0]["source"] if rows else None
        with self._lock:
            if len(self._key_cache) > 10_000:
                self._key_cache.clear()
            self._key_cache[key] = (now, source)
        return source

    # -- admin tokens and page sessions --------------------------------------------------
    def create_token(self, name: str) -> str:
        check_name("token", name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        run(
            self._store.cursor(),
            "INSERT INTO tokens VALUES (?, ?, ?, ?, NULL)",
            [_hash(token), name, token[:10], _now()],
        )
        return token

    def tokens(self) -> list[dict[str, Any]]:
        return self._store.query(
            "SELECT name, prefix || '…' AS prefix, created_at, revoked_at FROM tokens "
            "ORDER BY created_at"
        )

    def revoke_token(self, name_or_prefix: str) -> int:
        cur = self._store.cursor()
        rows = run(
            cur,
            "UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL AND "
            "(name = ? OR starts_with(?, prefix)) RETURNING token_hash",
            [_now(), name_or_prefix, name_or_prefix],
        )
        if not rows:
            raise NotFound(
                f"No active token named or starting with {name_or_prefix!r}; "
                "`bowknot tokens list` shows them."
            )
        run(
            cur,
            "DELETE FROM sessions WHERE token_hash IN (SELECT unnest(?))",
            [[r[0] for r in rows]],
        )
        return len(rows)

    def verify_token(self, token: str) -> bool:
        return bool(
            self._store.query(
                "SELECT 1 FROM tokens WHERE token_hash = ? AND revoked_at IS NULL", [_hash(token)]
            )
        )

    def open_session(self, token: str, hours: int) -> str | None:
        """Exchange a valid admin token for a page session id (the cookie's value)."""
        if not self.verify_token(token):
            return None
        session = secrets.token_urlsafe(32)
        run(
            self._store.cursor(),
            "INSERT INTO sessions VALUES (?, ?, ?, ?)",
            [_hash(session), _hash(token), _now(), _now() + timedelta(hours=hours)],
        )
        return session

    def verify_session(self, session: str) -> bool:
        return bool(
            self._store.query(
                "SELECT 1 FROM sessions s JOIN tokens t USING (token_hash) "
                "WHERE s.session_hash = ? AND s.expires_at > ? AND t.revoked_at IS NULL",
                [_hash(session), _now()],
            )
        )

    def close_session(self, session: str) -> None:
        run(self._store.cursor(), "DELETE FROM sessions WHERE session_hash = ?", [_hash(session)])
