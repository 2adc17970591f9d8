"""Property: whatever arrives, every event is accounted for and nothing is lost.

For any mix of valid, invalid, duplicated and conflicting events, in any order:
accepted + duplicates + conflicts + failed == sent, the stored events are exactly the
accepted ones, and every refused one is kept in failed_events with its raw text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bowknot

ids = st.one_of(st.none(), st.just(""), st.text(min_size=1, max_size=6),
                st.integers(-5, 5), st.dictionaries(st.text(max_size=2), st.integers(),
                                                    max_size=1))
stamps = st.one_of(st.none(), st.just("not a time"),
                   st.datetimes().map(lambda d: d.isoformat() + "Z"))
events = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias",
                              "bogus", ""])},
    optional={
        "event": st.one_of(st.none(), st.text(max_size=5)),
        "userId": ids,
        "anonymousId": ids,
        "messageId": st.sampled_from(["m1", "m2", "m3", "x" * 101]),
        "groupId": ids,
        "previousId": ids,
        "timestamp": stamps,
        "sentAt": stamps,
        "properties": st.one_of(st.dictionaries(st.text(max_size=3), st.integers(),
                                                max_size=2), st.lists(st.integers(),
                                                                      max_size=2)),
    },
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(events, max_size=8), min_size=1, max_size=4))
def test_every_event_is_accounted_for(tmp_path_factory: Any,
                                      batches: list[list[dict[str, Any]]]) -> None:
    db: Path = tmp_path_factory.mktemp("prop") / "w.duckdb"
    with bowknot.connect(db) as ws:
        totals = {"accepted": 0, "duplicates": 0, "conflicts": 0, "failed": 0}
        for batch in batches:
            out = ws.ingest(batch)
            for k in totals:
                totals[k] += getattr(out, k)
        sent = sum(len(b) for b in batches)
        assert sum(totals.values()) == sent
        stored = ws.sql("SELECT count(*) AS n FROM events")[0]["n"]
        assert stored == totals["accepted"]
        kept = ws.sql("SELECT count(*) AS n, count(raw) AS raws FROM failed_events")[0]
        assert kept["n"] == totals["failed"] + totals["conflicts"] == kept["raws"]
        # Stored events satisfy the contract.
        bad = ws.sql("""SELECT count(*) AS n FROM events WHERE
            (user_id IS NULL AND anonymous_id IS NULL)
            OR (type = 'track' AND event IS NULL)
            OR (type = 'group' AND group_id IS NULL)
            OR (type = 'alias' AND previous_id IS NULL)
            OR length(message_id) > 100
            OR type NOT IN ('track', 'identify', 'page', 'screen', 'group', 'alias')""")
        assert bad[0]["n"] == 0
        # (source, messageId) is unique among stored events.
        dup = ws.sql("SELECT count(*) - count(DISTINCT (source, message_id)) AS n FROM events")
        assert dup[0]["n"] == 0
