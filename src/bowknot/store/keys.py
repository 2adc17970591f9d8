"""The writer's in-memory index of stored event keys: which (source, messageId) hashes exist.

Deduplication used to join every commit (and every import chunk) against the ``events`` table,
a scan that grows with the log. The single writer instead keeps every stored ``key`` in memory
(8 bytes an event) as a few sorted NumPy runs, and asks it, vectorised, which of a load's keys
were seen before. Only those rows (usually none) are then compared with the table in SQL, which
also settles the rare hash collision. A key the index holds but the table no longer has (a
rolled-back commit never gets here; a deleted event could) only costs that SQL check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

Keys = np.ndarray[Any, np.dtype[np.uint64]]


class KeyIndex:
    """Sorted runs of keys, merged like a binary counter so there are O(log n) of them."""

    def __init__(self) -> None:
        self._runs: list[Keys] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def add(self, keys: Keys) -> None:
        if not len(keys):
            return
        self._runs.append(np.sort(keys.astype(np.uint64, copy=False)))
        # Merge while the newer run is at least half the older one: every key takes part in
        # O(log n) merges, and a lookup searches O(log n) runs.
        while len(self._runs) > 1 and 2 * len(self._runs[-1]) >= len(self._runs[-2]):
            newer = self._runs.pop()
            older = self._runs.pop()
            merged = np.concatenate((older, newer))
            merged.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
            self._runs.append(merged)

    def contains(self, keys: Keys) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """A mask: which of ``keys`` the index holds."""
        hit = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            at = np.searchsorted(run, keys)
            at[at == len(run)] = 0
            hit |= run[at] == keys
        return hit


# -- the engine's hash(source, message_id), computed in NumPy ---------------------------------
# DuckDB 2.0's hash of a string (HashBytes): a seed from the length, each 8-byte block
# (little-endian, the last one zero-padded) XORed in and multiplied, then the 64-bit murmur
# finaliser; hash(a, b) combines the two as (mix(a) ^ b). The library's own events (survey
# answers) get their deduplication keys here instead of from a statement (1.2 ms of a group
# commit of ~20 answers, issue 6). engine_hash_matches() checks it against the engine: the
# writer uses it only if it matches, so another DuckDB version cannot break deduplication.
_M1 = np.uint64(0xD6E8FEB86659FD93)
_SEED = np.uint64(0xE17A1465)
_LEN = np.uint64(0xC6A4A7935BD1E995)
_32 = np.uint64(32)


def _murmur(x: Keys) -> Keys:
    x = x ^ (x >> _32)
    x = x * _M1
    x = x ^ (x >> _32)
    x = x * _M1
    return x ^ (x >> _32)


def string_hash(strings: pa.Array | pa.ChunkedArray) -> Keys:
    """DuckDB's ``hash(s)`` of each (non-null) string, vectorised over its 8-byte blocks."""
    array = pa.concat_arrays(strings.chunks) if isinstance(strings, pa.ChunkedArray) \
        else strings
    array = array.cast(pa.large_binary())
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset:
                                                                array.offset + n + 1]
    data = np.frombuffer(array.buffers()[2] or b"", dtype=np.uint8)
    lengths = np.diff(offsets)
    width = int(-(-int(lengths.max(initial=0)) // 8) * 8)
    h = _SEED ^ (lengths.astype(np.uint64) * _LEN)
    if width:
        at = offsets[:-1, None] + np.arange(width)[None, :]
        inside = np.arange(width)[None, :] < lengths[:, None]
        padded = np.where(inside, data[np.minimum(at, max(len(data) - 1, 0))]
                          if len(data) else 0, 0).astype(np.uint8)
        blocks = np.ascontiguousarray(padded).view("<u8")
        for j in range(width // 8):  # over blocks (a few), not over strings
            live = j * 8 < lengths
            h = np.where(live, (h ^ blocks[:, j]) * _M1, h)
    return _murmur(h)


def event_keys(source: pa.Array | pa.ChunkedArray,
               message_id: pa.Array | pa.ChunkedArray) -> Keys:
    """DuckDB's ``hash(source, message_id)``: the events' deduplication key."""
    first = string_hash(source)
    mixed = (first ^ (first >> _32)) * _M1
    return mixed ^ string_hash(message_id)


def engine_hash_matches(con: Any) -> bool:
    """Whether :func:`event_keys` equals the engine's ``hash(source, message_id)`` on
    strings of every length up to 40 bytes (ASCII and multi-byte)."""
    sources = ["", "surveys", "cases", "web-source-名前"]
    ids = ["".join(chr(48 + (i * 7 + j) % 75) for j in range(i)) for i in range(41)]
    ids += ["ü" * i for i in range(1, 12)]
    pairs = pa.table({"source": [s for s in sources for _ in ids],
                      "message_id": ids * len(sources)})
    con.register("hash_probe", pairs)
    try:
        engine = con.sql("SELECT hash(source, message_id) AS key FROM hash_probe"
                         ).to_arrow_table().column("key").to_numpy()
    finally:
        con.unregister("hash_probe")
    return bool(np.array_equal(engine, event_keys(pairs.column("source"),
                                                  pairs.column("message_id"))))
