"""Attribution: which marketing channels (or campaigns) lead to conversions.

Each person's touches (the ``touch_events`` setting or UTM visits, as in touchpoints) up to
their first conversion make a path; a path without a conversion ends in "null". Models:

* ``first`` / ``last``: the first / last touch of each converting path gets the conversion;
* ``linear``: each touch of a converting path gets an equal share;
* ``markov``: a first-order Markov chain over start -> channels -> conversion | null
  (consecutive repeats collapsed), solved exactly as an absorbing chain; a channel's removal
  effect is the share of conversions lost when every step into it goes to null instead, and
  the conversions are shared in proportion to the removal effects.

The paths and their transition counts come from one Ibis query (any engine); the chain, a
matrix as small as the number of channels, is solved with NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa

from ..errors import ValidationError
from .engine import Engine
from .results import Result
from .steps import Step


class Attribution:
    def __init__(self, conversion: str | Step | Mapping[str, Any], *, by: str = "channel",
                 touch_events: Sequence[str] = ("Campaign Sent", "Campaign Opened",
                                                "Campaign Clicked")) -> None:
        if by not in ("channel", "campaign"):
            raise ValidationError(f"by {by!r}: use channel or campaign.", code="invalid_by")
        self.conversion, self.by = Step.of(conversion), by
        self.touch_events = list(touch_events)

    def _touches(self, engine: Engine) -> ir.Table:
        ev = engine.events()
        conv = ev.filter(self.conversion.predicate(engine, ev))
        first_conv = conv.group_by(conv.person_id).aggregate(tc=conv.ts.min())
        utm = engine.json_text(ev.context, "$.campaign.name")
        t = ev.filter(ev.event.isin(self.touch_events) | utm.notnull())
        label = (engine.json_text(t.properties, "$.channel").coalesce(
                     engine.json_text(t.context, "$.campaign.source"))
                 if self.by == "channel" else
                 engine.json_text(t.properties, "$.campaign_id").coalesce(
                     engine.json_text(t.context, "$.campaign.name")))
        t = t.select(person_id=t.person_id, ts=t.ts, seq=t.seq,
                     label=label.coalesce("(unknown)"))
        j = t.left_join(first_conv, t.person_id == first_conv.person_id)
        j = j.filter(j.tc.isnull() | (j.ts < j.tc))
        return j.select(person_id=j.person_id, ts=j.ts, seq=j.seq, label=j.label,
                        converted=j.tc.notnull())

    def query(self, engine: Engine) -> tuple[ir.Table, ir.Table]:
        t = self._touches(engine)
        order = ibis.window(group_by=t.person_id, order_by=[t.ts, t.seq])
        n_w = ibis.window(group_by=t.person_id)
        t = t.mutate(i=ibis.row_number().over(order), n=t.count().over(n_w),
                     prev=t.label.lag().over(order))
        # Simple models: credit per label over converting paths.
        c = t.filter(t.converted)
        credit = c.group_by(c.label).aggregate(
            first=(c.i == 0).sum().cast("float64"),
            last=(c.i == c.n - 1).sum().cast("float64"),
            linear=(1.0 / c.n.cast("float64")).sum())
        # Markov: steps with consecutive repeats collapsed.
        m = t.filter(t.prev.isnull() | (t.prev != t.label))
        mo = ibis.window(group_by=m.person_id, order_by=[m.ts, m.seq])
        m = m.mutate(nxt=m.label.lead().over(mo), k=ibis.row_number().over(mo))
        starts = m.filter(m.k == 0).select(frm=ibis.literal("(start)"), to=m.label)
        inner = m.filter(m.nxt.notnull()).select(frm=m.label, to=m.nxt)
        ends = m.filter(m.nxt.isnull()).select(
            frm=m.label, to=ibis.ifelse(m.converted, "(conversion)", "(null)"))
        steps = starts.union(inner, distinct=False).union(ends, distinct=False)
        edges = steps.group_by([steps.frm, steps.to]).aggregate(n=steps.count())
        return credit, edges

    def run(self, engine: Engine) -> Result:
        credit_expr, edges_expr = self.query(engine)
        credit = engine.to_arrow(credit_expr).to_pylist()
        edges = engine.to_arrow(edges_expr).to_pylist()
        conversions = sum(e["n"] for e in edges if e["to"] == "(conversion)")
        removal = markov_removal_effects(edges)
        labels = sorted({r["label"] for r in credit} | set(removal))
        by_label = {r["label"]: r for r in credit}
        total_effect = sum(removal.values())
        rows: dict[str, list[Any]] = {k: [] for k in (
            self.by, "first", "last", "linear", "markov", "removal_effect")}
        for label in labels:
            r = by_label.get(label, {})
            rows[self.by].append(label)
            for model in ("first", "last", "linear"):
                rows[model].append(float(r.get(model) or 0.0))
            effect = removal.get(label, 0.0)
            rows["removal_effect"].append(effect)
            rows["markov"].append(conversions * effect / total_effect if total_effect else 0.0)
        table = pa.table(rows).sort_by([("markov", "descending"), (self.by, "ascending")])
        return Result("attribution", {"conversion": str(self.conversion), "by": self.by},
                      table, engine=engine.name, extra={"conversions": conversions})


def markov_removal_effects(edges: list[dict[str, Any]]) -> dict[str, float]:
    """Removal effect of every channel, from transition counts (from, to, n)."""
    absorbing = ["(conversion)", "(null)"]
    channels = sorted({e["frm"] for e in edges} - {"(start)"}
                      | ({e["to"] for e in edges} - set(absorbing)))
    states = ["(start)", *channels]
    index = {s: i for i, s in enumerate(states)}
    counts = np.zeros((len(states), len(states) + 2))
    for e in edges:
        col = len(states) + absorbing.index(e["to"]) if e["to"] in absorbing else index[e["to"]]
        counts[index[e["frm"]], col] += e["n"]
    totals = counts.sum(axis=1, keepdims=True)
    probs = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    # A state nobody leaves (cannot happen for reached states) would be absorbing: send to null.
    probs[(totals[:, 0] == 0), len(states) + 1] = 1.0

    def conversion(p: np.ndarray) -> float:
        q, r = p[:, :len(states)], p[:, len(states):]
        b = np.linalg.solve(np.eye(len(states)) - q, r)
        return float(b[0, 0])

    base = conversion(probs)
    if base <= 0:
        return dict.fromkeys(channels, 0.0)
    effects = {}
    for ch in channels:
        p = probs.copy()
        j = index[ch]
        p[:, len(states) + 1] += p[:, j]  # every step into the channel goes to null
        p[:, j] = 0.0
        effects[ch] = 1.0 - conversion(p) / base
    return effects
