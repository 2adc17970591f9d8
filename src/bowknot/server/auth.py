"""Admin access for the API (Bearer token) and the pages (a session cookie)."""

from __future__ import annotations

from fastapi import Request

from ..errors import AuthError
from ..workspace import Workspace

COOKIE = "bowknot_session"


def is_admin(request: Request) -> bool:
    ws: Workspace = request.app.state.ws
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return ws.access.verify_token(header[7:].strip())
    session = request.cookies.get(COOKIE)
    return session is not None and ws.access.verify_session(session)


def require_admin(request: Request) -> None:
    """FastAPI dependency: every endpoint but collection and sign-in needs an admin."""
    if not is_admin(request):
        raise AuthError(
            "This needs an admin token: send `Authorization: Bearer <token>` "
            "(`bowknot tokens create NAME` makes one), or sign in to the pages.",
            code="admin_required",
        )
