"""An independent, deliberately plain numpy implementation of TF's convolutions for the tests.

It shares no code with ``export/``: padding is recomputed here from TF's documented rule, and
the convolution is a direct loop over output pixels with an einsum over the window.
"""

from __future__ import annotations

import numpy as np


def tf_same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    out = -(-size // stride)
    eff = (k - 1) * dilation + 1
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _pads(padding, h, w, kh, kw, sh, sw, dh, dw):
    if isinstance(padding, str):
        p = padding.upper()
        if p == "VALID":
            return (0, 0), (0, 0)
        if p == "SAME":
            return tf_same_pads(h, kh, sh, dh), tf_same_pads(w, kw, sw, dw)
        if p == "SYMMETRIC":
            ph, pw = ((kh - 1) * dh + 1) // 2, ((kw - 1) * dw + 1) // 2
            return (ph, ph), (pw, pw)
        raise ValueError(padding)
    # explicit NHWC form [[0,0],[t,b],[l,r],[0,0]]
    return tuple(padding[1]), tuple(padding[2])


def conv2d_nhwc(x, f, strides=(1, 1), padding="SAME", dilations=(1, 1), groups=1):
    """x [N,H,W,C]; f [kh,kw,C/groups,O]; float64 accumulation."""
    x = np.asarray(x, np.float64)
    f = np.asarray(f, np.float64)
    n, h, w, c = x.shape
    kh, kw, cg, o = f.shape
    sh, sw = strides
    dh, dw = dilations
    (pt, pb), (pl, pr) = _pads(padding, h, w, kh, kw, sh, sw, dh, dw)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho = (h + pt + pb - ((kh - 1) * dh + 1)) // sh + 1
    wo = (w + pl + pr - ((kw - 1) * dw + 1)) // sw + 1
    og = o // groups
    out = np.zeros((n, ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * sh: i * sh + (kh - 1) * dh + 1: dh, j * sw: j * sw + (kw - 1) * dw + 1: dw, :]
            for g in range(groups):
                out[:, i, j, g * og:(g + 1) * og] = np.einsum(
                    "nhwc,hwco->no", win[..., g * cg:(g + 1) * cg], f[..., g * og:(g + 1) * og]
                )
    return out


def depthwise_conv2d_nhwc(x, f, strides=(1, 1), padding="SAME", dilations=(1, 1)):
    """TF depthwise: f [kh,kw,C,M]; output channel k*M+q from input channel k."""
    kh, kw, c, m = np.shape(f)
    # as a grouped conv: group k has 1 input channel and M outputs, in order k*M+q
    return conv2d_nhwc(x, np.asarray(f).reshape(kh, kw, 1, c * m), strides, padding, dilations, groups=c)


def separable_conv2d_nhwc(x, dw, pw, strides=(1, 1), padding="SAME", dilations=(1, 1)):
    y = depthwise_conv2d_nhwc(x, dw, strides, padding, dilations)
    return conv2d_nhwc(y, pw, (1, 1), "VALID", (1, 1))


def max_rel_err(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-12)
    return float(np.max(np.abs(a - b))) / scale if a.size else 0.0


__all__ = ["conv2d_nhwc", "depthwise_conv2d_nhwc", "separable_conv2d_nhwc", "max_rel_err"]
