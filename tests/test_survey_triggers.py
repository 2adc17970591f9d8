"""Survey triggers: rules over the journey evaluated by the pipeline as events arrive, inviting
exactly once under the contact rules (issue 6)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import bowknot
from bowknot.errors import NotFound, ValidationError

from .conftest import Server, make_keys


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def clicker(i: int, clicked: str, booked: str | None = None,
            campaign: str = "free-day") -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"type": "identify", "userId": f"c{i}", "messageId": f"id-{i}",
         "traits": {"email": f"c{i}@example.com"}, "timestamp": ago(30 * 86400)},
        {"type": "track", "userId": f"c{i}", "event": "Campaign Clicked",
         "messageId": f"click-{i}-{campaign}", "properties": {"campaign_id": campaign},
         "timestamp": clicked}]
    if booked:
        events.append({"type": "track", "userId": f"c{i}", "event": "Booking Completed",
                       "messageId": f"book-{i}", "timestamp": booked})
    return events


def invitations(ws: bowknot.Workspace, trigger: str) -> list[dict[str, Any]]:
    return ws.sql("""SELECT i.person_id, i.channel, i.user_id FROM survey_invitations i
                     WHERE trigger = ? ORDER BY user_id""", [trigger])


def current(ws: bowknot.Workspace, trigger: str) -> list[str]:
    """The persons a trigger invited, as of now (merged ones by their new id)."""
    return [r["p"] for r in ws.sql("""SELECT coalesce(r.person_id, i.person_id) AS p
        FROM survey_invitations i LEFT JOIN person_redirects r ON r.old_person_id = i.person_id
        WHERE trigger = ?""", [trigger])]


def test_trigger_invites_once_when_the_window_closes(tmp_path: Path) -> None:
    with bowknot.connect(tmp_path / "w.duckdb", survey_quiet_hours="",
                         survey_trigger_seconds=0) as ws:
        ws.surveys.create("nps-free-day", kind="nps", holdout=0.25)
        ws.surveys.create("nps-other", kind="nps")
        trigger = ws.surveys.add_trigger(
            "nps-free-day", "clicked-not-booked", did="Campaign Clicked[campaign_id=free-day]",
            did_not="Booking Completed", within="4s", channel="email")
        assert trigger["describe"] == ("Campaign Clicked[campaign_id=free-day] and not "
                                       "Booking Completed within 4s")
        ws.identify("c39", traits={"email": "c39@example.com"})
        ws.build()
        ws.surveys.invite("nps-other", "c39")  # asked by another survey: contact rule
        events: list[dict[str, Any]] = []
        for i in range(40):  # clicked a minute ago and did not book: the window is closed
            events += clicker(i, ago(60))
        events += clicker(40, ago(60), booked=ago(58))  # booked 2 s after the click
        events += clicker(41, ago(60), campaign="summer")  # another campaign
        events += clicker(42, ago(60), booked=ago(50))  # booked, but 10 s after: too late
        events += clicker(43, ago(0.5))  # clicked just now: the window is still open
        ws.ingest(events)
        ws.build()

        first = invitations(ws, "clicked-not-booked")
        users = {r["user_id"] for r in first}
        assert users == {f"c{i}" for i in range(39)} | {"c42"}
        holdout = [r for r in first if r["channel"] == "holdout"]
        assert 3 <= len(holdout) <= 20  # recorded, never asked
        assert {r["channel"] for r in first} == {"email", "holdout"}
        assert len(ws.surveys.due("nps-free-day")) == len(first) - len(holdout)
        listed = ws.surveys.triggers.get("clicked-not-booked")
        assert listed["invited"] + listed["holdout"] == 40 and listed["evaluations"] == 2

        # Nothing new and no window closed: nobody is invited twice, however often it runs.
        again = ws.surveys.triggers.evaluate("clicked-not-booked")
        assert again["mode"] == "incremental" and again["invited"] == again["holdout"] == 0
        assert ws.surveys.triggers.evaluate("clicked-not-booked", full=True)["already"] == 40

        # c43's window closes with no new event: a later build (skipped) picks it up.
        time.sleep(4.5)
        assert ws.build().skipped
        later = {r["user_id"] for r in invitations(ws, "clicked-not-booked")}
        assert later == users | {"c43"}

        # A late event: c44 clicked long ago; its window is closed when it arrives.
        ws.ingest(clicker(44, ago(3600)))
        ws.build()
        # Out of order: c45's booking is loaded before the click it follows.
        ws.ingest(clicker(45, ago(3600), booked=ago(3598))[::2])  # identify, booking
        ws.build()
        ws.ingest(clicker(45, ago(3600))[1:])  # the click, an hour late
        ws.build()
        out = invitations(ws, "clicked-not-booked")
        assert {r["user_id"] for r in out} == later | {"c44"}
        assert len(out) == len({r["person_id"] for r in out})  # exactly once each


def test_event_trigger_pause_resume_and_remove(tmp_path: Path) -> None:
    with bowknot.connect(tmp_path / "w.duckdb", survey_quiet_hours="",
                         survey_trigger_seconds=0) as ws:
        ws.surveys.create("csat-support", kind="csat")
        ws.surveys.add_trigger("csat-support", "ticket-closed",
                               event="Ticket Closed[topic=pickup|billing]", channel="link")

        def ticket(user: str, topic: str, n: int = 0) -> None:
            ws.track("Ticket Closed", user_id=user, properties={"topic": topic},
                     messageId=f"t-{user}-{n}")

        ticket("t1", "pickup")
        ticket("t2", "other")
        ws.build()
        assert [r["user_id"] for r in invitations(ws, "ticket-closed")] == ["t1"]
        ws.surveys.triggers.pause("ticket-closed")
        ticket("t3", "billing")
        ticket("t1", "pickup", 2)  # a second ticket: still one invitation per trigger
        ws.build()
        assert [r["user_id"] for r in invitations(ws, "ticket-closed")] == ["t1"]
        assert ws.surveys.triggers.get("ticket-closed")["active"] is False
        ws.surveys.triggers.resume("ticket-closed")
        ws.build()  # what arrived while paused is evaluated now
        assert [r["user_id"] for r in invitations(ws, "ticket-closed")] == ["t1", "t3"]
        ws.surveys.triggers.remove("ticket-closed")
        assert ws.surveys.triggers.list() == []
        assert len(invitations(ws, "ticket-closed")) == 2  # the invitations stay
        with pytest.raises(NotFound):
            ws.surveys.triggers.pause("ticket-closed")


def test_trigger_validation(ws: bowknot.Workspace) -> None:
    with pytest.raises(NotFound, match="surveys list"):
        ws.surveys.add_trigger("nope", "x", event="Ticket Closed")
    ws.surveys.create("nps", kind="nps")
    with pytest.raises(ValidationError, match="Give one rule"):
        ws.surveys.add_trigger("nps", "x")
    with pytest.raises(ValidationError, match="Give one rule"):
        ws.surveys.add_trigger("nps", "x", event="A", did="B")
    with pytest.raises(ValidationError, match="did_not"):
        ws.surveys.add_trigger("nps", "x", did="Campaign Clicked")
    with pytest.raises(ValidationError, match="duration"):
        ws.surveys.add_trigger("nps", "x", did="A", did_not="B", within="soon")
    with pytest.raises(ValidationError, match="lower-case"):
        ws.surveys.add_trigger("nps", "Bad Name", event="A")
    with pytest.raises(ValidationError, match="lower-case"):
        ws.surveys.add_trigger("nps", "cohort:x", event="A")
    with pytest.raises(ValidationError, match="channel"):
        ws.surveys.add_trigger("nps", "x", event="A", channel="sms")
    with pytest.raises(ValidationError, match="ISO"):
        ws.surveys.add_trigger("nps", "x", event="A", since="last tuesday")
    with pytest.raises(NotFound, match="cohort"):
        ws.surveys.add_trigger("nps", "x", cohort="no-such-cohort")
    ws.surveys.add_trigger("nps", "x", event="A")
    with pytest.raises(ValidationError, match="exists"):
        ws.surveys.add_trigger("nps", "x", event="B")


def test_full_and_incremental_match_the_ibis_cohort_on_demo_data(tmp_path: Path) -> None:
    """The SQL fast path against the portable Ibis cohort (journeys/cohorts.py), and the
    incremental evaluation (events arriving in two loads) against a full one."""
    from bowknot import demo
    from bowknot.imports import import_file

    f = tmp_path / "demo.jsonl"
    demo.write_jsonl(f, events=30_000, seed=3)
    lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
    head, tail = tmp_path / "head.jsonl", tmp_path / "tail.jsonl"
    head.write_text("".join(lines[: len(lines) * 2 // 3]), encoding="utf-8")
    tail.write_text("".join(lines[len(lines) * 2 // 3:]), encoding="utf-8")
    with bowknot.connect(tmp_path / "w.duckdb", survey_quiet_hours="",
                         survey_contact_days=0) as ws:
        ws.surveys.create("nps", kind="nps", holdout=0.2)
        ws.surveys.add_trigger("nps", "t", did="Campaign Clicked[campaign_id=free-day-downtown]",
                               did_not="Booking Completed", within="3d")
        import_file(ws, head)
        ws.build()
        first = current(ws, "t")
        import_file(ws, tail)
        ws.build()
        assert ws.surveys.triggers.get("t")["evaluations"] == 2
        got = current(ws, "t")
        cohort = ws.journeys.cohort("Campaign Clicked[campaign_id=free-day-downtown]",
                                    "Booking Completed", within="3d")
        expected = set(cohort.table.column("person_id").to_pylist())
        assert len(expected) > 50 and len(set(got)) > len(set(first)) > 0
        # Everyone in the cohort is invited, once; the others were invited by the first
        # evaluation and left the cohort with the later events (an invitation stays).
        assert len(got) == len(set(got)) and expected <= set(got)
        assert set(got) - expected <= set(first)
        again = ws.surveys.triggers.evaluate("t", full=True)
        assert again["matched"] == again["already"] == len(expected)


def test_trigger_from_a_saved_cohort_cli_and_api(tmp_path: Path) -> None:
    from bowknot.cli import main
    from bowknot.server import create_app

    db = tmp_path / "w.duckdb"
    with bowknot.connect(db) as ws:
        ws.ingest(clicker(1, ago(5 * 86400)) + clicker(2, ago(5 * 86400), booked=ago(4 * 86400)))
        ws.build()
        ws.journeys.cohort("Campaign Clicked", "Booking Completed", within="3d",
                           save_as="clicked-not-booked")
    env = {"BOWKNOT_SURVEY_QUIET_HOURS": ""}

    def run(*args: str) -> str:
        result = CliRunner(env=env).invoke(main, [*args, "--db", str(db)],
                                           catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("surveys", "create", "nps", "--kind", "nps")
    out = run("surveys", "trigger", "add", "nps", "from-cohort", "--cohort",
              "clicked-not-booked", "--channel", "link")
    assert "Campaign Clicked and not Booking Completed within 3d -> nps by link" in out
    bad = CliRunner().invoke(main, ["surveys", "trigger", "add", "nps", "x", "--did", "A",
                                    "--db", str(db)])
    assert bad.exit_code != 0 and "did_not" in bad.output
    assert "nps" in run("surveys", "trigger", "list")
    evaluated = run("surveys", "trigger", "evaluate", "--json")
    assert '"invited": 1' in evaluated and '"mode": "full"' in evaluated
    assert "paused" in run("surveys", "trigger", "pause", "from-cohort")
    assert '"active": false' in run("surveys", "trigger", "list", "--json")
    assert "resumed" in run("surveys", "trigger", "resume", "from-cohort")
    assert "removed" in run("surveys", "trigger", "remove", "from-cohort")

    with bowknot.connect(db) as ws, TestClient(create_app(ws)) as client:
        auth = {"Authorization": f"Bearer {ws.access.create_token('t')}"}
        made = client.post("/v1/surveys/nps/triggers", headers=auth, json={
            "name": "ticket", "event": "Ticket Closed", "channel": "webhook"})
        assert made.status_code == 200, made.text
        assert made.json()["kind"] == "event"
        bad_rule = client.post("/v1/surveys/nps/triggers", headers=auth, json={"name": "y"})
        assert bad_rule.status_code == 400 and "Give one rule" in bad_rule.text
        assert [t["name"] for t in client.get("/v1/triggers", headers=auth).json()] == [
            "ticket"]
        assert client.post("/v1/triggers/ticket/pause", headers=auth).json()["active"] is False
        assert client.post("/v1/triggers/ticket/resume", headers=auth).json()["active"] is True
        assert client.post("/v1/triggers/ticket/evaluate", headers=auth).json()["matched"] == 0
        assert client.post("/v1/triggers/ticket/explode", headers=auth).status_code == 400
        assert client.delete("/v1/triggers/ticket", headers=auth).status_code == 200
        assert client.delete("/v1/triggers/ticket", headers=auth).status_code == 404


def test_bowknot_serve_background_build_fires_a_trigger(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "served.duckdb"
    key, token = make_keys(db)
    monkeypatch.setenv("BOWKNOT_BUILD_INTERVAL_SECONDS", "0.5")
    srv = Server(db).start()
    try:
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            assert http.post("/v1/surveys", headers=auth, json={
                "survey_id": "csat", "kind": "csat"}).status_code == 200
            assert http.post("/v1/surveys/csat/triggers", headers=auth, json={
                "name": "ticket-closed", "event": "Ticket Closed", "channel": "link"},
            ).status_code == 200
            sent = http.post("/v1/batch", auth=(key, ""), json={"batch": [
                {"type": "track", "userId": "u-served", "event": "Ticket Closed",
                 "messageId": "tc-1"},
                {"type": "track", "userId": "u-other", "event": "Ticket Opened",
                 "messageId": "to-1"}]})
            assert sent.status_code == 200, sent.text
            deadline = time.monotonic() + 30
            trigger: dict[str, Any] = {}
            while time.monotonic() < deadline:
                trigger = http.get("/v1/triggers", headers=auth).json()[0]
                if trigger["invited"]:
                    break
                time.sleep(0.2)
            assert trigger["invited"] == 1 and trigger["last_error"] is None
            time.sleep(1.5)  # more background builds: still one invitation
            assert http.get("/v1/surveys", headers=auth).json()[0]["invitations"] == 1
    finally:
        srv.stop()


def test_privacy_delete_reaches_trigger_entries(ws: bowknot.Workspace) -> None:
    ws.surveys.create("nps", kind="nps")
    ws.surveys.add_trigger("nps", "identified", did="identify", did_not="Never Happens",
                           within="30d")
    ws.identify("u1", traits={"email": "u1@example.com"})
    ws.identify("u2", traits={"email": "u2@example.com"})
    ws.build()  # both entered; their windows are open: nobody invited yet
    entries = ws.sql("SELECT person_id FROM survey_trigger_entries ORDER BY person_id")
    assert len(entries) == 2 and ws.sql("SELECT * FROM survey_invitations") == []
    ws.track("Never Happens", user_id="u1")  # well, once: a B event in the trigger's state
    ws.build()
    assert len(ws.sql("SELECT * FROM survey_trigger_outs")) == 1
    ws.privacy.delete("u1")
    assert ws.sql("SELECT person_id FROM survey_trigger_entries") == [
        {"person_id": ws.persons.resolve("u2")}]
    assert ws.sql("SELECT * FROM survey_trigger_outs") == []


def test_a_failing_trigger_keeps_its_error_and_the_build_stands(ws: bowknot.Workspace) -> None:
    ws.surveys.create("gone", kind="nps")
    ws.surveys.create("nps", kind="nps")
    ws.surveys.add_trigger("gone", "broken", event="Ticket Closed", channel="link")
    ws.surveys.add_trigger("nps", "working", event="Ticket Closed", channel="link")
    ws.sql("DELETE FROM surveys WHERE survey_id = 'gone'")  # as if removed behind its back
    ws.surveys._surveys.clear()
    ws.track("Ticket Closed", user_id="t1")
    result = ws.build()
    assert not result.skipped and ws.sql("SELECT count(*) AS n FROM persons")[0]["n"] == 1
    broken, working = ws.surveys.triggers.list()
    assert "No survey 'gone'" in broken["last_error"] and broken["evaluations"] == 0
    assert working["last_error"] is None and working["invited"] == 1


def test_an_unmerge_is_followed_by_the_next_incremental_evaluation(tmp_path: Path) -> None:
    with bowknot.connect(tmp_path / "w.duckdb", survey_quiet_hours="",
                         survey_trigger_seconds=0) as ws:
        ws.surveys.create("nps", kind="nps")
        ws.surveys.add_trigger("nps", "clicked-not-booked", did="Campaign Clicked",
                               did_not="Booking Completed", within="3s", channel="link")
        # A laptop clicked; u1 booked just after; then an identify fused them (wrongly: a
        # shared laptop). As one person: clicked and booked, so nobody is asked.
        ws.identify("u1", anonymous_id="phone", timestamp=ago(100))
        ws.track("Campaign Clicked", anonymous_id="laptop", timestamp=ago(1))
        ws.track("Booking Completed", user_id="u1", timestamp=ago(0.5))
        ws.build()
        ws.identify("u1", anonymous_id="laptop", timestamp=ago(0.2))
        ws.build()
        assert ws.persons.resolve("laptop") == ws.persons.resolve("u1")
        time.sleep(3.5)  # the window closes
        assert ws.build().skipped
        assert ws.surveys.triggers.get("clicked-not-booked")["evaluations"] == 3
        assert invitations(ws, "clicked-not-booked") == []
        merge = [c for c in ws.persons.changes(ws.persons.resolve("u1"))
                 if c["kind"] == "merge"]
        assert len(merge) == 1

        # Undone: the laptop's person clicked and did not book. The unmerge's own build
        # evaluates the trigger incrementally; the booking no longer counts for the laptop.
        ws.persons.unmerge(merge[0]["log_id"])
        laptop, u1 = ws.persons.resolve("laptop"), ws.persons.resolve("u1")
        assert laptop != u1
        assert ws.surveys.triggers.get("clicked-not-booked")["evaluations"] == 4
        assert [r["person_id"] for r in invitations(ws, "clicked-not-booked")] == [laptop]
        state = ws.sql("""SELECT person_id, entered_at FROM survey_trigger_entries
                          ORDER BY person_id""")
        outs = ws.sql("SELECT person_id, ts FROM survey_trigger_outs ORDER BY person_id")
        assert [r["person_id"] for r in state] == [laptop]
        assert [r["person_id"] for r in outs] == [u1]
        # The same state as a full evaluation reading every event again.
        full = ws.surveys.triggers.evaluate("clicked-not-booked", full=True)
        assert (full["matched"], full["already"], full["invited"]) == (1, 1, 0)
        assert ws.sql("""SELECT person_id, entered_at FROM survey_trigger_entries
                         ORDER BY person_id""") == state
        assert ws.sql("SELECT person_id, ts FROM survey_trigger_outs ORDER BY person_id") == outs
