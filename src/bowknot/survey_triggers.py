"""Survey triggers: rules over the journey that invite people as events arrive (issue 6).

A trigger sends one survey to everyone who matches a rule:

* ``event``: did A (an event with property filters), e.g. ``Ticket Closed[topic=pickup]``;
* ``absence``: did A but not B within T, e.g. clicked campaign X and did not book within 3
  days (the rule of a saved cohort, ``cohort=NAME``, is copied into the trigger). A person
  enters at their first A (as in :mod:`bowknot.journeys.cohorts`) and matches once T has
  passed with no B after it.

Triggers are evaluated after every build (a builder hook), incrementally: each trigger keeps
each person's first A (``survey_trigger_entries``), their B events (``survey_trigger_outs``)
and a watermark (``evaluated_load``, ``evaluated_until``). An evaluation reads only the events
of the loads built since (out-of-order arrivals included: a booking loaded before the click
it follows still counts), then decides the persons whose window closed since the last
evaluation (even with no new events) or whose first A changed. The matches are invited in
one statement under the contact rules (contact.py); invitations are unique per survey, person
and trigger (the trigger's name), so re-evaluation, retries and overlapping runs never invite
anybody twice. The state and the watermark move in the same transaction as the invitations.
Delivery is the existing channels' (``send-due``). The SQL is DuckDB's (events are filtered
before they are joined to persons); the portable definition of the same persons is the Ibis
cohort, and a test checks that both agree.
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
        evaluations BIGINT, invited BIGINT, holdout BIGINT, last_error VARCHAR,
        evaluated_log BIGINT)""",
    # Each person's first A, per trigger: what an incremental evaluation starts from, so it
    # reads the new loads' events and the candidates' B events, never every A again.
    """CREATE TABLE IF NOT EXISTS survey_trigger_entries (
        trigger VARCHAR, person_id VARCHAR, entered_at TIMESTAMP)""",
    # Each person's B events, per "not B within T" trigger: decided from here, events that
    # arrive out of order (a booking loaded before the click it follows) included.
    """CREATE TABLE IF NOT EXISTS survey_trigger_outs (
        trigger VARCHAR, person_id VARCHAR, ts TIMESTAMP)""",
)

# No ':' (``cohort:NAME`` is the trigger of a cohort send's invitations).
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


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
                f"Trigger name {name!r}: use 1-64 lower-case letters, digits, '-' or '_'.",
                code="invalid_trigger")
        contact.check_channel(channel)
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
                        NULL, NULL, 0, 0, 0, NULL, NULL)""",
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
            run(con, "DELETE FROM survey_trigger_entries WHERE trigger = ?", [name])
            run(con, "DELETE FROM survey_trigger_outs WHERE trigger = ?", [name])

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
        and invite its new matches; returns what happened, with the count per contact rule
        and the time of each phase."""
        trigger = self.get(name)
        survey = self.ws.surveys.get(trigger["survey_id"])
        started = time.perf_counter()
        phases: dict[str, float] = {}

        def phase(label: str) -> None:
            phases[label] = round(time.perf_counter() - started - sum(phases.values()), 3)

        with self.ws.builder.transaction() as con, self.ws.surveys._lock:
            built = run(con, "SELECT value FROM meta WHERE key = 'build_load_id'")
            high = int(built[0][0]) if built else 0
            logged = int(run(con, "SELECT coalesce(max(log_id), 0) FROM identity_log")[0][0])
            now = _now()
            incremental = not full and trigger["evaluated_load"] is not None
            rule = Rule(trigger)
            if incremental:  # persons split since (an unmerge) are read again
                run(con, """CREATE OR REPLACE TEMP TABLE t_split AS
                    SELECT DISTINCT unnest([person_id, other_person_id]) AS person_id
                    FROM identity_log WHERE kind = 'split' AND log_id > ? AND log_id <= ?""",
                    [trigger["evaluated_log"] or 0, logged])
                split = bool(run(con, "SELECT 1 FROM t_split LIMIT 1"))
            steps = (rule.incremental(trigger["evaluated_load"], high, split) if incremental
                     else rule.full())
            for sql, params in steps:
                run(con, sql, params)
            phase("entries")
            # Decided now: windows closed since the last evaluation, and changed entries.
            since_until = (trigger["evaluated_until"] - timedelta(seconds=rule.within)
                           if incremental else datetime.min)
            run(con, """CREATE OR REPLACE TEMP TABLE t_cand AS
                SELECT person_id, entered_at FROM t_entries
                WHERE entered_at <= ?::TIMESTAMP - to_seconds(?)
                  AND (changed OR entered_at > ?)""", [now, rule.within, since_until])
            considered = int(run(con, "SELECT count(*) FROM t_cand")[0][0])
            for sql, params in rule.matches():
                run(con, sql, params)
            phase("match")
            counts = contact.invite_members(
                con, self.ws.settings, survey, "SELECT person_id FROM t_match", [],
                trigger=name, channel=trigger["channel"], now=now)
            phase("invite")
            run(con, """UPDATE survey_triggers SET evaluated_load = ?, evaluated_until = ?,
                evaluated_at = ?, evaluations = evaluations + 1, invited = invited + ?,
                holdout = holdout + ?, last_error = NULL, evaluated_log = ? WHERE name = ?""",
                [high, now, now, counts["invited"], counts["holdout"], logged, name])
        counts["matched"] = counts.pop("members")
        return {"trigger": name, "survey_id": trigger["survey_id"],
                "mode": "incremental" if incremental else "full", "through_load": high,
                "candidates": considered, **counts,
                "seconds": round(time.perf_counter() - started, 3), "phases": phases}

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
    return f"""(WITH e AS MATERIALIZED (
          SELECT key, user_id, anonymous_id, timestamp {columns} FROM events WHERE {where}),
        ids AS MATERIALIZED (
          SELECT id_type, id_value, person_id FROM identities
          WHERE (id_type = 'user_id' AND id_value IN (SELECT user_id FROM e))
             OR (id_type = 'anonymous_id' AND id_value IN (SELECT anonymous_id FROM e)))
        SELECT e.* EXCLUDE (key, user_id, anonymous_id),
               coalesce(u.person_id, a.person_id, f.person_id) AS person_id
        FROM e
        LEFT JOIN ids u ON u.id_type = 'user_id' AND u.id_value = e.user_id
        LEFT JOIN ids a ON a.id_type = 'anonymous_id' AND a.id_value = e.anonymous_id
        LEFT JOIN (SELECT x.key, i.person_id FROM event_fallback x JOIN identities i
                   USING (node)) f ON f.key = e.key)"""


class Rule:
    """The SQL of a trigger's rule: each statement with its parameters. The first ones bring
    the trigger's state up to date (``survey_trigger_entries``: each person's first A;
    ``survey_trigger_outs``: their B events) and leave ``t_entries`` (with ``changed``: to be
    decided again) on the evaluation's connection; then, given ``t_cand`` (the entries to
    decide), :meth:`matches` makes ``t_match``.
    """

    def __init__(self, trigger: Mapping[str, Any]) -> None:
        rule = trigger["rule"]
        self.trigger = trigger["name"]
        self.a, self.a_params = _step(rule["did"]).sql()
        if trigger["since"] is not None:
            self.a += " AND timestamp >= ?"
            self.a_params.append(trigger["since"])
        self.b, self.b_params = (_step(rule["did_not"]).sql() if "did_not" in rule
                                 else ("false", []))
        self.within = int(rule.get("within_seconds", 0))

    def full(self) -> list[tuple[str, list[Any]]]:
        """Every A and B event with its person, in one pass: each person's first A and
        B events, stored anew."""
        columns = f", ({self.a}) AS is_a, ({self.b}) AS is_b"
        return [
            (f"""CREATE OR REPLACE TEMP TABLE t_ev AS
                SELECT person_id, timestamp, is_a, is_b
                FROM {_person_events(f"({self.a}) OR ({self.b})", columns)}
                WHERE person_id IS NOT NULL""",
             [*self.a_params, *self.b_params, *self.a_params, *self.b_params]),
            ("""CREATE OR REPLACE TEMP TABLE t_entries AS
                SELECT person_id, min(timestamp) AS entered_at, true AS changed
                FROM t_ev WHERE is_a GROUP BY person_id""", []),
            *self._store(),
            ("DELETE FROM survey_trigger_outs WHERE trigger = ?", [self.trigger]),
            ("""INSERT INTO survey_trigger_outs SELECT ?, person_id, timestamp FROM t_ev
                WHERE is_b""", [self.trigger]),
        ]

    def incremental(self, low: int, high: int, split: bool) -> list[tuple[str, list[Any]]]:
        """The stored entries and B events under their persons' current ids (merged persons
        take the earlier A), with the A and B events of loads ``low`` .. ``high``. With
        ``split``, the persons in ``t_split`` (split since the last evaluation, e.g. by an
        unmerge) lose their stored state, which is read again from their events: what one of
        them did no longer counts for the other."""
        columns = f", ({self.a}) AS is_a, ({self.b}) AS is_b"
        split_events = f"""load_id <= ? AND (({self.a}) OR ({self.b})) AND (
            user_id IN (SELECT id_value FROM identities SEMI JOIN t_split USING (person_id)
                        WHERE id_type = 'user_id')
            OR anonymous_id IN (SELECT id_value FROM identities SEMI JOIN t_split
                                USING (person_id) WHERE id_type = 'anonymous_id')
            OR key IN (SELECT x.key FROM event_fallback x JOIN identities i USING (node)
                       SEMI JOIN t_split USING (person_id)))"""
        return [
            (f"""CREATE OR REPLACE TEMP TABLE t_new AS
                SELECT person_id, timestamp, is_a, is_b
                FROM {_person_events(f"load_id > ? AND load_id <= ? AND (({self.a}) OR "
                                     f"({self.b}))", columns)}
                WHERE person_id IS NOT NULL""",
             [*self.a_params, *self.b_params, low, high, *self.a_params, *self.b_params]),
            (f"""CREATE OR REPLACE TEMP TABLE t_resplit AS
                SELECT person_id, timestamp, is_a, is_b
                FROM {_person_events(split_events, columns)}
                WHERE person_id IS NOT NULL""",
             [*self.a_params, *self.b_params, high, *self.a_params, *self.b_params])
            if split else ("CREATE OR REPLACE TEMP TABLE t_resplit AS FROM t_new LIMIT 0", []),
            ("""CREATE OR REPLACE TEMP TABLE t_entries AS
                SELECT coalesce(r.person_id, x.person_id) AS person_id,
                       min(x.entered_at) AS entered_at,
                       bool_or(x.fresh OR r.person_id IS NOT NULL) AS changed
                FROM (SELECT person_id, entered_at, false AS fresh
                      FROM survey_trigger_entries WHERE trigger = ?
                        AND person_id NOT IN (SELECT person_id FROM t_split)
                      UNION ALL SELECT person_id, timestamp, true FROM t_new WHERE is_a
                      UNION ALL SELECT person_id, timestamp, true FROM t_resplit WHERE is_a) x
                LEFT JOIN person_redirects r ON r.old_person_id = x.person_id
                GROUP BY 1""", [self.trigger]),
            *self._store(),
            ("""DELETE FROM survey_trigger_outs WHERE trigger = ?
                AND person_id IN (SELECT person_id FROM t_split)""", [self.trigger]),
            ("""UPDATE survey_trigger_outs SET person_id = r.person_id FROM person_redirects r
                WHERE trigger = ? AND survey_trigger_outs.person_id = r.old_person_id""",
             [self.trigger]),
            ("""INSERT INTO survey_trigger_outs SELECT ?, person_id, timestamp
                FROM (SELECT * FROM t_new UNION ALL SELECT * FROM t_resplit) WHERE is_b""",
             [self.trigger]),
        ]

    def _store(self) -> list[tuple[str, list[Any]]]:
        return [("DELETE FROM survey_trigger_entries WHERE trigger = ?", [self.trigger]),
                ("""INSERT INTO survey_trigger_entries
                    SELECT ?, person_id, entered_at FROM t_entries""", [self.trigger])]

    def matches(self) -> list[tuple[str, list[Any]]]:
        """``t_match``: the candidates with no B after their first A within the window."""
        if self.b == "false":  # an event trigger: every candidate matches
            return [("CREATE OR REPLACE TEMP TABLE t_match AS SELECT * FROM t_cand", [])]
        return [("""CREATE OR REPLACE TEMP TABLE t_match AS
            SELECT c.person_id, c.entered_at FROM t_cand c
            WHERE NOT EXISTS (SELECT 1 FROM survey_trigger_outs b
                              WHERE b.trigger = ? AND b.person_id = c.person_id
                                AND b.ts > c.entered_at
                                AND b.ts <= c.entered_at + to_seconds(?))""",
                 [self.trigger, self.within])]
