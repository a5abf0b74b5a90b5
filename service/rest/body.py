"""Request and response bodies over HTTP: capped reads, ``Content-Encoding`` both ways, JSON objects.

* :func:`read_body` — the whole body, refusing (``TooLarge``, 413) one over a limit before reading it all;
* :func:`decompress` — a ``gzip``/``deflate`` request body, capped after decompression too;
* :func:`compress` — a response body for the client's ``Accept-Encoding`` (gzip preferred, 1 KiB and up);
* :func:`check_structure` — a JSON text's lists/objects and values counted before it is parsed (413 over
  ``json_max_containers`` / ``json_max_elements``): 60 MB of ``[],`` would otherwise become 20 million Python
  lists (~2 GB) in one parse that holds the event loop for seconds. Nesting depth is capped by orjson itself
  (1024 levels; deeper is a 400);
* :func:`json_object` — a control body (index, load, logging, trace) that must be a JSON object, at most
  :data:`CONTROL_MAX_BYTES` (empty -> ``{}`` unless required).

The server-wide request size limit itself is enforced earlier, by :mod:`sepconv.service.rest.middleware`.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson
from starlette.requests import Request

from sepconv.service.errors import InvalidInput, TooLarge, UnsupportedMediaType

COMPRESS_MIN_BYTES = 1024  # smaller responses are sent as they are
CONTROL_MAX_BYTES = 1024 * 1024  # a repository/logging/trace request is a few fields (a config override at most)


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The whole body, refusing (413) one over ``limit`` bytes before reading it all.

    ``what`` names the limit in the message, e.g. ``"this server accepts (SEPCONV_MAX_REQUEST_BYTES)"``.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is {int(declared)} bytes; at most {limit} {what}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"request body is over {limit} bytes, the most {what}")
        chunks.append(chunk)
    return b"".join(chunks)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded from its ``Content-Encoding`` (identity, gzip, deflate), at most ``limit`` bytes."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        d = zlib.decompressobj()
    else:
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the {enc} body does not decompress: {exc}") from exc
    if len(out) > limit or d.unconsumed_tail:
        raise TooLarge(f"the decompressed body is over the limit of {limit} bytes")
    if not d.eof or d.unused_data:
        raise InvalidInput(f"the {enc} body is truncated or has bytes after its end")
    return out


def accepted_encoding(accept_encoding: str) -> str | None:
    """``gzip`` or ``deflate``, whichever ``Accept-Encoding`` weighs higher (RFC 9110 12.5.3: ``q`` weights,
    ``*`` for codings not named, ``q=0`` = not acceptable; gzip on a tie); ``None`` when neither is acceptable."""
    weights: dict[str, float] = {}
    for part in accept_encoding.split(","):
        coding, _, params = part.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        weights[coding] = q
    star = weights.get("*", 0.0)
    best, best_q = None, 0.0
    for coding in ("gzip", "deflate"):
        q = weights.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    return best


def compress(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """(body, Content-Encoding or None): gzip or deflate at level 1 when the client accepts one
    (:func:`accepted_encoding`)."""
    if not accept_encoding or len(body) < COMPRESS_MIN_BYTES:
        return body, None
    coding = accepted_encoding(accept_encoding)
    if coding == "gzip":
        return gzip.compress(body, compresslevel=1), "gzip"
    if coding == "deflate":
        return zlib.compress(body, 1), "deflate"
    return body, None


def check_structure(text: bytes, max_elements: int, max_containers: int) -> None:
    """413 when the JSON ``text`` holds more than ``max_containers`` lists and objects or more than
    ``max_elements`` values and containers, counted from its brackets and commas before parsing (an
    overestimate only when strings hold brackets or commas)."""
    containers = text.count(b"[") + text.count(b"{")
    if containers > max_containers:
        raise TooLarge(f"this JSON body holds about {containers} lists and objects; at most {max_containers} are "
                       "accepted (SEPCONV_JSON_MAX_CONTAINERS): send tensors flat or as binary data")
    elements = containers + text.count(b",")
    if elements > max_elements:
        raise TooLarge(f"this JSON body holds about {elements} values; at most {max_elements} are accepted "
                       "(SEPCONV_JSON_MAX_ELEMENTS): send large tensors as binary data")


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, ``{}`` when empty (``InvalidInput`` for malformed JSON or another JSON value;
    ``TooLarge`` over :data:`CONTROL_MAX_BYTES` or the server's JSON structure limits)."""
    body = await read_body(request, CONTROL_MAX_BYTES, "bytes a control request may have")
    settings = request.app.state.settings
    check_structure(body, settings.json_max_elements, settings.json_max_containers)
    if not body.strip():
        return {}
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON body: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidInput("the body must be a JSON object")
    return obj
