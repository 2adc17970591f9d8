"""The event contract: the Segment spec, validated, corrected and deduplicated in the engine.

Every way in (HTTP, the library, file import, replay) hands raw JSON text to the single writer
(``store/writer.py``), which runs these SQL steps over everything it has gathered:

1. ``explode``: request bodies become items (a batch's ``batch[]`` is unnested, its ``context``,
   ``integrations`` and ``sentAt`` are carried onto each item); file lines already are items;
2. ``normalize``: every item is parsed once, checked against the contract (``RULES``), and gets
   a list of typed reasons (empty when valid) and its corrected ``timestamp``;
3. ``classify`` and append, in one transaction: valid items are deduplicated on
   (source, messageId) and appended to ``events``; everything refused goes to
   ``failed_events`` with its raw text. The writer's in-memory key index
   (``store/keys.py``) picks the few rows that need comparing with stored events in SQL.

Steps 1-2 touch no table, so the writer runs them for the next group while step 3 commits the
previous one.

The work is vectorised in DuckDB: there is no Python loop per event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CALLS = ("track", "identify", "page", "screen", "group", "alias")

# Reason code -> what was wrong and how to fix it. The HTTP API, the CLI and failed-event
# listings all read from here, so a reason is described the same way everywhere.
REASONS: dict[str, str] = {
    "invalid_json": "The body is not valid JSON; send a JSON object (UTF-8).",
    "invalid_encoding": "The body is not valid UTF-8 text; encode the JSON as UTF-8.",
    "not_an_object": 'The event must be a JSON object such as {"type": "track", ...}.',
    "batch_not_a_list": "A batch request needs a `batch` array of events.",
    "too_many_events": "The batch holds more events than max_batch_events allows; split it.",
    "request_too_large": "The request body exceeds max_request_bytes (500 KB); send smaller "
    "batches.",
    "invalid_gzip": "The body is marked gzip (Content-Encoding) but is not valid gzip; send it "
    "uncompressed or fix the encoding.",
    "invalid_type": "`type` must be one of track, identify, page, screen, group, alias.",
    "missing_identity": "Every event needs a non-empty `userId` or `anonymousId`.",
    "missing_event": "A track call needs a non-empty `event` name.",
    "missing_previous_id": "An alias call needs `previousId` (the old id) and `userId`.",
    "missing_group_id": "A group call needs a non-empty `groupId`.",
    "message_id_too_long": "`messageId` is longer than max_message_id_chars (100); shorten it.",
    "event_too_large": "The event exceeds max_event_bytes (32 KB); trim its properties.",
    "invalid_timestamp": "`timestamp`, `originalTimestamp`, `sentAt` or `receivedAt` is not an "
    "ISO-8601 date-time such as 2026-07-01T12:00:00.000Z.",
    "invalid_field_type": "An id field (`userId`, `anonymousId`, `messageId`, `event`, ...) must "
    "be a string or number, and `properties`, `traits`, `context`, `integrations` objects.",
    "message_id_conflict": "An event with this source and messageId was already stored with a "
    "different payload; it was kept aside. Send it with a new messageId to store both.",
}

# --- step 1: request bodies -> items -------------------------------------------------------
# requests(req, source, origin, call, body, received_at, trusted, file)
REQUEST_CHECK_SQL = """
WITH parsed_body AS (
  -- A batch body is parsed once, here; the slower checks below only run for bodies that
  -- did not parse as a batch, to say why.
  SELECT r.*,
    CASE WHEN call = 'batch' THEN try(from_json(body, '{"batch": ["JSON"], '
      '"sentAt": "VARCHAR", "context": "JSON", "integrations": "JSON"}')) END AS b
  FROM requests r
)
SELECT parsed_body.*,
       CASE
         WHEN b.batch IS NOT NULL THEN
           CASE WHEN len(b.batch) > $max_batch THEN 'too_many_events' END
         WHEN NOT json_valid(body) THEN 'invalid_json'
         WHEN call = 'batch' AND json_type(body) <> 'OBJECT' THEN 'not_an_object'
         WHEN call = 'batch' THEN 'batch_not_a_list'
       END AS request_reason
FROM parsed_body
"""

EXPLODE_SQL = """
-- A JSON null in the batch unnests as SQL NULL; as text it is refused as not an object.
SELECT req, pos, source, origin, NULL::VARCHAR AS call, coalesce(raw::VARCHAR, 'null') AS raw,
       received_at,
       trusted, file, batch_sent_at, batch_context, batch_integrations
FROM (
  -- Batch-level fields come from the parsed body beside the unnest, not re-extracted from
  -- the whole body for every item.
  SELECT req, source, origin, received_at, trusted, file,
         b.sentAt AS batch_sent_at, b.context AS batch_context,
         b.integrations AS batch_integrations,
         unnest(b.batch) AS raw, generate_subscripts(b.batch, 1) - 1 AS pos
  FROM req_checked WHERE call = 'batch' AND request_reason IS NULL
)
UNION ALL BY NAME
SELECT req, 0::BIGINT AS pos, source, origin, call, body AS raw, received_at, trusted, file,
       NULL::VARCHAR AS batch_sent_at, NULL::JSON AS batch_context,
       NULL::JSON AS batch_integrations
FROM req_checked WHERE call <> 'batch' AND request_reason IS NULL
$file_items
"""

# Pre-split items (a replay) join the exploded requests in the same statement: a temp table
# created empty and then filled with more than one row group in the same transaction reads
# back empty on DuckDB 2.0.0 (tests/test_import.py guards it). A file import alone skips
# this step: its items are used as they are.
FILE_ITEMS_SQL = """
UNION ALL BY NAME
SELECT * FROM items_in
"""

# --- step 2: items -> staged rows with reasons ----------------------------------------------
# items(req, pos, source, origin, call, raw, received_at, trusted, file,
#       batch_sent_at, batch_context, batch_integrations)
# The fields the contract reads: (name in the payload, column), parsed in one pass.
ID_FIELDS = (("messageId", "f_message_id"), ("anonymousId", "f_anonymous_id"),
             ("userId", "f_user_id"), ("event", "f_event"), ("name", "f_name"),
             ("groupId", "f_group_id"), ("previousId", "f_previous_id"))
TEXT_FIELDS = (("type", "f_type"), *ID_FIELDS, ("originalTimestamp", "f_original_timestamp"),
               ("timestamp", "f_timestamp"), ("sentAt", "f_sent_at"),
               ("receivedAt", "f_received_at"), ("source", "f_source"))
NESTED_FIELDS = (("properties", "f_properties"), ("traits", "f_traits"),
                 ("context", "f_context"), ("integrations", "f_integrations"))
SPEC_STRUCT = "{" + ", ".join(
    [f'"{f}": "VARCHAR"' for f, _ in TEXT_FIELDS]
    + [f'"{f}": "JSON"' for f, _ in NESTED_FIELDS]) + "}"

# Each rule: a reason code and the condition (over the `typed` step) that raises it.
RULES: tuple[tuple[str, str], ...] = (
    ("invalid_json", "NOT is_json"),
    ("not_an_object", "is_json AND o IS NULL"),
    ("invalid_type", "o IS NOT NULL AND (type_ IS NULL OR type_ NOT IN $calls)"),
    # An object or array where an id belongs arrives as its JSON text (a string id that
    # itself spells a JSON object or array is refused too); nested parts must be objects.
    # DuckDB evaluates both sides of an AND for every row; CASE is what keeps the costly
    # JSON check to the rare id that starts with "{" or "[" (0.6 s per million rows saved).
    ("invalid_field_type", "o IS NOT NULL AND (" + " OR ".join(
        [f"CASE WHEN ascii({c}) IN (123, 91) "
         f"THEN coalesce(json_type(try_cast({c} AS JSON)), '') IN ('OBJECT', 'ARRAY') "
         "ELSE false END" for _, c in ID_FIELDS]
        + [f"ascii({c}::VARCHAR) <> 123" for _, c in NESTED_FIELDS]) + ")"),
    ("missing_identity", "o IS NOT NULL AND f_anonymous_id IS NULL AND f_user_id IS NULL"),
    ("missing_event", "type_ = 'track' AND f_event IS NULL"),
    ("missing_previous_id", "type_ = 'alias' AND f_previous_id IS NULL"),
    ("missing_group_id", "type_ = 'group' AND f_group_id IS NULL"),
    ("message_id_too_long", "length(f_message_id) > $max_message_id"),
    # File lines keep their line ending (zero-copy split); it does not count.
    ("event_too_large", "strlen(raw) - suffix(raw, chr(10))::INT "
                        "- suffix(raw, chr(13) || chr(10))::INT > $max_event_bytes"),
    ("invalid_timestamp", "(orig_text IS NOT NULL AND orig_ts IS NULL) "
                          "OR (sent_text IS NOT NULL AND sent_ts IS NULL) "
                          "OR (recv_text IS NOT NULL AND recv_ts IS NULL)"),
)

def _blank_to_null(text: str) -> str:
    """SQL: ``text`` trimmed, NULL when empty; the trim (a copy, about 70 ns) only runs for
    the rare value that starts or ends with whitespace."""
    return (f"CASE WHEN {text} = '' THEN NULL "
            f"WHEN ascii({text}) <= 32 OR ascii({text}[-1]) <= 32 "
            f"THEN nullif(trim({text}), '') ELSE {text} END")


def _utc(text: str) -> str:
    """SQL: an ISO-8601 text as a UTC TIMESTAMP, NULL when it is not one. A time in UTC
    ("...Z", nearly all of them) takes the plain cast, which is 2.5 times cheaper than the
    zone-aware one every other offset needs."""
    return (f"CASE WHEN ends_with({text}, 'Z') THEN try_cast({text} AS TIMESTAMP) "
            f"ELSE try_cast({text} AS TIMESTAMPTZ)::TIMESTAMP END")


NORMALIZE_SQL = """
WITH parsed AS (
  -- One parse per item into a typed struct; try() turns invalid JSON into NULL so the row
  -- can be explained instead of failing the load.
  SELECT i.*,
    -- starts_with first: ltrim copies the text, and almost every line starts with '{'.
    CASE WHEN starts_with(raw, '{') OR ltrim(raw)[1] = '{'
         THEN try(from_json(raw, '$spec_struct')) END AS o
  FROM items i
), fields AS (
  SELECT parsed.*,
    CASE WHEN o IS NULL THEN json_valid(raw) ELSE true END AS is_json,
    """ + ",\n    ".join(f"{_blank_to_null(f'o.{f}')} AS {c}" for f, c in TEXT_FIELDS) + """,
    """ + ",\n    ".join(f"o.{f} AS {c}" for f, c in NESTED_FIELDS) + """
  FROM parsed
), typed AS (
  SELECT fields.*,
    lower(coalesce(call, f_type)) AS type_,
    coalesce(f_original_timestamp, f_timestamp) AS orig_text,
    coalesce(f_sent_at, batch_sent_at) AS sent_text,
    CASE WHEN trusted THEN f_received_at END AS recv_text,
    """ + _utc("coalesce(f_original_timestamp, f_timestamp)") + """ AS orig_ts,
    """ + _utc("coalesce(f_sent_at, batch_sent_at)") + """ AS sent_ts,
    CASE WHEN trusted THEN """ + _utc("f_received_at") + """ END AS recv_ts
  FROM fields
), checked AS (
  SELECT typed.*,
    """ + ",\n    ".join(f"({cond}) AS r_{code}" for code, cond in RULES) + """
  FROM typed
)
SELECT
  req, pos,
  CASE WHEN trusted AND f_source IS NOT NULL THEN f_source ELSE source END AS source,
  origin, call, trusted, file$raw_column,
  -- Most events pass: the reason list is only built for those that do not.
  CASE WHEN """ + " OR ".join(f"coalesce(r_{code}, false)" for code, _ in RULES) + """
       THEN list_filter([""" + ", ".join(
           f"CASE WHEN r_{code} THEN '{code}' END" for code, _ in RULES) + """],
                        lambda x: x IS NOT NULL)
       ELSE []::VARCHAR[] END AS reasons,
  -- A missing messageId is assigned: from the content for trusted loads (so re-importing a
  -- file is a no-op), at random for live traffic (two identical clicks are two events).
  coalesce(f_message_id, 'bk-' || CASE WHEN trusted THEN md5(rtrim(raw, chr(13) || chr(10)))
                                      ELSE uuid()::VARCHAR END) AS message_id,
  type_ AS type, f_event AS event, f_name AS name,
  f_anonymous_id AS anonymous_id, f_user_id AS user_id, f_group_id AS group_id,
  f_previous_id AS previous_id,
  -- Segment's clock-skew correction: receivedAt - (sentAt - originalTimestamp).
  CASE WHEN orig_ts IS NOT NULL AND sent_ts IS NOT NULL
         THEN coalesce(recv_ts, received_at, $now_ts) - (sent_ts - orig_ts)
       ELSE coalesce(orig_ts, recv_ts, received_at, $now_ts) END AS timestamp,
  orig_ts AS original_timestamp, sent_ts AS sent_at,
  coalesce(recv_ts, received_at, $now_ts) AS received_at,
  f_properties AS properties, f_traits AS traits,
  CASE WHEN batch_context IS NULL THEN f_context WHEN f_context IS NULL THEN batch_context
       ELSE json_merge_patch(batch_context, f_context) END AS context,
  CASE WHEN batch_integrations IS NULL THEN f_integrations
       WHEN f_integrations IS NULL THEN batch_integrations
       ELSE json_merge_patch(batch_integrations, f_integrations) END AS integrations
FROM checked
"""

# The deduplication key is computed with the rest of step 2, so the commit only has to look it
# up (``store/keys.py``).
KEYED_SQL = """
SELECT s.*, CASE WHEN len(reasons) = 0 THEN hash(source, message_id) END AS key
FROM ($inner
) s
"""

# What a duplicate must match to be a harmless re-send: the payload but sentAt/receivedAt.
# It is only computed for the few rows that share a key (and for their stored events), not
# stored with every event: hashing every event's JSON cost a tenth of an import.
FINGERPRINT = ("hash(type, event, name, anonymous_id, user_id, group_id, previous_id, "
               "original_timestamp, properties::VARCHAR, traits::VARCHAR, context::VARCHAR)")

# Request bodies go from text to validated rows in one statement (each statement costs
# DuckDB's planner several milliseconds, which dominates small group commits; the writer
# prepares this one once per connection). A request refused as a whole becomes one row with
# no position, carrying its body.
PREPARE_REQUESTS_SQL = (
    "WITH req_checked AS (" + REQUEST_CHECK_SQL
    + "), items AS (" + EXPLODE_SQL + "), staged AS ("
    + KEYED_SQL.replace("$inner", NORMALIZE_SQL) + """)
SELECT * FROM staged
UNION ALL BY NAME
SELECT req, NULL::BIGINT AS pos, source, origin, call, trusted, file, body AS raw,
       received_at, [request_reason] AS reasons
FROM req_checked WHERE request_reason IS NOT NULL
""")

# --- step 3: staged -> events / failed_events -----------------------------------------------

FAIL_ITEMS_SQL = """
INSERT INTO failed_events (load_id, source, origin, call, received_at, file, position,
                           message_id, reasons, raw)
SELECT $load_id, s.source, s.origin, s.call, s.received_at, s.file, s.pos, s.message_id,
       s.reasons, rtrim(i.raw, chr(13) || chr(10))
FROM classified s JOIN raws i ON i.req = s.req AND i.pos IS NOT DISTINCT FROM s.pos
WHERE s.outcome = 'failed'
"""

# A duplicate is the same (source, messageId); it is a harmless re-send when its payload
# fingerprint (everything but sentAt/receivedAt) matches the stored one, and a conflict (kept
# aside, never dropped) when it does not: Snowplow's natural vs synthetic duplicates.
# The writer's key index picks the suspects: valid rows whose key was stored before or repeats
# within the load (every row of such a key). Only they are classified here; the rest are new.
CLASSIFY_SQL = """
WITH v AS (SELECT *, """ + FINGERPRINT + """ AS fingerprint FROM suspects
), repeated AS (
  SELECT key FROM v GROUP BY key HAVING count(*) > 1
), ranked AS (
  SELECT _row, row_number() OVER w AS rn, first_value(fingerprint) OVER w AS first_fp
  FROM v WHERE key IN (SELECT key FROM repeated)
  WINDOW w AS (PARTITION BY key, source, message_id ORDER BY req, pos)
), earlier AS (
  SELECT key, source, message_id, any_value(""" + FINGERPRINT + """) AS stored_fp
  FROM events
  WHERE key IN (SELECT key FROM v) $window_filter
  GROUP BY ALL
)
SELECT v._row,
  CASE
    WHEN e.stored_fp IS NOT NULL AND e.stored_fp = v.fingerprint THEN 1
    WHEN e.stored_fp IS NOT NULL THEN 2
    WHEN r.rn > 1 AND r.first_fp = v.fingerprint THEN 1
    WHEN r.rn > 1 THEN 2
    ELSE 0
  END AS outcome
FROM v LEFT JOIN earlier e USING (key, source, message_id) LEFT JOIN ranked r USING (_row)
"""

# Outcome codes of the ``outcome`` column the writer adds to the staged rows.
OUTCOMES = ("new", "duplicate", "conflict", "failed")

INSERT_EVENTS_SQL = """
INSERT INTO events
SELECT message_id, source, type, event, name, anonymous_id, user_id, group_id, previous_id,
       timestamp, original_timestamp, sent_at, received_at, properties, traits, context,
       integrations, key, $load_id
FROM classified WHERE outcome = 'new'
"""

FAIL_CONFLICTS_SQL = """
INSERT INTO failed_events (load_id, source, origin, call, received_at, file, position,
                           message_id, reasons, raw)
SELECT $load_id, c.source, c.origin, c.call, c.received_at, c.file, c.pos, c.message_id,
       ['message_id_conflict'], rtrim(i.raw, chr(13) || chr(10))
FROM classified c JOIN raws i USING (req, pos) WHERE c.outcome = 'conflict'
"""


# --- the library's own events, already typed ------------------------------------------------
# Events the library builds itself (a survey answer, a case opened) are known to be valid:
# they skip steps 1-2 (the parse and validation statement, about 5-7 ms of CPU per group
# commit however few events it holds) and go to step 3 as staged rows, deduplicated and
# committed like any other. Only events plainly within the contract take this way; anything
# else is sent as text and validated as strictly as every other event.
_TYPED_FIELDS = frozenset({"event", "userId", "anonymousId", "messageId", "properties",
                           "context", "timestamp"})


def _plain_id(value: Any) -> bool:
    """A non-empty string id that normalize would keep as it is (no blank ends, not JSON)."""
    return (isinstance(value, str) and value != "" and value[0] > " " and value[-1] > " "
            and value[0] not in "{[")


def typed_track(payload: dict[str, Any], raw: str, source: str, at: datetime,
                max_message_id: int, max_event_bytes: int) -> dict[str, Any] | None:
    """The staged row (without req, received_at and key) of library track call ``payload``,
    whose JSON text is ``raw`` and whose timestamp is ``at`` (UTC); None when the event is
    not plainly valid, and must be validated by the engine instead."""
    if not (payload.keys() <= _TYPED_FIELDS and _plain_id(payload.get("event"))
            and _plain_id(payload.get("messageId"))
            and len(payload["messageId"]) <= max_message_id
            and len(raw.encode()) <= max_event_bytes):
        return None
    user, anon = payload.get("userId"), payload.get("anonymousId")
    if not (_plain_id(user) or (user is None and _plain_id(anon))) or (
            anon is not None and not _plain_id(anon)):
        return None
    nested = {}
    for name in ("properties", "context"):
        value = payload.get(name)
        if value is not None and not isinstance(value, dict):
            return None
        nested[name] = None if value is None else _json_text(value)
    return {"pos": 0, "source": source, "origin": "library", "call": "track", "trusted": True,
            "file": None, "raw": raw, "reasons": [], "message_id": payload["messageId"],
            "type": "track", "event": payload["event"], "name": None, "anonymous_id": anon,
            "user_id": user, "group_id": None, "previous_id": None, "timestamp": at,
            "original_timestamp": at, "sent_at": None, **nested, "traits": None,
            "integrations": None}


def _json_text(value: dict[str, Any]) -> str:
    import orjson  # the engine's JSON text of a parsed object is compact, as orjson writes

    return orjson.dumps(value, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z).decode()


@dataclass
class Outcome:
    """What happened to one request (or one import chunk)."""

    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    request_reason: str | None = None
    load_id: int | None = None

    @property
    def failed(self) -> int:
        return sum(1 for f in self.failures if f["reason_codes"] != ["message_id_conflict"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "failed": self.failed,
            "failures": self.failures,
        }


def contract_markdown() -> str:
    """docs/contract.md: every reason an event or request can be refused for, and the fix."""
    lines = [
        "# The event contract",
        "",
        "Generated from `bowknot.ingest.REASONS` (`bowknot settings` lists the limits).",
        "Every refused event or request is kept in `failed_events` with its raw text and these",
        "codes; `bowknot failed list` shows them and `bowknot failed replay` sends them again.",
        "",
        "| code | what was wrong, and the fix |",
        "|---|---|",
    ]
    lines += [f"| `{code}` | {message} |" for code, message in REASONS.items()]
    return "\n".join(lines) + "\n"


def describe(codes: list[str]) -> list[dict[str, str]]:
    """Reason codes with the message that says how to fix each."""
    return [{"code": c, "message": REASONS.get(c, c)} for c in codes]


_SAFE_PARSE = "try(from_json(raw, '$spec_struct'))"


def optimistic(sql: str) -> str:
    """``sql`` parsing items without ``try()``: about a quarter cheaper, but it fails outright
    when any item is not valid JSON; the writer then runs ``sql`` itself."""
    assert _SAFE_PARSE in sql
    return sql.replace(_SAFE_PARSE, "from_json(raw, '$spec_struct')")


def substitute(sql: str, values: dict[str, Any]) -> str:
    """Fill ``$name`` placeholders with trusted, internally produced literals.

    Values come from settings and the writer, never from a request, so no user text reaches
    the SQL; DuckDB cannot bind parameters in DDL, which is why this exists.
    """
    for name in sorted(values, key=len, reverse=True):
        sql = sql.replace("$" + name, str(values[name]))
    return sql
