"""The Workspace: one object that owns the store, the settings and the services.

The CLI, the HTTP API and the pages are thin shells over it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from . import build as build_module
from . import cases, identity, journal, privacy, profiles, survey_triggers, surveys, webhooks
from .access import Access
from .errors import BowknotError, QueryError, ValidationError
from .failures import Failures
from .ingest import CALLS, REASONS, Outcome, typed_track
from .persons import Persons
from .settings import Settings
from .store import Store, Writer
from .store.engine import run
from .store.writer import Request, Rows, Submission


class Workspace:
    """A bowknot workspace on one DuckDB file. Use :func:`bowknot.connect` to open one."""

    def __init__(self, path: str | Path, **settings: Any) -> None:
        self.settings = Settings.resolve(settings)
        self.path = Path(path)
        self.store = Store(self.path, self.settings)
        self._writer: Writer | None = None
        self._writer_lock = threading.Lock()
        self.access = Access(self.store)
        self.failures = Failures(self)
        build_module.migrate(self.store.connection)
        ddl = (identity.DDL + profiles.DDL + journal.DDL + build_module.DDL + privacy.DDL
               + surveys.DDL + webhooks.DDL + cases.DDL + survey_triggers.DDL)
        for statement in ddl:
            run(self.store.connection, statement)
        profiles.create_view(self.store.connection, self.settings)
        self.builder = build_module.Builder(self)
        self.persons = Persons(self)
        self.privacy = privacy.Privacy(self)
        self.surveys = surveys.Surveys(self)
        self.builder.hooks.append(self.surveys.triggers.after_build)
        self.cases = cases.Cases(self)
        self._journeys: Any = None

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def writer(self) -> Writer:
        """The one writer of this workspace, started on first use (from any thread)."""
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    writer = Writer(self.store, self.settings)
                    writer.suppress_sql = privacy.SUPPRESS_SQL
                    writer.refresh_suppressions()
                    self._writer = writer
        return self._writer

    @property
    def journeys(self) -> Any:
        """Journey analytics on this workspace (funnels, cohorts, retention, paths), on
        DuckDB; ``ws.journeys.on("spark")`` runs the same on Spark. See docs/journeys.md."""
        if self._journeys is None:
            from .journeys import Journeys

            self._journeys = Journeys(self)
        return self._journeys

    def close(self) -> None:
        self.builder.stop()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.store.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the event contract, from Python ---------------------------------------------
    def send(self, call: str, payload: Mapping[str, Any], *, source: str = "library") -> str:
        """Record one spec call; return its messageId. Raises ValidationError if invalid.

        The event is durable when this returns.
        """
        return self.send_many([(call, payload, source)])[0]

    def send_many(self, calls: Sequence[tuple[str, Mapping[str, Any], str]], *,
                  rows: Sequence[Rows] = (), own: bool = False) -> list[str]:
        """Record spec calls, each ``(call, payload, source)``, and ``rows`` of other tables
        in one transaction (one group commit with concurrent writers); return the
        messageIds. All of it is durable when this returns; raises as :meth:`send`.

        ``own``: the calls are bowknot's own (a survey answer, a case opened): those plainly
        valid go to the commit as typed rows, without the engine's parse and validation
        (``ingest.typed_track``); deduplicated and durable all the same."""
        return self.submit_many(calls, rows=rows, own=own, block=True).result()

    def submit_many(self, calls: Sequence[tuple[str, Mapping[str, Any], str]], *,
                    rows: Sequence[Rows] = (), own: bool = False, block: bool = False
                    ) -> Future[list[str]]:
        """:meth:`send_many` without waiting: the future's result is the messageIds, once
        all of it is durable (or the error :meth:`send` raises). Raises
        :class:`~bowknot.errors.Overloaded` at once when the writer's queue is full, unless
        ``block`` (then it waits for room). An event loop awaits the future
        (``asyncio.wrap_future``) instead of holding a thread for the commit."""
        requests, ids = [], []
        s = self.settings
        for call, payload, source in calls:
            if call not in CALLS:
                raise BowknotError(
                    f"Unknown call {call!r}; use one of {', '.join(CALLS)}.",
                    code="invalid_type",
                )
            body = dict(payload)
            body.setdefault("messageId", f"lib-{uuid.uuid4()}")
            at = datetime.now(UTC)
            body.setdefault("timestamp", at.isoformat())
            raw = _dumps(body)
            typed = None
            if own and call == "track" and body["timestamp"] == at.isoformat():
                typed = typed_track(body, raw, source, at.replace(tzinfo=None),
                                    s.max_message_id_chars, s.max_event_bytes)
            requests.append(Request(source, call, raw, origin="library", trusted=True,
                                    typed=typed))
            ids.append(str(body["messageId"]))
        written = self.writer.submit(Submission(requests, list(rows)), block=block)
        done: Future[list[str]] = Future()

        def settle(future: Future[list[Outcome]]) -> None:
            try:
                for out in future.result():
                    raise_for(out)
            except BaseException as exc:  # the caller hears why
                done.set_exception(exc)
            else:
                done.set_result(ids)

        written.add_done_callback(settle)
        return done

    def track(
        self,
        event: str,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        return self.send(
            "track",
            _spec(
                fields, event=event, userId=user_id, anonymousId=anonymous_id, properties=properties
            ),
        )

    def identify(
        self,
        user_id: str | None = None,
        *,
        anonymous_id: str | None = None,
        traits: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        return self.send(
            "identify", _spec(fields, userId=user_id, anonymousId=anonymous_id, traits=traits)
        )

    def page(
        self,
        name: str | None = None,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        return self.send(
            "page",
            _spec(
                fields, name=name, userId=user_id, anonymousId=anonymous_id, properties=properties
            ),
        )

    def screen(
        self,
        name: str | None = None,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        return self.send(
            "screen",
            _spec(
                fields, name=name, userId=user_id, anonymousId=anonymous_id, properties=properties
            ),
        )

    def group(
        self,
        group_id: str,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        traits: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        return self.send(
            "group",
            _spec(
                fields, groupId=group_id, userId=user_id, anonymousId=anonymous_id, traits=traits
            ),
        )

    def alias(self, user_id: str, previous_id: str, **fields: Any) -> str:
        return self.send("alias", _spec(fields, userId=user_id, previousId=previous_id))

    def ingest(
        self, events: Iterable[Mapping[str, Any]], *, source: str = "library", chunk: int = 50_000
    ) -> Outcome:
        """Bulk-load spec events (each with its ``type``); durable on return.

        Invalid events do not stop the load: they are kept in failed events and counted in
        the returned outcome, with their index and reasons.
        """
        total = Outcome()
        batch: list[Mapping[str, Any]] = []
        offset = 0

        def flush() -> None:
            nonlocal offset
            body = _dumps({"batch": batch})
            sub = Submission(
                [Request(source, "batch", body, origin="library", trusted=True)],
                full_dedupe=True,
                batch_limit=False,
            )
            out = self.writer.write(sub)[0]
            total.accepted += out.accepted
            total.duplicates += out.duplicates
            total.conflicts += out.conflicts
            for f in out.failures:
                total.failures.append({**f, "index": f["index"] + offset})
            offset += len(batch)
            batch.clear()

        for event in events:
            batch.append(event)
            if len(batch) >= chunk:
                flush()
        if batch:
            flush()
        return total

    def _write_requests(self, requests: list[Request]) -> list[Outcome]:
        return self.writer.write(Submission(requests))

    # -- the pipeline ------------------------------------------------------------------
    def build(self, full: bool = False) -> build_module.BuildResult:
        """Bring identities, persons and profiles up to date (only what arrived since the
        last build, unless ``full``)."""
        return self.builder.build(full=full)

    # -- reads -------------------------------------------------------------------------
    def sql(self, query: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Run an ad-hoc read-only query on the workspace and return rows as dicts."""
        try:
            return self.store.query(query, params)
        except Exception as exc:
            if type(exc).__module__.startswith("duckdb") or "duckdb" in type(exc).__name__:
                raise QueryError(f"The query failed: {exc}".strip()) from exc
            raise

    def read_sql(self, query: str) -> list[dict[str, Any]]:
        """Run one read-only statement (SELECT, WITH, DESCRIBE, SUMMARIZE, EXPLAIN)."""
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            raise QueryError(f"The query does not parse: {exc}") from exc
        allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
        if len(statements) != 1 or statements[0].type not in allowed:
            raise QueryError(
                "Only one read-only statement (SELECT, WITH, DESCRIBE, SUMMARIZE, EXPLAIN) "
                "is allowed here; writes go through ingestion and the CLI's commands."
            )
        return self.sql(query)

    def table(self, name: str) -> Any:
        """An Ibis table expression over a workspace table (``events``, ...)."""
        return self.store.ibis.table(name)

    def overview(self) -> dict[str, Any]:
        """The numbers behind the overview page (and its JSON twin)."""
        q = self.store.query
        return {
            "workspace": str(self.path),
            "events": q(
                "SELECT count(*) AS n, min(timestamp) AS first, max(timestamp) AS last FROM events"
            )[0],
            "sources": q("""
                SELECT coalesce(s.name, e.source) AS name, s.created_at,
                       (SELECT count(*) FROM write_keys k
                         WHERE k.source = s.name AND k.revoked_at IS NULL) AS active_keys,
                       coalesce(e.n, 0) AS events, e.last_received_at
                FROM sources s FULL JOIN (
                  SELECT source, count(*) AS n, max(received_at) AS last_received_at
                  FROM events GROUP BY source) e ON e.source = s.name
                ORDER BY coalesce(s.name, e.source)"""),
            "by_type": q("SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY n DESC"),
            "by_day": q("""
                SELECT timestamp::DATE AS day, type, count(*) AS n FROM events
                GROUP BY ALL ORDER BY day, type"""),
            "failed": self.failures.summary(),
        }


def raise_for(out: Outcome) -> None:
    """Turn a request's outcome into the error a library caller expects."""
    if out.request_reason:
        raise ValidationError(REASONS[out.request_reason], code=out.request_reason)
    failed = [f for f in out.failures if f["reason_codes"] != ["message_id_conflict"]]
    if failed:
        msgs = "; ".join(r["message"] for r in failed[0]["reasons"])
        raise ValidationError(
            f"The event was rejected and kept in failed events: {msgs}", items=failed
        )


def _spec(fields: Mapping[str, Any], **named: Any) -> dict[str, Any]:
    out = {k: v for k, v in named.items() if v is not None}
    out.update(fields)
    return out


def _dumps(value: Any) -> str:
    """JSON text of library input; what JSON cannot hold is refused with the reason."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z).decode()
    except TypeError:
        pass
    # orjson stops at 64-bit integers; the standard library writes any integer, and the
    # engine keeps such numbers as they are in the JSON text.
    try:
        return json.dumps(value, default=_json_default, ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"The event cannot be written as JSON ({exc}); pass strings, numbers, booleans, "
            "None, lists, dicts and datetimes only.",
            code="not_json",
        ) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")
