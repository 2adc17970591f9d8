"""The event contract (Segment spec), through the library API: every rule is tested."""

from __future__ import annotations

from typing import Any

import pytest

import bowknot
from bowknot import ValidationError


def stored(ws: bowknot.Workspace, where: str = "true") -> list[dict[str, Any]]:
    return ws.sql(f"SELECT * FROM events WHERE {where} ORDER BY received_at, message_id")


def reasons_of(out: Any) -> dict[int, list[str]]:
    return {f["index"]: f["reason_codes"] for f in out.failures}


def test_track_is_stored_with_spec_fields(ws: bowknot.Workspace) -> None:
    mid = ws.track("Booking Completed", user_id="u1", properties={"revenue": 99.5},
                   context={"ip": "10.0.0.1"})
    [row] = stored(ws)
    assert row["message_id"] == mid
    assert row["type"] == "track" and row["event"] == "Booking Completed"
    assert row["user_id"] == "u1" and row["anonymous_id"] is None
    assert '"revenue":99.5' in row["properties"]
    assert '"ip":"10.0.0.1"' in row["context"]


@pytest.mark.parametrize("call,payload,code", [
    ("track", {"event": "X"}, "missing_identity"),
    ("track", {"userId": "u"}, "missing_event"),
    ("track", {"userId": "u", "event": "  "}, "missing_event"),
    ("alias", {"userId": "u"}, "missing_previous_id"),
    ("group", {"userId": "u"}, "missing_group_id"),
    ("track", {"userId": "u", "event": "X", "messageId": "m" * 101}, "message_id_too_long"),
    ("track", {"userId": "u", "event": "X", "properties": {"x": "y" * 40_000}},
     "event_too_large"),
    ("track", {"userId": "u", "event": "X", "timestamp": "yesterday"}, "invalid_timestamp"),
    ("track", {"userId": {"a": 1}, "event": "X"}, "invalid_field_type"),
    ("track", {"userId": "u", "event": "X", "properties": [1, 2]}, "invalid_field_type"),
])
def test_invalid_calls_are_rejected_and_kept(ws: bowknot.Workspace, call: str,
                                             payload: dict[str, Any], code: str) -> None:
    with pytest.raises(ValidationError) as info:
        ws.send(call, payload)
    assert code in info.value.details["items"][0]["reason_codes"]
    assert stored(ws) == []
    [kept] = ws.failures.list()
    assert code in [r["code"] for r in kept["reasons"]]
    assert kept["raw"]  # the raw payload is kept for inspection and replay


def test_each_call_type_is_accepted(ws: bowknot.Workspace) -> None:
    ws.track("A", anonymous_id="a1")
    ws.identify("u1", anonymous_id="a1", traits={"email": "x@example.com"})
    ws.page("Home", anonymous_id="a1")
    ws.screen("Cars", user_id="u1")
    ws.group("acme", user_id="u1", traits={"plan": "gold"})
    ws.alias("u1", "a1")
    types = sorted(r["type"] for r in stored(ws))
    assert types == ["alias", "group", "identify", "page", "screen", "track"]


def test_message_id_is_assigned_when_missing(ws: bowknot.Workspace) -> None:
    out = ws.ingest([{"type": "track", "event": "A", "userId": "u"}])
    assert out.accepted == 1
    assert stored(ws)[0]["message_id"].startswith("bk-")


def test_clock_skew_is_corrected_and_raw_timestamps_kept(ws: bowknot.Workspace) -> None:
    # The device clock is 3 days behind; receivedAt is trusted for library/import loads.
    ws.ingest([{
        "type": "track", "event": "A", "userId": "u", "messageId": "m1",
        "originalTimestamp": "2026-06-28T10:00:00Z", "sentAt": "2026-06-28T10:00:05Z",
        "receivedAt": "2026-07-01T10:00:05.200Z",
    }])
    [row] = stored(ws)
    assert str(row["timestamp"]) == "2026-07-01 10:00:00.200000"
    assert str(row["original_timestamp"]) == "2026-06-28 10:00:00"
    assert str(row["sent_at"]) == "2026-06-28 10:00:05"
    assert str(row["received_at"]) == "2026-07-01 10:00:05.200000"


def test_timestamp_with_offset_is_stored_in_utc(ws: bowknot.Workspace) -> None:
    ws.ingest([{"type": "track", "event": "A", "userId": "u",
                "timestamp": "2026-07-01T12:00:00+03:30"}])
    assert str(stored(ws)[0]["timestamp"]) == "2026-07-01 08:30:00"


def test_resent_identical_event_is_a_noop(ws: bowknot.Workspace) -> None:
    event = {"type": "track", "event": "A", "userId": "u", "messageId": "m1",
             "timestamp": "2026-07-01T00:00:00Z"}
    assert ws.ingest([event]).accepted == 1
    # A retry carries a new sentAt; that is still the same event.
    again = ws.ingest([{**event, "sentAt": "2026-07-01T00:00:09Z"}, event])
    assert (again.accepted, again.duplicates, again.conflicts) == (0, 2, 0)
    assert len(stored(ws)) == 1
    assert ws.failures.list() == []


def test_reused_message_id_with_other_payload_is_kept_as_conflict(
        ws: bowknot.Workspace) -> None:
    ws.ingest([{"type": "track", "event": "A", "userId": "u", "messageId": "m1"}])
    out = ws.ingest([{"type": "track", "event": "B", "userId": "u", "messageId": "m1"}])
    assert (out.accepted, out.conflicts) == (0, 1)
    [conflict] = ws.failures.list(reason="message_id_conflict")
    assert '"event":"B"' in conflict["raw"].replace(" ", "")
    # Replay with a fresh id keeps both versions.
    result = ws.failures.replay(reason="message_id_conflict", new_message_ids=True)
    assert result["accepted"] == 1
    assert sorted(r["event"] for r in stored(ws)) == ["A", "B"]


def test_dedupe_is_per_source(ws: bowknot.Workspace) -> None:
    event = {"type": "track", "event": "A", "userId": "u", "messageId": "same"}
    ws.ingest([event], source="web")
    assert ws.ingest([event], source="app").accepted == 1
    assert len(stored(ws)) == 2


def test_duplicates_within_one_batch(ws: bowknot.Workspace) -> None:
    e = {"type": "track", "event": "A", "userId": "u", "messageId": "m"}
    out = ws.ingest([e, e, {**e, "event": "B"}])
    assert (out.accepted, out.duplicates, out.conflicts) == (1, 1, 1)


def test_bulk_ingest_keeps_going_past_bad_events(ws: bowknot.Workspace) -> None:
    events: list[dict[str, Any]] = [
        {"type": "track", "event": "A", "userId": f"u{i}"} for i in range(10)]
    events[3] = {"type": "track", "userId": "u3"}
    events[7] = {"type": "bogus", "userId": "u7"}
    out = ws.ingest(events, chunk=4)
    assert out.accepted == 8
    assert reasons_of(out) == {3: ["missing_event"], 7: ["invalid_type"]}


def test_replay_after_a_settings_fix(tmp_path: Any) -> None:
    db = tmp_path / "w.duckdb"
    big = {"type": "track", "event": "A", "userId": "u", "messageId": "big",
           "properties": {"blob": "x" * 2000}}
    with bowknot.connect(db, max_event_bytes=1000) as ws:
        assert ws.ingest([big]).failed == 1
    with bowknot.connect(db, max_event_bytes=4000) as ws:
        result = ws.failures.replay(reason="event_too_large")
        assert result == {**result, "replayed": 1, "accepted": 1, "failed": 0}
        assert ws.failures.list() == []
        assert len(stored(ws)) == 1
        # Replaying again finds nothing waiting.
        assert ws.failures.replay()["replayed"] == 0


def test_batch_context_is_merged_into_items(ws: bowknot.Workspace) -> None:
    from bowknot.store.writer import Request, Submission

    body = ('{"batch": [{"type": "track", "event": "A", "userId": "u", '
            '"context": {"ip": "1.1.1.1"}}], "context": {"library": {"name": "x"}, '
            '"ip": "9.9.9.9"}, "sentAt": "2026-07-01T00:00:10Z"}')
    ws.writer.write(Submission([Request("web", "batch", body)]))
    [row] = stored(ws)
    assert '"ip":"1.1.1.1"' in row["context"] and '"library"' in row["context"]
    assert str(row["sent_at"]) == "2026-07-01 00:00:10"


def test_unknown_setting_and_bad_value_say_what_to_fix(tmp_path: Any) -> None:
    with pytest.raises(bowknot.SettingError, match="Unknown setting"):
        bowknot.connect(tmp_path / "a.duckdb", max_event_byte=1)
    with pytest.raises(bowknot.SettingError, match="BOWKNOT_MAX_EVENT_BYTES"):
        bowknot.connect(tmp_path / "a.duckdb", max_event_bytes="lots")


def test_events_are_an_ibis_table(ws: bowknot.Workspace) -> None:
    ws.track("A", user_id="u1")
    ws.track("B", user_id="u1")
    events = ws.table("events")
    by_event = events.group_by("event").agg(n=events.count()).order_by("event").to_pyarrow()
    assert by_event.to_pylist() == [{"event": "A", "n": 1}, {"event": "B", "n": 1}]


def test_library_input_json_cannot_hold_is_refused_clearly(ws: bowknot.Workspace) -> None:
    big = {"type": "track", "event": "A", "userId": "u", "properties": {"n": 2**70}}
    assert ws.ingest([big]).accepted == 1  # any integer is valid JSON
    assert "1180591620717411303424" in stored(ws)[0]["properties"]
    with pytest.raises(ValidationError, match="cannot be written as JSON"):
        ws.track("A", user_id="u", properties={"x": object()})
    # JSON has no NaN: it is written as null, as orjson and browsers' JSON.stringify do.
    ws.track("B", user_id="u", properties={"x": float("nan")})
    assert '"x":null' in stored(ws, "event = 'B'")[0]["properties"]


def test_threads_starting_at_once_share_one_writer(ws: bowknot.Workspace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        writers = list(pool.map(lambda _: ws.writer, range(8)))
    assert len({id(w) for w in writers}) == 1
