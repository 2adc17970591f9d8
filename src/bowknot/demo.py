"""The demo story: a seeded, deterministic car-rental company, as Segment-spec events.

Everything is vectorised (numpy simulates, DuckDB writes the JSON text): Python loops run only
over campaigns, channels and chunks, never over persons or events, so one code path serves the
10 k-event tests and the 100 M-event benchmarks. Persons are simulated in chunks of
`CHUNK_PERSONS`, each seeded from (seed, chunk number): memory stays bounded and the output is a
pure function of (events, seed). The planted truths are in `TRUTHS`, explained in docs/demo.md.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

Arr = npt.NDArray[Any]

START = datetime(2026, 7, 1, tzinfo=UTC)
WINDOW_DAYS = 92
END = START + timedelta(days=WINDOW_DAYS)
CHUNK_PERSONS = 25_000  # ~500 k events, a few hundred MB per chunk whatever the scale
EVENTS_PER_PERSON = 20.0  # the simulation's measured mean; persons = events / this

SEC, MIN, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000
_T0 = int(START.timestamp()) * SEC
_W = WINDOW_DAYS * DAY  # times inside the simulation are ms since START
_NEVER = 2**62  # "no such time", later than any real one

# --- the world: cities, locations, campaigns ------------------------------------------------
_CITIES = (  # code, name, time zone, phone country code
    ("ams", "Amsterdam", "Europe/Amsterdam", "31"), ("ber", "Berlin", "Europe/Berlin", "49"),
    ("lis", "Lisbon", "Europe/Lisbon", "351"), ("mad", "Madrid", "Europe/Madrid", "34"),
    ("mil", "Milan", "Europe/Rome", "39"))
_SITES = ("Airport", "Downtown", "Central Station", "North", "South", "East", "West", "Harbour")
_AIRPORT, _DOWNTOWN = 0, 1  # airports never close: the fallback when a chosen site is closed
_LOC_IDS = tuple(f"loc-{c[0]}-{s + 1:02d}" for c in _CITIES for s in range(len(_SITES)))


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day + "T00:00:00+00:00").timestamp()) * SEC - _T0


# Every Downtown site is closed before the free-day campaign goes out (0 of 5 open, as in the
# seed article); two more close later in the window and one opens during it.
_CLOSED = {"loc-ams-02": "2026-03-15", "loc-ber-02": "2026-04-30", "loc-lis-02": "2026-05-31",
           "loc-mad-02": "2026-07-10", "loc-mil-02": "2026-07-15", "loc-ber-06": "2026-08-31",
           "loc-mad-07": "2026-09-15"}
_OPENED_LATE = {"loc-lis-08": "2026-08-01"}
_OPEN_FROM = np.array([_ms(_OPENED_LATE.get(i, "2015-01-01")) for i in _LOC_IDS], np.int64)
_OPEN_UNTIL = np.array([_ms(_CLOSED[i]) if i in _CLOSED else _NEVER for i in _LOC_IDS], np.int64)

_SOURCES = ("web", "app", "email", "sms", "push", "support", "surveys")
_CHANNELS = _SOURCES[2:5]  # a channel's events come from the source of the same name
_CAMPAIGNS: tuple[dict[str, Any], ...] = (
    # rates per channel: (open rate, or None where nothing tracks opens; click rate of opens,
    # or of sends without opens)
    dict(id="free-day-downtown", name="A free day at a location near you", offer="free extra day",
         channels=("email",), rates={"email": (0.40, 0.45)}, audience="all", eligible="all",
         promoted=tuple(f"loc-{c[0]}-02" for c in _CITIES), sent_at=20 * DAY + 8 * HOUR),
    dict(id="new-customer-deal", name="New here? 20% off your first rental",
         offer="20% off for new customers", channels=("sms", "email"),
         rates={"sms": (None, 0.08), "email": (0.30, 0.30)}, audience="all",
         eligible="new_customers", promoted=(), sent_at=42 * DAY + 10 * HOUR),
    dict(id="summer-weekend", name="Summer weekend getaway", offer="15% off weekend rentals",
         channels=("email", "push"), rates={"email": (0.30, 0.25), "push": (0.30, 0.25)},
         audience="all", eligible="all", promoted=(), sent_at=57 * DAY + 16 * HOUR),
)
_FREE_DAY, _DEAL, _SUMMER = 0, 1, 2
_CAMPAIGN_BOOKING = (0.02, 0.30, 0.20)  # P(book right after the click); the deal: new customers
_DEAL_REFUSED = 0.60  # existing customers who click the deal, try it and are refused
_DISCOUNT = np.array([1.0, 1.0, 0.80, 0.85])  # revenue factor: organic, then per campaign


def _utc(ms: int) -> datetime:
    return START + timedelta(milliseconds=ms)


def locations(seed: int = 7) -> pa.Table:
    """The 40 rental locations. They are part of the story, so the same for every seed (the
    seed is accepted for symmetry with `generate`): `campaigns()` and `TRUTHS` name them."""
    del seed
    cities = [c for c in _CITIES for _ in _SITES]
    ts = pa.timestamp("ms", tz="UTC")
    return pa.table({
        "location_id": list(_LOC_IDS),
        "name": [f"{c[1]} {s}" for c in _CITIES for s in _SITES],
        "city": [c[1] for c in cities], "timezone": [c[2] for c in cities],
        "opened_at": pa.array([_utc(int(v)) for v in _OPEN_FROM], ts),
        "closed_at": pa.array([_utc(int(v)) if v < _NEVER else None for v in _OPEN_UNTIL], ts),
    })


def campaigns() -> pa.Table:
    """The three campaigns, one row each; `channel` joins the channels with '+', `eligibility`
    says who can redeem the offer (the new-customer deal goes to all, only new ones can)."""
    strings = pa.list_(pa.string())
    return pa.table({
        "campaign_id": [c["id"] for c in _CAMPAIGNS], "name": [c["name"] for c in _CAMPAIGNS],
        "channel": ["+".join(c["channels"]) for c in _CAMPAIGNS],
        "channels": pa.array([list(c["channels"]) for c in _CAMPAIGNS], strings),
        "offer": [c["offer"] for c in _CAMPAIGNS],
        "promoted_location_ids": pa.array([list(c["promoted"]) for c in _CAMPAIGNS], strings),
        "audience": [c["audience"] for c in _CAMPAIGNS],
        "eligibility": [c["eligible"] for c in _CAMPAIGNS],
        "sent_at": pa.array([_utc(c["sent_at"]) for c in _CAMPAIGNS], pa.timestamp("ms", "UTC")),
    })


# --- people and behaviour --------------------------------------------------------------------
_EXISTING, _SIGNUP, _ANON = 0, 1, 2
_SEGMENT_P = (0.25, 0.30, 0.45)
_WEB_SESSIONS = np.array([5.0, 4.0, 2.4])  # mean extra organic web visits per segment
_ACQ = (("google", "cpc", "brand-search"), ("facebook", "social", "summer-prospecting"),
        ("email", "email", "partner-newsletter"), ("direct", "", ""),
        ("partner", "referral", "airline-partner"))
_ACQ_P = (0.35, 0.20, 0.10, 0.25, 0.10)
_DIRECT = 3  # direct visits carry no UTM parameters, so no context.campaign
APP_SHARE = 0.35  # of known persons
CHECKOUT_SHARE, ORGANIC_BOOKING = 0.25, 0.45  # of web visits; of a known person's checkouts
CHECKOUT_LOOP_SHARE = 0.15
SKEWED_PERSON_SHARE, LATE_EVENT_SHARE = 0.05, 0.02
TICKETS_BASELINE, TICKETS_FREE_DAY, TICKETS_REFUSED = 0.05, 0.30, 0.25
CANCEL_SHARE = 0.08

_PAGES = ("/", "/cars", "/locations", "/deals", "/checkout", "/payment", "/locations/")
_PAGE_NAMES = ("Home", "Cars", "Locations", "Deals", "Checkout", "Payment", "Location")
_DEALS, _CHECKOUT, _LOCATION_PAGE = 3, 4, 6
_SCREENS = ("Home", "Search", "Car Details", "Locations", "Profile")
_CLASSES = ("economy", "compact", "suv", "van", "premium")
_CLASS_P = (0.30, 0.30, 0.20, 0.10, 0.10)
_DAILY_EUR = np.array([32.0, 41.0, 68.0, 79.0, 115.0])
_TOPICS = ("billing", "damage", "pickup", "refund", "account", "closed_location",
           "offer_not_honoured")
_CANCEL_REASONS = ("plans changed", "found a cheaper option", "flight cancelled")
_SURVEYS = ("nps-relationship", "nps-free-day-downtown", "nps-summer-weekend", "nps-booking")
_FIRST = ("Anna", "Ben", "Clara", "David", "Eva", "Finn", "Greta", "Hugo", "Inês", "João",
          "Jürgen", "Lena", "Marco", "Nora", "Oskar", "Paula", "Sofia", "Björn", "Tomás", "Zoë")
_LAST = ("Jansen", "de Vries", "Müller", "Schmidt", "Silva", "Santos", "García", "López",
         "Rossi", "Bianchi", "O'Brien", "Novak", "Kowalski", "Bakker", "Weber", "Costa")

# NPS answers, P(score = 0..10): BASE has NPS +30, DIP NPS 0 (30 points down), FREE_DAY a mean
# score near 4. The planted truths are computed from these, so they cannot drift apart.
_NPS_BASE = np.array([.01, .01, .01, .02, .03, .05, .07, .12, .18, .22, .28])
_NPS_DIP = np.array([.02, .02, .03, .04, .06, .08, .10, .13, .17, .17, .18])
_NPS_FREE_DAY = np.array([.13, .08, .10, .12, .14, .14, .12, .08, .05, .02, .02])
_WHY = (  # promoters, the rest, then detractors of the two broken promises
    ("easy pickup", "friendly staff", "clean car", "fair price", "quick booking",
     "รถสะอาด บริการดี", "ماشین تمیز بود"),
    ("long queue at the desk", "the app was slow", "a bit expensive", "ok",
     "pickup took too long"),
    ("the location was closed", "all the promoted locations were closed",
     "could not use the free day", "drove there and it was shut", "شعبه بسته بود", "สาขาปิด"),
    ("the deal was only for new customers", "loyal customers pay more",
     "offer refused at checkout", "مشتریان قدیمی تخفیف نمی‌گیرند", "ลูกค้าเก่าไม่ได้ส่วนลด"),
)
_WHY_AT = np.cumsum([0] + [len(w) for w in _WHY])


def _nps(p: Arr) -> float:
    return round(100 * (float(p[9:].sum()) - float(p[:7].sum())), 1)


def _mean(p: Arr) -> float:
    return round(float((np.arange(11) * p).sum()), 2)


TRUTHS: dict[str, object] = {
    "window_start": "2026-07-01T00:00:00.000Z", "window_days": WINDOW_DAYS,
    "events_per_person": EVENTS_PER_PERSON, "sources": list(_SOURCES),
    "locations": len(_LOC_IDS), "locations_closed": sorted(_CLOSED),
    "locations_opened_in_window": sorted(_OPENED_LATE),
    "segments": dict(zip(("existing", "signup", "anonymous"), _SEGMENT_P, strict=True)),
    "acquisition": dict(zip((a[0] for a in _ACQ), _ACQ_P, strict=True)),
    "free_day_downtown": {
        "promoted": 5, "promoted_open": 0, "open_rate": 0.40, "click_of_opens": 0.45,
        "click_to_booking_3d": _CAMPAIGN_BOOKING[_FREE_DAY], "survey_id": _SURVEYS[1],
        "nps_clickers_mean_score": _mean(_NPS_FREE_DAY), "nps_clickers": _nps(_NPS_FREE_DAY),
        "ticket_share_clickers": TICKETS_FREE_DAY, "ticket_topic": "closed_location"},
    "new_customer_deal": {
        "audience": "all", "eligibility": "new_customers", "refused_reason": "not_eligible",
        "existing_clickers_refused": _DEAL_REFUSED,
        "new_customer_click_to_booking_3d": _CAMPAIGN_BOOKING[_DEAL],
        "survey_id": _SURVEYS[0], "nps_existing_before": _nps(_NPS_BASE),
        "nps_existing_after": _nps(_NPS_DIP), "nps_dip": _nps(_NPS_DIP) - _nps(_NPS_BASE),
        "ticket_share_refused": TICKETS_REFUSED, "ticket_topic": "offer_not_honoured"},
    "summer_weekend": {
        "open_rate": 0.30, "click_of_opens": 0.25,
        "click_to_booking_3d": _CAMPAIGN_BOOKING[_SUMMER], "survey_id": _SURVEYS[2],
        "nps_clickers": _nps(_NPS_BASE), "nps_clickers_mean_score": _mean(_NPS_BASE)},
    "checkout_loop_share": CHECKOUT_LOOP_SHARE, "checkout_loop_repetitions": [2, 4],
    "skewed_person_share": SKEWED_PERSON_SHARE, "skew_range_hours": [-72, 2],
    "late_event_share": LATE_EVENT_SHARE, "late_delay_hours": [1, 48],
    "corrected_timestamp_tolerance_ms": 1_000, "ticket_share_baseline": TICKETS_BASELINE,
}


class _Events:
    """Collects events as column frames, one per event kind and cause."""

    # name: (default, dtype); narrow types, because a chunk is memory-bound, not CPU-bound
    COLUMNS: dict[str, tuple[int, type[np.integer[Any]]]] = {
        "k": (0, np.int8), "src": (0, np.int8), "p": (0, np.int32), "t": (0, np.int64),
        "page": (0, np.int8), "loc": (0, np.int8), "utm": (-1, np.int8), "camp": (-1, np.int8),
        "chan": (0, np.int8), "num": (0, np.int32), "topic": (0, np.int8), "score": (0, np.int8),
        "why": (0, np.int8), "cls": (0, np.int8), "days": (0, np.int16), "cents": (0, np.int32),
        "survey": (0, np.int8), "reason": (0, np.int8), "fn": (0, np.int8), "ln": (0, np.int8),
        "variant": (0, np.int8), "since": (0, np.int16), "fb": (0, np.int32), "gold": (0, np.int8)}
    KINDS = ("page", "screen", "identify", "Campaign Sent", "Campaign Opened", "Campaign Clicked",
             "Booking Completed", "Booking Cancelled", "Offer Refused", "Ticket Opened",
             "Ticket Closed", "survey_answered")

    def __init__(self) -> None:
        self.frames: list[tuple[int, dict[str, int | Arr]]] = []

    def add(self, kind: str, src: int, p: Arr, t: Arr, **cols: int | Arr) -> None:
        if len(p):
            self.frames.append((len(p), {"k": self.KINDS.index(kind), "src": src, "p": p, "t": t,
                                         **cols}))

    def columns(self, keep: Arr) -> dict[str, Arr]:
        """All frames as one set of columns, gathered at the indexes `keep`."""
        ends = np.cumsum([m for m, _ in self.frames])
        out = {}
        for c, (default, dtype) in self.COLUMNS.items():
            col = np.full(int(ends[-1]), default, dtype)
            for (m, f), end in zip(self.frames, ends, strict=True):
                if c in f:
                    col[end - m:end] = f[c]
            out[c] = col[keep]
        return out


def _u(rng: np.random.Generator, lo: int, hi: int, n: int) -> Arr:
    return rng.integers(lo, hi, n, dtype=np.int64)


def _pick(rng: np.random.Generator, p: Arr, t: Arr, share: float) -> tuple[Arr, Arr]:
    keep = rng.random(len(p)) < share
    return p[keep], t[keep]


def _layout(rng: np.random.Generator, k: Arr, start: Arr, span: Arr) -> tuple[Arr, Arr]:
    """Visit start times: k[i] visits for person i in [start, start + span), at least an hour
    apart, so a 30-minute inactivity rule splits them exactly as they were generated."""
    owner = np.repeat(np.arange(len(k)), k)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(k) - k, k)
    u = np.sort(rng.random(len(owner)) + owner) - owner  # sorted within each person
    free = np.maximum(span - (k + 1) * HOUR, 0)[owner]
    return owner, start[owner] + (u * free).astype(np.int64) + rank * HOUR


def _loops(rng: np.random.Generator, n: int) -> Arr:
    """Checkout/payment rounds of a checkout visit: 1, or 2-4 for the checkout loop."""
    return np.where(rng.random(n) < CHECKOUT_LOOP_SHARE, _u(rng, 2, 5, n), 1)


def _visits(p: Arr, t: Arr, **kw: int | Arr) -> dict[str, Arr]:
    """Visit columns: landing page (or -1), browse pages b0.. (nb of them), checkout rounds,
    outcome (1 booking, 2 refused) and the campaign behind it (or -1)."""
    cols: dict[str, int | Arr] = {"src": 0, "utm": -1, "land": -1, "loc": 0, "b0": 0, "nb": 1,
                                  "reps": 0, "out": 0, "camp": -1}
    cols.update(kw)
    return {"p": p, "t": t} | {c: np.broadcast_to(np.asarray(v, np.int64), p.shape).copy()
                               for c, v in cols.items()}


def _pages(rng: np.random.Generator, ev: _Events, s: dict[str, Arr]) -> Arr:
    """Expands visits into page (web) or screen (app) events; returns each visit's end."""
    land = (s["land"] >= 0).astype(np.int64)
    n = land + s["nb"] + 2 * s["reps"]
    own, first = np.repeat(np.arange(len(n)), n), np.cumsum(n) - n
    r = np.arange(len(own)) - first[own]
    gap = _u(rng, 8 * SEC, 90 * SEC, len(own))
    gap[first] = 0
    csum = np.cumsum(gap)
    t = s["t"][own] + csum - csum[first][own]
    rb, nb = r - land[own], s["nb"][own]  # rank after the landing page
    code = np.where(rb < nb, s["b0"][own] + rb, _CHECKOUT + (rb - nb) % 2)
    code = np.where((land[own] == 1) & (r == 0), s["land"][own], code)
    app = s["src"][own] == 1
    code = np.where(app, rng.integers(0, len(_SCREENS), len(own)), code)
    utm = np.where(r == 0, s["utm"][own], -1)  # UTM parameters are on the landing URL only
    for kind, m in (("page", ~app), ("screen", app)):
        ev.add(kind, int(kind == "screen"), s["p"][own][m], t[m], page=code[m],
               loc=s["loc"][own][m], utm=utm[m])
    end: Arr = t[first + n - 1]
    return end


def _answers(rng: np.random.Generator, ev: _Events, p: Arr, t: Arr, dist: Arr, survey: int,
             camp: int = -1, broken: int = 0) -> None:
    """NPS answers drawn from `dist`, each with a "why" fitting its score; `broken` (2 closed
    location, 3 refused deal) gives the unhappy ones the reasons of that broken promise."""
    score = rng.choice(11, len(p), p=dist)
    unhappy = (score <= (8 if broken == 2 else 6)) & (broken > 0)
    bucket = np.where(score >= 9, 0, np.where(unhappy, broken, 1))  # indexes _WHY
    size = _WHY_AT[bucket + 1] - _WHY_AT[bucket]
    # squared: the Persian and Thai texts end each list and are drawn less often
    why = _WHY_AT[bucket] + (rng.random(len(p)) ** 2 * size).astype(np.int64)
    ev.add("survey_answered", 6, p, t, survey=survey, score=score, why=why, camp=camp)


def _simulate(rng: np.random.Generator, n: int, events: int = 0,
              ) -> tuple[dict[str, Arr], dict[str, Arr]]:
    """One chunk of `n` persons: (event columns, shuffled; person columns); with `events`, only
    the first persons whose events add up to about that many are kept. The order matters:
    sign-ups fix who is known, that fixes campaign recipients, clicks fix the campaign visits,
    and organic bookings keep out of the 3 days after a click, so click-to-booking rates
    measure the campaigns alone."""
    ev = _Events()
    seg = rng.choice(3, n, p=_SEGMENT_P)
    existing, signup = seg == _EXISTING, seg == _SIGNUP
    city = rng.integers(0, len(_CITIES), n)
    acq = rng.choice(len(_ACQ), n, p=_ACQ_P)
    app = (seg != _ANON) & (rng.random(n) < APP_SHARE)
    skew = np.where(rng.random(n) < SKEWED_PERSON_SHARE, _u(rng, -3 * DAY, 2 * HOUR + 1, n), 0)

    # Organic web visits: existing customers all window long, newcomers for up to a month.
    k = np.minimum(1 + rng.poisson(_WEB_SESSIONS[seg]), 12)
    arrive = np.where(existing, 0, _u(rng, 0, _W - DAY, n))
    span = np.where(existing, _W, np.minimum(30 * DAY, _W - arrive))
    owner, start = _layout(rng, k, arrive, span)
    m, first = len(owner), np.cumsum(k) - k
    signup_at = first + (rng.random(n) * k).astype(np.int64)  # the visit with the sign-up
    checkout = rng.random(m) < CHECKOUT_SHARE
    checkout[signup_at[signup]] = False  # people sign up while browsing, and book later
    utm = np.full(m, -1)
    utm[first] = np.where(acq == _DIRECT, -1, acq)  # the acquisition channel, first visit only
    web = _visits(owner, start, utm=utm, nb=1 + rng.binomial(3, 0.5, m),
                  reps=np.where(checkout, _loops(rng, m), 0))
    web_end = _pages(rng, ev, web)

    # The knot: a sign-up identifies at the end of its sign-up visit; existing customers are
    # known from the start and identify on their first visit.
    known_at = np.where(existing, -_NEVER, _NEVER)
    sg, ex = np.flatnonzero(signup), np.flatnonzero(existing)
    known_at[sg] = web_end[signup_at[sg]] + _u(rng, 5 * SEC, 40 * SEC, len(sg))
    idp = np.concatenate([sg, ex])
    since = np.where(existing[idp], _u(rng, 60, 2500, len(idp)), 0)  # customer for days
    ev.add("identify", 0, idp, np.concatenate([known_at[sg], start[first[ex]] + 2 * SEC]),
           fn=rng.integers(0, len(_FIRST), len(idp)), ln=rng.integers(0, len(_LAST), len(idp)),
           variant=rng.choice(4, len(idp), p=(0.80, 0.10, 0.05, 0.05)), since=since,
           fb=-since * 86_400 + _u(rng, 0, 20 * 86_400, len(idp)),  # first booking, seconds
           gold=rng.random(len(idp)) < 0.3)

    # The app, for some known persons: screens only, from the moment they are known.
    ap = np.flatnonzero(app)
    a_from = np.maximum(known_at[ap], 0)
    a_owner, a_start = _layout(rng, 1 + rng.poisson(2.5, len(ap)), a_from, _W - a_from)
    _pages(rng, ev, _visits(ap[a_owner], a_start, src=1, nb=2 + rng.binomial(3, 0.5,
                                                                              len(a_owner))))

    # Campaigns go to everyone known at send time (push only to app users).
    first_click = np.full((len(_CAMPAIGNS), n), _NEVER)
    click_chan = np.zeros((len(_CAMPAIGNS), n), np.int64)
    for c, camp in enumerate(_CAMPAIGNS):
        for name in camp["channels"]:
            ch = _CHANNELS.index(name)
            rp = np.flatnonzero((known_at < camp["sent_at"]) & (app | (name != "push")))
            sent = camp["sent_at"] + _u(rng, 0, 30 * MIN, len(rp))
            ev.add("Campaign Sent", 2 + ch, rp, sent, camp=c, chan=ch)
            open_rate, click_rate = camp["rates"][name]
            if open_rate is None:
                cp, ct = _pick(rng, rp, sent + 30 * SEC + _u(rng, 0, HOUR, len(rp)), click_rate)
            else:
                opened = sent + MIN + rng.exponential(3 * HOUR, len(rp)).astype(np.int64)
                op, ot = _pick(rng, rp, opened, open_rate)
                ev.add("Campaign Opened", 2 + ch, op, ot, camp=c, chan=ch)
                cp, ct = _pick(rng, op, ot + 5 * SEC + _u(rng, 0, 3 * MIN, len(op)), click_rate)
            ev.add("Campaign Clicked", 2 + ch, cp, ct, camp=c, chan=ch)
            earlier = ct < first_click[c, cp]
            first_click[c, cp[earlier]] = ct[earlier]
            click_chan[c, cp[earlier]] = ch

    # A first click opens a web visit with the campaign's UTM parameters.
    visits = []
    for c in range(len(_CAMPAIGNS)):
        cp = np.flatnonzero(first_click[c] < _NEVER)
        q = len(cp)
        go = rng.random(q) < _CAMPAIGN_BOOKING[c]
        out = go.astype(np.int64)
        if c == _DEAL:  # existing customers try the deal and are refused at payment
            old = existing[cp]
            go = np.where(old, rng.random(q) < _DEAL_REFUSED, go)
            out = np.where(old, 2 * go, out)
        free_day = c == _FREE_DAY  # lands on the (closed) Downtown site of the person's city
        visits.append(_visits(
            cp, first_click[c, cp] + _u(rng, 5 * SEC, 60 * SEC, q),
            utm=len(_ACQ) + 3 * c + click_chan[c, cp], land=_LOCATION_PAGE if free_day else _DEALS,
            loc=city[cp] * len(_SITES) + _DOWNTOWN, b0=np.where(go, 1, 2 if free_day else 1),
            nb=go | (rng.random(q) < 0.5), reps=np.where(go, _loops(rng, q), 0), out=out, camp=c))
    cv = {key: np.concatenate([v[key] for v in visits]) for key in visits[0]}
    cv_end = _pages(rng, ev, cv)

    # Checkout outcomes: bookings (at an open site of the person's city), refusals, nothing.
    near_click = np.zeros(m, bool)
    for fc in first_click[:, owner]:
        near_click |= (web_end >= fc - HOUR) & (web_end <= fc + 3 * DAY + HOUR)
    web["out"] = checkout & (start >= known_at[owner]) & ~near_click & (
        rng.random(m) < ORGANIC_BOOKING)
    vp, v_end = np.concatenate([owner, cv["p"]]), np.concatenate([web_end, cv_end])
    out, vcamp = np.concatenate([web["out"], cv["out"]]), np.concatenate([web["camp"], cv["camp"]])
    b = np.flatnonzero(out == 1)
    bp, bt, nbk = vp[b], v_end[b] + _u(rng, 10 * SEC, 60 * SEC, len(b)), len(b)
    loc = city[bp] * len(_SITES) + rng.integers(0, len(_SITES), nbk)
    shut = (bt < _OPEN_FROM[loc]) | (bt >= _OPEN_UNTIL[loc])
    loc = np.where(shut, city[bp] * len(_SITES) + _AIRPORT, loc)
    cls, days = rng.choice(len(_CLASSES), nbk, p=_CLASS_P), 1 + rng.poisson(2.0, nbk)
    eur = days * _DAILY_EUR[cls] * rng.uniform(0.9, 1.2, nbk) * _DISCOUNT[vcamp[b] + 1]
    ev.add("Booking Completed", 0, bp, bt, loc=loc, camp=vcamp[b], num=np.arange(nbk), cls=cls,
           days=days, cents=np.round(eur * 100).astype(np.int64))
    cx = np.flatnonzero(rng.random(nbk) < CANCEL_SHARE)
    ev.add("Booking Cancelled", 0, bp[cx], bt[cx] + _u(rng, HOUR, 10 * DAY, len(cx)), loc=loc[cx],
           num=cx, reason=rng.integers(0, len(_CANCEL_REASONS), len(cx)))
    rf = np.flatnonzero(out == 2)
    rp, rt = vp[rf], v_end[rf] + _u(rng, 5 * SEC, 30 * SEC, len(rf))
    ev.add("Offer Refused", 0, rp, rt, camp=_DEAL)

    # Support tickets: a low baseline, plus the two broken promises.
    kn = np.flatnonzero(seg != _ANON)
    k_from = np.maximum(known_at[kn], 0)
    fd = np.flatnonzero(first_click[_FREE_DAY] < _NEVER)
    tickets = [
        _pick(rng, kn, k_from + (rng.random(len(kn)) * (_W - k_from)).astype(np.int64),
              TICKETS_BASELINE),
        _pick(rng, fd, first_click[_FREE_DAY, fd] + _u(rng, HOUR, 2 * DAY, len(fd)),
              TICKETS_FREE_DAY),
        _pick(rng, rp, rt + _u(rng, HOUR, 2 * DAY, len(rp)), TICKETS_REFUSED)]
    tp, tt = (np.concatenate(x) for x in zip(*tickets, strict=True))
    topic = np.concatenate([rng.integers(0, 5, len(tickets[0][0])),
                            np.full(len(tickets[1][0]), 5), np.full(len(tickets[2][0]), 6)])
    ev.add("Ticket Opened", 5, tp, tt, num=np.arange(len(tp)), topic=topic)
    ev.add("Ticket Closed", 5, tp, tt + _u(rng, HOUR, 72 * HOUR, len(tp)),
           num=np.arange(len(tp)), topic=topic)

    # NPS answers, drawn so that the planted differences appear (see TRUTHS).
    deal_at = _CAMPAIGNS[_DEAL]["sent_at"]
    sw = np.flatnonzero(first_click[_SUMMER] < _NEVER)
    _answers(rng, ev, *_pick(rng, ex, _u(rng, DAY, deal_at - DAY, len(ex)), 0.35), _NPS_BASE, 0)
    _answers(rng, ev, *_pick(rng, ex, deal_at + _u(rng, DAY, 30 * DAY, len(ex)), 0.35),
             _NPS_DIP, 0, broken=3)
    _answers(rng, ev, *_pick(rng, sg, known_at[sg] + _u(rng, 3 * DAY, 30 * DAY, len(sg)), 0.25),
             _NPS_BASE, 0)
    _answers(rng, ev, *_pick(rng, fd, first_click[_FREE_DAY, fd] + _u(rng, DAY, 4 * DAY, len(fd)),
                             0.5), _NPS_FREE_DAY, 1, _FREE_DAY, broken=2)
    _answers(rng, ev, *_pick(rng, sw, first_click[_SUMMER, sw] + _u(rng, DAY, 4 * DAY, len(sw)),
                             0.5), _NPS_BASE, 2, _SUMMER)
    _answers(rng, ev, *_pick(rng, bp, bt + _u(rng, 2 * DAY, 7 * DAY, nbk), 0.15), _NPS_BASE, 3)

    t = np.concatenate([f["t"] for _, f in ev.frames])  # the rest is gathered once, below
    inside = (t >= 0) & (t < _W)  # the story ends with the window
    if events:  # persons are alike whatever their number, so keeping the first is fair
        p = np.concatenate([f["p"] for _, f in ev.frames])
        made = np.cumsum(np.bincount(p[inside], minlength=n))
        inside &= p <= np.searchsorted(made, events)
    keep = np.flatnonzero(inside)
    return ev.columns(keep[rng.permutation(len(keep))]), {
        "city": city, "skew": skew, "known_at": known_at}


# --- text ------------------------------------------------------------------------------------
# Timestamps and ids are built in numpy as fixed-width bytes: formatting them in SQL (strftime,
# printf) was half of DuckDB's time, while gathering rows of a lookup table is nearly free.
_LUT_FROM = (_T0 - 4 * DAY) // MIN  # skewed clocks run up to 3 days behind, and late
_LUT_TO = (_T0 + _W + 4 * DAY) // MIN  # events arrive up to 2 days after the window


@functools.cache
def _clock_text() -> tuple[Arr, Arr]:
    """'YYYY-MM-DDTHH:MM:' for every minute the story's timestamps can fall in, and 'SS.mmmZ'
    for every millisecond of a minute, as rows of bytes."""
    minutes = np.arange(_LUT_FROM, _LUT_TO).astype("datetime64[m]")
    text = np.char.add(np.datetime_as_string(minutes, unit="m").astype("S16"), b":")
    s, ms = np.divmod(np.arange(MIN), SEC)
    digits = [s // 10, s % 10, np.full(MIN, ord(".") - 48), ms // 100, ms // 10 % 10, ms % 10,
              np.full(MIN, ord("Z") - 48)]
    return text.view(np.uint8).reshape(-1, 17), (np.stack(digits, 1) + 48).astype(np.uint8)


def _text(rows: Arr, present: Arr | None = None) -> pa.Array:
    """Rows of bytes, (n, width), as a string array without a Python step per row; where
    `present` is False the string is empty."""
    n, width = rows.shape if present is None else (len(present), rows.shape[1])
    lengths = np.full(n, width) if present is None else np.where(present, width, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    data = rows if present is None else rows[present]
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets),
                                       pa.py_buffer(np.ascontiguousarray(data)))


def _spliced(*parts: bytes | Arr) -> Arr:
    """Fixed-width byte rows from literal parts and (n, width) matrices, side by side. (The
    copy is strided, a few ns a byte: fine for ids and timestamps, not for whole payloads.)"""
    n = next(len(x) for x in parts if not isinstance(x, bytes))
    cols = [np.broadcast_to(np.frombuffer(x, np.uint8), (n, len(x))) if isinstance(x, bytes)
            else x for x in parts]
    return np.concatenate(cols, axis=1)


def _iso(ms: Arr) -> Arr:
    minute, second = _clock_text()
    return _spliced(minute[ms // MIN - _LUT_FROM], second[ms % MIN])


def _device_ids(seed: int, first: int, n: int) -> Arr:
    """(n, 16) hex digits: splitmix64, a bijection, of (seed, device number), so all unique."""
    z = (np.uint64(seed) << np.uint64(40)) ^ np.arange(first, first + n, dtype=np.uint64)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    nibbles = np.stack([(z >> np.uint64(4 * i)) & np.uint64(15) for i in range(15, -1, -1)], 1)
    digits: Arr = np.frombuffer(b"0123456789abcdef", np.uint8)[nibbles.astype(np.intp)]
    return digits


def _chunk_columns(seed: int, chunk: int, n: int, events: int = 0) -> pa.Table:
    rng = np.random.default_rng([seed, chunk])
    cols, people = _simulate(rng, n, events)
    p, t, src = cols.pop("p"), cols.pop("t"), cols["src"]
    m = len(t)
    client = src <= 1  # web and app stamp events with the device clock; servers are right
    off = np.where(client, people["skew"][p], 0)
    delay = np.where(rng.random(m) < LATE_EVENT_SHARE, _u(rng, HOUR, 2 * DAY + 1, m),
                     _u(rng, 0, 5 * SEC + 1, m))
    pid = chunk * CHUNK_PERSONS + p
    devices = _device_ids(seed, 2 * chunk * CHUNK_PERSONS, 2 * n)  # web, app per person
    return pa.table(cols | {
        "ot": _text(_iso(_T0 + t + off)), "st": _text(_iso(_T0 + t + delay + off)),
        "rt": _text(_iso(_T0 + t + delay + _u(rng, 0, 301, m))),  # rt - (st - ot) = t + <0.3 s
        "aid": _text(_spliced(b',"anonymousId":"', devices[2 * p + (src == 1)], b'"'), client),
        "uid": ~client | (t >= people["known_at"][p]), "pid": pid, "city": people["city"][p],
        "true_ms": _T0 + t,
    })


def _lit(items: Any) -> str:
    """A DuckDB list literal of strings (all of them ours; quotes doubled all the same)."""
    return "[" + ", ".join("'" + str(s).replace("'", "''") + "'" for s in items) + "]"


def _j(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


_UTM = [f',"campaign":{_j(dict(source=s, medium=m, name=n))}' for s, m, n in _ACQ] + [
    f',"campaign":{_j(dict(source=ch, medium="crm", name=c["id"]))}'
    for c in _CAMPAIGNS for ch in _CHANNELS]
_CAMP_PROPS = [_j(dict(campaign_id=c["id"], campaign_name=c["name"], channel=ch, offer=c["offer"]))
               for c in _CAMPAIGNS for ch in _CHANNELS]
_DEVICES = [',"app":{"name":"Bowknot Rentals","version":"3.2.1"},"device":{"type":"' + d + '"}'
            for d in ("ios", "android")]
_ASCII = "replace(replace(strip_accents({0}), ' ', ''), '''', '')"  # for e-mail addresses
# Each event kind's keys are written out, so absent keys are left out rather than null; one
# CASE per part evaluates only the rows of its kind.
_PAYLOAD_SQL = """
WITH x AS (
  SELECT *, CASE WHEN k = 0 AND page = 6 THEN '/locations/' || {locs}[loc + 1]
                 WHEN k = 0 THEN {pages}[page + 1] END AS path,
    CASE WHEN k = 2 THEN {first}[fn + 1] END AS first,
    CASE WHEN k = 2 THEN {last}[ln + 1] END AS last
  FROM chunk
), y AS (
  SELECT *, CASE WHEN k = 2 THEN concat(lower({a_first}), '.', lower({a_last}), pid, '@',
                                        {domains}[pid % 3 + 1]) END AS email
  FROM x
)
SELECT {head} '"type":"', {types}[k + 1], '","messageId":"demo-{seed}-', mid, '"',
  aid,
  CASE WHEN uid THEN concat(',"userId":"u_', pid, '"') END,
  CASE WHEN k = 0 THEN concat(',"name":"', {page_names}[page + 1], '"')
       WHEN k = 1 THEN concat(',"name":"', {screens}[page + 1], '"')
       WHEN k >= 3 THEN concat(',"event":"', {kinds}[k + 1], '"') END,
  CASE WHEN k = 2 THEN concat(',"traits":', rtrim(to_json(struct_pack(
      email := CASE variant WHEN 0 THEN email WHEN 2 THEN concat(' ', email, ' ')
               WHEN 3 THEN upper(email) ELSE concat({a_first}, '.', {a_last}, pid, '@Example.com')
               END,
      name := first || ' ' || last, city := {cities}[city + 1],
      phone := concat('+', {phones}[city + 1], ' 6',
                      lpad(((pid::BIGINT * 7919 + {seed}) % 100000000)::VARCHAR, 8, '0')),
      plan := CASE WHEN since > 0 AND gold = 1 THEN 'gold' ELSE 'standard' END)), '}}'),
      CASE WHEN since > 0 THEN concat(',"customer_since":"', DATE '2026-07-01' - since::INTEGER,
        '","first_booking_at":"', strftime(make_timestamp((fb::BIGINT * 1000 + {t0}) * 1000),
        '%Y-%m-%dT%H:%M:%S.%gZ'), '"}}') ELSE '}}' END)
    WHEN k = 0 THEN concat(',"properties":{{"path":"', path, '","url":"{site}', path, '"}}')
    WHEN k = 1 THEN ',"properties":{{}}'
    WHEN k IN (6, 7) THEN concat(',"properties":{{"booking_id":"bk-{chunk}-', num,
      '","location_id":"', {locs}[loc + 1], '"',
      CASE WHEN k = 6 THEN concat(',"revenue":', (cents / 100)::DECIMAL(14, 2),
        ',"currency":"EUR","days":', days, ',"car_class":"', {classes}[cls + 1], '"')
        ELSE concat(',"reason":"', {cancel}[reason + 1], '"') END,
      CASE WHEN camp >= 0 THEN concat(',"campaign_id":"', {camp_ids}[camp + 1], '"') END, '}}')
    WHEN k = 8 THEN concat(',"properties":{{"campaign_id":"', {camp_ids}[camp + 1],
      '","offer":"', {offers}[camp + 1], '","reason":"not_eligible"}}')
    WHEN k IN (9, 10) THEN concat(',"properties":{{"ticket_id":"tk-{chunk}-', num,
      '","topic":"', {topics}[topic + 1], '"}}')
    WHEN k = 11 THEN concat(',"properties":{{"survey_id":"', {surveys}[survey + 1],
      '","kind":"nps","score":', score, ',"why":', {whys}[why + 1],
      CASE WHEN camp >= 0 THEN concat(',"campaign_id":"', {camp_ids}[camp + 1], '"') END, '}}')
    ELSE concat(',"properties":', {camp_props}[camp * 3 + chan + 1])
  END,
  ',"context":{{"library":{{"name":"bowknot-demo","version":"1.0"}},"timezone":"',
  {tzs}[city + 1], '"',
  CASE WHEN k = 0 THEN concat(',"page":{{"path":"', path, '","url":"{site}', path, '"}}') END,
  CASE WHEN utm >= 0 THEN {utms}[utm + 1] END,
  CASE WHEN src = 1 THEN {devices}[pid % 2 + 1] END,
  '}},"originalTimestamp":"', ot, '","sentAt":"', st, '","receivedAt":"', rt, '"}}{tail}')
  AS {out}
FROM y
"""


def _payload_sql(seed: int, chunk: int, jsonl: bool) -> str:
    # JSON Lines put "source" first in the object itself; `generate` returns it as a column.
    head = (f"concat('{{\"source\":\"', {_lit(_SOURCES)}[src + 1], '\",',"
            if jsonl else f"{_lit(_SOURCES)}[src + 1] AS source, concat('{{',")
    return _PAYLOAD_SQL.format(
        seed=seed, chunk=chunk, t0=_T0, site="https://rentals.example", head=head,
        tail="\n" if jsonl else "", out="line" if jsonl else "payload",
        locs=_lit(_LOC_IDS), pages=_lit(_PAGES), first=_lit(_FIRST), last=_lit(_LAST),
        a_first=_ASCII.format("first"), a_last=_ASCII.format("last"),
        domains=_lit(("example.com", "example.org", "example.net")),
        types=_lit(("page", "screen", "identify") + ("track",) * 9), kinds=_lit(_Events.KINDS),
        page_names=_lit(_PAGE_NAMES), screens=_lit(_SCREENS),
        cities=_lit(c[1] for c in _CITIES), phones=_lit(c[3] for c in _CITIES),
        tzs=_lit(c[2] for c in _CITIES), classes=_lit(_CLASSES),
        camp_ids=_lit(c["id"] for c in _CAMPAIGNS), offers=_lit(c["offer"] for c in _CAMPAIGNS),
        cancel=_lit(_CANCEL_REASONS), topics=_lit(_TOPICS), surveys=_lit(_SURVEYS),
        whys=_lit(_j(w) for ws in _WHY for w in ws), camp_props=_lit(_CAMP_PROPS),
        utms=_lit(_UTM), devices=_lit(_DEVICES))


# --- the public API --------------------------------------------------------------------------
def _frames(events: int, seed: int) -> Iterator[pa.Table]:
    """The simulated columns, chunk by chunk, with their message numbers (`mid`)."""
    if events < 1 or seed < 0:
        raise ValueError(f"demo needs events >= 1 and seed >= 0 (got events={events}, "
                         f"seed={seed}); pass e.g. events=10_000, seed=7")
    persons, first_message = max(1, round(events / EVENTS_PER_PERSON)), 0
    if persons < CHUNK_PERSONS * 0.8:  # one chunk: simulate spare persons, keep `events` worth;
        # otherwise the row count varies by 3 % between seeds at 10 k events, 9 % at 1 k
        persons, target = persons + persons // 4 + 10, events
    else:
        target = 0  # many persons: the count varies by well under 1 %
    for chunk, first_person in enumerate(range(0, persons, CHUNK_PERSONS)):
        cols = _chunk_columns(seed, chunk, min(CHUNK_PERSONS, persons - first_person), target)
        mid = pa.array(np.arange(first_message, first_message + cols.num_rows, dtype=np.int64))
        first_message += cols.num_rows
        yield cols.append_column("mid", mid)


def _render(events: int, seed: int, jsonl: bool) -> Iterator[pa.Table]:
    con = duckdb.connect()
    try:
        for chunk, cols in enumerate(_frames(events, seed)):
            con.register("chunk", cols)
            # A plain projection: DuckDB keeps the input order, so the output is deterministic.
            yield con.sql(_payload_sql(seed, chunk, jsonl)).to_arrow_table()
            con.unregister("chunk")
    finally:
        con.close()


def generate(events: int = 10_000, seed: int = 7) -> Iterator[pa.Table]:
    """Yield the demo story in chunks: pyarrow Tables with `source` and `payload` (Segment-spec
    JSON text) columns, rows shuffled within a chunk, about `events` rows in all (within 10 %)."""
    schema = pa.schema([("source", pa.string()), ("payload", pa.string())])
    for table in _render(events, seed, jsonl=False):
        yield table.cast(schema)


def _write_lines(f: io.BufferedIOBase, table: pa.Table) -> int:
    for arr in table.column("line").chunks:
        # The lines end in "\n" already: write the string data buffer as it is.
        width = 8 if pa.types.is_large_string(arr.type) else 4
        offsets = np.frombuffer(arr.buffers()[1], f"<i{width}", len(arr) + 1, arr.offset * width)
        f.write(memoryview(arr.buffers()[2])[int(offsets[0]):int(offsets[-1])])
    return int(table.num_rows)


def write_jsonl(path: str | Path, events: int = 10_000, seed: int = 7) -> int:
    """Write the story as JSON Lines, each payload with an extra top-level "source" field,
    chunk by chunk; return the number of rows written. A name ending in ``.gz`` writes it
    gzipped (level 1: about 15 % of the plain size, e.g. 7 GB instead of 46 GB at 100 M
    events; the importer reads it as it is)."""
    rows = 0
    gz = str(path).endswith(".gz")
    with (gzip.open(path, "wb", compresslevel=1) if gz else open(path, "wb")) as f, \
            ThreadPoolExecutor(1) as writer:
        # Writing chunk i (I/O, without the GIL) overlaps rendering chunk i + 1.
        pending: Future[int] | None = None
        for table in _render(events, seed, jsonl=True):
            rows += pending.result() if pending else 0
            pending = writer.submit(_write_lines, f, table)
        rows += pending.result() if pending else 0
    return rows
