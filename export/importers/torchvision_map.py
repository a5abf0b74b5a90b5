"""torchvision's MobileNetV2 / MobileNetV3 parameter names and layouts -> Keras layer names and layouts.

The block structure is read from the state_dict itself (``features.{i}.conv.{j}`` for V2,
``features.{i}.block.{j}`` for V3): inside a block, the conv whose weight is ``[C, 1, k, k]`` with
``k > 1`` is the depthwise one, a 1x1 conv before it is the expansion, the one after it the
projection, and ``fc1``/``fc2`` are squeeze-and-excite. Layouts: conv ``OIHW -> HWIO``, depthwise
``[C*M, 1, kh, kw] -> [kh, kw, C, M]``, ``Linear [out, in] -> [in, out]`` (V3's head becomes Keras'
1x1 convs ``conv_2``/``logits``: ``[1, 1, in, out]``); BN ``weight, bias, running_mean, running_var``
-> ``gamma, beta, moving_mean, moving_variance``; ``num_batches_tracked`` is not a weight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from sepconv.export.errors import ExportError
from sepconv.export.importers.store import TORCHVISION, WeightFile

_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
# torchvision's BatchNorm epsilon: V2 uses PyTorch's default, V3 sets 0.001.
TORCHVISION_BN_EPSILON = {"mobilenet_v2": 1e-5, "mobilenet_v3_large": 1e-3, "mobilenet_v3_small": 1e-3}

_NAMES = {
    "mobilenet_v2": {"stem": ("Conv1", "bn_Conv1"), "last": ("Conv_1", "Conv_1_bn"), "bn": "_BN",
                     "block": lambda i: "expanded_conv_" if i == 0 else f"block_{i}_", "inner": "conv"},
    "mobilenet_v3_large": {"stem": ("conv", "conv_bn"), "last": ("conv_1", "conv_1_bn"), "bn": "_bn",
                           "block": lambda i: "expanded_conv_" if i == 0 else f"expanded_conv_{i}_",
                           "inner": "block"},
}
_NAMES["mobilenet_v3_small"] = _NAMES["mobilenet_v3_large"]


@dataclass
class _Conv:
    prefix: str  # e.g. "features.3.conv.0.0" (the conv's own module path)
    bn: str | None  # the BatchNorm module path, if any
    role: str = ""


@dataclass
class _Block:
    index: int
    convs: list[_Conv] = field(default_factory=list)
    se: str | None = None  # module path of the SqueezeExcitation


def map_torchvision(state: dict[str, np.ndarray], arch: str, source: str) -> WeightFile:
    if arch not in _NAMES:
        raise ExportError(f"{source}: a PyTorch state_dict is read in torchvision's naming, which has "
                          f"MobileNetV2 and MobileNetV3 (Large/Small) but not {arch}")
    if not any(k.startswith("features.") for k in state):
        shown = ", ".join(list(state)[:4])
        raise ExportError(f"{source}: not a torchvision MobileNet state_dict (no 'features.*' parameters; it has "
                          f"{shown}, ...)")
    names = _NAMES[arch]
    inner = names["inner"]
    if not any(re.match(rf"features\.\d+\.{inner}\.", k) for k in state):
        other = "MobileNetV3" if inner == "conv" else "MobileNetV2"
        raise ExportError(f"{source}: this looks like a torchvision {other} state_dict, not {arch} "
                          f"(no 'features.N.{inner}.*' blocks)")
    wf = WeightFile(format="", origin=TORCHVISION, detail="torchvision state_dict")
    used: set[str] = set()
    ignored = {k for k in state if k.endswith("num_batches_tracked")}

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise ExportError(f"{source}: missing parameter {key!r} (not a complete torchvision {arch} state_dict)")
        used.add(key)
        return np.asarray(state[key])

    def conv(layer: str, module: str, *, depthwise: bool = False, bias: bool = False) -> None:
        w = take(f"{module}.weight")
        if w.ndim != 4:
            raise ExportError(f"{source}: {module}.weight has shape {tuple(w.shape)}, expected a 4-D conv weight")
        if depthwise:
            c_m, _, kh, kw = w.shape
            mult = 1  # MobileNets' depthwise convs have channel multiplier 1
            wf.add(layer, "depthwise_kernel", f"{module}.weight",
                   w.reshape(c_m // mult, mult, kh, kw).transpose(2, 3, 0, 1))
        else:
            wf.add(layer, "kernel", f"{module}.weight", w.transpose(2, 3, 1, 0))
        if bias:
            wf.add(layer, "bias", f"{module}.bias", take(f"{module}.bias"))

    def bn(layer: str, module: str) -> None:
        for tv_name, keras_name in _BN.items():
            wf.add(layer, keras_name, f"{module}.{tv_name}", take(f"{module}.{tv_name}"))

    def linear(layer: str, module: str, *, as_conv: bool) -> None:
        w = take(f"{module}.weight")
        if w.ndim != 2:
            raise ExportError(f"{source}: {module}.weight has shape {tuple(w.shape)}, expected a Linear weight")
        k = w.T
        wf.add(layer, "kernel", f"{module}.weight", k[None, None] if as_conv else k)
        wf.add(layer, "bias", f"{module}.bias", take(f"{module}.bias"))

    features = sorted({int(m.group(1)) for k in state if (m := re.match(r"features\.(\d+)\.", k))})
    stem, last = features[0], features[-1]
    conv(names["stem"][0], f"features.{stem}.0")
    bn(names["stem"][1], f"features.{stem}.1")
    for block_id, feature in enumerate(features[1:-1]):
        block = _parse_block(state, f"features.{feature}.{names['inner']}", block_id, source)
        prefix = names["block"](block_id)
        for c in block.convs:
            conv(f"{prefix}{c.role}", c.prefix, depthwise=c.role == "depthwise")
            if c.bn is not None:
                bn(f"{prefix}{c.role}{names['bn']}", c.bn)
        if block.se is not None:
            conv(f"{prefix}squeeze_excite_conv", f"{block.se}.fc1", bias=True)
            conv(f"{prefix}squeeze_excite_conv_1", f"{block.se}.fc2", bias=True)
    conv(names["last"][0], f"features.{last}.0")
    bn(names["last"][1], f"features.{last}.1")
    linears = sorted({int(m.group(1)) for k in state if (m := re.match(r"classifier\.(\d+)\.weight$", k))})
    if arch == "mobilenet_v2":
        if linears:
            linear("predictions", f"classifier.{linears[-1]}", as_conv=False)
    elif len(linears) == 2:
        linear("conv_2", f"classifier.{linears[0]}", as_conv=True)
        linear("logits", f"classifier.{linears[1]}", as_conv=True)
    elif linears:
        raise ExportError(f"{source}: torchvision's MobileNetV3 classifier has two Linear layers, this file has "
                          f"{len(linears)}")
    wf.unmapped = sorted(set(state) - used - ignored)
    return wf


def _parse_block(state: dict[str, np.ndarray], path: str, block_id: int, source: str) -> _Block:
    """The convs (with their BN) and SE of one inverted-residual block, in order, with roles."""
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(path) + r"\.(\d+)\.", k))})
    block = _Block(block_id)
    for j in indices:
        p = f"{path}.{j}"
        if f"{p}.0.weight" in state:  # Conv2dNormActivation: .0 conv, .1 BN
            block.convs.append(_Conv(f"{p}.0", f"{p}.1" if f"{p}.1.running_mean" in state else None))
        elif f"{p}.fc1.weight" in state:
            block.se = p
        elif f"{p}.running_mean" in state:  # a plain BN after a plain conv (V2's projection)
            if not block.convs or block.convs[-1].bn is not None:
                raise ExportError(f"{source}: batch norm {p} follows no convolution")
            block.convs[-1].bn = p
        elif f"{p}.weight" in state:
            block.convs.append(_Conv(p, None))
    dw = [i for i, c in enumerate(block.convs) if _is_depthwise(state[f"{c.prefix}.weight"])]
    if len(dw) != 1:
        raise ExportError(f"{source}: block {path} has {len(dw)} depthwise convolutions, expected one")
    for i, c in enumerate(block.convs):
        c.role = "depthwise" if i == dw[0] else ("expand" if i < dw[0] else "project")
    roles = [c.role for c in block.convs]
    if roles.count("expand") > 1 or roles.count("project") != 1:
        raise ExportError(f"{source}: block {path} has an unexpected structure ({', '.join(roles)})")
    return block


def _is_depthwise(weight: np.ndarray) -> bool:
    return weight.ndim == 4 and weight.shape[1] == 1 and weight.shape[2] * weight.shape[3] > 1
