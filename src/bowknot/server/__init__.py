"""The HTTP shell over a Workspace: collection API, admin API and pages."""

from .app import create_app

__all__ = ["create_app"]
