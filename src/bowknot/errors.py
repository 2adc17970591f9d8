"""Errors that say what was wrong and what to do about it.

Every error carries a stable ``code`` (used by the HTTP API's one JSON error shape) and a
message written for the person who has to fix it.
"""

from __future__ import annotations

from typing import Any


class BowknotError(Exception):
    """Base class: ``code`` is stable and machine-readable, the message names the fix."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class SettingError(BowknotError):
    code = "invalid_setting"


class ValidationError(BowknotError):
    """Input broke the event contract; ``details['items']`` lists what, per item."""

    code = "invalid_events"


class PayloadTooLarge(BowknotError):
    code = "payload_too_large"
    status = 413


class Overloaded(BowknotError):
    """The single writer has more queued than it may; the client should retry later."""

    code = "overloaded"
    status = 429

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class AuthError(BowknotError):
    code = "unauthorized"
    status = 401


class NotFound(BowknotError):
    code = "not_found"
    status = 404


class WorkspaceLocked(BowknotError):
    """Another process (usually ``bowknot serve``) holds the embedded store open."""

    code = "workspace_locked"
    status = 409


class QueryError(BowknotError):
    code = "query_error"


class DeliveryFailed(BowknotError):
    """A message could not be handed to its channel (SMTP, webhook); safe to retry."""

    code = "delivery_failed"
    status = 502
