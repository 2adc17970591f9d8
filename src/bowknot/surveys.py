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
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from . import contact, survey_reports, survey_text, survey_triggers
from .errors import NotFound, Overloaded, ValidationError
from .store.engine import run
from .store.reads import GroupRead
from .store.writer import Rows
from .survey_reports import campaign_impact as campaign_impact  # re-exported: callers
from .survey_reports import nps as nps  # import both from here

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

# What Surveys._row says of a row not in memory when it may not read it.
_UNREAD: dict[str, Any] = {}

# Invitation rows kept in memory (a page, then its post), and answers noted beside them.
_ROWS_KEPT = 20_000
_ANSWERED_KEPT = 200_000

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass
class _Write:
    """An answer's write: its events, its rows of other tables, the invitation's change."""

    calls: list[tuple[str, dict[str, Any], str]]
    rows: list[Rows]
    answered: dict[str, Any]


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
        self._texts: dict[tuple[str | None, str], dict[str, str]] = {}  # (survey, language)
        self._secret: bytes | None = None
        self._reads = GroupRead(self._read_rows)  # invitation rows, a group at a time
        self.triggers = survey_triggers.Triggers(ws)  # list, pause, resume, remove, evaluate

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
        return _b64(hmac.digest(self.secret, text.encode(), "sha256")[:18])

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
            for key in [k for k in self._texts if k[0] == survey_id]:
                self._texts.pop(key, None)
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
        key = (survey.get("survey_id"), language)
        cached = self._texts.get(key)  # every page needs them: kept while the survey is
        if cached is not None:
            return dict(cached)
        s = survey_text.strings(language, survey)
        kind = survey["kind"]
        own = {**(survey["translations"].get(survey["language"]) or {}),
               **(survey["translations"].get(language) or {})}
        s["question"] = own.get("question") or s.get(f"question_{kind}", "")
        s["low"] = own.get("low") or s.get(f"low_{kind}", "")
        s["high"] = own.get("high") or s.get(f"high_{kind}", "")
        if key[0] is not None and self._surveys.get(key[0]) == survey:  # as stored
            self._texts[key] = dict(s)
        return s

    # -- invitations ---------------------------------------------------------------------------
    def invite(self, survey_id: str, person: str, *, trigger: str = "manual",
               channel: str = "link", language: str | None = None) -> dict[str, Any]:
        """The invitation of ``person`` for this survey and trigger (made once)."""
        contact.check_channel(channel)
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
        """Invite every member of a saved cohort, in one statement, under the contact rules
        (see contact.py: once per person, survey and trigger; nobody asked within
        ``survey_contact_days``; sample and hold-out; quiet hours in the person's zone)."""
        contact.check_channel(channel)
        survey = self.get(survey_id)
        if not self._q("SELECT 1 FROM cohorts WHERE name = ?", [cohort]):
            raise NotFound(f"No saved cohort {cohort!r}; `bowknot cohort list` shows them.",
                           cohort=cohort)
        trigger = trigger or f"cohort:{cohort}"
        with self._lock:
            counts = contact.invite_members(
                self.ws.store.cursor(), self.ws.settings, survey,
                "SELECT person_id FROM cohort_members WHERE name = ?", [cohort],
                trigger=trigger, channel=channel, now=_now())
        return {"survey_id": survey_id, "cohort": cohort, "trigger": trigger, **counts}

    def add_trigger(self, survey_id: str, name: str, **rule: Any) -> dict[str, Any]:
        """Send ``survey_id`` to whoever matches a rule, as events arrive: ``event=...``, or
        ``did=..., did_not=..., within=...``, or ``cohort=NAME``; with ``channel`` and
        ``since``. See survey_triggers.py; ``self.triggers`` lists, pauses, resumes, removes
        and evaluates them."""
        return self.triggers.add(survey_id, name, **rule)

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

    def invitation(self, token: str, *, read: bool = True
                   ) -> tuple[str, dict[str, Any] | None]:
        """(state, invitation): state is ok, answered, expired or invalid. The signature is
        checked in memory before anything is read. ``read=False``: the store is not read
        (for an event loop), and state ``unread`` means the row is not in memory."""
        parts = token.split(".")
        if len(parts) != 3 or not hmac.compare_digest(
                self._sign(f"{parts[0]}.{parts[1]}"), parts[2]):
            return "invalid", None
        inv = self._row(parts[0], read)
        if inv is _UNREAD:
            return "unread", None
        if inv is None:
            return "invalid", None
        if inv["answered_at"] is not None:
            return "answered", inv
        if int(parts[1]) < time.time():
            return "expired", inv
        return "ok", inv

    def _row(self, invitation_id: str, read: bool = True) -> dict[str, Any] | None:
        """The invitation's row, with what this process has recorded on it since it was read.

        A page and its post read the same row, and everything an answer changes on it goes
        through this object (one process holds the workspace), so rows are kept (up to
        ``_ROWS_KEPT``) and what an answer changed is kept beside them (``_answered``, filled
        once the answer is durable): a kept row read before an answer is never taken for
        unanswered. After a restart both are empty and the store says what is answered.
        Rows not kept are read with those other threads want at the same time
        (``store.reads.GroupRead``); with ``read=False`` they are not, and ``_UNREAD``
        stands for them.
        """
        row = self._rows.get(invitation_id)
        if row is None:
            if not read:
                return _UNREAD
            generation = self._generation
            row = self._reads.get(invitation_id)
            if row is None:
                return None
            with self._guard:
                if generation == self._generation:  # not read across a forget()
                    if len(self._rows) >= _ROWS_KEPT:
                        self._rows.clear()
                    self._rows.setdefault(invitation_id, row)
        done = self._answered.get(invitation_id)
        if done is None:
            return dict(row)  # the kept row stays as read, whatever the caller does
        return {**row, **{k: v for k, v in done.items() if v is not None or row[k] is None}}

    def _read_rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        marks = ", ".join("?" * len(ids))
        rows = self._q(f"SELECT * FROM survey_invitations WHERE invitation_id IN ({marks})",
                       ids)
        return {row["invitation_id"]: row for row in rows}

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
            self._leave(invitation_id)

    def _leave(self, invitation_id: str) -> None:
        """One post to the invitation less: its entry goes with the last."""
        with self._guard:
            entry = self._busy[invitation_id]
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
            result, write = self._answering(token, state, inv, score, why, reasons, csrf)
            if write is not None:
                self.ws.send_many(write.calls, rows=write.rows, own=True)
                self._recorded(invitation_id, **write.answered)
            elif inv is not None and state == "answered" and inv["score"] != score:
                self._flag(inv, score)
        return result

    def start_answer(self, token: str, score: int, why: str | None = None,
                     reasons: Sequence[str] | None = None,
                     csrf: str | None = None) -> Future[dict[str, Any]] | None:
        """:meth:`answer` for an event loop, which must not wait: the answer's write is
        submitted, and the future (awaited with ``asyncio.wrap_future``) resolves to what
        :meth:`answer` returns once it is durable and noted, or to what it raises. It
        cannot be cancelled: a write once submitted is seen through. None when the answer
        cannot start without waiting: the link's row is not in memory, another post to the
        link is being recorded, the link is answered, invalid or expired (the page says so,
        and a second score is flagged in the store), or the writer's queue is full: call
        :meth:`answer` (in a thread) then. Raises at once as :meth:`answer`."""
        invitation_id = token.split(".", 1)[0]
        with self._guard:
            if invitation_id in self._busy:
                return None
            lock = threading.Lock()  # held until the answer is noted (see settle)
            lock.acquire()
            self._busy[invitation_id] = (lock, [1])

        def release() -> None:
            lock.release()  # posts waiting in _one_at_a_time read the state noted now
            self._leave(invitation_id)

        try:
            state, inv = self.invitation(token, read=False)
            if state != "ok":
                release()
                return None
            result, write = self._answering(token, state, inv, score, why, reasons, csrf)
            assert write is not None  # an open link is answered by a write
            written = self.ws.submit_many(write.calls, rows=write.rows, own=True)
        except Overloaded:
            release()
            return None
        except BaseException:
            release()
            raise
        done: Future[dict[str, Any]] = Future()
        done.set_running_or_notify_cancel()  # from now on, cancel() is refused

        def settle(future: Future[list[str]]) -> None:  # in the writer's thread
            try:
                future.result()
                self._recorded(invitation_id, **write.answered)
            except BaseException as exc:  # the caller hears why
                release()
                done.set_exception(exc)
            else:
                release()
                done.set_result(result)

        written.add_done_callback(settle)
        return done

    def _answering(self, token: str, state: str, inv: dict[str, Any] | None, score: int,
                   why: str | None, reasons: Sequence[str] | None, csrf: str | None
                   ) -> tuple[dict[str, Any], _Write | None]:
        """What posting ``score`` to the link (in ``state``) does: the result and, for an
        open link, the write that records it (not done yet)."""
        invitation_id = token.split(".", 1)[0]
        if inv is None or state in ("invalid", "expired"):
            return {"state": state, "invitation": inv}, None
        if csrf is not None and not hmac.compare_digest(self.csrf(token), csrf):
            raise ValidationError("The form is out of date; reload the survey page.")
        survey = self.get(inv["survey_id"])
        if not isinstance(score, int) or not (
                survey["scale_min"] <= score <= survey["scale_max"]):
            raise ValidationError(
                f"The score must be a whole number from {survey['scale_min']} to "
                f"{survey['scale_max']}.")
        if state == "answered":
            return {"state": "answered", "invitation": inv}, None
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
        return ({"state": "recorded", "case_id": case["case_id"] if case else None,
                 "invitation": {**inv, "score": score, "commented": why is not None}},
                _Write(calls, rows, answered))

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
                    {"invitation_id": invitation_id, "commented_at": now}])], own=True)
            self._recorded(invitation_id, commented_at=now)
        return {"state": "recorded", "invitation": inv}

    # -- what the answers say (survey_reports.py) -----------------------------------------
    def report(self, survey_id: str, by: str | None = None, *,
               within: str = "7d") -> dict[str, Any]:
        """Answers, NPS with its adjusted-Wald interval (CSAT, CES: mean and interval),
        overall or ``by`` day, week, month, touchpoint, lifecycle or cohort:NAME."""
        return survey_reports.report(self.ws, survey_id, by, within=within)

    def verbatims(self, survey_id: str, *, limit: int = 20, journey: int = 5
                  ) -> list[dict[str, Any]]:
        """The latest answers with a "why", each with the ``journey`` events before it."""
        return survey_reports.verbatims(self.ws, survey_id, limit=limit, journey=journey)
