"""Docs that stay true: settings table, README commands, CLI help in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import bowknot
from bowknot.settings import SETTINGS, Settings, settings_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_settings_doc_is_generated_from_the_table() -> None:
    assert (ROOT / "docs" / "settings.md").read_text() == settings_markdown(), (
        "docs/settings.md is stale: run `make docs`")


def test_contract_doc_is_generated_from_the_reasons() -> None:
    from bowknot.ingest import RULES, contract_markdown

    assert (ROOT / "docs" / "contract.md").read_text() == contract_markdown(), (
        "docs/contract.md is stale: run `make docs`")
    # Every rule the engine checks has a reason that says how to fix it.
    from bowknot.ingest import REASONS

    assert {code for code, _ in RULES} <= set(REASONS)


def test_every_setting_has_help_and_env_override() -> None:
    for s in SETTINGS:
        assert s.help.strip().endswith("."), s.name
        value = {int: "7", float: "1.5", bool: "true", str: "x"}[s.type]
        assert getattr(Settings.resolve(env={s.env: value}), s.name) == s.parse(value)


def test_env_error_names_the_variable() -> None:
    with pytest.raises(bowknot.SettingError, match="BOWKNOT_PORT"):
        Settings.resolve(env={"BOWKNOT_PORT": "eighty"})


def test_readme_puts_the_two_commands_near_the_top() -> None:
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:30])
    assert "make demo" in head and "make test" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_cli_commands_exist() -> None:
    from click.testing import CliRunner

    from bowknot.cli import main

    readme = (ROOT / "README.md").read_text()
    for cmd in sorted(set(re.findall(r"^\s*bowknot ([a-z]+(?: [a-z]+)?)", readme, re.M))):
        words = [w for w in cmd.split() if not w.isupper()]
        result = CliRunner().invoke(main, [*words, "--help"])
        assert result.exit_code == 0, f"README mentions `bowknot {cmd}`: {result.output}"
