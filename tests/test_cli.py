"""The `bowknot` command, run in process with click's runner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bowknot.cli import main


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_sources_tokens_import_failed_sql(tmp_path: Path) -> None:
    db = str(tmp_path / "w.duckdb")
    key = run("sources", "create", "web", "--db", db).strip()
    assert key.startswith("bkw_")
    assert "web" in run("sources", "list", "--db", db)
    token = run("tokens", "create", "ops", "--db", db).strip()
    assert token.startswith("bkt_") and token not in run("tokens", "list", "--db", db)

    f = tmp_path / "e.jsonl"
    f.write_text('{"type":"track","event":"A","userId":"u1"}\n{"type":"track","userId":"u2"}\n')
    out = run("import", str(f), "--db", db)
    assert "1 stored" in out and "line 2" in out and "`event` name" in out
    summary = json.loads(run("import", str(f), "--db", db, "--json"))
    assert summary["failed"] == 1

    listed = json.loads(run("failed", "list", "--db", db, "--json"))
    assert [r["position"] for r in listed] == [2, 2]
    assert "missing_event" in run("failed", "list", "--db", db)
    assert "replayed 2" in run("failed", "replay", "--reason", "missing_event", "--db", db)

    rows = json.loads(run("sql", "SELECT count(*) AS n FROM events", "--db", db, "--json"))
    assert rows == [{"n": 1}]
    assert "revoked 1" in run("sources", "revoke", "web", "--db", db)


def test_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    db = str(tmp_path / "w.duckdb")
    result = CliRunner().invoke(main, ["sql", "DELETE FROM events", "--db", db])
    assert result.exit_code == 1 and "read-only" in result.output
    result = CliRunner().invoke(main, ["sources", "create", "no spaces", "--db", db])
    assert result.exit_code == 1 and "Invalid source name" in result.output
    result = CliRunner().invoke(main, ["tokens", "revoke", "ghost", "--db", db])
    assert result.exit_code == 1 and "bowknot tokens list" in result.output


def test_help_lists_every_command() -> None:
    out = run("--help")
    for command in ("serve", "sources", "tokens", "import", "failed", "sql", "demo",
                    "settings", "build", "person", "unmerge", "privacy", "surveys",
                    "cases", "funnel", "cohort"):
        assert command in out
