"""The FastAPI application: a thin shell over one Workspace."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import BowknotError, Overloaded
from ..workspace import Workspace
from . import admin, ingest, journeys, pages, persons, surveys
from .auth import is_admin, require_admin
from .survey_pages import Receive, Scope, Send, SurveyPages

log = logging.getLogger("bowknot.server")


def error_response(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    """The one JSON error shape: ``{"error": {"code", "message", ...}}``."""
    return JSONResponse({"error": {"code": code, "message": message, **extra}},
                        status_code=status)


def bowknot_error_response(path: str, exc: BowknotError) -> JSONResponse:
    resp = error_response(exc.status, exc.code, exc.message, **exc.details)
    if isinstance(exc, Overloaded):
        resp.headers["Retry-After"] = str(exc.retry_after)
    if exc.status == 401:
        resp.headers["WWW-Authenticate"] = "Basic" if path.startswith(
            tuple(f"/v1/{c}" for c in ("track", "identify", "page", "screen", "group",
                                       "alias", "batch"))) else "Bearer"
    return resp


def unexpected_response(exc: Exception) -> JSONResponse:
    # Nothing was acknowledged; the client may retry. The traceback is in the log.
    return error_response(500, "internal_error",
                          f"The server failed ({type(exc).__name__}: {exc}); nothing from "
                          "this request was acknowledged, so it is safe to retry.")


class App(FastAPI):
    """FastAPI, with the public survey pages answered before its middleware and router
    (see survey_pages.py: they are the busiest requests)."""

    pages: SurveyPages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.pages.handles(scope):
            try:
                await self.pages(scope, receive, send, super().__call__)
            except BowknotError as exc:
                await bowknot_error_response(scope["path"], exc)(scope, receive, send)
            except Exception as exc:
                log.exception("survey page failed")
                await unexpected_response(exc)(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(ws: Workspace, background_build: bool = False,
               freeze_gc: bool = False) -> FastAPI:
    """The app over ``ws``; ``background_build`` keeps persons and profiles up to date
    (every ``build_interval_seconds``) while it runs, as `bowknot serve` does. ``freeze_gc``
    (a server process's own app) leaves what start-up made out of the garbage collector."""

    survey_pages = SurveyPages(ws)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if freeze_gc:
            # Everything made until now (the server's modules, the writer's warm-up) lives
            # as long as the server: frozen, it is left out of the collector's full passes,
            # which otherwise paused every thread for 40-150 ms each, twice in the first
            # seconds of load (measured). Frozen here, after uvicorn's start-up and the
            # writer's, not before them.
            await asyncio.to_thread(ws.writer.wait_warm, 60)
            gc.collect()
            gc.freeze()
            # A request allocates a few hundred objects, nearly all gone when it is answered:
            # the default young-generation threshold (700) ran a collection every few
            # requests. Rarer ones cost less in all (server CPU per survey answer -4 %,
            # measured); the older generations are still collected, after 20 and 200 young
            # collections.
            gc.set_threshold(50_000, 20, 10)
        if background_build:
            ws.builder.start(ws.settings.build_interval_seconds)
        try:
            yield
        finally:
            ws.builder.stop()
            survey_pages.close()

    app = App(
        lifespan=lifespan,
        # The API reference is served to admins only (below), like every page but collection.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        title="bowknot",
        version=__version__,
        description="Segment-compatible event collection and the bowknot admin API. "
        "Collection endpoints take a source write key as the HTTP Basic username; every "
        "other endpoint takes an admin token as `Authorization: Bearer <token>`.",
    )
    app.state.ws = ws
    app.pages = survey_pages

    @app.exception_handler(BowknotError)
    async def bowknot_error(request: Request, exc: BowknotError) -> JSONResponse:
        return bowknot_error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        items = [{"location": list(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return error_response(422, "invalid_request",
                              "The request does not match the API: see items.", items=items)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(exc)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, bool]:
        """Liveness for load balancers and scripts; says nothing about the data."""
        return {"ok": True}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        require_admin(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        if not is_admin(request):
            return RedirectResponse("/signin", status_code=303)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="bowknot API")

    # Routes are matched in order: the busiest public ones (collection, survey pages) first.
    app.include_router(ingest.router)
    app.include_router(admin.router)
    app.include_router(persons.router)
    app.include_router(surveys.router)
    app.include_router(journeys.router)
    app.include_router(pages.router)
    return app
