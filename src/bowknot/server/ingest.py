"""Segment-compatible collection: ``POST /v1/{track,identify,page,screen,group,alias,batch}``.

Authentication is Segment's: the source's write key as the HTTP Basic username (or a
``writeKey`` field in the body). Bodies may be gzip-encoded. A request is answered only after
its events are durable; the answer says, per item, what was rejected and why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import zlib
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .. import ingest
from ..errors import AuthError, BowknotError, PayloadTooLarge
from ..store.writer import Request as WriteRequest
from ..store.writer import Submission
from ..workspace import Workspace
from .schemas import INGEST_OPENAPI

router = APIRouter(tags=["collection"])

REQUEST_STATUS = {"too_many_events": 413, "request_too_large": 413}


def _write_key(request: Request, body: bytes) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.split(":", 1)[0] or None
    # Segment also accepts the key inside the JSON body; only then is the body parsed here.
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    key = value.get("writeKey") if isinstance(value, dict) else None
    return key if isinstance(key, str) else None


async def _read_body(request: Request, limit: int) -> tuple[bytes, str | None]:
    """The request body, gunzipped, and what was wrong with it, if anything.

    Reading stops at ``limit`` bytes, so a huge or gzip-bomb body costs at most that much;
    what was read is returned either way, to be kept with the refusal.
    """
    gzipped = "gzip" in request.headers.get("content-encoding", "").lower()
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
    out = bytearray()
    async for chunk in request.stream():
        if inflater is not None:
            try:
                chunk = inflater.decompress(chunk, limit + 1 - len(out))
            except zlib.error:
                return bytes(out) + chunk[: max(0, limit - len(out))], "invalid_gzip"
        out += chunk
        if len(out) > limit:
            return bytes(out[:limit]), "request_too_large"
    return bytes(out), None


async def _collect(request: Request, call: str) -> JSONResponse:
    ws: Workspace = request.app.state.ws
    settings = ws.settings
    body, problem = await _read_body(request, settings.max_request_bytes)
    key = _write_key(request, body)
    source = ws.access.source_for_key(key) if key else None
    if source is None:
        raise AuthError(
            "Missing or unknown write key. Send the source's write key as the HTTP Basic "
            "username (`bowknot sources create NAME` makes one)."
        )
    text = body.decode("utf-8", "replace")
    if problem is None and "\ufffd" in text and _not_utf8(body):
        problem = "invalid_encoding"
    if problem is not None:
        # Refused before parsing: kept (up to max_request_bytes) where it can be inspected.
        await run_in_threadpool(ws.failures.keep, source, call, text, problem)
        error = PayloadTooLarge if problem == "request_too_large" else BowknotError
        raise error(ingest.REASONS[problem] + " The request was kept in failed events.",
                    code="payload_too_large" if problem == "request_too_large" else problem)
    sub = Submission([WriteRequest(source, call, text)])
    future = ws.writer.submit(sub)  # raises Overloaded -> 429 with Retry-After
    out = (await asyncio.wrap_future(future))[0]
    return _answer(out)


def _not_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _answer(out: ingest.Outcome) -> JSONResponse:
    counts = {"accepted": out.accepted, "duplicates": out.duplicates, "conflicts": out.conflicts}
    if out.request_reason:
        code = out.request_reason
        return JSONResponse(
            {"error": {"code": code, "message": ingest.REASONS.get(code, code) +
                       " The request was kept in failed events.", **counts}},
            status_code=REQUEST_STATUS.get(code, 400),
        )
    rejected = [f for f in out.failures if f["reason_codes"] != ["message_id_conflict"]]
    if rejected:
        items = [{"index": f["index"], "reasons": f["reasons"]} for f in rejected]
        return JSONResponse(
            {"error": {
                "code": "invalid_events",
                "message": f"{len(rejected)} event(s) were rejected and kept in failed events "
                           f"(`bowknot failed list`); {out.accepted} were stored. Fix them as "
                           "each item's reasons say and send them again.",
                "items": items, **counts}},
            status_code=400,
        )
    return JSONResponse({"success": True, **counts})


def _make(call: str) -> Any:
    async def endpoint(request: Request) -> JSONResponse:
        return await _collect(request, call)

    endpoint.__name__ = f"collect_{call}"
    endpoint.__doc__ = (
        f"Collect {'a batch of events' if call == 'batch' else 'one ' + call + ' call'} "
        "(Segment HTTP API compatible). Answers after the events are durable."
    )
    return endpoint


for _call in (*ingest.CALLS, "batch"):
    router.add_api_route(
        f"/v1/{_call}", _make(_call), methods=["POST"], summary=f"Collect: {_call}",
        openapi_extra=INGEST_OPENAPI[_call],
        responses={400: {"description": "Invalid events; per-item reasons"},
                   401: {"description": "Missing or unknown write key"},
                   413: {"description": "Request too large or too many events"},
                   429: {"description": "Busy; retry after Retry-After seconds"}},
    )
