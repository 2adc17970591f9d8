"""Voice of the customer: surveys, signed single-use invitations, answers on the timeline.

* A survey is NPS (0-10), CSAT (1-5), CES (1-7) or a custom scale, with optional reason
  choices, in any number of languages (see survey_text.py).
* An invitation is for one person, one survey and one trigger: inviting again with the same
  trigger returns the same invitation, whatever retries happen. Its link is signed (HMAC-SHA256
  with a workspace secret), expires, and is single-use.
* Nothing is recorded on a GET (mail scanners fetch every link): the page shows the score
  chosen in the email and records it only when the form is posted, with a CSRF token bound to
  the link. The answer becomes a ``survey_answered`` event on the person (messageId derived
  from the invitation, so a retry is a no-op); the "why" can follow as ``survey_commented``.
  Different scores posted from one link within ``survey_burst_seconds`` are flagged
  (``survey_flags``) and never counted twice.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from . import survey_text
from .errors import NotFound, ValidationError
from .store.engine import run
from .store.writer import Rows

KINDS: dict[str, tuple[int, int]] = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS surveys (
        survey_id VARCHAR, name VARCHAR, kind VARCHAR, scale_min INTEGER, scale_max INTEGER,
        language VARCHAR, company VARCHAR, reasons VARCHAR[], translations JSON,
        created_at TIMESTAMP, active BOOLEAN)""",
    """CREATE TABLE IF NOT EXISTS survey_invitations (
        invitation_id VARCHAR, survey_id VARCHAR, person_id VARCHAR, trigger VARCHAR,
        channel VARCHAR, language VARCHAR, user_id VARCHAR, anonymous_id VARCHAR,
        email VARCHAR, created_at TIMESTAMP, expires_at TIMESTAMP, sent_at TIMESTAMP,
        answered_at TIMESTAMP, score INTEGER, commented_at TIMESTAMP)""",
    # Columns added after the first release of these tables.
    "ALTER TABLE surveys ADD COLUMN IF NOT EXISTS sample DOUBLE DEFAULT 1.0",
    "ALTER TABLE surveys ADD COLUMN IF NOT EXISTS holdout DOUBLE DEFAULT 0.0",
    "ALTER TABLE survey_invitations ADD COLUMN IF NOT EXISTS send_after TIMESTAMP",
    # Every page and answer looks one invitation up: an ART index keeps that a point lookup.
    "CREATE INDEX IF NOT EXISTS survey_invitations_id ON survey_invitations (invitation_id)",
    """CREATE TABLE IF NOT EXISTS survey_flags (
        invitation_id VARCHAR, flagged_at TIMESTAMP, kind VARCHAR, detail JSON)""",
)

# An answer (or a "why") marks its invitation in the transaction of its event
# (store.writer.Rows): one statement for every answer of a group commit.
_ANSWERED = pa.schema([("invitation_id", pa.string()), ("answered_at", pa.timestamp("us")),
                       ("score", pa.int32()), ("commented_at", pa.timestamp("us"))])
_ANSWERED_SQL = """UPDATE survey_invitations SET answered_at = a.answered_at,
        score = a.score, commented_at = a.commented_at
    FROM survey_answers a WHERE survey_invitations.invitation_id = a.invitation_id"""
_COMMENTED = pa.schema([("invitation_id", pa.string()), ("commented_at", pa.timestamp("us"))])
_COMMENTED_SQL = """UPDATE survey_invitations SET commented_at = c.commented_at
    FROM survey_comments c WHERE survey_invitations.invitation_id = c.invitation_id"""

# Invitation rows kept in memory (a page, then its post), and answers noted beside them.
_ROWS_KEPT = 20_000
_ANSWERED_KEPT = 200_000

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Surveys:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._lock = threading.RLock()  # invite -> token -> secret re-enters
        self._guard = threading.Lock()  # of _busy: per invitation, a lock and its users
        self._busy: dict[str, tuple[threading.Lock, list[int]]] = {}
        self._rows: dict[str, dict[str, Any]] = {}  # invitation rows as read (see _row)
        self._answered: dict[str, dict[str, Any]] = {}  # changed by answers since then
        self._generation = 0  # of the two above, bumped by forget()
        self._surveys: dict[str, dict[str, Any]] = {}  # read on every page: cached
        self._secret: bytes | None = None

    def _q(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.ws.store.query(sql, params)
        return rows

    def _exec(self, sql: str, params: list[Any] | None = None) -> None:
        run(self.ws.store.cursor(), sql, params)

    # -- secrets and tokens ----------------------------------------------------------------
    @property
    def secret(self) -> bytes:
        if self._secret is None:
            with self._lock:
                rows = self._q("SELECT value FROM meta WHERE key = 'survey_secret'")
                if not rows:
                    self._exec("INSERT OR IGNORE INTO meta VALUES ('survey_secret', ?)",
                               [secrets.token_hex(32)])
                    rows = self._q("SELECT value FROM meta WHERE key = 'survey_secret'")
                self._secret = bytes.fromhex(rows[0]["value"])
        return self._secret

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self.secret, text.encode(), hashlib.sha256).digest()[:18])

    def token(self, invitation_id: str, expires_at: datetime) -> str:
        stamp = int(expires_at.replace(tzinfo=UTC).timestamp())
        body = f"{invitation_id}.{stamp}"
        return f"{body}.{self._sign(body)}"

    def csrf(self, token: str) -> str:
        return self._sign("csrf:" + token)

    def link(self, token: str, score: int | None = None) -> str:
        base = self.ws.settings.public_url.rstrip("/")
        return f"{base}/s/{token}" + (f"?score={score}" if score is not None else "")

    # -- surveys -----------------------------------------------------------------------------
    def create(self, survey_id: str, *, kind: str = "nps", name: str | None = None,
               language: str = "en", company: str | None = None,
               scale: tuple[int, int] | None = None, reasons: list[str] | None = None,
               translations: dict[str, dict[str, str]] | None = None,
               sample: float = 1.0, holdout: float = 0.0) -> dict[str, Any]:
        """Create (or replace) survey ``survey_id``.

        ``sample``: the share of eligible persons a triggered send invites; ``holdout``: the
        share kept out on purpose (recorded, never asked) to measure the effect of asking.
        """
        if not (0 < sample <= 1 and 0 <= holdout < 1):
            raise ValidationError("sample must be in (0, 1] and holdout in [0, 1).")
        if not _SLUG.match(survey_id or ""):
            raise ValidationError(
                f"Survey id {survey_id!r}: use 1-64 lower-case letters, digits, '-' or '_'.")
        if kind not in (*KINDS, "custom"):
            raise ValidationError(f"Survey kind {kind!r}: use nps, csat, ces or custom.")
        low, high = scale or KINDS.get(kind, (1, 5))
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low < high <= 10):
            raise ValidationError("A scale is two whole numbers 0 <= min < max <= 10.")
        for lang, strings in (translations or {}).items():
            unknown = set(strings) - set(survey_text.TEXT["en"]) - {"question", "low", "high"}
            if unknown:
                raise ValidationError(
                    f"translations.{lang}: unknown strings {sorted(unknown)}; the keys are "
                    "those of bowknot.survey_text.TEXT['en'] plus question, low and high.")
        if kind == "custom" and "question" not in (translations or {}).get(language, {}):
            raise ValidationError(
                f"A custom survey needs its question: translations={{'{language}': "
                "{'question': '...'}}.")
        with self._lock:
            self._surveys.pop(survey_id, None)
            self._exec("DELETE FROM surveys WHERE survey_id = ?", [survey_id])
            self._exec("""INSERT INTO surveys (survey_id, name, kind, scale_min, scale_max,
                    language, company, reasons, translations, created_at, active, sample,
                    holdout) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, true, ?, ?)""",
                       [survey_id, name or survey_id, kind, low, high, language, company,
                        reasons or [], json.dumps(translations or {}, ensure_ascii=False),
                        _now(), sample, holdout])
        return self.get(survey_id)

    def get(self, survey_id: str) -> dict[str, Any]:
        cached = self._surveys.get(survey_id)
        if cached is not None:
            return dict(cached)
        rows = self._q("SELECT * FROM surveys WHERE survey_id = ?", [survey_id])
        if not rows:
            raise NotFound(f"No survey {survey_id!r}; `bowknot surveys list` shows them.",
                           survey_id=survey_id)
        survey = rows[0]
        survey["translations"] = json.loads(survey["translations"] or "{}")
        self._surveys[survey_id] = survey
        return dict(survey)

    def all(self) -> list[dict[str, Any]]:
        return self._q("""SELECT s.survey_id, s.name, s.kind, s.language,
                count(i.invitation_id) AS invitations, count(i.answered_at) AS answers
            FROM surveys s LEFT JOIN survey_invitations i USING (survey_id)
            GROUP BY ALL ORDER BY s.survey_id""")

    def texts(self, survey: dict[str, Any], language: str) -> dict[str, str]:
        """Every string of the survey's page and e-mail in ``language``."""
        s = survey_text.strings(language, survey)
        kind = survey["kind"]
        own = {**(survey["translations"].get(survey["language"]) or {}),
               **(survey["translations"].get(language) or {})}
        s["question"] = own.get("question") or s.get(f"question_{kind}", "")
        s["low"] = own.get("low") or s.get(f"low_{kind}", "")
        s["high"] = own.get("high") or s.get(f"high_{kind}", "")
        return s

    # -- invitations ---------------------------------------------------------------------------
    def invite(self, survey_id: str, person: str, *, trigger: str = "manual",
               channel: str = "link", language: str | None = None) -> dict[str, Any]:
        """The invitation of ``person`` for this survey and trigger (made once)."""
        survey = self.get(survey_id)
        pid = self.ws.persons.resolve(person)
        with self._lock:
            found = self._q("""SELECT * FROM survey_invitations
                WHERE survey_id = ? AND person_id = ? AND trigger = ?""",
                            [survey_id, pid, trigger])
            if found:
                return self._with_link(found[0])
            ids = self._q("""SELECT id_type, id_value FROM identities
                WHERE person_id = ? AND status = 'linked' ORDER BY first_seen""", [pid])
            user = next((i["id_value"] for i in ids if i["id_type"] == "user_id"), None)
            anon = next((i["id_value"] for i in ids if i["id_type"] == "anonymous_id"), None)
            email = next((i["id_value"] for i in ids if i["id_type"] == "email"), None)
            traits = self._q("""SELECT value FROM person_traits
                WHERE person_id = ? AND trait IN ('language', 'locale')""", [pid])
            wanted = language or (json.loads(traits[0]["value"]) if traits else None)
            available = sorted({*survey_text.LANGUAGES, *survey["translations"]})
            lang = survey_text.pick_language(str(wanted or ""), available, survey["language"])
            now = _now()
            invitation_id = uuid.uuid4().hex[:20]
            expires = now + timedelta(days=self.ws.settings.survey_link_days)
            self._exec("""INSERT INTO survey_invitations (invitation_id, survey_id, person_id,
                    trigger, channel, language, user_id, anonymous_id, email, created_at,
                    expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                       [invitation_id, survey_id, pid, trigger, channel, lang, user,
                        None if user else (anon or f"survey-{invitation_id}"), email, now,
                        expires])
            row = self._q("SELECT * FROM survey_invitations WHERE invitation_id = ?",
                          [invitation_id])[0]
        return self._with_link(row)

    def invite_cohort(self, survey_id: str, cohort: str, *, trigger: str | None = None,
                      channel: str = "link") -> dict[str, Any]:
        """Invite every member of a saved cohort, in one statement, under the contact rules:

        * once per person, survey and trigger (a second send invites nobody twice);
        * nobody asked (by any survey) within ``survey_contact_days``;
        * the survey's ``sample`` share, and its ``holdout`` share recorded but never asked
          (channel ``holdout``), both decided by a hash of (person, survey), so stable;
        * ``send_after``: outside quiet hours (``survey_quiet_hours``) in the person's time
          zone (trait ``timezone``, else ``survey_default_timezone``).
        """
        survey = self.get(survey_id)
        if not self._q("SELECT 1 FROM cohorts WHERE name = ?", [cohort]):
            raise NotFound(f"No saved cohort {cohort!r}; `bowknot cohort list` shows them.",
                           cohort=cohort)
        trigger = trigger or f"cohort:{cohort}"
        st = self.ws.settings
        quiet = _quiet_hours(st.survey_quiet_hours)
        tz_default = st.survey_default_timezone
        now = _now()
        expires = now + timedelta(days=st.survey_link_days)
        if quiet is None:
            send_after = "NULL::TIMESTAMP"
        else:
            start, end = quiet
            in_quiet = (f"(hour(local) >= {start} OR hour(local) < {end})" if start > end
                        else f"(hour(local) >= {start} AND hour(local) < {end})")
            next_day = f"hour(local) >= {start}" if start > end else "false"
            send_after = f"""CASE WHEN {in_quiet} THEN timezone(tz, date_trunc('day', local)
                + INTERVAL (CASE WHEN {next_day} THEN 1 ELSE 0 END) DAY
                + INTERVAL ({end}) HOUR)::TIMESTAMP END"""
        available = sorted({*survey_text.LANGUAGES, *survey["translations"]})
        langs = "[" + ", ".join(f"'{x}'" for x in available) + "]"
        with self._lock:
            self._exec(f"""CREATE OR REPLACE TEMP TABLE s_cand AS
                WITH members AS (SELECT DISTINCT person_id FROM cohort_members WHERE name = ?),
                ids AS (
                  SELECT person_id,
                         arg_min(id_value, first_seen) FILTER (WHERE id_type = 'user_id') AS u,
                         arg_min(id_value, first_seen) FILTER (WHERE id_type = 'anonymous_id')
                           AS a,
                         arg_min(id_value, first_seen) FILTER (WHERE id_type = 'email') AS e
                  FROM identities SEMI JOIN members USING (person_id)
                  WHERE status = 'linked' GROUP BY person_id),
                traits AS (
                  SELECT person_id,
                         any_value(value->>'$') FILTER (WHERE trait IN ('language', 'locale'))
                           AS lang,
                         any_value(value->>'$') FILTER (WHERE trait = 'timezone') AS tz
                  FROM person_traits SEMI JOIN members USING (person_id) GROUP BY person_id),
                h AS (SELECT m.person_id, ids.u, ids.a, ids.e, traits.lang,
                             CASE WHEN traits.tz IN (SELECT name FROM pg_timezone_names())
                                  THEN traits.tz ELSE '{tz_default}' END AS tz,
                             (hash(m.person_id, ?) % 10000) / 10000.0 AS draw
                      FROM members m LEFT JOIN ids USING (person_id)
                      LEFT JOIN traits USING (person_id))
                SELECT *, timezone(tz, ?::TIMESTAMP::TIMESTAMPTZ) AS local FROM h""",
                       [cohort, survey_id, now])
            counts = self._q(f"""SELECT count(*) AS members,
                count(*) FILTER (WHERE person_id IN (SELECT person_id FROM survey_invitations
                  WHERE survey_id = ? AND trigger = ?)) AS already,
                count(*) FILTER (WHERE person_id IN (SELECT person_id FROM survey_invitations
                  WHERE channel <> 'holdout' AND created_at > ? - INTERVAL ({int(
                      st.survey_contact_days)}) DAY)) AS contacted_recently,
                count(*) FILTER (WHERE draw >= ?) AS not_sampled
                FROM s_cand""", [survey_id, trigger, now, survey["sample"]])[0]
            self._exec(f"""INSERT INTO survey_invitations (invitation_id, survey_id, person_id,
                    trigger, channel, language, user_id, anonymous_id, email, created_at,
                    expires_at, send_after)
                SELECT substr(md5(person_id || ? || ? || ?::VARCHAR), 1, 20), ?, person_id, ?,
                       CASE WHEN draw < ? THEN 'holdout' ELSE ? END,
                       CASE WHEN list_contains({langs}, lower(split_part(lang, '-', 1)))
                            THEN lower(split_part(lang, '-', 1)) ELSE ? END,
                       u, CASE WHEN u IS NULL THEN coalesce(a, 'survey-' || md5(person_id)) END,
                       e, ?, ?, {send_after}
                FROM s_cand
                WHERE draw < ?
                  AND person_id NOT IN (SELECT person_id FROM survey_invitations
                                        WHERE survey_id = ? AND trigger = ?)
                  AND person_id NOT IN (SELECT person_id FROM survey_invitations
                        WHERE channel <> 'holdout'
                          AND created_at > ? - INTERVAL ({int(st.survey_contact_days)}) DAY)""",
                       [survey_id, trigger, now, survey_id, trigger, survey["holdout"], channel,
                        survey["language"], now, expires, survey["sample"], survey_id, trigger,
                        now])
            made = self._q("""SELECT count(*) FILTER (WHERE channel <> 'holdout') AS invited,
                    count(*) FILTER (WHERE channel = 'holdout') AS holdout,
                    count(*) FILTER (WHERE send_after > ?) AS deferred_quiet_hours
                FROM survey_invitations WHERE survey_id = ? AND trigger = ? AND created_at = ?""",
                               [now, survey_id, trigger, now])[0]
        return {"survey_id": survey_id, "cohort": cohort, "trigger": trigger, **counts,
                **made}

    def due(self, survey_id: str | None = None) -> list[dict[str, Any]]:
        """Invitations by e-mail or webhook not sent yet and outside quiet hours now."""
        rows = self._q("""SELECT * FROM survey_invitations
            WHERE channel IN ('email', 'webhook') AND sent_at IS NULL AND answered_at IS NULL
              AND expires_at > ? AND (send_after IS NULL OR send_after <= ?)
              AND (? IS NULL OR survey_id = ?) ORDER BY created_at""",
                       [_now(), _now(), survey_id, survey_id])
        return rows

    def open_invitations(self, survey_id: str) -> list[dict[str, Any]]:
        """Invitations not answered and not expired, with their links (for an export file)."""
        self.get(survey_id)
        rows = self._q("""SELECT * FROM survey_invitations WHERE survey_id = ?
            AND answered_at IS NULL AND expires_at > ? ORDER BY created_at""",
                       [survey_id, _now()])
        return [self._with_link(r) for r in rows]

    def _with_link(self, row: dict[str, Any]) -> dict[str, Any]:
        token = self.token(row["invitation_id"], row["expires_at"])
        return {**row, "token": token, "link": self.link(token)}

    def invitation(self, token: str) -> tuple[str, dict[str, Any] | None]:
        """(state, invitation): state is ok, answered, expired or invalid."""
        parts = token.split(".")
        if len(parts) != 3 or not hmac.compare_digest(
                self._sign(f"{parts[0]}.{parts[1]}"), parts[2]):
            return "invalid", None
        inv = self._row(parts[0])
        if inv is None:
            return "invalid", None
        if inv["answered_at"] is not None:
            return "answered", inv
        if int(parts[1]) < time.time():
            return "expired", inv
        return "ok", inv

    def _row(self, invitation_id: str) -> dict[str, Any] | None:
        """The invitation's row, with what this process has recorded on it since it was read.

        A page and its post read the same row, and everything an answer changes on it goes
        through this object (one process holds the workspace), so rows are kept (up to
        ``_ROWS_KEPT``) and what an answer changed is kept beside them (``_answered``, filled
        once the answer is durable): a kept row read before an answer is never taken for
        unanswered. After a restart both are empty and the store says what is answered.
        """
        row = self._rows.get(invitation_id)
        if row is None:
            generation = self._generation
            rows = self._q("SELECT * FROM survey_invitations WHERE invitation_id = ?",
                           [invitation_id])
            if not rows:
                return None
            row = rows[0]
            with self._guard:
                if generation == self._generation:  # not read across a forget()
                    if len(self._rows) >= _ROWS_KEPT:
                        self._rows.clear()
                    self._rows.setdefault(invitation_id, row)
        done = self._answered.get(invitation_id)
        if done is None:
            return dict(row)  # the kept row stays as read, whatever the caller does
        return {**row, **{k: v for k, v in done.items() if v is not None or row[k] is None}}

    def _recorded(self, invitation_id: str, **changes: Any) -> None:
        """Note what an answer (or its "why") changed on the invitation, once durable."""
        with self._guard:
            if len(self._answered) >= _ANSWERED_KEPT:
                self._forget()
            self._answered[invitation_id] = {**self._answered.get(invitation_id, {}),
                                             **changes}

    def forget(self) -> None:
        """Drop the kept invitation rows: call after changing survey_invitations other than
        by answering (a privacy deletion does)."""
        with self._guard:
            self._forget()

    def _forget(self) -> None:
        self._rows.clear()
        self._answered.clear()
        self._generation += 1

    # -- answers -------------------------------------------------------------------------------
    def call(self, inv: dict[str, Any], event: str, message_id: str,
             properties: dict[str, Any], source: str = "surveys"
             ) -> tuple[str, dict[str, Any], str]:
        """An event about invitation ``inv`` on its person's timeline, as a
        ``(call, payload, source)`` for :meth:`Workspace.send_many`."""
        payload: dict[str, Any] = {
            "event": event, "messageId": message_id, "properties": properties,
            "context": {"locale": inv["language"]}}
        if inv["user_id"]:
            payload["userId"] = inv["user_id"]
        else:
            payload["anonymousId"] = inv["anonymous_id"]
            if inv["email"]:  # links a survey-only anonymous id to the person
                payload["context"]["traits"] = {"email": inv["email"]}
        return "track", payload, source

    def record(self, inv: dict[str, Any], event: str, message_id: str,
               properties: dict[str, Any], source: str = "surveys") -> None:
        """An event about invitation ``inv`` on its person's timeline (durable on return)."""
        self.ws.send_many([self.call(inv, event, message_id, properties, source)])

    @contextlib.contextmanager
    def _one_at_a_time(self, invitation_id: str) -> Iterator[None]:
        """Posts to one invitation (a double click, a scanner) one after the other, each
        reading the invitation's state (:meth:`_row`) once the one before is durable and
        noted; posts to different invitations in parallel, so their writes share group
        commits."""
        with self._guard:
            entry = self._busy.setdefault(invitation_id, (threading.Lock(), [0]))
            entry[1][0] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1][0] -= 1
                if not entry[1][0]:
                    del self._busy[invitation_id]

    def answer(self, token: str, score: int, why: str | None = None,
               reasons: Sequence[str] | None = None,
               csrf: str | None = None) -> dict[str, Any]:
        """Record an answer posted from the page; returns {state, invitation}.

        One write: the ``survey_answered`` event, the invitation marked answered and, when
        the follow-up rule says so, the case with its ``case_opened`` event, all in one
        transaction (shared with concurrent answers by the writer's group commit) and
        durable on return.
        """
        invitation_id = token.split(".", 1)[0]
        with self._one_at_a_time(invitation_id):
            state, inv = self.invitation(token)
            if inv is None or state in ("invalid", "expired"):
                return {"state": state, "invitation": inv}
            if csrf is not None and not hmac.compare_digest(self.csrf(token), csrf):
                raise ValidationError("The form is out of date; reload the survey page.")
            survey = self.get(inv["survey_id"])
            if not isinstance(score, int) or not (
                    survey["scale_min"] <= score <= survey["scale_max"]):
                raise ValidationError(
                    f"The score must be a whole number from {survey['scale_min']} to "
                    f"{survey['scale_max']}.")
            if state == "answered":
                if inv["score"] != score:
                    self._flag(inv, score)
                return {"state": "answered", "invitation": inv}
            chosen = [r for r in (reasons or []) if r in (survey["reasons"] or [])]
            why = (why or "").strip()[:5000] or None
            now = _now()
            calls = [self.call(inv, "survey_answered", f"survey-{invitation_id}", {
                "survey_id": inv["survey_id"], "kind": survey["kind"], "score": score,
                "why": why, "reasons": chosen, "invitation_id": invitation_id,
                "trigger": inv["trigger"], "channel": inv["channel"],
                "language": inv["language"]})]
            answered = {"answered_at": now, "score": score,
                        "commented_at": now if why is not None else None}
            rows = [Rows("survey_answers", _ANSWERED_SQL, _ANSWERED,
                         [{"invitation_id": invitation_id, **answered}])]
            case = self.ws.cases.opening(inv, survey["kind"], score, why)
            if case is not None:
                calls.append(self.ws.cases.opened_call(inv, case))
                rows.append(self.ws.cases.rows([case]))
            self.ws.send_many(calls, rows=rows)
            self._recorded(invitation_id, **answered)
        return {"state": "recorded", "case_id": case["case_id"] if case else None,
                "invitation": {**inv, "score": score, "commented": why is not None}}

    def _flag(self, inv: dict[str, Any], score: int) -> None:
        """A different score from an answered link: kept for audit, never counted."""
        recent = (_now() - inv["answered_at"]).total_seconds()
        kind = "burst" if recent <= self.ws.settings.survey_burst_seconds else "second_answer"
        self._exec("INSERT INTO survey_flags VALUES (?, ?, ?, ?)",
                   [inv["invitation_id"], _now(), kind, json.dumps(
                       {"kept_score": inv["score"], "refused_score": score,
                        "seconds_after": round(recent, 3)})])

    def comment(self, token: str, why: str, csrf: str | None = None) -> dict[str, Any]:
        """Add the "why" after the score (once), in one write with the invitation's state."""
        why = (why or "").strip()[:5000]
        invitation_id = token.split(".", 1)[0]
        with self._one_at_a_time(invitation_id):
            state, inv = self.invitation(token)
            if inv is not None and csrf is not None and not hmac.compare_digest(
                    self.csrf(token), csrf):
                raise ValidationError("The form is out of date; reload the survey page.")
            if inv is None or state != "answered" or not why:
                return {"state": state if state != "answered" else "empty", "invitation": inv}
            if inv["commented_at"] is not None:
                return {"state": "commented", "invitation": inv}
            now = _now()
            self.ws.send_many([self.call(
                inv, "survey_commented", f"survey-why-{invitation_id}", {
                    "survey_id": inv["survey_id"], "why": why,
                    "invitation_id": invitation_id, "score": inv["score"]})],
                rows=[Rows("survey_comments", _COMMENTED_SQL, _COMMENTED, [
                    {"invitation_id": invitation_id, "commented_at": now}])])
            self._recorded(invitation_id, commented_at=now)
        return {"state": "recorded", "invitation": inv}

    # -- what the answers say ------------------------------------------------------------------
    def report(self, survey_id: str) -> dict[str, Any]:
        """Answers, and for NPS the score with a 95 % adjusted-Wald interval."""
        survey = self.get(survey_id)
        rows = self._q("""
            SELECT TRY_CAST(properties->>'score' AS INTEGER) AS score, count(*) AS n
            FROM events WHERE event = 'survey_answered'
              AND properties->>'survey_id' = ? GROUP BY 1 ORDER BY 1""", [survey_id])
        dist = {r["score"]: r["n"] for r in rows if r["score"] is not None}
        n = sum(dist.values())
        out: dict[str, Any] = {"survey_id": survey_id, "kind": survey["kind"], "answers": n,
                               "distribution": dist,
                               "flags": self._q("""SELECT f.kind, count(*) AS n
                                   FROM survey_flags f JOIN survey_invitations i
                                   USING (invitation_id) WHERE i.survey_id = ?
                                   GROUP BY 1""", [survey_id])}
        if survey["kind"] == "nps":
            out.update(nps(sum(v for k, v in dist.items() if k >= 9),
                           sum(v for k, v in dist.items() if k <= 6), n))
        elif n:
            out["mean"] = sum(k * v for k, v in dist.items()) / n
        return out


def campaign_impact(ws: Any, campaign_id: str, *, within_days: float = 3.0,
                    survey_id: str | None = None, themes: int = 5) -> dict[str, Any]:
    """The experience impact of a campaign: NPS (with its interval) of those who converted
    (booked within ``within_days`` of their first click), those who clicked and did not
    convert, those who ignored it, and those it was not sent to, from answers given after the
    send, with the most frequent "why"s of each group.
    """
    booking = ws.settings.booking_event
    params: list[Any] = [campaign_id, campaign_id, booking, within_days, campaign_id]
    survey_filter = ""
    if survey_id is not None:
        survey_filter = "AND properties->>'survey_id' = ?"
        params.append(survey_id)
    rows = ws.store.query(f"""
        WITH pe AS (SELECT person_id, event, timestamp, properties FROM person_events
                    WHERE person_id IS NOT NULL),
        sent AS (SELECT person_id, min(timestamp) AS t FROM pe
                 WHERE event = 'Campaign Sent' AND properties->>'campaign_id' = ? GROUP BY 1),
        clicked AS (SELECT person_id, min(timestamp) AS t FROM pe
                    WHERE event = 'Campaign Clicked' AND properties->>'campaign_id' = ?
                    GROUP BY 1),
        converted AS (SELECT DISTINCT c.person_id FROM clicked c JOIN pe b
                      ON b.person_id = c.person_id AND b.event = ? AND b.timestamp > c.t
                      AND b.timestamp <= c.t + to_microseconds((? * 86400e6)::BIGINT)),
        known AS (SELECT DISTINCT person_id FROM persons WHERE known_at IS NOT NULL),
        grp AS (
          SELECT k.person_id,
                 CASE WHEN v.person_id IS NOT NULL THEN 'converted'
                      WHEN c.person_id IS NOT NULL THEN 'clicked_not_converted'
                      WHEN s.person_id IS NOT NULL THEN 'ignored'
                      ELSE 'not_sent' END AS grp
          FROM known k LEFT JOIN sent s USING (person_id) LEFT JOIN clicked c USING (person_id)
          LEFT JOIN converted v USING (person_id)),
        answers AS (
          SELECT person_id, TRY_CAST(properties->>'score' AS INTEGER) AS score,
                 nullif(trim(properties->>'why'), '') AS why
          FROM pe WHERE event = 'survey_answered'
            AND timestamp > (SELECT min(t) FROM sent WHERE ? IS NOT NULL) {survey_filter})
        SELECT g.grp, count(DISTINCT g.person_id) AS persons,
               count(a.score) AS answers,
               count_if(a.score >= 9) AS promoters, count_if(a.score <= 6) AS detractors,
               list(a.why) FILTER (WHERE a.why IS NOT NULL) AS whys
        FROM grp g LEFT JOIN answers a USING (person_id) GROUP BY g.grp""", params)
    order = ["converted", "clicked_not_converted", "ignored", "not_sent"]
    groups = []
    for r in sorted(rows, key=lambda r: order.index(r["grp"])):
        counts: dict[str, int] = {}
        for why in r["whys"] or []:  # the themes: verbatims by frequency, per group
            counts[why] = counts.get(why, 0) + 1
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:themes]
        groups.append({"group": r["grp"], "persons": r["persons"], "answers": r["answers"],
                       **nps(r["promoters"], r["detractors"], r["answers"]),
                       "themes": [{"why": w, "answers": n} for w, n in top]})
    return {"campaign_id": campaign_id, "within_days": within_days, "survey_id": survey_id,
            "groups": groups}


def _quiet_hours(text: str) -> tuple[int, int] | None:
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


def nps(promoters: int, detractors: int, n: int, z: float = 1.96) -> dict[str, Any]:
    """NPS (-100..100) with the adjusted-Wald interval (Sauro & Lewis): add 3/4 of an answer
    to promoters and detractors and 3 to n, then a Wald interval on the difference."""
    if n == 0:
        return {"nps": None, "nps_low": None, "nps_high": None, "promoters": 0,
                "detractors": 0}
    na = n + 3
    pp, pd = (promoters + 0.75) / na, (detractors + 0.75) / na
    adj = pp - pd
    half = z * math.sqrt(max(pp + pd - adj * adj, 0.0) / na)
    return {"nps": round(100 * (promoters - detractors) / n, 1),
            "nps_low": round(100 * max(adj - half, -1.0), 1),
            "nps_high": round(100 * min(adj + half, 1.0), 1),
            "promoters": promoters, "detractors": detractors}
