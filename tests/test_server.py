"""A real `bowknot serve` process: the official Segment library, and durability under kill -9."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson

import bowknot

from .conftest import Server


def count(db: Any, sql: str = "SELECT count(*) AS n FROM events") -> int:
    with bowknot.connect(db) as ws:
        return int(ws.sql(sql)[0]["n"])


def test_segment_python_library_delivers_batched_gzipped_events(
        server: tuple[Server, str, str]) -> None:
    from segment.analytics import Client

    srv, key, _ = server
    sent: list[Any] = []
    errors: list[Any] = []
    client = Client(write_key=key, host=srv.url, gzip=True, upload_size=100, max_retries=1,
                    on_error=lambda e, batch: errors.append(e))
    for i in range(250):
        client.track(user_id=f"u{i % 7}", event="Booking Completed",
                     properties={"revenue": i, "city": "Tehran"})
        sent.append(i)
    client.identify(user_id="u1", traits={"email": "u1@example.com", "name": "นก"})
    client.page(anonymous_id="a1", name="Home")
    client.flush()
    client.shutdown()
    assert errors == []
    srv.stop()
    with bowknot.connect(srv.db) as ws:
        rows = ws.sql("SELECT type, count(*) AS n, count(DISTINCT message_id) AS ids, "
                      "min(sent_at) IS NOT NULL AS has_sent_at FROM events GROUP BY type "
                      "ORDER BY type")
        loads = ws.sql("SELECT count(*) AS n FROM loads")[0]["n"]
        traits = ws.sql("SELECT traits FROM events WHERE type = 'identify'")[0]["traits"]
    assert rows == [
        {"type": "identify", "n": 1, "ids": 1, "has_sent_at": True},
        {"type": "page", "n": 1, "ids": 1, "has_sent_at": True},
        {"type": "track", "n": 250, "ids": 250, "has_sent_at": True},
    ]
    assert loads <= 252  # batched: far fewer commits than events is possible, never more
    assert "นก" in traits


def test_acknowledged_events_survive_kill_9(server: tuple[Server, str, str]) -> None:
    srv, key, _ = server

    def send(n: int) -> int:
        body = {"batch": [{"type": "track", "userId": f"u{n}", "event": "A",
                           "messageId": f"m{n}-{i}"} for i in range(100)]}
        r = httpx.post(srv.url + "/v1/batch", auth=(key, ""), content=orjson.dumps(body),
                       timeout=30)
        return int(r.json()["accepted"]) if r.status_code == 200 else 0

    with ThreadPoolExecutor(8) as pool:
        acked = sum(pool.map(send, range(40)))
    assert acked == 4000
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGKILL)  # no shutdown, no checkpoint
    srv.proc.wait()
    assert count(srv.db) == acked


def test_server_answers_bad_input_with_the_error_shape(server: tuple[Server, str, str]) -> None:
    srv, key, token = server
    r = httpx.post(srv.url + "/v1/track", auth=(key, ""), json={"event": "A"})
    assert r.status_code == 400
    assert r.json()["error"]["items"][0]["reasons"][0]["code"] == "missing_identity"
    r = httpx.get(srv.url + "/v1/failed", headers={"Authorization": f"Bearer {token}"})
    assert r.json()[0]["raw"] == '{"event":"A"}'
