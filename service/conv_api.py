"""``POST /v1/conv/{op}`` (to be built: issue 7)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["convolution"])
