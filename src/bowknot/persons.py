"""Reading persons: look one up by any identifier, its profile, its identifiers, its timeline.

A reference is a person id (``p_...``; ids that were merged away redirect to the survivor),
``TYPE:VALUE`` (``email:mina@example.com``), or a bare value, tried as a user id, e-mail,
anonymous id and then any other identifier type.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import identity
from .errors import NotFound, ValidationError

_JSON_COLUMNS = ("properties", "traits", "context", "last_touch", "value")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for k in ("properties", "traits", "context", "value"):
        if isinstance(row.get(k), str):
            row[k] = json.loads(row[k])
    return row


class Persons:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def _q(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.ws.store.query(sql, params)
        return rows

    # -- lookup ----------------------------------------------------------------------------
    def find(self, id_type: str, value: str) -> str | None:
        """The person holding identifier (type, value), normalised as ingestion does."""
        id_type = id_type.strip().lower()
        value = value.strip()
        if id_type == "email":
            value = value.lower()
        rows = self._q("SELECT person_id FROM identities WHERE id_type = ? AND id_value = ?",
                       [id_type, value])
        return rows[0]["person_id"] if rows else None

    def resolve(self, ref: str) -> str:
        """A person id from a reference (see the module doc); NotFound if nobody matches."""
        ref = ref.strip()
        if not ref:
            raise ValidationError("Give a person id or an identifier (e.g. email:a@b.c).")
        if ref.startswith("p_"):
            if self._q("SELECT 1 FROM persons WHERE person_id = ?", [ref]):
                return ref
            moved = self._q("SELECT person_id FROM person_redirects WHERE old_person_id = ?",
                            [ref])
            if moved:
                return str(moved[0]["person_id"])
        if ":" in ref:
            id_type, _, value = ref.partition(":")
            found = self.find(id_type, value)
            if found:
                return found
        rows = self._q("""SELECT person_id FROM identities WHERE id_value IN (?, ?)
            ORDER BY CASE id_type WHEN 'user_id' THEN 0 WHEN 'email' THEN 1
                     WHEN 'anonymous_id' THEN 2 ELSE 3 END, id_type LIMIT 1""",
                       [ref, ref.lower()])
        if rows:
            return str(rows[0]["person_id"])
        raise NotFound(
            f"No person matches {ref!r}. Use a person id (p_...), TYPE:VALUE such as "
            "email:mina@example.com, or a user id; events ingested since the last build are "
            "found after the next `bowknot build`.", ref=ref)

    # -- reads -----------------------------------------------------------------------------
    def get(self, ref: str) -> dict[str, Any]:
        """Profile, identifiers, traits with their strategies, and identity changes."""
        pid = self.resolve(ref)
        profile = self._q("SELECT * FROM profiles WHERE person_id = ?", [pid])
        if not profile:
            raise NotFound(f"Person {pid} has no profile yet; run `bowknot build`.", ref=ref)
        person = profile[0]
        traits = self._q("""SELECT trait, value, strategy FROM person_traits
                            WHERE person_id = ? ORDER BY trait""", [pid])
        person["traits"] = {r["trait"]: json.loads(r["value"]) for r in traits
                            if r["value"] is not None}
        # linked_at: the earliest link between the identifier and the rest of its person.
        person["identifiers"] = self._q(f"""
            WITH mine AS (SELECT node, id_type, id_value, status, first_seen
                          FROM identities WHERE person_id = ?),
            links AS (
              SELECT x AS node, min(first) AS o FROM (
                SELECT a AS x, b AS y, first FROM id_edges
                WHERE a IN (SELECT node FROM mine) AND b IN (SELECT node FROM mine)
                UNION ALL SELECT b, a, first FROM id_edges
                WHERE a IN (SELECT node FROM mine) AND b IN (SELECT node FROM mine))
              GROUP BY x)
            SELECT id_type, id_value, status, first_seen,
                   {identity.ts_of('links.o')} AS linked_at
            FROM mine LEFT JOIN links USING (node)
            ORDER BY first_seen, id_type, id_value""", [pid])
        person["trait_strategies"] = {r["trait"]: r["strategy"] for r in traits}
        person["changes"] = self.changes(pid)
        person["previous_ids"] = [r["old_person_id"] for r in self._q(
            "SELECT old_person_id FROM person_redirects WHERE person_id = ? ORDER BY redirected_at",
            [pid])]
        return person

    def changes(self, pid: str) -> list[dict[str, Any]]:
        """Merges and splits this person took part in, newest first, with their cause."""
        return self._q("""
            SELECT log_id, logged_at, kind, person_id, other_person_id, cause_message_id,
                   cause_source, cause_id_type, cause_id_value, undone_at
            FROM identity_log WHERE person_id = ? OR other_person_id = ?
            ORDER BY log_id DESC""", [pid, pid])

    def timeline_sql(self) -> str:
        """Events whose primary identifier belongs to the person (parameter: person id)."""
        return f"""
            WITH ids AS (SELECT node, id_type, id_value FROM identities WHERE person_id = $pid),
            cand AS (
              SELECT * FROM events
              WHERE user_id IN (SELECT id_value FROM ids WHERE id_type = 'user_id')
                 OR anonymous_id IN (SELECT id_value FROM ids WHERE id_type = 'anonymous_id')
                 OR key IN (SELECT key FROM event_fallback SEMI JOIN ids USING (node)))
            SELECT * EXCLUDE (ids) FROM ({identity.with_ids(self.ws.settings, "cand")})
            WHERE len(ids) > 0 AND hash(ids[1].t, ids[1].v) IN (SELECT node FROM ids)"""

    def timeline(self, ref: str, limit: int | None = None, offset: int = 0,
                 newest_first: bool = False) -> list[dict[str, Any]]:
        """Every event of every identifier of the person, in time order."""
        pid = self.resolve(ref)
        order = "DESC" if newest_first else ""
        paging = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        cur = self.ws.store.cursor().execute(f"""
            SELECT message_id, source, type, event, name, timestamp, received_at,
                   user_id, anonymous_id, properties, traits, context
            FROM ({self.timeline_sql()}) ORDER BY timestamp {order}, key {order}{paging}""",
                                            {"pid": pid})
        names = [d[0] for d in cur.description or []]
        return [_decode(dict(zip(names, r, strict=True))) for r in cur.fetchall()]

    # -- identity changes --------------------------------------------------------------------
    def unmerge(self, log_id: int, build: bool = True) -> dict[str, Any]:
        """Undo merge ``log_id``: both persons come back, with their identifiers and events."""
        return self._change(identity.unmerge, log_id, build)

    def remerge(self, log_id: int, build: bool = True) -> dict[str, Any]:
        """Take an unmerge back."""
        return self._change(identity.remerge, log_id, build)

    def _change(self, change: Callable[[Any, int], dict[str, Any]], log_id: int,
                build: bool) -> dict[str, Any]:
        """Apply an identity change in its own transaction, then build (one at a time)."""
        with self.ws.builder.lock:
            with self.ws.builder.transaction() as con:
                out = change(con, log_id)
            if build:
                out["build"] = self.ws.build().to_dict()
        return out
