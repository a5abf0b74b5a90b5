"""Weight import against the source frameworks themselves: Keras MobileNet / MobileNetV2 /
MobileNetV3 with random weights and random BN statistics saved in both Keras layouts, and a
torchvision-named MobileNetV2 / V3 state_dict, imported and compared with Keras / PyTorch eager on
random inputs (max abs err <= 1e-4). Skipped when TensorFlow/Keras or PyTorch is not installed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sepconv.export.errors import ExportError
from sepconv.export.importers import build_imported, load_weights
from sepconv.export.importers.schema import keras_layers
from sepconv.export.networks import build_network
from tests.fixtures.weights import output_spread
from tests.fixtures.weights.keras_random import randomize_keras_model

pytestmark = [pytest.mark.frameworks, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
TOLERANCE = 1e-4
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(net, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    session = ort.InferenceSession(net.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def max_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ------------------------------------------------------------------------------------------------ Keras
KERAS_CASES = [
    ("mobilenet_v1", "MobileNet", 0.5, 128, {}),
    ("mobilenet_v2", "MobileNetV2", 0.35, 96, {}),
    ("mobilenet_v3_large", "MobileNetV3Large", 0.75, 96, {"include_preprocessing": False}),
    ("mobilenet_v3_small", "MobileNetV3Small", 1.0, 96, {"include_preprocessing": False}),
]


@pytest.fixture(scope="module")
def keras():  # noqa: ANN201
    return pytest.importorskip("keras")


def keras_model(keras, ctor: str, alpha: float, r: int, extra: dict, seed: int):  # noqa: ANN001, ANN201
    """A Keras MobileNet with random weights, random biases and calibrated random BN (its outputs depend
    on its input, so a wrong layout or padding shows)."""
    model = getattr(keras.applications, ctor)(input_shape=(r, r, 3), alpha=alpha, weights=None, classes=7,
                                              classifier_activation=None, **extra)
    return randomize_keras_model(keras, model, seed, r)


def save_legacy_h5(model, path: Path) -> None:  # noqa: ANN001
    """Keras' own legacy HDF5 writer (``layer_names`` / ``weight_names``, names without ``:0``)."""
    import h5py  # noqa: PLC0415
    from keras.src.legacy.saving import legacy_h5_format  # noqa: PLC0415

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def strip_keras3_names(src: Path, dst: Path) -> None:
    """A Keras 3 file as Keras versions before the per-layer ``name`` attribute wrote it."""
    import h5py  # noqa: PLC0415

    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "a") as f:
        for group in f["layers"].values():
            if "vars" in group and "name" in group["vars"].attrs:
                del group["vars"].attrs["name"]


@pytest.mark.parametrize(("arch", "ctor", "alpha", "r", "extra"), KERAS_CASES, ids=[c[0] for c in KERAS_CASES])
def test_keras_import_matches_keras(keras, tmp_path: Path, arch: str, ctor: str, alpha: float, r: int,
                                    extra: dict) -> None:
    model = keras_model(keras, ctor, alpha, r, extra, seed=len(arch))
    # the builders ask for weights in Keras' layer order (Keras 3 files without names rely on it)
    assert [la.name for la in keras_layers(arch, True)] == [la.name for la in model.layers if la.weights]
    x = np.random.default_rng(1).uniform(-1, 1, (2, r, r, 3)).astype(np.float32)
    ref = np.asarray(model(x, training=False))
    assert output_spread(ref) > 0.05  # the logits depend on the input: the comparison below means something
    files = {"keras3": tmp_path / "m.weights.h5", "legacy": tmp_path / "m.h5",
             "keras3-unnamed": tmp_path / "unnamed.weights.h5", "keras-archive": tmp_path / "m.keras"}
    model.save_weights(files["keras3"])
    save_legacy_h5(model, files["legacy"])
    strip_keras3_names(files["keras3"], files["keras3-unnamed"])
    model.save(files["keras-archive"])
    for kind, path in files.items():
        net, weights = build_imported(path, arch, resolution=r, input_layout="NHWC")
        assert (weights.alpha, weights.classes, weights.padding, weights.bn_epsilon) == (alpha, 7, "same", 1e-3)
        assert weights.report.unused == []
        assert weights.report.params_loaded == model.count_params()
        err = max_err(run(net, x), ref)
        print(f"keras {arch} alpha={alpha} {r}px {kind}: max abs err {err:.3g} (|logits| <= {np.abs(ref).max():.3g})")
        assert err <= TOLERANCE, kind


def test_keras_no_top_file(keras, tmp_path: Path) -> None:
    model = keras_model(keras, "MobileNetV2", 0.5, 96, {"include_top": False}, seed=3)
    model.save_weights(tmp_path / "notop.weights.h5")
    with pytest.raises(ExportError, match="predictions: the file has no weights.*--no-top"):
        build_imported(tmp_path / "notop.weights.h5", "mobilenet_v2", resolution=96)
    net, weights = build_imported(tmp_path / "notop.weights.h5", "mobilenet_v2", resolution=96, include_top=False,
                                  input_layout="NHWC")
    assert weights.alpha == 0.5
    x = np.random.default_rng(2).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
    ref = np.asarray(model(x, training=False))
    assert output_spread(ref) > 0.05
    # features after ReLU6 reach ~6, not logits' ~1: the same 1e-4, relative to their size
    tolerance = TOLERANCE * max(1.0, float(np.abs(ref).max()))
    assert max_err(run(net, x), ref) <= tolerance
    # the comparison is sharp enough to catch PyTorch-style padding on Keras weights
    wrong = build_network("mobilenet_v2", alpha=0.5, resolution=96, include_top=False, padding="symmetric",
                          input_layout="NHWC", weights=load_weights(tmp_path / "notop.weights.h5",
                                                                    arch="mobilenet_v2", include_top=False))
    err = max_err(run(wrong, x), ref)
    print(f"keras mobilenet_v2 with symmetric padding: max abs err {err:.3g} (|features| <= {np.abs(ref).max():.3g})")
    assert err > 2 * tolerance


# ---------------------------------------------------------------------------------------------- PyTorch
TORCH_CASES = [("mobilenet_v2", 0.35, 96), ("mobilenet_v2", 1.0, 128), ("mobilenet_v3_large", 1.0, 96),
               ("mobilenet_v3_small", 1.0, 96)]


@pytest.fixture(scope="module")
def torch():  # noqa: ANN201
    return pytest.importorskip("torch")


def tv_model(torch, arch: str, alpha: float, r: int = 96):  # noqa: ANN001, ANN201
    from tests.fixtures.weights.tv_mobilenet import MobileNetV2, MobileNetV3, randomize_batch_norm  # noqa: PLC0415

    torch.manual_seed(0)
    model = MobileNetV2(7, alpha) if arch == "mobilenet_v2" else MobileNetV3(arch.rsplit("_", 1)[1], 7, alpha)
    return randomize_batch_norm(model, seed=1, resolution=r)


@pytest.mark.parametrize(("arch", "alpha", "r"), TORCH_CASES, ids=[f"{a}-{w}" for a, w, _ in TORCH_CASES])
def test_torchvision_import_matches_pytorch(torch, tmp_path: Path, arch: str, alpha: float, r: int) -> None:
    from safetensors.torch import save_file  # noqa: PLC0415

    model = tv_model(torch, arch, alpha, r)
    x = torch.rand(2, 3, r, r, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        ref = model(x).numpy()
    assert output_spread(ref) > 0.05  # the logits depend on the input: the comparison below means something
    state = model.state_dict()
    torch.save(state, tmp_path / "m.pth")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pth")
    save_file(state, tmp_path / "m.safetensors")
    n_params = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    for name in ("m.pth", "legacy.pt", "ckpt.pth", "m.safetensors"):
        net, weights = build_imported(tmp_path / name, arch, resolution=r)
        assert (weights.alpha, weights.classes, weights.padding) == (alpha, 7, "symmetric")
        assert weights.bn_epsilon == (1e-5 if arch == "mobilenet_v2" else 1e-3)
        assert weights.report.unused == [] and weights.report.params_loaded == n_params
        err = max_err(run(net, x.numpy()), ref)
        print(f"torch {arch} alpha={alpha} {r}px {name}: max abs err {err:.3g} (|logits| <= {np.abs(ref).max():.3g})")
        assert err <= TOLERANCE, name


def test_torchvision_numbers_need_symmetric_padding_and_its_epsilon(torch, tmp_path: Path) -> None:
    """The comparison is sharp enough to catch Keras padding or Keras' epsilon on PyTorch weights."""
    model = tv_model(torch, "mobilenet_v2", 1.0)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        ref = model(x).numpy()
    weights = load_weights(tmp_path / "m.pth", arch="mobilenet_v2")
    wrong_pad = build_network("mobilenet_v2", resolution=96, classes=7, padding="same", weights=weights)
    weights.bn_epsilon = 1e-3
    wrong_eps = build_network("mobilenet_v2", resolution=96, classes=7, padding="symmetric", weights=weights)
    errors = max_err(run(wrong_pad, x.numpy()), ref), max_err(run(wrong_eps, x.numpy()), ref)
    print(f"torch mobilenet_v2 with Keras padding: max abs err {errors[0]:.3g}; with eps 1e-3: {errors[1]:.3g}")
    assert min(errors) > 2 * TOLERANCE


def test_torchvision_v3_large_is_not_small(torch, tmp_path: Path) -> None:
    torch.save(tv_model(torch, "mobilenet_v3_large", 1.0).state_dict(), tmp_path / "large.pth")
    with pytest.raises(ExportError, match="holds mobilenet_v3_large weights, not mobilenet_v3_small"):
        load_weights(tmp_path / "large.pth", arch="mobilenet_v3_small")


def test_torchvision_v3_width_other_than_1_is_refused(torch, tmp_path: Path) -> None:
    """torchvision scales V3's expansions by width_mult, Keras (whose network we build) does not."""
    torch.save(tv_model(torch, "mobilenet_v3_small", 0.75).state_dict(), tmp_path / "m.pth")
    with pytest.raises(ExportError, match="width_mult=0.75.*only width_mult=1.0"):
        load_weights(tmp_path / "m.pth", arch="mobilenet_v3_small")


def test_pickles_that_are_not_state_dicts(torch, tmp_path: Path) -> None:
    model = tv_model(torch, "mobilenet_v2", 0.35)
    torch.save(model, tmp_path / "whole_model.pth")
    with pytest.raises(ExportError, match="not a plain state_dict.*weights_only=True.*model.state_dict"):
        load_weights(tmp_path / "whole_model.pth", arch="mobilenet_v2")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ExportError, match="holds a list, not a state_dict"):
        load_weights(tmp_path / "list.pth", arch="mobilenet_v2")
    torch.save({"features.0.0.weight": torch.zeros(1), "lr": 0.1}, tmp_path / "mixed.pth")
    with pytest.raises(ExportError, match="entry 'lr' holds a float, not a tensor"):
        load_weights(tmp_path / "mixed.pth", arch="mobilenet_v2")
    data = (tmp_path / "list.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="cut.pth"):
        load_weights(tmp_path / "cut.pth", arch="mobilenet_v2")
