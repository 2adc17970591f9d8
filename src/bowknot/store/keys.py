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
