"""The knot, first layer: identifiers extracted from events, normalised, with guardrails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bowknot
from bowknot import demo
from bowknot.identity import identifiers
from bowknot.imports import import_file


def ids_of(ws: bowknot.Workspace) -> set[tuple[str, str]]:
    return {(r["id_type"], r["id_value"]) for r in identifiers(ws)}


def test_each_kind_of_identifier_is_read(ws: bowknot.Workspace) -> None:
    ws.identify("u1", anonymous_id="a1", traits={"email": "  Mina@Example.COM ",
                                                 "phone": "+98 (21) 555-0101"})
    ws.track("A", user_id="u2", context={"externalIds": [
        {"id": "crm-7", "type": "CRM_ID", "collection": "users", "encoding": "none"}],
        "traits": {"email": "u2@example.com"}})
    ws.alias("u1", "old-u1")
    assert ids_of(ws) == {
        ("user_id", "u1"), ("anonymous_id", "a1"), ("email", "mina@example.com"),
        ("phone", "+98215550101"), ("user_id", "u2"), ("crm_id", "crm-7"),
        ("email", "u2@example.com"), ("anonymous_id", "old-u1"),
    }


@pytest.mark.parametrize("value", ["0", "000", "-", "-1", "null", "NULL", "undefined",
                                   "anonymous", "guest", "NaN", "[object Object]", '"null"',
                                   "'undefined'", "None", "true", "0-0"])
def test_blocked_values_identify_nobody(ws: bowknot.Workspace, value: str) -> None:
    ws.track("A", user_id=value, anonymous_id="a-real")
    assert ids_of(ws) == {("anonymous_id", "a-real")}


def test_guardrails_are_settings(tmp_path: Path) -> None:
    with bowknot.connect(tmp_path / "w.duckdb", identity_blocked_values="qa-user",
                         identity_blocked_pattern="^test-.*$", identity_id_traits="") as ws:
        ws.identify("qa-user", anonymous_id="test-123", traits={"phone": "+1 555"})
        ws.identify("u1", anonymous_id="null")  # no longer blocked by the list
        assert ids_of(ws) == {("user_id", "u1"), ("anonymous_id", "null")}


def test_demo_emails_are_normalised(ws: bowknot.Workspace, tmp_path: Path) -> None:
    f = tmp_path / "demo.jsonl"
    demo.write_jsonl(f, events=10_000)
    import_file(ws, f)
    rows: list[dict[str, Any]] = ws.sql(
        "SELECT count(*) AS n FROM (" + identifiers_sql_for(ws) + ") WHERE id_type = 'email' "
        "AND (id_value <> lower(trim(id_value)) OR id_value = '')")
    assert rows[0]["n"] == 0
    kinds = {r["id_type"] for r in identifiers(ws)}
    assert {"user_id", "anonymous_id", "email"} <= kinds


def identifiers_sql_for(ws: bowknot.Workspace) -> str:
    from bowknot.identity import identifiers_sql

    return identifiers_sql(ws.settings)
