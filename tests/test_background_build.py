"""The background build of `bowknot serve` gives way to busy collection, within a limit."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import bowknot
from bowknot import build
from bowknot.build import BuildResult


def test_background_build_waits_for_a_pause_in_collection_at_most_the_max_delay(
        tmp_path: Path) -> None:
    with bowknot.connect(tmp_path / "w.duckdb", build_interval_seconds=0.05,
                         build_max_delay_seconds=1.0) as ws:
        ws.track("warm-up", user_id="u0")
        builds: list[tuple[float, BuildResult]] = []
        ws.builder.hooks.append(lambda r: builds.append((time.monotonic(), r)))
        stop = threading.Event()
        numbers = itertools.count()

        def collect() -> None:  # one commit after another: the writer never pauses
            while not stop.is_set():
                n = next(numbers)
                ws.track("Viewed", user_id=f"u{n % 50}", properties={"n": n})

        # Two senders, so a request waits while the other's commits (no pause on a busy
        # machine either).
        collectors = [threading.Thread(target=collect) for _ in range(2)]
        for collector in collectors:
            collector.start()
        time.sleep(0.3)  # collection is under way before the builder starts
        started = time.monotonic()
        ws.builder.start(ws.settings.build_interval_seconds)
        try:
            time.sleep(3.2)
            busy = [r for t, r in builds if not r.skipped]
            # Without waiting, a build every 0.05 s plus its duration (dozens); waiting for a
            # pause that never comes, one at most every second (interval + max delay).
            assert 1 <= len(busy) <= 4, [round(t - started, 2) for t, _ in builds]
            first = min(t for t, r in builds if not r.skipped)
            assert first - started >= 0.9  # it waited for a pause, up to the max delay
            stop.set()
            for collector in collectors:
                collector.join()
            # Collection paused: the next build follows within the interval and brings the
            # persons up to date with everything sent.
            latest = ws.sql("SELECT max(load_id) AS n FROM loads")[0]["n"]
            deadline = time.monotonic() + 10
            while ws.builder.status()["built_through_load"] < latest:
                assert time.monotonic() < deadline, ws.builder.status()
                time.sleep(0.05)
        finally:
            stop.set()
            ws.builder.stop()
        assert next(numbers) > 20
        assert ws.sql("SELECT count(*) AS n FROM persons")[0]["n"] == 50


def test_a_build_flushes_the_database_file_as_it_goes_and_stops_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit's fsync finds little left to write (build._write_behind)."""
    path = tmp_path / "w.duckdb"
    with bowknot.connect(path) as ws:
        ws.track("Viewed", user_id="u1", anonymous_id="a1")
        synced: list[int] = []
        real = getattr(os, "fdatasync", os.fsync)

        def record(fd: int) -> None:
            synced.append(os.fstat(fd).st_ino)
            real(fd)

        monkeypatch.setattr(os, "fdatasync" if hasattr(os, "fdatasync") else "fsync", record)
        monkeypatch.setattr(build, "FLUSH_SECONDS", 0.005)
        slow = build.Builder._build

        def slower(self: build.Builder, con: Any, full: bool) -> BuildResult:
            result = slow(self, con, full)
            time.sleep(0.1)  # a build that lasts a few flush intervals
            return result

        monkeypatch.setattr(build.Builder, "_build", slower)
        assert ws.build(full=True).persons_updated == 1
        assert synced and set(synced) == {path.stat().st_ino}
        assert not [t for t in threading.enumerate() if t.name == "bowknot-write-behind"]
        flushes = len(synced)
        time.sleep(0.05)
        assert len(synced) == flushes  # nothing flushes once the build is over
