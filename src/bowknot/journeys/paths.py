"""Paths: the transition graph between steps, in one Ibis query on any engine.

Each person's events in time order (ties by event key); consecutive repeats of the same step
are collapsed (``/checkout, /checkout`` is one visit to it) unless ``collapse=False``. Every
pair of consecutive steps is a transition. For each edge (from, to): how many times it was
taken, by how many persons, its share of the transitions out of ``from`` (probability out) and
into ``to`` (probability in), and the median seconds between the two events. ``events``
limits the graph to some steps (others are left out before pairing); ``top`` keeps the most
taken edges; ``counts_only`` leaves out the persons and the medians (a distinct count and a
median per edge: about half the time at 20 M events, benchmarks/journeys.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from ..errors import ValidationError
from .engine import Engine
from .results import Result


class Transitions:
    def __init__(self, *, events: Sequence[str] | None = None, collapse: bool = True,
                 top: int | None = None, counts_only: bool = False) -> None:
        if top is not None and (not isinstance(top, int) or top < 1):
            raise ValidationError("top: a whole number of edges, at least 1.",
                                  code="invalid_top")
        if events is not None and (isinstance(events, str) or not all(
                isinstance(e, str) and e for e in events)):
            raise ValidationError("events: a list of step names, e.g. ['page:Checkout', "
                                  "'page:Payment'].", code="invalid_events")
        if not isinstance(counts_only, bool):
            raise ValidationError("counts_only: true (counts and probabilities only) or "
                                  "false (also persons and median seconds per edge).",
                                  code="invalid_counts_only")
        self.events = list(events) if events is not None else None
        self.collapse, self.top, self.counts_only = collapse, top, counts_only

    def steps(self, engine: Engine) -> ir.Table:
        """One row per transition: the person (``pkey``), the step numbers (``ekey`` to
        ``to``) and the seconds between the two events (``gap``)."""
        ev = engine.events()
        if self.events is not None:
            ev = ev.filter(ev.event.isin(self.events))
        # Integers only: a window carries every column of its input, and partitions, sorts
        # and compares faster on numbers than on text.
        ev = ev.select("pkey", "ts", "seq", "ekey")
        if engine.stored_order:
            return self._in_stored_order(ev)
        order = ibis.window(group_by=ev.pkey, order_by=[ev.ts, ev.seq])
        if self.collapse:
            # The second window orders by each event's number in the first (one integer
            # instead of time and seq: its sort is lighter, 6-15 % less CPU at 20 M events).
            ev = ev.mutate(prev=ev.ekey.lag().over(order), rn=ibis.row_number().over(order))
            ev = ev.filter(ev.prev.isnull() | (ev.prev != ev.ekey))
            order = ibis.window(group_by=ev.pkey, order_by=ev.rn)
        if self.counts_only:
            t = ev.mutate(to=ev.ekey.lead().over(order))
            return t.filter(t.to.notnull()).select("ekey", "to")
        t = ev.mutate(to=ev.ekey.lead().over(order), t_to=ev.ts.lead().over(order))
        t = t.filter(t.to.notnull())
        return self._pairs(t)

    def _in_stored_order(self, ev: ir.Table) -> ir.Table:
        """:meth:`steps` over events read in (pkey, ts, seq) order (``Engine.stored_order``):
        a person's previous and next events are the previous and next rows when their
        ``pkey`` is the same, so the windows need no partition or order and DuckDB streams
        them instead of sorting 20 M events twice (0.5 s of CPU instead of 5-6 s at 20 M
        events; benchmarks/README.md). The rows stay in order through the filters."""
        rows = ibis.window()  # the rows as read
        if self.collapse:
            ev = ev.mutate(prev=ev.ekey.lag().over(rows), prev_pkey=ev.pkey.lag().over(rows))
            ev = ev.filter(ev.prev_pkey.isnull() | (ev.prev_pkey != ev.pkey)
                           | (ev.prev != ev.ekey))
        t = ev.mutate(to=ev.ekey.lead().over(rows), to_pkey=ev.pkey.lead().over(rows),
                      t_to=ev.ts.lead().over(rows))
        t = t.filter(t.to_pkey == t.pkey)
        return t.select("ekey", "to") if self.counts_only else self._pairs(t)

    @staticmethod
    def _pairs(t: ir.Table) -> ir.Table:
        return t.select(t.pkey, t.ekey, t.to, gap=(t.t_to.epoch_seconds()
                                                   - t.ts.epoch_seconds()).cast("float64"))

    def query(self, engine: Engine, steps: ir.Table | None = None) -> ir.Table:
        t = self.steps(engine) if steps is None else steps
        if self.counts_only:
            edges = t.group_by([t.ekey, t.to]).aggregate(transitions=t.count())
        else:
            edges = t.group_by([t.ekey, t.to]).aggregate(
                transitions=t.count(), persons=t.pkey.nunique(),
                median_seconds=t.gap.median())
        out_w = ibis.window(group_by=edges.ekey)
        in_w = ibis.window(group_by=edges.to)
        taken = edges.transitions.cast("float64")
        edges = edges.mutate(probability_out=taken / edges.transitions.sum().over(out_w),
                             probability_in=taken / edges.transitions.sum().over(in_w))
        # The step labels of the numbers (one row per label).
        labels = engine.labels()
        a = labels.select(akey=labels.ekey, a=labels.event)
        b = labels.select(bkey=labels.ekey, b=labels.event)
        j = edges.inner_join(a, edges.ekey == a.akey).inner_join(b, edges.to == b.bkey)
        per_person = {} if self.counts_only else {"persons": j.persons}
        medians = {} if self.counts_only else {"median_seconds": j.median_seconds}
        return j.select(**{"from": j.a, "to": j.b}, transitions=j.transitions, **per_person,
                        probability_out=j.probability_out,
                        probability_in=j.probability_in, **medians)

    def run(self, engine: Engine) -> Result:
        if self.counts_only or engine.stored_order:  # streamed: one query, nothing held
            table = engine.to_arrow(self.query(engine))
        else:
            with engine.materialized(self.steps(engine)) as steps:
                table = engine.to_arrow(self.query(engine, steps))
        table = table.sort_by([("transitions", "descending"), ("from", "ascending"),
                               ("to", "ascending")])
        if self.top is not None:
            table = table.slice(0, self.top)
        return Result("transitions", {"events": self.events, "collapse": self.collapse,
                                      "top": self.top, "counts_only": self.counts_only},
                      table, engine=engine.name)


class Sankey:
    """The step-by-step flow from an anchor event: each person's first ``anchor``, then the
    next ``depth`` steps (repeats collapsed). Per depth, the edges (from, to) with how many
    persons took them; beyond the ``top`` edges of a depth, the rest is one "(other)" edge;
    persons whose path ends get "(end)"."""

    def __init__(self, anchor: str, *, depth: int = 4, top: int = 10) -> None:
        if not anchor or not isinstance(anchor, str):
            raise ValidationError("anchor: the event the flow starts from, e.g. "
                                  "'page:Checkout'.", code="invalid_anchor")
        for name, value, most in (("depth", depth, 20), ("top", top, 1000)):
            if not isinstance(value, int) or not 1 <= value <= most:
                raise ValidationError(f"{name}: a whole number from 1 to {most}.",
                                      code=f"invalid_{name}")
        self.anchor, self.depth, self.top = anchor, depth, top

    def query(self, engine: Engine) -> ir.Table:
        ev = engine.events().select("person_id", "ts", "seq", "event")
        order = ibis.window(group_by=ev.person_id, order_by=[ev.ts, ev.seq])
        ev = ev.mutate(prev=ev.event.lag().over(order))
        ev = ev.filter(ev.prev.isnull() | (ev.prev != ev.event))
        order = ibis.window(group_by=ev.person_id, order_by=[ev.ts, ev.seq])
        ev = ev.mutate(i=ibis.row_number().over(order))
        a = ev.filter(ev.event == self.anchor)
        start = a.group_by(a.person_id).aggregate(a0=a.i.min())
        j = ev.inner_join(start, ev.person_id == start.person_id)
        j = j.filter((j.i >= j.a0) & (j.i <= j.a0 + self.depth))
        o2 = ibis.window(group_by=j.person_id, order_by=j.i)
        j = j.mutate(d=(j.i - j.a0).cast("int64"),
                     to=j.event.lead().over(o2).coalesce("(end)"))
        j = j.filter(j.d < self.depth)
        return j.group_by([j.d, j.event, j.to]).aggregate(persons=j.person_id.nunique())

    def run(self, engine: Engine) -> Result:
        rows = engine.to_arrow(self.query(engine)).to_pylist()
        out: dict[str, list[object]] = {"depth": [], "from": [], "to": [], "persons": []}
        for d in sorted({r["d"] for r in rows}):
            level = sorted((r for r in rows if r["d"] == d),
                           key=lambda r: (-r["persons"], r["event"], r["to"]))
            kept, rest = level[:self.top], level[self.top:]
            for r in kept:
                for k, v in (("depth", d), ("from", r["event"]), ("to", r["to"]),
                             ("persons", r["persons"])):
                    out[k].append(v)
            if rest:
                for k, v in (("depth", d), ("from", "(other)"), ("to", "(other)"),
                             ("persons", sum(r["persons"] for r in rest))):
                    out[k].append(v)
        table = pa.table(out, schema=pa.schema([("depth", pa.int64()), ("from", pa.string()),
                                               ("to", pa.string()), ("persons", pa.int64())]))
        return Result("sankey", {"anchor": self.anchor, "depth": self.depth, "top": self.top},
                      table, engine=engine.name)
