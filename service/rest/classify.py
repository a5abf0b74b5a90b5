"""``POST /v1/models/{m}/classify?top_k=K``: the HTTP part of image classification (the work is
:class:`~sepconv.service.classify.engine.ClassifyEngine`'s).

The image comes as the raw body (``Content-Type: image/png | image/jpeg | image/webp``, or
``application/octet-stream`` / none: the format is always recognised from the bytes) or as the ``image`` field of a
``multipart/form-data`` form (a browser's upload). Another content type is 415. The file may be at most
``classify_max_bytes`` (413, refused from ``Content-Length`` before the body is read when it says so).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, FastAPI, Query, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from sepconv.service.classify.decode import ACCEPTED, FORMATS
from sepconv.service.classify.engine import DEFAULT_TOP_K, ClassifyEngine
from sepconv.service.errors import InvalidInput, TooLarge, UnsupportedMediaType
from sepconv.service.rest import body as bodies
from sepconv.service.rest import deps
from sepconv.service.settings import Settings

router = APIRouter(tags=["classification"])

IMAGE_TYPES = frozenset(FORMATS.values())
RAW_TYPES = IMAGE_TYPES | {"", "application/octet-stream"}
MULTIPART = "multipart/form-data"
FIELD = "image"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file


def attach(app: FastAPI, settings: Settings) -> None:
    app.state.classify = ClassifyEngine(settings, app.state.dataplane)


async def _image_bytes(request: Request, limit: int) -> bytes:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    what = "this server accepts for an image (SEPCONV_CLASSIFY_MAX_BYTES)"
    if media in RAW_TYPES:
        data = await bodies.read_body(request, limit, what)
        encoding = request.headers.get("content-encoding")
        return bodies.decompress(data, encoding, limit) if encoding else data
    if media != MULTIPART:
        raise UnsupportedMediaType(f"Content-Type {media!r} is not accepted: send the image as image/png, "
                                   f"image/jpeg or image/webp, or as the {FIELD!r} field of a {MULTIPART} form")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise TooLarge(f"request body is {int(declared)} bytes; at most {limit} {what}")
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as exc:  # noqa: BLE001 - starlette raises MultiPartException / HTTPException for a bad form
        raise InvalidInput(f"the {MULTIPART} body cannot be read: {getattr(exc, 'detail', None) or exc}") from None
    try:
        part = form.get(FIELD)
        if part is None:
            raise InvalidInput(f"the form has no {FIELD!r} field: put the image file in a field named {FIELD!r}")
        if not isinstance(part, UploadFile):
            raise InvalidInput(f"the form's {FIELD!r} field must be a file ({ACCEPTED}), not text")
        data = await part.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(f"the image file is over {limit} bytes, the most {what}")
        return data
    finally:
        await form.close()


@router.post("/v1/models/{model_name}/classify")
async def classify(request: Request, model_name: str,
                   top_k: int = Query(DEFAULT_TOP_K, ge=1, description="how many classes to return")) -> Response:
    settings = deps.settings(request)
    deps.registry(request).get(model_name)  # an unknown model is 404 before the body is read
    data = await _image_bytes(request, settings.classify_max_bytes)
    alone = await request.app.state.in_flight.alone()
    result = await deps.classify(request).classify(model_name, data, top_k, alone=alone)
    return Response(orjson.dumps(result), media_type="application/json")
