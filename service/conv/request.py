"""Reading a ``/v1/conv/{op}`` body into a :class:`ConvCall`: every check a TensorFlow user expects, and every
limit that can be decided before a tensor is decoded or a graph is built, in one pass, cheapest first.

:func:`read` (the body's bytes -> :class:`ConvCall`):

1. the op (404);
2. the count of JSON numbers/lists (commas and brackets, before parsing) against ``conv_max_list_elements``
   (413) — the body's byte size was already capped by the middleware (``max_request_bytes``);
3. JSON (:func:`sepconv.service.conv.codec.loads`, NaN/Infinity tokens accepted), fields and shapes
   (TF-style messages; 400/422);
4. tensor sizes from the *declared* shapes against ``conv_max_elements``, each filter against
   ``conv_max_filter_elements`` and the output the geometry gives (explicit padding included: 10 elements of
   input padded by 2000 make 16 M) against ``conv_max_output_elements`` (413);
5. the providers resolved, so that the :class:`~sepconv.export.single_op.ConvKey` names the session to use.

:func:`check_work` is the one check that needs the graph's accounting (built or cached by the engine): largest
activation and multiply-adds (times the batch) against ``conv_max_elements`` / ``conv_max_macs``, and a
nested-list output against ``conv_max_list_elements`` (413).

Only shapes are looked at here (no tensor is decoded). Strides, dilations and padding are read by
:mod:`sepconv.export.padding`, the same rules the networks use. The :class:`ConvKey` is built in ONE place,
:func:`_key`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sepconv.export.errors import ExportError
from sepconv.export.layers import ACTIVATIONS, LAYOUTS
from sepconv.export.padding import ConvGeometry
from sepconv.export.single_op import OPS, ConvGraph, ConvKey
from sepconv.service.conv.codec import LIST, TensorRef, loads, peek
from sepconv.service.errors import InvalidInput, NotFound, TooLarge, Unprocessable
from sepconv.service.runtime.sessions import resolve_providers
from sepconv.service.settings import Settings

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
    """A validated request: the graph it needs (providers resolved), its batch size and its (undecoded) tensors."""

    key: ConvKey
    batch: int
    tensors: dict[str, TensorRef]  # graph input name -> tensor
    output_encoding: str
    provider: str | None  # as the client asked (``None``: the server's providers)

    @property
    def list_output(self) -> bool:
        return self.output_encoding == LIST


def check_op(op: str) -> str:
    """``op`` if it is one of :data:`~sepconv.export.single_op.OPS`, else 404 (checked before the body is read)."""
    if op not in OPS:
        raise NotFound(f"unknown convolution op {op!r}; use one of {', '.join(OPS)}")
    return op


def read(op: str, body: bytes, settings: Settings) -> ConvCall:
    """The request ``body`` for ``op``, validated against ``settings``' limits (see the module docstring)."""
    check_op(op)
    _check_list_volume(body, settings)
    return _parse(op, loads(body), settings)


def _check_list_volume(body: bytes, settings: Settings) -> None:
    """Refuse huge nested-list bodies before parsing them: each JSON number and list becomes a Python object
    (~30-70 bytes), so 50 MB of ``[[0]],`` would cost gigabytes. Commas and brackets bound both counts
    (base64 strings hold neither)."""
    limit = settings.conv_max_list_elements
    values, lists = body.count(b","), body.count(b"[")
    if values > limit or lists > limit:
        raise TooLarge(f"this body holds about {max(values, lists)} JSON numbers or lists; nested-list tensors "
                       f"are limited to {limit} (SEPCONV_CONV_MAX_LIST_ELEMENTS): send large tensors as "
                       '{"shape": [...], "datatype": "FP32", "b64": "..."}')


def _check_tensor_sizes(tensors: dict[str, TensorRef], settings: Settings) -> None:
    for ref in tensors.values():
        if ref.size > settings.conv_max_elements:
            raise TooLarge(f"{ref.field} has {ref.size} elements (shape {list(ref.shape)}); this server "
                           f"accepts at most {settings.conv_max_elements} per tensor (SEPCONV_CONV_MAX_ELEMENTS)")


def check_filter_size(field: str, elements: int, shape: list[int], settings: Settings) -> None:
    """413 for a filter over ``conv_max_filter_elements`` (shared with the conv profile)."""
    if elements > settings.conv_max_filter_elements:
        raise TooLarge(f"{field} has {elements} elements (shape {shape}); this server accepts at most "
                       f"{settings.conv_max_filter_elements} per filter (SEPCONV_CONV_MAX_FILTER_ELEMENTS)")


def check_output_size(op: str, elements: int, shape: list[int], settings: Settings) -> None:
    """413 for an output (from declared shapes and the geometry) over ``conv_max_output_elements``."""
    if elements > settings.conv_max_output_elements:
        raise TooLarge(f"the {op} output would have {elements} elements (shape {shape}, NHWC); this server returns "
                       f"at most {settings.conv_max_output_elements} (SEPCONV_CONV_MAX_OUTPUT_ELEMENTS): use less "
                       "padding or a smaller input")


def check_work(graph: ConvGraph, call: ConvCall, settings: Settings) -> None:
    """413 when running ``graph`` for ``call``'s batch would go over the compute or output-size limits."""
    batch = call.batch
    biggest = graph.max_activation_elements * batch
    if biggest > settings.conv_max_elements:
        raise TooLarge(f"the {graph.key.op} output would have {biggest} elements (batch {batch}); this server "
                       f"accepts at most {settings.conv_max_elements} per tensor (SEPCONV_CONV_MAX_ELEMENTS)")
    if call.list_output and graph.out_elements * batch > settings.conv_max_list_elements:
        raise TooLarge(f"the {graph.key.op} output has {graph.out_elements * batch} elements, more than the "
                       f"{settings.conv_max_list_elements} a nested-list response may hold "
                       "(SEPCONV_CONV_MAX_LIST_ELEMENTS): send the input as {\"shape\", \"datatype\": "
                       "\"FP32\", \"b64\"} to get the output in base64")
    macs = graph.macs * batch
    if macs > settings.conv_max_macs:
        raise TooLarge(f"this {graph.key.op} costs {macs} multiply-adds (batch {batch}); this server accepts "
                       f"at most {settings.conv_max_macs} per request (SEPCONV_CONV_MAX_MACS)")


def _check_fields(op: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {_ALIASES.get(k, k): v for k, v in body.items()}
    allowed = _COMMON | set(FILTER_FIELDS[op])
    unknown = sorted(set(body) - allowed)
    if unknown:
        other = {f for fields in FILTER_FIELDS.values() for f in fields} - set(FILTER_FIELDS[op])
        if set(unknown) & other:
            wanted = " and ".join(FILTER_FIELDS[op])
            raise Unprocessable(f"{op} takes {wanted}, not {', '.join(sorted(set(unknown) & other))}")
        raise Unprocessable(f"unknown field(s) {', '.join(unknown)} for {op}; accepted: {', '.join(sorted(allowed))}")
    for name in ("input", *FILTER_FIELDS[op]):
        if body.get(name) is None:
            raise Unprocessable(f"{op} needs {name!r}")
    return body


def _dilations(body: dict[str, Any]) -> Any:
    dil, rate = body.get("dilations"), body.get("rate")
    if dil is not None and rate is not None and dil != rate:
        raise Unprocessable(f"dilations {dil!r} and its alias rate {rate!r} disagree; give one of them")
    value = dil if dil is not None else rate
    return 1 if value is None else value


def _require_rank(ref: TensorRef, rank: int, layout: str) -> None:
    if len(ref.shape) != rank:
        raise Unprocessable(f"{ref.field} must be {rank}-D {layout}, got shape {list(ref.shape)}")
    if 0 in ref.shape:
        raise Unprocessable(f"{ref.field} has an empty dimension: shape {list(ref.shape)}")


def _parse(op: str, body: Any, settings: Settings) -> ConvCall:
    """Validate ``body`` for ``op`` (shapes and arguments, then the declared tensor sizes)."""
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be a JSON object, got {type(body).__name__}")
    body = _check_fields(op, body)

    data_format = "NHWC" if body.get("data_format") is None else body["data_format"]
    if data_format not in LAYOUTS:
        raise Unprocessable(f"data_format must be 'NHWC' or 'NCHW', got {data_format!r}")
    activation = body.get("activation")
    if activation in ("linear", "none", ""):
        activation = None
    if activation is not None and activation not in ACTIVATIONS:
        raise Unprocessable(f"activation must be one of {', '.join(ACTIVATIONS)} (or null), got {activation!r}")
    provider = body.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise Unprocessable(f"provider must be a string such as 'cpu' or 'cuda', got {provider!r}")

    layout = "[batch, height, width, channels] (NHWC)" if data_format == "NHWC" else \
        "[batch, channels, height, width] (NCHW)"
    x = peek("input", body["input"])
    _require_rank(x, 4, layout)
    filters = [peek(name, body[name]) for name in FILTER_FIELDS[op]]
    if op != "conv2d" and len(filters[0].shape) == 4 and filters[0].shape[3] == 0:
        raise Unprocessable(f"{filters[0].field} has channel_multiplier 0 (shape {list(filters[0].shape)}); "
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
        padding = "VALID" if body.get("padding") is None else body["padding"]
        geometry = ConvGeometry(1 if body.get("strides") is None else body["strides"], padding, _dilations(body),
                                data_format)
    except ExportError as exc:
        raise Unprocessable(str(exc)) from None

    first = filters[0].field if op == "separable_conv2d" else "filter"
    if cin != c:
        raise Unprocessable(f"{first} has in_channels {cin} (shape {list(filters[0].shape)}), but the input has "
                            f"{c} channels (input shape {list(x.shape)}, {data_format})")
    if op == "separable_conv2d":
        pw = filters[1].shape
        mult = filters[0].shape[3]
        if pw[:2] != (1, 1):
            raise Unprocessable(f"pointwise_filter must be [1, 1, in_channels * channel_multiplier, out_channels], "
                                f"got shape {list(pw)}")
        if pw[2] != cin * mult:
            raise Unprocessable(f"pointwise_filter has in_channels {pw[2]}, but the depthwise stage outputs "
                                f"in_channels * channel_multiplier = {cin} * {mult} = {cin * mult} channels")
    out_channels = filters[-1].shape[3] * (cin if op == "depthwise_conv2d" else 1)
    if bias is not None:
        if len(bias.shape) != 1 or bias.shape[0] != out_channels:
            raise Unprocessable(f"bias must have shape [{out_channels}] (one value per output channel), "
                                f"got {list(bias.shape)}")
    try:
        geometry = geometry.resolved((h, w), (kh, kw))
        _, (ho, wo) = geometry.resolve((h, w), (kh, kw))  # refuses a kernel larger than the padded input
    except ExportError as exc:
        raise Unprocessable(str(exc)) from None

    tensors = {"input": x, **{f.field: f for f in filters}}
    if bias is not None:
        tensors["bias"] = bias
    _check_tensor_sizes(tensors, settings)
    for f in filters:
        check_filter_size(f.field, f.size, list(f.shape), settings)
    check_output_size(op, n * ho * wo * out_channels, [n, ho, wo, out_channels], settings)
    key = _key(op, (c, h, w), tuple(f.shape for f in filters), geometry, activation, bias is not None,
               tuple(resolve_providers(provider, settings)))
    return ConvCall(key=key, batch=n, tensors=tensors, output_encoding=x.encoding, provider=provider)


def _key(op: str, chw: tuple[int, int, int], filter_shapes: tuple[tuple[int, ...], ...], geometry: ConvGeometry,
         activation: str | None, bias: bool, providers: tuple[str, ...]) -> ConvKey:
    """The graph/session signature of a request (the only place this package builds a ConvKey); ``geometry``
    has its pads resolved, so ``SAME`` and the pads it stands for share one key."""
    return ConvKey(op=op, chw=chw, filter_shapes=filter_shapes, geometry=geometry, activation=activation, bias=bias,
                   providers=providers)
