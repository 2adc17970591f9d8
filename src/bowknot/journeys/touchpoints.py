"""Touchpoints: for every outcome event (an NPS answer, a booking), the last marketing touch
of the same person within a window before it, and any metric grouped by that touch.

A touch is one of the ``touch_events`` (by default Campaign Sent / Opened / Clicked, whose
properties name the ``channel`` and ``campaign_id``) or a visit with UTM parameters
(``context.campaign.source`` and ``.name``); the build extracts both into the ``channel`` and
``campaign`` columns of the journal. On DuckDB the last touch is found with an ASOF join, on
other engines with a window over the touches in range (the same answer, tested on both).
Outcomes without a touch in the window are grouped under ``channel = campaign = None``. With
``value`` (a numeric property of the outcome, e.g. ``score``) each group gets its mean, and for
0-10 scores its NPS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from ..errors import ValidationError
from .engine import Engine
from .results import Result
from .steps import KEY, Step, seconds


class Touchpoints:
    def __init__(self, outcome: str | Step | Mapping[str, Any], *,
                 within: str | int | timedelta = "7d", value: str | None = None,
                 touch_events: Sequence[str] = ("Campaign Sent", "Campaign Opened",
                                                "Campaign Clicked")) -> None:
        self.outcome = Step.of(outcome)
        self.within = seconds(within)
        if value is not None and not KEY.match(value):
            raise ValidationError(f"value {value!r}: a property name of the outcome event, "
                                  "e.g. 'score' or 'revenue'.", code="invalid_value")
        self.value = value
        self.touch_events = list(touch_events)

    def params(self) -> dict[str, Any]:
        return {"outcome": str(self.outcome), "within_seconds": self.within,
                "value": self.value, "touch_events": self.touch_events}

    def query(self, engine: Engine) -> ir.Table:
        ev = engine.events()
        o = ev.filter(self.outcome.predicate(engine, ev))
        value = (engine.json_text(o.properties, f"$.{self.value}").cast("float64")
                 if self.value else ibis.literal(None, "float64"))
        o = o.select(opid=o.pkey, ots=o.ts, oseq=o.seq, value=value)
        t = ev.filter(ev.event.isin(self.touch_events) | ev.utm_campaign.notnull())
        t = t.select(tpid=t.pkey, tts=t.ts, tseq=t.seq, channel=t.channel,
                     campaign=t.campaign)
        window = ibis.interval(seconds=self.within)
        if engine.asof:
            # The last touch at or before each outcome is an ASOF join on (time, seq) as one
            # key, so touches at the same time go to the greater seq, as in the window path.
            t = t.mutate(tkey=engine.order_key(t.tts, t.tseq))
            o = o.mutate(okey=engine.order_key(o.ots, 2**63 - 1))
            a = o.asof_join(t, o.okey >= t.tkey, predicates=[o.opid == t.tpid])
            near = a.tts >= a.ots - window
            j = a.select(opid=a.opid, value=a.value,
                         channel=ibis.ifelse(near, a.channel, ibis.null("string")),
                         campaign=ibis.ifelse(near, a.campaign, ibis.null("string")))
        else:
            j = o.left_join(t, [o.opid == t.tpid, t.tts <= o.ots, t.tts >= o.ots - window])
            latest = ibis.window(group_by=[j.opid, j.ots, j.oseq],
                                 order_by=[ibis.desc(j.tts), ibis.desc(j.tseq)])
            j = j.mutate(rank=ibis.row_number().over(latest))
            j = j.filter(j.rank == 0)
        return j.group_by([j.channel, j.campaign]).aggregate(
            outcomes=j.count(), persons=j.opid.nunique(), mean_value=j.value.mean(),
            promoters=(j.value >= 9).sum(), detractors=(j.value <= 6).sum(),
            answered=j.value.count())

    def run(self, engine: Engine) -> Result:
        table = engine.to_arrow(self.query(engine))
        table = table.sort_by([("outcomes", "descending"), ("channel", "ascending"),
                               ("campaign", "ascending")])
        if self.value is not None:
            p = table.column("promoters").to_numpy(zero_copy_only=False).astype("float64")
            d = table.column("detractors").to_numpy(zero_copy_only=False).astype("float64")
            n = table.column("answered").to_numpy(zero_copy_only=False).astype("float64")
            with_n = n > 0
            nps = [round(100 * (pi - di) / ni, 1) if ok else None
                   for pi, di, ni, ok in zip(p, d, n, with_n, strict=True)]
            table = table.append_column("nps", pa.array(nps, pa.float64()))
        else:
            table = table.drop_columns(["mean_value", "promoters", "detractors", "answered"])
        return Result("touchpoints", self.params(), table, engine=engine.name)
