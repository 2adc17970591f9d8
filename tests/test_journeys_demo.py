"""Journeys find what the demo generator plants (200 k events, seed 7; docs/demo.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bowknot
from bowknot import demo
from bowknot.imports import import_file
from bowknot.journeys import Journeys, SparkEngine

T: dict[str, Any] = demo.TRUTHS


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bowknot.Workspace]:
    folder: Path = tmp_path_factory.mktemp("journeys-demo")
    demo.write_jsonl(folder / "demo.jsonl", events=200_000, seed=7)
    ws = bowknot.connect(folder / "ws.duckdb")
    import_file(ws, folder / "demo.jsonl")
    ws.build()
    yield ws
    ws.close()


def click_to_booking(campaign: str) -> list[str]:
    return [f"Campaign Clicked[campaign_id={campaign}]", "Booking Completed"]


def test_click_to_booking_within_3_days_per_campaign(demo_ws: bowknot.Workspace) -> None:
    j = demo_ws.journeys
    free = j.funnel(click_to_booking("free-day-downtown"), within="3d")
    summer = j.funnel(click_to_booking("summer-weekend"), within="3d")
    assert free.rows()[0]["persons"] > 400  # about 485 clickers at 200 k events
    assert free.conversion() == pytest.approx(T["free_day_downtown"]["click_to_booking_3d"],
                                              abs=0.015)
    assert summer.conversion() == pytest.approx(T["summer_weekend"]["click_to_booking_3d"],
                                                abs=0.04)
    # by campaign in one funnel: the entry click's campaign
    both = j.funnel(["Campaign Clicked", "Booking Completed"], within="3d",
                    breakdown="campaign")
    assert both.conversion("free-day-downtown") == pytest.approx(free.conversion())


def test_open_and_click_rates_as_a_funnel(demo_ws: bowknot.Workspace) -> None:
    steps = [f"Campaign {s}[campaign_id=free-day-downtown,channel=email]"
             for s in ("Sent", "Opened", "Clicked")]
    rows = demo_ws.journeys.funnel(steps, within="7d").rows()
    assert rows[1]["step_conversion"] == pytest.approx(T["free_day_downtown"]["open_rate"],
                                                       abs=0.03)
    assert rows[2]["step_conversion"] == pytest.approx(
        T["free_day_downtown"]["click_of_opens"], abs=0.04)


def test_clicked_not_converted_cohort_of_the_broken_promise(
        demo_ws: bowknot.Workspace) -> None:
    j = demo_ws.journeys
    cohort = j.cohort("Campaign Clicked[campaign_id=free-day-downtown]", "Booking Completed",
                      within="3d", traits=["city"], save_as="free-day-clicked-not-booked")
    funnel = j.funnel(click_to_booking("free-day-downtown"), within="3d")
    clickers = funnel.rows()[0]["persons"]
    assert cohort.extra["entered"] == clickers
    assert cohort.persons == clickers - funnel.rows()[1]["persons"]
    assert cohort.persons / clickers == pytest.approx(
        1 - T["free_day_downtown"]["click_to_booking_3d"], abs=0.015)
    assert j.cohorts.get("free-day-clicked-not-booked")["persons"] == cohort.persons


def test_spark_gives_the_same_answers_on_the_demo(demo_ws: bowknot.Workspace,
                                                  spark_session: object) -> None:
    spark = Journeys(demo_ws, SparkEngine(demo_ws, session=spark_session))
    try:
        for steps in (click_to_booking("free-day-downtown"), click_to_booking("summer-weekend")):
            on_duckdb = demo_ws.journeys.funnel(steps, within="3d").to_pandas()
            on_spark = spark.funnel(steps, within="3d").to_pandas()
            assert on_spark.equals(on_duckdb)
        a = demo_ws.journeys.cohort("Campaign Clicked", "Booking Completed", within="3d")
        b = spark.cohort("Campaign Clicked", "Booking Completed", within="3d")
        assert a.to_arrow().equals(b.to_arrow()) and a.extra == b.extra
        # DuckDB finds the last touch by ASOF, Spark by a window: the same answers, also
        # where campaign sends of two channels share one timestamp (ties broken by seq).
        nps = [j.touchpoints("survey_answered", within="14d", value="score").to_pandas()
               for j in (demo_ws.journeys, spark)]
        assert nps[0].equals(nps[1]) and len(nps[0]) > 3
    finally:
        spark.close()


def test_the_checkout_loop_shows_in_the_transition_graph(demo_ws: bowknot.Workspace) -> None:
    """The demo plants a checkout loop (/checkout -> /payment 2-4 times) in 15 % of checkout
    visits: the graph must show payment -> checkout edges, within the same visit (a minute
    apart), a clear minority of the ways out of the payment page."""
    rows = {(r["from"], r["to"]): r for r in demo_ws.journeys.transitions().rows()}
    back = rows[("page:Payment", "page:Checkout")]
    assert back["persons"] > 50 and 0.1 < back["probability_out"] < 0.4
    assert back["median_seconds"] < 300
    assert rows[("page:Checkout", "page:Payment")]["probability_out"] > 0.95


def test_nps_by_last_touch_singles_out_the_broken_promise(demo_ws: bowknot.Workspace) -> None:
    rows = {(r["channel"], r["campaign"]): r for r in demo_ws.journeys.touchpoints(
        "survey_answered", within="5d", value="score").rows()}
    free_day = rows[("email", "free-day-downtown")]
    summer = rows[("email", "summer-weekend")]
    assert free_day["answered"] > 100 and summer["answered"] > 30
    assert free_day["nps"] < -20 < summer["nps"]


def test_bowtie_on_the_demo(demo_ws: bowknot.Workspace) -> None:
    """55 % of persons become known (25 % existing customers + 30 % sign-ups); the shares of
    acquisition channels follow the planted ones."""
    [total] = demo_ws.journeys.bowtie(by="none").rows()
    assert 0.45 < total["known_rate"] < 0.65
    assert total["customers"] > total["repeat_customers"] > 0
    rows = {r["channel"]: r["visitors"] for r in demo_ws.journeys.bowtie().rows()}
    share = rows["google"] / sum(rows.values())
    assert 0.25 < share < 0.45  # planted: 35 %
