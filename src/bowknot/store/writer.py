"""The single writer: one thread that turns queued submissions into group commits.

Concurrent requests are gathered into one transaction (group commit), so a burst of small
batches costs one commit, not one each. A submission's future resolves only after COMMIT has
returned, and DuckDB syncs its write-ahead log on commit, so an acknowledged event survives a
``kill -9`` of the process.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from .. import ingest
from ..errors import Overloaded
from ..settings import Settings
from .engine import Store, run

log = logging.getLogger("bowknot.writer")

REQUEST_SCHEMA = pa.schema(
    [
        ("req", pa.int64()),
        ("source", pa.string()),
        ("origin", pa.string()),
        ("call", pa.string()),
        ("body", pa.string()),
        ("received_at", pa.timestamp("us")),
        ("trusted", pa.bool_()),
        ("file", pa.string()),
    ]
)

ITEM_SCHEMA = pa.schema(
    [
        ("req", pa.int64()),
        ("pos", pa.int64()),
        ("source", pa.string()),
        ("origin", pa.string()),
        ("call", pa.string()),
        ("raw", pa.string()),
        ("received_at", pa.timestamp("us")),
        ("trusted", pa.bool_()),
        ("file", pa.string()),
        ("batch_sent_at", pa.string()),
        ("batch_context", pa.string()),
        ("batch_integrations", pa.string()),
    ]
)


@dataclass
class Request:
    """One request body as received: a single call (``call`` names it) or a ``batch``."""

    source: str
    call: str
    body: str
    origin: str = "http"
    trusted: bool = False
    file: str | None = None


@dataclass
class Submission:
    requests: list[Request] = field(default_factory=list)
    items: pa.Table | None = None  # pre-split items (file import); ITEM_SCHEMA
    full_dedupe: bool = False  # compare with every stored event, not just the recent window
    # The batch-size limit protects the HTTP API; library bulk loads (committed alone) lift it.
    batch_limit: bool = True
    future: Future[list[ingest.Outcome]] = field(default_factory=Future)
    size: int = 0


class Writer:
    """Owns every write to the store. ``submit`` may be called from any thread."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._queue: deque[Submission] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._ready: queue.Queue[_Prepared | None] = queue.Queue(maxsize=2)
        self._threads = [
            threading.Thread(target=self._run, name="bowknot-prepare", daemon=True),
            threading.Thread(target=self._run_commits, name="bowknot-writer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.commits = 0
        # Privacy suppression (set by the workspace): a statement that drops a load's events
        # of suppressed identifiers, run only while there are suppressions.
        self.suppress_sql: str | None = None
        self._suppressing = False

    def refresh_suppressions(self) -> None:
        if self.suppress_sql is not None:
            con = self._store.connection.cursor()  # the caller's cursor may be streaming
            try:
                self._suppressing = bool(run(con, "SELECT count(*) FROM suppressions")[0][0])
            finally:
                con.close()

    # -- producer side ------------------------------------------------------------------
    def submit(self, sub: Submission, *, block: bool = False) -> Future[list[ingest.Outcome]]:
        """Queue a submission; raise :class:`Overloaded` when the queue is full.

        ``block=True`` waits for room instead (bulk callers such as the importer).
        """
        sub.size = sum(len(r.body) for r in sub.requests)
        if sub.items is not None:
            sub.size += sub.items.column("raw").nbytes
        with self._cond:
            if self._closed:
                raise RuntimeError("the writer is closed; open the workspace again")
            limit = self._settings.writer_queue_bytes
            while self._queued_bytes and self._queued_bytes + sub.size > limit:
                if not block:
                    raise Overloaded(
                        "Ingestion is busy: too much is waiting to be written. Retry after "
                        "the number of seconds in Retry-After.",
                        retry_after=1,
                    )
                self._cond.wait(0.1)
            self._queue.append(sub)
            self._queued_bytes += sub.size
            self._cond.notify_all()
        return sub.future

    def write(self, sub: Submission) -> list[ingest.Outcome]:
        """Submit and wait for the durable outcome."""
        return self.submit(sub, block=True).result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    # -- the writer thread --------------------------------------------------------------
    def _take_group(self) -> list[Submission] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            if self._queue[0].items is None and not self._queue[0].full_dedupe:
                # Clients answered by the last commit send their next requests within a few
                # milliseconds; waiting briefly lets one commit take them all instead of
                # splitting them across two (measured: groups of 8 became 16 at 16 clients).
                deadline = time.monotonic() + self._settings.writer_gather_ms / 1000
                while (
                    self._queued_bytes < self._settings.writer_group_bytes
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(left)
            first = self._queue.popleft()
            group = [first]
            size = first.size
            # Imports and bulk loads commit alone; live requests are grouped.
            if first.items is None and not first.full_dedupe:
                while (
                    self._queue
                    and self._queue[0].items is None
                    and not self._queue[0].full_dedupe
                    and size + self._queue[0].size <= self._settings.writer_group_bytes
                ):
                    nxt = self._queue.popleft()
                    group.append(nxt)
                    size += nxt.size
            self._queued_bytes -= size
            self._cond.notify_all()
            return group

    # -- the pipeline: prepare (parse and validate) overlaps the previous commit ----------
    def _run(self) -> None:
        """Stage 1: gather a group and parse and validate it; touches no table."""
        con = self._store.connection.cursor()
        run(con, "SET TimeZone='UTC'")
        try:
            while True:
                try:
                    group = self._take_group()
                except BaseException as exc:  # never leave a waiter hanging on a dead writer
                    log.exception("the writer stopped")
                    with self._cond:
                        self._closed = True
                        pending, self._queue = list(self._queue), deque()
                    for sub in pending:
                        sub.future.set_exception(exc)
                    return
                if group is None:
                    return
                try:
                    prepared = self._prepare(con, group)
                except BaseException as exc:  # every waiter must hear back
                    log.exception("preparing a group failed")
                    for sub in group:
                        sub.future.set_exception(exc)
                    continue
                self._ready.put(prepared)
        finally:
            self._ready.put(None)
            con.close()

    def _run_commits(self) -> None:
        """Stage 2: deduplicate against the log, append and commit, one group at a time."""
        con = self._store.connection.cursor()
        run(con, "SET TimeZone='UTC'")
        while (prepared := self._ready.get()) is not None:
            try:
                outcomes = self._commit(con, prepared)
            except BaseException as exc:  # every waiter must hear back, whatever happened
                log.exception("group commit failed")
                with contextlib.suppress(Exception):  # no transaction may be open
                    run(con, "ROLLBACK")
                for sub in prepared.group:
                    sub.future.set_exception(exc)
                continue
            for sub, outs in zip(prepared.group, outcomes, strict=True):
                sub.future.set_result(outs)
        con.close()

    def _prepare(self, con: Any, group: list[Submission]) -> _Prepared:
        now = datetime.now(UTC).replace(tzinfo=None)
        s = self._settings
        req_rows: dict[str, list[Any]] = {n: [] for n in REQUEST_SCHEMA.names}
        spans: list[tuple[int, int]] = []
        req = 0
        for sub in group:
            start = req
            if sub.items is not None:
                req += 1  # an import chunk is one "request"
            for r in sub.requests:
                for name, value in (
                    ("req", req),
                    ("source", r.source),
                    ("origin", r.origin),
                    ("call", r.call),
                    ("body", r.body),
                    ("received_at", now),
                    ("trusted", r.trusted),
                    ("file", r.file),
                ):
                    req_rows[name].append(value)
                req += 1
            spans.append((start, req))
        requests = pa.table(req_rows, schema=REQUEST_SCHEMA)
        items_in = [sub.items for sub in group if sub.items is not None]
        window = s.dedupe_window_hours
        window_filter = ""
        if window and not any(sub.full_dedupe for sub in group):
            since = now - timedelta(hours=window)
            window_filter = f"AND received_at >= TIMESTAMP '{since.isoformat(sep=' ')}'"
        values: dict[str, Any] = {
            "max_batch": s.max_batch_events if all(b.batch_limit for b in group) else 1 << 62,
            "max_message_id": s.max_message_id_chars,
            "max_event_bytes": s.max_event_bytes,
            "calls": "(" + ", ".join(f"'{c}'" for c in ingest.CALLS) + ")",
            "window_filter": window_filter,
            "spec_struct": ingest.SPEC_STRUCT,
            "now": now.isoformat(sep=" "),
            # Stage 2 reads the validated rows this stage leaves behind.
            "normalize": "SELECT * FROM staged",
        }
        tables: dict[str, pa.Table] = {}
        if items_in and not requests.num_rows:
            # A file import: its lines are the items as they are (no copy; small record
            # batches let DuckDB scan them on every core), and the raw text stays there.
            tables["raws"] = pa.Table.from_batches(
                items_in[0].to_batches(max_chunksize=_BATCH_ROWS), items_in[0].schema)
            con.register("items", tables["raws"])
            values["raw_column"] = ""
            tables["staged"] = _materialize(
                con, "CREATE OR REPLACE TEMP TABLE staged AS\n" + ingest.NORMALIZE_SQL, values)
        else:
            con.register("requests", requests)
            if items_in:
                con.register("items_in", items_in[0])
            values["file_items"] = ingest.FILE_ITEMS_SQL if items_in else ""
            values["raw_column"] = ", raw"
            tables["staged"] = tables["raws"] = _materialize(
                con, ingest.PREPARE_REQUESTS_SQL, values)
        for name in ("requests", "items_in", "items", "staged"):
            with contextlib.suppress(Exception):
                con.unregister(name)
        origin = group[0].requests[0].origin if group[0].requests else "import"
        file = group[0].requests[0].file if group[0].requests else None
        if items_in:
            file = items_in[0].column("file")[0].as_py() if len(items_in[0]) else None
        return _Prepared(group, spans, now, values, tables, origin, file)

    def _commit(self, con: Any, prep: _Prepared) -> list[list[ingest.Outcome]]:
        values = prep.values
        for name, table in prep.tables.items():
            con.register(name, table)
        run(con, "BEGIN TRANSACTION")
        load_id = run(con, "SELECT nextval('load_seq')")[0][0]
        values["load_id"] = load_id
        for sql in (ingest.CLASSIFY_SQL, ingest.INSERT_EVENTS_SQL):
            _materialize(con, sql, values)
        summary = {row[0]: row[1:] for row in run(con, ingest.SUMMARY_SQL)}
        if self._suppressing and self.suppress_sql is not None:
            dropped = len(run(con, self.suppress_sql, [load_id]))
            if dropped:
                run(con, "INSERT INTO suppressed_counts VALUES (?, ?)", [load_id, dropped])
        failures: dict[int, list[tuple[Any, list[str]]]] = {}
        kinds: set[str] = set()
        for r, pos, reasons in run(con, ingest.ITEM_FAILURES_SQL):
            failures.setdefault(r, []).append((pos, reasons))
            kinds.add("request" if pos is None else
                      "conflict" if reasons == ["message_id_conflict"] else "item")
        # Rejections are rare: the statements that keep them run only when there are some.
        if kinds & {"request", "item"}:
            run(con, ingest.substitute(ingest.FAIL_ITEMS_SQL, values))
        if "conflict" in kinds:
            run(con, ingest.substitute(ingest.FAIL_CONFLICTS_SQL, values))
        totals = [sum(v[i] for v in summary.values()) for i in range(3)]
        n_failed = sum(len(v) for v in failures.values()) - totals[2]
        run(
            con,
            "INSERT INTO loads VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [load_id, prep.origin, prep.now, totals[0], totals[1], totals[2], n_failed,
             prep.file],
        )
        run(con, "COMMIT")
        for name in (*prep.tables, "classified"):
            with contextlib.suppress(Exception):
                con.unregister(name)
        self.commits += 1
        result: list[list[ingest.Outcome]] = []
        for start, end in prep.spans:
            outs = []
            for i in range(start, end):
                acc, dup, conf = summary.get(i, (0, 0, 0))
                out = ingest.Outcome(acc, dup, conf, load_id=load_id)
                for pos, reasons in failures.get(i, []):
                    if pos is None:
                        out.request_reason = reasons[0]
                    else:
                        out.failures.append({"index": pos, "reason_codes": reasons,
                                             "reasons": ingest.describe(reasons)})
                outs.append(out)
            result.append(outs)
        return result


@dataclass
class _Prepared:
    """A group parsed and validated by stage 1, waiting for its commit."""

    group: list[Submission]
    spans: list[tuple[int, int]]
    now: datetime
    values: dict[str, Any]
    tables: dict[str, pa.Table]
    origin: str
    file: str | None

_TEMP = "CREATE OR REPLACE TEMP TABLE "
_BATCH_ROWS = 16_384  # an Arrow record batch is DuckDB's unit of parallel scanning


def _materialize(con: Any, sql: str, values: dict[str, Any]) -> pa.Table | None:
    """Run a pipeline step; a ``CREATE TEMP TABLE name AS`` step is kept as Arrow instead.

    Writing a temp table costs DuckDB 2.0 about 40x the query itself (compression of new
    row groups: 478 ms vs 11 ms for 800 events, measured); an intermediate that lives for one
    transaction is cheaper as an Arrow table registered under the same name.
    """
    text = ingest.substitute(sql, values).lstrip()
    if not text.startswith(_TEMP):
        run(con, text)
        return None
    name, _, select = text[len(_TEMP):].partition(" AS\n")
    table = con.sql(select).to_arrow_table(_BATCH_ROWS)
    con.register(name.strip(), table)
    return table
