"""The demo story: a seeded, deterministic car-rental company, as Segment-spec events.

Everything is vectorised (numpy for the simulation, DuckDB for the JSON text): the only Python
loops run over campaigns, channels or chunks, never over persons or events, so the same code
serves the 10 k-event tests and the 100 M-event benchmarks. Persons are simulated in chunks of
`CHUNK_PERSONS`, each seeded from (seed, chunk number), which bounds memory and keeps the output
a pure function of (events, seed). The planted truths are in `TRUTHS` and docs/demo.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

Arr = npt.NDArray[Any]

START = datetime(2026, 7, 1, tzinfo=timezone.utc)
WINDOW_DAYS = 92
END = START + timedelta(days=WINDOW_DAYS)
CHUNK_PERSONS = 25_000  # ~500 k events per chunk: a few hundred MB at most, whatever the scale
EVENTS_PER_PERSON = 20.0  # measured mean of the simulation below; persons = events / this

SEC, MIN, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000
_T0 = int(START.timestamp()) * SEC
_W = WINDOW_DAYS * DAY
_NEVER = 2**62  # "no such time" that still compares as later than any real one

# --- the world: cities, locations, campaigns ------------------------------------------------
_CITIES = (  # code, name, time zone, phone country code
    ("ams", "Amsterdam", "Europe/Amsterdam", "31"),
    ("ber", "Berlin", "Europe/Berlin", "49"),
    ("lis", "Lisbon", "Europe/Lisbon", "351"),
    ("mad", "Madrid", "Europe/Madrid", "34"),
    ("mil", "Milan", "Europe/Rome", "39"),
)
_SITES = ("Airport", "Downtown", "Central Station", "North", "South", "East", "West", "Harbour")
_AIRPORT, _DOWNTOWN = 0, 1  # airports never close: the fallback when a chosen site is closed
_LOC_IDS = tuple(f"loc-{c[0]}-{s + 1:02d}" for c in _CITIES for s in range(len(_SITES)))


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day + "T00:00:00+00:00").timestamp()) * SEC - _T0


# Every Downtown site is closed before the free-day campaign goes out (0 of 5 open, as in the
# seed article); two more close later in the window and one opens during it.
_CLOSED = {
    "loc-ams-02": "2026-03-15", "loc-ber-02": "2026-04-30", "loc-lis-02": "2026-05-31",
    "loc-mad-02": "2026-07-10", "loc-mil-02": "2026-07-15",
    "loc-ber-06": "2026-08-31", "loc-mad-07": "2026-09-15",
}
_OPENED_LATE = {"loc-lis-08": "2026-08-01"}
_OPEN_FROM = np.array([_ms(_OPENED_LATE.get(i, "2015-01-01")) for i in _LOC_IDS], np.int64)
_OPEN_UNTIL = np.array([_ms(_CLOSED[i]) if i in _CLOSED else _NEVER for i in _LOC_IDS], np.int64)

_CHANNELS = ("email", "sms", "push")
_CAMPAIGNS: tuple[dict[str, Any], ...] = (
    # rates: per channel (open rate or None when the channel has no opens, click rate given
    # open, or given send when there are no opens).
    dict(id="free-day-downtown", name="A free day at a location near you", offer="free extra day",
         channels=("email",), rates={"email": (0.40, 0.45)}, audience="known", eligible="all",
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
_CAMPAIGN_BOOKING = (0.02, 0.30, 0.20)  # P(book right after the click); deal: new customers
_DEAL_REFUSED = 0.60  # existing customers who click the deal and try to book it
_DISCOUNT = np.array([1.0, 1.0, 0.80, 0.85])  # revenue factor: organic, then per campaign


def locations(seed: int = 7) -> pa.Table:
    """The ~40 rental locations. The list is part of the story, so it is the same for every
    seed (the seed is accepted for symmetry with `generate`): `campaigns()` and `TRUTHS` name
    closed locations and must hold whatever seed a test uses."""
    del seed
    city = [c for c in _CITIES for _ in _SITES]
    opened = [START + timedelta(milliseconds=int(v)) for v in _OPEN_FROM]
    closed = [START + timedelta(milliseconds=int(v)) if v < _NEVER else None for v in _OPEN_UNTIL]
    return pa.table({
        "location_id": list(_LOC_IDS),
        "name": [f"{c[1]} {s}" for c in _CITIES for s in _SITES],
        "city": [c[1] for c in city],
        "timezone": [c[2] for c in city],
        "opened_at": pa.array(opened, pa.timestamp("ms", tz="UTC")),
        "closed_at": pa.array(closed, pa.timestamp("ms", tz="UTC")),
    })


def campaigns() -> pa.Table:
    """The three campaigns of the story, one row each (`channel` joins the channels with '+')."""
    return pa.table({
        "campaign_id": [c["id"] for c in _CAMPAIGNS],
        "name": [c["name"] for c in _CAMPAIGNS],
        "channel": ["+".join(c["channels"]) for c in _CAMPAIGNS],
        "channels": pa.array([list(c["channels"]) for c in _CAMPAIGNS], pa.list_(pa.string())),
        "offer": [c["offer"] for c in _CAMPAIGNS],
        "promoted_location_ids": pa.array([list(c["promoted"]) for c in _CAMPAIGNS],
                                          pa.list_(pa.string())),
        "audience": [c["audience"] for c in _CAMPAIGNS],
        "eligibility": [c["eligible"] for c in _CAMPAIGNS],
        "sent_at": pa.array([START + timedelta(milliseconds=c["sent_at"]) for c in _CAMPAIGNS],
                            pa.timestamp("ms", tz="UTC")),
    })


# --- people and behaviour --------------------------------------------------------------------
_EXISTING, _SIGNUP, _ANON = 0, 1, 2
_SEGMENT_P = (0.25, 0.30, 0.45)
_WEB_SESSIONS = np.array([3.2, 2.6, 1.2])  # mean organic web sessions per segment
_ACQ = (("google", "cpc", "brand-search"), ("facebook", "social", "summer-prospecting"),
        ("email", "email", "partner-newsletter"), ("direct", "", ""),
        ("partner", "referral", "airline-partner"))
_ACQ_P = (0.35, 0.20, 0.10, 0.25, 0.10)
_DIRECT = 3  # direct visits carry no UTM parameters, so no context.campaign
APP_SHARE = 0.35  # of known persons
CHECKOUT_SHARE, ORGANIC_BOOKING = 0.25, 0.45  # of web sessions; of a known person's checkouts
CHECKOUT_LOOP_SHARE = 0.15
SKEWED_PERSON_SHARE, LATE_EVENT_SHARE = 0.05, 0.02
TICKETS_BASELINE, TICKETS_FREE_DAY, TICKETS_REFUSED = 0.05, 0.30, 0.25
CANCEL_SHARE = 0.08

_PAGES = ("/", "/cars", "/locations", "/deals", "/checkout", "/payment", "/locations/")
_PAGE_NAMES = ("Home", "Cars", "Locations", "Deals", "Checkout", "Payment", "Location")
_CHECKOUT, _LOCATION_PAGE = 4, 6
_SCREENS = ("Home", "Search", "Car Details", "Locations", "Profile")
_CLASSES = ("economy", "compact", "suv", "van", "premium")
_CLASS_P = (0.30, 0.30, 0.20, 0.10, 0.10)
_DAILY_EUR = np.array([32.0, 41.0, 68.0, 79.0, 115.0])
_TOPICS = ("billing", "damage", "pickup", "refund", "account", "closed_location",
           "offer_not_honoured")
_CANCEL_REASONS = ("plans changed", "found a cheaper option", "flight cancelled")
_SURVEYS = ("nps-relationship", "nps-free-day-downtown", "nps-summer-weekend", "nps-booking")
_FIRST = ("Anna", "Ben", "Clara", "David", "Eva", "Finn", "Greta", "Hugo", "Inês", "João",
          "Jürgen", "Lena", "Marco", "Nora", "Oskar", "Paula", "Sofia", "Søren", "Tomás", "Zoë")
_LAST = ("Jansen", "de Vries", "Müller", "Schmidt", "Silva", "Santos", "García", "López",
         "Rossi", "Bianchi", "O'Brien", "Novak", "Kowalski", "Bakker", "Weber", "Costa")

# NPS answers: P(score = 0..10). BASE has NPS +30, DIP has NPS 0 (-30 points), FREE_DAY a mean
# score near 4: the three distributions the planted truths are read from.
_NPS_BASE = np.array([.01, .01, .01, .02, .03, .05, .07, .12, .18, .22, .28])
_NPS_DIP = np.array([.02, .02, .03, .04, .06, .08, .10, .13, .17, .17, .18])
_NPS_FREE_DAY = np.array([.13, .08, .10, .12, .14, .14, .12, .08, .05, .02, .02])
_WHY = {  # (detractor, passive, promoter) texts per context; a few in Persian and Thai
    "good": ("easy pickup", "friendly staff", "clean car", "fair price", "quick booking",
             "รถสะอาด บริการดี", "ماشین تمیز بود"),
    "meh": ("long queue at the desk", "the app was slow", "a bit expensive", "ok",
            "pickup took too long"),
    "closed": ("the location was closed", "all the promoted locations were closed",
               "could not use the free day", "drove there and it was shut", "شعبه بسته بود",
               "สาขาปิด"),
    "refused": ("the deal was only for new customers", "loyal customers pay more",
                "offer refused at checkout", "مشتریان قدیمی تخفیف نمی‌گیرند",
                "ลูกค้าเก่าไม่ได้ส่วนลด"),
}
_WHY_FLAT = tuple(w for ws in _WHY.values() for w in ws)
_WHY_AT = {k: (_WHY_FLAT.index(v[0]), len(v)) for k, v in _WHY.items()}


def _nps(p: Arr) -> float:
    return round(100 * (float(p[9:].sum()) - float(p[:7].sum())), 1)


def _mean(p: Arr) -> float:
    return round(float((np.arange(11) * p).sum()), 2)


TRUTHS: dict[str, object] = {
    "window_start": "2026-07-01T00:00:00.000Z", "window_days": WINDOW_DAYS,
    "events_per_person": EVENTS_PER_PERSON, "sources": ["web", "app", "email", "sms", "push",
                                                        "support", "surveys"],
    "locations": len(_LOC_IDS), "locations_closed": sorted(_CLOSED),
    "locations_opened_in_window": sorted(_OPENED_LATE),
    "segments": dict(zip(("existing", "signup", "anonymous"), _SEGMENT_P, strict=True)),
    "acquisition": dict(zip((a[0] for a in _ACQ), _ACQ_P, strict=True)),
    "free_day_downtown": {
        "promoted": 5, "promoted_open": 0, "open_rate": 0.40, "click_of_opens": 0.45,
        "click_to_booking_3d": _CAMPAIGN_BOOKING[_FREE_DAY], "survey_id": _SURVEYS[1],
        "nps_clickers_mean_score": _mean(_NPS_FREE_DAY), "nps_clickers": _nps(_NPS_FREE_DAY),
        "ticket_share_clickers": TICKETS_FREE_DAY, "ticket_topic": "closed_location",
    },
    "new_customer_deal": {
        "audience": "all", "eligibility": "new_customers", "refused_reason": "not_eligible",
        "existing_clickers_refused": _DEAL_REFUSED,
        "new_customer_click_to_booking_3d": _CAMPAIGN_BOOKING[_DEAL],
        "survey_id": _SURVEYS[0], "nps_existing_before": _nps(_NPS_BASE),
        "nps_existing_after": _nps(_NPS_DIP), "nps_dip": _nps(_NPS_DIP) - _nps(_NPS_BASE),
        "ticket_share_refused": TICKETS_REFUSED, "ticket_topic": "offer_not_honoured",
    },
    "summer_weekend": {
        "open_rate": 0.30, "click_of_opens": 0.25,
        "click_to_booking_3d": _CAMPAIGN_BOOKING[_SUMMER], "survey_id": _SURVEYS[2],
        "nps_clickers": _nps(_NPS_BASE), "nps_clickers_mean_score": _mean(_NPS_BASE),
    },
    "checkout_loop_share": CHECKOUT_LOOP_SHARE, "checkout_loop_repetitions": [2, 4],
    "skewed_person_share": SKEWED_PERSON_SHARE, "skew_range_hours": [-72, 2],
    "late_event_share": LATE_EVENT_SHARE, "late_delay_hours": [1, 48],
    "corrected_timestamp_tolerance_ms": 1_000, "ticket_share_baseline": TICKETS_BASELINE,
}


class _Events:
    """Collects events as column frames (one frame per event kind and cause)."""

    COLUMNS = {"page": 0, "loc": 0, "utm": -1, "camp": -1, "chan": 0, "num": 0, "topic": 0,
               "score": 0, "why": 0, "cls": 0, "days": 0, "cents": 0, "survey": 0, "reason": 0,
               "fn": 0, "ln": 0, "ev": 0, "since": 0, "fb": 0, "gold": 0}
    KINDS = ("page", "screen", "identify", "Campaign Sent", "Campaign Opened", "Campaign Clicked",
             "Booking Completed", "Booking Cancelled", "Offer Refused", "Ticket Opened",
             "Ticket Closed", "survey_answered")

    def __init__(self) -> None:
        self.frames: list[dict[str, Arr]] = []

    def add(self, kind: str, src: int | Arr, p: Arr, t: Arr, **cols: int | Arr) -> None:
        m = len(p)
        if m:
            frame = {"k": np.full(m, self.KINDS.index(kind), np.int8), "p": p, "t": t,
                     "src": np.broadcast_to(np.asarray(src, np.int8), (m,))}
            frame.update({c: np.broadcast_to(np.asarray(v, np.int64), (m,))
                          for c, v in cols.items()})
            self.frames.append(frame)

    def columns(self) -> dict[str, Arr]:
        out = {c: np.concatenate([f[c] for f in self.frames]) for c in ("k", "p", "t", "src")}
        for c, default in self.COLUMNS.items():
            out[c] = np.concatenate([f[c] if c in f else np.full(len(f["p"]), default, np.int64)
                                     for f in self.frames])
        return out


def _pick(rng: np.random.Generator, p: Arr, times: Arr, share: float) -> tuple[Arr, Arr]:
    keep = rng.random(len(p)) < share
    return p[keep], times[keep]


def _u(rng: np.random.Generator, lo: int, hi: int, n: int) -> Arr:
    return rng.integers(lo, hi, n, dtype=np.int64)


def _layout(rng: np.random.Generator, k: Arr, start: Arr, span: Arr) -> tuple[Arr, Arr]:
    """Session start times: k[i] sessions for person i in [start, start + span), at least an
    hour apart, so a 30-minute inactivity rule splits them exactly as they were generated."""
    owner = np.repeat(np.arange(len(k)), k)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(k) - k, k)
    u = np.sort(rng.random(len(owner)) + owner)  # sorts within each owner, owners stay grouped
    free = np.maximum(span - (k + 1) * HOUR, 0)[owner]
    return owner, start[owner] + ((u - owner) * free).astype(np.int64) + rank * HOUR


def _loops(rng: np.random.Generator, n: int) -> Arr:
    """Checkout/payment repetitions of a checkout session: 1, or 2-4 for the checkout loop."""
    return np.where(rng.random(n) < CHECKOUT_LOOP_SHARE, _u(rng, 2, 5, n), 1)


def _pages(rng: np.random.Generator, ev: _Events, s: dict[str, Arr]) -> Arr:
    """Expands sessions into page (web) or screen (app) events; returns each session's end."""
    land = (s["land"] >= 0).astype(np.int64)
    n = land + s["nb"] + 2 * s["reps"]
    own = np.repeat(np.arange(len(n)), n)
    first = np.cumsum(n) - n
    r = np.arange(len(own)) - first[own]
    gap = _u(rng, 8 * SEC, 90 * SEC, len(own))
    gap[first] = 0
    csum = np.cumsum(gap)
    t = s["t"][own] + csum - csum[first][own]
    rb = r - land[own]  # rank after the landing page
    code = np.where(rb < s["nb"][own], s["b0"][own] + rb, _CHECKOUT + (rb - s["nb"][own]) % 2)
    code = np.where((land[own] == 1) & (r == 0), s["land"][own], code)
    app = s["src"][own] == 1
    code = np.where(app, rng.integers(0, len(_SCREENS), len(own)), code)
    utm = np.where(r == 0, s["utm"][own], -1)
    for kind, m in (("page", ~app), ("screen", app)):
        ev.add(kind, int(kind == "screen"), s["p"][own][m], t[m], page=code[m],
               loc=s["loc"][own][m], utm=utm[m])
    return t[first + n - 1]


def _scores(rng: np.random.Generator, dist: Arr, n: int, context: str = "") -> tuple[Arr, Arr]:
    """NPS scores drawn from `dist`, each with a short "why" that fits the score and context."""
    score = rng.choice(11, n, p=dist)
    bucket = np.where(score >= 9, 0, 1)  # indexes _WHY: good, meh, closed, refused
    if context == "closed":
        bucket[score <= 8] = 2
    elif context == "refused":
        bucket[score <= 6] = 3
    at = np.array([a for a, _ in _WHY_AT.values()])
    size = np.array([z for _, z in _WHY_AT.values()])
    return score, at[bucket] + (rng.random(n) * size[bucket]).astype(np.int64)
