"""Survey answers as one write: the event, the invitation's state and a follow-up case in one
transaction; a link answered once whatever posts race, across restarts and deletions."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import bowknot
from bowknot import ingest
from bowknot import workspace as workspace_module
from bowknot.errors import ValidationError
from bowknot.store.writer import Request, Rows, Submission

from .test_surveys import form_fields, person


def count(ws: bowknot.Workspace, sql: str) -> int:
    return int(ws.sql(f"SELECT count(*) AS n FROM {sql}")[0]["n"])


def test_racing_posts_to_one_link_record_one_answer_and_one_case(
        ws: bowknot.Workspace) -> None:
    pid = person(ws)
    ws.surveys.create("nps", kind="nps")
    token = ws.surveys.invite("nps", pid)["token"]
    others = [ws.surveys.invite("nps", pid, trigger=f"t{i}")["token"] for i in range(8)]
    start = threading.Barrier(24)

    def post(job: tuple[str, int]) -> dict[str, Any]:
        start.wait()
        return ws.surveys.answer(job[0], job[1], csrf=ws.surveys.csrf(job[0]))

    # A scanner and a double click: 16 posts of detractor scores to one link at once, while
    # eight other links are answered.
    jobs = [(token, i % 7) for i in range(16)] + [(t, 3) for t in others]
    with ThreadPoolExecutor(24) as pool:
        outs = list(pool.map(post, jobs))
    mine = outs[:16]
    states = [o["state"] for o in mine]
    assert states.count("recorded") == 1 and states.count("answered") == 15
    kept = mine[states.index("recorded")]["invitation"]["score"]
    assert all(o["state"] == "recorded" for o in outs[16:])
    assert count(ws, "events WHERE event = 'survey_answered'") == 9
    assert count(ws, "cases") == 9 and count(ws, "events WHERE event = 'case_opened'") == 9
    invitation_id = token.split(".")[0]
    assert count(ws, f"cases WHERE invitation_id = '{invitation_id}'") == 1
    # Each different score refused is flagged for audit; the same score again is not.
    assert count(ws, "survey_flags") == sum(1 for i, o in enumerate(mine)
                                            if o["state"] == "answered" and i % 7 != kept)
    row = ws.sql("SELECT score, answered_at FROM survey_invitations "
                 f"WHERE invitation_id = '{invitation_id}'")[0]
    assert row["score"] == kept and row["answered_at"] is not None


def test_rows_commit_with_their_events_and_never_without_them(
        ws: bowknot.Workspace) -> None:
    ws.store.connection.execute("CREATE TABLE side (note VARCHAR)")
    schema = pa.schema([("note", pa.string())])

    def submission(event: str | None, note: str) -> Submission:
        body = '{"userId": "u1", "messageId": "m-' + note + '"' + (
            f', "event": "{event}"' if event else "") + "}"
        return Submission([Request("web", "track", body)],
                          [Rows("side_rows", "INSERT INTO side SELECT note FROM side_rows",
                                schema, [{"note": note}])])

    commits = ws.writer.commits
    outs = ws.writer.write(submission("Signed Up", "kept"))
    assert outs[0].accepted == 1 and ws.writer.commits == commits + 1  # one transaction
    refused = ws.writer.write(submission(None, "dropped"))  # a track without its event
    assert refused[0].accepted == 0 and refused[0].failures
    assert ws.sql("SELECT note FROM side") == [{"note": "kept"}]
    assert count(ws, "failed_events") == 1


def test_a_restart_never_allows_a_used_link_again(tmp_path: Path) -> None:
    path = tmp_path / "ws.duckdb"
    with bowknot.connect(path) as ws:
        pid = person(ws)
        ws.surveys.create("csat", kind="csat")
        token = ws.surveys.invite("csat", pid)["token"]
        assert ws.surveys.invitation(token)[0] == "ok"  # the page was read: its row is kept
        assert ws.surveys.answer(token, 2)["state"] == "recorded"
        assert ws.surveys.invitation(token)[0] == "answered"
    with bowknot.connect(path, survey_burst_seconds=0) as ws:  # a later second answer
        assert ws.surveys.answer(token, 5)["state"] == "answered"
        assert count(ws, "events WHERE event = 'survey_answered'") == 1
        assert ws.sql("SELECT kind FROM survey_flags") == [{"kind": "second_answer"}]
        assert ws.surveys.comment(token, "slow")["state"] == "recorded"
        assert ws.surveys.comment(token, "again")["state"] == "commented"
        assert ws.sql("SELECT score, commented_at IS NOT NULL AS c FROM survey_invitations"
                      ) == [{"score": 2, "c": True}]


def test_a_page_read_before_a_deletion_answers_nothing(ws: bowknot.Workspace,
                                                        client: TestClient) -> None:
    pid = person(ws)
    ws.surveys.create("nps", kind="nps")
    token = ws.surveys.invite("nps", pid)["token"]
    page = client.get("/s/" + token)
    assert page.status_code == 200
    ws.privacy.delete(pid)
    assert client.get("/s/" + token).status_code == 404
    gone = client.post("/s/" + token, data={"csrf": form_fields(page.text)["csrf"],
                                            "score": "3"})
    assert gone.status_code == 404
    assert count(ws, "events WHERE event LIKE 'survey_%' OR event = 'case_opened'") == 0
    assert count(ws, "cases") == 0


def test_posted_forms_keep_reason_choices_and_words(ws: bowknot.Workspace,
                                                    client: TestClient) -> None:
    pid = person(ws)
    ws.surveys.create("nps", kind="nps", reasons=["Price", "Staff"])
    token = ws.surveys.invite("nps", pid)["token"]
    csrf = form_fields(client.get("/s/" + token).text)["csrf"]
    words = "کارمندان مهربان بودند & <fast>"
    done = client.post("/s/" + token, data={"csrf": csrf, "score": "8", "why": words,
                                            "reasons": ["Staff", "Made up"]})
    assert done.status_code == 200 and "Thank you" in done.text
    answer = ws.sql("SELECT properties->>'why' AS why, properties->'reasons' AS reasons "
                    "FROM events WHERE event = 'survey_answered'")
    assert answer == [{"why": words, "reasons": '["Staff"]'}]
    # A multipart post (another client) is read too.
    other = ws.surveys.invite("nps", pid, trigger="again")["token"]
    csrf = form_fields(client.get("/s/" + other).text)["csrf"]
    multipart = client.post("/s/" + other, files={"csrf": (None, csrf), "score": (None, "4")})
    assert multipart.status_code == 200 and "Thank you" in multipart.text
    why = client.post(f"/s/{other}/why", files={"csrf": (None, csrf), "why": (None, "late")})
    assert why.status_code == 200
    assert count(ws, "events WHERE event = 'survey_answered'") == 2
    assert count(ws, "events WHERE event = 'survey_commented'") == 1


def test_the_librarys_own_events_store_what_the_engine_would_and_stay_deduplicated(
        ws: bowknot.Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Typed rows (``send_many(own=True)``, no parse statement) hold exactly what the engine
    makes of the same event's text, share its deduplication key, and anything not plainly
    valid still goes through the engine's validation."""
    props = {"why": 'line\none "quoted" \\ tab\t émoji 🙂 خوب ดี </script>', "score": 3,
             "reasons": ["a", "b"], "none": None, "nested": {"x": [1, 2, {"y": True}]}}
    ctx = {"locale": "fa", "traits": {"email": "p@example.com"}}
    seen: list[bool] = []
    real = ingest.typed_track

    def spy(*args: Any) -> dict[str, Any] | None:
        seen.append((row := real(*args)) is not None)
        return row

    monkeypatch.setattr(workspace_module, "typed_track", spy)
    for own, mid in ((True, "typed-1"), (False, "text-1")):
        ws.send_many([("track", {"event": "survey_answered", "userId": "u1",
                                 "messageId": mid, "properties": props, "context": ctx},
                       "surveys")], own=own)
    cols = ("source, type, event, name, anonymous_id, user_id, group_id, previous_id, "
            "sent_at, properties::VARCHAR AS p, traits::VARCHAR AS tr, context::VARCHAR AS c, "
            "integrations::VARCHAR AS i, timestamp = original_timestamp AS same_ts, "
            "key = hash(source, message_id) AS keyed")
    typed, text = (ws.sql(f"SELECT {cols} FROM events WHERE message_id = '{m}'")
                   for m in ("typed-1", "text-1"))
    assert seen == [True]  # the first went the typed way, the second as text
    assert typed == text and typed[0]["keyed"] and typed[0]["same_ts"]
    # A re-send of a typed event is a duplicate, whichever way it comes.
    for own in (True, False):
        ws.send_many([("track", {"event": "survey_answered", "userId": "u1",
                                 "messageId": "typed-1", "properties": props,
                                 "context": ctx}, "surveys")], own=own)
    assert count(ws, "events WHERE message_id = 'typed-1'") == 1
    # Not plainly valid (a blank event name): the engine refuses it, as any other.
    try:
        ws.send_many([("track", {"event": " ", "userId": "u1", "messageId": "bad-1"},
                       "surveys")], own=True)
    except bowknot.ValidationError as exc:
        assert "missing_event" in str(exc.details) or "event" in exc.message
    else:
        raise AssertionError("a blank event name was accepted")
    assert count(ws, "events WHERE message_id = 'bad-1'") == 0
    assert seen == [True, True, False]


def test_an_answer_started_without_waiting_races_with_threads_and_records_once(
        ws: bowknot.Workspace) -> None:
    """The page's event-loop path (Surveys.start_answer) and the thread path (answer) share
    the link's turn: whichever starts first records, the others see it answered."""
    pid = person(ws)
    ws.surveys.create("nps", kind="nps")
    token = ws.surveys.invite("nps", pid)["token"]
    csrf = ws.surveys.csrf(token)
    invitation_id = token.split(".")[0]
    # Not in memory yet: it would have to be read, so the caller must use a thread.
    assert ws.surveys.invitation(token, read=False) == ("unread", None)
    assert ws.surveys.start_answer(token, 2, csrf=csrf) is None
    assert ws.surveys.invitation(token)[0] == "ok"  # the page, shown: the row is kept
    # Another post to the link being recorded: a thread waits its turn instead.
    with ws.surveys._one_at_a_time(invitation_id):
        assert ws.surveys.start_answer(token, 2, csrf=csrf) is None
    with pytest.raises(ValidationError, match="out of date"):
        ws.surveys.start_answer(token, 2, csrf="forged")
    assert not ws.surveys._busy  # a refusal lets the next post in

    pending = ws.surveys.start_answer(token, 2, "Too slow", csrf=csrf)
    assert pending is not None
    assert not pending.cancel()  # submitted: seen through, whatever the caller does
    with ThreadPoolExecutor(6) as pool:
        others = list(pool.map(lambda s: ws.surveys.answer(token, s, csrf=csrf), range(6)))
    out = pending.result(10)
    assert out["state"] == "recorded" and out["case_id"] is not None
    assert out["invitation"]["score"] == 2 and out["invitation"]["commented"]
    assert [o["state"] for o in others] == ["answered"] * 6
    assert count(ws, "events WHERE event = 'survey_answered'") == 1
    assert count(ws, "survey_flags") == 5  # every other score, never the same one
    assert count(ws, "cases") == 1 and count(ws, "events WHERE event = 'case_opened'") == 1
    row = ws.sql("SELECT score, commented_at FROM survey_invitations "
                 f"WHERE invitation_id = '{invitation_id}'")[0]
    assert row["score"] == 2 and row["commented_at"] is not None
    # Answered: the page says so from a thread (and flags a different score there).
    assert ws.surveys.start_answer(token, 9, csrf=csrf) is None
    assert not ws.surveys._busy


def test_an_answer_refused_by_the_store_reaches_the_event_loop_and_frees_the_link(
        tmp_path: Path) -> None:
    with bowknot.connect(tmp_path / "ws.duckdb", max_event_bytes=2000) as ws:
        pid = person(ws)
        ws.surveys.create("nps", kind="nps")
        token = ws.surveys.invite("nps", pid)["token"]
        csrf = ws.surveys.csrf(token)
        ws.surveys.invitation(token)
        pending = ws.surveys.start_answer(token, 9, "x" * 3000, csrf=csrf)  # too large
        assert pending is not None
        with pytest.raises(ValidationError, match="rejected"):
            pending.result(10)
        assert not ws.surveys._busy
        assert ws.surveys.invitation(token)[0] == "ok"  # nothing noted: still open
        assert count(ws, "survey_invitations WHERE answered_at IS NOT NULL") == 0
        assert ws.surveys.answer(token, 9, "Fine", csrf=csrf)["state"] == "recorded"
        assert count(ws, "events WHERE event = 'survey_answered'") == 1
