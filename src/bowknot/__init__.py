"""bowknot: a customer-experience platform on one event log.

>>> import bowknot
>>> ws = bowknot.connect("bowknot.duckdb")
>>> ws.track("Booking Completed", user_id="u_1", properties={"revenue": 120.0})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import (
    AuthError,
    BowknotError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    SettingError,
    ValidationError,
    WorkspaceLocked,
)
from .workspace import Workspace

__version__ = "0.1.0"


def connect(path: str | Path = "bowknot.duckdb", **settings: Any) -> Workspace:
    """Open (or create) the workspace stored in ``path``; keywords override settings."""
    return Workspace(path, **settings)


__all__ = [
    "AuthError",
    "BowknotError",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "SettingError",
    "ValidationError",
    "Workspace",
    "WorkspaceLocked",
    "connect",
]
