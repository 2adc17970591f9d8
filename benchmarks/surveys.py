"""Survey response page under load: answers/s and latency, with nothing lost or counted twice.

    python benchmarks/surveys.py --persons 20000 --clients 32

A workspace gets N persons, a survey and one invitation each (a saved cohort, sent in one
statement). `bowknot serve` then takes, from concurrent keep-alive clients (raw asyncio
streams, as in benchmarks/ingest.py):

* the peer: GET of every survey page (renders the form, writes nothing);
* the answers: one POST per invitation (score and CSRF token), each recorded as a
  `survey_answered` event;
* a second POST of 10 % of the links with another score (a scanner or a double click): these
  must be flagged, never counted.

Afterwards the store must hold exactly N answers. Results: benchmarks/results/surveys-<N>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ingest import start  # noqa: E402  (the same server start-up helper)

RESULTS = HERE / "results"


def prepare(db: Path, persons: int) -> list[tuple[str, str]]:
    """(token, csrf) for one invitation per person."""
    import bowknot

    with bowknot.connect(db, survey_quiet_hours="", survey_contact_days=0) as ws:
        ws.ingest({"type": "identify", "userId": f"p{i}", "messageId": f"id-{i}",
                   "traits": {"email": f"p{i}@example.com"}} for i in range(persons))
        ws.build()
        ws.journeys.cohort("identify", "Booking Completed", within="1d", save_as="everyone")
        ws.surveys.create("nps-bench", kind="nps")
        out = ws.surveys.invite_cohort("nps-bench", "everyone", channel="link")
        assert out["invited"] == persons, out
        rows = ws.sql("SELECT invitation_id, expires_at FROM survey_invitations")
        tokens = [ws.surveys.token(r["invitation_id"], r["expires_at"]) for r in rows]
        return [(t, ws.surveys.csrf(t)) for t in tokens]


async def load(url: str, requests: list[bytes], clients: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    status: dict[int, int] = {}
    bodies: list[bytes] = []
    todo = list(reversed(requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while todo:
            req = todo.pop()
            t = time.perf_counter()
            writer.write(req)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            lines = head.decode("latin-1").split("\r\n")
            code = int(lines[0].split()[1])
            headers = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines[1:] if ": " in x)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            latencies.append(time.perf_counter() - t)
            status[code] = status.get(code, 0) + 1
            bodies.append(body[:4000])
        writer.close()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t
    latencies.sort()
    return {"requests": len(requests), "seconds": wall, "per_s": len(requests) / wall,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[max(int(len(latencies) * 0.99) - 1, 0)],
            "status": status,
            "thanks": sum(b"Thank you" in b for b in bodies),
            "already": sum(b"already answered" in b for b in bodies)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, url: str, requests: list[bytes], clients: int) -> dict[str, Any]:
    """``load``, with the server's CPU time per request: on a machine shared with other
    work, the figure that does not depend on how much of the CPU the server was given."""
    before = cpu_seconds(pid)
    result = asyncio.run(load(url, requests, clients))
    result["server_cpu_ms"] = 1000 * (cpu_seconds(pid) - before) / len(requests)
    return result


def get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def post(host: str, path: str, form: dict[str, str]) -> bytes:
    body = urlencode(form).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
            f"application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--persons", type=int, default=20_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--port", type=int, default=8767)
    args = ap.parse_args()
    import bowknot

    with socket.socket() as probe:  # another server there would answer in ours' place
        try:
            probe.bind(("127.0.0.1", args.port))
        except OSError:
            sys.exit(f"Port {args.port} is in use (another server?); pass --port.")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "surveys.duckdb"
        t = time.perf_counter()
        links = prepare(db, args.persons)
        print(f"prepared {len(links):,} invitations in {time.perf_counter() - t:.1f} s")
        url = f"http://127.0.0.1:{args.port}"
        host = url.removeprefix("http://")
        proc = start([sys.executable, "-m", "bowknot", "serve", "--db", str(db), "--port",
                      str(args.port)], url)
        try:
            pages = measured(proc.pid, url, [get(host, f"/s/{tok}?score=9")
                                             for tok, _ in links], args.clients)
            answers = measured(proc.pid, url, [
                post(host, f"/s/{tok}", {"csrf": csrf, "score": str(i % 11)})
                for i, (tok, csrf) in enumerate(links)], args.clients)
            again = measured(proc.pid, url, [
                post(host, f"/s/{tok}", {"csrf": csrf, "score": str((i + 1) % 11)})
                for i, (tok, csrf) in enumerate(links[::10])], args.clients)
        finally:
            proc.terminate()
            proc.wait()
        with bowknot.connect(db) as ws:
            stored = ws.sql("SELECT count(*) AS n FROM events "
                            "WHERE event = 'survey_answered'")[0]["n"]
            distinct = ws.sql("SELECT count(DISTINCT properties->>'invitation_id') AS n "
                              "FROM events WHERE event = 'survey_answered'")[0]["n"]
            flags = ws.sql("SELECT count(*) AS n FROM survey_flags")[0]["n"]
    for name, r in (("GET page (peer)", pages), ("POST answer", answers),
                    ("POST again (10 %)", again)):
        print(f"  {name:18s} {r['per_s']:8,.0f}/s  p50 {r['p50_ms']:6.1f} ms  "
              f"p99 {r['p99_ms']:6.1f} ms  server CPU {r['server_cpu_ms']:5.2f} ms/request  "
              f"statuses {r['status']}")
    print(f"  answers stored {stored:,} (distinct invitations {distinct:,}) of "
          f"{args.persons:,}; second posts flagged {flags:,}, counted 0")
    result = {"persons": args.persons, "clients": args.clients,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "page_get": pages, "answers": answers, "second_posts": again,
              "stored": stored, "distinct": distinct, "flags": flags,
              "lost": args.persons - stored, "double_counted": stored - distinct,
              "ratio_answers_vs_page": answers["per_s"] / pages["per_s"]}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"surveys-{args.persons}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    _ = subprocess  # the server runs as a subprocess (see start)


if __name__ == "__main__":
    main()
