"""Group reads: point lookups from concurrent threads, answered by one statement per group.

Each DuckDB statement costs about 0.45 ms of CPU however few rows it reads (bind, plan,
execute, fetch), and a point lookup by an ART index reads one: a survey page GET spent 0.5 of
its ~1 ms there (issue 6, benchmarks/README.md). The lookups that arrive while one statement
runs wait for it and are then answered together by the next, so under load the statement's
cost is shared (measured: 0.45 ms a row alone, 0.11 ms in fours, 0.05 ms in sixteens), and
alone a lookup costs what it did. As with the writer's group commit, nothing waits on purpose.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


class _Slot:
    __slots__ = ("error", "key", "ready", "row")

    def __init__(self, key: str) -> None:
        self.key = key
        self.ready = False
        self.row: Row | None = None
        self.error: BaseException | None = None


class GroupRead:
    """``get(key)``: the row with that key, or None; ``fetch(keys)`` reads the rows of a
    group of distinct keys in one statement and returns them by key."""

    def __init__(self, fetch: Callable[[list[str]], dict[str, Row]]) -> None:
        self._fetch = fetch
        self._waiting: list[_Slot] = []
        self._guard = threading.Lock()  # of _waiting
        self._reading = threading.Lock()  # one statement at a time: the others gather

    def get(self, key: str) -> Row | None:
        slot = _Slot(key)
        with self._guard:
            self._waiting.append(slot)
        with self._reading:
            if not slot.ready:  # not answered by the statement this thread waited for
                with self._guard:
                    group, self._waiting = self._waiting, []
                try:
                    rows = self._fetch(list(dict.fromkeys(s.key for s in group)))
                except BaseException as exc:  # every waiter hears back
                    for s in group:
                        s.error, s.ready = exc, True
                else:
                    for s in group:
                        s.row, s.ready = rows.get(s.key), True
        if slot.error is not None:
            raise slot.error
        return None if slot.row is None else dict(slot.row)
