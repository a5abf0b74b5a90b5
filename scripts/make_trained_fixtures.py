#!/usr/bin/env python3
"""Train small MobileNets, in their own frameworks, on the synthetic shapes task and write them as weight fixtures
(``tests/fixtures/weights/*_shapes*``) with the logits the framework computes for them.

Needs the frameworks (pip install -e '.[frameworks]'); 5 to 8 minutes per network on 2 CPU cores. Run from the
repository root:

    nice -n 10 .venv/bin/python scripts/make_trained_fixtures.py [--only NAME] [--steps N]

Why: the random-weight fixtures of ``scripts/make_weight_fixtures.py`` are BN-normalised random nets, which amplify
any perturbation layer after layer (the "chaotic" regime), so they cannot show what INT8 / FP16 cost a deployed,
trained MobileNet. These are trained on :mod:`tests.fixtures.weights.shapes` (10 classes: 5 shapes x solid /
striped, random position, scale, rotation, colours, textured background, noise), one fresh batch of 32 per step
from seeds ``TRAIN_SEED + step`` (never the calibration or held-out seeds), 2000 steps of AdamW with a cosine
learning-rate decay; the held-out accuracy is measured on 1000 pictures of ``HELDOUT_SEED`` and stored in
``expected.json`` (``trained``). Trained shorter (800 steps), the same networks reached 50-92 % and quantized
worse (27-31 dB INT8 logits SNR instead of 34-37): a half-trained net is closer to the random, chaotic regime.

Written as the framework writes them (Keras 3 ``.weights.h5``; the keras-applications HDF5 layout by h5py; a
torchvision-named ``state_dict`` as safetensors). To keep the committed files under 1 MB, every stored float keeps
8 of its 23 mantissa bits (about 0.4 % relative rounding, applied *before* the held-out accuracy and the expected
logits are computed: the fixture is the rounded network), then xz. Seeded throughout; the CPU kernels' summation
order can still differ between builds, so a rerun elsewhere gives a slightly different (equally valid) fixture.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from make_weight_fixtures import compress, short_mantissa, write_keras_applications_h5  # noqa: E402

from tests.fixtures.weights import EXPECTED, HERE, reference_input  # noqa: E402
from tests.fixtures.weights.shapes import HELDOUT_SEED, TRAIN_SEED, model_inputs, pictures  # noqa: E402

BATCH = 2  # expected logits: on reference_input(spec, BATCH), two held-out pictures of the task
R = 96
MANTISSA_BITS = 8
TRAIN_BATCH = 32
HELDOUT = 1000
LR = 3e-3
WEIGHT_DECAY = 1e-4
STEPS = 2000

V2_KERAS = "mobilenet_v2_0.35_96_shapes.weights.h5"
V1_KERAS = "mobilenet_v1_0.25_96_shapes_keras_applications.h5"
V2_TORCH = "mobilenet_v2_0.35_96_shapes_torchvision.safetensors"


def lr_at(step: int, steps: int) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay to zero."""
    warm = max(1, steps // 20)
    if step < warm:
        return LR * (step + 1) / warm
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def batch(step: int, style: str, layout: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = pictures(TRAIN_BATCH, TRAIN_SEED + step, R)
    return model_inputs(images, style, layout), labels


def heldout(style: str, layout: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = pictures(HELDOUT, HELDOUT_SEED, R)
    return model_inputs(images, style, layout), labels


def log(name: str, step: int, steps: int, loss: float, t0: float) -> None:
    print(f"  {name} step {step + 1}/{steps} loss {loss:.3f} ({time.time() - t0:.0f} s)", flush=True)


# --------------------------------------------------------------------------------------------- Keras
def train_keras(ctor, steps: int, **kw):  # noqa: ANN001, ANN201
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = ctor(weights=None, classifier_activation=None, input_shape=(R, R, 3), classes=10, **kw)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # Keras' 0.99 lags far behind in a short run
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    opt = keras.optimizers.AdamW(learning_rate=LR, weight_decay=WEIGHT_DECAY)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.time()
    for step in range(steps):
        opt.learning_rate.assign(lr_at(step, steps))
        loss = float(model.train_on_batch(*batch(step, "keras", "NHWC")))
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(model.name, step, steps, loss, t0)
    trained = model
    model = ctor(weights=None, classifier_activation=None, input_shape=(R, R, 3), classes=10, **kw)  # no optimizer
    for layer, source in zip(model.layers, trained.layers, strict=True):
        if layer.weights:
            layer.set_weights([short_mantissa(w, MANTISSA_BITS) for w in source.get_weights()])
    x, y = heldout("keras", "NHWC")
    accuracy = float(np.mean(np.asarray(model.predict(x, batch_size=100, verbose=0)).argmax(1) == y))
    return model, accuracy, time.time() - t0


def keras_fixture(expected: dict, which: str, steps: int) -> None:
    import keras  # noqa: PLC0415

    if which == "v2":
        model, acc, secs = train_keras(keras.applications.MobileNetV2, steps, alpha=0.35)
        name, arch, alpha = V2_KERAS, "mobilenet_v2", 0.35
        model.save_weights(HERE / name)
    else:
        model, acc, secs = train_keras(keras.applications.MobileNet, steps, alpha=0.25)
        name, arch, alpha = V1_KERAS, "mobilenet_v1", 0.25
        write_keras_applications_h5(model, HERE / name)
    compress(HERE / name)
    spec = {"arch": arch, "alpha": alpha, "resolution": R, "classes": 10, "input_layout": "NHWC", "padding": "same",
            "source": f"keras {keras.__version__}", "trained": _trained(steps, acc, secs, "keras")}
    spec["logits"] = np.asarray(model(reference_input(spec, BATCH), training=False)).tolist()
    expected[name] = spec
    print(f"{name}: held-out accuracy {acc:.3f} after {steps} steps ({secs:.0f} s)", flush=True)


# --------------------------------------------------------------------------------------------- PyTorch
def torch_fixture(expected: dict, steps: int) -> None:
    import torch  # noqa: PLC0415
    from safetensors.torch import save  # noqa: PLC0415

    from tests.fixtures.weights.tv_mobilenet import MobileNetV2  # noqa: PLC0415

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = MobileNetV2(num_classes=10, width_mult=0.35)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps)
        x, y = batch(step, "torchvision", "NCHW")
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log("torch mobilenet_v2", step, steps, loss.item(), t0)
    model.eval()
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.from_numpy(short_mantissa(t.numpy(), MANTISSA_BITS)))
        x, y = heldout("torchvision", "NCHW")
        acc = float(np.mean(np.concatenate([model(torch.from_numpy(x[i:i + 100])).numpy().argmax(1)
                                            for i in range(0, len(x), 100)]) == y))
    secs = time.time() - t0
    spec = {"arch": "mobilenet_v2", "alpha": 0.35, "resolution": R, "classes": 10, "input_layout": "NCHW",
            "padding": "symmetric", "source": f"torch {torch.__version__} (torchvision-named MobileNetV2)",
            "trained": _trained(steps, acc, secs, "torchvision")}
    with torch.no_grad():
        x = np.ascontiguousarray(reference_input(spec, BATCH).transpose(0, 3, 1, 2))
        spec["logits"] = model(torch.from_numpy(x)).numpy().tolist()
    (HERE / V2_TORCH).write_bytes(save(model.state_dict()))
    compress(HERE / V2_TORCH)
    expected[V2_TORCH] = spec
    print(f"{V2_TORCH}: held-out accuracy {acc:.3f} after {steps} steps ({secs:.0f} s)", flush=True)


def _trained(steps: int, accuracy: float, seconds: float, style: str) -> dict:
    return {"task": "tests/fixtures/weights/shapes.py", "preprocessing": style, "steps": steps,
            "batch": TRAIN_BATCH, "heldout_accuracy": round(accuracy, 4), "heldout_pictures": HELDOUT,
            "heldout_seed": HELDOUT_SEED, "train_seconds": round(seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["keras_v2", "keras_v1", "torch_v2"], action="append")
    ap.add_argument("--steps", type=int, default=STEPS)
    args = ap.parse_args()
    which = args.only or ["keras_v2", "torch_v2", "keras_v1"]
    data = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {"batch": BATCH, "fixtures": {}}
    assert data["batch"] == BATCH
    for w in which:  # one at a time, each written as soon as it is trained
        steps = args.steps
        if w == "torch_v2":
            torch_fixture(data["fixtures"], steps)
        else:
            keras_fixture(data["fixtures"], w.split("_")[1], steps)
        EXPECTED.write_text(json.dumps(data, indent=1) + "\n")
    for p in sorted(HERE.glob("*_shapes*.xz")):
        print(f"{p.stat().st_size / 1024:8.1f} KB  {p.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
