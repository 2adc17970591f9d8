"""The journey commands of ``bowknot`` (funnel, cohort): thin shells over ``ws.journeys``.

Kept apart from cli.py so that module stays small; the analyses (and Ibis) load only when a
journey command runs.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli import _json, _table, db_option, main, workspace

if TYPE_CHECKING:
    from .journeys import Journeys

engine_option = click.option(
    "--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True,
    help="Where to run: the embedded store, or Spark (local mode; needs pyspark and Java).")
format_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
format_csv = click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")


@contextmanager
def journeys_on(db: Path, engine: str) -> Iterator[Journeys]:
    """The workspace's journeys on ``engine`` (a Spark engine is closed afterwards)."""
    with workspace(db) as ws:
        journeys = ws.journeys if engine == "duckdb" else ws.journeys.on(engine)
        try:
            yield journeys
        finally:
            if journeys is not ws.journeys:
                journeys.close()


def _emit(result: Any, as_json: bool, as_csv: bool, title: str) -> None:
    if as_json and as_csv:
        raise click.UsageError("Choose one of --json and --csv.")
    if as_json:
        _json(result.to_dict())
    elif as_csv:
        rows = result.rows()
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.table.column_names)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row.values()])
    else:
        _table(result.rows(), title=title)


@main.command()
@click.argument("steps", nargs=-1, required=True)
@click.option("--within", default="30d", show_default=True,
              help="Conversion window from the first step: 90s, 30m, 48h, 3d, 2w.")
@click.option("--order", type=click.Choice(["ordered", "strict", "any"]), default="ordered",
              show_default=True)
@click.option("--entry", type=click.Choice(["first", "any"]), default="first",
              show_default=True, help="first: each person's first entry; any: every entry, "
              "the furthest step counts.")
@click.option("--exclude", "exclusions", multiple=True,
              help="Drop attempts with this event between the first and last step.")
@click.option("--breakdown", default=None,
              help="campaign, property:NAME (of the entry event) or trait:NAME.")
@engine_option
@db_option
@format_json
@format_csv
def funnel(steps: tuple[str, ...], within: str, order: str, entry: str,
           exclusions: tuple[str, ...], breakdown: str | None, engine: str, db: Path,
           as_json: bool, as_csv: bool) -> None:
    """Persons through STEPS within a window, e.g.

    bowknot funnel "Campaign Clicked[campaign_id=summer-weekend]" "Booking Completed" --within 3d
    """
    with journeys_on(db, engine) as journeys:
        result = journeys.funnel(list(steps), within=within, order=order, entry=entry,
                                 exclusions=list(exclusions), breakdown=breakdown)
    _emit(result, as_json, as_csv, f"funnel within {within}")


@main.command()
@click.argument("start")
@click.argument("back", required=False)
@click.option("--period", type=click.Choice(["day", "week", "month"]), default="week",
              show_default=True)
@click.option("--periods", default=8, show_default=True, type=int)
@engine_option
@db_option
@format_json
@format_csv
def retention(start: str, back: str | None, period: str, periods: int, engine: str, db: Path,
              as_json: bool, as_csv: bool) -> None:
    """Cohorts by the period of each person's first START; how many did BACK (default: START
    again) in each later period, e.g. bowknot retention "Booking Completed" --period month"""
    with journeys_on(db, engine) as journeys:
        result = journeys.retention(start, back, period=period, periods=periods)
    _emit(result, as_json, as_csv, f"retention by {period}")


@main.command()
@click.option("--event", "events", multiple=True,
              help="Only these steps (repeatable); others are left out before pairing.")
@click.option("--keep-repeats", is_flag=True, help="Do not collapse repeated steps.")
@click.option("--top", default=20, show_default=True, type=int, help="Most taken edges.")
@click.option("--counts-only", is_flag=True,
              help="Only how often and the probabilities: no persons or median time per edge "
              "(faster on many events).")
@engine_option
@db_option
@format_json
@format_csv
def transitions(events: tuple[str, ...], keep_repeats: bool, top: int, counts_only: bool,
                engine: str, db: Path, as_json: bool, as_csv: bool) -> None:
    """The transition graph: for each pair of consecutive steps, how often, by how many
    persons, probability out and in, median time between them."""
    with journeys_on(db, engine) as journeys:
        result = journeys.transitions(events=list(events) or None,
                                      collapse=not keep_repeats, top=top,
                                      counts_only=counts_only)
    _emit(result, as_json, as_csv, "transitions")


@main.command()
@click.argument("outcome")
@click.option("--within", default="7d", show_default=True,
              help="How long before the outcome a touch counts: 90s, 30m, 48h, 3d, 2w.")
@click.option("--value", default=None, help="A numeric property of the outcome to average "
              "(score: also the NPS per touch).")
@engine_option
@db_option
@format_json
@format_csv
def touchpoints(outcome: str, within: str, value: str | None, engine: str, db: Path,
                as_json: bool, as_csv: bool) -> None:
    """OUTCOME events grouped by the last marketing touch before each, e.g.
    bowknot touchpoints survey_answered --value score"""
    with journeys_on(db, engine) as journeys:
        result = journeys.touchpoints(outcome, within=within, value=value)
    _emit(result, as_json, as_csv, f"{outcome} by last touch within {within}")


@main.command()
@click.option("--by", type=click.Choice(["channel", "month", "none"]), default="channel",
              show_default=True, help="Acquisition channel, month first seen, or in all.")
@engine_option
@db_option
@format_json
@format_csv
def bowtie(by: str, engine: str, db: Path, as_json: bool, as_csv: bool) -> None:
    """The bow tie: visitors -> known -> customers -> repeat customers, with conversions."""
    with journeys_on(db, engine) as journeys:
        result = journeys.bowtie(by=by)
    _emit(result, as_json, as_csv, f"the bow tie by {by}")


@main.command()
@click.argument("conversion")
@click.option("--by", type=click.Choice(["channel", "campaign"]), default="channel",
              show_default=True)
@engine_option
@db_option
@format_json
@format_csv
def attribution(conversion: str, by: str, engine: str, db: Path, as_json: bool,
                as_csv: bool) -> None:
    """First, last, linear and Markov (removal effect) attribution of CONVERSION, e.g.
    bowknot attribution "Booking Completed" --by campaign"""
    with journeys_on(db, engine) as journeys:
        result = journeys.attribution(conversion, by=by)
    _emit(result, as_json, as_csv, f"attribution of {conversion} by {by}")


@main.command()
@click.argument("anchor")
@click.option("--depth", default=4, show_default=True, type=int, help="Steps after the anchor.")
@click.option("--top", default=10, show_default=True, type=int,
              help="Edges kept per depth; the rest is one (other) edge.")
@engine_option
@db_option
@format_json
@format_csv
def sankey(anchor: str, depth: int, top: int, engine: str, db: Path, as_json: bool,
           as_csv: bool) -> None:
    """The step-by-step flow after each person's first ANCHOR (repeats collapsed), e.g.
    bowknot sankey page:Checkout --depth 3"""
    with journeys_on(db, engine) as journeys:
        result = journeys.sankey(anchor, depth=depth, top=top)
    _emit(result, as_json, as_csv, f"flow from {anchor}")


@main.group()
def cohort() -> None:
    """Cohorts: "did A but not B within T", saved by name."""


@cohort.command("find")
@click.argument("did")
@click.argument("did_not")
@click.option("--within", required=True, help="How long after A a B counts: 48h, 3d, ...")
@click.option("--trait", "traits", multiple=True, help="Add a person trait as a column.")
@click.option("--save", "save_as", default=None, help="Save the cohort under this name.")
@engine_option
@db_option
@format_json
@format_csv
def cohort_find(did: str, did_not: str, within: str, traits: tuple[str, ...],
                save_as: str | None, engine: str, db: Path, as_json: bool,
                as_csv: bool) -> None:
    """Persons who did DID and then not DID_NOT within --within, e.g.

    bowknot cohort find "Campaign Clicked" "Booking Completed" --within 3d --save clicked-no-booking
    """
    with journeys_on(db, engine) as journeys:
        result = journeys.cohort(did, did_not, within=within, traits=list(traits),
                                 save_as=save_as)
    if not (as_json or as_csv):
        extra = result.extra
        click.echo(f"{extra['persons']:,} of {extra['entered']:,} persons who did {did!r} "
                   f"did not do {did_not!r} within {within}"
                   + (f"; saved as {save_as!r}" if save_as else ""))
    _emit(result, as_json, as_csv, "cohort")


@cohort.command("list")
@db_option
@format_json
def cohort_list(db: Path, as_json: bool) -> None:
    """Saved cohorts."""
    with workspace(db) as ws:
        rows = ws.journeys.cohorts.list()
    _json(rows) if as_json else _table(rows)


@cohort.command("show")
@click.argument("name")
@db_option
@format_json
def cohort_show(name: str, db: Path, as_json: bool) -> None:
    """A saved cohort's members."""
    with workspace(db) as ws:
        about = ws.journeys.cohorts.get(name)
        members = ws.journeys.cohorts.members(name).to_pylist()
    _json({**about, "members": members}) if as_json else _table(members, title=name)


@cohort.command("delete")
@click.argument("name")
@db_option
def cohort_delete(name: str, db: Path) -> None:
    """Delete a saved cohort."""
    with workspace(db) as ws:
        ws.journeys.cohorts.delete(name)
    click.echo(f"deleted cohort {name!r}")
