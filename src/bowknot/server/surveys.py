"""The surveys admin API (the public survey pages are in survey_pages.py)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .. import mailer, webhooks
from ..errors import BowknotError, ValidationError
from ..workspace import Workspace
from .auth import require_admin

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], tags=["surveys"])


def _ws(request: Request) -> Workspace:
    ws: Workspace = request.app.state.ws
    return ws


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
    return _json(inv)


class SendIn(BaseModel):
    cohort: str = Field(description="a saved cohort")
    channel: str = Field("email", description="link, email or webhook")
    trigger: str | None = Field(None, description="defaults to cohort:NAME")


@router.post("/surveys/{survey_id}/send",
             summary="Invite a saved cohort under the contact rules (counts per rule)")
async def send(request: Request, survey_id: str, body: SendIn) -> JSONResponse:
    ws = _ws(request)
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


__all__ = ["BowknotError", "router"]
