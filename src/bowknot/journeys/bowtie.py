"""The bow-tie report: visitors -> known (the knot) -> customers -> repeat customers, with
the conversion at each stage, by acquisition channel and by the month persons were first seen.

* a person is **known** once they have an ``identify`` event (the knot);
* a **customer** has at least one booking (setting ``booking_event``), a **repeat customer**
  at least two;
* the **acquisition channel** is the UTM source (``context.campaign.source``) of the person's
  first event, ``direct`` when it has none.
"""

from __future__ import annotations

import ibis
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ValidationError
from .engine import Engine
from .results import Result

BY = ("channel", "month", "none")


class BowTie:
    def __init__(self, booking_event: str, *, by: str = "channel") -> None:
        if by not in BY:
            raise ValidationError(f"by {by!r}: use channel, month or none.", code="invalid_by")
        self.booking_event, self.by = booking_event, by

    def query(self, engine: Engine) -> ir.Table:
        ev = engine.events()
        first = ibis.window(group_by=ev.person_id, order_by=[ev.ts, ev.seq])
        ev = ev.mutate(n=ibis.row_number().over(first),
                       source=engine.json_text(ev.context, "$.campaign.source"))
        per = ev.group_by(ev.person_id).aggregate(
            first_seen=ev.ts.min(),
            channel=ev.source.coalesce("direct").max(where=ev.n == 0),
            known=(ev.type == "identify").any(),
            bookings=(ev.event == self.booking_event).sum())
        group = (per.channel if self.by == "channel"
                 else per.first_seen.truncate("M").cast("string").substr(0, 7)
                 if self.by == "month" else ibis.literal("all"))
        per = per.mutate(grp=group)
        return per.group_by(per.grp).aggregate(
            visitors=per.count(), known=per.known.sum(),
            customers=(per.bookings >= 1).sum(), repeat_customers=(per.bookings >= 2).sum())

    def run(self, engine: Engine) -> Result:
        t = engine.to_arrow(self.query(engine)).sort_by([("visitors", "descending"),
                                                         ("grp", "ascending")])
        t = t.rename_columns([self.by if c == "grp" else c for c in t.column_names])

        def rate(a: str, b: str) -> pa.Array:
            num = pc.cast(t.column(a), pa.float64())
            den = pc.cast(t.column(b), pa.float64())
            return pc.if_else(pc.equal(den, 0), None, pc.divide(num, den))

        t = t.append_column("known_rate", rate("known", "visitors"))
        t = t.append_column("customer_rate", rate("customers", "known"))
        t = t.append_column("repeat_rate", rate("repeat_customers", "customers"))
        return Result("bowtie", {"by": self.by, "booking_event": self.booking_event}, t,
                      engine=engine.name)
