"""Reading a ``/v1/conv/{op}`` body into a :class:`ConvCall`, with the checks a TensorFlow user expects.

Only shapes are looked at here (no tensor is decoded): the result says which graph the request needs
(:class:`~sepconv.export.single_op.ConvKey`) and which tensors to decode once the size limits have passed.
Strides, dilations and padding are read by :mod:`sepconv.export.padding`, the same rules the networks use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sepconv.export.errors import ExportError
from sepconv.export.layers import ACTIVATIONS, LAYOUTS
from sepconv.export.padding import resolve_padding, spatial_pair
from sepconv.export.single_op import OPS, ConvKey
from sepconv.service.conv_codec import TensorRef, peek
from sepconv.service.errors import ApiError

_COMMON = {"input", "bias", "strides", "padding", "dilations", "rate", "data_format", "activation", "provider",
           "name"}
FILTER_FIELDS = {
    "conv2d": ("filter",),
    "depthwise_conv2d": ("filter",),
    "separable_conv2d": ("depthwise_filter", "pointwise_filter"),
}
_ALIASES = {"filters": "filter"}  # tf.nn.conv2d's TF2 argument name


@dataclass(frozen=True)
class ConvCall:
    """A validated request: the graph it needs, its batch size and its (undecoded) tensors."""

    key: ConvKey
    batch: int
    tensors: dict[str, TensorRef]  # graph input name -> tensor
    output_encoding: str
    provider: str | None


def _unprocessable(message: str) -> ApiError:
    return ApiError(422, message)


def _check_fields(op: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {_ALIASES.get(k, k): v for k, v in body.items()}
    allowed = _COMMON | set(FILTER_FIELDS[op])
    unknown = sorted(set(body) - allowed)
    if unknown:
        other = {f for fields in FILTER_FIELDS.values() for f in fields} - set(FILTER_FIELDS[op])
        if set(unknown) & other:
            wanted = " and ".join(FILTER_FIELDS[op])
            raise _unprocessable(f"{op} takes {wanted}, not {', '.join(sorted(set(unknown) & other))}")
        raise _unprocessable(f"unknown field(s) {', '.join(unknown)} for {op}; accepted: {', '.join(sorted(allowed))}")
    for name in ("input", *FILTER_FIELDS[op]):
        if body.get(name) is None:
            raise _unprocessable(f"{op} needs {name!r}")
    return body


def _dilations(body: dict[str, Any]) -> Any:
    dil, rate = body.get("dilations"), body.get("rate")
    if dil is not None and rate is not None and dil != rate:
        raise _unprocessable(f"dilations {dil!r} and its alias rate {rate!r} disagree; give one of them")
    value = dil if dil is not None else rate
    return 1 if value is None else value


def _require_rank(ref: TensorRef, rank: int, layout: str) -> None:
    if len(ref.shape) != rank:
        raise _unprocessable(f"{ref.field} must be {rank}-D {layout}, got shape {list(ref.shape)}")
    if 0 in ref.shape:
        raise _unprocessable(f"{ref.field} has an empty dimension: shape {list(ref.shape)}")


def parse(op: str, body: Any) -> ConvCall:
    """Validate ``body`` for ``op`` (shapes and arguments only) and say what graph it needs."""
    if op not in OPS:
        raise ApiError(404, f"unknown convolution op {op!r}; use one of {', '.join(OPS)}")
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}")
    body = _check_fields(op, body)

    data_format = "NHWC" if body.get("data_format") is None else body["data_format"]
    if data_format not in LAYOUTS:
        raise _unprocessable(f"data_format must be 'NHWC' or 'NCHW', got {data_format!r}")
    activation = body.get("activation")
    if activation in ("linear", "none", ""):
        activation = None
    if activation is not None and activation not in ACTIVATIONS:
        raise _unprocessable(f"activation must be one of {', '.join(ACTIVATIONS)} (or null), got {activation!r}")
    provider = body.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise _unprocessable(f"provider must be a string such as 'cpu' or 'cuda', got {provider!r}")

    layout = "[batch, height, width, channels] (NHWC)" if data_format == "NHWC" else \
        "[batch, channels, height, width] (NCHW)"
    x = peek("input", body["input"])
    _require_rank(x, 4, layout)
    filters = [peek(name, body[name]) for name in FILTER_FIELDS[op]]
    if op != "conv2d" and len(filters[0].shape) == 4 and filters[0].shape[3] == 0:
        raise _unprocessable(f"{filters[0].field} has channel_multiplier 0 (shape {list(filters[0].shape)}); "
                             "it must be >= 1")
    hint = {"conv2d": "[filter_height, filter_width, in_channels, out_channels]",
            "depthwise_conv2d": "[filter_height, filter_width, in_channels, channel_multiplier]",
            "depthwise_filter": "[filter_height, filter_width, in_channels, channel_multiplier]",
            "pointwise_filter": "[1, 1, in_channels * channel_multiplier, out_channels]"}
    for f in filters:
        _require_rank(f, 4, hint[f.field if op == "separable_conv2d" else op])
    bias = None if body.get("bias") is None else peek("bias", body["bias"])

    n, c, h, w = (x.shape[0], x.shape[3], x.shape[1], x.shape[2]) if data_format == "NHWC" else x.shape
    kh, kw, cin = filters[0].shape[:3]
    try:
        strides = spatial_pair(1 if body.get("strides") is None else body["strides"], "strides", data_format)
        dilations = spatial_pair(_dilations(body), "dilations", data_format)
    except ExportError as exc:
        raise _unprocessable(str(exc)) from None

    first = filters[0].field if op == "separable_conv2d" else "filter"
    if cin != c:
        raise _unprocessable(f"{first} has in_channels {cin} (shape {list(filters[0].shape)}), but the input has "
                             f"{c} channels (input shape {list(x.shape)}, {data_format})")
    if op == "separable_conv2d":
        pw = filters[1].shape
        mult = filters[0].shape[3]
        if pw[:2] != (1, 1):
            raise _unprocessable(f"pointwise_filter must be [1, 1, in_channels * channel_multiplier, out_channels], "
                                 f"got shape {list(pw)}")
        if pw[2] != cin * mult:
            raise _unprocessable(f"pointwise_filter has in_channels {pw[2]}, but the depthwise stage outputs "
                                 f"in_channels * channel_multiplier = {cin} * {mult} = {cin * mult} channels")
    if op != "conv2d" and max(dilations) > 1 and max(strides) > 1:
        raise _unprocessable(f"{op}: dilations {list(dilations)} > 1 together with strides {list(strides)} > 1 is "
                             "not supported — TensorFlow requires all strides to be 1 when rate/dilations > 1 "
                             "(atrous depthwise convolution)")
    out_channels = filters[-1].shape[3] * (cin if op == "depthwise_conv2d" else 1)
    if bias is not None:
        if len(bias.shape) != 1 or bias.shape[0] != out_channels:
            raise _unprocessable(f"bias must have shape [{out_channels}] (one value per output channel), "
                                 f"got {list(bias.shape)}")
    try:
        padding = "VALID" if body.get("padding") is None else body["padding"]
        pads = resolve_padding(padding, (h, w), (kh, kw), strides, dilations, data_format)
    except ExportError as exc:
        raise _unprocessable(str(exc)) from None

    key = ConvKey(op=op, chw=(c, h, w), filter_shapes=tuple(f.shape for f in filters), strides=strides,
                  dilations=dilations, pads=(pads.top, pads.bottom, pads.left, pads.right), data_format=data_format,
                  activation=activation, bias=bias is not None, providers=())
    tensors = {"input": x, **{f.field: f for f in filters}}
    if bias is not None:
        tensors["bias"] = bias
    return ConvCall(key=key, batch=n, tensors=tensors, output_encoding=x.encoding, provider=provider)
