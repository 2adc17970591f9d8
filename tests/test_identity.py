"""The knot, first layer: identifiers extracted from events, normalised, with guardrails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_duckdb_lower_maps_to_ascii_only_from_what_the_blocked_regex_knows() -> None:
    # The blocked-value regex stands for lower(trim(v)) IN (...): it must know every code
    # point that DuckDB's lower() turns into an ASCII character (a DuckDB upgrade could add).
    import duckdb

    from bowknot.identity import _LOWER_EXTRA

    rows = duckdb.sql("""SELECT i::INTEGER, lower(chr(i::INTEGER)) FROM range(1, 1114112) t(i)
        WHERE (i < 55296 OR i > 57343) AND lower(chr(i::INTEGER)) < chr(128)
          AND lower(chr(i::INTEGER)) <> chr(i::INTEGER)""").fetchall()
    expected = {(ord(c.upper()), c) for c in "abcdefghijklmnopqrstuvwxyz"}
    expected |= {(ord(extra), c) for c, extra in _LOWER_EXTRA.items()}
    assert set(rows) == expected


_VALUES = " \"'\t-01[]_aAiIkKlLnNsSuU"  # a blocked value, lower-cased (ASCII)
_PROBES = _VALUES + "\u0130\u0131\u212a\u017féÉ"  # and look-alikes


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(st.text(_VALUES, min_size=1, max_size=6), min_size=1, max_size=4),
       probes=st.lists(st.text(_PROBES, max_size=8), min_size=1, max_size=30))
def test_blocked_regex_is_the_trimmed_lower_case_lookup(values: list[str],
                                                         probes: list[str]) -> None:
    import duckdb

    from bowknot.identity import _quoted, blocked_regex

    values = [v.lower() for v in values]
    regex = blocked_regex(values)
    assert regex is not None and blocked_regex(values + ["é"]) is None  # not ASCII: as written
    matched = ("false" if not regex
               else f"regexp_full_match(p, '{regex}') AND NOT contains(p, '\u017f')")
    rows = duckdb.execute(f"""SELECT p, {matched},
               list_contains({_quoted(values)}, lower(trim(p, ' "''')))
        FROM (SELECT unnest(?::VARCHAR[]) AS p)""", [probes + values + [
            f" '{v.upper()}\" " for v in values] + [
            v.replace("i", "\u0130").replace("k", "\u212a").replace("s", "\u017f") for v in values]
    ]).fetchall()
    assert [(p, a) for p, a, _ in rows] == [(p, b) for p, _, b in rows]
