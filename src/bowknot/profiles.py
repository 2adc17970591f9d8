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
from .identity import RAW_JSON, RAW_TEXT, hinted, key_of, split_list
from .settings import Settings
from .store.engine import run

STRATEGIES = ("latest", "first", "latest_non_empty", "sum", "union")

# Event time, then event key: a total order on events that does not depend on arrival.
ORDER_KEY = "(epoch_us(ts)::HUGEINT * 18446744073709551616 + key::HUGEINT)"
ORDER_KEY_EVENTS = ORDER_KEY.replace("(ts)", "(timestamp)")
_TOUCH = "STRUCT(ts TIMESTAMP, key UBIGINT, channel VARCHAR, campaign VARCHAR, event VARCHAR)"

# The numbers of the per-identifier and per-person tables are stored uncompressed too (like
# the text, see identity.RAW_TEXT): choosing their compression cost more than it saved on
# tables every full build rewrites (20 M events, insert by insert, alternately: node_stats
# 1.25-1.35 -> 0.91-1.21, profile_features 0.68-0.71 -> 0.52-0.55, persons 0.29-0.31 ->
# 0.21-0.23 CPU-s), for ~190 MB more on disk (74 -> 176, 53 -> 125, 78 -> 91 MB).
# trait_stats keeps DuckDB's choice: 0.03-0.1 CPU-s was not worth its 65 MB. A STRUCT
# cannot be forced, so ``last_touch`` keeps DuckDB's choice.
RAW = "USING COMPRESSION uncompressed"

DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS node_stats (
        node UBIGINT {RAW}, events BIGINT {RAW}, pages BIGINT {RAW}, screens BIGINT {RAW},
        tracks BIGINT {RAW}, identifies BIGINT {RAW}, bookings BIGINT {RAW},
        revenue DECIMAL(38, 4) {RAW}, first_booking_at TIMESTAMP {RAW},
        last_booking_at TIMESTAMP {RAW}, first_event_at TIMESTAMP {RAW},
        last_event_at TIMESTAMP {RAW}, last_touch {_TOUCH}, last_touch_o HUGEINT {RAW})""",
    # Per identifier and trait, the partial its strategy needs: the value at the greatest
    # order ``o`` (event time then key as one HUGEINT, see ORDER_KEY; negated for ``first``,
    # so every strategy keeps a maximum), the sum, or the distinct values.
    f"""CREATE TABLE IF NOT EXISTS trait_stats (
        node UBIGINT, trait {RAW_TEXT}, o HUGEINT, v {RAW_JSON}, total DECIMAL(38, 4),
        vals VARCHAR[] {RAW})""",
    f"""CREATE TABLE IF NOT EXISTS persons (
        person_id {RAW_TEXT}, root_type {RAW_TEXT}, root_value {RAW_TEXT},
        first_seen TIMESTAMP {RAW}, last_seen TIMESTAMP {RAW}, known_at TIMESTAMP {RAW},
        identifiers INTEGER {RAW}, cluster UBIGINT {RAW})""",
    f"""CREATE TABLE IF NOT EXISTS profile_features (
        person_id {RAW_TEXT}, events BIGINT {RAW}, pages BIGINT {RAW}, screens BIGINT {RAW},
        tracks BIGINT {RAW}, identifies BIGINT {RAW}, bookings BIGINT {RAW},
        revenue DECIMAL(38, 4) {RAW}, first_booking_at TIMESTAMP {RAW},
        last_booking_at TIMESTAMP {RAW}, last_event_at TIMESTAMP {RAW},
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
# A person's features from its identifiers' partials (``s``, node_stats rows).
FEATURES = """sum(s.events) AS events, sum(s.pages) AS pages, sum(s.screens) AS screens,
    sum(s.tracks) AS tracks, sum(s.identifies) AS identifies, sum(s.bookings) AS bookings,
    sum(s.revenue) AS revenue, min(s.first_booking_at) AS first_booking_at,
    max(s.last_booking_at) AS last_booking_at, max(s.last_event_at) AS last_event_at"""


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
        OR _cc IS NOT NULL AS touch, {TRAITS_COLUMN} AS tr"""


def touches(settings: Settings, events: str) -> str:
    """SQL: ``(o, touch)`` of ``events`` (hinted events rows): each one's order key and its
    touch (a touch event's, or a campaign in its context).

    Only run for the few events that are some identifier's latest touch: the aggregates
    keep the touch's order key (``last_touch_o``) and :func:`update_stats` looks the winners
    up. Each event's JSON is parsed once for both of its fields."""
    return f"""SELECT {ORDER_KEY_EVENTS} AS o,
        {{'ts': timestamp, 'key': key, 'channel': f[1], 'campaign': f[2],
          'event': coalesce(event, type)}} AS touch
      FROM (SELECT *, CASE
              WHEN coalesce(list_contains({_in_list(settings.touch_events)}, event), false)
              THEN json_extract_string(properties, ['$.channel', '$.campaign_id'])
              ELSE json_extract_string(_cc, ['$.source', '$.name'])
            END AS f FROM {events})"""


def update_stats(con: duckdb.DuckDBPyConnection, settings: Settings, full: bool,
                 window: str) -> None:
    """Fold the new events (``b_tup``, from the events matching ``window``) into the
    per-identifier partials.

    Leaves ``b_stats0`` (the new events' partials by identifier, without their touch),
    ``b_touch(o, touch)`` (those partials' latest touches by order key), which a full
    build's :func:`update_persons` reads, and in incremental builds ``b_tr`` (the new
    traits partials, before they are combined with the stored ones). The identifiers
    whose aggregates changed are all among ``b_occ``'s (the new events' identifiers), which
    is how an incremental :func:`update_persons` finds their persons.
    """
    run(con, f"""CREATE OR REPLACE TEMP TABLE b_stats0 AS
        SELECT hash(ids[1].t, ids[1].v) AS node, {COMBINE_EVENTS} FROM b_tup GROUP BY 1""")
    # The latest touch of each identifier: only the winners' details are read, kept by
    # their order key (``b_touch(o, touch)``, one row per winner; an order key is one
    # event's, so it names one identifier's touch).
    winners = f"SELECT {key_of('last_touch_o')} FROM b_stats0 WHERE last_touch_o IS NOT NULL"
    run(con, f"""CREATE OR REPLACE TEMP TABLE b_touch AS {touches(settings, hinted(
        f"(SELECT * FROM events WHERE {window} AND key IN ({winners}))"))}""")
    stats = """SELECT s.*, t.touch AS last_touch
        FROM b_stats0 s LEFT JOIN b_touch t ON t.o = s.last_touch_o"""
    if full:  # the partials start empty
        run(con, f"INSERT INTO node_stats BY NAME {stats}")
    else:
        run(con, f"CREATE OR REPLACE TEMP TABLE b_stats AS {stats}")
        run(con, f"""CREATE OR REPLACE TEMP TABLE b_merged AS
            SELECT node, {COMBINE}
            FROM (SELECT * FROM node_stats SEMI JOIN b_stats USING (node)
                  UNION ALL BY NAME SELECT * FROM b_stats)
            GROUP BY node""")
        run(con, "DELETE FROM node_stats WHERE node IN (SELECT node FROM b_stats)")
        run(con, "INSERT INTO node_stats BY NAME SELECT * FROM b_merged")
    # Traits: one row per (identifier, trait) with its strategy's partial. Most identifiers
    # have one traits object (one identify call): their rows are partials as they are, and
    # only identifiers with several objects go through the aggregation (same result). Each
    # side parses only its own objects, so the parsed rows are never materialised.
    union_vals = """CASE WHEN json_type(v) = 'ARRAY' THEN json_extract(v, '$[*]')::VARCHAR[]
                         WHEN v::VARCHAR IN ('null', '""') THEN [] ELSE [v::VARCHAR] END"""
    total = "CASE WHEN strategy = 'sum' THEN TRY_CAST(v::VARCHAR AS DECIMAL(38, 4)) END"

    def pairs(nodes: str) -> str:
        """(node, o, trait, v, strategy) of the traits objects of ``nodes``' events."""
        # An object's keys and its values in the same order ($.* is a JSON null as 'null').
        # Only objects with distinct keys, as a MAP(VARCHAR, JSON) would take them; an
        # array's values have no keys. 3-4x cheaper than json_transform to a MAP, whose
        # per-row checks cost more than the parse.
        return f"""SELECT node, CASE WHEN strategy = 'first' THEN -o ELSE o END AS o, trait, v,
                 strategy
          FROM (SELECT node, o, trait, {strategy_case(settings, 'trait')} AS strategy, v
                FROM (SELECT node, o, unnest(CASE WHEN ok THEN k END) AS trait,
                             unnest(CASE WHEN ok THEN v END) AS v
                      FROM (SELECT node, o, k, v, len(list_distinct(k)) = len(v) AS ok
                            FROM (SELECT node, t.o AS o, json_keys(t.tr) AS k,
                                         json_extract(t.tr, '$.*') AS v
                                  FROM (SELECT node, unnest(trs) AS t FROM ev
                                        WHERE {nodes})))))
          WHERE strategy <> 'latest_non_empty'
             OR v::VARCHAR NOT IN ('null', '""', '[]', '{{}}')"""
    traits = f"""WITH ev AS MATERIALIZED (
          SELECT hash(ids[1].t, ids[1].v) AS node, trs FROM b_tup WHERE len(trs) > 0),
        several AS (SELECT node FROM ev GROUP BY node HAVING sum(len(trs)) > 1)
        SELECT node, trait, o, v, {total} AS total,
               CASE WHEN strategy = 'union' THEN list_sort(list_distinct(flatten(
                 [{union_vals}]))) END AS vals
        FROM ({pairs("node NOT IN (SELECT node FROM several)")})
        UNION ALL
        SELECT node, trait, max(o) AS o, arg_max(v, o) AS v, sum({total}) AS total,
               list_sort(list_distinct(flatten(list({union_vals})
                 FILTER (WHERE strategy = 'union')))) AS vals
        FROM ({pairs("node IN (SELECT node FROM several)")}) GROUP BY node, trait"""
    if full:
        # The partials start empty: written as they are, and update_persons reads them back
        # (a temporary copy first, then its insert, cost 0.2-0.4 CPU-s more at 3.2 M rows).
        run(con, f"INSERT INTO trait_stats {traits}")
        return
    run(con, f"CREATE OR REPLACE TEMP TABLE b_tr AS {traits}")
    # The partials are found by their identifier first: the scan then filters the integer
    # column, before any trait name is compared (1 % new events after 20 M, 37.7 k partials:
    # the combine 0.160 -> 0.115 and the delete 0.096 -> 0.054 CPU-s, best of three).
    run(con, f"""CREATE OR REPLACE TEMP TABLE b_trm AS
        SELECT node, trait, {TRAIT_COMBINE}
        FROM (SELECT t.* FROM trait_stats t SEMI JOIN b_tr USING (node, trait)
              WHERE t.node IN (SELECT node FROM b_tr)
              UNION ALL SELECT * FROM b_tr)
        GROUP BY node, trait""")
    run(con, """DELETE FROM trait_stats WHERE node IN (SELECT node FROM b_tr)
        AND (node, trait) IN (SELECT (node, trait) FROM b_tr)""")
    run(con, "INSERT INTO trait_stats SELECT * FROM b_trm")


def update_persons(con: duckdb.DuckDBPyConnection, settings: Settings, full: bool) -> int:
    """Rewrite persons, features and traits of every person touched by this build.

    A full build reads resolution's ``b_final`` (node, grp) and ``b_roots`` (grp,
    person_id, ...: one row per person), :func:`update_stats`' ``b_stats0`` and ``b_touch``,
    and ``trait_stats`` as it has just written it."""
    if full:  # every person
        for table in ("persons", "profile_features", "person_traits"):
            run(con, f"DELETE FROM {table}")
    else:
        # Every identifier whose partials changed (b_stats, b_tr) is the primary identifier
        # of some new events, so it is one of b_occ's: one semi join covers both.
        run(con, """CREATE OR REPLACE TEMP TABLE b_pset AS
            SELECT person_id FROM b_persons
            UNION SELECT person_id FROM identities SEMI JOIN b_occ USING (node)""")
        for table in ("persons", "profile_features", "person_traits"):
            run(con, f"DELETE FROM {table} WHERE person_id IN (SELECT person_id FROM b_pset)")
        run(con, """CREATE OR REPLACE TEMP TABLE b_pnodes AS
            SELECT i.* FROM identities i SEMI JOIN b_pset USING (person_id)""")
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
    # partials as they are; only persons with several go through the aggregation. ``pn``:
    # the identifiers with traits, their person, and whether it has several (a full build
    # counts them by resolution's integer group and joins the person id once per node).
    if full:
        pn = """WITH tn AS (SELECT g.grp, g.node FROM b_final g
                            SEMI JOIN (SELECT DISTINCT node FROM trait_stats) USING (node))
            SELECT r.person_id, tn.node,
                   tn.grp IN (SELECT grp FROM tn GROUP BY grp HAVING count(*) > 1) AS grouped
            FROM tn JOIN b_roots r USING (grp)"""
    else:
        pn = """WITH tn AS (SELECT person_id, node FROM b_pnodes
                            SEMI JOIN trait_stats USING (node))
            SELECT person_id, node, person_id IN (
                     SELECT person_id FROM tn GROUP BY person_id HAVING count(*) > 1) AS grouped
            FROM tn"""
    run(con, f"""INSERT INTO person_traits
        WITH pn AS MATERIALIZED ({pn})
        SELECT person_id, trait,
               CASE strategy WHEN 'sum' THEN total::DOUBLE::VARCHAR::JSON
                    WHEN 'union' THEN ('[' || array_to_string(vals, ',') || ']')::JSON
                    ELSE v END,
               strategy
        FROM (SELECT *, {strategy_case(settings, 'trait')} AS strategy
              -- a partial's vals are sorted and distinct already
              FROM (SELECT person_id, trait, o, v, total, vals
                    FROM trait_stats JOIN pn USING (node) WHERE NOT grouped
                    UNION ALL
                    SELECT person_id, trait, {TRAIT_COMBINE}
                    FROM trait_stats JOIN pn USING (node) WHERE grouped
                    GROUP BY person_id, trait))""")
    if full:
        # Grouped by resolution's integer group, the person id joined once per person; a
        # group's latest touch is its greatest order key, looked up among the winners.
        features = f"""SELECT g.grp, {FEATURES}, max(s.last_touch_o) AS touch_o
            FROM b_stats0 s JOIN b_final g USING (node) GROUP BY g.grp"""
        persons = "b_roots p LEFT JOIN f USING (grp)"
        touch = "b_touch t ON t.o = f.touch_o"
    else:
        # the latest touch is looked up from its identifier: an arg_max carrying the
        # STRUCT cost as much as the rest of the aggregation (a touch is never NULL where
        # its order key is not, and an order key belongs to one identifier)
        features = f"""SELECT i.person_id, {FEATURES},
                arg_max(s.node, s.last_touch_o) AS touch_node
            FROM b_pnodes i JOIN node_stats s USING (node) GROUP BY i.person_id"""
        persons = "(SELECT DISTINCT person_id FROM b_pnodes) p LEFT JOIN f USING (person_id)"
        touch = "(SELECT node, last_touch AS touch FROM node_stats) t ON t.node = f.touch_node"
    run(con, f"""INSERT INTO profile_features
        WITH f AS ({features})
        SELECT p.person_id, coalesce(f.events, 0), coalesce(f.pages, 0),
               coalesce(f.screens, 0), coalesce(f.tracks, 0), coalesce(f.identifies, 0),
               coalesce(f.bookings, 0), coalesce(f.revenue, 0), f.first_booking_at,
               f.last_booking_at, f.last_event_at, t.touch
        FROM {persons} LEFT JOIN {touch}""")
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
