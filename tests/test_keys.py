"""Deduplication keys computed in NumPy (store.keys.event_keys) equal the engine's
``hash(source, message_id)``, and the writer falls back to the engine when they would not."""

from __future__ import annotations

import random

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import bowknot
from bowknot.store import keys as keys_module
from bowknot.store import writer as writer_module
from bowknot.store.keys import engine_hash_matches, event_keys


def _engine(con: duckdb.DuckDBPyConnection, table: pa.Table) -> np.ndarray:  # type: ignore[type-arg]
    con.register("pairs", table)
    out = con.sql("SELECT hash(source, message_id) AS k FROM pairs").to_arrow_table()
    con.unregister("pairs")
    return out.column("k").to_numpy()


def test_numpy_keys_equal_the_engines_hash_for_any_text() -> None:
    rnd = random.Random(6)
    alphabet = [chr(c) for c in (*range(32, 127), 0xE9, 0x5BB6, 0x1F642, 0x0E14, 0x0627)]
    sources = ["", "surveys", "cases", "web", "s" * 17, "منبع"]
    table = pa.table({
        "source": [rnd.choice(sources) for _ in range(5000)],
        "message_id": ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 90)))
                       for _ in range(5000)]})
    con = duckdb.connect()
    assert engine_hash_matches(con)
    assert np.array_equal(event_keys(table.column("source"), table.column("message_id")),
                          _engine(con, table))
    # A slice and a chunked column (as a group's rows can be) read the right bytes.
    part = table.slice(1234, 57)
    chunked = pa.chunked_array([table.column("message_id").chunk(0).slice(1234, 20),
                                table.column("message_id").chunk(0).slice(1254, 37)])
    expected = _engine(con, part)
    assert np.array_equal(event_keys(part.column("source"), part.column("message_id")),
                          expected)
    assert np.array_equal(event_keys(part.column("source"), chunked), expected)
    assert len(event_keys(pa.array([], pa.string()), pa.array([], pa.string()))) == 0


@pytest.mark.parametrize("matches", [True, False])
def test_typed_events_are_keyed_as_the_engine_keys_them_either_way(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch, matches: bool) -> None:
    """Should an engine hash differently, the writer asks it for the keys instead."""
    monkeypatch.setattr(writer_module, "engine_hash_matches", lambda con: matches)
    computed: list[int] = []
    real = keys_module.event_keys

    def spy(*args: pa.Array) -> np.ndarray:  # type: ignore[type-arg]
        computed.append(1)
        return real(*args)

    monkeypatch.setattr(writer_module, "event_keys", spy)
    with bowknot.connect(f"{tmp_path}/ws.duckdb") as ws:
        for mid in ("m-1", "m-2", "m-1"):
            ws.send_many([("track", {"event": "Tapped", "userId": "u1", "messageId": mid},
                           "surveys")], own=True)
        rows = ws.sql("SELECT message_id, key = hash(source, message_id) AS same "
                      "FROM events ORDER BY message_id")
    assert rows == [{"message_id": "m-1", "same": True}, {"message_id": "m-2", "same": True}]
    assert bool(computed) == matches
