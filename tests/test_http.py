"""Collection and admin API, in process."""

from __future__ import annotations

import gzip
import threading
from typing import Any

import orjson
from fastapi.testclient import TestClient

import bowknot


def post(client: TestClient, path: str, key: str, body: Any, **kw: Any) -> Any:
    return client.post(path, auth=(key, ""), content=orjson.dumps(body), **kw)


def test_every_call_has_an_endpoint(client: TestClient, write_key: str,
                                    ws: bowknot.Workspace) -> None:
    calls = {
        "track": {"userId": "u", "event": "A"},
        "identify": {"userId": "u", "traits": {"email": "a@b.c"}},
        "page": {"anonymousId": "a", "name": "Home"},
        "screen": {"userId": "u", "name": "Cars"},
        "group": {"userId": "u", "groupId": "g"},
        "alias": {"userId": "u", "previousId": "a"},
    }
    for call, body in calls.items():
        r = post(client, f"/v1/{call}", write_key, body)
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True, "accepted": 1, "duplicates": 0, "conflicts": 0}
    rows = ws.sql("SELECT type, source FROM events ORDER BY type")
    assert [r["type"] for r in rows] == sorted(calls)
    assert {r["source"] for r in rows} == {"web"}


def test_batch_reports_each_rejected_item(client: TestClient, write_key: str,
                                          ws: bowknot.Workspace) -> None:
    batch = [{"type": "track", "userId": "u", "event": "A"},
             {"type": "track", "userId": "u"},
             {"type": "page"},
             {"type": "identify", "userId": "u"}]
    r = post(client, "/v1/batch", write_key, {"batch": batch})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_events" and err["accepted"] == 2
    assert [(i["index"], [x["code"] for x in i["reasons"]]) for i in err["items"]] == [
        (1, ["missing_event"]), (2, ["missing_identity"])]
    assert all(x["message"] for i in err["items"] for x in i["reasons"])
    assert len(ws.failures.list()) == 2


def test_a_null_or_scalar_batch_item_is_refused_and_kept(client: TestClient, write_key: str,
                                                         ws: bowknot.Workspace) -> None:
    # Found by the fuzz test: a JSON null item unnested as SQL NULL and slipped past the
    # contract to the table's NOT NULL check, failing the whole request.
    batch = [None, {"type": "track", "userId": "u", "event": "A"}, 7]
    r = post(client, "/v1/batch", write_key, {"batch": batch})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["accepted"] == 1
    assert [(i["index"], [x["code"] for x in i["reasons"]]) for i in err["items"]] == [
        (0, ["not_an_object"]), (2, ["not_an_object"])]
    assert sorted(f["raw"] for f in ws.failures.list()) == ["7", "null"]


def test_wrong_or_missing_key_is_401(client: TestClient, write_key: str) -> None:
    r = post(client, "/v1/track", "bkw_nope", {"userId": "u", "event": "A"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = client.post("/v1/track", json={"userId": "u", "event": "A"})
    assert r.status_code == 401


def test_write_key_in_body_is_accepted(client: TestClient, write_key: str) -> None:
    r = client.post("/v1/track", json={"writeKey": write_key, "userId": "u", "event": "A"})
    assert r.status_code == 200


def test_revoked_key_stops_working(client: TestClient, write_key: str,
                                   ws: bowknot.Workspace) -> None:
    assert post(client, "/v1/track", write_key, {"userId": "u", "event": "A"}).status_code == 200
    ws.access.revoke_write_keys("web")
    assert post(client, "/v1/track", write_key, {"userId": "u", "event": "B"}).status_code == 401


def test_gzip_bodies(client: TestClient, write_key: str, ws: bowknot.Workspace) -> None:
    body = gzip.compress(orjson.dumps({"batch": [
        {"type": "track", "userId": "u", "event": "A", "messageId": f"m{i}"}
        for i in range(50)]}))
    r = client.post("/v1/batch", auth=(write_key, ""), content=body,
                    headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["accepted"] == 50
    r = client.post("/v1/batch", auth=(write_key, ""), content=b"not gzip",
                    headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_gzip"
    assert ws.failures.list(reason="invalid_gzip")[0]["raw"] == "not gzip"


def test_oversize_request_is_413_and_kept(client: TestClient, write_key: str,
                                          ws: bowknot.Workspace) -> None:
    big = {"batch": [{"type": "track", "userId": "u", "event": "A",
                      "properties": {"x": "y" * 20_000}} for _ in range(30)]}
    r = post(client, "/v1/batch", write_key, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    [kept] = ws.failures.list()  # the first max_request_bytes are kept for inspection
    assert kept["reasons"][0]["code"] == "request_too_large" and len(kept["raw"]) == 500 * 1024
    # A gzip body that inflates past the limit is refused the same way.
    r = client.post("/v1/batch", auth=(write_key, ""), content=gzip.compress(b" " * 2_000_000),
                    headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413


def test_too_many_events_is_413_and_kept(client: TestClient, write_key: str,
                                         ws: bowknot.Workspace) -> None:
    batch = [{"type": "track", "userId": "u", "event": "A"}] * 2501
    r = post(client, "/v1/batch", write_key, {"batch": batch})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_events"
    [kept] = ws.failures.list()
    assert kept["position"] is None and kept["call"] == "batch"
    assert ws.sql("SELECT count(*) AS n FROM events")[0]["n"] == 0


def test_invalid_json_is_400_and_kept(client: TestClient, write_key: str,
                                      ws: bowknot.Workspace) -> None:
    r = client.post("/v1/track", auth=(write_key, ""), content=b'{"event": "\xff"}')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_encoding"
    r = client.post("/v1/batch", auth=(write_key, ""), content=b"{oops")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert ws.failures.list(reason="invalid_json")[0]["raw"] == "{oops"
    r = client.post("/v1/batch", auth=(write_key, ""), content=b'{"batch": 3}')
    assert r.json()["error"]["code"] == "batch_not_a_list"


def test_overload_is_429_with_retry_after(tmp_path: Any) -> None:
    from bowknot.server import create_app

    with bowknot.connect(tmp_path / "w.duckdb", writer_queue_bytes=1) as ws:
        key = ws.access.create_source("web")
        assert ws.writer.wait_warm(60)
        release, holding = threading.Event(), threading.Event()
        original = ws.writer._prepare

        def slow(con: Any, group: Any) -> Any:
            holding.set()
            release.wait(10)
            return original(con, group)

        ws.writer._prepare = slow  # type: ignore[method-assign]
        from bowknot.store.writer import Request, Submission

        body = '{"type":"track","userId":"u","event":"A"}'
        first = ws.writer.submit(Submission([Request("web", "track", body)]))
        assert holding.wait(10)  # the writer thread now holds `first`
        second = ws.writer.submit(Submission([Request("web", "track", body)]))
        with TestClient(create_app(ws)) as client:
            r = post(client, "/v1/track", key, {"userId": "u", "event": "A"})
            assert r.status_code == 429
            assert r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "overloaded"
            release.set()
            assert first.result(10)[0].accepted == 1 and second.result(10)[0].accepted == 1
            r = post(client, "/v1/track", key, {"userId": "u", "event": "A"})
            assert r.status_code == 200


def test_admin_api_needs_a_token(client: TestClient, admin_token: str) -> None:
    assert client.get("/v1/overview").status_code == 401
    r = client.get("/v1/overview", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "admin_required"
    r = client.get("/v1/overview", headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 200 and "by_type" in r.json()


def test_admin_sources_failed_and_sql(client: TestClient, admin_token: str,
                                      ws: bowknot.Workspace) -> None:
    h = {"Authorization": f"Bearer {admin_token}"}
    r = client.post("/v1/sources", json={"name": "app"}, headers=h)
    assert r.status_code == 201
    key = r.json()["write_key"]
    assert post(client, "/v1/track", key, {"userId": "u"}).status_code == 400
    failed = client.get("/v1/failed", headers=h).json()
    assert failed[0]["reasons"][0]["code"] == "missing_event"
    rows = client.post("/v1/sql", json={"query": "SELECT count(*) AS n FROM failed_events"},
                       headers=h).json()
    assert rows == {"rows": [{"n": 1}], "count": 1}
    r = client.post("/v1/sql", json={"query": "DROP TABLE events"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "query_error"
    assert client.post("/v1/sources", json={"name": "bad name!"}, headers=h).status_code == 400
    assert client.post("/v1/sources/app/revoke", headers=h).json() == {"revoked": 1}
    assert client.post("/v1/failed/replay", json={}, headers=h).json()["replayed"] == 1


def test_pages_sign_in_with_a_session_cookie(client: TestClient, admin_token: str,
                                             write_key: str) -> None:
    post(client, "/v1/track", write_key, {"userId": "u", "event": "Booking <b>"})
    r = client.get("/overview", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    r = client.get(f"/signin?token={admin_token}", follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    page = client.get("/overview")
    assert page.status_code == 200 and "Workspace overview" in page.text
    assert "/docs" in page.text
    twin = client.get("/overview.json").json()
    assert twin["events"]["n"] == 1
    client.post("/signout")
    assert client.get("/overview.json").status_code == 401
    bad = client.post("/signin", data={"token": "wrong"})
    assert bad.status_code == 401 and "unknown or revoked" in bad.text


def test_openapi_documents_collection(client: TestClient, admin_token: str) -> None:
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/docs", follow_redirects=False).headers["location"] == "/signin"
    client.headers["Authorization"] = f"Bearer {admin_token}"
    spec = client.get("/openapi.json").json()
    for call in ("track", "identify", "page", "screen", "group", "alias", "batch"):
        op = spec["paths"][f"/v1/{call}"]["post"]
        assert "requestBody" in op and {"400", "401", "413", "429"} <= set(op["responses"])
    assert "swagger" in client.get("/docs").text.lower()
    assert client.get("/healthz").json() == {"ok": True}


def test_errors_share_one_shape(client: TestClient) -> None:
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and set(r.json()["error"]) >= {"code", "message"}
