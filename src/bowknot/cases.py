"""Closing the loop: a detractor's answer opens a follow-up case on the person.

A rule (setting ``followup_rule``, e.g. ``nps<=6, csat<=2, ces<=3``) decides which answers
open a case. A case has an owner, a status, a due date (``followup_due_hours``) and notes;
opening, assigning, each note and closing are events on the person's timeline
(``case_opened``, ``case_assigned``, ``case_note``, ``case_closed``), so "time to follow up" and
"NPS after follow-up" are measured like anything else (``Cases.metrics``).
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from .errors import NotFound, ValidationError
from .store.engine import run
from .store.writer import Rows

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS cases (
        case_id VARCHAR, person_id VARCHAR, survey_id VARCHAR, invitation_id VARCHAR,
        score INTEGER, why VARCHAR, opened_at TIMESTAMP, due_at TIMESTAMP, owner VARCHAR,
        status VARCHAR, notes JSON, closed_at TIMESTAMP, resolution VARCHAR)""",
)

# A case opened by an answer is written with it (store.writer.Rows), from these rows.
NEW_CASES = pa.schema([("case_id", pa.string()), ("person_id", pa.string()),
                       ("survey_id", pa.string()), ("invitation_id", pa.string()),
                       ("score", pa.int32()), ("why", pa.string()),
                       ("opened_at", pa.timestamp("us")), ("due_at", pa.timestamp("us"))])
INSERT_CASES_SQL = """INSERT INTO cases (case_id, person_id, survey_id, invitation_id, score,
        why, opened_at, due_at, owner, status, notes, closed_at, resolution)
    SELECT case_id, person_id, survey_id, invitation_id, score, why, opened_at, due_at, NULL,
           'open', '[]', NULL, NULL FROM new_cases"""

_RULE = re.compile(r"^\s*(nps|csat|ces|custom)\s*(<=|<|>=|>|=)\s*(\d+)\s*$")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def parse_rule(text: str) -> list[tuple[str, str, int]]:
    """``"nps<=6, csat<=2"`` -> [("nps", "<=", 6), ("csat", "<=", 2)]."""
    out = []
    for part in (p for p in text.split(",") if p.strip()):
        m = _RULE.match(part)
        if not m:
            raise ValidationError(
                f"followup_rule: {part.strip()!r} is not KIND<=N (kinds nps, csat, ces, "
                "custom; operators <= < >= > =), e.g. 'nps<=6, csat<=2'.",
                setting="followup_rule")
        out.append((m.group(1), m.group(2), int(m.group(3))))
    return out


# Every answer is checked against the rule: parsed once per rule text.
_parsed_rule = functools.lru_cache(maxsize=8)(parse_rule)


def matches(rules: list[tuple[str, str, int]], kind: str, score: int) -> bool:
    ops = {"<=": score.__le__, "<": score.__lt__, ">=": score.__ge__, ">": score.__gt__,
           "=": score.__eq__}
    return any(k == kind and ops[op](n) for k, op, n in rules)


class Cases:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def _q(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.ws.store.query(sql, params)
        return rows

    def _exec(self, sql: str, params: list[Any] | None = None) -> None:
        run(self.ws.store.cursor(), sql, params)

    def _event(self, case: dict[str, Any], event: str, message_id: str,
               properties: dict[str, Any]) -> None:
        """An event on the person's timeline, as the invitation that opened the case."""
        inv = self._q("SELECT * FROM survey_invitations WHERE invitation_id = ?",
                      [case["invitation_id"]])
        if not inv:
            raise NotFound(f"Case {case['case_id']} has lost its survey invitation (deleted "
                           "for privacy?); it can no longer be worked.", case_id=case["case_id"])
        self.ws.surveys.record(inv[0], event, message_id,
                               {"case_id": case["case_id"], **properties}, source="cases")

    # -- opening (with the answer that needs it) -------------------------------------------
    def opening(self, invitation: dict[str, Any], kind: str, score: int,
                why: str | None) -> dict[str, Any] | None:
        """The case this answer opens if the rule says it needs one, not written yet: the
        answer writes it (:meth:`rows`, :meth:`opened_call`) in its own transaction, so an
        invitation, answered once, opens at most one case."""
        if not matches(_parsed_rule(self.ws.settings.followup_rule), kind, score):
            return None
        now = _now()
        return {"case_id": "case_" + uuid.uuid4().hex[:12],
                "person_id": invitation["person_id"], "survey_id": invitation["survey_id"],
                "invitation_id": invitation["invitation_id"], "score": score, "why": why,
                "opened_at": now,
                "due_at": now + timedelta(hours=self.ws.settings.followup_due_hours)}

    @staticmethod
    def rows(cases: list[dict[str, Any]]) -> Rows:
        return Rows("new_cases", INSERT_CASES_SQL, NEW_CASES, cases)

    def opened_call(self, invitation: dict[str, Any],
                    case: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
        """The ``case_opened`` event of ``case``, for :meth:`Workspace.send_many`."""
        call: tuple[str, dict[str, Any], str] = self.ws.surveys.call(
            invitation, "case_opened", f"case-open-{case['case_id']}", {
                "case_id": case["case_id"], "survey_id": case["survey_id"],
                "score": case["score"], "due_at": case["due_at"].isoformat()}, source="cases")
        return call

    # -- working a case ----------------------------------------------------------------------
    def get(self, case_id: str) -> dict[str, Any]:
        rows = self._q("SELECT * FROM cases WHERE case_id = ?", [case_id])
        if not rows:
            raise NotFound(f"No case {case_id!r}; `bowknot cases list` shows them.",
                           case_id=case_id)
        case = rows[0]
        case["notes"] = json.loads(case["notes"] or "[]")
        case["overdue"] = case["status"] == "open" and case["due_at"] < _now()
        return case

    def list(self, status: str | None = "open", person: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        pid = self.ws.persons.resolve(person) if person else None
        return self._q("""SELECT case_id, person_id, survey_id, score, why, opened_at, due_at,
                owner, status, closed_at, status = 'open' AND due_at < ? AS overdue
            FROM cases WHERE (? IS NULL OR status = ?) AND (? IS NULL OR person_id = ?)
            ORDER BY due_at LIMIT ?""", [_now(), status, status, pid, pid, limit])

    def assign(self, case_id: str, owner: str) -> dict[str, Any]:
        if not owner.strip():
            raise ValidationError("Give the owner's name or e-mail.")
        case = self.get(case_id)
        self._exec("UPDATE cases SET owner = ? WHERE case_id = ?", [owner.strip(), case_id])
        self._event(case, "case_assigned", f"case-assign-{uuid.uuid4().hex[:12]}",
                    {"owner": owner.strip()})
        return self.get(case_id)

    def note(self, case_id: str, text: str, author: str | None = None) -> dict[str, Any]:
        if not text.strip():
            raise ValidationError("A note needs some text.")
        case = self.get(case_id)
        note = {"at": _now().isoformat(), "author": author, "text": text.strip()[:5000]}
        self._exec("UPDATE cases SET notes = ? WHERE case_id = ?",
                   [json.dumps([*case["notes"], note], ensure_ascii=False), case_id])
        self._event(case, "case_note", f"case-note-{uuid.uuid4().hex[:12]}",
                    {"author": author, "text": note["text"]})
        return self.get(case_id)

    def close(self, case_id: str, resolution: str) -> dict[str, Any]:
        case = self.get(case_id)
        if case["status"] == "closed":
            raise ValidationError(f"Case {case_id} is already closed.", case_id=case_id)
        now = _now()
        self._exec("""UPDATE cases SET status = 'closed', closed_at = ?, resolution = ?
                      WHERE case_id = ?""", [now, resolution.strip() or None, case_id])
        hours = (now - case["opened_at"]).total_seconds() / 3600
        self._event(case, "case_closed", f"case-close-{case_id}", {
            "resolution": resolution.strip() or None, "hours_to_close": round(hours, 3),
            "on_time": now <= case["due_at"]})
        return self.get(case_id)

    def metrics(self) -> dict[str, Any]:
        """Time to follow up, and the NPS of answers given after a case was closed."""
        from .surveys import nps

        timing = self._q("""SELECT count(*) AS cases, count(closed_at) AS closed,
                count_if(status = 'open' AND due_at < ?) AS overdue,
                median(epoch(closed_at - opened_at) / 3600) AS median_hours_to_close,
                count_if(closed_at <= due_at) AS closed_on_time FROM cases""", [_now()])[0]
        after = self._q("""SELECT count(*) AS n, count_if(score >= 9) AS p,
                count_if(score <= 6) AS d FROM (
              SELECT TRY_CAST(e.properties->>'score' AS INTEGER) AS score
              FROM person_events e JOIN cases c ON c.person_id = e.person_id
              WHERE e.event = 'survey_answered' AND c.closed_at IS NOT NULL
                AND e.timestamp > c.closed_at AND e.properties->>'kind' = 'nps')""")[0]
        return {**timing, "nps_after_follow_up": nps(after["p"], after["d"], after["n"])}
