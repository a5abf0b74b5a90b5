#!/usr/bin/env python3
"""Make the small weight files in tests/fixtures/weights/ and the outputs the source framework gives
for them, so the import path is tested in CI without TensorFlow or PyTorch.

Needs the frameworks (pip install -e '.[frameworks]'). Run from the repository root:

    .venv/bin/python scripts/make_weight_fixtures.py

Each fixture is a real network with random weights and random BatchNorm parameters whose statistics
are measured on a random batch (so the outputs depend on the input and the comparison is sharp), written by the
framework's own writer (the keras-applications layout, which Keras 3 no longer writes, by h5py
exactly as those files are laid out). To keep the committed files at a few hundred KB, weights are
rounded to a handful of levels (still a random network; it only makes the files compress) and each
file is stored xz-compressed as NAME.xz; the tests decompress it into a temporary folder.
The expected outputs are what Keras / PyTorch compute for :func:`fixture_input`. The *trained* fixtures
(``*_shapes*``) come from ``scripts/make_trained_fixtures.py``; both scripts update their own entries of
``expected.json``.
"""

from __future__ import annotations

import json
import lzma
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tests.fixtures.weights import EXPECTED, HERE, fixture_input  # noqa: E402

BATCH = 2
RNG = np.random.default_rng(2024)


def quantize(w: np.ndarray, levels: int = 2) -> np.ndarray:
    """Round to multiples of a power of two giving about ``levels`` steps per side."""
    peak = float(np.abs(w).max()) or 1.0
    step = 2.0 ** np.ceil(np.log2(peak / levels))
    return (np.round(w / step) * step).astype(np.float32)


def keras_model(ctor, resolution: int, **kw):  # noqa: ANN001, ANN201
    """Quantized random kernels, then random biases and BN calibrated on a random batch (the logits
    depend on the input: see tests/fixtures/weights/keras_random.py)."""
    import keras  # noqa: PLC0415

    from tests.fixtures.weights.keras_random import randomize_keras_model  # noqa: PLC0415

    m = ctor(weights=None, classifier_activation=None, input_shape=(resolution, resolution, 3), **kw)
    for layer in m.layers:
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([quantize(w) if w.ndim > 1 else w for w in layer.get_weights()])
    randomize_keras_model(keras, m, 2024, resolution)
    for layer in m.layers:  # a few bits per BN value (it compresses), still calibrated within about 1%
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(round_bn(layer.get_weights()))
    return m


def round_bn(values: list[np.ndarray]) -> list[np.ndarray]:
    """gamma, beta, mean, variance with 6 significant bits (compresses; about 1% from the calibrated value)."""
    return [short_mantissa(v) for v in values]


def short_mantissa(v: np.ndarray, bits: int = 6) -> np.ndarray:
    """``v`` as float32 keeping ``bits`` of the 23 mantissa bits (truncated towards zero)."""
    raw = np.ascontiguousarray(v, np.float32).view(np.uint32)
    return (raw & np.uint32((0xFFFFFFFF << (23 - bits)) & 0xFFFFFFFF)).view(np.float32)


def write_keras_applications_h5(model, path: Path) -> None:  # noqa: ANN001
    """The layout of the files keras-applications distributes: ``name/weight:0`` datasets,
    ``depthwise_kernel`` for DepthwiseConv2D, byte-string attributes."""
    import h5py  # noqa: PLC0415
    import keras  # noqa: PLC0415

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.asarray([la.name.encode() for la in model.layers])  # fixed-length "S", as Keras 2
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            g = f.create_group(layer.name)
            if isinstance(layer, keras.layers.BatchNormalization):
                names = ["gamma", "beta", "moving_mean", "moving_variance"]
            elif isinstance(layer, keras.layers.DepthwiseConv2D):
                names = ["depthwise_kernel", "bias"]
            else:
                names = ["kernel", "bias"]
            full = [f"{layer.name}/{n}:0" for n in names[:len(layer.weights)]]
            g.attrs["weight_names"] = np.asarray([n.encode() for n in full], dtype="S")
            for name, value in zip(full, layer.get_weights(), strict=True):
                g.create_dataset(name, data=value)


def compress(path: Path) -> Path:
    """Replace ``path`` with ``path.xz`` (the tests decompress it into a temporary folder)."""
    target = path.with_name(path.name + ".xz")
    target.write_bytes(lzma.compress(path.read_bytes(), preset=9 | lzma.PRESET_EXTREME))
    path.unlink()
    return target


def keras_fixtures(expected: dict) -> None:
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    r = 96
    x = fixture_input(BATCH, r)
    v1 = keras_model(keras.applications.MobileNet, r, alpha=0.25, classes=10)
    name = "mobilenet_v1_0.25_96_keras_applications.h5"
    write_keras_applications_h5(v1, HERE / name)
    compress(HERE / name)
    expected[name] = {"arch": "mobilenet_v1", "alpha": 0.25, "resolution": r, "classes": 10, "input_layout": "NHWC",
                      "padding": "same", "source": f"keras {keras.__version__}",
                      "logits": np.asarray(v1(x, training=False)).tolist()}

    v2 = keras_model(keras.applications.MobileNetV2, r, alpha=0.35, classes=10)
    name = "mobilenet_v2_0.35_96.weights.h5"
    v2.save_weights(HERE / name)
    compress(HERE / name)
    expected[name] = {"arch": "mobilenet_v2", "alpha": 0.35, "resolution": r, "classes": 10, "input_layout": "NHWC",
                      "padding": "same", "source": f"keras {keras.__version__}",
                      "logits": np.asarray(v2(x, training=False)).tolist()}


def torch_fixtures(expected: dict) -> None:
    import torch  # noqa: PLC0415
    from safetensors.torch import save  # noqa: PLC0415

    from tests.fixtures.weights.tv_mobilenet import MobileNetV2, randomize_batch_norm  # noqa: PLC0415

    r = 96
    torch.manual_seed(7)
    model = MobileNetV2(num_classes=10, width_mult=0.35)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(torch.from_numpy(quantize(m.weight.numpy())))
                if m.bias is not None:
                    m.bias.copy_(torch.from_numpy(quantize(RNG.normal(0, 0.1, m.bias.shape))))
    model = randomize_batch_norm(model, seed=7, resolution=r)  # calibrated: the logits depend on the input
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                params = (m.weight, m.bias, m.running_mean, m.running_var)
                for t, v in zip(params, round_bn([t.numpy() for t in params]), strict=True):
                    t.copy_(torch.from_numpy(v))
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.from_numpy(short_mantissa(m.weight.numpy())))
    x = np.ascontiguousarray(fixture_input(BATCH, r).transpose(0, 3, 1, 2))
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    name = "mobilenet_v2_0.35_96_torchvision.safetensors"
    (HERE / name).write_bytes(save(model.state_dict()))
    compress(HERE / name)
    expected[name] = {"arch": "mobilenet_v2", "alpha": 0.35, "resolution": r, "classes": 10, "input_layout": "NCHW",
                      "padding": "symmetric", "source": f"torch {torch.__version__} (torchvision-named MobileNetV2)",
                      "logits": logits.tolist()}


def main() -> None:
    data = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {"batch": BATCH, "fixtures": {}}
    keras_fixtures(data["fixtures"])  # replaces its own entries; the trained fixtures' (make_trained_fixtures.py) stay
    torch_fixtures(data["fixtures"])
    EXPECTED.write_text(json.dumps({"batch": BATCH, "fixtures": data["fixtures"]}, indent=1) + "\n")
    for p in sorted(HERE.iterdir()):
        if p.suffix not in (".py", ".pyc") and p.is_file():
            print(f"{p.stat().st_size / 1024:8.1f} KB  {p.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
