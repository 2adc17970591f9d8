"""The journal (journey_events): the person events journey analytics read, kept by builds."""

from __future__ import annotations

from pathlib import Path

import bowknot
from bowknot import demo
from bowknot.imports import import_file

ROWS = "SELECT * FROM journey_events ORDER BY person_id, ts, seq"


def test_incremental_builds_keep_the_journal_equal_to_a_full_build(tmp_path: Path) -> None:
    demo.write_jsonl(tmp_path / "all.jsonl", events=20_000, seed=3)
    lines = (tmp_path / "all.jsonl").read_bytes().splitlines(keepends=True)
    cut = len(lines) * 2 // 3  # later loads bring new events of known and new persons
    for name, part in (("a", lines[:cut]), ("b", lines[cut:])):
        (tmp_path / f"{name}.jsonl").write_bytes(b"".join(part))
    ws = bowknot.connect(tmp_path / "ws.duckdb")
    import_file(ws, tmp_path / "a.jsonl")
    ws.build()
    before = ws.sql("SELECT count(*) AS n FROM journey_events")[0]["n"]
    import_file(ws, tmp_path / "b.jsonl")
    assert ws.build().kind == "incremental"
    incremental = ws.store.connection.execute(ROWS).fetchall()
    assert before < len(incremental)
    # Every attributed event once, with the person the view gives it.
    assert ws.sql("""SELECT count(*) AS n FROM person_events WHERE person_id IS NOT NULL
                     """)[0]["n"] == len(incremental)
    assert ws.build(full=True).kind == "full"
    assert ws.store.connection.execute(ROWS).fetchall() == incremental
    ws.close()


def test_the_journal_types_the_touch_fields(tmp_path: Path) -> None:
    ws = bowknot.connect(tmp_path / "ws.duckdb")
    ws.track("Campaign Clicked", user_id="u1", properties={
        "channel": "email", "campaign_id": "summer"}, timestamp="2026-01-01T00:00:00Z")
    ws.page("Deals", user_id="u1", context={"campaign": {"source": "google",
                                                         "name": "brand"}},
            timestamp="2026-01-02T00:00:00Z")
    ws.identify("u1", timestamp="2026-01-03T00:00:00Z")
    ws.build()
    rows = ws.sql("""SELECT event, channel, campaign, utm_campaign FROM journey_events
                     ORDER BY ts""")
    assert [tuple(r.values()) for r in rows] == [
        ("Campaign Clicked", "email", "summer", None), ("page:Deals", "google", "brand", "brand"),
        ("identify", None, None, None)]
    ws.close()
