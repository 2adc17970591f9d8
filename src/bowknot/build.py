"""The pipeline: bring identities, persons and profiles up to date with the event log.

A build reads only the loads committed since the previous build (``meta.build_load_id``),
folds their identifiers into the graph, resolves the clusters they touch and rewrites the
persons and profiles of those clusters, all in one transaction: readers see the previous
state until it commits, and a crash leaves the previous state intact. A full build starts
from scratch and compares the result with the previous state, so it logs what changed too.
``bowknot serve`` runs builds in the background (setting ``build_interval_seconds``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from . import identity, profiles
from .store.engine import run

log = logging.getLogger("bowknot.build")

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS builds (
        build_id BIGINT, kind VARCHAR, started_at TIMESTAMP, seconds DOUBLE,
        from_load BIGINT, to_load BIGINT, events BIGINT, unattributed BIGINT,
        identifiers_resolved BIGINT, persons_updated BIGINT, graph_rounds INTEGER,
        label_rounds INTEGER)""",
)

# Bumped when a derived table's shape changes: those tables are then recreated and the next
# build is a full one. Operational state (identity_log, identity_overrides, person_redirects,
# builds) is kept.
DERIVED_VERSION = "9"
DERIVED_TABLES = ("id_nodes", "id_edges", "identities", "event_fallback", "node_stats",
                  "trait_stats", "persons", "profile_features", "person_traits",
                  "journey_events")


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Recreate derived tables made by another version of this code (before their DDL)."""
    if _meta(con, "derived_version") == DERIVED_VERSION:
        return
    run(con, "DROP VIEW IF EXISTS profiles")
    for table in DERIVED_TABLES:
        run(con, f"DROP TABLE IF EXISTS {table}")
    run(con, "DELETE FROM meta WHERE key IN ('node_hash', 'build_load_id')")
    _set_meta(con, "derived_version", DERIVED_VERSION)


# Derived from the events alone; a full build empties them. identities, persons and the log
# are rewritten by resolution (so a full build can compare with what was there).
_PARTIALS = ("id_nodes", "id_edges", "node_stats", "trait_stats", "event_fallback")
# The hash that makes node ids; a DuckDB upgrade that changed it forces a full build.
_HASH_PROBE = "SELECT hash('bowknot', 'node')::VARCHAR"
# The writer counts as paused after this long without work (see Builder._wait_for_pause).
_QUIET_SECONDS = 0.1
# While a build runs, the database file's dirty pages are flushed this often (see
# _write_behind).
FLUSH_SECONDS = 1.0


@contextmanager
def _write_behind(path: str) -> Iterator[None]:
    """Flush the database file to disk every FLUSH_SECONDS while the block runs.

    A full build writes its tables (~1 GB at 1 M persons) into the file as it goes, and the
    commit's fsync then waited for the kernel to write all of them: 0.3-0.8 s of wall time at
    20 M events with the cores idle. Flushed from another thread as the build goes, the
    commit's fsync finds little left (0.03-0.04 s; the same idea as PostgreSQL's
    ``backend_flush_after``). Durability does not depend on it: the commit still syncs.
    """
    if not os.path.isfile(path):  # an in-memory database
        yield
        return
    stop = threading.Event()
    interval = FLUSH_SECONDS
    sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync

    def flush() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            while not stop.wait(interval):
                sync(fd)
        except OSError:  # a file system that cannot sync: the commit reports what matters
            pass
        finally:
            os.close(fd)

    thread = threading.Thread(target=flush, name="bowknot-write-behind", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass
class BuildResult:
    build_id: int = 0
    kind: str = "incremental"
    seconds: float = 0.0
    from_load: int = 0
    to_load: int = 0
    events: int = 0
    unattributed: int = 0
    identifiers_resolved: int = 0
    persons_updated: int = 0
    graph_rounds: int = 0
    label_rounds: int = 0
    skipped: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Settings that shape derived data: changing one makes the next build a full one.
CONFIG_SETTINGS = ("identity_blocked_values", "identity_blocked_pattern", "identity_id_traits",
                   "identity_limits", "profile_trait_strategies", "profile_default_strategy",
                   "booking_event", "revenue_property", "touch_events")


def config_fingerprint(settings: Any) -> str:
    text = json.dumps({k: getattr(settings, k) for k in CONFIG_SETTINGS}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Identifier combinations whose primary identifier is neither their userId nor their
# anonymousId (both blocked values).
_ODD = """len(ids) > 0 AND NOT (ids[1].t = 'user_id' AND ids[1].v IS NOT DISTINCT FROM r_user)
          AND NOT (ids[1].t = 'anonymous_id' AND ids[1].v IS NOT DISTINCT FROM r_anon)"""


def _fallback(con: duckdb.DuckDBPyConnection, settings: Any, window: str) -> None:
    """Remember the (rare) events of the ``_ODD`` combinations (the caller has found some),
    so timelines can find them without a JSON scan."""
    names = identity.raw_names(settings)
    same = " AND ".join(f"e.{n} IS NOT DISTINCT FROM f.{n}" for n in names)
    run(con, f"""INSERT INTO event_fallback
        SELECT e.key, hash(f.ids[1].t, f.ids[1].v)
        FROM (SELECT key, {identity.raw_columns(settings)}
              FROM {identity.hinted(f"(SELECT * FROM events WHERE {window})")}) e
        JOIN (SELECT * FROM b_tup WHERE {_ODD}) f ON {same}""")


def _meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = run(con, "SELECT value FROM meta WHERE key = ?", [key])
    return rows[0][0] if rows else None


def _set_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    run(con, "DELETE FROM meta WHERE key = ?", [key])
    run(con, "INSERT INTO meta VALUES (?, ?)", [key, value])


class Builder:
    """Runs builds, one at a time, on its own connection."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        # Called after every build, skipped or not, under the build lock (survey triggers).
        self.hooks: list[Callable[[BuildResult], None]] = []

    def connection(self) -> duckdb.DuckDBPyConnection:
        con: duckdb.DuckDBPyConnection = self.ws.store.connection.cursor()
        run(con, "SET TimeZone = 'UTC'")
        return con

    @contextmanager
    def transaction(self, commit: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A transaction on its own connection, one at a time with builds (unmerges, privacy
        deletes, cohorts): committed at the end (rolled back if ``commit`` is false), rolled
        back if anything fails."""
        with self.lock:
            con = self.connection()
            try:
                run(con, "BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    run(con, "ROLLBACK")
                    raise
                run(con, "COMMIT" if commit else "ROLLBACK")
            finally:
                con.close()

    def build(self, full: bool = False) -> BuildResult:
        with self.lock:
            con = self.connection()
            try:
                # spill_errors: a full spill says which settings give it room
                with self.ws.store.spill_errors(), _write_behind(self.ws.store.path):
                    result = self._build(con, full)
            finally:
                con.close()
            for hook in self.hooks:
                try:
                    hook(result)
                except Exception:  # the build is committed; a hook's failure is its own
                    log.exception("post-build hook %r failed", hook)
            return result

    def _build(self, con: duckdb.DuckDBPyConnection, full: bool) -> BuildResult:
        settings = self.ws.settings
        started = time.perf_counter()
        run(con, "BEGIN TRANSACTION")
        try:
            probe = run(con, _HASH_PROBE)[0][0]
            config = config_fingerprint(settings)
            if _meta(con, "node_hash") != probe or _meta(con, "build_config") != config:
                full = True  # derived data would not match what the settings now say
            low = 0 if full else int(_meta(con, "build_load_id") or 0)
            high = int(run(con, "SELECT coalesce(max(load_id), 0) FROM loads")[0][0])
            dirty = run(con, "SELECT count(*) FROM identity_dirty")[0][0]
            if not full and high <= low and not dirty:
                run(con, "ROLLBACK")
                return BuildResult(skipped=True, from_load=low, to_load=high)
            build_id = int(run(con, "SELECT nextval('build_seq')")[0][0])
            if full:
                for table in _PARTIALS:
                    run(con, f"DELETE FROM {table}")
            result = BuildResult(build_id=build_id, kind="full" if full else "incremental",
                                 from_load=low, to_load=high)
            # One row per distinct combination of raw identifier fields (~10x fewer than
            # events): identifiers are validated once per combination, not once per event.
            raw = ", ".join(identity.raw_names(settings))
            window = f"load_id > {low} AND load_id <= {high}"
            run(con, f"""CREATE OR REPLACE TEMP TABLE b_tup AS
                SELECT {raw}, {profiles.EVENT_GROUP_COLUMNS},
                       {identity.ts_of('first')} AS first_event_at,
                       {identity.ids_from_raw(settings)} AS ids FROM (
                  SELECT {raw}, {profiles.EVENT_AGGREGATES}
                  FROM (SELECT key, timestamp AS ts, {profiles.ORDER_KEY_EVENTS} AS o,
                               {identity.raw_columns(settings)},
                               {profiles.event_columns(settings)}
                        FROM {identity.hinted(f"(SELECT * FROM events WHERE {window})")})
                  GROUP BY {raw})""")
            result.events, result.unattributed, odd = run(con, f"""SELECT
                coalesce(sum(events), 0), coalesce(sum(events) FILTER (WHERE len(ids) = 0), 0),
                count(*) FILTER (WHERE {_ODD}) FROM b_tup""")[0]
            run(con, "DELETE FROM b_tup WHERE len(ids) = 0")
            if odd:
                _fallback(con, settings, window)
            identity.update_graph(con, full)
            resolved = identity.resolve(con, settings, build_id, full, window)
            result.identifiers_resolved = resolved["identifiers_resolved"]
            result.graph_rounds = resolved["graph_rounds"]
            result.label_rounds = resolved["label_rounds"]
            profiles.update_stats(con, settings, full, window)
            result.persons_updated = profiles.update_persons(con, settings, full)
            profiles.create_view(con, settings)
            _set_meta(con, "build_load_id", str(high))
            _set_meta(con, "node_hash", probe)
            _set_meta(con, "build_config", config)
            result.seconds = time.perf_counter() - started
            run(con, """INSERT INTO builds VALUES (?, ?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?,
                                                   ?, ?)""",
                [build_id, result.kind, result.seconds, low, high, result.events,
                 result.unattributed, result.identifiers_resolved, result.persons_updated,
                 result.graph_rounds, result.label_rounds])
            run(con, "COMMIT")
        except BaseException:
            run(con, "ROLLBACK")
            raise
        return result  # the connection's temporary tables go when it closes

    # -- in the background (bowknot serve) --------------------------------------------------
    def start(self, interval: float) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval,),
                                        name="bowknot-build", daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        # Collection answers only after its commit: the build (seconds of work on every
        # core) runs at a lower priority than the threads that serve and commit requests.
        with contextlib.suppress(AttributeError, OSError):  # Linux: per-thread priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + 10)
        while not self._stop.wait(interval):
            self._wait_for_pause()
            try:
                result = self.build()
                self.last_error = None
                if not result.skipped:
                    log.info("build %s: %s events in %.2f s", result.build_id, result.events,
                             result.seconds)
            except Exception as exc:  # keep serving; the error is visible in the overview
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("background build failed")

    def _wait_for_pause(self) -> None:
        """While collection is busy, wait for a pause in the writer's work, at most
        ``build_max_delay_seconds``: under sustained load builds then come less often and
        take larger steps, so fewer requests are answered while one competes for the cores.
        A build costs about 0.1 s of CPU however few events it brings in (105-160 ms for 17
        to 3,274 new events, measured): at 1,000 survey answers/s, builds every 2 s took ~5 %
        of an answer's CPU, and every HTTP request over 100 ms at 32 clients was answered
        while one ran (traced)."""
        writer = self.ws.writer
        deadline = time.monotonic() + float(self.ws.settings.build_max_delay_seconds)
        while (writer.backlogged(_QUIET_SECONDS) and time.monotonic() < deadline
               and not self._stop.wait(_QUIET_SECONDS)):
            pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def status(self) -> dict[str, Any]:
        con = self.connection()
        try:
            built = int(_meta(con, "build_load_id") or 0)
            high = int(run(con, "SELECT coalesce(max(load_id), 0) FROM loads")[0][0])
            last = run(con, """SELECT build_id, kind, started_at, seconds, events
                               FROM builds ORDER BY build_id DESC LIMIT 1""")
        finally:
            con.close()
        return {
            "built_through_load": built, "latest_load": high, "pending_loads": high - built,
            "last_build": dict(zip(("build_id", "kind", "started_at", "seconds", "events"),
                                   last[0], strict=True)) if last else None,
            "background": self._thread is not None, "last_error": self.last_error,
        }
