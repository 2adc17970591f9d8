"""Group reads (store.reads.GroupRead): lookups that arrive while a statement runs are
answered together by the next one, each gets its own row, and an error reaches every waiter."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bowknot.store.reads import GroupRead


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the lookups never queued"
        time.sleep(0.001)


def test_lookups_waiting_for_a_statement_share_the_next_one() -> None:
    groups: list[list[str]] = []
    first_running = threading.Event()
    release = threading.Event()

    def fetch(keys: list[str]) -> dict[str, dict[str, Any]]:
        groups.append(keys)
        if len(groups) == 1:
            first_running.set()
            release.wait(10)  # the other lookups arrive meanwhile
        return {k: {"key": k, "n": int(k[1:])} for k in keys if k != "k-missing"}

    reads = GroupRead(fetch)
    keys = [f"k{i}" for i in range(16)] + ["k3", "k-missing"]  # a repeat and an unknown key
    with ThreadPoolExecutor(len(keys)) as pool:
        first = pool.submit(reads.get, keys[0])
        first_running.wait(10)
        rest = [pool.submit(reads.get, k) for k in keys[1:]]
        _wait_for(lambda: len(reads._waiting) == len(keys) - 1)
        release.set()
        rows = [first.result(), *(f.result() for f in rest)]
    assert groups[0] == ["k0"]
    assert len(groups) == 2 and sorted(groups[1]) == sorted(set(keys[1:]))  # read once each
    assert rows[:-1] == [{"key": k, "n": int(k[1:])} for k in keys[:-1]]
    assert rows[-1] is None
    rows[3]["n"] = -1  # a caller's row is its own
    assert rows[16] == {"key": "k3", "n": 3}


def test_a_failed_statement_fails_every_lookup_of_its_group_and_no_other() -> None:
    calls: list[list[str]] = []
    first_running = threading.Event()
    release = threading.Event()

    def fetch(keys: list[str]) -> dict[str, dict[str, Any]]:
        calls.append(keys)
        if len(calls) == 1:
            first_running.set()
            release.wait(10)
            return {"a": {"key": "a"}}
        if len(calls) == 2:
            raise RuntimeError("the store is gone")
        return {k: {"key": k} for k in keys}

    reads = GroupRead(fetch)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(reads.get, "a")
        first_running.wait(10)
        failing = [pool.submit(reads.get, k) for k in ("b", "c")]
        _wait_for(lambda: len(reads._waiting) == 2)
        release.set()
        assert first.result() == {"key": "a"}
        for future in failing:
            with pytest.raises(RuntimeError, match="the store is gone"):
                future.result()
    assert reads.get("d") == {"key": "d"}  # the next group reads again
