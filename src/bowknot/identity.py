"""The knot, first layer: the identifiers each event carries, normalised and guarded.

Issue 4 builds persons from these (the identity graph, merges and unmerges); this module is
the part every resolution strategy needs: which (type, value) pairs an event holds. It is one
SQL query over ``events`` (no Python loop per event), so it runs on any engine DuckDB or Ibis
can reach.

Guardrails (settings): values that identify nobody are dropped before they can fuse people:
Segment's suggested blocked values (``^[0-]*$``, ``-1``, ``null``, ``anonymous``) and PostHog's
illegal ids (``undefined``, ``guest``, ``0``, ``NaN``, ``[object Object]``, blank, ... also when
quoted), see ../shared/reference/cdp-anchors.md section 4.
"""

from __future__ import annotations

from typing import Any

from .settings import Settings

# The kinds of identifier read from every event, besides the id traits a user configures.
BUILT_IN = ("user_id", "anonymous_id", "email", "previous_id", "external")


def _quoted(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _split(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def identifiers_sql(settings: Settings, where: str = "true") -> str:
    """SELECT source, message_id, timestamp, id_type, id_value for events matching ``where``.

    Emails are trimmed and lower-cased; phone-like id traits keep digits and a leading ``+``;
    ``context.externalIds[]`` contribute their own ``type``; ``previous_id`` is an alias's old
    id. Blocked values never appear.
    """
    traits = _split(settings.identity_id_traits)
    trait_rows = "".join(
        f"""
      UNION ALL SELECT source, message_id, timestamp, '{t}',
        regexp_replace(coalesce(traits->>'{t}', context->'traits'->>'{t}'), '[^0-9+]', '', 'g')
      FROM ev"""
        for t in traits
    )
    blocked = _quoted([v.lower() for v in _split(settings.identity_blocked_values)])
    pattern = settings.identity_blocked_pattern.replace("'", "''")
    return f"""
    WITH ev AS (SELECT * FROM events WHERE {where}),
    raw_ids AS (
      SELECT source, message_id, timestamp, 'user_id' AS id_type, user_id AS id_value FROM ev
      UNION ALL SELECT source, message_id, timestamp, 'anonymous_id', anonymous_id FROM ev
      UNION ALL SELECT source, message_id, timestamp, 'email',
        lower(trim(coalesce(traits->>'email', context->'traits'->>'email')))
      FROM ev
      UNION ALL SELECT source, message_id, timestamp, 'previous_id', previous_id FROM ev
      UNION ALL SELECT source, message_id, timestamp, lower(trim(x.type)), trim(x.id)
      FROM (SELECT source, message_id, timestamp,
                   unnest(try(from_json(context->'externalIds',
                                        '[{{"id": "VARCHAR", "type": "VARCHAR"}}]'))) AS x
            FROM ev WHERE (context->'externalIds') IS NOT NULL){trait_rows}
    )
    SELECT source, message_id, timestamp, id_type, id_value
    FROM raw_ids
    WHERE id_value IS NOT NULL AND id_type IS NOT NULL AND id_type <> ''
      -- PostHog also matches illegal ids inside quotes ("null", 'undefined').
      AND NOT list_contains({blocked}, lower(trim(id_value, ' "''')))
      AND NOT regexp_full_match(id_value, '{pattern}')
    """


def identifiers(ws: Any, where: str = "true") -> list[dict[str, Any]]:
    """The identifiers of the workspace's events (optionally filtered by a SQL condition)."""
    return list(ws.sql(identifiers_sql(ws.settings, where) + " ORDER BY timestamp, id_type"))
