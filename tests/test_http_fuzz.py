"""Whatever a client sends, the API answers in its shape, never with a 500, and loses nothing."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bowknot
from bowknot.server import create_app

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "event", "userId", "anonymousId", "batch", "messageId",
                         "properties", "timestamp", "x"]), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(st.binary(max_size=64), json_values.map(orjson.dumps))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.tuples(st.sampled_from(["track", "page", "batch", "alias"]),
                                   bodies), min_size=1, max_size=5))
def test_any_body_gets_an_answer_in_shape(tmp_path_factory: Any,
                                          requests: list[tuple[str, bytes]]) -> None:
    db = tmp_path_factory.mktemp("fuzz") / "w.duckdb"
    with bowknot.connect(db) as ws, TestClient(create_app(ws)) as client:
        key = ws.access.create_source("web")
        acknowledged = 0

        def failed_rows() -> int:
            return int(ws.sql("SELECT count(*) AS n FROM failed_events")[0]["n"])

        for call, body in requests:
            before = failed_rows()
            r = client.post(f"/v1/{call}", auth=(key, ""), content=body)
            assert r.status_code in (200, 400, 413), r.text
            payload = r.json()
            if r.status_code == 200:
                assert payload["success"] is True
            else:
                assert {"code", "message"} <= set(payload["error"])
                # What was refused is kept where it can be inspected and replayed.
                assert failed_rows() > before
            acknowledged += payload.get("accepted", payload.get("error", {}).get("accepted", 0))
        stored = ws.sql("SELECT count(*) AS n FROM events")[0]["n"]
        assert stored == acknowledged
