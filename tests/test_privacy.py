"""Privacy: delete (with a dry run and an audit record), suppress, unsuppress, export."""

from __future__ import annotations

import pytest

import bowknot
from bowknot.errors import NotFound, ValidationError

MINA = {
    "user": "user-mina-7f3", "web": "anon-mina-web-51", "app": "anon-mina-app-52",
    "email": "Mina.Rahimi@Example.com ", "name": "Mina Rahimi-Tehrani",
    "phone": "+98 912 555 0101", "city": "Tehran-Karaj",
}
# What must not survive a delete, anywhere (normalised forms included).
TRACES = ["user-mina-7f3", "anon-mina-web-51", "anon-mina-app-52", "mina.rahimi@example.com",
          "Mina Rahimi-Tehrani", "+989125550101", "+98 912 555 0101", "Tehran-Karaj"]


def load_people(ws: bowknot.Workspace) -> None:
    ws.page("Home", anonymous_id=MINA["web"], timestamp="2026-01-01T00:00:00Z")
    ws.identify(MINA["user"], anonymous_id=MINA["web"], traits={
        "email": MINA["email"], "name": MINA["name"], "phone": MINA["phone"],
        "city": MINA["city"]}, timestamp="2026-01-02T00:00:00Z")
    ws.track("Booking Completed", user_id=MINA["user"], properties={"revenue": 80},
             timestamp="2026-01-03T00:00:00Z")
    ws.screen("Home", user_id=MINA["user"], anonymous_id=MINA["app"],
              timestamp="2026-01-04T00:00:00Z")
    # A support tool that only knew her e-mail, and a broken event that names her.
    ws.track("Ticket Opened", anonymous_id="support-tool-1", properties={
        "requester": {"email": "mina.rahimi@example.com"}}, timestamp="2026-01-05T00:00:00Z")
    with pytest.raises(ValidationError):
        ws.send("track", {"userId": MINA["user"], "properties": {"note": "no event name"}})
    ws.identify("bob", anonymous_id="anon-bob", traits={"email": "bob@example.com",
                                                       "name": "Bob"},
                timestamp="2026-01-02T00:00:00Z")
    ws.track("Booking Completed", user_id="bob", properties={"revenue": 50},
             timestamp="2026-01-03T00:00:00Z")
    ws.build()


def traces_left(ws: bowknot.Workspace) -> list[str]:
    """Every (table, value) where a trace of Mina is still stored, in any column."""
    found = []
    tables = [r["table_name"] for r in ws.sql(
        "SELECT table_name FROM duckdb_tables() WHERE NOT temporary")]
    for table in tables:
        cols = [r["column_name"] for r in ws.sql(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
            "AND NOT internal", [table])]
        text = " || '|' || ".join(f"coalesce({c}::VARCHAR, '')" for c in cols)
        for value in TRACES:
            n = ws.sql(f"SELECT count(*) AS n FROM {table} WHERE "
                       f"contains(lower({text}), lower(?))", [value])[0]["n"]
            if n:
                found.append(f"{table}: {value} ({n})")
    return found


def test_delete_removes_every_trace_and_keeps_everyone_else(ws: bowknot.Workspace) -> None:
    load_people(ws)
    assert ws.persons.resolve(MINA["app"]) == ws.persons.resolve("email:mina.rahimi@example.com")
    assert traces_left(ws)  # the check can fail: she is everywhere before the delete
    events_before = ws.sql("SELECT count(*) AS n FROM events")[0]["n"]

    plan = ws.privacy.delete("email:Mina.Rahimi@example.com", dry_run=True)
    assert plan["dry_run"] and plan["counts"]["events"] == 5
    assert plan["counts"]["failed_events"] == 1 and plan["counts"]["persons"] == 1
    assert ws.sql("SELECT count(*) AS n FROM events")[0]["n"] == events_before

    done = ws.privacy.delete("email:Mina.Rahimi@example.com")
    assert done["counts"]["events"] == 5 and done["operation_id"].startswith("del_")
    assert traces_left(ws) == []
    ws.build()
    assert traces_left(ws) == []
    with pytest.raises(NotFound):
        ws.persons.resolve(MINA["user"])
    bob = ws.persons.get("bob@example.com")
    assert bob["bookings"] == 1 and bob["traits"]["name"] == "Bob"
    assert ws.sql("SELECT count(*) AS n FROM events")[0]["n"] == events_before - 5
    audit = ws.privacy.operations()
    assert [(a["kind"], a["dry_run"]) for a in audit] == [("delete", False), ("delete", True)]
    assert {a["operation_id"] for a in audit} == {plan["operation_id"], done["operation_id"]}


def test_suppress_drops_and_counts_new_events_until_unsuppressed(
        ws: bowknot.Workspace) -> None:
    load_people(ws)
    ws.privacy.suppress(MINA["user"])
    stored = ws.sql("SELECT count(*) AS n FROM events")[0]["n"]
    ws.track("Page Seen", user_id=MINA["user"])
    ws.page("Deals", anonymous_id=MINA["app"])  # a linked device is suppressed too
    ws.identify("new-login", traits={"email": " MINA.RAHIMI@example.com"})
    ws.track("Page Seen", user_id="bob")
    assert ws.sql("SELECT count(*) AS n FROM events")[0]["n"] == stored + 1
    assert ws.sql("SELECT sum(events) AS n FROM suppressed_counts")[0]["n"] == 3
    # Only hashes are kept.
    assert not any(MINA["user"] in str(r) for r in ws.sql("SELECT * FROM suppressions"))
    out = ws.privacy.unsuppress(MINA["user"])
    assert out["suppressions_removed"] > 0
    ws.track("Page Seen", user_id=MINA["user"])
    assert ws.sql("SELECT count(*) AS n FROM events")[0]["n"] == stored + 2


def test_export_returns_everything_held(ws: bowknot.Workspace) -> None:
    load_people(ws)
    data = ws.privacy.export(MINA["web"])
    assert data["profile"]["traits"]["name"] == MINA["name"]
    assert {i["id_value"] for i in data["identifiers"]} >= {
        MINA["user"], MINA["web"], MINA["app"], "mina.rahimi@example.com", "+989125550101"}
    assert len(data["events"]) == 4  # the support tool's event belongs to its own person
    assert len(data["failed_events"]) == 1
    assert ws.privacy.operations()[0]["kind"] == "export"


def test_unknown_references_are_refused_unless_typed(ws: bowknot.Workspace) -> None:
    load_people(ws)
    with pytest.raises(NotFound, match="TYPE:VALUE"):
        ws.privacy.delete("Booking Completed")
    with pytest.raises(ValidationError):
        ws.privacy.delete("   ")
    # A typed identifier nobody holds yet (events arrived after the last build) is acted on.
    ws.track("Late", user_id="late-user-81", properties={})
    plan = ws.privacy.delete("user_id:late-user-81", dry_run=True)
    assert plan["person_id"] is None and plan["counts"]["events"] == 1


def test_delete_reaches_survey_invitations_cases_and_cohorts(ws: bowknot.Workspace) -> None:
    load_people(ws)
    ws.journeys.cohort("identify", "Never Happens", within="1d", save_as="identified")
    ws.surveys.create("nps", kind="nps")
    inv = ws.surveys.invite("nps", MINA["user"], channel="webhook")
    ws.surveys.answer(inv["token"], 2, why="Tehran-Karaj office was closed")
    assert ws.cases.list()  # a detractor: a follow-up case holds her words
    exported = ws.privacy.export(MINA["user"])
    assert len(exported["survey_invitations"]) == 1 and len(exported["cases"]) == 1
    bob = ws.surveys.invite("nps", "bob")
    counts = ws.privacy.delete(MINA["user"])["counts"]
    assert counts["survey_invitations"] == 1 and counts["cases"] == 1
    assert traces_left(ws) == []
    assert ws.sql("SELECT invitation_id FROM survey_invitations") == [
        {"invitation_id": bob["invitation_id"]}]
    members = ws.sql("SELECT person_id FROM cohort_members")
    assert members == [{"person_id": ws.persons.resolve("bob")}]  # Mina left, Bob stays
    # An analysis after the delete (no build between) does not find her either: the
    # journal's companions lost her rows too.
    again = ws.journeys.cohort("identify", "Never Happens", within="1d")
    assert [r["person_id"] for r in again.rows()] == [ws.persons.resolve("bob")]


def test_a_survey_send_to_an_unknown_cohort_says_so(ws: bowknot.Workspace) -> None:
    ws.surveys.create("nps", kind="nps")
    with pytest.raises(NotFound, match="cohort list"):
        ws.surveys.invite_cohort("nps", "never-saved")
