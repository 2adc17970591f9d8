"""Survey pages (public, no JavaScript, no admin token: the signed link is the credential)
and the surveys admin API."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from .. import mailer, survey_text, webhooks
from ..errors import BowknotError, ValidationError
from ..workspace import Workspace
from .auth import require_admin
from .pages import templates

public = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], tags=["surveys"])

# Pages for people, not for caches or search engines.
HEADERS = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex",
           "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                      "form-action 'self'; frame-ancestors 'none'"}


def _ws(request: Request) -> Workspace:
    ws: Workspace = request.app.state.ws
    return ws


def _page(request: Request, token: str, state: str, inv: dict[str, Any] | None,
          status: int = 200, **extra: Any) -> Response:
    ws = _ws(request)
    lang = request.query_params.get("lang")
    survey: dict[str, Any] = {"kind": "nps", "language": "en", "translations": {},
                              "company": None, "scale_min": 0, "scale_max": 10, "reasons": []}
    if inv is not None:
        survey = ws.surveys.get(inv["survey_id"])
        available = sorted({*survey_text.LANGUAGES, *survey["translations"]})
        lang = survey_text.pick_language(lang or inv["language"], available, inv["language"])
    else:
        lang = survey_text.pick_language(
            lang or request.headers.get("accept-language"), list(survey_text.LANGUAGES), "en")
    t = ws.surveys.texts(survey, lang)
    ctx = {"t": t, "lang": lang, "dir": survey_text.direction(lang), "state": state,
           "token": token, "csrf": ws.surveys.csrf(token), "low": survey["scale_min"],
           "high": survey["scale_max"], "reasons": survey["reasons"] or [], "chosen": None,
           "error": None, "ask_why": False, **extra}
    return templates.TemplateResponse(request, "survey.html", ctx, status_code=status,
                                      headers=HEADERS)


_STATES = {"invalid": ("invalid", 404), "expired": ("expired", 410), "answered": ("used", 200)}


@public.get("/s/{token}", response_class=HTMLResponse)
async def survey_page(request: Request, token: str, score: str | None = None) -> Response:
    """Show the question; a score from the e-mail is pre-selected. Records nothing."""
    ws = _ws(request)
    state, inv = await run_in_threadpool(ws.surveys.invitation, token)
    if state in _STATES:
        name, status = _STATES[state]
        return _page(request, token, name, inv, status)
    chosen = int(score) if score is not None and score.strip().isdigit() else None
    return _page(request, token, "form", inv, chosen=chosen)


async def _form(request: Request) -> dict[str, list[str]]:
    """The posted fields. The page's forms are URL-encoded, parsed here directly: the generic
    form parameters cost about a tenth of the event loop's time per answer (py-spy)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        try:
            return parse_qs((await request.body()).decode("utf-8", "replace"),
                            keep_blank_values=True, max_num_fields=100)
        except ValueError:  # more fields than any page has: not the page's form
            return {}
    form = await request.form()
    return {key: [v for v in form.getlist(key) if isinstance(v, str)] for key in form}


@public.post("/s/{token}", response_class=HTMLResponse)
async def survey_answer(request: Request, token: str) -> Response:
    fields = await _form(request)
    csrf, score, why = (fields.get(name, [""])[0] for name in ("csrf", "score", "why"))
    reasons = fields.get("reasons")
    ws = _ws(request)
    if not score.strip().isdigit():
        state, inv = await run_in_threadpool(ws.surveys.invitation, token)
        if state in ("invalid", "expired"):
            name, status = _STATES[state]
            return _page(request, token, name, inv, status)
        t = ws.surveys.texts(ws.surveys.get(inv["survey_id"]), inv["language"]) if inv else {}
        return _page(request, token, "form", inv, 400, error=t.get("choose"))
    try:  # one call: the link's state is read once, and the answer is one write
        out = await run_in_threadpool(ws.surveys.answer, token, int(score), why, reasons, csrf)
    except ValidationError as exc:
        state, inv = await run_in_threadpool(ws.surveys.invitation, token)
        return _page(request, token, "form", inv, 400, error=exc.message,
                     chosen=int(score))
    inv = out["invitation"]
    if out["state"] in ("invalid", "expired"):
        name, status = _STATES[out["state"]]
        return _page(request, token, name, inv, status)
    if out["state"] == "answered":
        return _page(request, token, "used", inv)
    return _page(request, token, "thanks", inv, ask_why=not out["invitation"]["commented"])


@public.post("/s/{token}/why", response_class=HTMLResponse)
async def survey_why(request: Request, token: str) -> Response:
    fields = await _form(request)
    csrf, why = (fields.get(name, [""])[0] for name in ("csrf", "why"))
    ws = _ws(request)
    try:
        out = await run_in_threadpool(ws.surveys.comment, token, why, csrf)
    except ValidationError:
        return _page(request, token, "invalid", None, 400)
    if out["state"] in ("invalid", "expired"):
        name, status = _STATES[out["state"]]
        return _page(request, token, name, out["invitation"], status)
    return _page(request, token, "thanks_final", out["invitation"])


# -- admin API -------------------------------------------------------------------------------
class SurveyIn(BaseModel):
    survey_id: str = Field(description="1-64 lower-case letters, digits, '-' or '_'")
    kind: str = Field("nps", description="nps, csat, ces or custom")
    name: str | None = None
    language: str = Field("en", description="the survey's default language")
    company: str | None = Field(None, description="replaces {company} in the texts")
    scale: tuple[int, int] | None = Field(None, description="custom surveys: [min, max]")
    reasons: list[str] | None = Field(None, description="optional reason choices")
    translations: dict[str, dict[str, str]] | None = Field(
        None, description="per language: strings to add or override (question, submit, ...)")


class InviteIn(BaseModel):
    person: str = Field(description="person id, TYPE:VALUE or identifier")
    trigger: str = Field("manual", description="one invitation per person, survey and trigger")
    channel: str = Field("link", description="link, email or webhook")
    language: str | None = None


def _json(value: Any) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(value, default=str, ensure_ascii=False)))


@router.post("/surveys", summary="Create or replace a survey")
async def create_survey(request: Request, body: SurveyIn) -> JSONResponse:
    ws = _ws(request)
    survey = await run_in_threadpool(lambda: ws.surveys.create(
        body.survey_id, kind=body.kind, name=body.name, language=body.language,
        company=body.company, scale=body.scale, reasons=body.reasons,
        translations=body.translations))
    return _json(survey)


@router.get("/surveys", summary="Surveys with their invitation and answer counts")
async def list_surveys(request: Request) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).surveys.all))


@router.post("/surveys/{survey_id}/invitations", summary="Invite a person (idempotent)")
async def invite(request: Request, survey_id: str, body: InviteIn) -> JSONResponse:
    ws = _ws(request)
    inv = await run_in_threadpool(lambda: ws.surveys.invite(
        survey_id, body.person, trigger=body.trigger, channel=body.channel,
        language=body.language))
    if body.channel == "email":
        inv["delivery"] = await run_in_threadpool(mailer.send_invitation, ws, inv)
    elif body.channel == "webhook":
        inv["delivery"] = await run_in_threadpool(webhooks.deliver, ws, inv)
    elif body.channel != "link":
        raise ValidationError("channel: use link, email or webhook.")
    return _json(inv)


class SendIn(BaseModel):
    cohort: str = Field(description="a saved cohort")
    channel: str = Field("email", description="link, email or webhook")
    trigger: str | None = Field(None, description="defaults to cohort:NAME")


@router.post("/surveys/{survey_id}/send",
             summary="Invite a saved cohort under the contact rules (counts per rule)")
async def send(request: Request, survey_id: str, body: SendIn) -> JSONResponse:
    ws = _ws(request)
    if body.channel not in ("link", "email", "webhook"):
        raise ValidationError("channel: use link, email or webhook.")
    out = await run_in_threadpool(lambda: ws.surveys.invite_cohort(
        survey_id, body.cohort, trigger=body.trigger, channel=body.channel))
    return _json(out)


class TriggerIn(BaseModel):
    name: str = Field(description="1-64 lower-case letters, digits, '-' or '_'")
    event: str | None = Field(None, description="did A, e.g. 'Ticket Closed[topic=pickup]'")
    did: str | None = Field(None, description="did A ... (with did_not and within)")
    did_not: str | None = Field(None, description="... but not B ...")
    within: str | None = Field(None, description="... within T after the first A: 3d, 48h")
    cohort: str | None = Field(None, description="the rule of a saved cohort")
    channel: str = Field("email", description="link, email or webhook")
    since: str | None = Field(None, description="only A events from this ISO time on")


@router.post("/surveys/{survey_id}/triggers",
             summary="Add a trigger: invite whoever matches a rule, after every build")
async def add_trigger(request: Request, survey_id: str, body: TriggerIn) -> JSONResponse:
    ws = _ws(request)
    return _json(await run_in_threadpool(lambda: ws.surveys.add_trigger(
        survey_id, body.name, event=body.event, did=body.did, did_not=body.did_not,
        within=body.within, cohort=body.cohort, channel=body.channel, since=body.since)))


@router.get("/triggers", summary="Survey triggers with what they invited")
async def list_triggers(request: Request, survey_id: str | None = None) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).surveys.triggers.list, survey_id))


@router.post("/triggers/{name}/{action}",
             summary="Pause, resume or evaluate a trigger (evaluate: ?full=true from scratch)")
async def trigger_action(request: Request, name: str, action: str,
                         full: bool = False) -> JSONResponse:
    triggers = _ws(request).surveys.triggers
    if action == "evaluate":
        return _json(await run_in_threadpool(lambda: triggers.evaluate(name, full=full)))
    if action not in ("pause", "resume"):
        raise ValidationError(f"Unknown action {action!r}: use pause, resume or evaluate.")
    return _json(await run_in_threadpool(getattr(triggers, action), name))


@router.delete("/triggers/{name}", summary="Remove a trigger (its invitations stay)")
async def remove_trigger(request: Request, name: str) -> JSONResponse:
    await run_in_threadpool(_ws(request).surveys.triggers.remove, name)
    return _json({"removed": name})


@router.get("/campaigns/{campaign_id}/impact",
            summary="Experience impact: NPS by converted / clicked-not-converted / ignored")
async def impact(request: Request, campaign_id: str, within_days: float = 3.0,
                 survey_id: str | None = None) -> JSONResponse:
    from ..surveys import campaign_impact

    ws = _ws(request)
    return _json(await run_in_threadpool(lambda: campaign_impact(
        ws, campaign_id, within_days=within_days, survey_id=survey_id)))


class CaseIn(BaseModel):
    owner: str | None = Field(None, description="assign to this owner")
    note: str | None = Field(None, description="add this note")
    close: str | None = Field(None, description="close with this resolution")


@router.get("/cases", summary="Follow-up cases by due date")
async def list_cases(request: Request, status: str | None = "open",
                     person: str | None = None) -> JSONResponse:
    ws = _ws(request)
    return _json(await run_in_threadpool(ws.cases.list, status, person))


@router.get("/cases/{case_id}", summary="A follow-up case with its notes")
async def get_case(request: Request, case_id: str) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).cases.get, case_id))


@router.post("/cases/{case_id}", summary="Assign, add a note to, or close a case")
async def update_case(request: Request, case_id: str, body: CaseIn) -> JSONResponse:
    ws = _ws(request)

    def apply() -> dict[str, Any]:
        case = ws.cases.get(case_id)
        if body.owner is not None:
            case = ws.cases.assign(case_id, body.owner)
        if body.note is not None:
            case = ws.cases.note(case_id, body.note)
        if body.close is not None:
            case = ws.cases.close(case_id, body.close)
        return case

    return _json(await run_in_threadpool(apply))


@router.get("/webhooks/dead-letters", summary="Webhook deliveries that failed every attempt")
async def dead_letters(request: Request) -> JSONResponse:
    return _json(await run_in_threadpool(webhooks.dead_letters, _ws(request)))


@router.post("/webhooks/{delivery_id}/replay", summary="Try a dead letter again")
async def replay(request: Request, delivery_id: str) -> JSONResponse:
    return _json(await run_in_threadpool(webhooks.replay, _ws(request), delivery_id))


@router.get("/surveys/{survey_id}/report",
            summary="Answers: NPS with its interval (CSAT, CES: mean), overall or by a group")
async def report(request: Request, survey_id: str, by: str | None = None,
                 within: str = "7d") -> JSONResponse:
    """``by``: day, week, month, touchpoint, lifecycle or cohort:NAME."""
    ws = _ws(request)
    return _json(await run_in_threadpool(lambda: ws.surveys.report(survey_id, by,
                                                                   within=within)))


@router.get("/surveys/{survey_id}/verbatims",
            summary="The latest answers with a why, each with the journey before it")
async def verbatims(request: Request, survey_id: str, limit: int = 20,
                    journey: int = 5) -> JSONResponse:
    ws = _ws(request)
    return _json(await run_in_threadpool(lambda: ws.surveys.verbatims(
        survey_id, limit=limit, journey=journey)))


__all__ = ["BowknotError", "public", "router"]
