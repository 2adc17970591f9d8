"""Privacy requests: delete, suppress, unsuppress and export everything held on a person.

Every request resolves the reference through the identity graph to *all* the person's
identifiers (user ids, anonymous ids, e-mails, phones, external ids), so a request made
with one e-mail also covers the devices linked to it.

* ``delete`` removes the person's events (every event carrying one of the identifiers, in
  any field), failed events whose raw text holds one, and every derived row (graph,
  identities, profiles, traits, identity log, redirects). A dry run says what would go.
  Each request gets an audit record with an operation id; the record holds counts, never
  the identifiers. If other persons shared a cluster or an event with the deleted one, the
  next build is a full one, so nothing derived from the deleted events survives.
* ``suppress`` keeps new events of those identifiers out at ingestion: they are dropped and
  counted (``suppressed_counts``). Only SHA-256 hashes of the values are stored.
* ``export`` returns everything held on the person as JSON (profile, identifiers, traits,
  identity changes, events, failed events).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import duckdb

from . import identity
from .errors import NotFound
from .store.engine import run

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS privacy_operations (
        operation_id VARCHAR, kind VARCHAR, requested_at TIMESTAMP, dry_run BOOLEAN,
        identifiers INTEGER, counts JSON)""",
    """CREATE TABLE IF NOT EXISTS suppressions (
        value_hash VARCHAR, operation_id VARCHAR, created_at TIMESTAMP)""",
    "CREATE TABLE IF NOT EXISTS suppressed_counts (load_id BIGINT, events BIGINT)",
)

# Ingestion drops events whose userId, anonymousId or identify e-mail hashes to a suppressed
# value (run by the writer inside the load's transaction, only while suppressions exist).
SUPPRESS_SQL = """DELETE FROM events WHERE load_id = ? AND (
    sha256(user_id) IN (SELECT value_hash FROM suppressions)
    OR sha256(anonymous_id) IN (SELECT value_hash FROM suppressions)
    OR (traits IS NOT NULL AND contains(traits, '"email"')
        AND sha256(lower(trim(traits->>'email'))) IN (SELECT value_hash FROM suppressions)))
    RETURNING 1"""

# The survey invitations of a person: params (person id, identifier values).
INVITATIONS_OF = """person_id = ? OR list_has_any(?::VARCHAR[],
    [user_id, anonymous_id, email])"""

KINDS = ("delete", "suppress", "unsuppress", "export")


def _quoted_pattern(values: list[str]) -> str:
    """A regular expression for any of ``values`` as a JSON string (any letter case)."""
    return '(?i)"(' + "|".join(re.escape(json.dumps(v)[1:-1]) for v in values) + ')"'


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Privacy:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    # -- resolving ---------------------------------------------------------------------------
    def subject(self, ref: str) -> dict[str, Any]:
        """The person behind ``ref`` and all its identifiers; a bare identifier that belongs
        to nobody yet (not built, or only seen in failed events) is taken as it is."""
        try:
            pid: str | None = self.ws.persons.resolve(ref)
        except NotFound:
            pid = None
        if pid is None:
            # Not (yet) a person: only an explicit TYPE:VALUE is acted on, so that a typo
            # cannot touch data that merely contains the same text.
            id_type, sep, value = ref.partition(":")
            value = value.strip()
            if not sep or not value or ref.startswith("p_"):
                raise NotFound(
                    f"No person matches {ref!r}. To act on an identifier that is not part of "
                    "a person (not built yet, or only in failed events), name its type: "
                    "TYPE:VALUE such as email:mina@example.com.", ref=ref)
            return {"person_id": None, "identifiers": [{"id_type": id_type.strip().lower(),
                                                        "id_value": value}], "values": [value]}
        ids = self.ws.store.query(
            "SELECT id_type, id_value, node FROM identities WHERE person_id = ?", [pid])
        values = sorted({r["id_value"] for r in ids})
        # Raw spellings of identifying traits (an e-mail as typed, before normalisation).
        raw = self.ws.store.query(
            f"""SELECT DISTINCT t.v FROM trait_stats t
                WHERE t.node IN (SELECT node FROM identities WHERE person_id = ?)
                AND t.trait IN ('email', {", ".join(
                    "'" + x + "'" for x in identity.split_list(
                        self.ws.settings.identity_id_traits)) or "''"})""", [pid])
        for row in raw:
            for v in row.values():
                if isinstance(v, str) and v.startswith('"'):
                    values.append(json.loads(v))
        values = sorted({v for v in values if v})
        return {"person_id": pid, "identifiers": ids, "values": values,
                "nodes": [r["node"] for r in ids]}

    def _event_filter(self, values: list[str]) -> str:
        """Events holding one of ``values``: in an id column, as an identifier anywhere the
        graph reads one, or as a JSON string in properties, traits or context."""
        quoted = "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"
        lowered = "[" + ", ".join("'" + v.lower().replace("'", "''") + "'" for v in values) + "]"
        pattern = _quoted_pattern(values).replace("'", "''")
        return f"""(list_contains({quoted}, user_id) OR list_contains({quoted}, anonymous_id)
            OR list_contains({quoted}, previous_id)
            OR regexp_matches(coalesce(properties::VARCHAR, '') || coalesce(traits::VARCHAR, '')
                              || coalesce(context::VARCHAR, ''), '{pattern}')
            OR list_has_any(list_transform(ids, lambda x: lower(x.v)), {lowered}))"""

    # -- the requests --------------------------------------------------------------------------
    def delete(self, ref: str, dry_run: bool = False) -> dict[str, Any]:
        """Delete everything held on the person (``dry_run``: only count it)."""
        subject = self.subject(ref)
        values = subject["values"]
        op = "del_" + uuid.uuid4().hex[:16]
        with self.ws.builder.transaction(commit=not dry_run) as con:
            counts = self._delete(con, subject, values, dry_run)
            if not dry_run:  # the deletion and its audit record commit together
                self._audit(con, op, "delete", dry_run, len(values), counts)
        if not dry_run:  # the pages no longer know the person's invitations
            self.ws.surveys.forget()
        if dry_run:  # a dry run changes nothing but is audited too
            self._audit(self.ws.store.cursor(), op, "delete", dry_run, len(values), counts)
        return {"operation_id": op, "kind": "delete", "dry_run": dry_run,
                "person_id": subject["person_id"], "identifiers": len(values),
                "counts": counts}

    def _delete(self, con: duckdb.DuckDBPyConnection, subject: dict[str, Any],
                values: list[str], dry_run: bool) -> dict[str, int]:
        settings = self.ws.settings
        run(con, f"""CREATE OR REPLACE TEMP TABLE p_events AS
            SELECT key, ids FROM ({identity.with_ids(settings, "events")})
            WHERE {self._event_filter(values)}""")
        pid = subject["person_id"]
        nodes = subject.get("nodes") or []
        run(con, "CREATE OR REPLACE TEMP TABLE p_nodes AS SELECT unnest(?::UBIGINT[]) AS node",
            [nodes])
        # Did the deleted events or the person's cluster involve anybody else?
        others = run(con, """SELECT count(*) FROM (
            SELECT hash(ids[1].t, ids[1].v) AS node FROM p_events WHERE len(ids) > 0
            UNION SELECT node FROM identities WHERE cluster IN (
              SELECT cluster FROM identities SEMI JOIN p_nodes USING (node)))
            WHERE node NOT IN (SELECT node FROM p_nodes)""")[0][0]
        pattern = _quoted_pattern(values)
        # Survey invitations of the person (by person, or by an identifier they were sent to).
        run(con, f"""CREATE OR REPLACE TEMP TABLE p_inv AS SELECT invitation_id
            FROM survey_invitations WHERE {INVITATIONS_OF}""", [pid, values])
        invs = "invitation_id IN (SELECT invitation_id FROM p_inv)"
        steps: list[tuple[str, str, list[Any]]] = [
            ("events", "key IN (SELECT key FROM p_events)", []),
            ("failed_events", "regexp_matches(coalesce(raw, ''), ?)", [pattern]),
            ("id_nodes", "node IN (SELECT node FROM p_nodes)", []),
            ("id_edges", "a IN (SELECT node FROM p_nodes) OR b IN (SELECT node FROM p_nodes)",
             []),
            ("identities", "node IN (SELECT node FROM p_nodes)", []),
            ("identity_overrides", "node IN (SELECT node FROM p_nodes)", []),
            ("identity_dirty", "node IN (SELECT node FROM p_nodes)", []),
            ("event_fallback", "node IN (SELECT node FROM p_nodes)", []),
            ("node_stats", "node IN (SELECT node FROM p_nodes)", []),
            ("trait_stats", "node IN (SELECT node FROM p_nodes)", []),
            ("persons", "person_id = ?", [pid]),
            ("profile_features", "person_id = ?", [pid]),
            ("person_traits", "person_id = ?", [pid]),
            ("journey_events", """person_id = ?
                OR seq IN (SELECT CAST(key // 2 AS BIGINT) FROM p_events)""", [pid]),
            # The journal's companions (journal.py): before the person numbers go.
            ("journey_steps", """pkey IN (SELECT pkey FROM journey_persons WHERE person_id = ?)
                OR seq IN (SELECT CAST(key // 2 AS BIGINT) FROM p_events)""", [pid]),
            ("journey_persons", "person_id = ?", [pid]),
            ("person_redirects", "person_id = ? OR old_person_id = ?", [pid, pid]),
            ("identity_log", """person_id = ? OR other_person_id = ?
                OR list_has_any(nodes, (SELECT list(node) FROM p_nodes))
                OR cause_key IN (SELECT key FROM p_events)""", [pid, pid]),
            ("survey_flags", invs, []),
            ("webhook_deliveries", invs, []),
            ("cases", f"person_id = ? OR {invs}", [pid]),
            ("survey_invitations", invs, []),
            ("cohort_members", "person_id = ?", [pid]),
            ("survey_trigger_entries", "person_id = ?", [pid]),
            ("survey_trigger_outs", "person_id = ?", [pid]),
        ]
        counts: dict[str, int] = {}
        for table, where, params in steps:
            n = run(con, f"SELECT count(*) FROM {table} WHERE {where}", params)[0][0]
            counts[table] = int(n)
            if n and not dry_run:
                run(con, f"DELETE FROM {table} WHERE {where}", params)
        if others and not dry_run:
            run(con, "DELETE FROM meta WHERE key = 'node_hash'")  # next build: a full one
        counts["other_persons_affected"] = int(others)
        return counts

    def suppress(self, ref: str) -> dict[str, Any]:
        """Drop (and count) new events of the person's identifiers at ingestion."""
        subject = self.subject(ref)
        op = "sup_" + uuid.uuid4().hex[:16]
        hashes = sorted({sha(v) for v in subject["values"]} | {
            sha(v.lower().strip()) for v in subject["values"]})
        con = self.ws.store.cursor()
        run(con, """INSERT INTO suppressions SELECT h, ?, now()::TIMESTAMP
            FROM (SELECT unnest(?::VARCHAR[]) AS h) WHERE h NOT IN (
              SELECT value_hash FROM suppressions)""", [op, hashes])
        self._audit(con, op, "suppress", False, len(subject["values"]),
                    {"suppressed_values": len(hashes)})
        self.ws.writer.refresh_suppressions()
        return {"operation_id": op, "kind": "suppress", "person_id": subject["person_id"],
                "identifiers": len(subject["values"])}

    def unsuppress(self, ref: str) -> dict[str, Any]:
        subject = self.subject(ref)
        op = "uns_" + uuid.uuid4().hex[:16]
        hashes = sorted({sha(v) for v in subject["values"]} | {
            sha(v.lower().strip()) for v in subject["values"]})
        con = self.ws.store.cursor()
        n = run(con, """SELECT count(*) FROM suppressions
                        WHERE value_hash IN (SELECT unnest(?::VARCHAR[]))""", [hashes])[0][0]
        run(con, "DELETE FROM suppressions WHERE value_hash IN (SELECT unnest(?::VARCHAR[]))",
            [hashes])
        self._audit(con, op, "unsuppress", False, len(subject["values"]),
                    {"suppressions_removed": int(n)})
        self.ws.writer.refresh_suppressions()
        return {"operation_id": op, "kind": "unsuppress", "person_id": subject["person_id"],
                "suppressions_removed": int(n)}

    def export(self, ref: str) -> dict[str, Any]:
        """Everything held on the person, as JSON-ready data."""
        subject = self.subject(ref)
        op = "exp_" + uuid.uuid4().hex[:16]
        pid = subject["person_id"]
        out: dict[str, Any] = {"operation_id": op, "exported_at": datetime.now(UTC),
                               "person_id": pid, "identifiers": [], "profile": None,
                               "events": [], "failed_events": []}
        if pid is not None:
            person = self.ws.persons.get(pid)
            out["identifiers"] = person.pop("identifiers")
            out["identity_changes"] = person.pop("changes")
            out["profile"] = person
            out["events"] = self.ws.persons.timeline(pid)
        values = subject["values"]
        pattern = _quoted_pattern(values)
        out["failed_events"] = self.ws.store.query(
            """SELECT failure_id, source, received_at, reasons, raw FROM failed_events
               WHERE regexp_matches(coalesce(raw, ''), ?) ORDER BY failure_id""", [pattern])
        out["survey_invitations"] = self.ws.store.query(
            f"""SELECT invitation_id, survey_id, trigger, channel, language, created_at,
                   sent_at, answered_at, score, commented_at FROM survey_invitations
                WHERE {INVITATIONS_OF} ORDER BY created_at""", [pid, values])
        out["cases"] = self.ws.store.query(
            "SELECT * FROM cases WHERE person_id = ? ORDER BY opened_at", [pid])
        con = self.ws.store.cursor()
        self._audit(con, op, "export", False, len(values),
                    {"events": len(out["events"]), "failed_events": len(out["failed_events"]),
                     "survey_invitations": len(out["survey_invitations"]),
                     "cases": len(out["cases"])})
        return out

    def operations(self, limit: int = 100) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.ws.store.query(
            "SELECT * FROM privacy_operations ORDER BY requested_at DESC LIMIT ?", [limit])
        return rows

    @staticmethod
    def _audit(con: duckdb.DuckDBPyConnection, op: str, kind: str, dry_run: bool,
               identifiers: int, counts: dict[str, Any]) -> None:
        run(con, "INSERT INTO privacy_operations VALUES (?, ?, now()::TIMESTAMP, ?, ?, ?)",
            [op, kind, dry_run, identifiers, json.dumps(counts)])
