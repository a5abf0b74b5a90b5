"""The one way route modules get the server's collaborators: from the app ``create_app`` built.

Call them with the request (``deps.dataplane(request)``) or use them as FastAPI dependencies
(``dp: DataPlane = Depends(deps.dataplane)``). A feature's own collaborators (the conv engine, the profile gate,
job store and trace store) are put on ``app.state`` by its ``attach`` and read by its own route module.
"""

from __future__ import annotations

from starlette.requests import Request

from sepconv.service.classify.engine import ClassifyEngine
from sepconv.service.dataplane.dataplane import DataPlane
from sepconv.service.registry.registry import ModelRegistry
from sepconv.service.settings import Settings


def settings(request: Request) -> Settings:
    return request.app.state.settings


def registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


def classify(request: Request) -> ClassifyEngine:
    return request.app.state.classify
