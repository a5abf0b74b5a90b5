"""MobileNet V1 (Howard et al. 2017, arXiv 1704.04861), as its Table 1 lays it out and as
``keras.applications.MobileNet`` builds it (layer names ``conv1``, ``conv_dw_N``, ``conv_pw_N``,
``conv_preds``; BN layers ``conv1_bn``, ``conv_dw_N_bn``, ``conv_pw_N_bn``).
"""

from __future__ import annotations

from sepconv.export import layers as L
from sepconv.export.errors import ExportError
from sepconv.export.graph import Kind, Tensor
from sepconv.export.networks.common import NetContext
from sepconv.export.networks.registry import register_model

# Table 1 of the paper. ("conv", stride, filters) is the full 3x3 stem; ("dw", stride, filters)
# is one depthwise-separable block: 3x3 depthwise with that stride, then 1x1 pointwise to
# `filters`. The paper prints the second-to-last depthwise as "s2" on a 7x7 input; TF-slim and
# Keras (and the paper's own output sizes) use stride 1 there, as below.
V1_TABLE: list[tuple[str, int, int]] = [
    ("conv", 2, 32),
    ("dw", 1, 64),
    ("dw", 2, 128),
    ("dw", 1, 128),
    ("dw", 2, 256),
    ("dw", 1, 256),
    ("dw", 2, 512),
    ("dw", 1, 512),
    ("dw", 1, 512),
    ("dw", 1, 512),
    ("dw", 1, 512),
    ("dw", 1, 512),
    ("dw", 2, 1024),
    ("dw", 1, 1024),
]


STEM_FILTERS = V1_TABLE[0][2]


def check_alpha(alpha: float) -> None:
    """Keras scales V1's widths by ``int(filters * alpha)``, with no floor: the stem must keep one filter."""
    if int(STEM_FILTERS * alpha) < 1:
        raise ExportError(f"alpha {alpha} is too small for mobilenet_v1: its first layer would have "
                          f"int({STEM_FILTERS} * alpha) = 0 filters (alpha must be >= 1/{STEM_FILTERS})")


@register_model("mobilenet_v1", check_alpha=check_alpha)
def build_v1(ctx: NetContext, x: Tensor, *, alpha: float, classes: int, include_top: bool) -> Tensor:
    block_id = 0
    for kind, stride, filters in V1_TABLE:
        width = int(filters * alpha)  # Keras: int(filters * alpha), no rounding to 8
        if kind == "conv":
            x = ctx.conv(x, "conv1", width, 3, stride, bn_name="conv1_bn", act="relu6")
            continue
        block_id += 1
        x = ctx.depthwise(x, f"conv_dw_{block_id}", 3, stride, bn_name=f"conv_dw_{block_id}_bn", act="relu6",
                          keras_rule="v1_stride2")
        x = ctx.conv(x, f"conv_pw_{block_id}", width, 1, bn_name=f"conv_pw_{block_id}_bn", act="relu6")
    if include_top:
        # GlobalAveragePooling2D(keepdims=True) -> Dropout -> Conv2D(classes, 1x1, bias) -> Reshape
        x = L.global_avg_pool(ctx.b, x, name="global_average_pooling2d", keepdims=True)
        x = ctx.conv(x, "conv_preds", classes, 1, bias=True, kind=Kind.DENSE)
        x = ctx.flatten_into_last_layer(x)
    return x
