"""The knot from the outside: the persons API, the CLI, and builds inside `bowknot serve`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from click.testing import CliRunner
from fastapi.testclient import TestClient

import bowknot
from bowknot.cli import main

from .conftest import Server


def seed(ws: bowknot.Workspace) -> None:
    ws.page("Home", anonymous_id="laptop", timestamp="2026-01-01T00:00:00Z")
    ws.identify("u1", anonymous_id="phone", traits={"email": "Mina@Example.com", "name": "Mina"},
                timestamp="2026-01-02T00:00:00Z")
    ws.track("Booking Completed", user_id="u1", properties={"revenue": 42},
             timestamp="2026-01-03T00:00:00Z")
    ws.build()
    ws.identify("u1", anonymous_id="laptop", timestamp="2026-01-04T00:00:00Z")  # a merge
    ws.build()


def test_persons_api(ws: bowknot.Workspace, client: TestClient, admin_token: str) -> None:
    seed(ws)
    auth = {"Authorization": f"Bearer {admin_token}"}
    assert client.get("/v1/persons?email=mina@example.com").status_code == 401
    found = client.get("/v1/persons?email=MINA@example.com", headers=auth)
    assert found.status_code == 200, found.text
    person = found.json()
    pid = person["person_id"]
    assert person["lifecycle"] == "customer" and person["traits"]["name"] == "Mina"
    assert {i["id_value"] for i in person["identifiers"]} == {
        "u1", "phone", "laptop", "mina@example.com"}
    assert client.get(f"/v1/persons/{pid}", headers=auth).json()["person_id"] == pid
    assert client.get("/v1/persons/user_id:u1", headers=auth).json()["person_id"] == pid
    events = client.get(f"/v1/persons/{pid}/timeline", headers=auth).json()["events"]
    assert [e["type"] for e in events] == ["page", "identify", "track", "identify"]
    assert events[2]["properties"] == {"revenue": 42}
    page = client.get(f"/v1/persons/{pid}/timeline?limit=1&offset=1", headers=auth).json()
    assert [e["type"] for e in page["events"]] == ["identify"]

    merge = next(c for c in person["changes"] if c["kind"] == "merge")
    undone = client.post(f"/v1/identity/{merge['log_id']}/unmerge", headers=auth)
    assert undone.status_code == 200, undone.text
    assert client.get("/v1/persons?anonymous_id=laptop", headers=auth).json()["person_id"] \
        != client.get("/v1/persons?user_id=u1", headers=auth).json()["person_id"]
    again = client.post(f"/v1/identity/{merge['log_id']}/unmerge", headers=auth)
    assert again.status_code == 400 and again.json()["error"]["message"]

    missing = client.get("/v1/persons?email=nobody@example.com", headers=auth)
    assert missing.status_code == 404 and "bowknot build" in missing.json()["error"]["message"]
    both = client.get("/v1/persons?email=a@b.c&user_id=u1", headers=auth)
    assert both.status_code == 400 and "exactly one" in both.json()["error"]["message"]

    plan = client.post("/v1/privacy/delete", headers=auth,
                       json={"identifier": "u1", "dry_run": True}).json()
    assert plan["dry_run"] and plan["counts"]["events"] == 3
    exported = client.post("/v1/privacy/export", headers=auth, json={"identifier": "u1"})
    assert exported.status_code == 200 and len(exported.json()["events"]) == 3
    status = client.get("/v1/build", headers=auth).json()
    assert status["pending_loads"] == 0 and status["last_build"]["kind"] == "incremental"
    assert "/v1/persons/{ref}/timeline" in client.get("/openapi.json", headers=auth).json()[
        "paths"]


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_build_person_unmerge_privacy(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    with bowknot.connect(db) as ws:
        ws.page("Home", anonymous_id="laptop", timestamp="2026-01-01T00:00:00Z")
        ws.identify("u1", anonymous_id="phone", traits={"email": "Mina@Example.com"},
                    timestamp="2026-01-02T00:00:00Z")
    assert "full build" in run("build", "--db", str(db))
    assert "up to date" in run("build", "--db", str(db))
    with bowknot.connect(db) as ws:
        ws.identify("u1", anonymous_id="laptop", timestamp="2026-01-04T00:00:00Z")
    assert "incremental build" in run("build", "--db", str(db))
    shown = run("person", "email:mina@example.com", "--db", str(db))
    assert "laptop" in shown and "timeline" in shown and "merge" in shown
    data = json.loads(run("person", "u1", "--json", "--db", str(db)))
    assert len(data["timeline"]) == 3
    log_id = next(c["log_id"] for c in data["changes"] if c["kind"] == "merge")
    assert "two persons again" in run("unmerge", str(log_id), "--db", str(db))
    assert "restored" in run("unmerge", str(log_id), "--undo", "--db", str(db))
    assert "would delete" in run("privacy", "delete", "u1", "--dry-run", "--db", str(db))
    out = tmp_path / "export.json"
    run("privacy", "export", "u1", "--out", str(out), "--db", str(db))
    assert json.loads(out.read_text())["profile"]["person_id"] == data["person_id"]
    assert "suppressed" in run("privacy", "suppress", "u1", "--db", str(db))
    assert "removed" in run("privacy", "unsuppress", "u1", "--db", str(db))
    assert "deleted" in run("privacy", "delete", "u1", "--db", str(db))
    result = CliRunner().invoke(main, ["person", "u1", "--db", str(db)])
    assert result.exit_code == 1 and "No person matches" in result.output


def test_serve_builds_in_the_background(server: tuple[Server, str, str]) -> None:
    srv, key, token = server
    body = {"batch": [
        {"type": "page", "anonymousId": "bg-anon", "name": "Home"},
        {"type": "identify", "userId": "bg-user", "anonymousId": "bg-anon",
         "traits": {"email": "bg@example.com"}},
    ]}
    assert httpx.post(f"{srv.url}/v1/batch", json=body, auth=(key, "")).status_code == 200
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(f"{srv.url}/v1/persons", params={"email": "bg@example.com"},
                      headers={"Authorization": f"Bearer {token}"})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert {i["id_value"] for i in r.json()["identifiers"]} == {
        "bg-user", "bg-anon", "bg@example.com"}
