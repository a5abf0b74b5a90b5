"""PLACEHOLDER (replaced by the conv sub-package's routes): ``router`` and ``attach(app, settings)``."""

from __future__ import annotations

from typing import Any

from sepconv.service.conv_api import router

__all__ = ["attach", "router"]


def attach(app: Any, settings: Any) -> None:
    """Put this feature's collaborators on ``app.state`` (nothing yet)."""
