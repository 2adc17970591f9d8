"""Surveys: signed single-use links, nothing recorded on GET, answers on the timeline, e-mail
over a real SMTP server, languages (Persian right to left, Thai), NPS with its interval."""

from __future__ import annotations

import email
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient

import bowknot
from bowknot import mailer
from bowknot.errors import NotFound, ValidationError
from bowknot.surveys import nps

from .conftest import free_port


def person(ws: bowknot.Workspace, user: str = "u-mina", email_: str = "mina@example.com",
           language: str | None = None) -> str:
    traits: dict[str, Any] = {"email": email_, "name": "Mina"}
    if language:
        traits["language"] = language
    ws.identify(user, anonymous_id=f"anon-{user}", traits=traits,
                timestamp="2026-07-01T00:00:00Z")
    ws.build()
    return ws.persons.resolve(user)


def form_fields(html: str) -> dict[str, str]:
    import re

    return dict(re.findall(r'name="(csrf)" value="([^"]+)"', html))


def test_answer_flow_records_once_and_lands_on_the_timeline(
        ws: bowknot.Workspace, client: TestClient) -> None:
    pid = person(ws)
    ws.surveys.create("nps-relationship", kind="nps", company="Bowknot Rentals")
    inv = ws.surveys.invite("nps-relationship", pid, trigger="quarterly")
    assert ws.surveys.invite("nps-relationship", "mina@example.com",
                             trigger="quarterly")["invitation_id"] == inv["invitation_id"]
    path = "/s/" + inv["token"]

    # A scanner (or the person) opening the link, even with a score, records nothing.
    page = client.get(path + "?score=9")
    assert page.status_code == 200 and 'value="9" checked' in page.text
    assert "Bowknot Rentals" in page.text and page.headers["cache-control"] == "no-store"
    assert ws.sql("SELECT count(*) AS n FROM events WHERE event = 'survey_answered'") == [
        {"n": 0}]

    csrf = form_fields(page.text)["csrf"]
    bad = client.post(path, data={"csrf": "forged", "score": "9"})
    assert bad.status_code == 400 and "reload" in bad.text
    missing = client.post(path, data={"csrf": csrf})
    assert missing.status_code == 400 and "choose a score" in missing.text
    done = client.post(path, data={"csrf": csrf, "score": "9"})
    assert done.status_code == 200 and "Thank you" in done.text and "/why" in done.text
    # The score is kept although no "why" was given; the why can follow, once.
    why = client.post(path + "/why", data={"csrf": csrf, "why": "Fast <b>pick-up</b>"})
    assert "We read every answer" in why.text
    again = client.post(path, data={"csrf": csrf, "score": "9"})
    assert "already answered" in again.text

    ws.build()
    timeline = ws.persons.timeline(pid)
    answered = [e for e in timeline if e["event"] == "survey_answered"]
    assert len(answered) == 1 and answered[0]["properties"]["score"] == 9
    assert [e["properties"]["why"] for e in timeline if e["event"] == "survey_commented"] == [
        "Fast <b>pick-up</b>"]
    report = ws.surveys.report("nps-relationship")
    assert report["answers"] == 1 and report["nps"] == 100.0


def test_tampered_expired_and_burst_links(ws: bowknot.Workspace, client: TestClient) -> None:
    pid = person(ws)
    ws.surveys.create("csat-support", kind="csat")
    inv = ws.surveys.invite("csat-support", pid)
    token = inv["token"]
    body, sig = token.rsplit(".", 1)
    tampered = client.get(f"/s/{body}.{'A' * len(sig)}")
    assert tampered.status_code == 404 and "not valid" in tampered.text
    other_id = client.get("/s/" + "x" * 20 + "." + token.split(".")[1] + "." + sig)
    assert other_id.status_code == 404

    csrf = form_fields(client.get("/s/" + token).text)["csrf"]
    out_of_range = client.post("/s/" + token, data={"csrf": csrf, "score": "9"})
    assert out_of_range.status_code == 400 and "from 1 to 5" in out_of_range.text
    assert client.post("/s/" + token, data={"csrf": csrf, "score": "2"}).status_code == 200
    # A scanner posting every score in a burst: flagged for audit, never counted.
    for score in ("3", "4", "5"):
        assert "already answered" in client.post(
            "/s/" + token, data={"csrf": csrf, "score": score}).text
    flags = ws.sql("SELECT kind, detail FROM survey_flags")
    assert [f["kind"] for f in flags] == ["burst"] * 3
    assert ws.sql("SELECT count(*) AS n FROM events WHERE event = 'survey_answered'") == [
        {"n": 1}]

    # An expired link: a friendly page, nothing recorded.
    with bowknot.connect(ws.path.with_name("exp.duckdb"), survey_link_days=-1) as old:
        pid2 = person(old)
        old.surveys.create("nps", kind="nps")
        expired = old.surveys.invite("nps", pid2)
        state, _ = old.surveys.invitation(expired["token"])
        assert state == "expired"
        assert old.surveys.answer(expired["token"], 5)["state"] == "expired"


def test_languages_persian_right_to_left_and_thai(ws: bowknot.Workspace,
                                                  client: TestClient) -> None:
    pid = person(ws, language="fa-IR")
    ws.surveys.create("nps", kind="nps", company="بوکنات",
                      translations={"th": {"submit": "ส่งคำตอบ"}})
    inv = ws.surveys.invite("nps", pid)
    assert inv["language"] == "fa"
    fa = client.get("/s/" + inv["token"]).text
    assert 'dir="rtl"' in fa and 'lang="fa"' in fa and "ارسال" in fa and "بوکنات" in fa
    th = client.get("/s/" + inv["token"] + "?lang=th").text
    assert 'dir="ltr"' in th and "ส่งคำตอบ" in th and "แนะนำ" in th
    with pytest.raises(ValidationError, match="unknown strings"):
        ws.surveys.create("bad", translations={"fa": {"sumbit": "x"}})
    with pytest.raises(ValidationError, match="needs its question"):
        ws.surveys.create("custom-q", kind="custom")
    with pytest.raises(NotFound):
        ws.surveys.invite("nope", pid)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def test_email_invitation_over_smtp_is_sent_once(tmp_path: Path,
                                                 smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    with bowknot.connect(tmp_path / "w.duckdb", smtp_port=port,
                         public_url="https://cx.example.com") as ws:
        pid = person(ws, language="th")
        ws.surveys.create("nps", kind="nps", company="Bowknot")
        inv = ws.surveys.invite("nps", pid, channel="email")
        assert mailer.send_invitation(ws, inv)["sent"] is True
        assert mailer.send_invitation(ws, inv)["sent"] is False  # a retry sends nothing
        assert len(inbox.messages) == 1
        msg = inbox.messages[0]
        assert msg["To"] == "mina@example.com" and "Bowknot" in str(msg["Subject"])
        parts = {p.get_content_type(): p.get_payload(decode=True).decode()
                 for p in msg.walk() if not p.is_multipart()}
        html = parts["text/html"]
        for n in range(11):  # the score buttons are in the e-mail itself
            assert f"https://cx.example.com/s/{inv['token']}?score={n}" in html
        assert "แนะนำ" in html and "?score=10" in parts["text/plain"]
        ws.build()
        assert [e["event"] for e in ws.persons.timeline(pid)
                if e["source"] == "surveys"] == ["survey_invited"]

    with bowknot.connect(tmp_path / "w2.duckdb", smtp_port=free_port()) as down:
        pid = person(down)
        down.surveys.create("nps", kind="nps")
        inv = down.surveys.invite("nps", pid, channel="email")
        with pytest.raises(bowknot.BowknotError, match="safe to retry"):
            mailer.send_invitation(down, inv)
        assert down.sql("SELECT sent_at FROM survey_invitations") == [{"sent_at": None}]


def test_nps_adjusted_wald_interval() -> None:
    # 60 promoters, 20 detractors of 100: NPS 40. Adjusted Wald (MeasuringU): n' = 103,
    # p+ = 60.75/103, p- = 20.75/103, d = p+ - p- = .3883,
    # var = (p+ + p- - d^2)/n' = .006218, half = 1.96 * sqrt(var) = .1546 -> [23.4, 54.3].
    out = nps(60, 20, 100)
    assert out["nps"] == 40.0
    assert out["nps_low"] == pytest.approx(23.4, abs=0.1)
    assert out["nps_high"] == pytest.approx(54.3, abs=0.1)
    assert nps(0, 0, 0)["nps"] is None
    assert -100 <= nps(0, 3, 3)["nps_low"] <= nps(0, 3, 3)["nps_high"] <= 100


def test_surveys_admin_api(ws: bowknot.Workspace, client: TestClient,
                           admin_token: str) -> None:
    pid = person(ws)
    auth = {"Authorization": f"Bearer {admin_token}"}
    assert client.post("/v1/surveys", json={"survey_id": "nps"}).status_code == 401
    made = client.post("/v1/surveys", headers=auth, json={
        "survey_id": "nps-booking", "kind": "nps", "reasons": ["price", "car", "staff"]})
    assert made.status_code == 200, made.text
    bad = client.post("/v1/surveys", headers=auth, json={"survey_id": "Bad Id!"})
    assert bad.status_code == 400 and "lower-case" in bad.json()["error"]["message"]
    # A channel bowknot cannot deliver through is refused before an invitation is made.
    fax = client.post("/v1/surveys/nps-booking/invitations", headers=auth,
                      json={"person": pid, "trigger": "booking-1", "channel": "fax"})
    assert fax.status_code == 400 and fax.json()["error"]["code"] == "invalid_channel"
    assert ws.sql("SELECT count(*) AS n FROM survey_invitations")[0]["n"] == 0
    inv = client.post("/v1/surveys/nps-booking/invitations", headers=auth,
                      json={"person": pid, "trigger": "booking-1"}).json()
    page = client.get(inv["link"].split("8000", 1)[1])
    assert "price" in page.text
    csrf = form_fields(page.text)["csrf"]
    client.post(inv["link"].split("8000", 1)[1],
                data={"csrf": csrf, "score": "3", "reasons": ["price", "made-up"]})
    listed = client.get("/v1/surveys", headers=auth).json()
    assert listed == [{"survey_id": "nps-booking", "name": "nps-booking", "kind": "nps",
                       "language": "en", "invitations": 1, "answers": 1}]
    report = client.get("/v1/surveys/nps-booking/report", headers=auth).json()
    assert report["nps"] == -100.0 and report["distribution"] == {"3": 1}
    props = ws.sql("SELECT properties FROM events WHERE event = 'survey_answered'")[0]
    assert '"reasons":["price"]' in props["properties"].replace(" ", "")


def test_surveys_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bowknot.cli import main

    db = str(tmp_path / "w.duckdb")
    with bowknot.connect(db) as ws:
        person(ws)

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, [*args, "--db", db], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert "ready" in run("surveys", "create", "nps", "--kind", "nps", "--company", "Acme")
    link = run("surveys", "invite", "nps", "mina@example.com").strip()
    assert link.startswith("http://127.0.0.1:8000/s/")
    assert run("surveys", "invite", "nps", "u-mina").strip() == link  # same trigger: same link
    with bowknot.connect(db) as ws:
        assert ws.surveys.answer(link.rsplit("/", 1)[1], 10)["state"] == "recorded"
    assert "100" in run("surveys", "report", "nps")
    assert "nps" in run("surveys", "list")
    with bowknot.connect(db) as ws:
        ws.identify("u-bob", traits={"email": "bob@example.com"})
        ws.build()
    bob_link = run("surveys", "invite", "nps", "u-bob", "--trigger", "export").strip()
    out = tmp_path / "invitations.csv"
    assert "wrote 1 invitation" in run("surveys", "export", "nps", "--out", str(out))
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("invitation_id,person_id") and bob_link in lines[1]
    assert "bob@example.com" in lines[1]  # the answered invitation is not exported


class Receiver:
    """A real HTTP endpoint that fails the first ``failures`` posts, then accepts."""

    def __init__(self, failures: int) -> None:
        import http.server
        import threading

        self.failures = failures
        self.posts: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                ok = len(receiver.posts) > receiver.failures
                self.send_response(200 if ok else 503)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/surveys"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_webhook_signed_retried_and_dead_letters(tmp_path: Path) -> None:
    import base64
    import hashlib
    import hmac
    import json as json_

    from bowknot import webhooks

    flaky = Receiver(failures=2)
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    try:
        with bowknot.connect(tmp_path / "w.duckdb", webhook_url=flaky.url, webhook_secret=secret,
                             webhook_backoff_seconds=0.01, webhook_attempts=3) as ws:
            pid = person(ws, language="fa")
            ws.surveys.create("nps", kind="nps")
            inv = ws.surveys.invite("nps", pid, channel="webhook")
            out = webhooks.deliver(ws, inv)
            assert out["status"] == "delivered" and out["attempts"] == 3
            assert webhooks.deliver(ws, inv)["attempts"] == 3  # delivered: never sent again
            headers, body = flaky.posts[-1]
            # Verify the Standard Webhooks signature independently of the code under test.
            key = base64.b64decode(secret.removeprefix("whsec_"))
            signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
            expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            assert headers["webhook-signature"] == "v1," + expected
            assert {h["webhook-id"] for h, _ in flaky.posts} == {f"msg_{inv['invitation_id']}"}
            payload = json_.loads(body)
            assert payload["language"] == "fa" and payload["link"].endswith(inv["token"])
            assert len(payload["score_links"]) == 11
    finally:
        flaky.close()

    down = Receiver(failures=10**6)
    try:
        with bowknot.connect(tmp_path / "w2.duckdb", webhook_url=down.url,
                             webhook_backoff_seconds=0.01, webhook_attempts=2) as ws:
            pid = person(ws)
            ws.surveys.create("nps", kind="nps")
            inv = ws.surveys.invite("nps", pid, channel="webhook")
            assert webhooks.deliver(ws, inv)["status"] == "dead"
            dead = webhooks.dead_letters(ws)
            assert len(dead) == 1 and dead[0]["last_error"] == "HTTP 503"
            down.failures = 0  # the receiver is fixed: replay the dead letter
            assert webhooks.replay(ws, dead[0]["delivery_id"])["status"] == "delivered"
            assert webhooks.dead_letters(ws) == []
            ws.build()
            assert [e["properties"]["channel"] for e in ws.persons.timeline(pid)
                    if e["event"] == "survey_invited"] == ["webhook"]
            with pytest.raises(NotFound):
                webhooks.replay(ws, "msg_nope")
    finally:
        down.close()


def clicked_not_booked(ws: bowknot.Workspace, n: int, timezone: str = "UTC") -> None:
    """n persons who clicked a campaign and did not book: a saved cohort."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        events.append({"type": "identify", "userId": f"c{i}", "messageId": f"id-{i}",
                       "traits": {"email": f"c{i}@example.com"},
                       "context": {"timezone": timezone},
                       "timestamp": "2026-07-01T10:00:00Z"})
        events.append({"type": "track", "userId": f"c{i}", "event": "Campaign Clicked",
                       "messageId": f"click-{i}", "properties": {"campaign_id": "free-day"},
                       "timestamp": "2026-07-02T10:00:00Z"})
    ws.ingest(events)
    ws.build()
    ws.journeys.cohort("Campaign Clicked", "Booking Completed", within="3d",
                       save_as="clicked-not-booked")


def test_cohort_send_follows_the_contact_rules(tmp_path: Path) -> None:
    with bowknot.connect(tmp_path / "w.duckdb", survey_quiet_hours="") as ws:
        clicked_not_booked(ws, 40)
        ws.surveys.create("nps-other", kind="nps")
        ws.surveys.invite("nps-other", "c0")  # asked last week by another survey
        ws.surveys.create("nps-free-day", kind="nps", holdout=0.25)
        out = ws.surveys.invite_cohort("nps-free-day", "clicked-not-booked", channel="email")
        assert out["members"] == 40 and out["contacted_recently"] == 1
        assert out["invited"] + out["holdout"] == 39 and 4 <= out["holdout"] <= 18
        again = ws.surveys.invite_cohort("nps-free-day", "clicked-not-booked")
        assert again["already"] == 39 and again["invited"] == again["holdout"] == 0
        rows = ws.sql("""SELECT channel, count(*) AS n FROM survey_invitations
                         WHERE survey_id = 'nps-free-day' GROUP BY 1 ORDER BY 1""")
        assert {r["channel"] for r in rows} == {"email", "holdout"}
        # Hold-out members get no link and no message; e-mail ones are due now.
        due = ws.surveys.due("nps-free-day")
        assert len(due) == out["invited"] and all(d["email"] for d in due)
        with pytest.raises(NotFound):
            ws.surveys.invite_cohort("nps-free-day", "no-such-cohort")

    with bowknot.connect(tmp_path / "s.duckdb", survey_quiet_hours="", ) as ws:
        clicked_not_booked(ws, 20)
        ws.surveys.create("half", kind="nps", sample=0.5)
        out = ws.surveys.invite_cohort("half", "clicked-not-booked")
        assert out["invited"] + out["not_sampled"] == 20 and 3 <= out["invited"] <= 17


def test_quiet_hours_in_the_persons_time_zone(tmp_path: Path) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    tz = "Asia/Bangkok"
    hour = datetime.now(UTC).astimezone(ZoneInfo(tz)).hour
    quiet = f"{hour}-{(hour + 2) % 24}"  # it is quiet there right now
    with bowknot.connect(tmp_path / "w.duckdb", survey_quiet_hours=quiet) as ws:
        clicked_not_booked(ws, 3, timezone=tz)
        assert ws.persons.get("c0")["traits"]["timezone"] == tz
        ws.surveys.create("nps", kind="nps")
        out = ws.surveys.invite_cohort("nps", "clicked-not-booked", channel="email")
        assert out["invited"] == 3 and out["deferred_quiet_hours"] == 3
        assert ws.surveys.due("nps") == []
        inv = ws.sql("SELECT * FROM survey_invitations LIMIT 1")[0]
        local_after = inv["send_after"].replace(tzinfo=UTC).astimezone(ZoneInfo(tz))
        assert local_after.hour == (hour + 2) % 24 and local_after.minute == 0
        assert mailer.send_invitation(ws, inv)["reason"] == "quiet hours"


def test_cli_sends_a_cohort_by_email(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    from click.testing import CliRunner

    from bowknot.cli import main

    inbox, port = smtp
    db = str(tmp_path / "w.duckdb")
    with bowknot.connect(db) as ws:
        clicked_not_booked(ws, 5)
    env = {"BOWKNOT_SMTP_PORT": str(port), "BOWKNOT_SURVEY_QUIET_HOURS": ""}

    def run(*args: str) -> str:
        result = CliRunner(env=env).invoke(main, [*args, "--db", db], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("surveys", "create", "nps", "--kind", "nps")
    out = run("surveys", "send", "nps", "--cohort", "clicked-not-booked", "--json")
    assert '"delivered": 5' in out and len(inbox.messages) == 5
    assert "delivered 0" in run("surveys", "send-due")  # nothing twice
    assert len(inbox.messages) == 5


def test_experience_impact_shows_the_broken_promise_hurt_clickers(tmp_path: Path) -> None:
    """The seed's report on the demo story: the free-day promo sent people to closed
    locations; those who clicked and could not use it answer far worse than those who
    ignored it, while the healthy summer campaign shows no such gap."""
    from bowknot import demo
    from bowknot.imports import import_file
    from bowknot.surveys import campaign_impact

    with bowknot.connect(tmp_path / "demo.duckdb") as ws:
        f = tmp_path / "demo.jsonl"
        demo.write_jsonl(f, events=200_000, seed=7)
        import_file(ws, f)
        ws.build()
        bad = {g["group"]: g for g in campaign_impact(ws, "free-day-downtown")["groups"]}
        hurt = bad["clicked_not_converted"]
        assert hurt["answers"] > 200 and hurt["nps_high"] < bad["ignored"]["nps_low"]
        assert hurt["nps"] < bad["ignored"]["nps"] - 25
        themes = [t["why"] for t in hurt["themes"]]
        assert any("closed" in w or "shut" in w for w in themes[:2])
        good = {g["group"]: g for g in campaign_impact(ws, "summer-weekend")["groups"]}
        assert good["clicked_not_converted"]["nps"] > good["ignored"]["nps"]
        only = campaign_impact(ws, "free-day-downtown", survey_id="nps-free-day-downtown")
        assert {g["group"] for g in only["groups"] if g["answers"]} <= {
            "converted", "clicked_not_converted"}


def test_a_detractor_opens_a_follow_up_case_and_closing_it_is_measured(
        ws: bowknot.Workspace, client: TestClient, admin_token: str) -> None:
    pid = person(ws)
    ws.surveys.create("nps", kind="nps")
    ws.surveys.create("nps-later", kind="nps")
    promoter = ws.surveys.invite("nps", pid, trigger="promoter-check")
    assert ws.surveys.answer(promoter["token"], 10)["case_id"] is None  # the rule: nps<=6
    inv = ws.surveys.invite("nps", pid)
    out = ws.surveys.answer(inv["token"], 2, why="the location was closed")
    case_id = out["case_id"]
    assert case_id and ws.cases.list()[0]["case_id"] == case_id
    auth = {"Authorization": f"Bearer {admin_token}"}
    r = client.post(f"/v1/cases/{case_id}", headers=auth,
                    json={"owner": "sara@cx", "note": "Called: offered a voucher"})
    assert r.status_code == 200 and r.json()["owner"] == "sara@cx"
    closed = ws.cases.close(case_id, "voucher sent")
    assert closed["status"] == "closed" and not closed["overdue"]
    with pytest.raises(ValidationError, match="already closed"):
        ws.cases.close(case_id, "again")
    later = ws.surveys.invite("nps-later", pid)
    ws.surveys.answer(later["token"], 9)
    ws.build()
    events = [e["event"] for e in ws.persons.timeline(pid) if e["source"] == "cases"]
    assert events == ["case_opened", "case_assigned", "case_note", "case_closed"]
    m = ws.cases.metrics()
    assert m["cases"] == 1 and m["closed"] == 1 and m["closed_on_time"] == 1
    assert m["nps_after_follow_up"]["nps"] == 100.0
    assert client.get("/v1/cases?status=closed", headers=auth).json()[0]["case_id"] == case_id
    with pytest.raises(ValidationError, match="KIND<=N"):
        from bowknot.cases import parse_rule

        parse_rule("nps less than 6")


def test_pages_rendered_once_per_survey_and_language_are_each_links_own(
        ws: bowknot.Workspace) -> None:
    """A page is rendered once per survey, state and language and filled in with each
    link's tokens: exactly what rendering it for that link gives, and never stale."""
    from bowknot.server.survey_pages import SurveyPages

    pages = SurveyPages(ws)
    ws.surveys.create("nps", kind="nps", reasons=["price", "staff"],
                      translations={"fa": {"question": "چقدر ما را توصیه می‌کنید؟"}})
    links = [ws.surveys.invite("nps", person(ws, f"u{i}", f"u{i}@example.com"))["token"]
             for i in range(3)]

    def direct(token: str, state: str, lang: str, **extra: Any) -> str:
        pages._rendered.clear()
        return pages.page(token, state, ws.surveys.invitation(token)[1], (lang, None),
                          **extra)[1]

    cases = [("form", "en", {"chosen": 9}), ("form", "en", {"chosen": 3}),
             ("form", "fa", {"chosen": 9}), ("thanks", "th", {"ask_why": True}),
             ("thanks", "th", {"ask_why": False}), ("used", "en", {})]
    expected = {}
    for i, (state, lang, extra) in enumerate(cases):
        for token in links:
            expected[i, token] = direct(token, state, lang, **extra)
        # Each link's own tokens in its forms; a page without a form is the same for all.
        form = state == "form" or extra.get("ask_why")
        assert len({expected[i, t] for t in links}) == (3 if form else 1)
        assert (ws.surveys.csrf(links[0]) in expected[i, links[0]]) == bool(form)
    assert len(set(expected.values())) == 4 * 3 + 2
    pages._rendered.clear()
    for _ in range(2):  # the first renders, the others fill in
        for i, (state, lang, extra) in enumerate(cases):
            for token in links:
                inv = ws.surveys.invitation(token)[1]
                page = pages.page(token, state, inv, (lang, None), **extra)[1]
                assert page == expected[i, token]
    assert "چقدر ما را توصیه می‌کنید؟" in direct(links[0], "form", "fa")
    # The survey made again with other words: its pages say them at once.
    ws.surveys.create("nps", kind="nps", reasons=["price", "staff"],
                      translations={"fa": {"question": "پرسش تازه"}})
    inv = ws.surveys.invitation(links[1])[1]
    assert "پرسش تازه" in pages.page(links[1], "form", inv, ("fa", None))[1]
