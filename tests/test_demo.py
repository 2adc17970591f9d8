"""The demo story: deterministic, Segment-shaped, and carrying the truths it claims to plant.

The planted truths are measured from the generated events with DuckDB SQL, the way the product
will have to find them, and compared with `demo.TRUTHS` within sampling tolerance.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from bowknot import demo

T: dict[str, Any] = demo.TRUTHS
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

PARSE = """
CREATE TABLE ev AS SELECT source, payload->>'type' AS type, payload->>'event' AS event,
  payload->>'name' AS name, payload->>'messageId' AS message_id, payload->>'userId' AS uid,
  payload->>'anonymousId' AS aid, payload->'properties' AS props, payload->'traits' AS traits,
  payload->'context' AS ctx, (payload->>'originalTimestamp')::TIMESTAMP AS ot,
  (payload->>'sentAt')::TIMESTAMP AS st, (payload->>'receivedAt')::TIMESTAMP AS rt,
  rt - (st - ot) AS ts
FROM raw;
CREATE TABLE existing AS
  SELECT DISTINCT uid FROM ev WHERE type = 'identify' AND traits->>'customer_since' IS NOT NULL;
CREATE TABLE clicks AS  -- each person's first click per campaign
  SELECT props->>'campaign_id' AS campaign, uid, min(ts) AS t
  FROM ev WHERE event = 'Campaign Clicked' GROUP BY ALL;
"""


@pytest.fixture(scope="module")
def story() -> Iterator[duckdb.DuckDBPyConnection]:
    """200 k events (10 k persons) in DuckDB, parsed into the table `ev`."""
    con = duckdb.connect()
    con.register("raw", pa.concat_tables(demo.generate(200_000, seed=7)))
    con.execute(PARSE)
    con.register("locations", demo.locations())
    con.register("campaigns", demo.campaigns())
    yield con
    con.close()


def one(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


def payloads(events: int, seed: int) -> list[str]:
    return [p for t in demo.generate(events, seed) for p in t.column("payload").to_pylist()]


# --- determinism, size, shape ----------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert demo.write_jsonl(a, 10_000, seed=7) == demo.write_jsonl(b, 10_000, seed=7)
    demo.write_jsonl(c, 10_000, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert payloads(10_000, 7) == payloads(10_000, 7) != payloads(10_000, 8)


def test_a_gz_name_writes_the_same_lines_gzipped(tmp_path: Path) -> None:
    import gzip

    plain, zipped = tmp_path / "d.jsonl", tmp_path / "d.jsonl.gz"
    assert demo.write_jsonl(zipped, 10_000, seed=7) == demo.write_jsonl(plain, 10_000, seed=7)
    assert zipped.read_bytes()[:2] == b"\x1f\x8b"  # gzip's magic number
    assert zipped.stat().st_size < plain.stat().st_size / 3
    assert gzip.decompress(zipped.read_bytes()) == plain.read_bytes()


def test_row_count_is_within_ten_percent(story: duckdb.DuckDBPyConnection) -> None:
    assert abs(len(payloads(1_000, 7)) - 1_000) <= 100
    assert abs(len(payloads(10_000, 7)) - 10_000) <= 1_000
    assert abs(one(story, "SELECT count(*) FROM ev") - 200_000) <= 20_000


def test_chunks_continue_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "CHUNK_PERSONS", 100)  # 500 persons: 5 chunks
    chunks = list(demo.generate(10_000, seed=3))
    assert len(chunks) == 5
    ids = [json.loads(p)["messageId"] for t in chunks for p in t.column("payload").to_pylist()]
    assert ids == [f"demo-3-{n}" for n in range(len(ids))]
    users = {json.loads(p).get("userId") for p in chunks[4].column("payload").to_pylist()}
    users.discard(None)  # persons are numbered across chunks: the fifth has u_400 ... u_499
    assert users and all(400 <= int(u[2:]) < 500 for u in users)


def test_payloads_follow_the_segment_spec() -> None:
    tables = list(demo.generate(10_000, seed=7))
    assert all(t.schema.names == ["source", "payload"] for t in tables)
    assert all(t.schema.field("payload").type == pa.string() for t in tables)
    seen: set[str] = set()
    kinds = set()
    for source, text in zip(*(pa.concat_tables(tables).column(c).to_pylist()
                              for c in ("source", "payload")), strict=True):
        e = json.loads(text)
        assert source in T["sources"]
        assert "null" not in text, "absent keys are left out, not null"
        assert e["messageId"] not in seen
        seen.add(e["messageId"])
        assert e.get("userId") or e.get("anonymousId")
        assert all(ISO.match(e[k]) for k in ("originalTimestamp", "sentAt", "receivedAt"))
        assert e["context"]["library"] == {"name": "bowknot-demo", "version": "1.0"}
        assert e["context"]["timezone"].startswith("Europe/")
        kind = e["type"]
        kinds.add(kind if kind != "track" else e["event"])
        required = {"track": {"event", "properties"}, "page": {"name", "properties"},
                    "screen": {"name", "properties"}, "identify": {"traits", "userId"}}[kind]
        assert required <= e.keys(), text
        if kind == "page":
            assert source == "web" and e["context"]["page"]["path"] == e["properties"]["path"]
        if kind == "screen":
            assert source == "app" and e["context"]["device"]["type"] in ("ios", "android")
        if kind == "identify":
            assert {"email", "name", "phone", "city", "plan"} <= e["traits"].keys()
        if "campaign" in e["context"]:
            assert e["context"]["campaign"].keys() == {"source", "medium", "name"}
    assert kinds == {"page", "screen", "identify", *demo._Events.KINDS[3:]}


def test_jsonl_lines_are_the_payloads_with_their_source(tmp_path: Path) -> None:
    path = tmp_path / "demo.jsonl"
    rows = demo.write_jsonl(path, 10_000, seed=7)
    lines = path.read_text(encoding="utf-8").splitlines()
    table = pa.concat_tables(demo.generate(10_000, seed=7))
    assert rows == len(lines) == table.num_rows
    for line, source, payload in zip(lines[:500], table.column("source").to_pylist(),
                                     table.column("payload").to_pylist(), strict=False):
        assert json.loads(line) == {"source": source, **json.loads(payload)}
        assert next(iter(json.loads(line))) == "source"


def test_bad_input_says_what_to_pass() -> None:
    with pytest.raises(ValueError, match="events >= 1"):
        next(demo.generate(0))
    with pytest.raises(ValueError, match="seed >= 0"):
        next(demo.generate(10, seed=-1))


# --- time ------------------------------------------------------------------------------------
def test_corrected_timestamp_is_the_true_time_within_a_second() -> None:
    rows = []
    for frame, table in zip(demo._frames(20_000, 7), demo.generate(20_000, 7), strict=True):
        rows.append(pa.table({"payload": table.column("payload"),
                              "true_ms": frame.column("true_ms")}))
    con = duckdb.connect()
    con.register("t", pa.concat_tables(rows))
    err, skewed, wrong_raw = con.execute("""
        WITH x AS (SELECT true_ms,
            epoch_ms((payload->>'originalTimestamp')::TIMESTAMP) AS ot,
            epoch_ms((payload->>'sentAt')::TIMESTAMP) AS st,
            epoch_ms((payload->>'receivedAt')::TIMESTAMP) AS rt FROM t)
        SELECT max(abs(rt - (st - ot) - true_ms)),
               count(*) FILTER (abs(rt - st) > 1000 AND abs(rt - st) < 3 * 86400000),
               count(*) FILTER (abs(ot - true_ms) > 60000)
        FROM x""").fetchone() or (None, None, None)
    assert err is not None and err <= T["corrected_timestamp_tolerance_ms"]
    assert skewed > 100 and wrong_raw > 100  # the raw timestamps really are off


def test_skewed_devices_and_late_events(story: duckdb.DuckDBPyConnection) -> None:
    skewed = one(story, """
        SELECT avg((max_gap > 1000)::INT) FROM (
          SELECT aid, max(abs(epoch_ms(rt) - epoch_ms(st))) AS max_gap
          FROM ev WHERE source = 'web' GROUP BY aid)""")
    late = one(story, "SELECT avg((epoch_ms(rt) - epoch_ms(ts) > 3600000)::INT) FROM ev")
    assert skewed == pytest.approx(T["skewed_person_share"], abs=0.01)
    assert late == pytest.approx(T["late_event_share"], abs=0.004)


# --- the planted truths ----------------------------------------------------------------------
def test_none_of_the_promoted_locations_is_open(story: duckdb.DuckDBPyConnection) -> None:
    promoted, open_ = one(story, """
        SELECT count(*), count(*) FILTER (l.closed_at IS NULL OR l.closed_at > c.sent_at)
        FROM campaigns c, unnest(c.promoted_location_ids) AS u(id)
        JOIN locations l ON l.location_id = u.id
        WHERE c.campaign_id = 'free-day-downtown'""")
    fd = T["free_day_downtown"]
    assert (promoted, open_) == (fd["promoted"], fd["promoted_open"])
    closed = story.execute("SELECT location_id FROM locations WHERE closed_at IS NOT NULL "
                           "ORDER BY 1").fetchall()
    assert [r[0] for r in closed] == T["locations_closed"]
    landed = one(story, """
        SELECT list(DISTINCT replace(props->>'path', '/locations/', ''))
        FROM ev WHERE ctx->>'$.campaign.name' = 'free-day-downtown'""")
    assert set(landed) <= set(T["locations_closed"])  # clickers land on closed locations


def test_click_to_booking_within_three_days(story: duckdb.DuckDBPyConnection) -> None:
    rate = dict(story.execute("""
        SELECT c.campaign, avg((b.uid IS NOT NULL)::INT) FROM clicks c
        LEFT JOIN (SELECT DISTINCT c.campaign, c.uid FROM clicks c JOIN ev e ON e.uid = c.uid
                   AND e.event = 'Booking Completed'
                   AND e.ts BETWEEN c.t AND c.t + INTERVAL 3 DAY) b USING (campaign, uid)
        WHERE c.uid NOT IN (SELECT uid FROM existing) OR c.campaign <> 'new-customer-deal'
        GROUP BY ALL""").fetchall())
    free_day, summer = T["free_day_downtown"], T["summer_weekend"]
    assert rate["free-day-downtown"] == pytest.approx(free_day["click_to_booking_3d"], abs=0.015)
    assert rate["summer-weekend"] == pytest.approx(summer["click_to_booking_3d"], abs=0.05)
    assert rate["new-customer-deal"] == pytest.approx(
        T["new_customer_deal"]["new_customer_click_to_booking_3d"], abs=0.07)
    assert rate["summer-weekend"] > 4 * rate["free-day-downtown"]


def test_open_and_click_rates(story: duckdb.DuckDBPyConnection) -> None:
    for campaign, key in (("summer-weekend", "summer_weekend"),
                          ("free-day-downtown", "free_day_downtown")):
        sent, opened, clicked = one(story, f"""
            SELECT count(*) FILTER (event = 'Campaign Sent'),
                   count(*) FILTER (event = 'Campaign Opened'),
                   count(*) FILTER (event = 'Campaign Clicked')
            FROM ev WHERE props->>'campaign_id' = '{campaign}'""")
        assert opened / sent == pytest.approx(T[key]["open_rate"], abs=0.03)
        assert clicked / opened == pytest.approx(T[key]["click_of_opens"], abs=0.05)


NPS = "100 * (avg((score >= 9)::INT) - avg((score <= 6)::INT))"  # promoters % - detractors %


def test_nps_among_clickers(story: duckdb.DuckDBPyConnection) -> None:
    story.execute("""CREATE OR REPLACE TEMP TABLE answers AS
        SELECT props->>'survey_id' AS survey, (props->>'score')::INT AS score, uid, ts
        FROM ev WHERE event = 'survey_answered'""")
    free_day, summer = T["free_day_downtown"], T["summer_weekend"]
    mean = one(story, f"SELECT avg(score) FROM answers WHERE survey = '{free_day['survey_id']}'")
    assert mean == pytest.approx(free_day["nps_clickers_mean_score"], abs=0.5)
    nps = one(story, f"SELECT {NPS} FROM answers WHERE survey = '{summer['survey_id']}'")
    assert nps == pytest.approx(summer["nps_clickers"], abs=15)
    # answered by the clickers, after their click
    assert one(story, """SELECT count(*) FROM answers a LEFT JOIN clicks c ON c.uid = a.uid
        AND c.campaign = 'free-day-downtown' WHERE a.survey = 'nps-free-day-downtown'
        AND (c.t IS NULL OR a.ts < c.t)""") == 0


def test_existing_customers_nps_dips_after_the_new_customer_deal(
        story: duckdb.DuckDBPyConnection) -> None:
    deal = T["new_customer_deal"]
    sent_at = demo.campaigns().column("sent_at")[1].as_py()  # the new-customer deal
    rows = story.execute(f"""
        SELECT ts >= ? AS after, {NPS} FROM (
          SELECT (props->>'score')::INT AS score, ts FROM ev
          WHERE props->>'survey_id' = '{deal["survey_id"]}' AND uid IN (SELECT uid FROM existing))
        GROUP BY after ORDER BY after""", [sent_at.replace(tzinfo=None)]).fetchall()
    (_, before), (_, after) = rows
    assert before == pytest.approx(deal["nps_existing_before"], abs=10)
    assert after - before == pytest.approx(deal["nps_dip"], abs=12)


def test_only_existing_customers_are_refused_the_deal(story: duckdb.DuckDBPyConnection) -> None:
    refused, from_existing, reasons = one(story, """
        SELECT count(*), count(*) FILTER (uid IN (SELECT uid FROM existing)),
               list(DISTINCT props->>'reason')
        FROM ev WHERE event = 'Offer Refused'""")
    assert refused > 50 and from_existing == refused and reasons == ["not_eligible"]
    share = one(story, """
        SELECT count(DISTINCT r.uid) / count(DISTINCT c.uid) FROM clicks c
        LEFT JOIN ev r ON r.uid = c.uid AND r.event = 'Offer Refused'
        WHERE c.campaign = 'new-customer-deal' AND c.uid IN (SELECT uid FROM existing)""")
    assert share == pytest.approx(T["new_customer_deal"]["existing_clickers_refused"], abs=0.08)


def test_checkout_loop_share(story: duckdb.DuckDBPyConnection) -> None:
    # sessions: a device's page views with no gap over 30 minutes (corrected time)
    share = one(story, """
        WITH p AS (SELECT aid, ts, name, CASE WHEN ts - lag(ts) OVER w > INTERVAL 30 MINUTE
                          OR lag(ts) OVER w IS NULL THEN 1 ELSE 0 END AS starts
                   FROM ev WHERE type = 'page' WINDOW w AS (PARTITION BY aid ORDER BY ts)),
             s AS (SELECT aid, name, sum(starts) OVER (PARTITION BY aid ORDER BY ts) AS n FROM p),
             c AS (SELECT count(*) FILTER (name = 'Checkout') AS checkouts FROM s GROUP BY aid, n)
        SELECT avg((checkouts >= 2)::INT) FROM c WHERE checkouts > 0""")
    assert share == pytest.approx(T["checkout_loop_share"], abs=0.02)


def test_broken_promises_bring_tickets(story: duckdb.DuckDBPyConnection) -> None:
    share = one(story, """
        SELECT avg((t.uid IS NOT NULL)::INT) FROM clicks c LEFT JOIN (SELECT DISTINCT uid FROM ev
          WHERE event = 'Ticket Opened' AND props->>'topic' = 'closed_location') t USING (uid)
        WHERE c.campaign = 'free-day-downtown'""")
    assert share == pytest.approx(T["free_day_downtown"]["ticket_share_clickers"], abs=0.07)
    open_close = one(story, """SELECT count(*) FILTER (event = 'Ticket Opened')
        - count(DISTINCT props->>'ticket_id') FROM ev WHERE event LIKE 'Ticket %'""")
    assert open_close == 0  # every ticket is opened once; closings share its id


def test_the_knot(story: duckdb.DuckDBPyConnection) -> None:
    """Sign-ups browse anonymously, identify with both ids, and are known afterwards."""
    before, after, identified = one(story, """
        WITH knot AS (SELECT aid, uid, ts FROM ev WHERE type = 'identify'
                      AND traits->>'customer_since' IS NULL)
        SELECT count(*) FILTER (e.ts < k.ts AND e.uid IS NOT NULL),
               count(*) FILTER (e.ts > k.ts AND e.uid IS DISTINCT FROM k.uid),
               (SELECT count(*) FROM knot WHERE aid IS NOT NULL AND uid IS NOT NULL)
        FROM ev e JOIN knot k ON e.aid = k.aid WHERE e.source = 'web'""")
    assert before == 0 and after == 0 and identified > 1000
    emails = [r[0] for r in story.execute("SELECT traits->>'email' FROM ev WHERE type = 'identify'")
              .fetchall()]
    messy = [e for e in emails if e != e.strip().lower()]
    assert 0.1 < len(messy) / len(emails) < 0.3  # capitals and spaces, to test normalising


def test_some_answers_are_in_persian_and_thai(story: duckdb.DuckDBPyConnection) -> None:
    whys = {r[0] for r in story.execute("SELECT DISTINCT props->>'why' FROM ev "
                                    "WHERE event = 'survey_answered'").fetchall()}
    assert {"شعبه بسته بود", "สาขาปิด"} <= whys


def test_the_docs_name_every_planted_truth() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "demo.md").read_text()
    for key, value in T.items():
        assert key in doc, f"docs/demo.md does not explain TRUTHS[{key!r}]"
        for sub, number in (value.items() if isinstance(value, dict) else ()):
            if isinstance(number, int | float) and key not in ("segments", "acquisition"):
                assert sub in doc, f"docs/demo.md does not explain TRUTHS[{key!r}][{sub!r}]"
