"""The peers of the journeys benchmark (benchmarks/journeys.py): the same six questions
answered by hand-written DuckDB SQL (the limit), bowknot, Polars, pandas and retentioneering.

Every peer but bowknot reads the flat, typed export of the built workspace (one row per person
event, shuffled): ``person_id, ts, seq, event, channel, campaign, utm_campaign, score``, where
``channel`` / ``campaign`` are the touch's ``properties.channel`` / ``properties.campaign_id``
(else the UTM source / name of its context) and ``score`` the NPS answer. bowknot answers
through its library API on the workspace itself.

A peer is a class: ``load(parquet, workspace)`` once (timed as the load), then one method per
question it supports, returning its raw answer; ``normal(question, raw)`` turns the answer into
plain, sorted, rounded rows, which the harness hashes and compares between peers.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from typing import Any

# The questions (performance-anchors.md §7.2, on the demo story's events).
STEPS = ["Campaign Sent", "Campaign Opened", "Campaign Clicked", "Booking Completed"]
FUNNEL_WITHIN_H = 48
COHORT_DID, COHORT_DID_NOT, COHORT_WITHIN_D = "Campaign Clicked", "Booking Completed", 7
RET_START, RET_BACK, RET_PERIODS = "Booking Completed", "page:Home", 12
NPS_OUTCOME, NPS_WITHIN_D = "survey_answered", 14
TOUCH_EVENTS = ["Campaign Sent", "Campaign Opened", "Campaign Clicked"]

QUESTIONS = {
    "funnel": "Q1 windowed funnel: sent > opened > clicked > booked within 48 h (first entry)",
    "transitions": "Q2 transition graph, repeats collapsed (count, persons, p_out, p_in, median)",
    "cohort": "Q3 clicked, no booking within 7 days: the member list",
    "retention": "Q4 weekly retention: first booking cohorts, back = Home page, weeks 1-12",
    "nps": "Q5 NPS by last marketing touch within 14 days before each answer",
    # Variants with retentioneering's semantics (its funnel has no window, its transitions
    # no collapsing): compared with the hand-written reference of the same variant.
    "funnel_open": "Q1 variant: the same steps, no time window (retentioneering's funnel_data)",
    "transition_counts": "Q2 variant: transition counts, repeats kept (retentioneering)",
    "conversion": "Q3 variant: clicked -> booked within 7 days, paths (get_conversion_rate)",
}



# -- normal forms: what the gate compares ---------------------------------------------------
def _r(x: Any, digits: int) -> Any:
    if x is None or x != x:  # None or NaN
        return None
    return round(float(x), digits)


def _ms(x: Any) -> Any:
    """Seconds between ms-precision times and their medians are multiples of 0.5 ms: snap to
    that grid, so float noise in a peer's arithmetic does not flip a rounding."""
    if x is None or x != x:
        return None
    return round(float(x) * 2000) / 2000


def _day(x: Any) -> str:
    if isinstance(x, datetime):
        return x.date().isoformat()
    if isinstance(x, date):
        return x.isoformat()
    return str(x)[:10]


def normal(question: str, raw: Any) -> list[Any]:
    """A peer's answer (rows as dicts with the columns below, or a pandas / Polars / Arrow
    frame of them) as sorted, rounded lists. The peers answer with their own frames and
    are timed to there: turning 100 k members into Python dicts took longer than the
    cohort itself (0.15 s of CPU at M) and is no part of any tool's answer."""
    rows = raw if isinstance(raw, list) else _rows(raw)
    if question == "funnel":
        return [[int(r["persons"]), _r(r.get("median"), 1)] for r in
                sorted(rows, key=lambda r: r["step"])]
    if question == "funnel_open":
        return [int(r["persons"]) for r in sorted(rows, key=lambda r: r["step"])]
    if question == "transitions":
        return sorted([r["from"], r["to"], int(r["transitions"]), int(r["persons"]),
                       _r(r["probability_out"], 6), _r(r["probability_in"], 6),
                       _ms(r["median_seconds"])] for r in rows)
    if question == "transition_counts":
        return sorted([r["from"], r["to"], int(r["transitions"])] for r in rows)
    if question == "cohort":
        return sorted([str(r["person_id"]), str(r["entered_at"])[:23]] for r in rows)
    if question == "conversion":
        return [[int(r["entered"]), int(r["converted"])] for r in rows]
    if question == "retention":
        return sorted([_day(r["cohort"]), int(r["period"]), int(r["persons"]),
                       int(r["returned"])] for r in rows)
    if question == "nps":
        return sorted([r["channel"] or "", r["campaign"] or "", int(r["outcomes"]),
                        int(r["persons"]), int(r["promoters"]), int(r["detractors"]),
                        int(r["answered"]), _r(r["mean_value"], 4)] for r in rows)
    raise KeyError(question)


# A question's answer: rows (dicts), or the peer's own frame of them (pandas, Polars, Arrow).
Answer = Any


def _rows(frame: Any) -> list[dict[str, Any]]:
    """Rows of a pandas / Polars / Arrow frame (a small answer, or a member list)."""
    if hasattr(frame, "to_pylist"):
        return list(frame.to_pylist())
    if hasattr(frame, "to_dicts"):
        return list(frame.to_dicts())
    return list(frame.to_dict("records"))


# -- 1. hand-written DuckDB SQL: the limit ---------------------------------------------------
SQL_SEC = "CAST(epoch({}) AS BIGINT)"  # whole seconds, as bowknot's funnel medians count them


class DuckDBSQL:
    name = "duckdb_sql"

    def load(self, parquet: str, workspace: str) -> None:
        import duckdb

        self.con = duckdb.connect()
        self.con.execute("SET threads = 2")
        if os.environ.get("BENCH_MEMORY_LIMIT"):
            self.con.execute(f"SET memory_limit = '{os.environ['BENCH_MEMORY_LIMIT']}'")
        # The best table it can be given: native, clustered by (person, time), with the
        # persons (pkey) and the step labels (ekey) numbered, so that windows, joins and
        # distinct counts run on integers (made at load, which is not part of a question).
        self.con.execute(f"""CREATE TABLE ev AS
            WITH e AS (SELECT * FROM read_parquet('{parquet}')),
            p AS (SELECT person_id, row_number() OVER (ORDER BY person_id) AS pkey
                  FROM (SELECT DISTINCT person_id FROM e)),
            k AS (SELECT event, CAST(row_number() OVER (ORDER BY event) AS INTEGER) AS ekey
                  FROM (SELECT DISTINCT event FROM e))
            SELECT * FROM e JOIN p USING (person_id) JOIN k USING (event)
            ORDER BY pkey, ts, seq""")
        self.con.execute("CREATE TABLE labels AS SELECT DISTINCT ekey, event FROM ev")
        # A step-clustered copy of the numbers and a person table, made at load as bowknot's
        # journal makes them: a question about two steps (the cohort) reads only their row
        # groups (zone maps on ekey) instead of scanning every event (0.06 s instead of
        # 0.35 s at M: the best plain-SQL formulation known, so the limit uses it).
        self.con.execute("""CREATE TABLE steps AS SELECT ekey, pkey, ts, seq FROM ev
            ORDER BY ekey, pkey, ts, seq""")
        self.con.execute("""CREATE TABLE people AS SELECT pkey, any_value(person_id)
            AS person_id FROM ev GROUP BY pkey ORDER BY pkey""")

    def q(self, sql: str) -> list[dict[str, Any]]:
        return _rows(self.frame(sql))

    def frame(self, sql: str) -> Any:
        return self.con.sql(sql).to_arrow_table()

    def funnel(self) -> Answer:
        s = ", ".join(f"'{x}'" for x in STEPS)
        ctes = [f"s AS (SELECT pkey, ts, event FROM ev WHERE event IN ({s}))",
                f"a0 AS (SELECT pkey, min(ts) AS t0 FROM s WHERE event = '{STEPS[0]}' "
                "GROUP BY pkey)"]
        cols = "t0"
        for k in range(1, len(STEPS)):
            ctes.append(f"""a{k} AS (SELECT a.pkey, {cols}, min(s.ts) AS t{k}
                FROM a{k - 1} a LEFT JOIN s ON s.pkey = a.pkey
                  AND s.event = '{STEPS[k]}' AND s.ts > a.t{k - 1}
                  AND s.ts <= a.t0 + INTERVAL {FUNNEL_WITHIN_H} HOUR
                GROUP BY ALL)""")
            cols += f", t{k}"
        sel = ", ".join(
            [f"count(t{k}) AS n{k}" for k in range(len(STEPS))]
            + [f"median({SQL_SEC.format(f't{k}')} - {SQL_SEC.format(f't{k - 1}')}) AS m{k}"
               for k in range(1, len(STEPS))])
        r = self.q(f"WITH {', '.join(ctes)} SELECT {sel} FROM a{len(STEPS) - 1}")[0]
        return [{"step": k, "persons": r[f"n{k}"], "median": r.get(f"m{k}")}
                for k in range(len(STEPS))]

    def funnel_open(self) -> Answer:
        # retentioneering's semantics: ordered by position in the path, no window.
        ctes = ["s AS (SELECT pkey, event, row_number() OVER (PARTITION BY pkey "
                "ORDER BY ts, seq) AS i FROM ev WHERE event IN ("
                + ", ".join(f"'{x}'" for x in STEPS) + "))",
                f"a0 AS (SELECT pkey, min(i) AS i FROM s WHERE event = '{STEPS[0]}' "
                "GROUP BY ALL)"]
        for k in range(1, len(STEPS)):
            ctes.append(f"""a{k} AS (SELECT s.pkey, min(s.i) AS i FROM s
                JOIN a{k - 1} a ON s.pkey = a.pkey AND s.i > a.i
                WHERE s.event = '{STEPS[k]}' GROUP BY ALL)""")
        sel = ", ".join(f"(SELECT count(*) FROM a{k}) AS n{k}" for k in range(len(STEPS)))
        r = self.q(f"WITH {', '.join(ctes)} SELECT {sel}")[0]
        return [{"step": k, "persons": r[f"n{k}"]} for k in range(len(STEPS))]

    # ``OVER ()``: the rows as stored. ``ev`` was written sorted by (pkey, ts, seq) and DuckDB
    # reads a table in insertion order, so a person's previous and next events are the
    # previous and next rows when their pkey is the same: DuckDB streams these windows
    # instead of partitioning and sorting 20 M events (0.5 s of CPU instead of 5-6 s at M;
    # it also no longer needs the temporary table the sorted windows did before the median).
    def transitions(self) -> Answer:
        return self.frame("""
            WITH c AS (SELECT pkey, ekey, ts FROM (
                         SELECT pkey, ekey, ts, lag(pkey) OVER () AS ppkey,
                                lag(ekey) OVER () AS prev FROM ev)
                       WHERE ppkey IS DISTINCT FROM pkey OR prev <> ekey),
            t AS (SELECT pkey, ekey, nxt, epoch(nts) - epoch(ts) AS gap FROM (
                    SELECT pkey, ekey, ts, lead(pkey) OVER () AS npkey,
                           lead(ekey) OVER () AS nxt, lead(ts) OVER () AS nts FROM c)
                  WHERE npkey = pkey),
            e AS (SELECT ekey, nxt, count(*) AS n, count(DISTINCT pkey) AS persons,
                         median(gap) AS med FROM t GROUP BY ALL)
            SELECT a.event AS "from", b.event AS "to", n AS transitions, persons,
                   n / sum(n) OVER (PARTITION BY e.ekey) AS probability_out,
                   n / sum(n) OVER (PARTITION BY nxt) AS probability_in,
                   med AS median_seconds
            FROM e JOIN labels a ON a.ekey = e.ekey JOIN labels b ON b.ekey = e.nxt""")

    def transition_counts(self) -> Answer:
        return self.frame("""
            WITH e AS (SELECT ekey, nxt, count(*) AS transitions
                       FROM (SELECT pkey, ekey, lead(pkey) OVER () AS npkey,
                                    lead(ekey) OVER () AS nxt FROM ev)
                       WHERE npkey = pkey GROUP BY ALL)
            SELECT a.event AS "from", b.event AS "to", transitions
            FROM e JOIN labels a ON a.ekey = e.ekey JOIN labels b ON b.ekey = e.nxt""")

    def _entries(self) -> str:
        step = "(SELECT ekey FROM labels WHERE event = '{}')"
        return f"""a AS (SELECT pkey, min(ts) AS entered_at FROM steps
                         WHERE ekey = {step.format(COHORT_DID)} GROUP BY pkey),
                   b AS (SELECT pkey, ts FROM steps
                         WHERE ekey = {step.format(COHORT_DID_NOT)})"""

    def cohort(self) -> Answer:
        # pkey numbers the persons in person_id order: sorting by it sorts by person_id.
        return self.frame(f"""WITH {self._entries()}
            SELECT p.person_id, a.entered_at FROM a ANTI JOIN b
              ON b.pkey = a.pkey AND b.ts > a.entered_at
             AND b.ts <= a.entered_at + INTERVAL {COHORT_WITHIN_D} DAY
            JOIN people p ON p.pkey = a.pkey
            ORDER BY a.pkey""")

    def conversion(self) -> Answer:
        return self.frame(f"""WITH {self._entries()}
            SELECT count(*) AS entered, count(*) FILTER (WHERE EXISTS (
                SELECT 1 FROM b WHERE b.pkey = a.pkey AND b.ts > a.entered_at
                   AND b.ts <= a.entered_at + INTERVAL {COHORT_WITHIN_D} DAY)) AS converted
            FROM a""")

    def retention(self) -> Answer:
        week = "(CAST(epoch(date_trunc('day', {})) AS BIGINT) // 86400 + 3) // 7"
        return self.frame(f"""
            WITH f AS (SELECT pkey, min(ts) AS t0 FROM ev WHERE event = '{RET_START}'
                       GROUP BY pkey),
            c AS (SELECT pkey, t0, {week.format('t0')} AS w0 FROM f),
            b AS (SELECT DISTINCT c.pkey, c.w0, {week.format('ev.ts')} - c.w0 AS k
                  FROM ev JOIN c ON ev.pkey = c.pkey
                  WHERE ev.event = '{RET_BACK}' AND ev.ts > c.t0),
            sizes AS (SELECT w0, count(*) AS persons FROM c GROUP BY w0)
            SELECT DATE '1970-01-05' + 7 * CAST(s.w0 - 1 AS INTEGER) AS cohort, k AS period,
                   s.persons, returned
            FROM (SELECT w0, k, count(*) AS returned FROM b
                  WHERE k BETWEEN 1 AND {RET_PERIODS} GROUP BY ALL
                  UNION ALL SELECT w0, 0, persons FROM sizes) r JOIN sizes s USING (w0)""")

    def nps(self) -> Answer:
        touches = ", ".join(f"'{x}'" for x in TOUCH_EVENTS)
        # ASOF picks the latest touch at or before each answer; (ts, seq) as one 128-bit key
        # breaks ties in time by seq (measured faster than first de-duplicating the ties).
        key = "epoch_us(ts)::HUGEINT * 18446744073709551616 + {}"
        return self.frame(f"""
            WITH o AS (SELECT pkey, ts, score, {key.format(2**63 - 1)} AS k
                       FROM ev WHERE event = '{NPS_OUTCOME}'),
            t AS (SELECT pkey, ts, channel, campaign, {key.format('seq')} AS k
                  FROM ev WHERE event IN ({touches}) OR utm_campaign IS NOT NULL),
            j AS (SELECT o.pkey, o.score,
                         CASE WHEN t.ts >= o.ts - INTERVAL {NPS_WITHIN_D} DAY
                              THEN t.channel END AS channel,
                         CASE WHEN t.ts >= o.ts - INTERVAL {NPS_WITHIN_D} DAY
                              THEN t.campaign END AS campaign
                  FROM o ASOF LEFT JOIN t ON o.pkey = t.pkey AND o.k >= t.k)
            SELECT channel, campaign, count(*) AS outcomes,
                   count(DISTINCT pkey) AS persons, avg(score) AS mean_value,
                   count(*) FILTER (WHERE score >= 9) AS promoters,
                   count(*) FILTER (WHERE score <= 6) AS detractors,
                   count(score) AS answered
            FROM j GROUP BY ALL""")


# -- 2. bowknot, through its library API on the workspace ------------------------------------
class Bowknot:
    name = "bowknot"

    def load(self, parquet: str, workspace: str) -> None:
        import bowknot

        self.ws = bowknot.connect(workspace)
        self.ws.store.connection.execute("SET threads = 2")
        if os.environ.get("BENCH_MEMORY_LIMIT"):
            self.ws.store.connection.execute(
                f"SET memory_limit = '{os.environ['BENCH_MEMORY_LIMIT']}'")
        self.j = self.ws.journeys

    def funnel(self) -> Answer:
        r = self.j.funnel(STEPS, within=f"{FUNNEL_WITHIN_H}h")
        return [{"step": x["step"] - 1, "persons": x["persons"],
                 "median": x["median_seconds_from_previous"]} for x in r.table.to_pylist()]

    def funnel_open(self) -> Answer:
        # No window: longer than the data. bowknot orders steps by time, retentioneering by
        # position; the gate tells whether that differs on this data.
        r = self.j.funnel(STEPS, within="3650d")
        return [{"step": x["step"] - 1, "persons": x["persons"]} for x in r.table.to_pylist()]

    def transitions(self) -> Answer:
        return self.j.transitions().table

    def transition_counts(self) -> Answer:
        return self.j.transitions(collapse=False, counts_only=True).table

    def cohort(self) -> Answer:
        return self.j.cohort(COHORT_DID, COHORT_DID_NOT, within=f"{COHORT_WITHIN_D}d").table

    def retention(self) -> Answer:
        return self.j.retention(RET_START, RET_BACK, period="week",
                                periods=RET_PERIODS).table

    def nps(self) -> Answer:
        return self.j.touchpoints(NPS_OUTCOME, within=f"{NPS_WITHIN_D}d",
                                  value="score").table


# -- 3. Polars (lazy, idiomatic) -------------------------------------------------------------
class Polars:
    name = "polars"

    def load(self, parquet: str, workspace: str) -> None:
        import polars as pl

        self.pl = pl
        self.df = pl.read_parquet(parquet)

    def funnel(self) -> Answer:
        pl = self.pl
        lf = self.df.lazy().filter(pl.col("event").is_in(STEPS)).select("person_id", "ts",
                                                                         "event")
        a = lf.filter(pl.col("event") == STEPS[0]).group_by("person_id").agg(
            t0=pl.col("ts").min())
        window = timedelta(hours=FUNNEL_WITHIN_H)
        for k in range(1, len(STEPS)):
            e = lf.filter(pl.col("event") == STEPS[k]).select("person_id", tk=pl.col("ts"))
            hit = (a.filter(pl.col(f"t{k - 1}").is_not_null()).join(e, on="person_id")
                   .filter((pl.col("tk") > pl.col(f"t{k - 1}"))
                           & (pl.col("tk") <= pl.col("t0") + window))
                   .group_by("person_id").agg(pl.col("tk").min().alias(f"t{k}")))
            a = a.join(hit, on="person_id", how="left")
        sec = [(pl.col(f"t{k}").dt.epoch("ms") + 500) // 1000 for k in range(len(STEPS))]
        r = a.select(
            *[pl.col(f"t{k}").count().alias(f"n{k}") for k in range(len(STEPS))],
            *[(sec[k] - sec[k - 1]).cast(pl.Float64).median().alias(f"m{k}")
              for k in range(1, len(STEPS))]).collect().to_dicts()[0]
        return [{"step": k, "persons": r[f"n{k}"], "median": r.get(f"m{k}")}
                for k in range(len(STEPS))]

    def _sorted(self) -> Any:
        return self.df.lazy().select("person_id", "ts", "seq", "event").sort(
            "person_id", "ts", "seq")

    def transitions(self) -> Answer:
        pl = self.pl
        same = pl.col("person_id") == pl.col("person_id").shift(1)
        c = self._sorted().filter(~(same & (pl.col("event") == pl.col("event").shift(1)))
                                  .fill_null(False))
        nxt = pl.col("person_id").shift(-1) == pl.col("person_id")
        t = c.with_columns(
            to=pl.when(nxt).then(pl.col("event").shift(-1)),
            gap=(pl.col("ts").shift(-1) - pl.col("ts")).dt.total_microseconds() / 1e6,
        ).filter(pl.col("to").is_not_null())
        e = t.group_by(pl.col("event").alias("from"), "to").agg(
            transitions=pl.len(), persons=pl.col("person_id").n_unique(),
            median_seconds=pl.col("gap").median())
        e = e.with_columns(
            probability_out=pl.col("transitions") / pl.col("transitions").sum().over("from"),
            probability_in=pl.col("transitions") / pl.col("transitions").sum().over("to"))
        return e.collect()

    def transition_counts(self) -> Answer:
        pl = self.pl
        nxt = pl.col("person_id").shift(-1) == pl.col("person_id")
        t = self._sorted().with_columns(to=pl.when(nxt).then(pl.col("event").shift(-1)))
        return (t.filter(pl.col("to").is_not_null()).group_by(
            pl.col("event").alias("from"), "to").agg(transitions=pl.len()).collect())

    def _converted(self) -> tuple[Any, Any]:
        pl = self.pl
        lf = self.df.lazy()
        a = lf.filter(pl.col("event") == COHORT_DID).group_by("person_id").agg(
            entered_at=pl.col("ts").min())
        b = lf.filter(pl.col("event") == COHORT_DID_NOT).select("person_id", tb=pl.col("ts"))
        conv = (a.join(b, on="person_id")
                .filter((pl.col("tb") > pl.col("entered_at"))
                        & (pl.col("tb") <= pl.col("entered_at") + timedelta(
                            days=COHORT_WITHIN_D)))
                .select("person_id").unique())
        return a, conv

    def cohort(self) -> Answer:
        a, conv = self._converted()
        return a.join(conv, on="person_id", how="anti").sort("person_id").collect()

    def conversion(self) -> Answer:
        a, conv = self._converted()
        n, c = self.pl.collect_all([a.select(self.pl.len()), conv.select(self.pl.len())])
        return [{"entered": n.item(), "converted": c.item()}]

    def retention(self) -> Answer:
        pl = self.pl
        lf = self.df.lazy()

        def week(col: Any) -> Any:
            return (col.dt.epoch("d") + 3) // 7

        c = lf.filter(pl.col("event") == RET_START).group_by("person_id").agg(
            t0=pl.col("ts").min()).with_columns(w0=week(pl.col("t0")))
        sizes = c.group_by("w0").agg(persons=pl.len())
        b = (lf.filter(pl.col("event") == RET_BACK).select("person_id", "ts")
             .join(c, on="person_id").filter(pl.col("ts") > pl.col("t0"))
             .with_columns(period=week(pl.col("ts")) - pl.col("w0"))
             .filter(pl.col("period").is_between(1, RET_PERIODS))
             .group_by("w0", "period").agg(returned=pl.col("person_id").n_unique()))
        zero = sizes.select("w0", period=pl.lit(0, pl.Int64), returned=pl.col("persons"))
        r = pl.concat([b.with_columns(pl.col("period").cast(pl.Int64),
                                      pl.col("returned").cast(pl.Int64)),
                       zero.with_columns(pl.col("returned").cast(pl.Int64))])
        r = r.join(sizes, on="w0").with_columns(
            cohort=(pl.col("w0") * 7 - 3).cast(pl.Int32).cast(pl.Date))
        return r.collect()

    def nps(self) -> Answer:
        pl = self.pl
        lf = self.df.lazy()
        o = lf.filter(pl.col("event") == NPS_OUTCOME).select("person_id", "ts", "score")
        t = (lf.filter(pl.col("event").is_in(TOUCH_EVENTS) | pl.col("utm_campaign")
                       .is_not_null())
             .group_by("person_id", "ts")
             .agg(pl.col("channel").sort_by("seq").last(),
                  pl.col("campaign").sort_by("seq").last()))
        j = o.sort("ts").join_asof(t.sort("ts"), on="ts", by="person_id",
                                   strategy="backward",
                                   tolerance=timedelta(days=NPS_WITHIN_D))
        g = j.group_by("channel", "campaign").agg(
            outcomes=pl.len(), persons=pl.col("person_id").n_unique(),
            mean_value=pl.col("score").mean(), promoters=(pl.col("score") >= 9).sum(),
            detractors=(pl.col("score") <= 6).sum(), answered=pl.col("score").count())
        return g.collect()


# -- 4. pandas (vectorised, no apply) --------------------------------------------------------
class Pandas:
    name = "pandas"

    def load(self, parquet: str, workspace: str) -> None:
        import pandas as pd

        self.pd = pd
        self.df = pd.read_parquet(parquet)

    def funnel(self) -> Answer:
        pd, df = self.pd, self.df
        s = df.loc[df["event"].isin(STEPS), ["person_id", "ts", "event"]]
        a = s[s["event"] == STEPS[0]].groupby("person_id", as_index=False)["ts"].min()
        a = a.rename(columns={"ts": "t0"})
        window = pd.Timedelta(hours=FUNNEL_WITHIN_H)
        for k in range(1, len(STEPS)):
            e = s.loc[s["event"] == STEPS[k], ["person_id", "ts"]]
            j = a.dropna(subset=[f"t{k - 1}"]).merge(e, on="person_id")
            j = j[(j["ts"] > j[f"t{k - 1}"]) & (j["ts"] <= j["t0"] + window)]
            hit = j.groupby("person_id", as_index=False)["ts"].min().rename(
                columns={"ts": f"t{k}"})
            a = a.merge(hit, on="person_id", how="left")
        sec = {k: (a[f"t{k}"].astype("int64") // 1000 + 500) // 1000 for k in range(len(STEPS))}
        out = []
        for k in range(len(STEPS)):
            reached = a[f"t{k}"].notna()
            med = None
            if k:
                med = (sec[k][reached] - sec[k - 1][reached]).astype("float64").median()
            out.append({"step": k, "persons": int(reached.sum()), "median": med})
        return out

    def _sorted(self) -> Any:
        return self.df[["person_id", "ts", "seq", "event"]].sort_values(
            ["person_id", "ts", "seq"], ignore_index=True)

    def _pairs(self, d: Any) -> Any:
        import numpy as np

        pid, ev = d["person_id"].to_numpy(), d["event"].to_numpy()
        nxt = np.zeros(len(d), bool)
        nxt[:-1] = pid[1:] == pid[:-1]
        return nxt, pid, ev

    def transitions(self) -> Answer:
        import numpy as np

        d = self._sorted()
        nxt, pid, ev = self._pairs(d)
        keep = np.ones(len(d), bool)
        keep[1:] = ~(nxt[:-1] & (ev[1:] == ev[:-1]))
        d = d[keep].reset_index(drop=True)
        nxt, pid, ev = self._pairs(d)
        ts = d["ts"].to_numpy().astype("datetime64[us]").astype("int64")
        frame = self.pd.DataFrame({
            "from": ev[:-1][nxt[:-1]], "to": ev[1:][nxt[:-1]], "person_id": pid[:-1][nxt[:-1]],
            "gap": (ts[1:] - ts[:-1])[nxt[:-1]] / 1e6})
        e = frame.groupby(["from", "to"], as_index=False, observed=True).agg(
            transitions=("gap", "size"), persons=("person_id", "nunique"),
            median_seconds=("gap", "median"))
        n = e["transitions"].astype("float64")
        e["probability_out"] = n / e.groupby("from")["transitions"].transform("sum")
        e["probability_in"] = n / e.groupby("to")["transitions"].transform("sum")
        return e

    def transition_counts(self) -> Answer:
        d = self._sorted()
        nxt, _, ev = self._pairs(d)
        frame = self.pd.DataFrame({"from": ev[:-1][nxt[:-1]], "to": ev[1:][nxt[:-1]]})
        return frame.value_counts().rename("transitions").reset_index()

    def _converted(self) -> tuple[Any, Any]:
        pd, df = self.pd, self.df
        a = df[df["event"] == COHORT_DID].groupby("person_id", as_index=False)["ts"].min()
        a = a.rename(columns={"ts": "entered_at"})
        b = df.loc[df["event"] == COHORT_DID_NOT, ["person_id", "ts"]]
        j = a.merge(b, on="person_id")
        j = j[(j["ts"] > j["entered_at"])
              & (j["ts"] <= j["entered_at"] + pd.Timedelta(days=COHORT_WITHIN_D))]
        return a, j["person_id"].unique()

    def cohort(self) -> Answer:
        a, conv = self._converted()
        m = a[~a["person_id"].isin(conv)].sort_values("person_id")
        return m

    def conversion(self) -> Answer:
        a, conv = self._converted()
        return [{"entered": len(a), "converted": len(conv)}]

    def retention(self) -> Answer:
        pd, df = self.pd, self.df

        def week(col: Any) -> Any:
            return (col.astype("datetime64[us]").astype("int64") // 86_400_000_000 + 3) // 7

        c = df[df["event"] == RET_START].groupby("person_id", as_index=False)["ts"].min()
        c = c.rename(columns={"ts": "t0"})
        c["w0"] = week(c["t0"])
        sizes = c.groupby("w0", as_index=False).size().rename(columns={"size": "persons"})
        b = df.loc[df["event"] == RET_BACK, ["person_id", "ts"]].merge(c, on="person_id")
        b = b[b["ts"] > b["t0"]]
        b["period"] = week(b["ts"]) - b["w0"]
        b = b[b["period"].between(1, RET_PERIODS)]
        r = b.groupby(["w0", "period"], as_index=False)["person_id"].nunique().rename(
            columns={"person_id": "returned"})
        zero = sizes.assign(period=0, returned=sizes["persons"])[["w0", "period", "returned"]]
        r = pd.concat([r, zero]).merge(sizes, on="w0")
        r["cohort"] = (pd.Timestamp("1970-01-01") + pd.to_timedelta(r["w0"] * 7 - 3, "D")
                       ).dt.date
        return r

    def nps(self) -> Answer:
        pd, df = self.pd, self.df
        o = df.loc[df["event"] == NPS_OUTCOME, ["person_id", "ts", "score"]]
        t = df.loc[df["event"].isin(TOUCH_EVENTS) | df["utm_campaign"].notna(),
                   ["person_id", "ts", "seq", "channel", "campaign"]]
        t = t.sort_values("seq").drop_duplicates(["person_id", "ts"], keep="last")
        j = pd.merge_asof(o.sort_values("ts"), t.sort_values("ts"), on="ts", by="person_id",
                          tolerance=pd.Timedelta(days=NPS_WITHIN_D), direction="backward")
        j["promoter"] = j["score"] >= 9
        j["detractor"] = j["score"] <= 6
        g = j.groupby(["channel", "campaign"], dropna=False, as_index=False).agg(
            outcomes=("person_id", "size"), persons=("person_id", "nunique"),
            mean_value=("score", "mean"), promoters=("promoter", "sum"),
            detractors=("detractor", "sum"), answered=("score", "count"))
        g = g.astype({"channel": object, "campaign": object})
        return [{k: (None if isinstance(v, float) and v != v and k in ("channel", "campaign")
                     else v) for k, v in r.items()} for r in _rows(g)]


# -- 5. retentioneering 5.x (what it supports) ----------------------------------------------
class Retentioneering:
    name = "retentioneering"

    def load(self, parquet: str, workspace: str) -> None:
        os.environ.setdefault("RETENTIONEERING_NO_TRACK", "1")
        import pandas as pd
        from retentioneering.eventstream import Eventstream

        df = pd.read_parquet(parquet, columns=["person_id", "event", "ts", "seq"])
        # Its index orders a path's events; ties in time go by seq, as for the other peers.
        df = df.sort_values(["person_id", "ts", "seq"]).drop(columns="seq")
        self.stream = Eventstream(df, schema={"path_cols": ["person_id"], "event_col": "event",
                                              "timestamp_col": "ts"})

    def funnel_open(self) -> Answer:
        r = self.stream.funnel_data(steps=STEPS)
        return [{"step": k, "persons": s["unique_paths"]} for k, s in enumerate(r["steps"])]

    def transition_counts(self) -> Answer:
        m = self.stream.transition_graph_data(edge_weight="count")
        long = m.stack().reset_index()
        long.columns = ["from", "to", "transitions"]
        synthetic = {"path_start", "path_end"}
        long = long[(long["transitions"] > 0) & ~long["from"].isin(synthetic)
                    & ~long["to"].isin(synthetic)]
        return long.astype({"from": str, "to": str})

    def conversion(self) -> Answer:
        r = self.stream.get_conversion_rate(COHORT_DID, COHORT_DID_NOT,
                                            within=f"{COHORT_WITHIN_D * 24 * 60}m")
        row = r.iloc[0]
        return [{"entered": int(row["paths_with_start"]), "converted": int(row["converted"])}]


PEERS: dict[str, type] = {p.name: p for p in (DuckDBSQL, Bowknot, Polars, Pandas,
                                              Retentioneering)}


def supported(peer: type) -> list[str]:
    return [q for q in QUESTIONS if hasattr(peer, q)]



