"""OpenAPI descriptions of the Segment spec payloads (documentation only).

Validation itself happens in the engine (``bowknot.ingest``) so that every way in follows the
same rules; these schemas tell API users what to send.
"""

from __future__ import annotations

from typing import Any

_ID = {"type": ["string", "number"]}
_TS = {"type": "string", "format": "date-time"}
_OBJ = {"type": "object", "additionalProperties": True}

COMMON: dict[str, Any] = {
    "messageId": {"type": "string", "maxLength": 100,
                  "description": "Unique per source; assigned when missing. Re-sends with the "
                                 "same id are stored once."},
    "anonymousId": {**_ID, "description": "Visitor id before the person is known."},
    "userId": {**_ID, "description": "Your database id of the person. One of userId or "
                                     "anonymousId is required."},
    "timestamp": {**_TS, "description": "When the event happened (device clock)."},
    "originalTimestamp": _TS,
    "sentAt": {**_TS, "description": "When the device sent it; used to correct clock skew: "
                                     "timestamp = receivedAt - (sentAt - originalTimestamp)."},
    "context": _OBJ,
    "integrations": _OBJ,
}

PER_CALL: dict[str, dict[str, Any]] = {
    "track": {"event": {"type": "string"}, "properties": _OBJ},
    "identify": {"traits": _OBJ},
    "page": {"name": {"type": "string"}, "properties": _OBJ},
    "screen": {"name": {"type": "string"}, "properties": _OBJ},
    "group": {"groupId": _ID, "traits": _OBJ},
    "alias": {"previousId": _ID},
}
REQUIRED: dict[str, list[str]] = {"track": ["event"], "group": ["groupId"],
                                  "alias": ["previousId", "userId"]}


def _call_schema(call: str, with_type: bool) -> dict[str, Any]:
    props = {**COMMON, **PER_CALL[call]}
    if with_type:
        props = {"type": {"const": call}, **props}
    return {"type": "object", "title": call, "properties": props,
            "required": (["type"] if with_type else []) + REQUIRED.get(call, [])}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": schema}}}}


INGEST_OPENAPI: dict[str, dict[str, Any]] = {
    call: _body(_call_schema(call, with_type=False)) for call in PER_CALL
}
INGEST_OPENAPI["batch"] = _body({
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {"type": "array", "maxItems": 2500,
                  "items": {"oneOf": [_call_schema(c, with_type=True) for c in PER_CALL]}},
        "context": {**_OBJ, "description": "Merged into every event's context."},
        "integrations": _OBJ,
        "sentAt": _TS,
    },
})
