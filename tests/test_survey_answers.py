"""Survey answers as one write: the event, the invitation's state and a follow-up case in one
transaction; a link answered once whatever posts race, across restarts and deletions."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
from fastapi.testclient import TestClient

import bowknot
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
