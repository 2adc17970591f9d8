"""Journey analytics: one suite, run on every engine (DuckDB and Spark in local mode).

Hand-made event sets with exact answers; the demo's planted truths are in
test_journeys_demo.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import bowknot
from bowknot import demo, journal
from bowknot.cli import main
from bowknot.errors import BowknotError, ValidationError
from bowknot.imports import import_file
from bowknot.journeys import Journeys, SparkEngine

Analyse = Callable[[bowknot.Workspace], Journeys]


@pytest.fixture(params=["duckdb", "spark"])
def analyse(request: pytest.FixtureRequest) -> Iterator[Analyse]:
    """``analyse(ws)``: the workspace's journeys on the engine under test (call it after
    ``ws.build()``: the Spark engine reads a snapshot)."""
    opened: list[Journeys] = []

    def make(ws: bowknot.Workspace) -> Journeys:
        if request.param == "duckdb":
            return ws.journeys
        j = Journeys(ws, SparkEngine(ws, session=request.getfixturevalue("spark_session")))
        opened.append(j)
        return j

    yield make
    for j in opened:
        j.close()


def at(hours: float) -> str:
    """2026-01-01 plus ``hours``, as the API's ISO text."""
    minutes = round(hours * 60)
    return f"2026-01-{1 + minutes // 1440:02d}T{minutes // 60 % 24:02d}:{minutes % 60:02d}:00Z"


def seed(ws: bowknot.Workspace, rows: list[tuple[str, str, float, dict[str, Any]]]) -> None:
    """Track events (user, event, hours after 2026-01-01, properties), then build."""
    ws.ingest({"type": "track", "userId": u, "event": e, "timestamp": at(h), "properties": p,
               "messageId": f"m{i}"} for i, (u, e, h, p) in enumerate(rows))
    ws.build()


def counts(result: Any, breakdown: str | None = None) -> list[int]:
    return [r["persons"] for r in result.rows() if r.get("breakdown") == breakdown]


# u1: A B . C (C too late for a 2 h window); u2: A C B (out of order); u3: A only;
# u4: B A B C (B before the entry does not count); u5: A X B C (X between A and B).
FUNNEL = [
    ("u1", "A", 0, {"c": "x"}), ("u1", "B", 1, {}), ("u1", "C", 3, {}),
    ("u2", "A", 0, {"c": "y"}), ("u2", "C", 0.5, {}), ("u2", "B", 1, {}),
    ("u3", "A", 0, {"c": "x"}),
    ("u4", "B", 0, {}), ("u4", "A", 0.5, {"c": "x"}), ("u4", "B", 1, {}), ("u4", "C", 2, {}),
    ("u5", "A", 0, {"c": "y"}), ("u5", "X", 0.25, {}), ("u5", "B", 0.5, {}),
    ("u5", "C", 1.5, {}),
]


def test_funnel_ordered_with_window_and_medians(ws: bowknot.Workspace,
                                                analyse: Analyse) -> None:
    seed(ws, FUNNEL)
    r = analyse(ws).funnel(["A", "B", "C"], within="2h")
    assert counts(r) == [5, 4, 2]  # u1's C is 3 h after A; u2's C is before its B
    rows = r.rows()
    assert rows[1]["conversion"] == pytest.approx(0.8)
    assert rows[2]["step_conversion"] == pytest.approx(0.5)
    # A -> B: u1 1 h, u2 1 h, u4 0.5 h, u5 0.5 h; B -> C: u4 1 h, u5 1 h
    assert rows[1]["median_seconds_from_previous"] == 2700
    assert rows[2]["median_seconds_from_previous"] == 3600
    assert r.conversion() == pytest.approx(0.4)
    assert r.to_pandas()["persons"].tolist() == [5, 4, 2]
    assert r.to_arrow().column("step").to_pylist() == [1, 2, 3]
    assert '"kind": "funnel"' in r.to_json()
    reached = r.persons(3)
    assert reached.num_rows == 2 and reached.column_names == [
        "person_id", "entered_at", "reached_at"]
    assert r.persons(2, dropped=True).num_rows == 2


def test_funnel_strict_any_order_and_any_entry(ws: bowknot.Workspace,
                                               analyse: Analyse) -> None:
    seed(ws, FUNNEL + [("u3", "A", 5, {}), ("u3", "B", 5.5, {}), ("u3", "C", 6, {})])
    j = analyse(ws)
    # strict: the next event after A must be B (u5 has X between; u2 has C)
    assert counts(j.funnel(["A", "B", "C"], within="2h", order="strict")) == [5, 2, 1]
    # any order: u2 did all three within 2 h; u1 two; u3's first entry (0 h) is alone
    assert counts(j.funnel(["A", "B", "C"], within="2h", order="any")) == [5, 4, 3]
    # any entry: u3's second A (5 h) goes all the way
    assert counts(j.funnel(["A", "B", "C"], within="2h", entry="any")) == [5, 5, 3]
    assert counts(j.funnel(["A", "B", "C"], within="2h")) == [5, 4, 2]


def test_funnel_filters_exclusions_and_breakdowns(ws: bowknot.Workspace,
                                                  analyse: Analyse) -> None:
    seed(ws, FUNNEL)
    ws.identify("u1", traits={"plan": "gold"}, timestamp=at(0))
    ws.identify("u2", traits={"plan": "gold"}, timestamp=at(0))
    ws.build()
    j = analyse(ws)
    assert counts(j.funnel(["A[c=x]", "B"], within="2h")) == [3, 2]
    assert counts(j.funnel([{"event": "A", "where": {"c": ["x", "y"]}}, "B"],
                           within="2h")) == [5, 4]
    # X between A and C drops u5's attempt
    assert counts(j.funnel(["A", "B", "C"], within="2h", exclusions=["X"])) == [4, 3, 1]
    assert counts(j.funnel(["A", "B", "C"], within="2h",
                           exclusions=[{"event": "X", "between": [2, 3]}])) == [5, 4, 2]
    by_c = j.funnel(["A", "B"], within="2h", breakdown="property:c")
    assert counts(by_c, "x") == [3, 2] and counts(by_c, "y") == [2, 2]
    by_plan = j.funnel(["A", "B"], within="2h", breakdown="trait:plan")
    assert counts(by_plan, "gold") == [2, 2] and counts(by_plan, None) == [3, 2]


def test_funnel_by_campaign_of_the_entry(ws: bowknot.Workspace, analyse: Analyse) -> None:
    seed(ws, [("u1", "Campaign Clicked", 0, {"campaign_id": "spring"}),
              ("u1", "Booking Completed", 10, {}),
              ("u2", "Campaign Clicked", 0, {"campaign_id": "fall"})])
    ws.page("Home", anonymous_id="a3", timestamp=at(0),
            context={"campaign": {"source": "email", "name": "spring"}})
    ws.build()
    r = analyse(ws).funnel(["Campaign Clicked", "Booking Completed"], within="1d",
                           breakdown="campaign")
    assert counts(r, "spring") == [1, 1] and counts(r, "fall") == [1, 0]
    r = analyse(ws).funnel(["page:Home", "Booking Completed"], breakdown="campaign")
    assert counts(r, "spring") == [1, 0]


def test_funnel_input_errors_say_how_to_fix(ws: bowknot.Workspace) -> None:
    j = ws.journeys
    with pytest.raises(ValidationError, match="at least 2"):
        j.funnel(["A"])
    with pytest.raises(ValidationError, match="'48h'"):
        j.funnel(["A", "B"], within="two days")
    with pytest.raises(ValidationError, match="KEY=VALUE"):
        j.funnel(["A[c]", "B"])
    with pytest.raises(ValidationError, match="order="):
        j.funnel(["A", "B"], order="sideways")
    with pytest.raises(ValidationError, match="breakdown"):
        j.funnel(["A", "B"], breakdown="colour")
    with pytest.raises(ValidationError, match="between"):
        j.funnel(["A", "B"], exclusions=[{"event": "X", "between": [2, 1]}])
    ws.track("A", user_id="u1")
    with pytest.raises(BowknotError, match="bowknot build"):
        j.funnel(["A", "B"])


def test_cohort_did_a_but_not_b_within_t_saved_by_name(ws: bowknot.Workspace,
                                                      analyse: Analyse) -> None:
    seed(ws, [
        ("u1", "Clicked", 0, {}), ("u1", "Booked", 24, {}),        # booked within 3 days
        ("u2", "Clicked", 0, {}), ("u2", "Booked", 100, {}),       # too late: in the cohort
        ("u3", "Clicked", 10, {}),                                  # never booked
        ("u4", "Booked", 0, {}), ("u4", "Clicked", 5, {}),         # booked before only
        ("u5", "Booked", 1, {}),                                    # never clicked
        ("u6", "Clicked", 0, {}), ("u6", "Clicked", 80, {}), ("u6", "Booked", 90, {}),
    ])
    ws.identify("u3", traits={"city": "Lisbon"}, timestamp=at(0))
    ws.build()
    r = analyse(ws).cohort("Clicked", "Booked", within="3d", traits=["city"],
                           save_as="clicked-not-booked")
    by_user = {row["person_id"]: row for row in r.rows()}
    users = {p["person_id"]: p["user_id"] for p in ws.sql(
        "SELECT person_id, root_value AS user_id FROM persons")}
    assert sorted(users[p] for p in by_user) == ["u2", "u3", "u4", "u6"]
    assert r.persons == 4 and r.extra["entered"] == 5 and r.converted_share == pytest.approx(0.2)
    lisbon = [row for row in r.rows() if users[row["person_id"]] == "u3"][0]
    assert lisbon["city"] == "Lisbon" and lisbon["entered_at"].startswith("2026-01-01T10:00")
    assert r.to_pandas().shape == (4, 3)

    saved = ws.journeys.cohorts.get("clicked-not-booked")
    assert saved["persons"] == 4 and saved["definition"]["did"] == "Clicked"
    assert sorted(ws.journeys.cohorts.members("clicked-not-booked").column(
        "person_id").to_pylist()) == sorted(by_user)
    ws.journeys.cohorts.delete("clicked-not-booked")
    assert ws.journeys.cohorts.list() == []


def test_cohort_errors_say_how_to_fix(ws: bowknot.Workspace) -> None:
    with pytest.raises(ValidationError, match="'3d'"):
        ws.journeys.cohort("A", "B", within="soon")
    with pytest.raises(ValidationError, match="lower-case"):
        ws.journeys.cohort("A", "B", within="3d", save_as="Bad Name!")
    with pytest.raises(bowknot.NotFound, match="bowknot cohort list"):
        ws.journeys.cohorts.members("missing")


def test_cli_funnel_and_cohort(tmp_path: Path) -> None:
    db = tmp_path / "cli.duckdb"
    with bowknot.connect(db) as ws:
        seed(ws, FUNNEL)
    args = ["--db", str(db)]
    out = cli("funnel", "A", "B", "C", "--within", "2h", *args)
    assert "funnel within 2h" in out and "0.4" in out
    data = json.loads(cli("funnel", "A", "B", "C", "--within", "2h", "--json", *args))
    assert [r["persons"] for r in data["rows"]] == [5, 4, 2]
    lines = cli("funnel", "A", "B", "--within", "2h", "--csv", *args).splitlines()
    assert lines[0].startswith("step,event,persons") and lines[2].startswith("2,B,4,")
    out = cli("cohort", "find", "A", "C", "--within", "2h", "--save", "a-no-c", *args)
    assert "2 of 5 persons" in out and "saved as 'a-no-c'" in out
    assert "a-no-c" in cli("cohort", "list", *args)
    assert len(json.loads(cli("cohort", "show", "a-no-c", "--json", *args))["members"]) == 2
    bad = CliRunner().invoke(main, ["funnel", "A", "B", "--within", "soon", *args])
    assert bad.exit_code == 1 and "'48h'" in bad.output


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_transitions_counts_only(tmp_path: Path) -> None:
    db = tmp_path / "cli.duckdb"
    with bowknot.connect(db) as ws:
        seed(ws, FUNNEL)
    args = ["--db", str(db), "--csv"]
    full = cli("transitions", "--keep-repeats", *args).splitlines()
    assert full[0] == "from,to,transitions,persons,probability_out,probability_in,median_seconds"
    fast = cli("transitions", "--keep-repeats", "--counts-only", *args).splitlines()
    assert fast[0] == "from,to,transitions,probability_out,probability_in"
    assert len(fast) == len(full) and fast[1].split(",")[:3] == full[1].split(",")[:3]
    assert "--counts-only" in cli("transitions", "--help")


def test_retention_triangle_by_week(analyse: Analyse, ws: bowknot.Workspace) -> None:
    # 2026-01-01 is a Thursday: week of Mon 2025-12-29. u1 books in weeks 0, 1 and 3;
    # u2 in week 0 and 2; u3 (first booking in week 1) in weeks 1 and 2.
    day = 24.0
    seed(ws, [("u1", "Booking Completed", 0, {}), ("u1", "Booking Completed", 5 * day, {}),
              ("u1", "Booking Completed", 19 * day, {}), ("u2", "Booking Completed", 1, {}),
              ("u2", "Booking Completed", 12 * day, {}), ("u3", "Booking Completed", 6 * day, {}),
              ("u3", "Booking Completed", 13 * day, {}), ("u3", "Page Seen", 20 * day, {})])
    result = analyse(ws).retention("Booking Completed", period="week", periods=4)
    rows = [(str(r["cohort"])[:10], r["period"], r["persons"], r["returned"])
            for r in result.rows()]
    assert rows == [("2025-12-29", 0, 2, 2), ("2025-12-29", 1, 2, 1), ("2025-12-29", 2, 2, 1),
                    ("2025-12-29", 3, 2, 1), ("2026-01-05", 0, 1, 1), ("2026-01-05", 1, 1, 1)]
    by = {(str(r["cohort"])[:10], r["period"]): r for r in result.rows()}
    assert by[("2025-12-29", 1)]["rate"] == 0.5
    assert by[("2025-12-29", 3)]["complete"] is False  # the data ends inside that week
    assert by[("2025-12-29", 1)]["complete"] is True
    monthly = analyse(ws).retention("Booking Completed", "Page Seen", period="month")
    assert [(r["period"], r["returned"]) for r in monthly.rows()] == [(0, 3)]
    with pytest.raises(ValidationError, match="day, week or month"):
        analyse(ws).retention("Booking Completed", period="year")


def test_cli_retention(tmp_path: Path) -> None:
    db = str(tmp_path / "w.duckdb")
    with bowknot.connect(db) as ws:
        seed(ws, [("u1", "Booking Completed", 0, {}), ("u1", "Booking Completed", 200, {})])
    out = CliRunner().invoke(main, ["retention", "Booking Completed", "--period", "week",
                                    "--csv", "--db", db])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0] == "cohort,period,persons,returned,complete,rate"
    assert len(out.output.splitlines()) == 3


def test_transition_graph_collapses_repeats(analyse: Analyse, ws: bowknot.Workspace) -> None:
    # u1: Checkout Checkout Payment Checkout Payment Done (a checkout loop);
    # u2: Checkout Payment Done.
    seed(ws, [("u1", "Checkout", 0, {}), ("u1", "Checkout", 0.1, {}), ("u1", "Payment", 0.5, {}),
              ("u1", "Checkout", 1.0, {}), ("u1", "Payment", 1.5, {}), ("u1", "Done", 2.5, {}),
              ("u2", "Checkout", 0, {}), ("u2", "Payment", 1.0, {}), ("u2", "Done", 2.0, {})])
    rows = {(r["from"], r["to"]): r for r in analyse(ws).transitions().rows()}
    assert set(rows) == {("Checkout", "Payment"), ("Payment", "Checkout"), ("Payment", "Done")}
    cp = rows[("Checkout", "Payment")]
    assert (cp["transitions"], cp["persons"], cp["probability_out"]) == (3, 2, 1.0)
    assert cp["probability_in"] == 1.0
    pc, pd = rows[("Payment", "Checkout")], rows[("Payment", "Done")]
    assert pc["probability_out"] == pytest.approx(1 / 3) and pd["probability_out"] == (
        pytest.approx(2 / 3))
    assert pd["median_seconds"] == pytest.approx(3600)
    raw = {(r["from"], r["to"]): r["transitions"]
           for r in analyse(ws).transitions(collapse=False).rows()}
    assert raw[("Checkout", "Checkout")] == 1
    # Counts only: the same counts and probabilities, no persons or medians.
    for collapse in (True, False):
        full = analyse(ws).transitions(collapse=collapse)
        fast = analyse(ws).transitions(collapse=collapse, counts_only=True)
        assert fast.table.column_names == ["from", "to", "transitions", "probability_out",
                                           "probability_in"]
        assert fast.params["counts_only"] is True
        assert fast.rows() == full.table.drop_columns(["persons", "median_seconds"]).to_pylist()
    assert {(r["from"], r["to"]): r["transitions"] for r in analyse(ws).transitions(
        collapse=False, counts_only=True).rows()} == raw
    with pytest.raises(ValidationError, match="counts_only"):
        analyse(ws).transitions(counts_only="yes")  # type: ignore[arg-type]
    top = analyse(ws).transitions(top=1).rows()
    assert [(r["from"], r["to"]) for r in top] == [("Checkout", "Payment")]
    only = analyse(ws).transitions(events=["Checkout", "Done"]).rows()
    assert {(r["from"], r["to"]) for r in only} == {("Checkout", "Done")}
    with pytest.raises(ValidationError):
        analyse(ws).transitions(top=0)


def test_transitions_read_in_stored_order_or_the_portable_way(tmp_path: Path) -> None:
    """DuckDB streams the journal in its stored (pkey, ts, seq) order instead of sorting it
    in windows: the same answers, bit for bit, in every mode; a journal read out of order is
    found and analysed the portable way."""
    demo.write_jsonl(tmp_path / "demo.jsonl", events=20_000, seed=5)
    ws = bowknot.connect(tmp_path / "ws.duckdb")
    import_file(ws, tmp_path / "demo.jsonl")
    ws.build()
    j = ws.journeys
    modes: list[dict[str, Any]] = [
        {}, {"collapse": False}, {"counts_only": True}, {"collapse": False, "counts_only": True},
        {"events": ["page:Home", "page:Cars", "Campaign Clicked", "Booking Completed"]}]
    streamed = [j.transitions(**m).table for m in modes]
    assert j.engine.stored_order  # checked once for this journal
    j.engine._in_order = False  # the portable windows
    portable = [j.transitions(**m).table for m in modes]
    assert [t.num_rows for t in streamed] == [t.num_rows for t in portable]
    assert [t.num_rows > 20 for t in streamed] == [True] * 4 + [False] and streamed[-1].num_rows
    assert all(a.equals(b) for a, b in zip(streamed, portable, strict=True))
    # A journal not stored in order (it is written sorted): each person's events backwards.
    # Streamed, every transition would be reversed.
    ws.store.connection.execute("""CREATE OR REPLACE TABLE journey_events AS
        SELECT * FROM journey_events ORDER BY pkey, ts DESC, seq DESC""")
    j = ws.journeys.on("duckdb")
    assert all(j.transitions(**m).table.equals(t)
               for m, t in zip(modes, portable, strict=True))
    assert not j.engine.stored_order
    ws.close()


def test_touchpoints_last_touch_before_each_outcome(analyse: Analyse,
                                                     ws: bowknot.Workspace) -> None:
    def touch(channel: str, campaign: str) -> dict[str, Any]:
        return {"channel": channel, "campaign_id": campaign}

    seed(ws, [
        ("u1", "Campaign Sent", 0, touch("email", "free-day")),
        ("u1", "Campaign Clicked", 1, touch("email", "free-day")),
        ("u1", "survey_answered", 5, {"score": 2}),
        ("u2", "Campaign Sent", 0, touch("sms", "deal")),
        ("u2", "Campaign Clicked", 2, touch("email", "free-day")),  # the last touch wins
        ("u2", "survey_answered", 3, {"score": 4}),
        ("u3", "Campaign Sent", 0, touch("sms", "deal")),
        ("u3", "survey_answered", 4, {"score": 10}),
        ("u4", "Campaign Sent", 0, touch("push", "summer")),
        ("u4", "survey_answered", 24 * 9, {"score": 9}),  # 9 days later: outside 7 days
    ])
    ws.ingest([{"type": "page", "userId": "u5", "name": "Home", "messageId": "utm",
                "timestamp": at(0), "context": {"campaign": {"source": "google",
                                                             "name": "brand"}}},
               {"type": "track", "userId": "u5", "event": "survey_answered", "messageId": "a5",
                "timestamp": at(1), "properties": {"score": 7}}])
    ws.build()
    rows = {(r["channel"], r["campaign"]): r for r in analyse(ws).touchpoints(
        "survey_answered", within="7d", value="score").rows()}
    assert rows[("email", "free-day")]["outcomes"] == 2
    assert rows[("email", "free-day")]["nps"] == -100.0
    assert rows[("email", "free-day")]["mean_value"] == 3.0
    assert rows[("sms", "deal")]["nps"] == 100.0
    assert rows[("google", "brand")]["outcomes"] == 1
    assert rows[(None, None)]["outcomes"] == 1  # u4's answer came too late after the touch
    plain = analyse(ws).touchpoints("survey_answered", within="1h").rows()
    assert "nps" not in plain[0]


def test_touchpoints_break_ties_in_time_by_seq(analyse: Analyse, ws: bowknot.Workspace) -> None:
    # Two channels of one campaign sent at the same moment (as campaign blasts are), and a
    # touch at the very time of the answer: the ASOF path (DuckDB) and the window path
    # (Spark) must pick the same touch, the one with the greater seq among the latest.
    seed(ws, [("u1", "Campaign Sent", 0, {"channel": "sms", "campaign_id": "deal"}),
              ("u1", "Campaign Sent", 0, {"channel": "email", "campaign_id": "deal"}),
              ("u1", "survey_answered", 2, {"score": 9}),
              ("u2", "Campaign Sent", 0, {"channel": "push", "campaign_id": "summer"}),
              ("u2", "Campaign Sent", 3, {"channel": "sms", "campaign_id": "summer"}),
              ("u2", "survey_answered", 3, {"score": 3})])
    journal.refresh(ws)  # read directly below, before any analysis brought it up to date
    latest = ws.sql("""SELECT arg_max(channel, seq) AS channel FROM journey_events
                       WHERE event = 'Campaign Sent' AND person_id = (SELECT person_id
                         FROM journey_events WHERE event = 'survey_answered' AND ts = (
                           SELECT min(ts) FROM journey_events WHERE event = 'survey_answered'))
                       GROUP BY ts""")[0]["channel"]
    rows = analyse(ws).touchpoints("survey_answered", within="1d", value="score").rows()
    assert sorted((r["channel"], r["nps"]) for r in rows) == sorted(
        [(latest, 100.0), ("sms", -100.0)])


def test_bowtie_report(analyse: Analyse, ws: bowknot.Workspace) -> None:
    utm = {"campaign": {"source": "google", "medium": "cpc", "name": "brand"}}
    events = [
        {"type": "page", "anonymousId": "a1", "name": "Home", "context": utm},
        {"type": "identify", "userId": "u1", "anonymousId": "a1"},
        {"type": "track", "userId": "u1", "event": "Booking Completed"},
        {"type": "track", "userId": "u1", "event": "Booking Completed"},
        {"type": "page", "anonymousId": "a2", "name": "Home", "context": utm},
        {"type": "identify", "userId": "u2", "anonymousId": "a2"},
        {"type": "page", "anonymousId": "a3", "name": "Home"},
        {"type": "page", "anonymousId": "a4", "name": "Home"},
        {"type": "identify", "userId": "u4", "anonymousId": "a4"},
        {"type": "track", "userId": "u4", "event": "Booking Completed"},
    ]
    ws.ingest([{**e, "messageId": f"b{i}", "timestamp": at(i)} for i, e in enumerate(events)])
    ws.build()
    rows = {r["channel"]: r for r in analyse(ws).bowtie().rows()}
    g, d = rows["google"], rows["direct"]
    assert (g["visitors"], g["known"], g["customers"], g["repeat_customers"]) == (2, 2, 1, 1)
    assert (d["visitors"], d["known"], d["customers"], d["repeat_customers"]) == (2, 1, 1, 0)
    assert g["customer_rate"] == 0.5 and d["known_rate"] == 0.5 and d["repeat_rate"] == 0.0
    total = analyse(ws).bowtie(by="none").rows()
    assert [(r["visitors"], r["known"], r["customers"]) for r in total] == [(4, 3, 2)]
    assert [r["month"] for r in analyse(ws).bowtie(by="month").rows()] == ["2026-01"]


def test_journeys_http_api(ws: bowknot.Workspace, admin_token: str) -> None:
    from fastapi.testclient import TestClient

    from bowknot.server import create_app

    seed(ws, [("u1", "Campaign Clicked", 0, {"campaign_id": "c1", "channel": "email"}),
              ("u1", "Booking Completed", 1, {}), ("u2", "Campaign Clicked", 0, {}),
              ("u2", "Page Seen", 30, {})])
    auth = {"Authorization": f"Bearer {admin_token}"}
    with TestClient(create_app(ws)) as client:
        assert client.get("/v1/journeys/bowtie").status_code == 401
        f = client.get("/v1/journeys/funnel", headers=auth, params={
            "steps": ["Campaign Clicked", "Booking Completed"], "within": "3d"})
        assert f.status_code == 200, f.text
        assert [r["persons"] for r in f.json()["rows"]] == [2, 1]
        c = client.post("/v1/journeys/cohorts", headers=auth, json={
            "did": "Campaign Clicked", "did_not": "Booking Completed", "within": "3d",
            "save_as": "no-booking"})
        assert c.status_code == 200 and [r["person_id"] for r in c.json()["rows"]] == [
            ws.persons.resolve("u2")]
        assert client.get("/v1/journeys/cohorts", headers=auth).json()[0]["name"] == (
            "no-booking")
        counts = client.get("/v1/journeys/transitions", headers=auth,
                            params={"collapse": "false", "counts_only": "true"})
        assert counts.status_code == 200 and counts.json()["params"]["counts_only"] is True
        assert [(r["from"], r["to"], r["transitions"]) for r in counts.json()["rows"]] == [
            ("Campaign Clicked", "Booking Completed", 1),
            ("Campaign Clicked", "Page Seen", 1)]
        assert "persons" not in counts.json()["rows"][0]
        for path, params in (("retention", {"start": "Campaign Clicked"}),
                             ("transitions", {}),
                             ("touchpoints", {"outcome": "Booking Completed"}),
                             ("bowtie", {"by": "none"})):
            r = client.get(f"/v1/journeys/{path}", headers=auth, params=params)
            assert r.status_code == 200 and r.json()["rows"], (path, r.text)
        bad = client.get("/v1/journeys/funnel", headers=auth,
                         params={"steps": ["A", "B"], "within": "soon"})
        assert bad.status_code == 400 and bad.json()["error"]["message"]


def test_attribution_models_and_exact_markov_removal(analyse: Analyse,
                                                      ws: bowknot.Workspace) -> None:
    def t(channel: str) -> dict[str, Any]:
        return {"channel": channel, "campaign_id": f"c-{channel}"}

    # u1: email sms -> booking; u2: email -> booking; u3: sms -> nothing;
    # u4: email email(repeat) -> nothing.
    seed(ws, [("u1", "Campaign Clicked", 0, t("email")), ("u1", "Campaign Clicked", 1, t("sms")),
              ("u1", "Booking Completed", 2, {}), ("u1", "Campaign Clicked", 3, t("push")),
              ("u2", "Campaign Clicked", 0, t("email")), ("u2", "Booking Completed", 1, {}),
              ("u3", "Campaign Clicked", 0, t("sms")),
              ("u4", "Campaign Clicked", 0, t("email")), ("u4", "Campaign Clicked", 1, t("email"))])
    result = analyse(ws).attribution("Booking Completed")
    rows = {r["channel"]: r for r in result.rows()}
    assert result.extra["conversions"] == 2
    assert (rows["email"]["first"], rows["email"]["last"], rows["email"]["linear"]) == (
        2.0, 1.0, 1.5)
    assert (rows["sms"]["first"], rows["sms"]["last"], rows["sms"]["linear"]) == (0.0, 1.0, 0.5)
    assert "push" not in rows  # after the conversion: not on any path
    # Chain: start->email 3/4, start->sms 1/4; email->sms 1/3, email->conv 1/3, email->null 1/3;
    # sms->conv 1/2, sms->null 1/2.  P(conv) = 3/4 (1/3 + 1/3 * 1/2) + 1/4 * 1/2 = 1/2.
    # Without email: 1/4 * 1/2 = 1/8 -> effect 3/4; without sms: 3/4 * 1/3 = 1/4 -> 1/2.
    assert rows["email"]["removal_effect"] == pytest.approx(0.75)
    assert rows["sms"]["removal_effect"] == pytest.approx(0.5)
    assert rows["email"]["markov"] == pytest.approx(2 * 0.75 / 1.25)
    assert sum(r["markov"] for r in rows.values()) == pytest.approx(2.0)
    by_campaign = {r["campaign"] for r in analyse(ws).attribution(
        "Booking Completed", by="campaign").rows()}
    assert by_campaign == {"c-email", "c-sms"}


def test_sankey_from_an_anchor(analyse: Analyse, ws: bowknot.Workspace) -> None:
    # u1: Home Checkout Checkout Payment Done; u2: Checkout Home; u3: Home Home (no anchor).
    seed(ws, [("u1", "Home", 0, {}), ("u1", "Checkout", 1, {}), ("u1", "Checkout", 2, {}),
              ("u1", "Payment", 3, {}), ("u1", "Done", 4, {}), ("u2", "Checkout", 0, {}),
              ("u2", "Home", 1, {}), ("u3", "Home", 0, {}), ("u3", "Home", 1, {})])
    rows = [(r["depth"], r["from"], r["to"], r["persons"])
            for r in analyse(ws).sankey("Checkout", depth=3).rows()]
    assert rows == [(0, "Checkout", "Home", 1), (0, "Checkout", "Payment", 1),
                    (1, "Home", "(end)", 1), (1, "Payment", "Done", 1), (2, "Done", "(end)", 1)]
    top1 = analyse(ws).sankey("Checkout", depth=1, top=1).rows()
    assert [(r["from"], r["to"], r["persons"]) for r in top1] == [
        ("Checkout", "Home", 1), ("(other)", "(other)", 1)]
    with pytest.raises(ValidationError):
        analyse(ws).sankey("Checkout", depth=0)
