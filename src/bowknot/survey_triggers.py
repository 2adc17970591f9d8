"""Survey triggers: rules over the journey that invite people as events arrive (issue 6).

A trigger sends one survey to everyone who matches a rule:

* ``event``: did A (an event with property filters), e.g. ``Ticket Closed[topic=pickup]``;
* ``absence``: did A but not B within T, e.g. clicked campaign X and did not book within 3
  days (the rule of a saved cohort, ``cohort=NAME``, is copied into the trigger). A person
  enters at their first A (as in :mod:`bowknot.journeys.cohorts`) and matches once T has
  passed with no B after it.

Triggers are evaluated after every build (a builder hook), incrementally: only persons with
events in loads built since the trigger's watermark (``evaluated_load``), plus persons whose
window closed since the last evaluation (an A at ``evaluated_until - T`` .. ``now - T``), even
with no new events. The matches are invited in one statement under the contact rules
(contact.py); invitations are unique per survey, person and trigger (the trigger's name), so
re-evaluation, retries and overlapping runs never invite anybody twice. The watermark moves in
the same transaction as the invitations. Delivery is the existing channels' (``send-due``).
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import contact
from .errors import NotFound, ValidationError
from .store.engine import run

if TYPE_CHECKING:
    from .build import BuildResult
    from .journeys.steps import Step
    from .workspace import Workspace

log = logging.getLogger("bowknot.triggers")

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS survey_triggers (
        name VARCHAR, survey_id VARCHAR, kind VARCHAR, rule JSON, channel VARCHAR,
        since TIMESTAMP, active BOOLEAN, created_at TIMESTAMP,
        evaluated_load BIGINT, evaluated_until TIMESTAMP, evaluated_at TIMESTAMP,
        evaluations BIGINT, invited BIGINT, holdout BIGINT, last_error VARCHAR)""",
)

NAME = re.compile(r"^[a-z0-9][a-z0-9_:-]{0,63}$")
CHANNELS = ("link", "email", "webhook")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _since(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if (
            value is not None and value.tzinfo) else value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"since={value!r}: give an ISO date or time, e.g. 2026-11-01 or "
                              "2026-11-01T09:00:00Z.", code="invalid_since") from None
    return _since(parsed)


class Triggers:
    """The survey triggers of a workspace (``ws.surveys.triggers``)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._last_run = 0.0

    # -- the catalogue ----------------------------------------------------------------------
    def add(self, survey_id: str, name: str, *, event: str | Mapping[str, Any] | None = None,
            did: str | Mapping[str, Any] | None = None,
            did_not: str | Mapping[str, Any] | None = None,
            within: str | int | timedelta | None = None, cohort: str | None = None,
            channel: str = "email", since: str | datetime | None = None) -> dict[str, Any]:
        """Add trigger ``name`` sending ``survey_id``: on ``event``; or to whoever did ``did``
        and not ``did_not`` within ``within``; or by the rule of saved cohort ``cohort``.
        ``since``: only A events from then on count (default: the whole history, so the first
        evaluation is a backfill under the contact rules)."""
        from .journeys.steps import Step, seconds  # the journeys package loads Ibis: lazily

        self.ws.surveys.get(survey_id)
        if not isinstance(name, str) or not NAME.match(name):
            raise ValidationError(
                f"Trigger name {name!r}: use 1-64 lower-case letters, digits, '-', '_' or ':'.",
                code="invalid_trigger")
        if channel not in CHANNELS:
            raise ValidationError(f"channel {channel!r}: use link, email or webhook.",
                                  code="invalid_channel")
        given = [x for x in ("event", "did", "cohort")
                 if {"event": event, "did": did, "cohort": cohort}[x] is not None]
        if len(given) != 1:
            raise ValidationError(
                "Give one rule: event='Ticket Closed' (did A), or did='Campaign Clicked"
                "[campaign_id=X]' with did_not='Booking Completed' and within='3d' (did A but "
                "not B within T), or cohort=NAME (the rule of a saved cohort).",
                code="invalid_trigger")
        if cohort is not None:
            definition = self.ws.journeys.cohorts.get(cohort)["definition"]
            did, did_not, within = (definition["did"], definition["did_not"],
                                    definition["within_seconds"])
        rule: dict[str, Any]
        if event is not None:
            if did_not is not None or within is not None:
                raise ValidationError("An event trigger takes no did_not or within; use did= "
                                      "for 'did A but not B within T'.", code="invalid_trigger")
            rule = {"did": Step.of(event).to_dict()}
            kind = "event"
        else:
            assert did is not None
            if did_not is None or within is None:
                raise ValidationError("did= needs did_not= (B) and within= (T), e.g. "
                                      "within='3d'.", code="invalid_trigger")
            rule = {"did": Step.of(did).to_dict(), "did_not": Step.of(did_not).to_dict(),
                    "within_seconds": seconds(within)}
            kind = "absence"
        if cohort is not None:
            rule["cohort"] = cohort
        with self.ws.builder.transaction() as con:
            if run(con, "SELECT 1 FROM survey_triggers WHERE name = ?", [name]):
                raise ValidationError(
                    f"A trigger named {name!r} exists; remove it first or pick another name "
                    "(`bowknot surveys trigger list`).", code="trigger_exists")
            run(con, """INSERT INTO survey_triggers VALUES (?, ?, ?, ?, ?, ?, true, ?, NULL,
                        NULL, NULL, 0, 0, 0, NULL)""",
                [name, survey_id, kind, json.dumps(rule), channel, _since(since), _now()])
        return self.get(name)

    def list(self, survey_id: str | None = None) -> list[dict[str, Any]]:
        rows = self.ws.store.query("""SELECT * FROM survey_triggers
            WHERE ? IS NULL OR survey_id = ? ORDER BY name""", [survey_id, survey_id])
        for r in rows:
            r["rule"] = json.loads(r["rule"])
            r["describe"] = describe(r)
        return rows

    def get(self, name: str) -> dict[str, Any]:
        found = [r for r in self.list() if r["name"] == name]
        if not found:
            raise NotFound(f"No survey trigger {name!r}; `bowknot surveys trigger list` shows "
                           "them.", code="trigger_not_found")
        return found[0]

    def _set_active(self, name: str, active: bool) -> dict[str, Any]:
        self.get(name)
        with self.ws.builder.transaction() as con:
            run(con, "UPDATE survey_triggers SET active = ? WHERE name = ?", [active, name])
        return self.get(name)

    def pause(self, name: str) -> dict[str, Any]:
        """Stop evaluating ``name``; its watermark stays where it was."""
        return self._set_active(name, False)

    def resume(self, name: str) -> dict[str, Any]:
        """Evaluate ``name`` again, from its watermark: what arrived while it was paused is
        evaluated at the next build (under the contact rules)."""
        return self._set_active(name, True)

    def remove(self, name: str) -> None:
        """Delete trigger ``name``; the invitations it made stay (they are history)."""
        self.get(name)
        with self.ws.builder.transaction() as con:
            run(con, "DELETE FROM survey_triggers WHERE name = ?", [name])

    # -- evaluation ---------------------------------------------------------------------------
    def after_build(self, result: BuildResult) -> None:
        """The builder's hook: evaluate the active triggers after a build that brought events,
        and at least every ``survey_trigger_seconds`` otherwise (windows close without new
        events). A failing trigger is logged and recorded on it; the build stands."""
        interval = float(self.ws.settings.survey_trigger_seconds)
        if result.skipped and time.monotonic() - self._last_run < interval:
            return
        if not self.ws.store.query("SELECT 1 FROM survey_triggers WHERE active LIMIT 1"):
            return
        self._last_run = time.monotonic()
        for name in [r["name"] for r in self.list() if r["active"]]:
            try:
                self.evaluate(name)
            except Exception as exc:  # one bad trigger must not stop the others or the build
                log.exception("survey trigger %s failed", name)
                with self.ws.builder.transaction() as con:
                    run(con, "UPDATE survey_triggers SET last_error = ? WHERE name = ?",
                        [f"{type(exc).__name__}: {exc}", name])

    def evaluate(self, name: str, *, full: bool = False) -> dict[str, Any]:
        """Evaluate trigger ``name`` now (incrementally from its watermark unless ``full``)
        and invite its new matches; returns what happened, with the count per contact rule."""
        trigger = self.get(name)
        survey = self.ws.surveys.get(trigger["survey_id"])
        started = time.perf_counter()
        with self.ws.builder.transaction() as con, self.ws.surveys._lock:
            built = run(con, "SELECT value FROM meta WHERE key = 'build_load_id'")
            high = int(built[0][0]) if built else 0
            now = _now()
            incremental = not full and trigger["evaluated_load"] is not None
            matches, params = match_sql(trigger, now)
            phases: dict[str, float] = {}
            if incremental:
                within = int(trigger["rule"].get("within_seconds", 0))
                cand, cparams = candidates_sql(trigger, trigger["evaluated_load"], high,
                                               trigger["evaluated_until"] - timedelta(
                                                   seconds=within), now - timedelta(
                                                   seconds=within))
                run(con, f"CREATE OR REPLACE TEMP TABLE t_cand AS {cand}", cparams)
                matches, params = match_sql(trigger, now, "t_cand")
                phases["candidates"] = time.perf_counter() - started
            run(con, f"CREATE OR REPLACE TEMP TABLE t_match AS {matches}", params)
            phases["match"] = time.perf_counter() - started - sum(phases.values())
            considered = (run(con, "SELECT count(*) FROM t_cand")[0][0] if incremental
                          else None)
            counts = contact.invite_members(
                con, self.ws.settings, survey, "SELECT person_id FROM t_match", [],
                trigger=name, channel=trigger["channel"], now=now)
            phases["invite"] = time.perf_counter() - started - sum(phases.values())
            run(con, """UPDATE survey_triggers SET evaluated_load = ?, evaluated_until = ?,
                evaluated_at = ?, evaluations = evaluations + 1, invited = invited + ?,
                holdout = holdout + ?, last_error = NULL WHERE name = ?""",
                [high, now, now, counts["invited"], counts["holdout"], name])
        counts["matched"] = counts.pop("members")
        return {"trigger": name, "survey_id": trigger["survey_id"],
                "mode": "incremental" if incremental else "full", "through_load": high,
                "candidates": considered, **counts,
                "seconds": round(time.perf_counter() - started, 3),
                "phases": {k: round(v, 3) for k, v in phases.items()}}

    def evaluate_all(self, *, full: bool = False) -> builtins.list[dict[str, Any]]:
        """Evaluate every active trigger now."""
        return [self.evaluate(r["name"], full=full) for r in self.list() if r["active"]]


def _step(spec: Any) -> Step:
    from .journeys.steps import Step

    return Step.of(spec)


def describe(trigger: Mapping[str, Any]) -> str:
    rule = trigger["rule"]
    did = str(_step(rule["did"]))
    if trigger["kind"] == "event":
        return did
    return (f"{did} and not {_step(rule['did_not'])} within "
            f"{_duration(int(rule['within_seconds']))}")


def _duration(s: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


# The persons of events as the person_events view finds them (userId, else anonymousId, else
# the fallback identifier), with the filter on the raw events first, so only matching events
# are joined to identities.
def _person_events(where: str, columns: str = "") -> str:
    return f"""(SELECT e.* EXCLUDE (key, user_id, anonymous_id),
               coalesce(u.person_id, a.person_id, f.person_id) AS person_id
        FROM (SELECT key, user_id, anonymous_id, timestamp, load_id {columns} FROM events
              WHERE {where}) e
        LEFT JOIN (SELECT id_value, person_id FROM identities WHERE id_type = 'user_id') u
          ON u.id_value = e.user_id
        LEFT JOIN (SELECT id_value, person_id FROM identities
                   WHERE id_type = 'anonymous_id') a ON a.id_value = e.anonymous_id
        LEFT JOIN (SELECT x.key, i.person_id FROM event_fallback x JOIN identities i
                   USING (node)) f ON f.key = e.key)"""


def match_sql(trigger: Mapping[str, Any], now: datetime, among: str | None = None
              ) -> tuple[str, list[Any]]:
    """The persons the trigger's rule matches at ``now`` (``person_id``, ``entered_at``), only
    among the persons of table ``among`` when given. One statement, one pass over the events
    (A and B events together)."""
    rule = trigger["rule"]
    a_cond, a_params = _step(rule["did"]).sql()
    if trigger["since"] is not None:
        a_cond += " AND timestamp >= ?"
        a_params.append(trigger["since"])
    b_cond, b_params = (_step(rule["did_not"]).sql() if "did_not" in rule
                        else ("false", []))
    within = int(rule.get("within_seconds", 0))
    columns = f", ({a_cond}) AS is_a, ({b_cond}) AS is_b"
    where = f"({a_cond}) OR ({b_cond})"
    params = [*a_params, *b_params, *a_params, *b_params]
    if among is None:
        events = f"""SELECT person_id, timestamp, is_a, is_b
            FROM {_person_events(where, columns)} WHERE person_id IS NOT NULL"""
    else:
        # Only the candidates' events, joined to the candidates' identifiers alone (small
        # hash tables). An event is its userId's when that is valid, else its anonymousId's
        # (as in person_events), so an anonymousId match counts only without a valid userId.
        events = f"""WITH ids AS MATERIALIZED (
              SELECT id_type, id_value, person_id FROM identities
              WHERE person_id IN (SELECT person_id FROM {among})),
            ev AS MATERIALIZED (SELECT key, user_id, anonymous_id, timestamp {columns}
                                FROM events WHERE {where}),
            by_anon AS MATERIALIZED (
              SELECT i.person_id, ev.user_id, ev.timestamp, ev.is_a, ev.is_b FROM ev
              JOIN ids i ON i.id_type = 'anonymous_id' AND i.id_value = ev.anonymous_id),
            valid AS (SELECT id_value FROM identities WHERE id_type = 'user_id'
                      AND id_value IN (SELECT user_id FROM by_anon))
            SELECT i.person_id, ev.timestamp, ev.is_a, ev.is_b FROM ev
              JOIN ids i ON i.id_type = 'user_id' AND i.id_value = ev.user_id
            UNION ALL
            SELECT person_id, timestamp, is_a, is_b FROM by_anon
            WHERE user_id IS NULL OR user_id NOT IN (SELECT id_value FROM valid)
            UNION ALL
            SELECT i.person_id, ev.timestamp, ev.is_a, ev.is_b FROM ev
              JOIN event_fallback x ON x.key = ev.key JOIN identities i ON i.node = x.node
            WHERE i.person_id IN (SELECT person_id FROM {among})"""
    sql = f"""WITH ev AS MATERIALIZED ({events}),
        a AS (SELECT person_id, min(timestamp) AS entered_at FROM ev WHERE is_a
              GROUP BY person_id)
        SELECT person_id, entered_at FROM a
        WHERE entered_at <= ?::TIMESTAMP - to_seconds(?)
          AND NOT EXISTS (SELECT 1 FROM ev b WHERE b.is_b AND b.person_id = a.person_id
                          AND b.timestamp > a.entered_at
                          AND b.timestamp <= a.entered_at + to_seconds(?))"""
    return sql, [*params, now, within, within]


def candidates_sql(trigger: Mapping[str, Any], low: int, high: int, closed_after: datetime,
                   closed_until: datetime) -> tuple[str, list[Any]]:
    """Persons whose match may have changed since the last evaluation: those with events in
    loads ``low`` .. ``high`` (new events, merges), and those with an A event whose window
    closed in between (A at ``closed_after`` .. ``closed_until``). A superset is harmless
    (the match decides), so every person of the events' identifiers is taken."""
    a_cond, a_params = _step(trigger["rule"]["did"]).sql()
    return (f"""WITH new AS MATERIALIZED (
              SELECT key, user_id, anonymous_id FROM events WHERE load_id > ? AND load_id <= ?
              UNION ALL
              SELECT key, user_id, anonymous_id FROM events
              WHERE timestamp > ? AND timestamp <= ? AND {a_cond})
            SELECT person_id FROM identities
              WHERE id_type = 'user_id' AND id_value IN (SELECT user_id FROM new)
            UNION
            SELECT person_id FROM identities
              WHERE id_type = 'anonymous_id' AND id_value IN (SELECT anonymous_id FROM new)
            UNION
            SELECT i.person_id FROM event_fallback x JOIN identities i USING (node)
              WHERE x.key IN (SELECT key FROM new)""",
            [low, high, closed_after, closed_until, *a_params])
