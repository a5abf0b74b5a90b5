"""``/v1/models/{m}/summary``, ``/v1/models/{m}/profile``, ``/v1/profile/conv`` (to be built: issue 5)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["profiling"])
