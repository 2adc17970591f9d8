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


def test_demo_serve_prints_a_sign_in_link_that_opens_the_overview(tmp_path: Any) -> None:
    """What `make demo` runs: generate, serve, print the link; the link signs in."""
    import re
    import subprocess
    import sys
    import time

    from .conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bowknot", "demo", "serve", "--db", str(tmp_path / "d.duckdb"),
         "--scale", "5000", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        link = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while link is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            found = re.search(r"(http://\S+/signin\?token=\S+)", line)
            link = found.group(1) if found else None
        assert link, "demo serve printed no sign-in link"
        with httpx.Client(follow_redirects=True, timeout=10) as client:
            for _ in range(100):
                try:
                    page = client.get(link)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert page.status_code == 200 and "Workspace overview" in page.text
            data = client.get(f"http://127.0.0.1:{port}/overview.json").json()
        assert data["events"]["n"] > 4000
        assert {s["name"] for s in data["sources"]} >= {"web", "email", "surveys"}
        assert data["failed"] == []
    finally:
        proc.terminate()
        proc.wait(10)
