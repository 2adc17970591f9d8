"""Workspaces made by an older bowknot open, migrated, and keep working."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import bowknot
from bowknot.errors import BowknotError
from bowknot.store.schema import SCHEMA_VERSION


def test_a_version_1_workspace_loses_stored_fingerprints_and_still_deduplicates(
        tmp_path: Path) -> None:
    db = tmp_path / "old.duckdb"
    event = {"type": "track", "event": "A", "userId": "u", "messageId": "m1",
             "properties": {"plan": "gold"}, "timestamp": "2026-07-01T00:00:00Z"}
    with bowknot.connect(db) as ws:
        assert ws.ingest([event]).accepted == 1
    # Make it look like version 1: the column every event carried then.
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE events ADD COLUMN fingerprint UBIGINT DEFAULT 0")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    with bowknot.connect(db) as ws:
        columns = [r["column_name"] for r in ws.store.query(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'events'")]
        assert "fingerprint" not in columns
        assert ws.store.query("SELECT value FROM meta WHERE key = 'schema_version'") == [
            {"value": str(SCHEMA_VERSION)}]
        # The same event again is a duplicate, another payload under its id a conflict:
        # both decided against the stored event, whose fingerprint is computed now.
        again = ws.ingest([{**event, "sentAt": "2026-07-01T00:00:05Z"}])
        assert (again.accepted, again.duplicates, again.conflicts) == (0, 1, 0)
        other = ws.ingest([{**event, "properties": {"plan": "silver"}}])
        assert (other.accepted, other.conflicts) == (0, 1)
        assert ws.ingest([{**event, "messageId": "m2"}]).accepted == 1


def test_a_workspace_from_a_newer_bowknot_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.duckdb"
    with bowknot.connect(db):
        pass
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(BowknotError, match="newer bowknot"):
        bowknot.connect(db)


def test_a_version_2_workspace_gets_the_trigger_log_watermark(tmp_path: Path) -> None:
    db = tmp_path / "v2.duckdb"
    with bowknot.connect(db) as ws:
        ws.surveys.create("nps", kind="nps")
        ws.surveys.add_trigger("nps", "closed", event="Ticket Closed", channel="link")
    con = duckdb.connect(str(db))  # as version 2 made it: no evaluated_log
    con.execute("ALTER TABLE survey_triggers DROP COLUMN evaluated_log")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    with bowknot.connect(db) as ws:
        assert ws.surveys.triggers.get("closed")["evaluated_log"] is None
        ws.track("Ticket Closed", user_id="t1")
        ws.build()
        ws.track("Ticket Closed", user_id="t2")
        ws.build()  # an incremental evaluation from a trigger that has no log watermark
        closed = ws.surveys.triggers.get("closed")
        assert closed["invited"] == 2 and closed["evaluated_log"] is not None
