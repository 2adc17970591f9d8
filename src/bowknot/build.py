"""The pipeline: bring identities, persons and profiles up to date with the event log.

A build reads only the loads committed since the previous build (``meta.build_load_id``),
folds their identifiers into the graph, resolves the clusters they touch and rewrites the
persons and profiles of those clusters, all in one transaction: readers see the previous
state until it commits, and a crash leaves the previous state intact. A full build starts
from scratch and compares the result with the previous state, so it logs what changed too.
``bowknot serve`` runs builds in the background (setting ``build_interval_seconds``).
"""

from __future__ import annotations

import logging
import threading
import time
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

# Derived from the events alone; a full build empties them. identities, persons and the log
# are rewritten by resolution (so a full build can compare with what was there).
_PARTIALS = ("id_nodes", "id_edges", "node_stats", "trait_stats", "event_fallback")
# The hash that makes node ids; a DuckDB upgrade that changed it forces a full build.
_HASH_PROBE = "SELECT hash('bowknot', 'node')::VARCHAR"


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

    def connection(self) -> duckdb.DuckDBPyConnection:
        con = self.ws.store.connection.cursor()
        run(con, "SET TimeZone = 'UTC'")
        return con

    def build(self, full: bool = False) -> BuildResult:
        with self.lock:
            con = self.connection()
            try:
                return self._build(con, full)
            finally:
                con.close()

    def _build(self, con: duckdb.DuckDBPyConnection, full: bool) -> BuildResult:
        settings = self.ws.settings
        started = time.perf_counter()
        run(con, "BEGIN TRANSACTION")
        try:
            probe = run(con, _HASH_PROBE)[0][0]
            if _meta(con, "node_hash") != probe:
                full = True
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
            run(con, f"""CREATE OR REPLACE TEMP TABLE b_all AS
                SELECT key, timestamp AS ts, user_id, anonymous_id,
                       {identity.ids_expr(settings)} AS ids,
                       {profiles.event_columns(settings)}
                FROM events WHERE load_id > {low} AND load_id <= {high}""")
            run(con, "CREATE OR REPLACE TEMP TABLE b_ev AS SELECT * FROM b_all WHERE len(ids) > 0")
            result.events, result.unattributed = run(
                con, "SELECT count(*), count_if(len(ids) = 0) FROM b_all")[0]
            run(con, "DROP TABLE b_all")
            run(con, """INSERT INTO event_fallback
                SELECT key, hash(ids[1].t, ids[1].v) FROM b_ev
                WHERE NOT (ids[1].t = 'user_id' AND ids[1].v = user_id)
                  AND NOT (ids[1].t = 'anonymous_id' AND ids[1].v = anonymous_id)""")
            identity.update_graph(con)
            resolved = identity.resolve(con, settings, build_id, full)
            result.identifiers_resolved = resolved["identifiers_resolved"]
            result.graph_rounds = resolved["graph_rounds"]
            result.label_rounds = resolved["label_rounds"]
            profiles.update_stats(con)
            result.persons_updated = profiles.update_persons(con, settings)
            profiles.create_view(con, settings)
            _set_meta(con, "build_load_id", str(high))
            _set_meta(con, "node_hash", probe)
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
        while not self._stop.wait(interval):
            try:
                result = self.build()
                self.last_error = None
                if not result.skipped:
                    log.info("build %s: %s events in %.2f s", result.build_id, result.events,
                             result.seconds)
            except Exception as exc:  # keep serving; the error is visible in the overview
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("background build failed")

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
