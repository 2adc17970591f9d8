"""The admin JSON API: overview, sources and keys, failed events, ad-hoc SQL."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ..workspace import Workspace
from .auth import require_admin

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], tags=["admin"])


def _ws(request: Request) -> Workspace:
    ws: Workspace = request.app.state.ws
    return ws


class SourceIn(BaseModel):
    name: str = Field(description="1-64 letters, digits, '.', '_' or '-'")
    description: str | None = None


class ReplayIn(BaseModel):
    ids: list[int] | None = Field(None, description="failure ids; all failed when omitted")
    reason: str | None = Field(None, description="only failures with this reason code")
    source: str | None = None
    new_message_ids: bool = Field(False, description="give conflicts a fresh messageId")


class SqlIn(BaseModel):
    query: str = Field(description="one read-only statement (SELECT, WITH, DESCRIBE, ...)")


@router.get("/overview", summary="Workspace overview (the JSON twin of /overview)")
async def overview(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_ws(request).overview)


@router.get("/sources", summary="List sources")
async def list_sources(request: Request) -> list[dict[str, Any]]:
    return await run_in_threadpool(_ws(request).access.sources)


@router.post("/sources", status_code=201, summary="Create a source (or a new key for one)")
async def create_source(request: Request, body: SourceIn) -> dict[str, str]:
    key = await run_in_threadpool(_ws(request).access.create_source, body.name,
                                  body.description)
    return {"source": body.name, "write_key": key,
            "note": "Shown once: store it now. Only its hash is kept."}


@router.post("/sources/{name}/revoke", summary="Revoke a source's write keys")
async def revoke_source(request: Request, name: str, prefix: str | None = None
                        ) -> dict[str, int]:
    n = await run_in_threadpool(_ws(request).access.revoke_write_keys, name, prefix)
    return {"revoked": n}


@router.get("/failed", summary="List failed events with their reasons")
async def list_failed(request: Request, reason: str | None = None, source: str | None = None,
                      limit: int = 100) -> list[dict[str, Any]]:
    return await run_in_threadpool(
        lambda: _ws(request).failures.list(reason=reason, source=source, limit=limit))


@router.post("/failed/replay", summary="Replay failed events through the contract")
async def replay_failed(request: Request, body: ReplayIn) -> dict[str, Any]:
    return await run_in_threadpool(
        lambda: _ws(request).failures.replay(ids=body.ids, reason=body.reason,
                                             source=body.source,
                                             new_message_ids=body.new_message_ids))


@router.post("/sql", summary="Run one read-only SQL statement")
async def sql(request: Request, body: SqlIn) -> dict[str, Any]:
    rows = await run_in_threadpool(_ws(request).read_sql, body.query)
    return {"rows": rows, "count": len(rows)}
