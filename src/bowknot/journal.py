"""The journal: every person event as a narrow, typed table clustered by (person, time), for
journey analytics (issue 5).

Analyses used to read the ``person_events`` view, which joins every event to the identity map
and casts its JSON on each query; at 20 M events that cost more than the analysis itself
(benchmarks/journeys.py). The journal holds the same rows once, with the step label and the
touch fields (``channel``, ``campaign``, ``utm_campaign``) already extracted, sorted by
(person_id, ts, seq) so window functions over a person's events find them nearly in order,
and with two integer keys: ``pkey`` numbers the persons and ``ekey`` the step labels (both in
text order), so the analyses partition, join, sort and count distinct on integers.

It is brought up to date on demand, by the first analysis after a build (:func:`refresh`),
not by the build itself: written by every build it doubled the full build (a copy and sort of
every event) and tripled the incremental one (which has to read every event of each touched
person), slowing the pipeline and the collection API that shares the machine with it
(benchmarks/identity.py). The Spark engine's snapshot is a Parquet copy of this table, so both
engines read the same rows. Privacy deletes remove a person's rows with their events
(privacy.py).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from .store.engine import run

if TYPE_CHECKING:
    from .workspace import Workspace

TABLE = """CREATE TABLE IF NOT EXISTS journey_events (
        person_id VARCHAR, pkey BIGINT, ts TIMESTAMP, seq BIGINT, type VARCHAR, event VARCHAR,
        ekey INTEGER, properties VARCHAR, context VARCHAR, channel VARCHAR, campaign VARCHAR,
        utm_campaign VARCHAR)"""
# Two narrow companions, rewritten with it: ``journey_steps`` holds every event's step number,
# person number and time in (step, person, time) order, so a question about a few steps
# (a cohort, a funnel, retention) reads only their row groups (DuckDB's zone maps on ``ekey``
# skip the others) instead of scanning every event; ``journey_persons`` maps the person
# numbers to the person ids (one row per person) and ``journey_labels`` the step numbers to
# the labels (one row per label), so answers show ids and labels without a pass over the
# events. At 20 M events they cost about 4 s of the rewrite and take the cohort from about
# 0.35 s to 0.06 s (benchmarks/journeys.py).
STEPS = """CREATE TABLE IF NOT EXISTS journey_steps (
        ekey INTEGER, pkey BIGINT, ts TIMESTAMP, seq BIGINT)"""
PERSONS = "CREATE TABLE IF NOT EXISTS journey_persons (pkey BIGINT, person_id VARCHAR)"
LABELS = "CREATE TABLE IF NOT EXISTS journey_labels (ekey INTEGER, event VARCHAR)"
DDL: tuple[str, ...] = (TABLE, STEPS, PERSONS, LABELS)
COMPANIONS = {
    "journey_steps": (STEPS, "SELECT ekey, pkey, ts, seq FROM journey_events "
                             "ORDER BY ekey, pkey, ts, seq"),
    "journey_persons": (PERSONS, "SELECT pkey, any_value(person_id) FROM journey_events "
                                 "GROUP BY pkey ORDER BY pkey"),
    "journey_labels": (LABELS, "SELECT ekey, any_value(event) FROM journey_events "
                               "GROUP BY ekey ORDER BY ekey"),
}
# Written next to the build id the journal is as of: a journal written by code with another
# layout is rewritten (dropped and made again) by the next refresh, without a full build.
# Layout 3 added the companions.
LAYOUT = "3"
# Events sorted at once by a journal rewrite (see _rewrite).
PASS_ROWS = 30_000_000

# The columns (see docs/journeys.md): ``seq`` is the event key halved (it fits a signed
# BIGINT, which Spark has, and keeps the key's order); ``event`` the step label; ``channel``
# and ``campaign`` the touch's properties, else its UTM source and campaign name.
LABEL = """CASE WHEN type = 'track' THEN event
         WHEN type IN ('page', 'screen') AND name IS NOT NULL THEN type || ':' || name
         ELSE type END"""
COLUMNS = f"""person_id, timestamp AS ts, CAST(key // 2 AS BIGINT) AS seq, type,
    {LABEL} AS event,
    CAST(properties AS VARCHAR) AS properties, CAST(context AS VARCHAR) AS context,
    coalesce(json_extract_string(properties, '$.channel'),
             json_extract_string(context, '$.campaign.source')) AS channel,
    coalesce(json_extract_string(properties, '$.campaign_id'),
             json_extract_string(context, '$.campaign.name')) AS campaign,
    json_extract_string(context, '$.campaign.name') AS utm_campaign"""


def refresh(ws: Workspace) -> bool:
    """Rewrite the journal if a build ran since it was written; True when it did.

    Runs under the builder's lock, so it never sees a build half done. The rewrite sorts
    every event with its text, in ranges of persons past ``PASS_ROWS`` events: past
    ``memory_limit`` DuckDB spills to ``temp_directory``, and running out of room there says
    which settings give it room.
    """
    with ws.store.spill_errors():
        return _rewrite(ws)


def _rewrite(ws: Workspace) -> bool:
    with ws.builder.transaction() as con:
        last = str(run(con, "SELECT coalesce(max(build_id), 0) FROM builds")[0][0])
        found = run(con, "SELECT value FROM meta WHERE key = 'journal_build_id'")
        if found and found[0][0] == f"{last}/{LAYOUT}":
            return False
        run(con, "DROP TABLE IF EXISTS journey_events")
        run(con, TABLE)
        # ``pkey`` numbers the persons and ``ekey`` the step labels, both in text order, so
        # windows, joins and distinct counts run on integers instead of text; the rows are
        # in (person, time) order, which is also (pkey, ts, seq) order.
        run(con, """CREATE OR REPLACE TEMP TABLE j_p AS
            SELECT person_id, row_number() OVER (ORDER BY person_id) AS pkey, n
            FROM (SELECT person_id, count(*) AS n FROM person_events
                  WHERE person_id IS NOT NULL GROUP BY person_id)""")
        run(con, f"""CREATE OR REPLACE TEMP TABLE j_k AS
            SELECT event, CAST(row_number() OVER (ORDER BY event) AS INTEGER) AS ekey
            FROM (SELECT DISTINCT {LABEL} AS event FROM person_events
                  WHERE person_id IS NOT NULL)""")
        persons, events = run(con, "SELECT count(*), coalesce(sum(n), 0) FROM j_p")[0]
        # The sort carries every event's text (properties, context): at 100 M events one
        # sort spilled over 30 GB under a 16 GB memory_limit. Persons in consecutive pkey
        # ranges of about PASS_ROWS events each are sorted one range at a time and appended
        # in range order, which keeps the table in (pkey, ts, seq) order.
        passes = max(1, -(-events // PASS_ROWS))
        bounds = [persons * i // passes for i in range(passes + 1)]
        for low, high in itertools.pairwise(bounds):
            run(con, f"""INSERT INTO journey_events
                SELECT e.person_id, e.pkey, e.ts, e.seq, e.type, e.event, k.ekey, e.properties,
                       e.context, e.channel, e.campaign, e.utm_campaign
                FROM (SELECT {COLUMNS}, pkey FROM person_events JOIN j_p USING (person_id)
                      WHERE pkey > {low} AND pkey <= {high}) e
                LEFT JOIN j_k k USING (event)
                ORDER BY e.pkey, e.ts, e.seq""")
        for name, (ddl, select) in COMPANIONS.items():
            run(con, f"DROP TABLE IF EXISTS {name}")
            run(con, ddl)
            run(con, f"INSERT INTO {name} {select}")
        run(con, "DROP TABLE j_p")
        run(con, "DROP TABLE j_k")
        run(con, "DELETE FROM meta WHERE key = 'journal_build_id'")
        run(con, "INSERT INTO meta VALUES ('journal_build_id', ?)", [f"{last}/{LAYOUT}"])
        return True
