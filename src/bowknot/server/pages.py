"""Server-rendered pages; each has a JSON twin (``/overview`` and ``/overview.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ..errors import BowknotError
from ..workspace import Workspace
from .auth import COOKIE, is_admin, require_admin

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# The templates ship with the package: checking their files for changes on every render
# took about 8 % of the event loop under load on the survey pages (measured with py-spy).
templates.env.auto_reload = False
templates.env.filters["ts"] = lambda v: v.strftime("%Y-%m-%d %H:%M") if v else "—"
# Readable JSON for the pages (autoescape still escapes it as HTML).
templates.env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False, default=str)
templates.env.filters["money"] = lambda v: f"{float(v or 0):,.2f}"
router = APIRouter(include_in_schema=False)


def _ws(request: Request) -> Workspace:
    ws: Workspace = request.app.state.ws
    return ws


def _signin_redirect() -> RedirectResponse:
    return RedirectResponse("/signin", status_code=303)


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/overview", status_code=303)


@router.get("/overview", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    if not is_admin(request):
        return _signin_redirect()
    data = await run_in_threadpool(_ws(request).overview)
    days = sorted({str(r["day"]) for r in data["by_day"]})
    types = sorted({r["type"] for r in data["by_day"]})
    grid: dict[str, dict[str, int]] = {d: dict.fromkeys(types, 0) for d in days}
    for r in data["by_day"]:
        grid[str(r["day"])][r["type"]] = r["n"]
    peak = max((sum(v.values()) for v in grid.values()), default=0) or 1
    return templates.TemplateResponse(
        request, "overview.html",
        {"data": data, "days": days, "types": types, "grid": grid, "peak": peak},
    )


@router.get("/persons", response_class=HTMLResponse)
async def persons_page(request: Request, q: str | None = None) -> Response:
    """Look a person up by any identifier; the profile and timeline are at /persons/{id}."""
    if not is_admin(request):
        return _signin_redirect()
    if q and q.strip():
        try:
            pid = await run_in_threadpool(_ws(request).persons.resolve, q)
        except BowknotError as exc:
            return templates.TemplateResponse(
                request, "person.html", {"person": None, "q": q, "error": exc.message},
                status_code=exc.status)
        return RedirectResponse(f"/persons/{quote(pid)}", status_code=303)
    return templates.TemplateResponse(request, "person.html",
                                      {"person": None, "q": "", "error": None})


@router.get("/persons/{ref}", response_class=HTMLResponse)
async def person_page(request: Request, ref: str, limit: int = 200) -> Response:
    if not is_admin(request):
        return _signin_redirect()
    ws = _ws(request)
    try:
        person = await run_in_threadpool(ws.persons.get, ref)
        timeline = await run_in_threadpool(ws.persons.timeline, person["person_id"],
                                           max(1, min(limit, 10_000)), 0, True)
    except BowknotError as exc:
        return templates.TemplateResponse(
            request, "person.html", {"person": None, "q": ref, "error": exc.message},
            status_code=exc.status)
    return templates.TemplateResponse(
        request, "person.html",
        {"person": person, "timeline": timeline, "shown": len(timeline), "q": ref,
         "error": None})


@router.get("/overview.json")
async def overview_json(request: Request) -> JSONResponse:
    require_admin(request)
    data: dict[str, Any] = await run_in_threadpool(_ws(request).overview)
    return JSONResponse(jsonable_encoder(data))


@router.get("/signin", response_class=HTMLResponse)
async def signin_page(request: Request, token: str | None = None) -> Response:
    if token:
        return await _sign_in(request, token)
    return templates.TemplateResponse(request, "signin.html", {"error": None})


@router.post("/signin", response_class=HTMLResponse)
async def signin_form(request: Request, token: str = Form(...)) -> Response:
    return await _sign_in(request, token)


async def _sign_in(request: Request, token: str) -> Response:
    ws = _ws(request)
    session = await run_in_threadpool(ws.access.open_session, token.strip(),
                                      ws.settings.session_hours)
    if session is None:
        return templates.TemplateResponse(
            request, "signin.html",
            {"error": "That token is unknown or revoked. Make one with "
                      "`bowknot tokens create NAME`."},
            status_code=401)
    # Redirect so the token leaves the address bar and the history.
    resp = RedirectResponse("/overview", status_code=303)
    resp.set_cookie(COOKIE, session, max_age=ws.settings.session_hours * 3600, httponly=True,
                    samesite="lax", secure=ws.settings.cookie_secure)
    return resp


@router.post("/signout")
async def signout(request: Request) -> RedirectResponse:
    session = request.cookies.get(COOKIE)
    if session:
        await run_in_threadpool(_ws(request).access.close_session, session)
    resp = _signin_redirect()
    resp.delete_cookie(COOKIE)
    return resp
