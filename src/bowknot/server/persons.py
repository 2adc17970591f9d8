"""The admin API for the knot: persons, timelines, identity changes, builds, privacy."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..errors import ValidationError
from ..workspace import Workspace
from .auth import require_admin

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], tags=["persons"])


def _ws(request: Request) -> Workspace:
    ws: Workspace = request.app.state.ws
    return ws


def _json(value: Any) -> JSONResponse:
    """JSON with timestamps and decimals as strings (as the CLI prints them)."""
    return JSONResponse(json.loads(json.dumps(value, default=str, ensure_ascii=False)))


LOOKUP_TYPES = ("user_id", "anonymous_id", "email", "phone")


@router.get("/persons", summary="Find the person holding an identifier")
async def find_person(
    request: Request,
    email: str | None = Query(None, description="an e-mail (normalised as at ingestion)"),
    user_id: str | None = None,
    anonymous_id: str | None = None,
    phone: str | None = None,
    type: str | None = Query(None, description="any identifier type, with value"),
    value: str | None = None,
) -> JSONResponse:
    given = {k: v for k, v in (("email", email), ("user_id", user_id),
                               ("anonymous_id", anonymous_id), ("phone", phone)) if v}
    if type and value:
        given[type] = value
    if len(given) != 1:
        raise ValidationError(
            "Give exactly one identifier: ?email=, ?user_id=, ?anonymous_id=, ?phone= or "
            "?type=TYPE&value=VALUE.", given=sorted(given))
    (id_type, id_value), = given.items()
    ws = _ws(request)
    person = await run_in_threadpool(ws.persons.get, f"{id_type}:{id_value}")
    return _json(person)


@router.get("/persons/{ref}", summary="A person: profile, identifiers, traits, identity changes")
async def get_person(request: Request, ref: str) -> JSONResponse:
    """``ref``: a person id (merged-away ids redirect), ``TYPE:VALUE`` or an identifier."""
    return _json(await run_in_threadpool(_ws(request).persons.get, ref))


@router.get("/persons/{ref}/timeline", summary="Every event of the person, in time order")
async def timeline(request: Request, ref: str,
                   limit: int = Query(1000, ge=1, le=100_000),
                   offset: int = Query(0, ge=0),
                   newest_first: bool = False) -> JSONResponse:
    ws = _ws(request)
    pid = await run_in_threadpool(ws.persons.resolve, ref)
    events = await run_in_threadpool(ws.persons.timeline, pid, limit, offset, newest_first)
    return _json({"person_id": pid, "offset": offset, "limit": limit, "events": events})


@router.post("/identity/{log_id}/unmerge", summary="Undo a merge: both persons come back")
async def unmerge(request: Request, log_id: int) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).persons.unmerge, log_id))


@router.post("/identity/{log_id}/remerge", summary="Take an unmerge back")
async def remerge(request: Request, log_id: int) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).persons.remerge, log_id))


class BuildIn(BaseModel):
    full: bool = Field(False, description="rebuild everything instead of only what is new")


@router.post("/build", summary="Bring identities and profiles up to date now")
async def build(request: Request, body: BuildIn | None = None) -> JSONResponse:
    result = await run_in_threadpool(_ws(request).build, bool(body and body.full))
    return _json(result.to_dict())


@router.get("/build", summary="Pipeline status: what is built, what is pending")
async def build_status(request: Request) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).builder.status))


class PrivacyIn(BaseModel):
    identifier: str = Field(description="a person id, TYPE:VALUE (email:a@b.c) or an identifier")
    dry_run: bool = Field(False, description="delete only: say what would go, change nothing")


@router.post("/privacy/delete", summary="Delete everything held on a person")
async def privacy_delete(request: Request, body: PrivacyIn) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).privacy.delete, body.identifier,
                                         body.dry_run))


@router.post("/privacy/suppress", summary="Drop the person's new events at ingestion")
async def privacy_suppress(request: Request, body: PrivacyIn) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).privacy.suppress, body.identifier))


@router.post("/privacy/unsuppress", summary="Accept the person's events again")
async def privacy_unsuppress(request: Request, body: PrivacyIn) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).privacy.unsuppress, body.identifier))


@router.post("/privacy/export", summary="Everything held on a person, as JSON")
async def privacy_export(request: Request, body: PrivacyIn) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).privacy.export, body.identifier))


@router.get("/privacy/operations", summary="The audit trail of privacy requests")
async def privacy_operations(request: Request,
                             limit: int = Query(100, ge=1, le=10_000)) -> JSONResponse:
    return _json(await run_in_threadpool(_ws(request).privacy.operations, limit))
