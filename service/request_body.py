"""Reading a request body with a size cap: 413 from the declared length, or as soon as the stream passes it."""

from __future__ import annotations

from fastapi import Request

from sepconv.service.errors import ApiError


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The whole body, refusing (413) one over ``limit`` bytes before reading it all.

    ``what`` names the limit in the message, e.g. ``"this server accepts (SEPCONV_MAX_REQUEST_BYTES)"``.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {int(declared)} bytes; at most {limit} {what}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"request body is over {limit} bytes, the most {what}")
        chunks.append(chunk)
    return b"".join(chunks)
