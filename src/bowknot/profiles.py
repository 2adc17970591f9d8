"""Profiles: what is known about each person, kept up to date incrementally.

Every event belongs to the identifier that is its *primary* (see identity.py), so per-identifier
partial aggregates (``node_stats``, ``trait_stats``) are updated from new events alone, and a
person's profile is the merge of its identifiers' partials. All aggregates are associative
(sums, minima, maxima of (time, event key) pairs, sorted unions), so any order of arrival and
any split into builds gives the same profile as a full rebuild.

Trait strategies (setting ``profile_trait_strategies``): ``latest`` (the value of the latest
event, even empty), ``first``, ``latest_non_empty`` (ignores null, "", [] and {}), ``sum``
(numeric values added up) and ``union`` (the sorted distinct values, array elements
flattened). Ties in time are broken by the event key, so results never depend on arrival.

The ``profiles`` view adds the lifecycle stage: ``anonymous`` (no known identifier),
``known``, ``customer`` (a booking) and ``at_risk`` (a customer inactive for
``at_risk_days`` before the workspace's latest activity).
"""

from __future__ import annotations

import duckdb

from .errors import ValidationError
from .identity import RAW_JSON, RAW_TEXT, hinted, key_of, split_list, ts_of
from .settings import Settings
from .store.engine import run

STRATEGIES = ("latest", "first", "latest_non_empty", "sum", "union")

# Event time, then event key: a total order on events that does not depend on arrival.
ORDER_KEY = "(epoch_us(ts)::HUGEINT * 18446744073709551616 + key::HUGEINT)"
ORDER_KEY_EVENTS = ORDER_KEY.replace("(ts)", "(timestamp)")
_TOUCH = "STRUCT(ts TIMESTAMP, key UBIGINT, channel VARCHAR, campaign VARCHAR, event VARCHAR)"

DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS node_stats (
        node UBIGINT, events BIGINT, pages BIGINT, screens BIGINT, tracks BIGINT,
        identifies BIGINT, bookings BIGINT, revenue DECIMAL(38, 4),
        first_booking_at TIMESTAMP, last_booking_at TIMESTAMP, first_event_at TIMESTAMP,
        last_event_at TIMESTAMP, last_touch {_TOUCH}, last_touch_o HUGEINT)""",
    # Per identifier and trait, the partial its strategy needs: the value at the greatest
    # order ``o`` (event time then key as one HUGEINT, see ORDER_KEY; negated for ``first``,
    # so every strategy keeps a maximum), the sum, or the distinct values.
    f"""CREATE TABLE IF NOT EXISTS trait_stats (
        node UBIGINT, trait {RAW_TEXT}, o HUGEINT, v {RAW_JSON}, total DECIMAL(38, 4),
        vals VARCHAR[] USING COMPRESSION uncompressed)""",
    f"""CREATE TABLE IF NOT EXISTS persons (
        person_id {RAW_TEXT}, root_type {RAW_TEXT}, root_value {RAW_TEXT},
        first_seen TIMESTAMP, last_seen TIMESTAMP, known_at TIMESTAMP, identifiers INTEGER,
        cluster UBIGINT)""",
    f"""CREATE TABLE IF NOT EXISTS profile_features (
        person_id {RAW_TEXT}, events BIGINT, pages BIGINT, screens BIGINT, tracks BIGINT,
        identifies BIGINT, bookings BIGINT, revenue DECIMAL(38, 4),
        first_booking_at TIMESTAMP, last_booking_at TIMESTAMP, last_event_at TIMESTAMP,
        last_touch {_TOUCH})""",
    f"""CREATE TABLE IF NOT EXISTS person_traits (
        person_id {RAW_TEXT}, trait {RAW_TEXT}, value {RAW_JSON}, strategy {RAW_TEXT})""",
)


def strategies(settings: Settings) -> dict[str, str]:
    """``profile_trait_strategies`` parsed and checked."""
    out: dict[str, str] = {}
    default = settings.profile_default_strategy.strip()
    if default not in STRATEGIES:
        raise ValidationError(
            f"profile_default_strategy '{default}' is not one of {', '.join(STRATEGIES)}.",
            setting="profile_default_strategy")
    for part in split_list(settings.profile_trait_strategies):
        trait, _, strategy = part.partition("=")
        strategy = strategy.strip()
        if strategy not in STRATEGIES:
            raise ValidationError(
                f"profile_trait_strategies: '{part}' must be TRAIT=STRATEGY with a strategy "
                f"among {', '.join(STRATEGIES)}.", setting="profile_trait_strategies")
        out[trait.strip()] = strategy
    return out


def _in_list(text: str) -> str:
    items = split_list(text)
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in items) + "]"


# An event's traits: an identify's own, or any event's context.traits (over hinted events).
# An identify's context.timezone becomes the ``timezone`` trait (its own traits win): survey
# quiet hours need the person's local time.
TRAITS_COLUMN = """CASE WHEN type = 'identify' THEN
             CASE WHEN contains(context, '"timezone"') AND (context->'timezone') IS NOT NULL
                  THEN json_merge_patch(json_object('timezone', context->'timezone'),
                                        coalesce(traits, '{}'))
                  ELSE traits END
           WHEN _ct IS NOT NULL THEN _ct END"""

# Partial aggregates of a group of events (columns of ``event_columns``), and how partials
# combine: every one is associative, so builds can fold new events in any order. The first
# event's time is that of ``first`` (the build adds it per group, not per event).
# The group by of every event by its identifiers spends most of its time reaching each
# group's aggregate states in memory (millions of groups, events in no order), so every
# aggregate but the three that every event updates is FILTERed to the events it counts (a
# count_if or a sum over NULLs still visits each event's states), and pages, most events,
# are the rest of the count (20 M events, alternately on a loaded machine: 17.2-19.6 -> 13.1-15.9
# CPU-s for the pass, the same rows). type is never NULL.
EVENT_AGGREGATES = """count(*) AS events, max(ts) AS last_event_at, min(o) AS first,
    count(*) FILTER (WHERE type = 'screen') AS screens,
    count(*) FILTER (WHERE type = 'track') AS tracks,
    count(*) FILTER (WHERE type = 'identify') AS identifies,
    count(*) FILTER (WHERE type NOT IN ('page', 'screen', 'track', 'identify')) AS other_types,
    count(*) FILTER (WHERE booking) AS bookings, sum(revenue) FILTER (WHERE booking) AS revenue,
    min(ts) FILTER (WHERE booking) AS first_booking_at,
    max(ts) FILTER (WHERE booking) AS last_booking_at,
    max(o) FILTER (WHERE touch) AS last_touch_o,
    list({'o': o, 'tr': tr}) FILTER (WHERE tr IS NOT NULL) AS trs"""
# The columns of a group, in their order, from EVENT_AGGREGATES.
EVENT_GROUP_COLUMNS = """events, events - screens - tracks - identifies - other_types AS pages,
    screens, tracks, identifies, bookings, revenue, first_booking_at, last_booking_at,
    last_event_at, last_touch_o, first, trs"""
COMBINE_EVENTS = """sum(events) AS events, sum(pages) AS pages, sum(screens) AS screens,
    sum(tracks) AS tracks, sum(identifies) AS identifies, sum(bookings) AS bookings,
    sum(revenue) AS revenue, min(first_booking_at) AS first_booking_at,
    max(last_booking_at) AS last_booking_at, min(first_event_at) AS first_event_at,
    max(last_event_at) AS last_event_at, max(last_touch_o) AS last_touch_o"""
COMBINE = COMBINE_EVENTS + ", arg_max(last_touch, last_touch_o) AS last_touch"


TRAIT_COMBINE = """max(o) AS o, arg_max(v, o) AS v, sum(total) AS total,
    list_sort(list_distinct(flatten(list(vals) FILTER (WHERE vals IS NOT NULL)))) AS vals"""


def strategy_case(settings: Settings, trait: str) -> str:
    """SQL: the strategy of trait ``trait`` (a column) under the settings."""
    chosen = strategies(settings)
    default = settings.profile_default_strategy.strip()
    if not chosen:
        return f"'{default}'"
    cases = " ".join(f"WHEN '{t.replace(chr(39), chr(39) * 2)}' THEN '{s}'"
                     for t, s in chosen.items())
    return f"CASE {trait} {cases} ELSE '{default}' END"


def event_columns(settings: Settings) -> str:
    """Per-event columns the profile aggregates need (over identity.hinted events)."""
    booking = settings.booking_event.replace("'", "''")
    revenue = settings.revenue_property.replace("'", "''")
    return f"""type, coalesce(event = '{booking}', false) AS booking,
      CASE WHEN event = '{booking}'
           THEN TRY_CAST(properties->>'{revenue}' AS DECIMAL(38, 4)) END AS revenue,
      coalesce(list_contains({_in_list(settings.touch_events)}, event), false)
        OR (_ctx->'campaign') IS NOT NULL AS touch, {TRAITS_COLUMN} AS tr"""


def touch_struct(settings: Settings) -> str:
    """SQL over a hinted event: its touch (a touch event's, or a campaign in its context).

    Only computed for the few events that are some identifier's latest touch: the
    aggregates keep the touch's order key (``last_touch_o``) and :func:`update_stats`
    looks the winners up."""
    return f"""CASE WHEN list_contains({_in_list(settings.touch_events)}, event)
             THEN {{'ts': timestamp, 'key': key, 'channel': properties->>'channel',
                   'campaign': properties->>'campaign_id', 'event': event}}
           ELSE {{'ts': timestamp, 'key': key, 'channel': _ctx->'campaign'->>'source',
                  'campaign': _ctx->'campaign'->>'name', 'event': coalesce(event, type)}}
      END"""


def update_stats(con: duckdb.DuckDBPyConnection, settings: Settings, full: bool,
                 window: str) -> None:
    """Fold the new events (``b_tup``, from the events matching ``window``) into the
    per-identifier partials.

    Leaves (incremental builds) ``b_stat_nodes(node)``: identifiers whose aggregates
    changed (a full build rewrites every person anyway).
    """
    run(con, f"""CREATE OR REPLACE TEMP TABLE b_stats0 AS
        SELECT hash(ids[1].t, ids[1].v) AS node, {COMBINE_EVENTS} FROM b_tup GROUP BY 1""")
    # The latest touch of each identifier: only the winners' details are read.
    winners = f"SELECT {key_of('last_touch_o')} FROM b_stats0 WHERE last_touch_o IS NOT NULL"
    stats = f"""SELECT s.*, t.touch AS last_touch
        FROM b_stats0 s LEFT JOIN (
          SELECT key, timestamp, {touch_struct(settings)} AS touch
          FROM {hinted(f"(SELECT * FROM events WHERE {window} AND key IN ({winners}))")}) t
          ON t.key = {key_of('s.last_touch_o')} AND t.timestamp = {ts_of('s.last_touch_o')}"""
    run(con, f"CREATE OR REPLACE TEMP TABLE b_stats AS {stats}")
    if full:  # the partials start empty
        run(con, "INSERT INTO node_stats BY NAME SELECT * FROM b_stats")
    else:
        run(con, f"""CREATE OR REPLACE TEMP TABLE b_merged AS
            SELECT node, {COMBINE}
            FROM (SELECT * FROM node_stats SEMI JOIN b_stats USING (node)
                  UNION ALL BY NAME SELECT * FROM b_stats)
            GROUP BY node""")
        run(con, "DELETE FROM node_stats WHERE node IN (SELECT node FROM b_stats)")
        run(con, "INSERT INTO node_stats BY NAME SELECT * FROM b_merged")
    # Traits: one row per (identifier, trait) with its strategy's partial. Most identifiers
    # have one traits object (one identify call): their rows are partials as they are, and
    # only identifiers with several objects go through the aggregation (same result).
    union_vals = """CASE WHEN json_type(v) = 'ARRAY' THEN json_extract(v, '$[*]')::VARCHAR[]
                         WHEN v::VARCHAR IN ('null', '""') THEN [] ELSE [v::VARCHAR] END"""
    total = "CASE WHEN strategy = 'sum' THEN TRY_CAST(v::VARCHAR AS DECIMAL(38, 4)) END"
    traits = f"""WITH ev AS (
          SELECT hash(ids[1].t, ids[1].v) AS node, trs FROM b_tup WHERE len(trs) > 0),
        several AS (SELECT node FROM ev GROUP BY node HAVING sum(len(trs)) > 1),
        kv AS MATERIALIZED (
          SELECT node, CASE WHEN strategy = 'first' THEN -o ELSE o END AS o, trait, v,
                 strategy, grouped
          FROM (SELECT node, o, grouped, kv.key AS trait,
                       {strategy_case(settings, 'kv.key')} AS strategy,
                       coalesce(kv.value, 'null'::JSON) AS v
                -- one parse per traits object (a JSON null value comes back as NULL)
                FROM (SELECT node, t.o AS o, grouped, unnest(map_entries(try(json_transform(
                               t.tr, '"MAP(VARCHAR, JSON)"')))) AS kv
                      FROM (SELECT node, unnest(trs) AS t,
                                   node IN (SELECT node FROM several) AS grouped
                            FROM ev)))
          WHERE strategy <> 'latest_non_empty'
             OR v::VARCHAR NOT IN ('null', '""', '[]', '{{}}'))
        SELECT node, trait, o, v, {total} AS total,
               CASE WHEN strategy = 'union' THEN list_sort(list_distinct(flatten(
                 [{union_vals}]))) END AS vals
        FROM kv WHERE NOT grouped
        UNION ALL
        SELECT node, trait, max(o) AS o, arg_max(v, o) AS v, sum({total}) AS total,
               list_sort(list_distinct(flatten(list({union_vals})
                 FILTER (WHERE strategy = 'union')))) AS vals
        FROM kv WHERE grouped GROUP BY node, trait"""
    run(con, f"CREATE OR REPLACE TEMP TABLE b_tr AS {traits}")
    if full:
        run(con, "INSERT INTO trait_stats SELECT * FROM b_tr")
        return
    run(con, f"""CREATE OR REPLACE TEMP TABLE b_trm AS
        SELECT node, trait, {TRAIT_COMBINE}
        FROM (SELECT t.* FROM trait_stats t SEMI JOIN b_tr USING (node, trait)
              UNION ALL SELECT * FROM b_tr)
        GROUP BY node, trait""")
    run(con, """DELETE FROM trait_stats WHERE (node, trait) IN (
        SELECT (node, trait) FROM b_tr)""")
    run(con, "INSERT INTO trait_stats SELECT * FROM b_trm")
    run(con, """CREATE OR REPLACE TEMP TABLE b_stat_nodes AS
        SELECT node FROM b_stats UNION SELECT node FROM b_tr""")


def update_persons(con: duckdb.DuckDBPyConnection, settings: Settings, full: bool) -> int:
    """Rewrite persons, features and traits of every person touched by this build."""
    # A full build reads this build's own temporary copies of the tables it has just
    # rewritten (the same rows), not the persistent tables written back from the disk.
    node_stats, trait_stats = ("b_stats", "b_tr") if full else ("node_stats", "trait_stats")
    if full:  # every person
        for table in ("persons", "profile_features", "person_traits"):
            run(con, f"DELETE FROM {table}")
        run(con, "CREATE OR REPLACE TEMP VIEW b_pnodes AS SELECT * FROM b_new")
    else:
        run(con, """CREATE OR REPLACE TEMP TABLE b_pset AS
            SELECT person_id FROM b_persons
            UNION SELECT person_id FROM identities SEMI JOIN b_stat_nodes USING (node)
            UNION SELECT person_id FROM identities SEMI JOIN b_occ USING (node)""")
        for table in ("persons", "profile_features", "person_traits"):
            run(con, f"DELETE FROM {table} WHERE person_id IN (SELECT person_id FROM b_pset)")
        run(con, """CREATE OR REPLACE TEMP TABLE b_pnodes AS
            SELECT i.* FROM identities i SEMI JOIN b_pset USING (person_id)""")
    # Every person once (a full build: resolution's own list).
    persons = "b_roots" if full else "(SELECT DISTINCT person_id FROM b_pnodes)"
    if full:  # resolution has aggregated every person's row already
        written = run(con, """INSERT INTO persons SELECT person_id, root_type, root_value,
            first_seen, last_seen, known_at, identifiers, cluster FROM b_roots""")
    else:
        written = run(con, """INSERT INTO persons
            SELECT person_id,
                   any_value(id_type) FILTER (WHERE is_root) AS root_type,
                   any_value(id_value) FILTER (WHERE is_root) AS root_value,
                   min(first_seen), max(last_seen),
                   min(first_seen) FILTER (WHERE id_type <> 'anonymous_id'),
                   count(*), min(cluster)
            FROM b_pnodes GROUP BY person_id""")
    # A person whose traits come from one identifier (most) takes that identifier's
    # partials as they are; only persons with several go through the aggregation.
    run(con, f"""INSERT INTO person_traits
        WITH pn AS MATERIALIZED (
          SELECT i.person_id, i.node FROM b_pnodes i SEMI JOIN {trait_stats} t USING (node)),
        several AS (SELECT person_id FROM pn GROUP BY person_id HAVING count(*) > 1),
        tp AS MATERIALIZED (
          SELECT p.person_id, p.person_id IN (SELECT person_id FROM several) AS grouped, t.*
          FROM pn p JOIN {trait_stats} t USING (node))
        SELECT person_id, trait,
               CASE strategy WHEN 'sum' THEN total::DOUBLE::VARCHAR::JSON
                    WHEN 'union' THEN ('[' || array_to_string(vals, ',') || ']')::JSON
                    ELSE v END,
               strategy
        FROM (SELECT *, {strategy_case(settings, 'trait')} AS strategy
              FROM (SELECT person_id, trait, o, v, total,
                           list_sort(list_distinct(vals)) AS vals
                    FROM tp WHERE NOT grouped
                    UNION ALL
                    SELECT person_id, trait, {TRAIT_COMBINE}
                    FROM tp WHERE grouped GROUP BY person_id, trait))""")
    run(con, f"""INSERT INTO profile_features
        WITH f AS (
          SELECT i.person_id, sum(s.events) AS events, sum(s.pages) AS pages,
                 sum(s.screens) AS screens, sum(s.tracks) AS tracks,
                 sum(s.identifies) AS identifies, sum(s.bookings) AS bookings,
                 sum(s.revenue) AS revenue, min(s.first_booking_at) AS first_booking_at,
                 max(s.last_booking_at) AS last_booking_at,
                 max(s.last_event_at) AS last_event_at,
                 arg_max(s.node, s.last_touch_o) AS touch_node
          FROM b_pnodes i JOIN {node_stats} s USING (node) GROUP BY i.person_id)
        SELECT p.person_id, coalesce(f.events, 0), coalesce(f.pages, 0),
               coalesce(f.screens, 0), coalesce(f.tracks, 0), coalesce(f.identifies, 0),
               coalesce(f.bookings, 0), coalesce(f.revenue, 0), f.first_booking_at,
               f.last_booking_at, f.last_event_at, t.last_touch
        FROM {persons} p LEFT JOIN f USING (person_id)
        -- the latest touch is looked up from its identifier: an arg_max carrying the
        -- STRUCT cost as much as the rest of the aggregation (a touch is never NULL
        -- where its order key is not, and an order key belongs to one identifier)
        LEFT JOIN {node_stats} t ON t.node = f.touch_node""")
    return int(written[0][0])  # one row per person


# Every event with its person (as of the last build): the person of its primary identifier,
# which is its userId when valid, else its anonymousId, else (both blocked) the identifier
# recorded in event_fallback. The entry point of journey analytics.
PERSON_EVENTS_VIEW = """CREATE OR REPLACE VIEW person_events AS
    SELECT e.*, coalesce(u.person_id, a.person_id, f.person_id) AS person_id
    FROM events e
    LEFT JOIN (SELECT id_value, person_id FROM identities WHERE id_type = 'user_id') u
      ON u.id_value = e.user_id
    LEFT JOIN (SELECT id_value, person_id FROM identities WHERE id_type = 'anonymous_id') a
      ON a.id_value = e.anonymous_id
    LEFT JOIN (SELECT x.key, i.person_id FROM event_fallback x JOIN identities i USING (node)) f
      ON f.key = e.key"""


def create_view(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    run(con, PERSON_EVENTS_VIEW)
    days = int(settings.at_risk_days)
    run(con, f"""CREATE OR REPLACE VIEW profiles AS
        SELECT p.person_id, p.first_seen, p.last_seen, p.known_at, p.known_at IS NOT NULL
                 AS known,
               CASE WHEN p.known_at IS NULL THEN 'anonymous'
                    WHEN coalesce(f.bookings, 0) = 0 THEN 'known'
                    WHEN p.last_seen < (SELECT max(last_seen) FROM persons)
                                        - INTERVAL {days} DAY THEN 'at_risk'
                    ELSE 'customer' END AS lifecycle,
               f.* EXCLUDE (person_id), p.identifiers
        FROM persons p LEFT JOIN profile_features f USING (person_id)""")
