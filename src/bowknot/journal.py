"""The journal: every person event as a narrow, typed table clustered by (person, time), kept
by the build for journey analytics (issue 5).

Analyses used to read the ``person_events`` view, which joins every event to the identity map
and casts its JSON on each query; at 20 M events that cost more than the analysis itself
(benchmarks/journeys.py). The build now writes the same rows once, with the step label and
the touch fields (``channel``, ``campaign``, ``utm_campaign``) already extracted:

* a full build rewrites the table sorted by (person_id, ts, seq), so window functions over a
  person's events find them nearly in order;
* an incremental build rewrites the rows of the persons it touched (``b_pset``) and drops
  those of persons that no longer exist (merged into another).

The Spark engine's snapshot is a Parquet copy of this table, so both engines read the same
rows. Privacy deletes remove a person's rows with their events (privacy.py).
"""

from __future__ import annotations

import duckdb

from .store.engine import run

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS journey_events (
        person_id VARCHAR, ts TIMESTAMP, seq BIGINT, type VARCHAR, event VARCHAR,
        properties VARCHAR, context VARCHAR, channel VARCHAR, campaign VARCHAR,
        utm_campaign VARCHAR)""",
)

# The columns (see docs/journeys.md): ``seq`` is the event key halved (it fits a signed
# BIGINT, which Spark has, and keeps the key's order); ``event`` the step label; ``channel``
# and ``campaign`` the touch's properties, else its UTM source and campaign name.
COLUMNS = """person_id, timestamp AS ts, CAST(key // 2 AS BIGINT) AS seq, type,
    CASE WHEN type = 'track' THEN event
         WHEN type IN ('page', 'screen') AND name IS NOT NULL THEN type || ':' || name
         ELSE type END AS event,
    CAST(properties AS VARCHAR) AS properties, CAST(context AS VARCHAR) AS context,
    coalesce(json_extract_string(properties, '$.channel'),
             json_extract_string(context, '$.campaign.source')) AS channel,
    coalesce(json_extract_string(properties, '$.campaign_id'),
             json_extract_string(context, '$.campaign.name')) AS campaign,
    json_extract_string(context, '$.campaign.name') AS utm_campaign"""


def update(con: duckdb.DuckDBPyConnection, full: bool) -> None:
    """Bring the journal up to date with persons (inside the build's transaction, after
    :func:`bowknot.profiles.update_persons`)."""
    if full:
        run(con, "DELETE FROM journey_events")
        run(con, f"""INSERT INTO journey_events
            SELECT {COLUMNS} FROM person_events WHERE person_id IS NOT NULL
            ORDER BY person_id, ts, seq""")
        return
    run(con, """DELETE FROM journey_events
        WHERE person_id IN (SELECT person_id FROM b_pset)
           OR person_id NOT IN (SELECT person_id FROM persons)""")
    run(con, f"""INSERT INTO journey_events
        SELECT {COLUMNS} FROM person_events
        WHERE person_id IN (SELECT person_id FROM b_pset)
        ORDER BY person_id, ts, seq""")
