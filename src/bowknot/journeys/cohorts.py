"""Cohorts: "did A but not B within T" (clicked but did not book within 3 days), with person
lists and traits, saved by name so surveys and segments can reuse them.

A person enters at their first A event; they are in the cohort when no B event follows it
(strictly later, at most ``within`` after). Saved cohorts live in the workspace tables
``cohorts`` (name, definition, counts) and ``cohort_members`` (name, person_id, entered_at),
whatever engine computed them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from ..errors import NotFound, ValidationError
from ..store.engine import run
from .engine import Engine
from .results import Result
from .steps import KEY, Step, seconds

if TYPE_CHECKING:
    from ..workspace import Workspace

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# The tables `cohorts` and `cohort_members` are part of the workspace schema (store/schema.py):
# surveys are sent to saved cohorts whether or not an analysis ran in this process.


class Cohort:
    """Persons who did ``did`` and then not ``did_not`` within ``within``."""

    def __init__(self, did: str | Step | Mapping[str, Any],
                 did_not: str | Step | Mapping[str, Any],
                 within: str | int | timedelta, traits: Sequence[str] = ()) -> None:
        self.did, self.did_not = Step.of(did), Step.of(did_not)
        self.within = seconds(within)
        if isinstance(traits, str):
            traits = [traits]
        for t in traits:
            if not isinstance(t, str) or not KEY.match(t):
                raise ValidationError(f"The trait name {t!r} is not valid; give trait names "
                                      "as they appear in profiles, e.g. ['city', 'plan'].",
                                      code="invalid_trait")
        self.traits = list(dict.fromkeys(traits))

    def definition(self) -> dict[str, Any]:
        return {"did": str(self.did), "did_not": str(self.did_not),
                "within_seconds": self.within, "traits": self.traits}

    def _entered(self, engine: Engine) -> tuple[ir.Table, ir.Table, list[ir.BooleanValue]]:
        """Each person's first A (``pkey``, ``entered_at``), the B events and the
        predicates of "B followed A within T"; matched on the person numbers (integer joins
        instead of text ones), the person ids joined to the answer only."""
        a = engine.step_events(self.did)
        a = a.group_by(a.pkey).aggregate(entered_at=a.ts.min())
        b = engine.step_events(self.did_not)
        b = b.select(bkey=b.pkey, tb=b.ts)
        return a, b, [a.pkey == b.bkey, b.tb > a.entered_at,
                      b.tb <= a.entered_at + ibis.interval(seconds=self.within)]

    def _ids(self, engine: Engine, m: ir.Table) -> ir.Table:
        """``m`` (``pkey``, ...) with each person's ``person_id`` and the traits asked for."""
        p = engine.persons()
        p = p.select(ikey=p.pkey, person_id=p.person_id)
        j = m.inner_join(p, m.pkey == p.ikey)
        m = j.select("person_id", *(c for c in m.columns))
        for trait in self.traits:
            tr = engine.traits()
            tr = tr.filter(tr.trait == trait).select(tpid=tr.person_id, tv=tr.value)
            j = m.left_join(tr, m.person_id == tr.tpid)
            m = j.select(*m.columns, **{trait: j.tv})
        return m

    def entries(self, engine: Engine) -> ir.Table:
        """Every person who did A: ``person_id``, ``entered_at``, ``converted``."""
        a, b, on = self._entered(engine)
        converted = a.semi_join(b, on)
        flagged = converted.select(ckey=converted.pkey, converted=ibis.literal(True))
        j = a.left_join(flagged, a.pkey == flagged.ckey)
        e = j.select(pkey=j.pkey, entered_at=j.entered_at,
                     converted=j.converted.fill_null(False))
        e = self._ids(engine, e)
        return e.select("person_id", "entered_at", "converted")

    def _members(self, engine: Engine) -> tuple[ir.Table, ir.Table]:
        """The members by an anti join (the persons without a B in time), with ``pkey``,
        and the count of persons who did A."""
        a, b, on = self._entered(engine)
        m = self._ids(engine, a.anti_join(b, on).select("pkey", "entered_at"))
        return m, a.aggregate(entered=a.count())

    def members(self, engine: Engine) -> ir.Table:
        """The members: ``person_id``, ``entered_at``, the traits asked for."""
        m, _ = self._members(engine)
        return m.drop("pkey").order_by("person_id")

    def run(self, engine: Engine) -> CohortResult:
        # One query: the members (an anti join on the person numbers, as the hand-written
        # SQL does it) with, on every row, how many entered; the others converted. Sorted
        # here by the person number, which counts the persons in person_id order.
        def answer() -> ir.Table:
            m, counts = self._members(engine)
            return m.cross_join(counts)

        key = ("cohort", json.dumps(self.definition(), sort_keys=True))
        table = engine.to_arrow(engine.expression(key, answer))
        if table.num_rows:
            entered = int(table.column("entered")[0].as_py() or 0)
        else:  # nobody in the cohort: the count alone
            counts = self._members(engine)[1]
            entered = int(engine.to_arrow(counts).to_pylist()[0]["entered"] or 0)
        converted = entered - table.num_rows
        table = table.sort_by("pkey").drop_columns(["pkey", "entered"])
        return CohortResult("cohort", self.definition(), table, engine.name, extra={
            "entered": entered, "persons": entered - converted,
            "converted_share": converted / entered if entered else None})


class CohortResult(Result):
    """The members (``person_id``, ``entered_at``, traits asked for); ``extra`` has how many
    did A (``entered``), how many are in the cohort (``persons``) and ``converted_share``."""

    @property
    def persons(self) -> int:
        return int(self.extra["persons"])

    @property
    def converted_share(self) -> float | None:
        share = self.extra["converted_share"]
        return None if share is None else float(share)


class Cohorts:
    """Saved cohorts of a workspace (``ws.journeys.cohorts``)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def _check(self, name: str) -> str:
        if not isinstance(name, str) or not NAME.match(name):
            raise ValidationError(
                f"The cohort name {name!r} is not valid; use 1-64 lower-case letters, digits, "
                "'-' and '_', starting with a letter or digit.", code="invalid_cohort_name")
        return name

    def _write(self, statements: list[tuple[str, list[Any]]], table: pa.Table | None = None
               ) -> None:
        with self.ws.builder.transaction() as con:
            if table is not None:
                con.register("new_members", table)
            for sql, params in statements:
                run(con, sql, params)

    def save(self, name: str, result: CohortResult) -> dict[str, Any]:
        """Save (or replace) cohort ``name`` with the members of ``result``."""
        self._check(name)
        if not isinstance(result, CohortResult):
            raise ValidationError("Save the result of ws.journeys.cohort(...).",
                                  code="invalid_cohort")
        members = result.table.select(["person_id", "entered_at"])
        saved_at = datetime.now(UTC).replace(tzinfo=None)
        self._write([
            ("DELETE FROM cohorts WHERE name = ?", [name]),
            ("DELETE FROM cohort_members WHERE name = ?", [name]),
            ("INSERT INTO cohorts VALUES (?, ?, ?, ?, ?, ?)",
             [name, json.dumps(result.params), result.engine, result.extra["entered"],
              result.extra["persons"], saved_at]),
            ("INSERT INTO cohort_members SELECT ?, person_id, entered_at FROM new_members",
             [name]),
        ], members)
        return self.get(name)

    def list(self) -> list[dict[str, Any]]:
        self._write([])
        rows = self.ws.store.query(
            "SELECT name, definition, engine, entered, persons, saved_at FROM cohorts "
            "ORDER BY name")
        for r in rows:
            r["definition"] = json.loads(r["definition"])
        return rows

    def get(self, name: str) -> dict[str, Any]:
        """A saved cohort's definition and counts (members: :meth:`members`)."""
        self._check(name)
        found = [r for r in self.list() if r["name"] == name]
        if not found:
            raise NotFound(f"No saved cohort {name!r}; `bowknot cohort list` shows the saved "
                           "ones, and `bowknot cohort ... --save NAME` saves one.",
                           code="cohort_not_found")
        return found[0]

    def members(self, name: str) -> pa.Table:
        self.get(name)
        m = self.ws.table("cohort_members")
        table: pa.Table = m.filter(m.name == name).select("person_id", "entered_at").order_by(
            "person_id").to_pyarrow()
        return table

    def delete(self, name: str) -> None:
        self.get(name)
        self._write([("DELETE FROM cohorts WHERE name = ?", [name]),
                     ("DELETE FROM cohort_members WHERE name = ?", [name])])
