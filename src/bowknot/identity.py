"""The knot: identifiers, the identity graph, and its resolution into persons.

Everything here is SQL run by the engine (no Python loop per event, identifier or person); the
only Python loops are over *iterations* of graph algorithms (a handful per build).

**Identifiers.** Each event carries identifiers, in priority order: ``user_id``,
``anonymous_id``, the normalised ``email`` (traits or context.traits), the configured id traits
(``phone``), ``context.externalIds[]`` (their own type) and an alias's ``previousId`` (an
anonymous id). Guardrails drop values that identify nobody (settings
``identity_blocked_values`` and ``identity_blocked_pattern``: Segment's and PostHog's lists).
An event's *primary* identifier is the first valid one: the event belongs to the person of its
primary identifier.

**The graph.** Nodes are identifiers (``node`` = hash of type and value); an event with several
identifiers links its primary to each other one; only the earliest link of each pair is kept
(its time and event key), which is all resolution needs.

**Resolution.** Connected components of the graph are *clusters*. ``user_id`` is unique: two
user ids never share a person; identifiers named in unmerges (``identity_overrides``) are
treated the same way. A cluster with at most one such *anchor* is one person. In a cluster with
several anchors (a shared device, an alias between two customers) every other identifier joins
the anchor it was linked to first: the anchor whose path to it has the earliest latest link
(a minimax path, computed by iterated relaxation). This is exactly what processing the events
in time order would give (each link joins two groups unless both have an anchor), but it is a
function of the set of events, not of their arrival order, so late events and incremental
builds give the same persons as a full rebuild. Per-type limits (``identity_limits``) keep the
earliest identifiers of a type and detach the rest as persons of their own.

**Person ids.** A person's id is derived from its *root*, the identifier seen first
(``p_`` + 16 hex digits of md5), so a merge keeps the older person's id. Ids that stop
existing (merged, renamed by a late older event) are kept in ``person_redirects``; every
change is written to ``identity_log`` with its cause (the event and identifier that linked
the two sides), and a merge can be undone (:func:`unmerge`), which makes both roots anchors.
"""

from __future__ import annotations

from typing import Any

import duckdb

from .errors import NotFound, ValidationError
from .settings import Settings
from .store.engine import run

# Types whose values identify a known person (anything but a device/cookie id).
ANONYMOUS_TYPES = ("anonymous_id",)
UNIQUE_TYPE = "user_id"

# Text columns of the derived tables (rewritten by every full build) are stored without
# compression: choosing and applying DuckDB's string compression (dictionary + FSST) was most
# of the cost of writing them (1 M persons: 9.1 -> 4.1 CPU-s for the eight tables, measured
# table by table), for about 2x their size on disk (~0.5 GB more at 20 M events).
RAW_TEXT = "VARCHAR USING COMPRESSION uncompressed"
RAW_JSON = "JSON USING COMPRESSION uncompressed"

DDL: tuple[str, ...] = (
    "CREATE SEQUENCE IF NOT EXISTS identity_log_seq START 1",
    "CREATE SEQUENCE IF NOT EXISTS build_seq START 1",
    f"""CREATE TABLE IF NOT EXISTS id_nodes (
        node UBIGINT, id_type {RAW_TEXT}, id_value {RAW_TEXT},
        first_seen HUGEINT, last_seen TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS id_edges (
        a UBIGINT, b UBIGINT, first HUGEINT)""",
    # The resolution: every identifier, its cluster and its person.
    f"""CREATE TABLE IF NOT EXISTS identities (
        node UBIGINT, id_type {RAW_TEXT}, id_value {RAW_TEXT}, cluster UBIGINT,
        person_id {RAW_TEXT}, status {RAW_TEXT}, first_seen TIMESTAMP, last_seen TIMESTAMP,
        is_root BOOLEAN)""",
    """CREATE TABLE IF NOT EXISTS identity_overrides (
        node UBIGINT, id_type VARCHAR, id_value VARCHAR, log_id BIGINT, created_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS identity_log (
        log_id BIGINT DEFAULT nextval('identity_log_seq'), logged_at TIMESTAMP, build_id BIGINT,
        kind VARCHAR, person_id VARCHAR, other_person_id VARCHAR, cause_key UBIGINT,
        cause_message_id VARCHAR, cause_source VARCHAR, cause_id_type VARCHAR,
        cause_id_value VARCHAR, nodes UBIGINT[], undone_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS person_redirects (
        old_person_id VARCHAR, person_id VARCHAR, redirected_at TIMESTAMP)""",
    # Nodes whose resolution must be recomputed by the next build (unmerge, privacy delete).
    "CREATE TABLE IF NOT EXISTS identity_dirty (node UBIGINT)",
    # Events attributed by an identifier other than userId/anonymousId (both blocked values).
    "CREATE TABLE IF NOT EXISTS event_fallback (key UBIGINT, node UBIGINT)",
)


def _quoted(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def split_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def limits(settings: Settings) -> tuple[dict[str, int], int]:
    """``identity_limits`` parsed: per-type limits and the default for other types."""
    per: dict[str, int] = {}
    default = 0
    for part in split_list(settings.identity_limits):
        name, _, number = part.partition("=")
        try:
            n = int(number)
        except ValueError:
            raise ValidationError(
                f"identity_limits: '{part}' is not TYPE=NUMBER (e.g. 'email=5,*=5').",
                setting="identity_limits",
            ) from None
        if n < 1:
            raise ValidationError(
                f"identity_limits: '{part}' must allow at least 1.", setting="identity_limits")
        if name.strip() == "*":
            default = n
        else:
            per[name.strip().lower()] = n
    per[UNIQUE_TYPE] = 1
    return per, default


# The parts of the context that builds read (traits, external ids, a campaign), each parsed
# only for the events whose context names it: a context holding one of them is parsed once,
# not once per part (20 M demo events, 884 k with a campaign: ~1.3 -> ~0.4 CPU-s).
CONTEXT_PARTS = {"_ct": "traits", "_cx": "externalIds", "_cc": "campaign"}


def hinted(relation: str) -> str:
    """``relation`` (events rows) with the context's parts that builds read, NULL where the
    context has none: ``_ct`` (context.traits: the e-mail, the id traits and the traits
    column), ``_cx`` (context.externalIds) and ``_cc`` (context.campaign). Each is parsed
    once per event, and only for the events whose context's text names it."""
    parts = ", ".join(f"""CASE WHEN contains(context, '"{key}"') THEN context->'{key}' END
                          AS {name}""" for name, key in CONTEXT_PARTS.items())
    return f"(SELECT *, {parts} FROM {relation})"


def raw_columns(settings: Settings) -> str:
    """SQL select list over :func:`hinted` events: the raw identifier fields, ``r_``-prefixed.

    JSON is only parsed where it can hold an identifier. Events with the same raw fields
    share their identifiers, so builds group by these before validating anything.
    """
    traits = "".join(
        f""", CASE WHEN contains(traits, '"{t}"') OR _ct IS NOT NULL
               THEN regexp_replace(coalesce(traits->>'{t}', _ct->>'{t}'),
                                   '[^0-9+]', '', 'g') END AS "r_{t}\""""
        for t in split_list(settings.identity_id_traits))
    return f"""user_id AS r_user, anonymous_id AS r_anon, previous_id AS r_prev,
      CASE WHEN contains(traits, '"email"') OR _ct IS NOT NULL
           THEN lower(trim(coalesce(traits->>'email', _ct->>'email'))) END
        AS r_email{traits},
      _cx AS r_ext"""


def raw_names(settings: Settings) -> list[str]:
    return (["r_user", "r_anon", "r_prev", "r_email"]
            + [f'"r_{t}"' for t in split_list(settings.identity_id_traits)] + ["r_ext"])


# trim()'s characters in the blocked-value test, and the code points besides a letter's upper
# case that DuckDB's lower() turns into an ASCII letter (a test checks every code point).
_TRIM = " \"'"
_LOWER_EXTRA = {"i": "\u0130", "k": "\u212a"}


def _char_class(ch: str) -> str:
    """RE2 for the characters whose DuckDB lower() is the ASCII character ``ch``."""
    if ch.isalpha():
        return "[" + ch + ch.upper() + _LOWER_EXTRA.get(ch, "") + "]"
    return f"\\x{{{ord(ch):x}}}"


def blocked_regex(values: list[str]) -> str | None:
    """An RE2 pattern that fully matches ``v`` exactly when ``lower(trim(v, ' "\\''))`` is one
    of ``values`` (lower case), given that ``v`` holds no U+017F (see ids_from_raw): "" when
    none can match, None when a value is not ASCII (the lookup is then done as written).
    One regex per identifier is several times cheaper than lowering and trimming it."""
    alternatives = []
    for value in values:
        if not value.isascii():
            return None
        if value[0] in _TRIM or value[-1] in _TRIM:
            continue  # a trimmed value never starts or ends so: it blocks nothing
        alternatives.append("".join(_char_class(ch) for ch in value))
    if not alternatives:
        return ""
    trim = "[" + "".join(_char_class(ch) for ch in _TRIM) + "]*"
    return f"{trim}(?:{'|'.join(alternatives)}){trim}"


def ids_from_raw(settings: Settings) -> str:
    """SQL over the ``r_`` columns: the valid identifiers, a list of {t, v} in priority order.

    Priority: user_id, anonymous_id, email, id traits, external ids, previousId (an alias's
    anonymous id). The first is the event's primary identifier. Scalar fields are checked as
    columns (vectorised); external ids, a list, are parsed only when present; one filter
    drops the invalid candidates.
    """
    values = [v.lower() for v in split_list(settings.identity_blocked_values)]
    regex = blocked_regex(values)
    pattern = settings.identity_blocked_pattern.replace("'", "''")

    def valid(v: str) -> str:
        # PostHog also matches illegal ids inside quotes ("null", 'undefined').
        if regex is None:
            listed = f"list_contains({_quoted(values)}, lower(trim({v}, ' \"''')))"
        else:
            # RE2 may fold a letter's case when it merges alternatives ([sS] then matches
            # U+017F, which DuckDB's lower() keeps): a value holding it is never blocked.
            listed = (f"(regexp_full_match({v}, '{regex}') AND NOT contains({v}, '\u017f'))"
                      if regex else "false")
        return f"({v} IS NOT NULL AND NOT {listed} AND NOT regexp_full_match({v}, '{pattern}'))"

    def one(t: str, column: str) -> str:  # v is NULL when invalid
        return f"{{'t': '{t}', 'v': CASE WHEN {valid(column)} THEN {column} END}}"

    scalars = [one("user_id", "r_user"), one("anonymous_id", "r_anon"), one("email", "r_email")]
    scalars += [one(t, f'"r_{t}"') for t in split_list(settings.identity_id_traits)]
    # One list of candidates filtered once (cheaper than concatenating one list per field).
    external = f"""CASE WHEN r_ext IS NULL THEN [] ELSE coalesce(list_transform(
           try(from_json(r_ext, '[{{"id": "VARCHAR", "type": "VARCHAR"}}]')),
           lambda x: {{'t': lower(trim(x.type)),
                       'v': CASE WHEN lower(trim(x.type)) <> '' AND {valid('trim(x.id)')}
                                 THEN trim(x.id) END}}), []) END"""
    every = f"""list_filter(list_concat([{', '.join(scalars)}], {external},
                                  [{one("anonymous_id", "r_prev")}]), lambda x: x.v IS NOT NULL)"""
    # Most combinations hold a userId and/or an anonymousId and nothing else: the same list
    # from those two alone costs a third less (20 M events: ~0.4 CPU-s of ~1.3).
    only_two = " AND ".join(f"{n} IS NULL" for n in raw_names(settings)[2:])
    return f"""CASE WHEN {only_two}
                THEN list_filter([{scalars[0]}, {scalars[1]}], lambda x: x.v IS NOT NULL)
                ELSE {every} END"""


def with_ids(settings: Settings, relation: str) -> str:
    """``relation``'s rows (events) with their identifier list ``ids``."""
    return f"""SELECT * EXCLUDE ({', '.join(CONTEXT_PARTS)}, {', '.join(raw_names(settings))}),
                      {ids_from_raw(settings)} AS ids
               FROM (SELECT *, {raw_columns(settings)} FROM {hinted(relation)})"""


def ts_of(order: str) -> str:
    """SQL: the event time of an order key (see profiles.ORDER_KEY)."""
    return f"make_timestamp(({order} >> 64)::BIGINT)"


def key_of(order: str) -> str:
    """SQL: the event key of an order key."""
    return f"({order} & 18446744073709551615::HUGEINT)::UBIGINT"


def node_expr(item: str) -> str:
    """The node id of an identifier struct (``hash(type, value)``)."""
    return f"hash({item}.t, {item}.v)"


def identifiers_sql(settings: Settings, where: str = "true") -> str:
    """SELECT source, message_id, timestamp, id_type, id_value for events matching ``where``."""
    return f"""
    SELECT source, message_id, timestamp, x.t AS id_type, x.v AS id_value
    FROM (SELECT source, message_id, timestamp, unnest(ids) AS x
          FROM ({with_ids(settings, f"(SELECT * FROM events WHERE {where})")}))
    """


def identifiers(ws: Any, where: str = "true") -> list[dict[str, Any]]:
    """The identifiers of the workspace's events (optionally filtered by a SQL condition)."""
    return list(ws.sql(
        "SELECT DISTINCT * FROM (" + identifiers_sql(ws.settings, where)
        + ") ORDER BY timestamp, id_type"))


def person_id_sql(id_type: str, id_value: str) -> str:
    return f"'p_' || md5({id_type} || chr(31) || {id_value})[1:16]"


# --- the graph ------------------------------------------------------------------------------

def _any(con: duckdb.DuckDBPyConnection, relation: str) -> bool:
    """Whether ``relation`` (a table, or tables with joins and a WHERE) has a row."""
    return bool(run(con, f"SELECT count(*) FROM (SELECT 1 FROM {relation} LIMIT 1)")[0][0])


# The identifiers of b_tup, one row each (id_nodes' columns). Each identifier's node is hashed
# once, after grouping (not once per occurrence).
OCCURRENCES = """SELECT id_type, id_value, hash(id_type, id_value) AS node, first_seen, last_seen
    FROM (SELECT x.t AS id_type, x.v AS id_value, min(first) AS first_seen,
                 max(last_event_at) AS last_seen
          FROM (SELECT first, last_event_at, unnest(ids) AS x FROM b_tup) GROUP BY ALL)"""


def update_graph(con: duckdb.DuckDBPyConnection, full: bool = False) -> None:
    """Fold new identifiers into the graph from ``b_tup``: one row per distinct combination
    of raw identifier fields in the new events, with ``ids``, ``first`` (the earliest
    (ts, key) of its events) and ``last_event_at``.

    Leaves ``b_links`` (a full build: the new events' links; an incremental one: those that
    are new or earlier than the graph's, which change it) and, in incremental builds,
    ``b_occ`` (the new events' identifiers: a full build's :func:`resolve` writes it and
    ``id_nodes``, each identifier with its component) and ``b_touched(node)``: nodes that are
    new or gained a link, or are now seen earlier, whose clusters must be resolved again.
    A link the graph holds already, as early, changes nothing: its identifiers' clusters are
    not resolved again for it.
    """
    links = f"""SELECT least(p, o) AS a, greatest(p, o) AS b, min(first) AS first
        FROM (SELECT first, {node_expr('ids[1]')} AS p,
                     unnest(list_transform(ids[2:], lambda x: {node_expr('x')})) AS o
              FROM b_tup WHERE len(ids) > 1)
        WHERE p <> o GROUP BY ALL"""
    if full:  # the graph starts empty: every identifier and link is new
        # Materialised first: DuckDB aggregates in parallel into a temporary table, and a
        # persistent table's insert from a table is cheaper than from an aggregate (measured).
        run(con, f"CREATE OR REPLACE TEMP TABLE b_links AS {links}")
        run(con, "INSERT INTO id_edges SELECT * FROM b_links")
        run(con, "DELETE FROM identity_dirty")
        return
    # The new events' links and identifiers, each with what the graph holds for it (NULL when
    # it is new): one read of id_edges and one of id_nodes decide what is new, what is now
    # earlier, and what to write (1 % new events after 20 M: five reads of the two tables
    # were most of these statements' time, and every link of the new events, most of them
    # held already, sent its identifiers' clusters to be resolved again).
    run(con, f"""CREATE OR REPLACE TEMP TABLE b_links AS
        SELECT l.*, e.first AS held FROM ({links}) l LEFT JOIN id_edges e USING (a, b)
        WHERE e.first IS NULL OR l.first < e.first""")
    run(con, f"""CREATE OR REPLACE TEMP TABLE b_occ AS
        SELECT o.*, n.first_seen AS held_first
        FROM ({OCCURRENCES}) o LEFT JOIN id_nodes n USING (node)""")
    # New identifiers, new links, and identifiers or links now earlier than before (a late
    # event can change which identifier is a person's root, hence its id, and which anchor
    # an identifier joins).
    run(con, """CREATE OR REPLACE TEMP TABLE b_touched AS
        SELECT node FROM b_occ WHERE held_first IS NULL OR first_seen < held_first
        UNION SELECT a FROM b_links UNION SELECT b FROM b_links
        UNION SELECT node FROM identity_dirty""")
    run(con, """UPDATE id_nodes SET first_seen = least(id_nodes.first_seen, o.first_seen),
        last_seen = greatest(id_nodes.last_seen, o.last_seen)
        FROM b_occ o WHERE id_nodes.node = o.node""")
    run(con, """INSERT INTO id_nodes SELECT node, id_type, id_value, first_seen, last_seen
        FROM b_occ WHERE held_first IS NULL""")
    if _any(con, "b_links WHERE held IS NOT NULL"):
        run(con, """UPDATE id_edges SET first = l.first FROM b_links l
            WHERE id_edges.a = l.a AND id_edges.b = l.b AND l.held IS NOT NULL""")
    run(con, "INSERT INTO id_edges SELECT a, b, first FROM b_links WHERE held IS NULL")
    run(con, "DELETE FROM identity_dirty")


def _components(con: duckdb.DuckDBPyConnection) -> int:
    """Connected components over ``b_edges``: leaves ``b_first1(node, comp)``,
    ``b_first2(node, comp)`` and ``b_cl(node, comp)``, which :data:`COMPONENT` reads (comp =
    the smallest node of the component).

    Two contractions, then label propagation on what is left. A contraction gives every node
    the smallest node of its closed neighbourhood (one pass over the links) and keeps the links
    between different labels: a graph of labels, a fraction of the size. The first settles
    the centre of a star-shaped cluster (a user id and its devices and e-mail) and turns the
    rest into a star around the cluster's smallest node, which the second settles: on the
    demo data nothing is left (786 k links after the first, none after the second; 0.22
    against 0.8 CPU-s for a round of propagation and its check). What is left is solved by
    label propagation with pointer jumping (each round every label takes the smallest among
    itself and its neighbours, then the label of its label; rounds ~ log(diameter)). Returns
    the number of passes (both contractions counted).
    """
    edges = "b_edges"
    for level in (1, 2):
        # A link is stored as (a, b) with a < b, so a node's smaller neighbours are the a's
        # of its links as b: a node that is the b of a link takes the least of those, any
        # other keeps its own (a group by over one side of the links, not both: 0.6 -> 0.2
        # CPU-s at 1.8 M links). A node without a row is its own label.
        run(con, f"""CREATE OR REPLACE TEMP TABLE b_first{level} AS
            SELECT b AS node, min(a) AS comp FROM {edges} GROUP BY b""")
        run(con, f"""CREATE OR REPLACE TEMP TABLE b_cedges{level} AS
            SELECT DISTINCT least(coalesce(x.comp, e.a), y.comp) AS a,
                            greatest(coalesce(x.comp, e.a), y.comp) AS b
            FROM {edges} e LEFT JOIN b_first{level} x ON x.node = e.a
            JOIN b_first{level} y ON y.node = e.b
            WHERE coalesce(x.comp, e.a) <> y.comp""")
        edges = f"b_cedges{level}"
    run(con, f"""CREATE OR REPLACE TEMP TABLE b_cl AS
        SELECT a AS node, a AS comp FROM {edges} UNION SELECT b, b FROM {edges}""")
    rounds = 2
    done = not _any(con, edges)
    while not done:
        rounds += 1
        run(con, f"""CREATE OR REPLACE TEMP TABLE b_cc2 AS
            WITH step AS (
              SELECT node, min(comp) AS comp FROM (
                SELECT node, comp FROM b_cl
                UNION ALL SELECT e.b, c.comp FROM {edges} e JOIN b_cl c ON e.a = c.node
                UNION ALL SELECT e.a, c.comp FROM {edges} e JOIN b_cl c ON e.b = c.node)
              GROUP BY node)
            SELECT s.node, least(s.comp, j.comp) AS comp
            FROM step s JOIN step j ON j.node = s.comp""")
        run(con, "DROP TABLE b_cl")
        run(con, "ALTER TABLE b_cc2 RENAME TO b_cl")
        # Done when every link joins equal labels: a label is always a node of the component
        # and the smallest node keeps its own, so a uniform component carries its minimum.
        done = not _any(con, f"""{edges} e JOIN b_cl x ON x.node = e.a
                                 JOIN b_cl y ON y.node = e.b WHERE x.comp <> y.comp""")
    return rounds


# The component of node ``n.node`` after _components, with COMPONENT_JOINS in the FROM clause:
# its label after each contraction (unchanged where it has no row), then that label's
# component in what was left (a label off that graph is final).
COMPONENT = "coalesce(c.comp, f2.comp, f1.comp, n.node)"
COMPONENT_JOINS = """LEFT JOIN b_first1 f1 ON f1.node = n.node
    LEFT JOIN b_first2 f2 ON f2.node = coalesce(f1.comp, n.node)
    LEFT JOIN b_cl c ON c.node = coalesce(f2.comp, f1.comp, n.node)"""


def _with_component(nodes: str) -> str:
    """SQL: the rows of ``nodes`` (id_nodes' columns) with their component and whether they
    are anchors (user ids and the identifiers named by unmerges)."""
    return f"""SELECT n.*, {COMPONENT} AS comp,
               n.id_type = '{UNIQUE_TYPE}' OR o.node IS NOT NULL AS anchor
        FROM {nodes} n {COMPONENT_JOINS}
        LEFT JOIN (SELECT DISTINCT node FROM identity_overrides) o ON o.node = n.node"""


def _roots(identifiers: str) -> str:
    """SQL: ``b_roots`` rows (one per ``grp``, see :func:`resolve`) of ``identifiers`` (grp,
    cluster and b_nodes' columns); ``anchors`` counts the group's anchors."""
    return f"""SELECT grp, {person_id_sql('root.t', 'root.v')} AS person_id, root.n AS root,
               root.t AS root_type, root.v AS root_value, {ts_of('root.f')} AS first_seen,
               last_seen, {ts_of('known')} AS known_at, identifiers, cluster, anchors
        FROM (SELECT grp, min({{'f': first_seen, 'n': node, 't': id_type, 'v': id_value}})
                            AS root, max(last_seen) AS last_seen,
                     min(first_seen) FILTER (WHERE id_type <> 'anonymous_id') AS known,
                     count(*) AS identifiers, min(cluster) AS cluster,
                     count_if(anchor) AS anchors
              FROM {identifiers} GROUP BY grp)"""


def _label(con: duckdb.DuckDBPyConnection) -> int:
    """In clusters with several anchors, each node joins the anchor it was linked to first.

    ``b_lab(node, best STRUCT(r, anchor))``: ``r`` is the order key of the latest link on the
    path from the anchor (minimax); relaxation until nothing improves. Links never pass
    through another anchor.
    """
    run(con, """CREATE OR REPLACE TEMP TABLE b_lab AS
        SELECT node, {'r': (-170141183460469231731687303715884105727)::HUGEINT,
                      'anchor': node} AS best
        FROM b_multi WHERE anchor""")
    rounds = 0
    while True:
        rounds += 1
        run(con, """CREATE OR REPLACE TEMP TABLE b_lab2 AS
            SELECT node, min(best) AS best FROM (
              SELECT node, best FROM b_lab
              UNION ALL
              SELECT m.node, {'r': greatest(l.best.r, e.first), 'anchor': l.best.anchor}
              FROM b_medges e JOIN b_lab l ON l.node = e.x JOIN b_multi m ON m.node = e.y
              WHERE NOT m.anchor)
            GROUP BY node""")
        changed = run(con, """SELECT count(*) FROM b_lab2 LEFT JOIN b_lab USING (node)
                              WHERE b_lab.best IS NULL OR b_lab2.best <> b_lab.best""")[0][0]
        run(con, "DROP TABLE b_lab")
        run(con, "ALTER TABLE b_lab2 RENAME TO b_lab")
        if not changed:
            return rounds


def resolve(con: duckdb.DuckDBPyConnection, settings: Settings, build_id: int,
            full: bool, window: str | None = None) -> dict[str, Any]:
    """Resolve the clusters of ``b_touched`` (or everything when ``full``) into persons.

    Rewrites their rows of ``identities``, logs merges and splits, keeps redirects, and leaves
    ``b_final`` (node, grp: every resolved identifier and its person's group), ``b_new`` (the
    rows written), ``b_roots`` (one row per resolved person, by ``grp``, with its ``persons``
    columns and its number of ``anchors``) and (incremental builds) ``b_persons(person_id)``:
    every person whose identifiers changed (old and new ids). ``window``: the new events (a
    SQL condition on ``events``), where the causes of this build's changes are looked up
    first.
    """
    if full:
        run(con, "CREATE OR REPLACE TEMP VIEW b_edges AS SELECT * FROM b_links")
    else:
        run(con, """CREATE OR REPLACE TEMP TABLE b_aff AS
            SELECT node FROM identities WHERE cluster IN (
              SELECT i.cluster FROM identities i JOIN b_touched USING (node))
            UNION SELECT node FROM b_touched""")
        run(con, """CREATE OR REPLACE TEMP TABLE b_edges AS
            SELECT e.* FROM id_edges e SEMI JOIN b_aff ON e.a = b_aff.node""")
    # Both directions of every link, read only where anchors compete or persons changed.
    run(con, """CREATE OR REPLACE TEMP VIEW b_dedges AS
        SELECT a AS x, b AS y, first FROM b_edges UNION ALL SELECT b, a, first FROM b_edges""")
    rounds = _components(con)
    if full:
        # Every identifier aggregated with its component in one pass (not copied again),
        # then written to the graph as it is.
        run(con, f"CREATE OR REPLACE TEMP TABLE b_occ AS {_with_component(f'({OCCURRENCES})')}")
        run(con, """INSERT INTO id_nodes
            SELECT node, id_type, id_value, first_seen, last_seen FROM b_occ""")
        # (one no longer in the graph has no row in the new resolution)
        run(con, "CREATE OR REPLACE TEMP VIEW b_aff AS SELECT node FROM b_occ")
        run(con, "CREATE OR REPLACE TEMP VIEW b_nodes AS SELECT * FROM b_occ")
    else:
        run(con, f"""CREATE OR REPLACE TEMP TABLE b_nodes AS {_with_component(
            "(SELECT * FROM id_nodes WHERE node IN (SELECT node FROM b_aff "
            "UNION ALL SELECT node FROM b_first1))")}""")
    per_type, default_limit = limits(settings)
    # One row per person: its id (hashed once per person, not once per identifier), its root
    # (the first seen node) and the rest of its ``persons`` row, which a full build writes as
    # it is (the same aggregation over the same rows, grouped by person once). First every
    # cluster is taken for a person, which all but a few are: the same pass finds those.
    run(con, f"""CREATE OR REPLACE TEMP TABLE b_roots AS
        {_roots("(SELECT *, comp AS grp, comp AS cluster FROM b_nodes)")}""")
    # A group holds at most one anchor, so never two user ids (limited to 1); a group is part
    # of a cluster, so one can exceed another type's limit only in a cluster larger than the
    # smallest limit.
    bounded = [n for t, n in per_type.items() if t != UNIQUE_TYPE] + (
        [default_limit] if default_limit else [])
    large = f"identifiers > {min(bounded)}" if bounded else "false"
    multi, big = run(con, f"SELECT count_if(anchors > 1), count_if({large}) FROM b_roots")[0]
    label_rounds = 0
    grp, lab_join = "n.comp", ""
    if multi or big:
        run(con, f"""CREATE OR REPLACE TEMP TABLE b_comp AS
            SELECT grp AS comp, anchors, {large} AS large FROM b_roots
            WHERE anchors > 1 OR {large}""")
    if multi:
        run(con, """CREATE OR REPLACE TEMP TABLE b_multi AS
            SELECT node, anchor FROM b_nodes
            WHERE comp IN (SELECT comp FROM b_comp WHERE anchors > 1)""")
        run(con, """CREATE OR REPLACE TEMP TABLE b_medges AS
            SELECT * FROM b_dedges SEMI JOIN b_multi ON x = b_multi.node""")
        label_rounds = _label(con)
        # group: the anchor for multi-anchor clusters, else the cluster.
        grp, lab_join = "coalesce(l.best.anchor, n.comp)", "LEFT JOIN b_lab l ON l.node = n.node"
    over_join, final_grp, status = "", grp, "'linked'"
    if big:
        # Per-type limits: only the large clusters' groups are counted, and only the groups
        # holding more identifiers of a type than its limit are ranked.
        limit_cases = " ".join(f"WHEN '{t}' THEN {n}" for t, n in per_type.items())
        limit_sql = f"CASE id_type {limit_cases} ELSE {default_limit or 2**31} END"
        run(con, f"""CREATE OR REPLACE TEMP TABLE b_over AS
            WITH g AS MATERIALIZED (
              SELECT n.node, n.id_type, n.first_seen, {grp} AS grp FROM b_nodes n {lab_join}
              WHERE n.comp IN (SELECT comp FROM b_comp WHERE large)),
            big AS (SELECT grp, id_type FROM g GROUP BY grp, id_type
                    HAVING count(*) > any_value({limit_sql}))
            SELECT node FROM (
              SELECT node, row_number() OVER (PARTITION BY grp, id_type
                                              ORDER BY first_seen, node)
                           > {limit_sql} AS over_limit
              FROM g SEMI JOIN big USING (grp, id_type))
            WHERE over_limit""")
        over_join = "LEFT JOIN b_over o ON o.node = n.node"
        final_grp = f"CASE WHEN o.node IS NOT NULL THEN n.node ELSE {grp} END"
        status = "CASE WHEN o.node IS NOT NULL THEN 'over_limit' ELSE 'linked' END"
    # A view where every group is its cluster (no joins to repeat): read twice, it costs less
    # than a copy of every identifier.
    run(con, f"""CREATE OR REPLACE TEMP {"TABLE" if multi or big else "VIEW"} b_final AS
        SELECT n.node, n.id_type, n.id_value, n.comp AS cluster, n.first_seen, n.last_seen,
               {final_grp} AS grp, {status} AS status, n.anchor
        FROM b_nodes n {lab_join} {over_join}""")
    if multi or big:  # the persons of those clusters, as they are
        run(con, "DELETE FROM b_roots WHERE grp IN (SELECT comp FROM b_comp)")
        run(con, f"""INSERT INTO b_roots {_roots(
            "(SELECT * FROM b_final WHERE cluster IN (SELECT comp FROM b_comp))")}""")
    new_rows = f"""SELECT f.node, f.id_type, f.id_value, f.cluster, r.person_id, f.status,
               {ts_of('f.first_seen')} AS first_seen, f.last_seen, r.root = f.node AS is_root
        FROM b_final f JOIN b_roots r USING (grp)"""
    if full and not _any(con, "identities"):
        # A full build over an empty resolution (the first one): nobody to compare with, so
        # nothing moved.
        # The rows go straight into identities, which b_new then reads: one pass instead of
        # a temporary copy and its insert (1 M persons: 1.6 against 2.2 CPU-s), and reading
        # two columns back costs what reading the copy does.
        resolved = run(con, f"INSERT INTO identities {new_rows}")[0][0]
        run(con, "CREATE OR REPLACE TEMP VIEW b_new AS SELECT * FROM identities")
        _log_changes(con, build_id, moved=False)
        return {"graph_rounds": rounds, "label_rounds": label_rounds,
                "identifiers_resolved": resolved}
    resolved = run(con, f"CREATE OR REPLACE TEMP TABLE b_new AS {new_rows}")[0][0]
    # What changed: identifiers whose person changed, for the log and the redirects.
    run(con, """CREATE OR REPLACE TEMP TABLE b_moves AS
        SELECT o.person_id AS old_id, n.person_id AS new_id, n.node
        FROM identities o JOIN b_new n USING (node) WHERE o.person_id <> n.person_id""")
    if not full:
        run(con, """CREATE OR REPLACE TEMP TABLE b_persons AS
            SELECT DISTINCT person_id FROM identities SEMI JOIN b_aff USING (node)
            UNION SELECT DISTINCT person_id FROM b_new""")
    _log_changes(con, build_id, moved=_any(con, "b_moves"), window=None if full else window)
    if full:
        run(con, "DELETE FROM identities")
    else:
        run(con, "DELETE FROM identities WHERE node IN (SELECT node FROM b_aff)")
    run(con, "INSERT INTO identities SELECT * FROM b_new")
    if not full:  # identifiers seen again without new links
        run(con, """UPDATE identities SET last_seen = o.last_seen FROM b_occ o
            WHERE identities.node = o.node AND o.last_seen > identities.last_seen""")
    return {"graph_rounds": rounds, "label_rounds": label_rounds,
            "identifiers_resolved": resolved}


def _log_changes(con: duckdb.DuckDBPyConnection, build_id: int, moved: bool,
                 window: str | None = None) -> None:
    """Log merges (an old person absorbed into another) and splits; keep redirects.

    ``moved``: whether any identifier changed person (``b_moves``); most builds have none.
    ``window``: the new events (a SQL condition on ``events``) of an incremental build."""
    if moved:
        _log_moves(con, build_id)
    pending = "identity_log.cause_message_id IS NULL AND identity_log.cause_key IS NOT NULL"

    def causes(events: str) -> None:
        run(con, f"""UPDATE identity_log SET cause_message_id = e.message_id,
                                            cause_source = e.source
            FROM {events} e WHERE identity_log.cause_key = e.key AND {pending}
              AND e.key IN (SELECT cause_key FROM identity_log WHERE cause_message_id IS NULL)""")

    # Every event's key is scanned only for a cause still missing (20 M events: ~0.22 CPU-s,
    # most of an incremental build's ~2.4). A change is almost always caused by a link of the
    # new events, so an incremental build looks among those first (their load range).
    if _any(con, f"identity_log WHERE {pending}"):
        if window is not None:
            causes(f"(SELECT key, message_id, source FROM events WHERE {window})")
        if window is None or _any(con, f"identity_log WHERE {pending}"):
            causes("events")
    # A person that exists again (an unmerge) is no longer redirected.
    if _any(con, "person_redirects"):
        run(con, """DELETE FROM person_redirects
            WHERE old_person_id IN (SELECT person_id FROM b_new)""")


def _log_moves(con: duckdb.DuckDBPyConnection, build_id: int) -> None:
    """_log_changes where identifiers changed person (``b_moves``)."""
    # A merge: old person O's identifiers now belong to person P <> O, and O is gone.
    run(con, """CREATE OR REPLACE TEMP TABLE b_gone AS
        SELECT DISTINCT old_id FROM b_moves
        WHERE old_id NOT IN (SELECT person_id FROM b_new)""")
    run(con, """CREATE OR REPLACE TEMP TABLE b_merge_pairs AS
        SELECT DISTINCT m.old_id, m.new_id FROM b_moves m SEMI JOIN b_gone USING (old_id)
        WHERE m.old_id <> m.new_id""")
    # The cause: the earliest link between the absorbed identifiers and the rest of P.
    run(con, f"""INSERT INTO identity_log (logged_at, build_id, kind, person_id, other_person_id,
                                          cause_key, cause_id_type, cause_id_value, nodes)
        WITH cause AS (
          SELECT m.old_id, m.new_id,
                 min({{'f': e.first, 't': m_node.id_type, 'v': m_node.id_value}}) AS c
          FROM b_moves m JOIN b_dedges e ON e.x = m.node
          JOIN b_new o ON o.node = e.y AND o.person_id = m.new_id
          JOIN b_new m_node ON m_node.node = m.node
          LEFT JOIN b_moves mo ON mo.node = e.y
          WHERE mo.old_id IS DISTINCT FROM m.old_id
          GROUP BY m.old_id, m.new_id),
        members AS (SELECT old_id, new_id, list(node ORDER BY node) AS nodes
                    FROM b_moves GROUP BY old_id, new_id)
        SELECT now()::TIMESTAMP, {build_id}, 'merge', p.new_id, p.old_id,
               {key_of('c.c.f')}, c.c.t, c.c.v, mb.nodes
        FROM b_merge_pairs p
        JOIN members mb ON mb.old_id = p.old_id AND mb.new_id = p.new_id
        LEFT JOIN cause c ON c.old_id = p.old_id AND c.new_id = p.new_id""")
    # A split: identifiers of a person that still exists now belong to another person.
    run(con, f"""INSERT INTO identity_log (logged_at, build_id, kind, person_id, other_person_id)
        SELECT DISTINCT now()::TIMESTAMP, {build_id}, 'split', old_id, new_id FROM b_moves
        WHERE old_id <> new_id AND old_id NOT IN (SELECT old_id FROM b_gone)""")
    # Redirects: a gone id (and ids redirected to it) lead to where most of it went.
    run(con, """CREATE OR REPLACE TEMP TABLE b_redirect AS
        SELECT old_id, mode(new_id) AS new_id FROM b_moves SEMI JOIN b_gone USING (old_id)
        GROUP BY old_id""")
    run(con, """UPDATE person_redirects SET person_id = r.new_id
        FROM b_redirect r WHERE person_redirects.person_id = r.old_id""")
    run(con, """INSERT INTO person_redirects
        SELECT old_id, new_id, now()::TIMESTAMP FROM b_redirect""")


def unmerge(con: duckdb.DuckDBPyConnection, log_id: int) -> dict[str, Any]:
    """Undo a logged merge: each side gets an anchor, so the two never fuse again.

    A side's anchor is its user id if it has one, else its first seen identifier (made an
    anchor by an override). The caller runs a build, which restores both persons (each
    identifier goes back to the side it was linked to first) and logs the split.
    """
    rows = run(con, """SELECT kind, person_id, other_person_id, undone_at, nodes
                       FROM identity_log WHERE log_id = ?""", [log_id])
    if not rows:
        raise NotFound(f"No identity change {log_id}; see a person's changes with "
                       "`bowknot person ID` or GET /v1/persons/{id}.", log_id=log_id)
    kind, kept, merged, undone, nodes = rows[0]
    if kind != "merge":
        raise ValidationError(f"Identity change {log_id} is a {kind}, not a merge.",
                              log_id=log_id)
    if undone is not None:
        raise ValidationError(f"Merge {log_id} was already undone.", log_id=log_id)
    run(con, "CREATE OR REPLACE TEMP TABLE u_side AS SELECT unnest(?::UBIGINT[]) AS node",
        [list(nodes or [])])
    # Both sides as they are now: the absorbed identifiers, and the rest of their person.
    run(con, """CREATE OR REPLACE TEMP TABLE u_nodes AS
        SELECT i.node, i.id_type, i.id_value, n.first_seen, u.node IS NOT NULL AS absorbed
        FROM identities i JOIN id_nodes n USING (node) LEFT JOIN u_side u USING (node)
        WHERE i.person_id IN (SELECT person_id FROM identities SEMI JOIN u_side USING (node))""")
    sides = run(con, f"""SELECT absorbed, count_if(id_type = '{UNIQUE_TYPE}') AS users,
               arg_min(node, {{'f': first_seen, 'n': node}}) AS root
        FROM u_nodes GROUP BY absorbed""")
    if len(sides) != 2:
        raise ValidationError(
            f"Merge {log_id} cannot be undone: one side no longer exists (deleted for privacy, "
            "or already split).", log_id=log_id)
    roots = [root for _, users, root in sides if users == 0]
    run(con, """INSERT INTO identity_overrides
        SELECT node, id_type, id_value, ?, now()::TIMESTAMP FROM id_nodes
        WHERE node IN (SELECT unnest(?::UBIGINT[]))""", [log_id, roots])
    run(con, "INSERT INTO identity_dirty SELECT node FROM u_nodes")
    run(con, "UPDATE identity_log SET undone_at = now()::TIMESTAMP WHERE log_id = ?", [log_id])
    return {"log_id": log_id, "person_id": kept, "restored_person_id": merged}


def remerge(con: duckdb.DuckDBPyConnection, log_id: int) -> dict[str, Any]:
    """Take an unmerge back: drop its overrides; the next build merges the persons again."""
    rows = run(con, "SELECT undone_at FROM identity_log WHERE log_id = ? AND kind = 'merge'",
               [log_id])
    if not rows or rows[0][0] is None:
        raise NotFound(f"Merge {log_id} has not been undone.", log_id=log_id)
    run(con, """INSERT INTO identity_dirty SELECT node FROM identity_overrides WHERE log_id = ?
                UNION SELECT unnest(nodes) FROM identity_log WHERE log_id = ?""",
        [log_id, log_id])
    run(con, "DELETE FROM identity_overrides WHERE log_id = ?", [log_id])
    run(con, "UPDATE identity_log SET undone_at = NULL WHERE log_id = ?", [log_id])
    return {"log_id": log_id}
