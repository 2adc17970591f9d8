"""Paths: the transition graph between steps, in one Ibis query on any engine.

Each person's events in time order (ties by event key); consecutive repeats of the same step
are collapsed (``/checkout, /checkout`` is one visit to it) unless ``collapse=False``. Every
pair of consecutive steps is a transition. For each edge (from, to): how many times it was
taken, by how many persons, its share of the transitions out of ``from`` (probability out) and
into ``to`` (probability in), and the median seconds between the two events. ``events``
limits the graph to some steps (others are left out before pairing); ``top`` keeps the most
taken edges.
"""

from __future__ import annotations

from collections.abc import Sequence

import ibis
import ibis.expr.types as ir

from ..errors import ValidationError
from .engine import Engine
from .results import Result


class Transitions:
    def __init__(self, *, events: Sequence[str] | None = None, collapse: bool = True,
                 top: int | None = None) -> None:
        if top is not None and (not isinstance(top, int) or top < 1):
            raise ValidationError("top: a whole number of edges, at least 1.",
                                  code="invalid_top")
        if events is not None and (isinstance(events, str) or not all(
                isinstance(e, str) and e for e in events)):
            raise ValidationError("events: a list of step names, e.g. ['page:Checkout', "
                                  "'page:Payment'].", code="invalid_events")
        self.events = list(events) if events is not None else None
        self.collapse, self.top = collapse, top

    def query(self, engine: Engine) -> ir.Table:
        ev = engine.events()
        if self.events is not None:
            ev = ev.filter(ev.event.isin(self.events))
        order = ibis.window(group_by=ev.person_id, order_by=[ev.ts, ev.seq])
        if self.collapse:
            ev = ev.mutate(prev=ev.event.lag().over(order))
            ev = ev.filter(ev.prev.isnull() | (ev.prev != ev.event))
            order = ibis.window(group_by=ev.person_id, order_by=[ev.ts, ev.seq])
        t = ev.mutate(to=ev.event.lead().over(order), t_to=ev.ts.lead().over(order))
        t = t.filter(t.to.notnull())
        t = t.mutate(gap=(t.t_to.epoch_seconds() - t.ts.epoch_seconds()).cast("float64"))
        edges = t.group_by([t.event, t.to]).aggregate(
            transitions=t.count(), persons=t.person_id.nunique(), median_seconds=t.gap.median())
        out_w = ibis.window(group_by=edges.event)
        in_w = ibis.window(group_by=edges.to)
        taken = edges.transitions.cast("float64")
        edges = edges.mutate(probability_out=taken / edges.transitions.sum().over(out_w),
                             probability_in=taken / edges.transitions.sum().over(in_w))
        edges = edges.rename({"from": "event"})
        return edges.select("from", "to", "transitions", "persons", "probability_out",
                            "probability_in", "median_seconds")

    def run(self, engine: Engine) -> Result:
        table = engine.to_arrow(self.query(engine))
        table = table.sort_by([("transitions", "descending"), ("from", "ascending"),
                               ("to", "ascending")])
        if self.top is not None:
            table = table.slice(0, self.top)
        return Result("transitions", {"events": self.events, "collapse": self.collapse,
                                      "top": self.top}, table, engine=engine.name)
