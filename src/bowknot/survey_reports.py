"""What the answers say (issue 6): NPS with its adjusted-Wald interval, CSAT and CES (mean
with a 95 % interval, and the share of top scores), overall and over time (day, week, month),
by touchpoint (the last campaign and channel before the answer, journeys/touchpoints.py), by
lifecycle stage (the ``profiles`` view) and by saved cohort; verbatims with the journey that
led to them; and the experience impact of a campaign.

Answers are the ``survey_answered`` events of a survey (the page's, imported ones, the demo's);
a "why" given after the score (``survey_commented``) belongs to its answer. Every breakdown is
one grouped SQL statement; only the per-group figures are computed in Python.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ValidationError

PERIODS = ("day", "week", "month")
BY = (*PERIODS, "touchpoint", "lifecycle", "cohort:NAME")

# Each answer once, with its person (NULL until a build), time, score and "why".
_ANSWERS = """
    SELECT a.person_id, a.timestamp AS answered_at,
           TRY_CAST(a.properties->>'score' AS INTEGER) AS score,
           coalesce(nullif(trim(a.properties->>'why'), ''), c.why) AS why
    FROM person_events a
    LEFT JOIN (SELECT properties->>'invitation_id' AS invitation_id,
                      any_value(nullif(trim(properties->>'why'), '')) AS why
               FROM events WHERE event = 'survey_commented'
                 AND properties->>'survey_id' = $survey GROUP BY 1) c
      ON c.invitation_id = a.properties->>'invitation_id'
    WHERE a.event = 'survey_answered' AND a.properties->>'survey_id' = $survey
      AND TRY_CAST(a.properties->>'score' AS INTEGER) IS NOT NULL"""


def _rows(ws: Any, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows as dicts, with named ``$parameters``."""
    cur = ws.store.cursor().execute(sql, params)
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _figures(kind: str, low: int, high: int, n: int, promoters: int, detractors: int,
             total: float, squares: float, top: int) -> dict[str, Any]:
    """The headline figures of a group of answers: NPS with its interval for NPS surveys;
    otherwise the mean with a 95 % interval and the share of the top two scores (CSAT: 4-5,
    CES: 6-7, "satisfied" and "easy")."""
    if kind == "nps":
        return nps(promoters, detractors, n)
    if n == 0:
        return {"mean": None, "mean_low": None, "mean_high": None, "top2": None}
    mean = total / n
    var = max(squares / n - mean * mean, 0.0) * n / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    return {"mean": round(mean, 3), "mean_low": round(max(mean - half, low), 3),
            "mean_high": round(min(mean + half, high), 3), "top2": round(top / n, 4)}


def report(ws: Any, survey_id: str, by: str | None = None, *,
           within: str = "7d") -> dict[str, Any]:
    """Survey ``survey_id``'s answers: the distribution, flags and headline figures, and with
    ``by`` one row per group: ``day``/``week``/``month`` (of the answer), ``touchpoint`` (the
    last campaign touch within ``within`` before it), ``lifecycle`` (the person's stage now)
    or ``cohort:NAME`` (in the saved cohort or not)."""
    survey = ws.surveys.get(survey_id)
    kind, low, high = survey["kind"], survey["scale_min"], survey["scale_max"]
    params = {"survey": survey_id, "top": high - 1}
    dist_rows = _rows(ws, f"SELECT score, count(*) AS n FROM ({_ANSWERS}) GROUP BY 1 ORDER BY 1",
                      {"survey": survey_id})
    dist = {r["score"]: r["n"] for r in dist_rows}
    n = sum(dist.values())
    out: dict[str, Any] = {
        "survey_id": survey_id, "kind": kind, "answers": n, "distribution": dist,
        "flags": ws.store.query("""SELECT f.kind, count(*) AS n
            FROM survey_flags f JOIN survey_invitations i USING (invitation_id)
            WHERE i.survey_id = ? GROUP BY 1""", [survey_id]),
        **_figures(kind, low, high, n, sum(v for k, v in dist.items() if k >= 9),
                   sum(v for k, v in dist.items() if k <= 6),
                   float(sum(k * v for k, v in dist.items())),
                   float(sum(k * k * v for k, v in dist.items())),
                   sum(v for k, v in dist.items() if k >= high - 1))}
    if by is None:
        return out
    group, keys, join = _grouping(ws, by, params)
    if by == "touchpoint":
        return {**out, "by": by, "within": within,
                "rows": _touchpoints(ws, survey_id, kind, low, high, within)}
    rows = _rows(ws, f"""
        SELECT {group}, count(*) AS answers,
               count_if(score >= 9) AS promoters, count_if(score <= 6) AS detractors,
               sum(score)::DOUBLE AS total, sum(score * score)::DOUBLE AS squares,
               count_if(score >= $top) AS top
        FROM ({_ANSWERS}) s {join} GROUP BY ALL ORDER BY ALL""", params)
    return {**out, "by": by, "rows": [
        {**{k: r[k] for k in keys}, "answers": r["answers"],
         **_figures(kind, low, high, r["answers"], r["promoters"], r["detractors"],
                    r["total"], r["squares"], r["top"])} for r in rows]}


def _grouping(ws: Any, by: str, params: dict[str, Any]) -> tuple[str, list[str], str]:
    """(the group expressions, their names, a join) for ``by``."""
    if by in PERIODS:
        return f"date_trunc('{by}', answered_at)::DATE AS {by}", [by], ""
    if by == "lifecycle":
        return ("coalesce(p.lifecycle, 'not built yet') AS lifecycle", ["lifecycle"],
                "LEFT JOIN profiles p USING (person_id)")
    if by == "touchpoint":
        return "", [], ""
    if by.startswith("cohort:"):
        name = by.split(":", 1)[1]
        ws.journeys.cohorts.get(name)  # a clear error when there is no such cohort
        params["cohort"] = name
        return (f"""CASE WHEN person_id IN (SELECT person_id FROM cohort_members
                     WHERE name = $cohort) THEN 'in {name}' ELSE 'not in {name}' END
                   AS cohort""", ["cohort"], "")
    raise ValidationError(f"by={by!r}: use one of {', '.join(BY)}.", code="invalid_by")


def _touchpoints(ws: Any, survey_id: str, kind: str, low: int, high: int,
                 within: str) -> list[dict[str, Any]]:
    """Answers by the last touch before them (journeys/touchpoints.py), with the figures."""
    from .journeys.steps import Step

    result = ws.journeys.touchpoints(Step.build("survey_answered", {"survey_id": survey_id}),
                                     within=within, value="score")
    rows = []
    for r in result.rows():
        n = int(r["answered"] or 0)
        mean = r["mean_value"]
        figures = (nps(int(r["promoters"] or 0), int(r["detractors"] or 0), n)
                   if kind == "nps" else {"mean": None if mean is None else round(mean, 3)})
        rows.append({"channel": r["channel"], "campaign": r["campaign"], "answers": n,
                     "persons": r["persons"], **figures})
    return rows


def verbatims(ws: Any, survey_id: str, *, limit: int = 20, journey: int = 5
              ) -> list[dict[str, Any]]:
    """The latest ``limit`` answers with a "why", newest first, each with the ``journey``
    events of the person before it (oldest first: time, step, campaign)."""
    ws.surveys.get(survey_id)
    for name, value in (("limit", limit), ("journey", journey)):
        if not isinstance(value, int) or not 0 <= value <= 1000:
            raise ValidationError(f"{name} must be a whole number from 0 to 1000.",
                                  code="invalid_" + name)
    rows = _rows(ws, f"""
        WITH v AS (SELECT * FROM ({_ANSWERS}) WHERE why IS NOT NULL AND person_id IS NOT NULL
                   ORDER BY answered_at DESC, person_id LIMIT $limit),
        j AS (SELECT v.person_id, v.answered_at, e.timestamp AS ts,
                     CASE WHEN e.type = 'track' THEN e.event
                          WHEN e.name IS NOT NULL THEN e.type || ':' || e.name
                          ELSE e.type END AS step,
                     e.properties->>'campaign_id' AS campaign,
                     row_number() OVER (PARTITION BY v.person_id, v.answered_at
                                        ORDER BY e.timestamp DESC, e.key DESC) AS back
              FROM v JOIN person_events e ON e.person_id = v.person_id
               AND e.timestamp < v.answered_at)
        SELECT v.person_id, v.answered_at, v.score, v.why,
               coalesce(list({{'time': j.ts, 'step': j.step, 'campaign': j.campaign}}
                             ORDER BY j.ts) FILTER (WHERE j.back <= $journey), []) AS journey
        FROM v LEFT JOIN j USING (person_id, answered_at)
        GROUP BY ALL ORDER BY v.answered_at DESC, v.person_id""",
                           {"survey": survey_id, "limit": limit, "journey": journey})
    return rows


def campaign_impact(ws: Any, campaign_id: str, *, within_days: float = 3.0,
                    survey_id: str | None = None, themes: int = 5) -> dict[str, Any]:
    """The experience impact of a campaign: NPS (with its interval) of those who converted
    (booked within ``within_days`` of their first click), those who clicked and did not
    convert, those who ignored it, and those it was not sent to, from answers given after the
    send, with the most frequent "why"s of each group.
    """
    booking = ws.settings.booking_event
    params: list[Any] = [campaign_id, campaign_id, booking, within_days, campaign_id]
    survey_filter = ""
    if survey_id is not None:
        survey_filter = "AND properties->>'survey_id' = ?"
        params.append(survey_id)
    rows = ws.store.query(f"""
        WITH pe AS (SELECT person_id, event, timestamp, properties FROM person_events
                    WHERE person_id IS NOT NULL),
        sent AS (SELECT person_id, min(timestamp) AS t FROM pe
                 WHERE event = 'Campaign Sent' AND properties->>'campaign_id' = ? GROUP BY 1),
        clicked AS (SELECT person_id, min(timestamp) AS t FROM pe
                    WHERE event = 'Campaign Clicked' AND properties->>'campaign_id' = ?
                    GROUP BY 1),
        converted AS (SELECT DISTINCT c.person_id FROM clicked c JOIN pe b
                      ON b.person_id = c.person_id AND b.event = ? AND b.timestamp > c.t
                      AND b.timestamp <= c.t + to_microseconds((? * 86400e6)::BIGINT)),
        known AS (SELECT DISTINCT person_id FROM persons WHERE known_at IS NOT NULL),
        grp AS (
          SELECT k.person_id,
                 CASE WHEN v.person_id IS NOT NULL THEN 'converted'
                      WHEN c.person_id IS NOT NULL THEN 'clicked_not_converted'
                      WHEN s.person_id IS NOT NULL THEN 'ignored'
                      ELSE 'not_sent' END AS grp
          FROM known k LEFT JOIN sent s USING (person_id) LEFT JOIN clicked c USING (person_id)
          LEFT JOIN converted v USING (person_id)),
        answers AS (
          SELECT person_id, TRY_CAST(properties->>'score' AS INTEGER) AS score,
                 nullif(trim(properties->>'why'), '') AS why
          FROM pe WHERE event = 'survey_answered'
            AND timestamp > (SELECT min(t) FROM sent WHERE ? IS NOT NULL) {survey_filter})
        SELECT g.grp, count(DISTINCT g.person_id) AS persons,
               count(a.score) AS answers,
               count_if(a.score >= 9) AS promoters, count_if(a.score <= 6) AS detractors,
               list(a.why) FILTER (WHERE a.why IS NOT NULL) AS whys
        FROM grp g LEFT JOIN answers a USING (person_id) GROUP BY g.grp""", params)
    order = ["converted", "clicked_not_converted", "ignored", "not_sent"]
    groups = []
    for r in sorted(rows, key=lambda r: order.index(r["grp"])):
        counts: dict[str, int] = {}
        for why in r["whys"] or []:  # the themes: verbatims by frequency, per group
            counts[why] = counts.get(why, 0) + 1
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:themes]
        groups.append({"group": r["grp"], "persons": r["persons"], "answers": r["answers"],
                       **nps(r["promoters"], r["detractors"], r["answers"]),
                       "themes": [{"why": w, "answers": n} for w, n in top]})
    return {"campaign_id": campaign_id, "within_days": within_days, "survey_id": survey_id,
            "groups": groups}


def nps(promoters: int, detractors: int, n: int, z: float = 1.96) -> dict[str, Any]:
    """NPS (-100..100) with the adjusted-Wald interval (Sauro & Lewis): add 3/4 of an answer
    to promoters and detractors and 3 to n, then a Wald interval on the difference."""
    if n == 0:
        return {"nps": None, "nps_low": None, "nps_high": None, "promoters": 0,
                "detractors": 0}
    na = n + 3
    pp, pd = (promoters + 0.75) / na, (detractors + 0.75) / na
    adj = pp - pd
    half = z * math.sqrt(max(pp + pd - adj * adj, 0.0) / na)
    return {"nps": round(100 * (promoters - detractors) / n, 1),
            "nps_low": round(100 * max(adj - half, -1.0), 1),
            "nps_high": round(100 * min(adj + half, 1.0), 1),
            "promoters": promoters, "detractors": detractors}
