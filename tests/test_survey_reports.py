"""What the answers say: NPS, CSAT and CES over time, by touchpoint, lifecycle stage and saved
cohort, and verbatims with the journey before them (issue 6)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import bowknot
from bowknot.errors import NotFound, ValidationError
from bowknot.surveys import nps

SURVEY = "nps-relationship"


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from bowknot import demo
    from bowknot.imports import import_file

    d = tmp_path_factory.mktemp("reports")
    f = d / "demo.jsonl"
    demo.write_jsonl(f, events=40_000, seed=7)
    with bowknot.connect(d / "w.duckdb") as ws:
        import_file(ws, f)
        ws.build()
        ws.surveys.create(SURVEY, kind="nps")
        ws.journeys.cohort("Campaign Clicked[campaign_id=free-day-downtown]",
                           "Booking Completed", within="3d", save_as="clicked-not-booked")
    yield d / "w.duckdb"


def answers(ws: bowknot.Workspace) -> list[dict[str, object]]:
    """The survey's answers read straight from the events (an independent path)."""
    return ws.sql("""SELECT person_id, timestamp, (properties->>'score')::INT AS score
                     FROM person_events WHERE event = 'survey_answered'
                       AND properties->>'survey_id' = ?""", [SURVEY])


def test_over_time_lifecycle_and_cohort(demo_db: Path) -> None:
    with bowknot.connect(demo_db) as ws:
        raw = answers(ws)
        overall = ws.surveys.report(SURVEY)
        assert overall["answers"] == len(raw) > 300
        assert overall["nps_low"] < overall["nps"] < overall["nps_high"]
        for period in ("day", "week", "month"):
            rows = ws.surveys.report(SURVEY, period)["rows"]
            assert sum(r["answers"] for r in rows) == len(raw)
            assert [r[period] for r in rows] == sorted(r[period] for r in rows)
        months = ws.surveys.report(SURVEY, "month")["rows"]
        assert len(months) >= 3
        july = [a for a in raw if a["timestamp"].month == 7]  # type: ignore[attr-defined]
        expected = nps(sum(a["score"] >= 9 for a in july),  # type: ignore[operator]
                       sum(a["score"] <= 6 for a in july), len(july))  # type: ignore[operator]
        assert {k: months[0][k] for k in expected} == expected

        stages = ws.surveys.report(SURVEY, "lifecycle")["rows"]
        assert {r["lifecycle"] for r in stages} <= {"anonymous", "known", "customer", "at_risk"}
        assert sum(r["answers"] for r in stages) == len(raw)
        customers = ws.sql("""SELECT count(*) AS n FROM person_events e JOIN profiles p
            USING (person_id) WHERE e.event = 'survey_answered' AND p.lifecycle = 'customer'
              AND e.properties->>'survey_id' = ?""", [SURVEY])[0]["n"]
        assert [r["answers"] for r in stages if r["lifecycle"] == "customer"] == [customers]

        cohort = ws.surveys.report(SURVEY, "cohort:clicked-not-booked")["rows"]
        members = {r["person_id"] for r in ws.sql(
            "SELECT person_id FROM cohort_members WHERE name = 'clicked-not-booked'")}
        inside = [r for r in cohort if r["cohort"] == "in clicked-not-booked"]
        assert inside[0]["answers"] == sum(a["person_id"] in members for a in raw) > 0
        assert sum(r["answers"] for r in cohort) == len(raw)
        with pytest.raises(NotFound):
            ws.surveys.report(SURVEY, "cohort:nope")
        with pytest.raises(ValidationError, match="touchpoint"):
            ws.surveys.report(SURVEY, "weekday")


def test_by_touchpoint_reuses_the_journey_analysis(demo_db: Path) -> None:
    with bowknot.connect(demo_db) as ws:
        rows = ws.surveys.report(SURVEY, "touchpoint", within="7d")["rows"]
        direct = ws.journeys.touchpoints(f"survey_answered[survey_id={SURVEY}]", within="7d",
                                         value="score").rows()
        assert [(r["channel"], r["campaign"], r["answers"], r["nps"]) for r in rows] == [
            (r["channel"], r["campaign"], r["answered"], r["nps"]) for r in direct]
        assert sum(r["answers"] for r in rows) == len(answers(ws))
        assert any(r["campaign"] == "free-day-downtown" for r in rows)
        touched = [r for r in rows if r["campaign"]]
        assert all(r["nps_low"] <= r["nps"] <= r["nps_high"] for r in touched)


def test_verbatims_come_with_the_journey_before_them(demo_db: Path) -> None:
    with bowknot.connect(demo_db) as ws:
        rows = ws.surveys.verbatims(SURVEY, limit=5, journey=3)
        assert len(rows) == 5
        assert [r["answered_at"] for r in rows] == sorted(
            (r["answered_at"] for r in rows), reverse=True)
        for r in rows:
            assert r["why"] and 1 <= len(r["journey"]) <= 3
            times = [j["time"] for j in r["journey"]]
            assert times == sorted(times) and times[-1] < r["answered_at"]
            # The last step shown is the person's last event before the answer.
            last = ws.sql("""SELECT max(timestamp) AS t FROM person_events
                             WHERE person_id = ? AND timestamp < ?""",
                          [r["person_id"], r["answered_at"]])[0]["t"]
            assert times[-1] == last
        with pytest.raises(ValidationError, match="limit"):
            ws.surveys.verbatims(SURVEY, limit=-1)


def test_csat_and_ces_mean_interval_top_two_and_a_later_why(ws: bowknot.Workspace) -> None:
    for i in range(3):
        ws.identify(f"u{i}", traits={"email": f"u{i}@example.com"})
    ws.build()
    ws.surveys.create("csat", kind="csat")
    ws.surveys.create("ces", kind="ces")
    for i, score in enumerate((5, 4, 2)):
        inv = ws.surveys.invite("csat", f"u{i}")
        ws.surveys.answer(inv["token"], score)
        if i == 2:
            ws.surveys.comment(inv["token"], "the queue at the desk")
        ws.surveys.answer(ws.surveys.invite("ces", f"u{i}")["token"], 7 - i)
    ws.build()
    csat = ws.surveys.report("csat", "day")
    assert csat["answers"] == 3 and csat["mean"] == pytest.approx(11 / 3, abs=1e-3)
    assert csat["top2"] == pytest.approx(2 / 3, abs=1e-4)
    assert csat["mean_low"] < csat["mean"] < csat["mean_high"] <= 5
    assert len(csat["rows"]) == 1 and csat["rows"][0]["answers"] == 3
    ces = ws.surveys.report("ces")
    assert ces["mean"] == 6.0 and ces["top2"] == pytest.approx(2 / 3, abs=1e-4)  # 6-7
    said = ws.surveys.verbatims("csat")
    assert [(r["score"], r["why"]) for r in said] == [(2, "the queue at the desk")]


def test_report_cli_and_api(demo_db: Path) -> None:
    from bowknot.cli import main
    from bowknot.server import create_app

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, [*args, "--db", str(demo_db)],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    weeks = list(csv.DictReader(io.StringIO(run("surveys", "report", SURVEY, "--by", "week",
                                                "--csv"))))
    assert weeks and set(weeks[0]) >= {"week", "answers", "nps", "nps_low", "nps_high"}
    data = json.loads(run("surveys", "report", SURVEY, "--by", "lifecycle", "--json"))
    assert data["by"] == "lifecycle" and data["rows"]
    assert "free-day-downtown" in run("surveys", "report", SURVEY, "--by", "touchpoint",
                                      "--csv")
    assert "nps" in run("surveys", "report", SURVEY)
    said = json.loads(run("surveys", "verbatims", SURVEY, "--limit", "2", "--json"))
    assert len(said) == 2 and said[0]["journey"]
    bad = CliRunner().invoke(main, ["surveys", "report", SURVEY, "--by", "colour", "--db",
                                    str(demo_db)])
    assert bad.exit_code != 0 and "cohort:NAME" in bad.output

    with bowknot.connect(demo_db) as ws, TestClient(create_app(ws)) as client:
        auth = {"Authorization": f"Bearer {ws.access.create_token('t')}"}
        r = client.get(f"/v1/surveys/{SURVEY}/report?by=month", headers=auth)
        assert r.status_code == 200 and r.json()["rows"][0]["month"].startswith("2026-")
        bad_by = client.get(f"/v1/surveys/{SURVEY}/report?by=colour", headers=auth)
        assert bad_by.status_code == 400
        v = client.get(f"/v1/surveys/{SURVEY}/verbatims?limit=1&journey=2", headers=auth)
        assert v.status_code == 200 and len(v.json()[0]["journey"]) <= 2
