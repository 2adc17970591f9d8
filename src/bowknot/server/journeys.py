"""The journeys admin API: every analysis of ``ws.journeys`` as JSON (on DuckDB).

Steps are given as in the CLI: an event name, optionally with property filters
(``Campaign Clicked[campaign_id=summer-weekend]``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..workspace import Workspace
from .auth import require_admin

router = APIRouter(prefix="/v1/journeys", dependencies=[Depends(require_admin)],
                   tags=["journeys"])


def _ws(request: Request) -> Workspace:
    ws: Workspace = request.app.state.ws
    return ws


def _json(value: Any) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(value, default=str, ensure_ascii=False)))


@router.get("/funnel", summary="Persons through ordered steps within a window")
async def funnel(request: Request,
                 steps: Annotated[list[str], Query(description="two or more steps, in order")],
                 within: str = "30d", order: str = "ordered", entry: str = "first",
                 exclude: Annotated[list[str] | None, Query(description="exclusions")] = None,
                 breakdown: str | None = None) -> JSONResponse:
    ws = _ws(request)
    result = await run_in_threadpool(lambda: ws.journeys.funnel(
        steps, within=within, order=order, entry=entry, exclusions=exclude or [],
        breakdown=breakdown))
    return _json(result.to_dict())


class CohortIn(BaseModel):
    did: str = Field(description="the step A")
    did_not: str = Field(description="the step B")
    within: str = Field("3d", description="B counts within this long after the first A")
    traits: list[str] = Field([], description="traits to list with the members")
    save_as: str | None = Field(None, description="save the cohort under this name")


@router.post("/cohorts", summary='"Did A but not B within T", optionally saved by name')
async def cohort(request: Request, body: CohortIn) -> JSONResponse:
    ws = _ws(request)
    result = await run_in_threadpool(lambda: ws.journeys.cohort(
        body.did, body.did_not, within=body.within, traits=body.traits,
        save_as=body.save_as))
    return _json(result.to_dict())


@router.get("/cohorts", summary="Saved cohorts")
async def cohorts(request: Request) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).journeys.cohorts.list))


@router.get("/retention", summary="Retention triangle")
async def retention(request: Request, start: str, back: str | None = None,
                    period: str = "week", periods: int = 8) -> JSONResponse:
    ws = _ws(request)
    result = await run_in_threadpool(lambda: ws.journeys.retention(
        start, back, period=period, periods=periods))
    return _json(result.to_dict())


@router.get("/transitions", summary="The transition graph between steps")
async def transitions(request: Request,
                      event: Annotated[list[str] | None, Query(description="only these")] = None,
                      collapse: bool = True, top: int | None = 50,
                      counts_only: Annotated[bool, Query(
                          description="no persons or median seconds per edge (faster)")] = False,
                      ) -> JSONResponse:
    ws = _ws(request)
    result = await run_in_threadpool(lambda: ws.journeys.transitions(
        events=event or None, collapse=collapse, top=top, counts_only=counts_only))
    return _json(result.to_dict())


@router.get("/touchpoints", summary="Outcomes by the last marketing touch before them")
async def touchpoints(request: Request, outcome: str, within: str = "7d",
                      value: str | None = None) -> JSONResponse:
    ws = _ws(request)
    result = await run_in_threadpool(lambda: ws.journeys.touchpoints(
        outcome, within=within, value=value))
    return _json(result.to_dict())


@router.get("/bowtie", summary="Visitors -> known -> customers -> repeat customers")
async def bowtie(request: Request, by: str = "channel") -> JSONResponse:
    ws = _ws(request)
    return _json((await run_in_threadpool(lambda: ws.journeys.bowtie(by=by))).to_dict())


@router.get("/attribution", summary="First, last, linear and Markov attribution")
async def attribution(request: Request, conversion: str, by: str = "channel") -> JSONResponse:
    ws = _ws(request)
    result = await run_in_threadpool(lambda: ws.journeys.attribution(conversion, by=by))
    return _json(result.to_dict())


@router.get("/sankey", summary="The step-by-step flow from an anchor event")
async def sankey(request: Request, anchor: str, depth: int = 4, top: int = 10) -> JSONResponse:
    ws = _ws(request)
    result = await run_in_threadpool(lambda: ws.journeys.sankey(anchor, depth=depth, top=top))
    return _json(result.to_dict())
