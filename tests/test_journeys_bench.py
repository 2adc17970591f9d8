"""The journeys benchmark's harness at a tiny tier (no timings asserted): every peer answers
every question it supports exactly as the hand-written DuckDB SQL does, so the correctness
gate of benchmarks/journeys.py stays honest. Peers from the ``bench`` extra (Polars,
retentioneering) are skipped, saying so, when not installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import journeys  # noqa: E402
from journeys_peers import PEERS, QUESTIONS, supported  # noqa: E402

EVENTS = 20_000


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return journeys.prepare(EVENTS, tmp_path_factory.mktemp("journeys-bench"))


@pytest.fixture(scope="module")
def reference(data: tuple[Path, Path]) -> dict[str, Any]:
    db, parquet = data
    r = journeys.run_peer(journeys.REFERENCE, parquet, db, list(QUESTIONS), 1)
    assert "error" not in r, r.get("stderr")
    return r


def test_reference_answers_are_not_empty(reference: dict[str, Any]) -> None:
    q = reference["questions"]
    assert set(q) == set(QUESTIONS)
    funnel = q["funnel"]["answer"]
    assert funnel[0][0] > funnel[-1][0] > 0  # persons fall through the steps, some convert
    assert q["transitions"]["rows"] > 20 and q["cohort"]["rows"] > 0
    assert q["retention"]["rows"] > 0 and q["nps"]["rows"] > 1


@pytest.mark.parametrize("peer", [p for p in PEERS if p != journeys.REFERENCE])
def test_peer_agrees_with_the_reference(peer: str, data: tuple[Path, Path],
                                        reference: dict[str, Any]) -> None:
    module = {"polars": "polars", "retentioneering": "retentioneering"}.get(peer)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{peer} is not installed (pip install 'bowknot[bench]')")
    db, parquet = data
    asked = supported(PEERS[peer])
    r = journeys.run_peer(peer, parquet, db, asked, 1)
    assert "error" not in r, r.get("stderr")
    assert set(r["questions"]) == set(asked)
    results = {journeys.REFERENCE: reference, peer: r}
    assert journeys.gate(results) == []
    assert r["peak_rss_mb"] > 0 and all(m["seconds"] > 0 for m in r["questions"].values())


def test_the_gate_catches_a_wrong_answer(reference: dict[str, Any]) -> None:
    wrong = {"questions": {q: dict(m) for q, m in reference["questions"].items()}}
    wrong["questions"]["funnel"]["hash"] = "0" * 16
    problems = journeys.gate({journeys.REFERENCE: reference, "bowknot": wrong})
    assert problems == ["bowknot/funnel: answer differs from duckdb_sql (4 vs 4 rows)"]
    assert "DIFFERS" in journeys.table({journeys.REFERENCE: dict(reference, load_seconds=0,
                                                                 peak_rss_mb=1),
                                        "bowknot": dict(wrong, load_seconds=0, peak_rss_mb=1)},
                                       "XS", EVENTS)
