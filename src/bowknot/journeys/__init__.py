"""Journey analytics across the bow tie (issue 5): funnels, cohorts, retention and paths,
written once in Ibis and run on the embedded DuckDB store or on Spark.

>>> ws.journeys.funnel(["Campaign Clicked", "Booking Completed"], within="3d").to_pandas()
>>> ws.journeys.on("spark").funnel(...)          # the same answer from Spark

See docs/journeys.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import BowknotError
from ..identity import split_list
from .attribution import Attribution
from .bowtie import BowTie
from .cohorts import Cohort, CohortResult, Cohorts
from .engine import ENGINES, DuckDBEngine, Engine, SparkEngine, engine, spark_session
from .funnels import Exclusion, Funnel, FunnelResult, StepSpec
from .paths import Sankey, Transitions
from .results import Result
from .retention import Retention
from .steps import Step
from .touchpoints import Touchpoints

if TYPE_CHECKING:
    from ..workspace import Workspace


R = TypeVar("R", bound=Result, covariant=True)


class _Question(Protocol[R]):
    def run(self, engine: Engine) -> R: ...


class Journeys:
    """The analyses of one workspace on one engine (``ws.journeys`` runs on DuckDB)."""

    def __init__(self, ws: Workspace, on: str | Engine = "duckdb", **options: Any) -> None:
        self.ws = ws
        self.engine = on if isinstance(on, Engine) else engine(ws, on, **options)
        self.cohorts = Cohorts(ws)

    def on(self, name: str | Engine, **options: Any) -> Journeys:
        """The same analyses on another engine: ``ws.journeys.on("spark")``."""
        return Journeys(self.ws, name, **options)

    def _ready(self) -> None:
        rows = self.ws.store.query(
            "SELECT EXISTS (SELECT 1 FROM events) AND NOT EXISTS (SELECT 1 FROM persons) "
            "AS unbuilt")
        if rows[0]["unbuilt"]:
            raise BowknotError(
                "Journeys are analysed per person, and no persons have been built yet: run "
                "`bowknot build` (or ws.build()) first.", code="not_built")

    def _answer(self, question: _Question[R]) -> R:
        """``question`` answered as one analysis (the journal brought up to date once); a
        DuckDB spill that runs out of room says which settings give it room."""
        self._ready()
        with self.ws.store.spill_errors(), self.engine.analysis():
            return question.run(self.engine)

    def funnel(self, steps: Sequence[StepSpec], *, within: str | int | timedelta = "30d",
               order: str = "ordered", entry: str = "first",
               exclusions: Sequence[StepSpec | Exclusion | Mapping[str, Any]] = (),
               breakdown: str | None = None) -> FunnelResult:
        """Persons through ``steps`` (see :class:`~bowknot.journeys.funnels.Funnel`)."""
        question = Funnel(steps, within=within, order=order, entry=entry,
                          exclusions=exclusions, breakdown=breakdown)
        return self._answer(question)

    def cohort(self, did: StepSpec, did_not: StepSpec, *, within: str | int | timedelta,
               traits: Sequence[str] = (), save_as: str | None = None) -> CohortResult:
        """Persons who did ``did`` and then not ``did_not`` within ``within`` of their first
        ``did`` (with the ``traits`` asked for); ``save_as`` saves it by name."""
        question = Cohort(did, did_not, within, traits)
        if save_as is not None:
            self.cohorts._check(save_as)
        result = self._answer(question)
        if save_as is not None:
            self.cohorts.save(save_as, result)
        return result

    def retention(self, start: StepSpec, back: StepSpec | None = None, *,
                  period: str = "week", periods: int = 8) -> Result:
        """Cohorts by the period of each person's first ``start``; how many did ``back`` (by
        default ``start`` again) in each later period. See :mod:`.retention`."""
        question = Retention(start, back, period=period, periods=periods)
        return self._answer(question)

    def transitions(self, *, events: Sequence[str] | None = None, collapse: bool = True,
                    top: int | None = None, counts_only: bool = False) -> Result:
        """The transition graph between steps (see :mod:`.paths`); ``counts_only`` leaves
        out the persons and median seconds per edge (faster)."""
        question = Transitions(events=events, collapse=collapse, top=top,
                               counts_only=counts_only)
        return self._answer(question)

    def touchpoints(self, outcome: StepSpec, *, within: str | int | timedelta = "7d",
                    value: str | None = None) -> Result:
        """Outcomes grouped by the last marketing touch before them (see
        :mod:`.touchpoints`); ``value="score"`` adds the mean and the NPS per touch."""
        question = Touchpoints(outcome, within=within, value=value,
                               touch_events=split_list(self.ws.settings.touch_events))
        return self._answer(question)

    def bowtie(self, by: str = "channel") -> Result:
        """Visitors -> known -> customers -> repeat customers, by acquisition channel, by the
        month first seen, or in all (``by="none"``). See :mod:`.bowtie`."""
        question = BowTie(self.ws.settings.booking_event, by=by)
        return self._answer(question)

    def attribution(self, conversion: StepSpec, *, by: str = "channel") -> Result:
        """First, last, linear and Markov (removal effect) attribution of ``conversion`` to
        channels or campaigns (see :mod:`.attribution`)."""
        question = Attribution(conversion, by=by,
                               touch_events=split_list(self.ws.settings.touch_events))
        return self._answer(question)

    def sankey(self, anchor: str, *, depth: int = 4, top: int = 10) -> Result:
        """The step-by-step flow from each person's first ``anchor`` (see :mod:`.paths`)."""
        question = Sankey(anchor, depth=depth, top=top)
        return self._answer(question)

    def close(self) -> None:
        self.engine.close()


__all__ = [
    "ENGINES", "Attribution", "BowTie", "Cohort", "CohortResult", "Cohorts", "DuckDBEngine",
    "Engine", "Exclusion",
    "Funnel", "FunnelResult", "Journeys", "Result", "Retention", "Sankey", "SparkEngine", "Step",
    "Touchpoints", "Transitions", "engine", "spark_session",
]
