"""What a route reads from ``app.state``, in one place: the server's settings and its model registry.

``create_app`` puts them there (``app.state.settings``, ``app.state.registry``); a feature's ``attach(app,
settings)`` adds its own collaborators next to them once, at startup.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from sepconv.service.errors import Unavailable
from sepconv.service.settings import Settings, get_settings


def settings(request: Request) -> Settings:
    """The app's :class:`Settings` (the process-wide ones for an app made without them)."""
    value = getattr(request.app.state, "settings", None)
    return value if isinstance(value, Settings) else get_settings()


def registry(request: Request) -> Any:
    """The loaded models: ``.get(name, version=None) -> LoadedModel`` (raises the model errors); 503 without one."""
    value = getattr(request.app.state, "registry", None)
    if value is None:
        raise Unavailable("this server has no model repository")
    return value
