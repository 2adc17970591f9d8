"""File import: JSON Lines (optionally gzipped), CSV and Parquet, streamed in bounded chunks.

JSON Lines are split into lines with NumPy over raw bytes and handed to the engine as an Arrow
string array built on the same buffer: no Python loop per line, and memory bounded by
``import_chunk_bytes``. Each row keeps its line number (JSON Lines, CSV) or row number
(Parquet), so a rejected row can be found in the file and replayed after a fix.

Imports are trusted: a row's ``receivedAt`` and a top-level ``source`` field are honoured,
so history exported from Segment or RudderStack keeps its own times.
"""

from __future__ import annotations

import gzip
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import BowknotError
from .ingest import Outcome
from .store.writer import ITEM_SCHEMA, Submission
from .workspace import Workspace

FORMATS = ("jsonl", "csv", "parquet")
_IN_FLIGHT = 4  # chunks submitted and not yet committed (see import_file)
# DuckDB's rows per row group. A chunk of a whole number of row groups is written as full
# row groups; a partial one left between two chunks is merged with its neighbours and
# written again by the next checkpoint (DuckDB's vacuum), which cost as much as the insert.
ROW_GROUP_ROWS = 122_880
SPEC_COLUMNS = {
    "type", "event", "name", "userId", "anonymousId", "messageId", "timestamp",
    "originalTimestamp", "sentAt", "receivedAt", "groupId", "previousId", "source",
}
NESTED = ("properties", "traits", "context", "integrations")


@dataclass
class ImportResult:
    file: str
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    failed: int = 0
    bytes: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)  # first few, with lines

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"),
                     (".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(ext):
            return fmt
    raise BowknotError(
        f"Cannot tell the format of {path.name}: name it .jsonl, .ndjson, .csv or .parquet "
        "(optionally .gz for JSON Lines), or pass --format.",
        code="unknown_format",
    )


def _items(lines: pa.Array, positions: np.ndarray[Any, Any], source: str,
           file: str) -> pa.Table:
    """File lines as writer items (ITEM_SCHEMA), built from columns without a row loop."""
    n = len(lines)
    nulls = pa.nulls(n, pa.string())

    def const(value: str) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)),
                                              pa.array([value])).cast(pa.string())

    return pa.table(
        [pa.array(np.zeros(n, dtype=np.int64)), pa.array(positions), const(source), const("import"),
         nulls, lines.cast(pa.string()), pa.nulls(n, pa.timestamp("us")),
         pa.array(np.ones(n, dtype=bool)), const(file), nulls, nulls, nulls],
        schema=ITEM_SCHEMA,
    )


def _newlines(buf: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Offsets of every newline byte in ``buf``, found block by block.

    One compare over a whole chunk allocates a mask as large as the chunk and faults in every
    page of it; in 1 MB blocks the mask stays in cache (12 times less CPU, measured). The
    loop is per megabyte, not per line.
    """
    block = 1 << 20
    mask = np.empty(min(block, len(buf)), dtype=bool)
    parts = []
    for start in range(0, len(buf), block):
        view = buf[start:start + block]
        hits = mask[: len(view)]
        np.equal(view, 10, out=hits)
        parts.append(np.flatnonzero(hits) + start)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _fill(stream: Any, view: memoryview) -> int:
    """Read into ``view`` until it is full or the stream ends; the bytes read."""
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


class _Buffers:
    """Chunk buffers, each used again once no Arrow array refers to its lines.

    A new 128 MB buffer costs more CPU than reading the file into it (the kernel faults in
    and zeroes every page: 0.56 of 1.28 CPU-s to read and split 2 M events, measured). The
    lines of a chunk are an Arrow array over a view of its buffer (zero copy); the view
    lives as long as any array, table or engine scan built on it, so a buffer whose view is
    gone holds nothing anyone reads, and only then is it filled again.
    """

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._pool: list[tuple[bytearray, weakref.ref[memoryview] | None]] = []

    def take(self, size: int) -> bytearray:
        for i, (buffer, view) in enumerate(self._pool):
            if len(buffer) == size and (view is None or view() is None):
                del self._pool[i]
                return buffer
        return bytearray(size)

    def lend(self, buffer: bytearray, view: memoryview | None) -> None:
        """``buffer`` is in use until ``view`` (None: not in use) is gone."""
        if len(self._pool) < self._keep:
            self._pool.append((buffer, None if view is None else weakref.ref(view)))


def _jsonl_chunks(stream: Any, chunk_bytes: int, group_rows: int = ROW_GROUP_ROWS
                  ) -> Iterator[tuple[pa.Array, np.ndarray[Any, Any], int]]:
    """Yield (lines, line_numbers, bytes_read) for non-blank lines, chunk by chunk.

    A chunk ends after a whole number of ``group_rows`` lines when the bytes read hold at
    least that many (the rest is carried to the next chunk), so each chunk fills whole row
    groups of the events table: see ``ROW_GROUP_ROWS``.
    """
    carry = b""
    carry_ends = np.empty(0, dtype=np.int64)  # newline offsets in carry, already found
    line_no = 1
    read = 0  # bytes read since the last chunk was yielded
    buffers = _Buffers()
    while True:
        # The unfinished lines of the last chunk go first and the file is read in after
        # them: one buffer per chunk, no copy of the chunk, and no larger than chunk_bytes
        # unless one line is (then it doubles until the line fits).
        buffer = buffers.take(max(chunk_bytes, 2 * len(carry)))
        buffer[: len(carry)] = carry
        got = _fill(stream, memoryview(buffer)[len(carry):])
        size = len(carry) + got
        read += got
        if not size:
            return
        if not got and buffer[size - 1] != 10:  # the last line has no newline: add one
            del buffer[size:]
            buffer.append(10)
            size += 1
        buf = np.frombuffer(memoryview(buffer)[:size], dtype=np.uint8)
        ends = np.concatenate((carry_ends, _newlines(buf[len(carry):]) + len(carry)))
        if not len(ends):  # one line longer than a chunk: read on
            carry = bytes(buffer[:size])
            del buf
            buffers.lend(buffer, None)
            continue
        starts = np.concatenate(([0], ends[:-1] + 1))
        lengths = ends + 1 - starts
        blank = (lengths == 1) | ((lengths == 2) & (buf[np.maximum(ends - 1, 0)] == 13))
        last = len(ends)  # lines in this chunk
        if got:
            filled = np.cumsum(~blank)
            whole = filled[-1] // group_rows * group_rows
            if whole:
                last = int(np.searchsorted(filled, whole)) + 1
        cut = int(ends[last - 1]) + 1
        carry = bytes(buffer[cut:size])
        carry_ends = ends[last:] - cut
        ends, blank = ends[:last], blank[:last]
        # Each line keeps its newline so the lines tile the buffer and Arrow can use it
        # as is (zero copy); the engine trims it. Blank lines are filtered out in C++.
        offsets = np.concatenate(([0], ends + 1)).astype(np.int64)
        numbers = np.arange(line_no, line_no + last, dtype=np.int64)
        line_no += last
        view = memoryview(buffer)[:cut]
        arr = pa.LargeStringArray.from_buffers(last, pa.py_buffer(offsets), pa.py_buffer(view))
        if blank.any():
            arr = arr.filter(pa.array(~blank))
            numbers = numbers[~blank]
        buffers.lend(buffer, view)
        del view, buf  # only the chunk's arrays keep the view alive
        yield arr, numbers, read
        read = 0
        if not got and not carry:
            return


def import_file(ws: Workspace, path: str | Path, *, source: str = "import",
                fmt: str | None = None,
                progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Import a file of spec events; durable on return. ``progress(bytes_done, rows)``."""
    path = Path(path)
    if not path.is_file():
        raise BowknotError(f"No such file: {path}", code="file_not_found")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise BowknotError(f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}.",
                           code="unknown_format")
    result = ImportResult(file=str(path))
    chunks = (_jsonl(path, ws.settings.import_chunk_bytes) if fmt == "jsonl"
              else _tabular(ws, path, fmt))
    pending: deque[tuple[Future[list[Outcome]], int]] = deque()

    def settle(future: Future[list[Outcome]], rows: int) -> None:
        out = future.result()[0]
        result.rows += rows
        result.accepted += out.accepted
        result.duplicates += out.duplicates
        result.conflicts += out.conflicts
        result.failed += out.failed
        for f in out.failures[: max(0, 20 - len(result.failures))]:
            result.failures.append({"line": f["index"], "reasons": f["reasons"]})
        if progress:
            progress(result.bytes, result.rows)

    # The writer parses chunks k+1 and k+2 (at once, on two threads) while it commits chunk
    # k (Writer._run), and chunk k+3 is read meanwhile (it waits in the writer's queue):
    # four chunks in flight, so no stage waits for the file to be read; waiting for the
    # oldest before reading on bounds memory to about five chunks (whose buffers are used
    # again: _Buffers).
    for lines, numbers, nbytes in chunks:
        result.bytes += nbytes
        if not len(lines):
            continue
        sub = Submission(items=_items(lines, numbers, source, path.name), full_dedupe=True,
                         batch_limit=False)
        pending.append((ws.writer.submit(sub, block=True), len(lines)))
        if len(pending) > _IN_FLIGHT - 1:
            settle(*pending.popleft())
    while pending:
        settle(*pending.popleft())
    result.bytes = path.stat().st_size if fmt != "jsonl" else result.bytes
    if progress:
        progress(result.bytes, result.rows)
    return result


def _jsonl(path: Path, chunk_bytes: int
           ) -> Iterator[tuple[pa.Array, np.ndarray[Any, Any], int]]:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as zipped:
            yield from _jsonl_chunks(zipped, chunk_bytes)
    else:
        with open(path, "rb") as plain:
            yield from _jsonl_chunks(plain, chunk_bytes)


def _tabular(ws: Workspace, path: Path, fmt: str
             ) -> Iterator[tuple[pa.Array, np.ndarray[Any, Any], int]]:
    """CSV and Parquet rows as spec JSON, built by the engine.

    Spec columns (``userId``, ``event``, ...) stay top-level; ``properties``/``traits``/
    ``context``/``integrations`` columns may hold JSON text; ``properties.x`` style columns
    are nested; any other column becomes a property.
    """
    cur = ws.store.cursor()
    lit = str(path).replace("'", "''")
    if fmt == "csv":
        # CSV lines: the header is line 1; with store_rejects a malformed line is reported
        # with its line number instead of failing the import.
        rejects = f"bowknot_rejects_{uuid.uuid4().hex}"
        rel = (f"SELECT *, row_number() OVER () + 1 AS __line FROM read_csv('{lit}', "
               f"header = true, store_rejects = true, rejects_table = '{rejects}', "
               f"rejects_scan = '{rejects}_scan')")
    else:
        rel = (f"SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS __line "
               f"FROM read_parquet('{lit}', file_row_number = true)")
    cols = [c[0] for c in cur.execute(f"DESCRIBE {rel}").fetchall() if c[0] != "__line"]
    top = [f"'{c}', \"{c}\"" for c in cols if c in SPEC_COLUMNS]
    nested = []
    for group in NESTED:
        whole = f"TRY_CAST(\"{group}\" AS JSON)" if group in cols else "NULL"
        parts = [c for c in cols if c.startswith(group + ".")]
        if group == "properties":
            parts += [c for c in cols if c not in SPEC_COLUMNS and c not in NESTED
                      and "." not in c]
        if parts:
            obj = "json_object(" + ", ".join(
                f"'{p.removeprefix(group + '.')}', \"{p}\"" for p in parts) + ")"
            whole = obj if whole == "NULL" else f"json_merge_patch({whole}, {obj})"
        if whole != "NULL":
            nested.append(f"'{group}', {whole}")
    obj = "json_object(" + ", ".join(top + nested) + ")"
    # json_object keeps nulls; strip them so empty CSV cells read as absent fields.
    sql = (f"SELECT json_merge_patch('{{}}', {obj})::VARCHAR AS raw, __line FROM ({rel}) "
           "ORDER BY __line")
    reader = cur.sql(sql).to_arrow_reader(batch_size=100_000)
    for batch in reader:
        yield batch.column(0), batch.column(1).to_numpy(), 0
    if fmt == "csv":
        bad = cur.sql(f"SELECT line, any_value(csv_line) AS raw FROM {rejects} "
                      "GROUP BY line ORDER BY line").to_arrow_table()
        cur.execute(f"DROP TABLE IF EXISTS {rejects}").fetchall()
        cur.execute(f"DROP TABLE IF EXISTS {rejects}_scan").fetchall()
        if bad.num_rows:
            # Malformed CSV lines cannot become JSON; keep them as they were read.
            yield (bad.column("raw").fill_null(""), bad.column("line").to_numpy(), 0)
