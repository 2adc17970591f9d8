"""The journal (journey_events): the person events journey analytics read, rewritten by the
first analysis after a build."""

from __future__ import annotations

from pathlib import Path

import pytest

import bowknot
from bowknot import demo, journal
from bowknot.errors import BowknotError, SettingError
from bowknot.imports import import_file
from bowknot.store.engine import size_bytes

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
    assert journal.refresh(ws) and not journal.refresh(ws)  # written once per build
    before = ws.sql("SELECT count(*) AS n FROM journey_events")[0]["n"]
    import_file(ws, tmp_path / "b.jsonl")
    assert ws.build().kind == "incremental"
    # The build leaves it as it was; the first analysis brings it up to date.
    assert ws.sql("SELECT count(*) AS n FROM journey_events")[0]["n"] == before
    ws.journeys.funnel(["Campaign Sent", "Campaign Clicked"])
    incremental = ws.store.connection.execute(ROWS).fetchall()
    assert before < len(incremental)
    # Every attributed event once, with the person the view gives it.
    assert ws.sql("""SELECT count(*) AS n FROM person_events WHERE person_id IS NOT NULL
                     """)[0]["n"] == len(incremental)
    assert ws.build(full=True).kind == "full"
    assert journal.refresh(ws)
    assert ws.store.connection.execute(ROWS).fetchall() == incremental
    ws.close()


def test_a_journal_written_in_several_passes_is_the_same_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past PASS_ROWS events the rewrite sorts the persons range by range (a sort of every
    event with its text spilled over 30 GB at 100 M): the same rows in the same stored order,
    and the same companions."""
    demo.write_jsonl(tmp_path / "demo.jsonl", events=20_000, seed=5)
    ws = bowknot.connect(tmp_path / "ws.duckdb")
    import_file(ws, tmp_path / "demo.jsonl")
    ws.build()
    tables = ("journey_events", "journey_steps", "journey_persons", "journey_labels")

    def written() -> list[list[tuple[object, ...]]]:
        assert journal.refresh(ws)
        # As stored: no ORDER BY (the analyses read the journal in its stored order).
        return [ws.store.connection.execute(f"SELECT * FROM {t}").fetchall() for t in tables]

    once = written()
    ws.build(full=True)  # a new build id: the next refresh writes the journal again
    monkeypatch.setattr(journal, "PASS_ROWS", 3_000)
    passes = written()
    assert len(once[0]) > 15_000 and passes == once
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
    journal.refresh(ws)
    rows = ws.sql("""SELECT event, channel, campaign, utm_campaign FROM journey_events
                     ORDER BY ts""")
    assert [tuple(r.values()) for r in rows] == [
        ("Campaign Clicked", "email", "summer", None), ("page:Deals", "google", "brand", "brand"),
        ("identify", None, None, None)]
    ws.close()


def test_persons_and_steps_are_numbered_in_text_order(tmp_path: Path) -> None:
    ws = bowknot.connect(tmp_path / "ws.duckdb")
    for user, event, day in (("b", "Booked", 1), ("a", "Viewed", 2), ("c", "Booked", 3),
                             ("a", "Booked", 4)):
        ws.track(event, user_id=user, timestamp=f"2026-01-0{day}T00:00:00Z")
    ws.build()
    journal.refresh(ws)
    rows = ws.sql("SELECT person_id, pkey, event, ekey FROM journey_events")
    persons = {r["person_id"]: r["pkey"] for r in rows}
    steps = {r["event"]: r["ekey"] for r in rows}
    assert sorted(persons.values()) == [1, 2, 3]
    assert [persons[p] for p in sorted(persons)] == [1, 2, 3]
    assert [steps[e] for e in sorted(steps)] == [1, 2]
    # Stored in (person, time) order, which is (pkey, ts, seq) order.
    stored = ws.sql("SELECT pkey, ts, seq FROM journey_events")
    assert [(r["pkey"], r["ts"], r["seq"]) for r in stored] == sorted(
        (r["pkey"], r["ts"], r["seq"]) for r in stored)
    ws.close()


def test_a_journal_of_another_layout_is_rewritten(tmp_path: Path) -> None:
    ws = bowknot.connect(tmp_path / "ws.duckdb")
    ws.track("Booked", user_id="a", timestamp="2026-01-01T00:00:00Z")
    ws.build()
    assert journal.refresh(ws) and not journal.refresh(ws)
    # As an older version left it: the table without the numbers, as of the same build.
    con = ws.store.connection
    con.execute("DROP TABLE journey_events")
    con.execute("CREATE TABLE journey_events (person_id VARCHAR, ts TIMESTAMP, seq BIGINT)")
    con.execute("UPDATE meta SET value = split_part(value, '/', 1) "
                "WHERE key = 'journal_build_id'")
    assert journal.refresh(ws)
    assert ws.sql("SELECT pkey, ekey FROM journey_events") == [{"pkey": 1, "ekey": 1}]
    assert ws.journeys.funnel(["Booked", "Booked"]).table.column("persons").to_pylist() == [
        1, 0]
    ws.close()


def test_the_companions_hold_the_journals_rows_by_step(tmp_path: Path) -> None:
    from bowknot.journeys import Engine, Step

    ws = bowknot.connect(tmp_path / "ws.duckdb")
    for user, event, day, props in (
            ("b", "Booked", 1, {"city": "Oslo"}), ("a", "Viewed", 2, {}),
            ("c", "Booked", 3, {"city": "Rome"}), ("a", "Booked", 4, {"city": "Oslo"}),
            ("b", "Viewed", 5, {})):
        ws.track(event, user_id=user, properties=props, timestamp=f"2026-01-0{day}T00:00:00Z")
    ws.build()
    journal.refresh(ws)
    steps = ws.sql("SELECT ekey, pkey, ts, seq FROM journey_steps")
    assert [tuple(r.values()) for r in steps] == sorted(tuple(r.values()) for r in ws.sql(
        "SELECT ekey, pkey, ts, seq FROM journey_events"))  # stored by (step, person, time)
    assert ws.sql("SELECT * FROM journey_persons") == ws.sql(
        "SELECT DISTINCT pkey, person_id FROM journey_events ORDER BY pkey")
    assert ws.sql("SELECT * FROM journey_labels") == [
        {"ekey": 1, "event": "Booked"}, {"ekey": 2, "event": "Viewed"}]
    # The DuckDB engine reads a step from the companion; the same rows as the portable
    # filter of the journal (which it keeps for steps with property filters).
    duck = ws.journeys.engine
    for spec in ("Booked", "Viewed", "Never", "Booked[city=Oslo]"):
        step = Step.of(spec)
        fast = duck.to_arrow(duck.step_events(step).order_by(["pkey", "ts"]))
        portable = duck.to_arrow(Engine.step_events(duck, step).order_by(["pkey", "ts"]))
        assert fast.to_pylist() == portable.to_pylist()
        assert fast.num_rows == {"Booked": 3, "Viewed": 2, "Never": 0,
                                 "Booked[city=Oslo]": 2}[spec]
    ws.close()


def test_a_question_asked_again_after_a_build_sees_the_new_events(tmp_path: Path) -> None:
    # The DuckDB engine keeps a question's expression and SQL; the journal's rewrite after
    # a build must not leave it answering from the old rows.
    ws = bowknot.connect(tmp_path / "ws.duckdb")
    ws.track("Clicked", user_id="a", timestamp="2026-01-01T00:00:00Z")
    ws.track("Clicked", user_id="b", timestamp="2026-01-01T00:00:00Z")
    ws.build()
    first = ws.journeys.cohort("Clicked", "Booked", within="3d")
    assert first.persons == 2 and first.extra["entered"] == 2
    ws.track("Booked", user_id="a", timestamp="2026-01-02T00:00:00Z")
    ws.track("Clicked", user_id="c", timestamp="2026-01-02T00:00:00Z")
    ws.build()
    again = ws.journeys.cohort("Clicked", "Booked", within="3d")
    assert again.persons == 2 and again.extra["entered"] == 3
    assert again.table.column("person_id").to_pylist() == sorted(
        ws.persons.resolve(u) for u in ("b", "c"))
    ws.close()


def test_the_rewrite_spills_where_the_settings_say_and_no_further(tmp_path: Path) -> None:
    """temp_directory and max_temp_directory_size: the journal rewrite (a sort of every event)
    spills to the directory named, made if missing; past the size it stops with an error
    naming the settings instead of filling the disk."""
    demo.write_jsonl(tmp_path / "demo.jsonl", events=200_000, seed=3)
    ws = bowknot.connect(tmp_path / "ws.duckdb")
    import_file(ws, tmp_path / "demo.jsonl")
    ws.build()
    ws.close()
    spill = tmp_path / "big-disk" / "bowknot" / "spill"
    tight = {"memory_limit": "120MB", "threads": 1, "temp_directory": str(spill)}
    ws = bowknot.connect(tmp_path / "ws.duckdb", max_temp_directory_size="1MB", **tight)
    assert spill.is_dir()
    with pytest.raises(BowknotError) as found:
        journal.refresh(ws)
    assert found.value.code == "spill_space_exhausted"
    message = str(found.value)
    assert str(spill) in message and "976.5 KiB" in message
    assert "BOWKNOT_TEMP_DIRECTORY" in message and "BOWKNOT_MAX_TEMP_DIRECTORY_SIZE" in message
    ws.close()
    # With room, the same rewrite under the same memory limit goes through.
    ws = bowknot.connect(tmp_path / "ws.duckdb", max_temp_directory_size="1GB", **tight)
    assert journal.refresh(ws)
    assert ws.sql("SELECT count(*) AS n FROM journey_events")[0]["n"] > 150_000
    ws.close()
    # An analysis that spills (the Sankey's windows under 27 MB) says the same.
    tight["memory_limit"] = "27MB"
    for room, fits in (("1MB", False), ("1GB", True)):
        ws = bowknot.connect(tmp_path / "ws.duckdb", max_temp_directory_size=room, **tight)
        try:
            assert ws.journeys.sankey("page:Home").table.num_rows > 10
        except BowknotError as exc:
            assert not fits and exc.code == "spill_space_exhausted"
        else:
            assert fits
        ws.close()


def test_a_build_that_runs_out_of_spill_room_says_so_and_changes_nothing(
        tmp_path: Path) -> None:
    """A full build under a small memory_limit spills (its group-bys over every event); past
    max_temp_directory_size it stops with the same clear error and rolls back; with room the
    same build goes through."""
    demo.write_jsonl(tmp_path / "demo.jsonl", events=200_000, seed=4)
    ws = bowknot.connect(tmp_path / "ws.duckdb")
    import_file(ws, tmp_path / "demo.jsonl")
    ws.close()
    tight = {"memory_limit": "40MB", "threads": 1, "temp_directory": str(tmp_path / "spill")}
    ws = bowknot.connect(tmp_path / "ws.duckdb", max_temp_directory_size="1MB", **tight)
    with pytest.raises(BowknotError) as found:
        ws.build()
    assert found.value.code == "spill_space_exhausted"
    assert "BOWKNOT_MAX_TEMP_DIRECTORY_SIZE" in str(found.value)
    assert ws.sql("SELECT count(*) AS n FROM persons")[0]["n"] == 0
    ws.close()
    ws = bowknot.connect(tmp_path / "ws.duckdb", max_temp_directory_size="1GB", **tight)
    assert ws.build().persons_updated > 1000
    ws.close()


def test_the_block_allocator_keeps_what_the_setting_says(tmp_path: Path) -> None:
    """block_allocator_memory: 'auto' keeps up to half of memory_limit, a size keeps that
    much, '0' nothing; a size DuckDB cannot take is refused at connect, naming the setting."""
    def kept(ws: bowknot.Workspace) -> tuple[int, int]:
        row = ws.sql("SELECT current_setting('block_allocator_memory') AS kept, "
                     "current_setting('memory_limit') AS lim")[0]
        return size_bytes(row["kept"]), size_bytes(row["lim"])

    with bowknot.connect(tmp_path / "a.duckdb", memory_limit="64MB") as ws:
        size, limit = kept(ws)
        assert limit > 0 and abs(size - limit // 2) < 2 << 20
        ws.track("Clicked", user_id="a")
        assert ws.build().persons_updated == 1
    with bowknot.connect(tmp_path / "b.duckdb", block_allocator_memory="100MB") as ws:
        assert abs(kept(ws)[0] - 100_000_000) < 1 << 20
    with bowknot.connect(tmp_path / "c.duckdb", block_allocator_memory="0") as ws:
        assert kept(ws)[0] == 0
    with pytest.raises(SettingError, match="block_allocator_memory.*such as '4GB'"):
        bowknot.connect(tmp_path / "d.duckdb", block_allocator_memory="lots")
    bowknot.connect(tmp_path / "d.duckdb").close()  # not left locked


def test_spill_settings_that_cannot_work_are_refused_at_connect(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="max_temp_directory_size.*such as '50GB'"):
        bowknot.connect(tmp_path / "ws.duckdb", max_temp_directory_size="lots")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SettingError, match="temp_directory.*cannot make"):
        bowknot.connect(tmp_path / "ws.duckdb", temp_directory=str(tmp_path / "a-file" / "x"))
    # The workspace was not left locked by the refused connections.
    bowknot.connect(tmp_path / "ws.duckdb").close()
