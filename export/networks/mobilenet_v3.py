"""MobileNet V3 Large and Small (Howard et al. 2019, arXiv 1905.02244) from the paper's Tables 1
and 2, as Keras 3's ``keras/src/applications/mobilenet_v3.py`` builds them: stem ``conv``/``conv_bn``,
bottlenecks ``expanded_conv_`` (block 0) and ``expanded_conv_N_`` + ``expand``/``depthwise``/
``squeeze_excite_conv``/``squeeze_excite_conv_1``/``project`` (BN ``*_bn``), then ``conv_1``/
``conv_1_bn``, and the head ``conv_2`` -> ``logits``.
"""

from __future__ import annotations

from typing import NamedTuple

from sepconv.export import layers as L
from sepconv.export.graph import Kind, Tensor
from sepconv.export.networks.common import NetContext, make_divisible
from sepconv.export.networks.registry import register_model


class Bneck(NamedTuple):
    """One row of the paper's table: kernel, exp size, #out, SE, NL, stride (at alpha = 1)."""

    k: int
    exp: int
    out: int
    se: bool
    nl: str  # "RE" (relu) or "HS" (hard swish)
    s: int


# Table 1 (MobileNetV3-Large). Stem: conv2d 3x3, 16, HS, s2. Last: conv 1x1 960, pool, 1280 (NBN), k.
V3_LARGE: list[Bneck] = [
    Bneck(3, 16, 16, False, "RE", 1),
    Bneck(3, 64, 24, False, "RE", 2),
    Bneck(3, 72, 24, False, "RE", 1),
    Bneck(5, 72, 40, True, "RE", 2),
    Bneck(5, 120, 40, True, "RE", 1),
    Bneck(5, 120, 40, True, "RE", 1),
    Bneck(3, 240, 80, False, "HS", 2),
    Bneck(3, 200, 80, False, "HS", 1),
    Bneck(3, 184, 80, False, "HS", 1),
    Bneck(3, 184, 80, False, "HS", 1),
    Bneck(3, 480, 112, True, "HS", 1),
    Bneck(3, 672, 112, True, "HS", 1),
    Bneck(5, 672, 160, True, "HS", 2),
    Bneck(5, 960, 160, True, "HS", 1),
    Bneck(5, 960, 160, True, "HS", 1),
]

# Table 2 (MobileNetV3-Small). Stem: conv2d 3x3, 16, HS, s2. Last: conv 1x1 576, pool, 1024 (NBN), k.
# (The paper marks SE on the last 1x1 conv; the released models and Keras have none there.)
V3_SMALL: list[Bneck] = [
    Bneck(3, 16, 16, True, "RE", 2),
    Bneck(3, 72, 24, False, "RE", 2),
    Bneck(3, 88, 24, False, "RE", 1),
    Bneck(5, 96, 40, True, "HS", 2),
    Bneck(5, 240, 40, True, "HS", 1),
    Bneck(5, 240, 40, True, "HS", 1),
    Bneck(5, 120, 48, True, "HS", 1),
    Bneck(5, 144, 48, True, "HS", 1),
    Bneck(5, 288, 96, True, "HS", 2),
    Bneck(5, 576, 96, True, "HS", 1),
    Bneck(5, 576, 96, True, "HS", 1),
]

STEM_FILTERS = 16  # not scaled by alpha (Keras)
LAST_POINT_LARGE = 1280
LAST_POINT_SMALL = 1024
SE_RATIO = 0.25
_ACT = {"RE": "relu", "HS": "hard_swish"}


def bottleneck(ctx: NetContext, x: Tensor, row: Bneck, *, expansion: float, alpha: float,
               block_id: int) -> Tensor:
    """Keras' ``_inverted_res_block`` (V3): the paper's exp size becomes the ratio ``exp / in``
    (as Keras writes it, e.g. ``72.0 / 16``) applied to the alpha-scaled input channels."""
    infilters = x.channels
    filters = make_divisible(row.out * alpha)
    act = _ACT[row.nl]
    prefix = f"expanded_conv_{block_id}_" if block_id else "expanded_conv_"
    expanded = make_divisible(infilters * expansion)
    shortcut = x
    if block_id:
        x = ctx.conv(x, f"{prefix}expand", expanded, 1, bn_name=f"{prefix}expand_bn", act=act)
    x = ctx.depthwise(x, f"{prefix}depthwise", row.k, row.s, bn_name=f"{prefix}depthwise_bn", act=act,
                      keras_rule="correct_pad")
    if row.se:
        squeeze = make_divisible(expanded * SE_RATIO)
        c = x.channels
        x = L.squeeze_excite(
            ctx.b, x,
            ctx.weight(f"{prefix}squeeze_excite_conv", "kernel", (1, 1, c, squeeze)),
            ctx.weight(f"{prefix}squeeze_excite_conv", "bias", (squeeze,)),
            ctx.weight(f"{prefix}squeeze_excite_conv_1", "kernel", (1, 1, squeeze, c)),
            ctx.weight(f"{prefix}squeeze_excite_conv_1", "bias", (c,)),
            prefix=prefix,
        )
    x = ctx.conv(x, f"{prefix}project", filters, 1, bn_name=f"{prefix}project_bn", act=None)
    if row.s == 1 and infilters == filters:
        x = L.add(ctx.b, shortcut, x, name=f"{prefix}add")
    return x


def build_v3(ctx: NetContext, x: Tensor, table: list[Bneck], last_point: int, *, alpha: float, classes: int,
             include_top: bool) -> Tensor:
    """Stem, the table's bottlenecks, ``conv_1``, then the head (``last_point`` wide below alpha 1.0)."""
    x = ctx.conv(x, "conv", STEM_FILTERS, 3, 2, bn_name="conv_bn", act="hard_swish")
    in_at_alpha1 = STEM_FILTERS
    for block_id, row in enumerate(table):
        x = bottleneck(ctx, x, row, expansion=row.exp / in_at_alpha1, alpha=alpha, block_id=block_id)
        in_at_alpha1 = row.out
    x = ctx.conv(x, "conv_1", make_divisible(x.channels * 6), 1, bn_name="conv_1_bn", act="hard_swish")
    if include_top:
        if alpha > 1.0:
            last_point = make_divisible(last_point * alpha)
        x = L.global_avg_pool(ctx.b, x, name="global_average_pooling2d", keepdims=True)
        x = ctx.conv(x, "conv_2", last_point, 1, bias=True, act="hard_swish")
        x = ctx.conv(x, "logits", classes, 1, bias=True, kind=Kind.DENSE)
        x = ctx.flatten_into_last_layer(x)
    return x


@register_model("mobilenet_v3_large")
def build_v3_large(ctx: NetContext, x: Tensor, *, alpha: float, classes: int, include_top: bool) -> Tensor:
    return build_v3(ctx, x, V3_LARGE, LAST_POINT_LARGE, alpha=alpha, classes=classes, include_top=include_top)


@register_model("mobilenet_v3_small")
def build_v3_small(ctx: NetContext, x: Tensor, *, alpha: float, classes: int, include_top: bool) -> Tensor:
    return build_v3(ctx, x, V3_SMALL, LAST_POINT_SMALL, alpha=alpha, classes=classes, include_top=include_top)
