"""MobileNet V2 (Sandler et al. 2018, arXiv 1801.04381) from its Table 2 of ``t, c, n, s`` rows, as
``keras.applications.MobileNetV2`` builds it (``Conv1``/``bn_Conv1``, ``expanded_conv_*`` for the
first bottleneck, ``block_N_expand``/``_depthwise``/``_project`` (+ ``_BN``), ``Conv_1``/``Conv_1_bn``,
``predictions``).
"""

from __future__ import annotations

from sepconv.export import layers as L
from sepconv.export.graph import Tensor
from sepconv.export.networks.common import NetContext, make_divisible
from sepconv.export.networks.registry import register_model

# Table 2: each row is a sequence of `n` bottlenecks with expansion `t`, `c` output channels, the
# first one with stride `s` (the others stride 1).
#            t    c   n  s
V2_TABLE: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_FILTERS = 32
LAST_FILTERS = 1280


def inverted_residual(ctx: NetContext, x: Tensor, *, t: int, c: int, s: int, alpha: float,
                      block_id: int) -> Tensor:
    """Keras' ``_inverted_res_block``: 1x1 expand (not in block 0) -> 3x3 depthwise -> linear 1x1
    project, residual add when the shapes allow it."""
    in_channels = x.channels
    out_channels = make_divisible(int(c * alpha), 8)
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    shortcut = x
    if block_id:
        x = ctx.conv(x, f"{prefix}expand", t * in_channels, 1, bn_name=f"{prefix}expand_BN", act="relu6")
    x = ctx.depthwise(x, f"{prefix}depthwise", 3, s, bn_name=f"{prefix}depthwise_BN", act="relu6",
                      keras_rule="correct_pad")
    x = ctx.conv(x, f"{prefix}project", out_channels, 1, bn_name=f"{prefix}project_BN", act=None)
    if in_channels == out_channels and s == 1:
        x = L.add(ctx.b, shortcut, x, name=f"{prefix}add")
    return x


@register_model("mobilenet_v2")
def build_v2(ctx: NetContext, x: Tensor, *, alpha: float, classes: int, include_top: bool) -> Tensor:
    x = ctx.conv(x, "Conv1", make_divisible(STEM_FILTERS * alpha, 8), 3, 2, bn_name="bn_Conv1", act="relu6")
    block_id = 0
    for t, c, n, s in V2_TABLE:
        for i in range(n):
            x = inverted_residual(ctx, x, t=t, c=c, s=s if i == 0 else 1, alpha=alpha, block_id=block_id)
            block_id += 1
    # No width multiplier on the last conv below 1.0 (the paper's choice; Keras does the same).
    last = make_divisible(LAST_FILTERS * alpha, 8) if alpha > 1.0 else LAST_FILTERS
    x = ctx.conv(x, "Conv_1", last, 1, bn_name="Conv_1_bn", act="relu6")
    if include_top:
        x = L.global_avg_pool(ctx.b, x, name="global_average_pooling2d", keepdims=False)
        x = ctx.dense(x, "predictions", classes)
    return x
