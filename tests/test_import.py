"""File import: JSON Lines, CSV and Parquet; bad rows kept with their line numbers."""

from __future__ import annotations

import gzip
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bowknot
from bowknot.imports import ROW_GROUP_ROWS, _jsonl_chunks, import_file
from bowknot.store.writer import _PARSE_NICE


def jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def ev(i: int, **kw: object) -> str:
    return json.dumps({"type": "track", "event": "A", "userId": f"u{i}",
                       "messageId": f"m{i}", "timestamp": "2026-07-01T00:00:00Z", **kw})


def test_jsonl_bad_rows_keep_line_numbers(ws: bowknot.Workspace, tmp_path: Path) -> None:
    f = jsonl(tmp_path / "e.jsonl", [ev(1), "", "{broken", ev(2, event=""), ev(3), "[1,2]"])
    r = import_file(ws, f)
    assert (r.rows, r.accepted, r.failed) == (5, 2, 3)
    kept = {x["position"]: [c["code"] for c in x["reasons"]] for x in ws.failures.list()}
    assert kept == {3: ["invalid_json"], 4: ["missing_event"], 6: ["not_an_object"]}
    assert {x["file"] for x in ws.failures.list()} == {"e.jsonl"}


def test_reimport_is_idempotent(ws: bowknot.Workspace, tmp_path: Path) -> None:
    f = jsonl(tmp_path / "e.jsonl", [ev(i) for i in range(100)])
    assert import_file(ws, f).accepted == 100
    again = import_file(ws, f)
    assert (again.accepted, again.duplicates) == (0, 100)


def test_small_chunks_and_crlf_and_gzip(tmp_path: Path) -> None:
    lines = [ev(i) for i in range(500)]
    f = tmp_path / "e.jsonl.gz"
    f.write_bytes(gzip.compress("\r\n".join(lines).encode()))  # no final newline
    with bowknot.connect(tmp_path / "w.duckdb", import_chunk_bytes=1000) as ws:
        r = import_file(ws, f)
        assert (r.rows, r.accepted, r.failed) == (500, 500, 0)
        assert ws.sql("SELECT count(DISTINCT user_id) AS n FROM events")[0]["n"] == 500


def test_unicode_and_source_field(ws: bowknot.Workspace, tmp_path: Path) -> None:
    f = jsonl(tmp_path / "e.jsonl", [
        json.dumps({"type": "identify", "userId": "u1", "source": "crm",
                    "traits": {"name": "مریم", "city": "กรุงเทพ"}}, ensure_ascii=False)])
    assert import_file(ws, f).accepted == 1
    row = ws.sql("SELECT source, traits FROM events")[0]
    assert row["source"] == "crm" and "مریم" in row["traits"] and "กรุงเทพ" in row["traits"]


def test_csv_rows_become_spec_events(ws: bowknot.Workspace, tmp_path: Path) -> None:
    f = tmp_path / "e.csv"
    f.write_text(
        "type,event,userId,messageId,timestamp,revenue,context.ip\n"
        "track,Booking Completed,u1,c1,2026-07-01T10:00:00Z,12.5,10.0.0.1\n"
        "track,,u2,c2,2026-07-01T10:00:00Z,,\n"
        "track,Booking Completed,u3,c3,2026-07-01T10:00:00Z,7,10.0.0.3\n")
    r = import_file(ws, f)
    assert (r.accepted, r.failed) == (2, 1)
    row = ws.sql("SELECT properties, context FROM events WHERE message_id = 'c1'")[0]
    assert json.loads(row["properties"]) == {"revenue": 12.5}
    assert json.loads(row["context"]) == {"ip": "10.0.0.1"}
    [bad] = ws.failures.list()
    assert bad["position"] == 3 and bad["reasons"][0]["code"] == "missing_event"


def test_malformed_csv_line_is_kept(ws: bowknot.Workspace, tmp_path: Path) -> None:
    f = tmp_path / "e.csv"
    f.write_text("type,event,userId\ntrack,A,u1\ntrack,A,u2,extra,cells\ntrack,B,u3\n")
    r = import_file(ws, f)
    assert r.accepted == 2 and r.failed == 1
    [bad] = ws.failures.list()
    assert bad["position"] == 3 and "extra" in bad["raw"]


def test_parquet(ws: bowknot.Workspace, tmp_path: Path) -> None:
    f = tmp_path / "e.parquet"
    duckdb.sql(
        "SELECT 'track' AS type, 'A' AS event, 'u' || i AS userId, 'p' || i AS messageId, "
        "CASE WHEN i = 4 THEN NULL ELSE 'a' END AS anonymousId "
        "FROM range(10) t(i)").write_parquet(str(f))
    r = import_file(ws, f)
    assert (r.accepted, r.failed) == (10, 0)
    assert ws.sql("SELECT count(*) AS n FROM events WHERE anonymous_id IS NULL")[0]["n"] == 1


def test_unknown_format_says_what_to_do(ws: bowknot.Workspace, tmp_path: Path) -> None:
    f = tmp_path / "e.txt"
    f.write_text("x")
    with pytest.raises(bowknot.BowknotError, match="--format"):
        import_file(ws, f)


def test_a_chunk_larger_than_a_row_group_is_stored_whole(ws: bowknot.Workspace,
                                                         tmp_path: Path) -> None:
    # DuckDB 2.0.0 lost rows inserted into a temp table created empty in the same
    # transaction once they passed one row group (122,880 rows); the import must not.
    f = tmp_path / "big.jsonl"
    f.write_text("".join(f'{{"type":"track","event":"A","anonymousId":"a{i}"}}\n'
                         for i in range(130_000)))
    r = import_file(ws, f)
    assert (r.rows, r.accepted) == (130_000, 130_000)
    assert ws.sql("SELECT count(*) AS n FROM events")[0]["n"] == 130_000


def test_repeats_across_chunks_and_sessions(tmp_path: Path) -> None:
    # The writer's key index sees earlier chunks of the same file and, after reopening,
    # what is stored; a repeat is a duplicate and a changed payload a conflict either way.
    lines = [ev(i) for i in range(200)] + [ev(5), ev(7, event="B")]
    f = jsonl(tmp_path / "e.jsonl", lines)
    db = tmp_path / "w.duckdb"
    with bowknot.connect(db, import_chunk_bytes=1000) as ws:
        r = import_file(ws, f)
        assert (r.accepted, r.duplicates, r.conflicts, r.failed) == (200, 1, 1, 0)
        [kept] = ws.failures.list()
        assert kept["position"] == 202 and kept["reasons"][0]["code"] == "message_id_conflict"
    with bowknot.connect(db) as ws:
        again = import_file(ws, f)
        assert (again.accepted, again.duplicates, again.conflicts) == (0, 201, 1)
        assert ws.sql("SELECT count(*) AS n FROM events")[0]["n"] == 200
        ws.send("track", json.loads(ev(1)), source="import")  # live, within the window
        assert ws.sql("SELECT count(*) AS n FROM events")[0]["n"] == 200


@given(lines=st.lists(st.text(alphabet="ab{}\r ", max_size=40), max_size=30),
       chunk=st.integers(min_value=1, max_value=64), final_newline=st.booleans(),
       group=st.integers(min_value=1, max_value=4))
@settings(max_examples=300, deadline=None)
def test_line_splitting_matches_a_plain_reading(lines: list[str], chunk: int,
                                                final_newline: bool, group: int) -> None:
    # Lines come out whole whatever the chunk size (lines longer than a chunk too), with
    # their line numbers; blank lines (CRLF ones too) are skipped but still counted. A chunk
    # that is not the last holds whole groups of lines, or fewer lines than one group.
    data = "\n".join(lines) + ("\n" if final_newline and lines else "")
    chunks = list(_jsonl_chunks(io.BytesIO(data.encode()), chunk, group))
    got = [(int(n), text.rstrip("\r\n"))
           for arr, numbers, _ in chunks for n, text in zip(numbers, arr.to_pylist(), strict=True)]
    expected = [(i + 1, line.rstrip("\r")) for i, line in enumerate(data.split("\n"))
                if line not in ("", "\r")]
    assert got == expected
    assert all(len(arr) % group == 0 or len(arr) < group for arr, _, _ in chunks[:-1])
    assert sum(nbytes for _, _, nbytes in chunks) == len(data.encode())


def test_an_import_is_stored_in_full_row_groups(tmp_path: Path) -> None:
    # Chunks of whole row groups, appended in order, are stored as full row groups, so a
    # checkpoint has nothing to merge and rewrite (DuckDB's vacuum rewrote about half of
    # what a parallel insert wrote, at the cost of the insert itself).
    f = tmp_path / "e.jsonl"
    f.write_text("".join(f'{{"type":"track","event":"A","anonymousId":"a{i}"}}\n'
                         for i in range(2 * ROW_GROUP_ROWS + 1000)))
    storage = ("SELECT row_group_id, sum(count) AS n, list(block_id ORDER BY segment_id) "
               "AS blocks FROM pragma_storage_info('events') WHERE column_name = 'anonymous_id' "
               "AND segment_type <> 'VALIDITY' GROUP BY ALL ORDER BY row_group_id")
    with bowknot.connect(tmp_path / "w.duckdb", import_chunk_bytes=8 << 20) as ws:
        r = import_file(ws, f)
        assert r.accepted == 2 * ROW_GROUP_ROWS + 1000
        before = ws.sql(storage)
        assert [g["n"] for g in before] == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 1000]
        ws.store.connection.execute("CHECKPOINT").fetchall()
        after = ws.sql(storage)  # the full row groups were not written again
        assert after[:2] == before[:2] and after[2]["n"] == 1000


def test_an_import_is_parsed_two_chunks_ahead_of_its_commits(tmp_path: Path) -> None:
    # While a chunk commits, the next two are parsed (Writer._ahead), never more: the first
    # commit is held until two more chunks are parsed, then a while longer to see that no
    # third one is, although the importer has submitted it.
    f = jsonl(tmp_path / "e.jsonl", [ev(i) for i in range(6000)])
    with bowknot.connect(tmp_path / "w.duckdb", import_chunk_bytes=150_000) as ws:
        writer = ws.writer
        parsed = threading.Semaphore(0)
        count, seen = [0], []
        prepare, commit = writer._prepare, writer._commit

        def counted(con: object, group: list[Any]) -> Any:
            out = prepare(con, group)
            count[0] += 1
            parsed.release()
            return out

        def held(con: object, prep: Any) -> Any:
            if not seen:
                assert all(parsed.acquire(timeout=10) for _ in range(3))
                time.sleep(0.5)
                seen.append(count[0])
            return commit(con, prep)

        writer._prepare = counted  # type: ignore[method-assign]
        writer._commit = held  # type: ignore[method-assign]
        assert import_file(ws, f).accepted == 6000 and count[0] >= 5
        assert seen == [3]  # the chunk committing and two more


def test_chunk_buffers_are_used_again_only_when_no_array_holds_them() -> None:
    # A chunk's lines are an Arrow array over its buffer (zero copy). A buffer is filled
    # again once the arrays over it are gone (a new one costs page faults), never before.
    lines = [f'{{"n":{i},"pad":"{"x" * (i % 50)}"}}' for i in range(3000)]
    data = "".join(line + "\n" for line in lines).encode()
    kept = None
    seen, addresses = [], []
    for i, (arr, numbers, _) in enumerate(_jsonl_chunks(io.BytesIO(data), 4096, 1)):
        assert arr.to_pylist() == [lines[n - 1] + "\n" for n in numbers]
        seen.extend(numbers.tolist())
        addresses.append(arr.buffers()[2].address)
        if i == 2:
            kept = (arr, numbers)  # held on while the file is read on
    assert seen == list(range(1, 3001))
    assert kept is not None and kept[0].to_pylist() == [lines[n - 1] + "\n" for n in kept[1]]
    assert len(set(addresses)) < len(addresses) // 4  # buffers are used again
    assert addresses[2] not in addresses[3:]  # but not the one still held


def test_two_chunks_are_parsed_at_once_and_committed_in_file_order(tmp_path: Path) -> None:
    # Two prepare threads: while the first chunk's parse is held, the second is parsed
    # (fails with one thread), and the first is still committed first: the events keep the
    # file's order.
    f = jsonl(tmp_path / "e.jsonl", [ev(i) for i in range(6000)])
    with bowknot.connect(tmp_path / "w.duckdb", import_chunk_bytes=150_000) as ws:
        writer = ws.writer
        prepare = writer._prepare
        second = threading.Event()
        calls = [0]

        def held(con: object, group: list[Any]) -> Any:
            calls[0] += 1
            if calls[0] == 1:
                assert second.wait(10), "no second chunk was parsed during the first"
            elif calls[0] == 2:
                second.set()
            return prepare(con, group)

        writer._prepare = held  # type: ignore[method-assign]
        assert import_file(ws, f).accepted == 6000
        order = [r["message_id"] for r in ws.sql("SELECT message_id FROM events ORDER BY rowid")]
        assert order == [f"m{i}" for i in range(6000)]


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread priority: Linux")
def test_an_import_is_parsed_at_a_lower_priority_than_its_commits(tmp_path: Path) -> None:
    # The commit stage appends on one thread; the parse yields the cores to it. Live
    # requests are parsed at the normal priority.
    f = jsonl(tmp_path / "e.jsonl", [ev(i) for i in range(3000)])
    with bowknot.connect(tmp_path / "w.duckdb", import_chunk_bytes=150_000) as ws:
        writer = ws.writer
        prepare, commit = writer._prepare, writer._commit
        parsed: list[int] = []
        committed: list[int] = []

        def parse(con: object, group: list[Any]) -> Any:
            parsed.append(os.getpriority(os.PRIO_PROCESS, 0))
            return prepare(con, group)

        def append(con: object, prep: Any) -> Any:
            committed.append(os.getpriority(os.PRIO_PROCESS, 0))
            return commit(con, prep)

        writer._prepare = parse  # type: ignore[method-assign]
        writer._commit = append  # type: ignore[method-assign]
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert import_file(ws, f).accepted == 3000
        assert len(parsed) >= 3 and set(parsed) == {min(base + _PARSE_NICE, 19)} != {base}
        assert set(committed) == {base}
        parsed.clear()
        ws.track(event="B", user_id="u", message_id="live")
        assert parsed == [base]
