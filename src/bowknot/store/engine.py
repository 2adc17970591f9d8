"""The DuckDB connection that owns the workspace file, and Ibis on top of it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from ..errors import BowknotError, SettingError, WorkspaceLocked
from ..settings import Settings
from .schema import DDL, MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)


def run(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> list[Any]:
    """Execute and fetch everything: DuckDB 2 keeps a connection busy until results are read."""
    return con.execute(sql, params or []).fetchall()


_UNITS = {"bytes": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "pib": 1 << 50}


def size_bytes(size: str) -> int:
    """A size as DuckDB shows a setting ('18.8 GiB', '0 bytes') in bytes; 0 if it is not
    one (an unlimited memory_limit)."""
    number, _, unit = size.strip().partition(" ")
    try:
        return int(float(number) * _UNITS[unit.lower()])
    except (ValueError, KeyError):
        return 0


class Store:
    """Owns the one DuckDB database of a workspace.

    DuckDB allows one process to open a file for writing; inside that process every reader
    gets its own cursor (a connection to the same database), so reads run in parallel with the
    single writer and see only committed data.
    """

    def __init__(self, path: str | Path, settings: Settings) -> None:
        self.path = str(path)
        config: dict[str, Any] = {}
        if settings.threads:
            config["threads"] = settings.threads
        if settings.memory_limit:
            config["memory_limit"] = settings.memory_limit
        try:
            self._con = duckdb.connect(self.path, config=config)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise WorkspaceLocked(
                    f"The workspace {self.path} is open in another process (usually a running "
                    "`bowknot serve`). Stop that process, or use its HTTP API instead.",
                    path=self.path,
                ) from exc
            raise
        # Timestamps are stored as naive UTC; casts from ISO strings with offsets must land in
        # UTC whatever the machine's zone is.
        run(self._con, "SET TimeZone = 'UTC'")
        try:
            self._spill_to(settings)
            self._keep_blocks(settings)
        except BaseException:
            self._con.close()
            raise
        # DuckDB checkpoints inside the commit that crosses this WAL size, stalling that
        # commit's requests; a larger threshold makes such stalls rarer (p99: 330 -> 187 ms
        # in benchmarks/ingest.py at 16 clients) at the cost of a longer replay after a crash.
        run(self._con, f"SET checkpoint_threshold = '{settings.checkpoint_threshold}'")
        self._local = threading.local()
        self._ibis: Any = None
        try:
            for statement in DDL:
                run(self._con, statement)
            self._migrate()
        except BaseException:
            self._con.close()  # release the file for whoever fixes it
            raise

    def _spill_to(self, settings: Settings) -> None:
        """Where DuckDB spills what outgrows ``memory_limit``, and how much it may write
        there (settings ``temp_directory`` and ``max_temp_directory_size``)."""
        if settings.temp_directory:
            where = Path(settings.temp_directory).expanduser()
            try:  # DuckDB makes only the last level, when it first spills
                where.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SettingError(
                    f"temp_directory (BOWKNOT_TEMP_DIRECTORY): cannot make {where} "
                    f"({exc.strerror}); name a directory bowknot may write to, on a disk "
                    "with room for spills.", setting="temp_directory") from None
            run(self._con, "SET temp_directory = ?", [str(where)])
        if settings.max_temp_directory_size:
            try:
                run(self._con, "SET max_temp_directory_size = ?",
                    [settings.max_temp_directory_size])
            except duckdb.Error:
                raise SettingError(
                    "max_temp_directory_size (BOWKNOT_MAX_TEMP_DIRECTORY_SIZE): "
                    f"{settings.max_temp_directory_size!r} is not a size; write a number "
                    "and a unit, such as '50GB' or '500MB'.",
                    setting="max_temp_directory_size") from None

    def _keep_blocks(self, settings: Settings) -> None:
        """DuckDB's block allocator (setting ``block_allocator_memory``): buffer memory once
        used is kept and reused instead of going back to the system, which would fault it
        in again page by page (a 20 M-event full build: 1.5 -> 1.1 M page faults)."""
        wanted = settings.block_allocator_memory.strip().lower()
        current = run(self._con, "SELECT current_setting('block_allocator_memory')")[0][0]
        if wanted in ("0", "") or size_bytes(current):
            return  # off, or set already (the database is open in this process already)
        if wanted == "auto":
            limit = size_bytes(run(self._con, "SELECT current_setting('memory_limit')")[0][0])
            if not limit:
                return
            try:
                run(self._con, f"SET block_allocator_memory = '{limit // 2}B'")
            except duckdb.Error as exc:  # e.g. no room to reserve its address space
                log.info("DuckDB's block allocator stays off: %s", str(exc).splitlines()[0])
            return
        try:
            run(self._con, "SET block_allocator_memory = ?", [settings.block_allocator_memory])
        except duckdb.Error as exc:
            raise SettingError(
                "block_allocator_memory (BOWKNOT_BLOCK_ALLOCATOR_MEMORY): "
                f"{settings.block_allocator_memory!r} was refused: {str(exc).splitlines()[0]} "
                "Write a size such as '4GB', 'auto' (half of memory_limit) or '0' (off).",
                setting="block_allocator_memory") from None

    @contextmanager
    def spill_errors(self) -> Iterator[None]:
        """DuckDB running out of room to spill (``max_temp_directory_size`` or a full disk),
        inside, raised as an error that says which settings give it room."""
        try:
            yield
        except duckdb.Error as exc:
            text = str(exc)
            if "max_temp_directory_size" not in text and "No space left on device" not in text:
                raise
            where, most = run(self._con, "SELECT current_setting('temp_directory'), "
                                         "current_setting('max_temp_directory_size')")[0]
            raise BowknotError(
                f"DuckDB ran out of room to spill to {where} (at most {most}): "
                f"{text.splitlines()[0]} Give it room: set BOWKNOT_TEMP_DIRECTORY to a "
                "directory on a disk with more free space, raise "
                "BOWKNOT_MAX_TEMP_DIRECTORY_SIZE, or raise BOWKNOT_MEMORY_LIMIT so less is "
                "spilled.", code="spill_space_exhausted", temp_directory=where,
                max_temp_directory_size=most) from exc

    def _migrate(self) -> None:
        """Bring a workspace made by an older bowknot to SCHEMA_VERSION, in one transaction."""
        found = run(self._con, "SELECT value FROM meta WHERE key = 'schema_version'")
        version = int(found[0][0]) if found else SCHEMA_VERSION  # a new workspace
        if version > SCHEMA_VERSION:
            raise BowknotError(
                f"The workspace {self.path} was written by a newer bowknot (schema "
                f"{version}, this one knows {SCHEMA_VERSION}); upgrade bowknot to open it.",
                code="schema_too_new")
        run(self._con, "BEGIN TRANSACTION")
        for to, statements in MIGRATIONS:
            if version < to:
                for statement in statements:
                    run(self._con, statement)
        run(self._con, "DELETE FROM meta WHERE key = 'schema_version'")
        run(self._con, "INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        run(self._con, "COMMIT")

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The owning connection; only the writer and setup code use it."""
        return self._con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A per-thread read connection to the same database."""
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._con.cursor()
            run(cur, "SET TimeZone='UTC'")
            self._local.cursor = cur
        return cur

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cur = self.cursor().execute(sql, params or [])
        names = [d[0] for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    @property
    def ibis(self) -> Any:
        """An Ibis backend over this database (portable expressions; see DESIGN.md)."""
        if self._ibis is None:
            import ibis

            self._ibis = ibis.duckdb.from_connection(self._con.cursor())
        return self._ibis

    def close(self) -> None:
        self._con.close()
