"""The single writer: one thread that turns queued submissions into group commits.

Concurrent requests are gathered into one transaction (group commit), so a burst of small
batches costs one commit, not one each. A submission's future resolves only after COMMIT has
returned, and DuckDB syncs its write-ahead log on commit, so an acknowledged event survives a
``kill -9`` of the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import ingest
from ..errors import Overloaded
from ..settings import Settings
from .engine import Store, run
from .keys import KeyIndex, engine_hash_matches, event_keys

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


# Rows out of the parse and validation statement (ingest.PREPARE_REQUESTS_SQL).
STAGED_SCHEMA = pa.schema(
    [("req", pa.int64()), ("pos", pa.int64()), ("source", pa.string()),
     ("origin", pa.string()), ("call", pa.string()), ("trusted", pa.bool_()),
     ("file", pa.string()), ("raw", pa.string()), ("reasons", pa.list_(pa.field("l", pa.string()))),
     *((name, pa.string()) for name in ("message_id", "type", "event", "name", "anonymous_id",
                                         "user_id", "group_id", "previous_id")),
     *((name, pa.timestamp("us")) for name in ("timestamp", "original_timestamp", "sent_at",
                                                "received_at")),
     *((name, pa.string()) for name in ("properties", "traits", "context", "integrations")),
     ("key", pa.uint64())]
)
_KEY_SQL = "SELECT hash(source, message_id) AS key FROM typed_keys"


@dataclass
class Request:
    """One request body as received: a single call (``call`` names it) or a ``batch``."""

    source: str
    call: str
    body: str
    origin: str = "http"
    trusted: bool = False
    file: str | None = None
    # A library event known to be valid, as its staged row (``ingest.typed_track``): it
    # skips the parse and validation statement (see Writer._typed).
    typed: dict[str, Any] | None = None


@dataclass
class Rows:
    """Rows for another table, written in the same transaction as a submission's events.

    ``sql`` reads them as table ``name`` (with ``schema``); the rows of every submission in
    a group with the same statement are written by one execution of it, so a state change
    that goes with an event (an invitation answered, a case opened) costs neither a
    statement nor a commit of its own, and is durable exactly when its event is. The rows
    are not written when one of the submission's events is refused (the caller hears why);
    its other events are, so the events of a submission with rows are the library's own,
    not a client's.
    """

    name: str
    sql: str
    schema: pa.Schema
    rows: list[dict[str, Any]]


@dataclass
class Submission:
    requests: list[Request] = field(default_factory=list)
    rows: list[Rows] = field(default_factory=list)  # written with the events (see Rows)
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
        # Prepared groups by their number (_take_group numbers them): two threads prepare,
        # and the commit stage takes the groups in the order they were taken.
        self._ready: dict[int, _Prepared | None] = {}
        self._ready_cond = threading.Condition()
        self._taken = 0  # groups numbered so far
        self._preparing = _PREPARERS  # prepare threads still running
        # The prepare stage runs at most one group ahead of the commits, and only while a
        # large group commits (see _run_commits): a group taken while others wait for
        # their commit splits the waiting requests into more, smaller commits of about the
        # same cost each (measured: 32 survey answers in flight made groups of 8.5 with two
        # groups prepared ahead). An import chunk is a commit of its own, so taking more of
        # them splits nothing: after one, the prepare stage may run two groups ahead, and
        # neither stage waits for the other when a chunk parses faster or slower than the
        # commit before it (the commit appends on one thread: Writer._commit). Two threads
        # prepare, so those two chunks are parsed at once (the first two of an import too),
        # and the parse is not down to one statement's serial steps (planning, the Arrow
        # result) while the commit stage waits for it. Live groups are prepared one at a
        # time whichever thread takes them (one slot).
        self._slots = threading.Condition()
        self._unstarted = 0  # groups taken by the prepare stage whose commit has not begun
        self._ahead = 1  # how many of them there may be
        self._unfolded_bytes = 0  # imported since the last checkpoint
        self._keys: KeyIndex | None = None  # loaded by the commit thread on first use
        self._hash_in_numpy: bool | None = None  # keys.event_keys matches the engine
        self._prepared_by_con: dict[int, _Statements] = {}
        self.commits = 0
        # When the writer last had work (a group taken or committed): the background build
        # waits for a pause (see backlogged).
        self._active_at = time.monotonic()
        self._in_flight = 0  # groups taken and not yet answered
        # Each thread's start-up done: the prepare threads', then the commit thread's.
        self._warm = [threading.Event() for _ in range(_PREPARERS + 1)]
        # Privacy suppression (set by the workspace): a statement that drops a load's events
        # of suppressed identifiers, run only while there are suppressions.
        self.suppress_sql: str | None = None
        self._suppressing = False
        self._threads = [
            *(threading.Thread(target=self._run, args=(self._warm[i],),
                               name=f"bowknot-prepare-{i + 1}", daemon=True)
              for i in range(_PREPARERS)),
            threading.Thread(target=self._run_commits, name="bowknot-writer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

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

    def backlogged(self, quiet: float) -> bool:
        """Whether requests wait, or the writer had work within the last ``quiet`` seconds."""
        return (bool(self._queue) or self._in_flight > 0
                or time.monotonic() - self._active_at < quiet)

    def wait_warm(self, timeout: float) -> bool:
        """Wait until both stages have warmed up (statements prepared, keys read)."""
        deadline = time.monotonic() + timeout
        return all(e.wait(max(0.0, deadline - time.monotonic())) for e in self._warm)

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
    def _take_group(self) -> tuple[int, list[Submission]] | None:
        """The next group and its number (the order of the commits)."""
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
            self._in_flight += 1
            self._cond.notify_all()
            number = self._taken
            self._taken += 1
            return number, group

    # -- the pipeline: prepare (parse and validate) overlaps the previous commit ----------
    def _run(self, warm: threading.Event) -> None:
        """Stage 1 (two threads): gather a group and parse and validate it; touches no
        table."""
        con = self._store.connection.cursor()
        run(con, "SET TimeZone='UTC'")
        # Warm up: prepare the live-request statement now (about 30 ms), not in the first
        # client's request.
        try:
            Writer._prepare(self, con, [Submission()])  # the class's, even if patched (tests)
        except Exception:
            log.exception("warming up the writer failed")
        warm.set()
        try:
            while True:
                with self._slots:  # a slot is freed when the commit stage takes a group
                    self._slots.wait_for(lambda: self._unstarted < self._ahead)
                    self._unstarted += 1
                try:
                    taken = self._take_group()
                except BaseException as exc:  # never leave a waiter hanging on a dead writer
                    log.exception("the writer stopped")
                    with self._cond:
                        self._closed = True
                        pending, self._queue = list(self._queue), deque()
                    for sub in pending:
                        sub.future.set_exception(exc)
                    self._free_slot()  # the other prepare thread may be waiting for it
                    return
                if taken is None:  # closed
                    self._free_slot()
                    return
                number, group = taken
                with self._slots:  # an import's next chunk may be taken at once
                    self._ahead = 2 if _imported(group) else 1
                    self._slots.notify_all()
                try:
                    prepared = (self._prepare_import(con, group) if _PARSE_NICE
                                and _imported(group) else self._prepare(con, group))
                except BaseException as exc:  # every waiter must hear back
                    log.exception("preparing a group failed")
                    self._answered()
                    for sub in group:
                        sub.future.set_exception(exc)
                    self._free_slot()  # nothing goes to the commit stage
                    self._deliver(number, None)
                    continue
                self._deliver(number, prepared)
        finally:
            con.close()
            with self._ready_cond:
                self._preparing -= 1
                self._ready_cond.notify_all()

    def _prepare_import(self, con: Any, group: list[Submission]) -> _Prepared:
        """An import chunk's parse, on a thread of its own at a lower OS priority.

        The commit stage appends each chunk on one thread (Writer._commit), about a third
        of an import's CPU. At the same priority it shares a core with the parse of the
        next chunks, and once they are parsed (the slots are full) it runs alone while the
        other core idles. At a lower priority the parse takes only what the commit leaves,
        so the commit never waits for a core and the parse fills the rest. The thread ends
        with the chunk: a thread's priority cannot be raised again without privileges.
        """
        done: list[_Prepared] = []
        failed: list[BaseException] = []

        def parse() -> None:
            with contextlib.suppress(AttributeError, OSError):  # Linux: per-thread priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                               os.getpriority(os.PRIO_PROCESS, 0) + _PARSE_NICE)
            try:
                done.append(self._prepare(con, group))
            except BaseException as exc:  # raised again by the prepare thread
                failed.append(exc)

        thread = threading.Thread(target=parse, name="bowknot-parse", daemon=True)
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        return done[0]

    def _deliver(self, number: int, prepared: _Prepared | None) -> None:
        """Hand group ``number`` to the commit stage (None: it failed, nothing to commit)."""
        with self._ready_cond:
            self._ready[number] = prepared
            self._ready_cond.notify_all()

    def _next_prepared(self, number: int) -> tuple[bool, _Prepared | None]:
        """Wait for group ``number``: (False, None) once the prepare threads have stopped
        and every group taken has been delivered."""
        with self._ready_cond:
            while number not in self._ready:
                if not self._preparing:
                    with self._cond:
                        if number >= self._taken:
                            return False, None
                self._ready_cond.wait()
            return True, self._ready.pop(number)

    def _run_commits(self) -> None:
        """Stage 2: deduplicate against the log, append and commit, one group at a time, in
        the order the groups were taken."""
        con = self._store.connection.cursor()
        run(con, "SET TimeZone='UTC'")
        try:
            self._key_index(con)  # read the stored keys before the first commit needs them
        except Exception:
            log.exception("reading the stored keys failed")
        self._warm[-1].set()
        number = 0
        while True:
            more, prepared = self._next_prepared(number)
            if not more:
                break
            number += 1
            if prepared is None:  # its preparation failed and was answered
                continue
            # While a large group commits, the next ones are parsed (both stages busy). After
            # a small one, the next group is taken once this commit is done, with every
            # request that arrived meanwhile: small requests (survey answers) then make
            # fewer, bigger commits, each costing about the same CPU (measured: 14 -> 19
            # answers a commit, CPU per answer -20 %, answers/s +20 %, benchmarks/surveys.py).
            early = sum(sub.size for sub in prepared.group) >= _AHEAD_BYTES
            if early:
                self._free_slot()
            try:
                outcomes = self._commit(con, prepared)
            except BaseException as exc:  # every waiter must hear back, whatever happened
                log.exception("group commit failed")
                with contextlib.suppress(Exception):  # no transaction may be open
                    run(con, "ROLLBACK")
                self._answered()
                for sub in prepared.group:
                    sub.future.set_exception(exc)
                continue
            finally:
                if not early:
                    self._free_slot()
            self._answered()
            for sub, outs in zip(prepared.group, outcomes, strict=True):
                sub.future.set_result(outs)
        con.close()

    def _free_slot(self) -> None:
        with self._slots:
            self._unstarted -= 1
            self._slots.notify_all()

    def _answered(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._active_at = time.monotonic()

    def _prepare(self, con: Any, group: list[Submission]) -> _Prepared:
        now = datetime.now(UTC).replace(tzinfo=None)
        s = self._settings
        req_rows: dict[str, list[Any]] = {n: [] for n in REQUEST_SCHEMA.names}
        spans: list[tuple[int, int]] = []
        req = 0
        typed: list[dict[str, Any]] = []
        for sub in group:
            start = req
            if sub.items is not None:
                req += 1  # an import chunk is one "request"
            for r in sub.requests:
                if r.typed is not None:
                    typed.append({**r.typed, "req": req, "received_at": now})
                    req += 1
                    continue
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
            "now_ts": f"TIMESTAMP '{now.isoformat(sep=' ')}'",
        }
        tables: dict[str, pa.Table] = {}
        if items_in and not requests.num_rows:
            # A file import: its lines are the items as they are (no copy; small record
            # batches let DuckDB scan them on every core), and the raw text stays there.
            raws = pa.Table.from_batches(
                items_in[0].to_batches(max_chunksize=_BATCH_ROWS), items_in[0].schema)
            con.register("items", raws)
            values["raw_column"] = ""
            sql = ingest.KEYED_SQL.replace("$inner", ingest.NORMALIZE_SQL)
            try:
                staged = con.sql(ingest.substitute(ingest.optimistic(sql), values)
                                 ).to_arrow_table(_BATCH_ROWS)
            except duckdb.Error:  # a line that is not JSON: parse again, explaining it
                staged = con.sql(ingest.substitute(sql, values)).to_arrow_table(_BATCH_ROWS)
            tables["staged"] = staged
            tables["raws"] = raws
            con.unregister("items")
        elif items_in:  # a replay: request bodies and pre-split items together
            con.register("requests", requests)
            con.register("items_in", items_in[0])
            values["file_items"] = ingest.FILE_ITEMS_SQL
            values["raw_column"] = ", raw"
            sql = ingest.substitute(ingest.PREPARE_REQUESTS_SQL, values)
            tables["staged"] = tables["raws"] = con.sql(sql).to_arrow_table(_BATCH_ROWS)
            for name in ("requests", "items_in"):
                con.unregister(name)
        elif typed and not requests.num_rows:  # only the library's own events: no parse
            tables["staged"] = tables["raws"] = self._typed(con, typed)
        else:
            # Live requests: the statement is prepared once per connection and reads the
            # requests through a holder, so a group pays for executing it, not for planning
            # it (about 20 ms of DuckDB 2.0 bind and optimise for this statement).
            values["file_items"] = ""
            values["raw_column"] = ", raw"
            values["now_ts"] = "received_at"  # every request row has it
            stmts = self._statements(con)
            sql = ingest.PREPARE_REQUESTS_SQL
            try:
                staged = stmts.query(ingest.substitute(ingest.optimistic(sql), values),
                                     {"requests": requests})
            except duckdb.Error:  # an event that is not JSON: parse again, explaining it
                staged = stmts.query(ingest.substitute(sql, values), {"requests": requests})
            if typed:
                staged = pa.concat_tables([staged, self._typed(con, typed).cast(staged.schema)])
            tables["staged"] = tables["raws"] = staged
            self._statements(con).clear()
        origin = group[0].requests[0].origin if group[0].requests else "import"
        file = group[0].requests[0].file if group[0].requests else None
        if items_in:
            file = items_in[0].column("file")[0].as_py() if len(items_in[0]) else None
        return _Prepared(group, spans, now, values, tables, origin, file)

    def _typed(self, con: Any, rows: list[dict[str, Any]]) -> pa.Table:
        """Staged rows of the library's typed events, with their deduplication keys: the
        engine's ``hash(source, message_id)``, as for every event, computed in NumPy (or,
        should this engine hash differently, in one small prepared statement); no JSON is
        parsed."""
        table = pa.Table.from_pylist(rows, schema=STAGED_SCHEMA.remove(
            STAGED_SCHEMA.get_field_index("key")))
        if self._hash_in_numpy is None:  # the same hash as this engine's? checked once
            self._hash_in_numpy = engine_hash_matches(con)
        if self._hash_in_numpy:  # computed here: no statement (keys.event_keys)
            keys: pa.Array | pa.ChunkedArray = pa.array(event_keys(
                table.column("source"), table.column("message_id")), pa.uint64())
        else:
            keys = self._statements(con).query(_KEY_SQL, {"typed_keys": table.select(
                ["source", "message_id"])}).column("key")
        return table.append_column(STAGED_SCHEMA.field("key"), keys)

    def _statements(self, con: Any) -> _Statements:
        stmts: _Statements | None = self._prepared_by_con.get(id(con))
        if stmts is None:
            stmts = self._prepared_by_con[id(con)] = _Statements(con)
        return stmts

    def _key_index(self, con: Any) -> KeyIndex:
        """Every stored key, read once (8 bytes an event), then kept up to date by commits."""
        if self._keys is None:
            index = KeyIndex()
            column = con.sql("SELECT key FROM events").to_arrow_table().column("key")
            index.add(column.to_numpy())
            self._keys = index
        return self._keys

    def _classify(self, con: Any, prep: _Prepared) -> np.ndarray[Any, Any]:
        """Outcome codes (``ingest.OUTCOMES``) of the staged rows, vectorised.

        Only suspects, valid rows whose key the index holds or that repeat within the load,
        are compared with the stored events in SQL; every other valid row is new.
        """
        staged = prep.tables["staged"]
        valid = pc.equal(pc.list_value_length(staged.column("reasons")), 0)
        valid_np = valid.to_numpy(zero_copy_only=False)
        outcome = np.where(valid_np, 0, 3).astype(np.int8)
        if not valid_np.any():
            return outcome
        keys = staged.column("key").fill_null(0).to_numpy()
        # Sorted, the keys are searched in the index's runs in memory order (about 3x faster
        # than in row order for an import chunk), and repeats sit side by side.
        ordered = np.sort(keys[valid_np])
        seen = ordered[self._key_index(con).contains(ordered)]
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        suspect = np.zeros(len(keys), dtype=bool)
        if len(seen) or len(repeated):
            suspect = valid_np & np.isin(keys, np.concatenate((seen, repeated)))
        if suspect.any():
            rows = np.flatnonzero(suspect)
            con.register("suspects", staged.take(rows).append_column("_row", pa.array(rows)))
            found = con.sql(ingest.substitute(ingest.CLASSIFY_SQL, prep.values)).fetchnumpy()
            con.unregister("suspects")
            outcome[found["_row"]] = found["outcome"]
        return outcome

    def _commit(self, con: Any, prep: _Prepared) -> list[list[ingest.Outcome]]:
        staged = prep.tables["staged"]
        # Each statement of a commit is a round trip that waits for the GIL again, behind the
        # request threads: the commit takes few (one to begin, one for the events, one with
        # the other tables' rows, the load's record and the COMMIT).
        load_id = run(con, "BEGIN TRANSACTION; SELECT nextval('load_seq')")[0][0]
        outcome = self._classify(con, prep)
        classified = staged.append_column(
            "outcome", pa.DictionaryArray.from_arrays(pa.array(outcome), _OUTCOMES))
        stmts = self._statements(con)
        # A small live group runs the prepared statement.
        if classified.num_rows >= _PREPARED_MAX_ROWS:
            # A large group (an import chunk) is planned for its size and appended by one
            # thread in order, so a chunk of whole row groups (imports.ROW_GROUP_ROWS) is
            # stored as full row groups. A parallel insert leaves a partial row group per
            # thread, which DuckDB's next checkpoint merges with its neighbours and writes
            # again: as much CPU as the insert (1.0-1.5 us a row at checkpoint, measured,
            # against 0.4 us a row more for the ordered insert and a checkpoint of 5 ms).
            stmts.append_in_order(ingest.INSERT_EVENTS_SQL, {"classified": classified},
                                  load_id=load_id)
        else:
            stmts.execute(ingest.INSERT_EVENTS_SQL, {"classified": classified}, load_id=load_id)
        # Rows go with their submission's events: not written if one of those was refused.
        refused = set(staged.column("req").to_numpy()[outcome >= 2].tolist())
        side: dict[tuple[str, str], tuple[pa.Schema, list[dict[str, Any]]]] = {}
        for sub, (start, end) in zip(prep.group, prep.spans, strict=True):
            if refused.intersection(range(start, end)):
                continue
            for rows in sub.rows:
                side.setdefault((rows.name, rows.sql), (rows.schema, []))[1].extend(rows.rows)
        tail = [stmts.bind(sql, {name: pa.Table.from_pylist(side_rows, schema)})
                for (name, sql), (schema, side_rows) in side.items()]
        if self._suppressing and self.suppress_sql is not None:
            dropped = len(run(con, self.suppress_sql, [load_id]))
            if dropped:
                run(con, "INSERT INTO suppressed_counts VALUES (?, ?)", [load_id, dropped])
        counts = np.bincount(outcome, minlength=4)
        failed_rows = np.flatnonzero(outcome >= 2)
        if len(failed_rows):
            # Rejections are rare: the statements that keep them run only when there are some.
            values = {**prep.values, "load_id": load_id}
            con.register("raws", prep.tables["raws"])
            if counts[3]:
                run(con, ingest.substitute(ingest.FAIL_ITEMS_SQL, values))
            if counts[2]:
                run(con, ingest.substitute(ingest.FAIL_CONFLICTS_SQL, values))
            con.unregister("raws")
        tail.append(
            f"INSERT INTO loads VALUES ({int(load_id)}, {_literal(prep.origin)}, "
            f"TIMESTAMP '{prep.now.isoformat(sep=' ')}', {int(counts[0])}, {int(counts[1])}, "
            f"{int(counts[2])}, {int(counts[3])}, {_literal(prep.file)})")
        tail.append("COMMIT")
        run(con, "; ".join(tail))
        stmts.clear()
        keys = staged.column("key").fill_null(0).to_numpy()
        self._key_index(con).add(keys[outcome == 0])
        if prep.origin == "import":
            # A large insert goes straight to the file and leaves little in the write-ahead
            # log, so no automatic checkpoint comes; without one, closing after 20 M events
            # checkpointed them all at once (15 s, +3 GB of memory, measured). One after
            # every chunk cost more than that in all (0.3-0.5 s each); one a gigabyte
            # bounds the memory at a few chunks' worth.
            self._unfolded_bytes += sum(sub.size for sub in prep.group)
            if self._unfolded_bytes >= _CHECKPOINT_BYTES:
                with contextlib.suppress(duckdb.Error):  # a reader's transaction: next time
                    run(con, "CHECKPOINT")
                    self._unfolded_bytes = 0
        self.commits += 1
        return self._outcomes(prep, classified, outcome, failed_rows, load_id)

    @staticmethod
    def _outcomes(prep: _Prepared, classified: pa.Table, outcome: np.ndarray[Any, Any],
                  failed_rows: np.ndarray[Any, Any], load_id: int
                  ) -> list[list[ingest.Outcome]]:
        n_req = prep.spans[-1][1] if prep.spans else 0
        req = classified.column("req").to_numpy()
        per_req = [np.bincount(req, weights=outcome == code, minlength=n_req).astype(int)
                   for code in range(3)]
        failures: dict[int, list[tuple[Any, list[str]]]] = {}
        if len(failed_rows):
            rows = classified.take(failed_rows).select(["req", "pos", "reasons", "outcome"])
            pos_sort = pc.fill_null(rows.column("pos"), -1).to_numpy()
            order = np.lexsort((pos_sort, rows.column("req").to_numpy()))
            rows = rows.take(order)
            for r, pos, reasons, out in zip(*(rows.column(c).to_pylist() for c in
                                              ("req", "pos", "reasons", "outcome")),
                                            strict=True):
                failures.setdefault(r, []).append(
                    (pos, ["message_id_conflict"] if out == "conflict" else reasons))
        result: list[list[ingest.Outcome]] = []
        for start, end in prep.spans:
            outs = []
            for i in range(start, end):
                out = ingest.Outcome(int(per_req[0][i]), int(per_req[1][i]),
                                     int(per_req[2][i]), load_id=load_id)
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


_CHECKPOINT_BYTES = 1 << 30
_PREPARERS = 2  # prepare threads (see Writer.__init__)
_PARSE_NICE = 5  # how much lower an import chunk's parse runs (Writer._prepare_import)
_AHEAD_BYTES = 128 << 10  # a group this large is committed while the next one is parsed
_BATCH_ROWS = 16_384  # an Arrow record batch is DuckDB's unit of parallel scanning
_OUTCOMES = pa.array(ingest.OUTCOMES)
# A statement over a holder reads its rows as one stream, on one core; above this many rows
# planning (about 20 ms) is cheap next to the scan, and a registered table scans in parallel.
_PREPARED_MAX_ROWS = 50_000


def _imported(group: list[Submission]) -> bool:
    """Whether ``group`` is a file import's chunk (no request bodies)."""
    return group[0].items is not None and not group[0].requests


def _literal(text: str | None) -> str:
    return "NULL" if text is None else "'" + text.replace("'", "''") + "'"


class _Holder:
    """Rows under a registered name that can be swapped without registering again.

    A statement prepared over the name reads whatever rows the holder has when it runs, so
    it is planned once per connection instead of once per group.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.table: pa.Table = schema.empty_table()

    def __arrow_c_schema__(self) -> Any:
        return self.schema.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.table.__arrow_c_stream__(requested_schema)


class _Statements:
    """Statements prepared once on one connection, over holders (DuckDB ``PREPARE``)."""

    def __init__(self, con: Any) -> None:
        self._con = con
        self._holders: dict[str, _Holder] = {}
        self._names: dict[str, tuple[str, frozenset[str]]] = {}  # sql -> name, tables read
        self._count = 0

    def _bind(self, sql: str, tables: dict[str, pa.Table]) -> str:
        for name, table in tables.items():
            holder = self._holders.get(name)
            if holder is None or not holder.schema.equals(table.schema):
                self._forget(name)  # a new shape: statements over the old holder go
                holder = self._holders[name] = _Holder(table.schema)
                self._con.register(name, holder)
            holder.table = table
        entry = self._names.get(sql)
        if entry is None:
            self._count += 1
            stmt = f"bk_stmt_{self._count}"
            run(self._con, f"PREPARE {stmt} AS {sql}")
            entry = self._names[sql] = (stmt, frozenset(tables))
        return entry[0]

    def bind(self, sql: str, tables: dict[str, pa.Table]) -> str:
        """The statement that runs ``sql`` over ``tables`` (to run with others at once)."""
        return f"EXECUTE {self._bind(sql, tables)}"

    @staticmethod
    def _args(params: dict[str, int]) -> str:
        return "(" + ", ".join(f"{k} := {int(v)}" for k, v in params.items()) + ")" \
            if params else ""

    def query(self, sql: str, tables: dict[str, pa.Table], **params: int) -> pa.Table:
        stmt = self._bind(sql, tables)
        table: pa.Table = self._con.sql(f"EXECUTE {stmt}{self._args(params)}").to_arrow_table(
            _BATCH_ROWS)
        return table

    def execute(self, sql: str, tables: dict[str, pa.Table], **params: int) -> None:
        stmt = self._bind(sql, tables)
        run(self._con, f"EXECUTE {stmt}{self._args(params)}")

    def append_in_order(self, insert: str, tables: dict[str, pa.Table], **params: int) -> None:
        """Run INSERT statement ``insert``, planned for these rows (not prepared), with the
        rows appended in order by one thread.

        DuckDB never splits an INSERT ... RETURNING across threads, so rows fill one row
        group after another: see Writer._commit. The insert has ended when the first
        returned row can be read; the rest of the (empty) rows are not fetched.
        """
        for name, table in tables.items():
            self._forget(name)
            self._con.register(name, table)
        sql = ingest.substitute(insert, {k: int(v) for k, v in params.items()})
        self._con.execute(sql + " RETURNING NULL").fetchone()

    def _forget(self, name: str) -> None:
        """Drop the holder under ``name`` and the statements prepared over it."""
        for text, (stmt, names) in list(self._names.items()):
            if name in names:
                run(self._con, f"DEALLOCATE {stmt}")
                del self._names[text]
        self._holders.pop(name, None)

    def clear(self) -> None:
        """Let go of the rows (the prepared statements stay)."""
        for holder in self._holders.values():
            holder.table = holder.schema.empty_table()
