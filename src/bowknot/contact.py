"""Contact rules: who of a set of persons a survey invites, in one statement.

Both a send to a saved cohort (``ws.surveys.invite_cohort``) and the journey triggers
(survey_triggers.py) invite through :func:`invite_members`, so the rules are the same:

* once per person, survey and trigger (a second send or a re-evaluation invites nobody twice);
* nobody asked (by any survey) within ``survey_contact_days``;
* the survey's ``sample`` share, and its ``holdout`` share recorded but never asked (channel
  ``holdout``), both decided by a hash of (person, survey), so stable;
* ``send_after``: outside quiet hours (``survey_quiet_hours``) in the person's time zone
  (trait ``timezone``, else ``survey_default_timezone``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import duckdb

from . import survey_text
from .errors import ValidationError
from .store.engine import run

# The channels an invitation is delivered through ("holdout" marks those never asked).
CHANNELS = ("link", "email", "webhook")


def check_channel(channel: str) -> None:
    """Refuse a channel bowknot cannot deliver through, before anything is written."""
    if channel not in CHANNELS:
        raise ValidationError(f"channel {channel!r}: use link, email or webhook.",
                              code="invalid_channel")


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
         ) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def quiet_hours(text: str) -> tuple[int, int] | None:
    """``"21-8"`` -> (21, 8): no message from 21:00 to 08:00 local time; empty: none."""
    if not text.strip():
        return None
    try:
        start, end = (int(x) for x in text.split("-"))
    except ValueError:
        raise ValidationError(f"survey_quiet_hours {text!r}: use START-END hours, e.g. 21-8.",
                              setting="survey_quiet_hours") from None
    if not (0 <= start <= 23 and 0 <= end <= 23 and start != end):
        raise ValidationError("survey_quiet_hours: two different hours from 0 to 23.",
                              setting="survey_quiet_hours")
    return start, end


def _send_after(text: str) -> str:
    quiet = quiet_hours(text)
    if quiet is None:
        return "NULL::TIMESTAMP"
    start, end = quiet
    in_quiet = (f"(hour(local) >= {start} OR hour(local) < {end})" if start > end
                else f"(hour(local) >= {start} AND hour(local) < {end})")
    next_day = f"hour(local) >= {start}" if start > end else "false"
    return f"""CASE WHEN {in_quiet} THEN timezone(tz, date_trunc('day', local)
        + INTERVAL (CASE WHEN {next_day} THEN 1 ELSE 0 END) DAY
        + INTERVAL ({end}) HOUR)::TIMESTAMP END"""


def invite_members(con: duckdb.DuckDBPyConnection, settings: Any, survey: dict[str, Any],
                   members: str, params: list[Any], *, trigger: str, channel: str,
                   now: datetime) -> dict[str, Any]:
    """Invite the persons of the query ``members`` (a ``person_id`` column; ``params`` are
    its parameters) to ``survey`` under the contact rules, on ``con`` (the caller's
    transaction, if any). Returns the count per rule: members, already (invited by this
    trigger before), contacted_recently, not_sampled, invited, holdout, deferred_quiet_hours.
    """
    survey_id = survey["survey_id"]
    contact_days = int(settings.survey_contact_days)
    tz_default = str(settings.survey_default_timezone).replace("'", "")
    expires = now + timedelta(days=settings.survey_link_days)
    send_after = _send_after(settings.survey_quiet_hours)
    available = sorted({*survey_text.LANGUAGES, *survey["translations"]})
    langs = "[" + ", ".join("'" + x.replace("'", "") + "'" for x in available) + "]"
    # Invitations by their person as of now: a person merged into another since is the other.
    current = """(SELECT coalesce(r.person_id, i.person_id) AS person_id, i.survey_id,
                         i.trigger, i.channel, i.created_at
                  FROM survey_invitations i
                  LEFT JOIN person_redirects r ON r.old_person_id = i.person_id)"""
    run(con, f"""CREATE OR REPLACE TEMP TABLE s_members AS
        SELECT person_id, (hash(person_id, ?) % 10000) / 10000.0 AS draw
        FROM (SELECT DISTINCT person_id FROM ({members}) WHERE person_id IS NOT NULL)""",
        [survey_id, *params])
    run(con, f"""CREATE OR REPLACE TEMP TABLE s_asked AS
        SELECT DISTINCT person_id FROM {current}
        WHERE channel <> 'holdout' AND created_at > ?::TIMESTAMP - to_days(?)
          AND person_id IN (SELECT person_id FROM s_members)""", [now, contact_days])
    run(con, f"""CREATE OR REPLACE TEMP TABLE s_already AS
        SELECT DISTINCT person_id FROM {current} WHERE survey_id = ? AND trigger = ?
          AND person_id IN (SELECT person_id FROM s_members)""", [survey_id, trigger])
    counts = rows(con, """SELECT count(*) AS members,
        count(*) FILTER (WHERE person_id IN (SELECT person_id FROM s_already)) AS already,
        count(*) FILTER (WHERE person_id IN (SELECT person_id FROM s_asked)) AS contacted_recently,
        count(*) FILTER (WHERE draw >= ?) AS not_sampled
        FROM s_members""", [survey["sample"]])[0]
    # Identifiers, language and time zone of those who will be invited (or held out) only.
    run(con, f"""CREATE OR REPLACE TEMP TABLE s_cand AS
        WITH members AS (
          SELECT * FROM s_members WHERE draw < ?
            AND person_id NOT IN (SELECT person_id FROM s_already)
            AND person_id NOT IN (SELECT person_id FROM s_asked)),
        ids AS (
          SELECT person_id,
                 arg_min(id_value, first_seen) FILTER (WHERE id_type = 'user_id') AS u,
                 arg_min(id_value, first_seen) FILTER (WHERE id_type = 'anonymous_id') AS a,
                 arg_min(id_value, first_seen) FILTER (WHERE id_type = 'email') AS e
          FROM identities SEMI JOIN members USING (person_id)
          WHERE status = 'linked' AND id_type IN ('user_id', 'anonymous_id', 'email')
          GROUP BY person_id),
        traits AS (
          SELECT person_id,
                 any_value(value->>'$') FILTER (WHERE trait IN ('language', 'locale')) AS lang,
                 any_value(value->>'$') FILTER (WHERE trait = 'timezone') AS tz
          FROM person_traits SEMI JOIN members USING (person_id)
          WHERE trait IN ('language', 'locale', 'timezone') GROUP BY person_id),
        h AS (SELECT m.person_id, m.draw, ids.u, ids.a, ids.e, traits.lang,
                     CASE WHEN traits.tz IN (SELECT name FROM pg_timezone_names())
                          THEN traits.tz ELSE '{tz_default}' END AS tz
              FROM members m LEFT JOIN ids USING (person_id)
              LEFT JOIN traits USING (person_id))
        SELECT *, timezone(tz, ?::TIMESTAMP::TIMESTAMPTZ) AS local FROM h""",
        [survey["sample"], now])
    run(con, f"""INSERT INTO survey_invitations (invitation_id, survey_id, person_id,
            trigger, channel, language, user_id, anonymous_id, email, created_at,
            expires_at, send_after)
        SELECT substr(md5(person_id || ? || ? || ?::VARCHAR), 1, 20), ?, person_id, ?,
               CASE WHEN draw < ? THEN 'holdout' ELSE ? END,
               CASE WHEN list_contains({langs}, lower(split_part(lang, '-', 1)))
                    THEN lower(split_part(lang, '-', 1)) ELSE ? END,
               u, CASE WHEN u IS NULL THEN coalesce(a, 'survey-' || md5(person_id)) END,
               e, ?, ?, {send_after}
        FROM s_cand""",
        [survey_id, trigger, now, survey_id, trigger, survey["holdout"], channel,
         survey["language"], now, expires])
    made = rows(con, """SELECT count(*) FILTER (WHERE channel <> 'holdout') AS invited,
            count(*) FILTER (WHERE channel = 'holdout') AS holdout,
            count(*) FILTER (WHERE send_after > ?) AS deferred_quiet_hours
        FROM survey_invitations WHERE survey_id = ? AND trigger = ? AND created_at = ?""",
                [now, survey_id, trigger, now])[0]
    return {**counts, **made}
