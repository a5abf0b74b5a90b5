"""Weight import on the committed fixtures (no TensorFlow / PyTorch needed): real files in each
format, imported, built, run by ONNX Runtime and compared with the outputs the source framework
computed for them (``tests/fixtures/weights/expected.json``, made by scripts/make_weight_fixtures.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sepconv.export.errors import ExportError
from sepconv.export.importers import build_imported, detect_format, load_weights
from tests.fixtures.weights import decompress_all, expected, output_spread, reference_input

FIXTURES = expected()
TOLERANCE = 1e-4

V1_H5 = "mobilenet_v1_0.25_96_keras_applications.h5"
V2_KERAS3 = "mobilenet_v2_0.35_96.weights.h5"
V2_TORCH = "mobilenet_v2_0.35_96_torchvision.safetensors"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures, decompressed into a temporary folder."""
    return decompress_all(tmp_path_factory.mktemp("weights"))


def run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def fixture_batch(spec: dict) -> np.ndarray:
    x = reference_input(spec, FIXTURES["batch"])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if spec["input_layout"] == "NCHW" else x


@pytest.mark.parametrize("name", sorted(FIXTURES["fixtures"]))
def test_fixture_matches_source_framework(files: Path, name: str) -> None:
    pytest.importorskip("safetensors" if name.endswith(".safetensors") else "h5py")
    spec = FIXTURES["fixtures"][name]
    # the framework's logits depend on the input (a network that ignores it would hide layout errors)
    assert output_spread(spec["logits"]) > 0.05
    net, weights = build_imported(files / name, spec["arch"], resolution=spec["resolution"],
                                  input_layout=spec["input_layout"])
    # alpha, classes and padding were read from the file, not given
    assert (weights.alpha, weights.classes, weights.padding) == (spec["alpha"], spec["classes"], spec["padding"])
    assert weights.bn_epsilon == (1e-5 if spec["padding"] == "symmetric" else 1e-3)
    out = run(net.model.SerializeToString(), fixture_batch(spec))
    err = float(np.abs(out - np.asarray(spec["logits"], np.float32)).max())
    print(f"{name}: max abs err {err:.3g}")
    assert err <= TOLERANCE
    report = weights.report
    assert report.unused == [] and report.layers_matched == report.layers_in_file
    assert report.params_loaded == net.summary()["total_params"]  # every Keras-counted param came from the file
    meta = {p.key: p.value for p in net.model.metadata_props}
    assert meta["weights"].startswith(f"imported from {name}")
    assert meta["padding"] == spec["padding"] and meta["preprocessing"] == weights.preprocessing
    assert json.loads(meta["import_report"])["params_loaded"] == report.params_loaded


def test_formats_detected_from_content(files: Path, tmp_path: Path) -> None:
    expected = {V1_H5: "hdf5", V2_KERAS3: "hdf5", V2_TORCH: "safetensors"}
    for name, fmt in expected.items():
        renamed = tmp_path / f"{name}.bin"  # the suffix plays no part
        renamed.write_bytes((files / name).read_bytes())
        assert detect_format(renamed) == fmt
    layouts = {name: load_weights(files / name, arch=FIXTURES["fixtures"][name]["arch"]).report.layout
               for name in expected}
    assert layouts[V1_H5] == "keras-applications HDF5 layout"
    assert layouts[V2_KERAS3] == "Keras 3 .weights.h5 layout"
    assert layouts[V2_TORCH] == "torchvision state_dict"


def test_keras_preprocessing_and_torchvision_preprocessing_differ(files: Path) -> None:
    keras = load_weights(files / V2_KERAS3, arch="mobilenet_v2")
    torch = load_weights(files / V2_TORCH, arch="mobilenet_v2")
    assert "[-1, 1]" in keras.preprocessing and "0.485" in torch.preprocessing


# ---------------------------------------------------------------------------------------- wrong files
def _raises(match: str, fn, *args, **kwargs) -> str:  # noqa: ANN001
    with pytest.raises(ExportError, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_another_architecture_is_refused_before_building(files: Path) -> None:
    _raises("holds mobilenet_v1 weights, not mobilenet_v2", load_weights, files / V1_H5, arch="mobilenet_v2")
    _raises("holds mobilenet_v2 weights, not mobilenet_v3_large", load_weights, files / V2_KERAS3,
            arch="mobilenet_v3_large")
    _raises("torchvision.*not mobilenet_v1", load_weights, files / V2_TORCH, arch="mobilenet_v1")
    _raises("torchvision MobileNetV2 state_dict, not mobilenet_v3_small", load_weights, files / V2_TORCH,
            arch="mobilenet_v3_small")


def test_another_alpha_names_the_first_mismatch(files: Path) -> None:
    msg = _raises("was this exported with alpha=0.35", build_imported, files / V2_KERAS3, "mobilenet_v2",
                  alpha=1.0, resolution=96)
    assert msg.startswith("Conv1: expected kernel (3,3,3,32), file has (3,3,3,16)")
    msg = _raises("was this exported with alpha=0.25", build_imported, files / V1_H5, "mobilenet_v1",
                  alpha=0.5, resolution=96)
    assert msg.startswith("conv1: expected kernel (3,3,3,16), file has (3,3,3,8)")


def test_another_class_count_or_no_top(files: Path) -> None:
    _raises(r"conv_preds: expected kernel \(1,1,256,1000\), file has \(1,1,256,10\) — the file's classifier has "
            r"10 classes", build_imported, files / V1_H5, "mobilenet_v1", classes=1000, resolution=96)
    _raises("not used by mobilenet_v2.*drop --no-top.*--allow-unused", build_imported, files / V2_TORCH,
            "mobilenet_v2", include_top=False, resolution=96)
    net, weights = build_imported(files / V2_TORCH, "mobilenet_v2", include_top=False, allow_unused=True,
                                  resolution=96)
    assert weights.report.unused == ["classifier.1.bias", "classifier.1.weight"]
    assert net.model.graph.output[0].name == "features"


def test_a_file_without_classifier_needs_no_top(files: Path, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "notop.h5"
    path.write_bytes((files / V1_H5).read_bytes())
    with h5py.File(path, "a") as f:
        del f["conv_preds"]
        f.attrs["layer_names"] = np.asarray([n for n in f.attrs["layer_names"] if n != b"conv_preds"])
    _raises("conv_preds: the file has no weights for this layer — was it saved without its classifier",
            build_imported, path, "mobilenet_v1", resolution=96)
    net, weights = build_imported(path, "mobilenet_v1", include_top=False, resolution=96)
    assert weights.classes == 1000 and weights.report.unused == []


def test_a_missing_tensor_is_named(files: Path, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "missing.h5"
    path.write_bytes((files / V1_H5).read_bytes())
    with h5py.File(path, "a") as f:
        del f["conv_dw_5_bn"]["conv_dw_5_bn/moving_variance:0"]
    _raises("conv_dw_5_bn lists weight 'conv_dw_5_bn/moving_variance:0' but the file does not hold it",
            load_weights, path, arch="mobilenet_v1")


def test_truncated_and_damaged_files(files: Path, tmp_path: Path) -> None:
    for name in (V1_H5, V2_KERAS3, V2_TORCH):
        data = (files / name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) // 2])
        msg = _raises("truncated", load_weights, cut, arch=FIXTURES["fixtures"][name]["arch"])
        assert cut.name in msg


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (np.random.default_rng(0).bytes(4096), "not a weights file"),
        (b"PK\x03\x04" + b"\0" * 100, "damaged or truncated zip"),
        (b"\x80\x02]q\x00(K\x01K\x02e.", "PyTorch|torch"),  # a plain pickled list: torch missing, or refused
    ],
)
def test_files_that_are_not_weights(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    msg = _raises(match, load_weights, path, arch="mobilenet_v2")
    assert "Traceback" not in msg


def test_hdf5_and_safetensors_that_are_not_mobilenets(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    st = pytest.importorskip("safetensors.numpy")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3, np.float32)
    _raises("neither Keras layout", load_weights, tmp_path / "other.h5", arch="mobilenet_v2")
    st.save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "other.safetensors"))
    _raises("not a torchvision MobileNet state_dict", load_weights, tmp_path / "other.safetensors",
            arch="mobilenet_v2")


def test_unknown_arch_and_missing_file(tmp_path: Path) -> None:
    _raises("unknown architecture", load_weights, tmp_path / "x.h5", arch="resnet50")
    _raises("does not exist", load_weights, tmp_path / "x.h5", arch="mobilenet_v2")


@pytest.mark.parametrize(("module", "name", "match"), [
    ("h5py", V1_H5, "needs h5py"),
    ("safetensors", V2_TORCH, "needs safetensors"),
    ("torch", None, "needs torch"),
])
def test_missing_optional_library_is_named(files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           module: str, name: str | None, match: str) -> None:
    path = files / name if name else tmp_path / "legacy.pt"
    if name is None:
        path.write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.")  # the start of a legacy torch.save file
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    for sub in [m for m in sys.modules if m.startswith(f"{module}.")]:
        monkeypatch.setitem(sys.modules, sub, None)
    _raises(match, load_weights, path, arch="mobilenet_v1" if name == V1_H5 else "mobilenet_v2")
