"""Precision variants end to end: ``sepconv export --precision fp16|int8 [--calibration PATH]`` as a user runs it
(real subprocesses), the drift report in the metadata, bad calibration inputs, the catalog, and a real server
serving and profiling the INT8 / FP16 exports of imported-weight fixtures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from sepconv.export.errors import ExportError
from sepconv.export.precision.calibration import InputSpec, load_calibration, synthetic_images, synthetic_inputs
from sepconv.export.preprocessing import IMAGENET_MEAN, IMAGENET_STD, preprocess
from sepconv.export.repository.writer import read_metadata
from sepconv.service.app import create_app
from sepconv.service.settings import Settings
from tests.fixtures.weights import decompress_all
from tests.serving import running_server
from tests.test_cli_export import sepconv

pytest.importorskip("h5py")
pytest.importorskip("safetensors")
pytest.importorskip("onnxconverter_common")
PIL = pytest.importorskip("PIL")

KERAS_V1 = "mobilenet_v1_0.25_96_keras_applications.h5"  # exported here in the default NCHW layout
KERAS_V2 = "mobilenet_v2_0.35_96.weights.h5"
TORCH_V2 = "mobilenet_v2_0.35_96_torchvision.safetensors"
SPEC = InputSpec((3, 96, 96), "NCHW", 96, "keras")
MIN_DISTINCT = 4  # of the fixtures' 10 classes: agreement over inputs that all land in one class proves nothing


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return decompress_all(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "inputs.npy"
    np.save(path, synthetic_inputs(SPEC, 48, seed=3))
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, files: Path, calib: Path) -> Path:
    """fp32 / int8 / fp16 exports of the Keras MobileNetV1 fixture (int8 calibrated on ``calib``), by the CLI."""
    repo = tmp_path_factory.mktemp("precision") / "models"
    for precision in ("fp32", "int8", "fp16"):
        extra = ["--calibration", str(calib)] if precision != "fp32" else []
        r = sepconv("export", "mobilenet_v1", "--weights", str(files / KERAS_V1), "--resolution", "96",
                    "--repo", str(repo), "--name", f"v1_{precision}", "--precision", precision, *extra)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(repo / f"v1_{precision}" / "1" / "model.onnx")  # stdout: the path only
        if precision != "fp32":
            assert f"{precision} drift vs fp32" in r.stderr and "SNR" in r.stderr
            assert "synthetic" not in r.stderr  # calibrated on the given file: no warning
    return repo


def _drift(repo: Path, name: str) -> dict:
    meta = read_metadata(repo / name / "1" / "model.onnx")
    return meta, json.loads(meta["sepconv.drift"])


# --------------------------------------------------------------------------------------------
# the exported files and their drift report
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_drift_report_is_in_the_metadata_and_sane(repo: Path, precision: str) -> None:
    meta, drift = _drift(repo, f"v1_{precision}")
    fp32 = read_metadata(repo / "v1_fp32" / "1" / "model.onnx")
    assert meta["precision"] == precision and fp32["precision"] == "fp32"
    assert "inputs.npy (48 inputs)" in meta["calibration"]
    out = drift["output"]
    assert drift["inputs"] == 48 and out["name"] == "logits"
    assert out["distinct_top1"] >= MIN_DISTINCT, "the inputs must spread over the classes"
    assert np.isfinite(out["snr_db"]) and out["snr_db"] > 0
    assert 0.0 <= out["top1_agreement"] <= 1.0 and 0.0 <= out["top5_agreement"] <= 1.0
    assert out["top5_agreement"] >= out["top1_agreement"]
    # every exporter layer compared, by its exporter name
    layers = [la["name"] for la in json.loads(fp32["sepconv.summary"])["layers"]]
    assert [r["name"] for r in drift["layers"]] == layers and drift["layers_not_compared"] == []
    assert all(r["snr_db"] is None or np.isfinite(r["snr_db"]) for r in drift["layers"])
    assert drift["worst_layer"] in layers
    # the report is true: recompute the logits SNR from the two files
    x = synthetic_inputs(SPEC, 48, seed=3)  # what ``calib`` holds
    ref = ort.InferenceSession(str(repo / "v1_fp32/1/model.onnx")).run(None, {"input": x})[0]
    var = ort.InferenceSession(str(repo / f"v1_{precision}/1/model.onnx")).run(None, {"input": x})[0]
    snr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((var.astype(np.float64) - ref) ** 2))
    assert abs(snr - out["snr_db"]) < 0.05
    assert out["top1_agreement"] == pytest.approx(float(np.mean(ref.argmax(1) == var.argmax(1))))


def test_int8_is_static_qdq_per_channel_and_fp16_keeps_fp32_io(repo: Path) -> None:
    q = onnx.load(str(repo / "v1_int8/1/model.onnx"))
    onnx.checker.check_model(q, full_check=True)
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    inits = {t.name: t for t in q.graph.initializer}
    weight_dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_W_quantized")]
    assert weight_dq, "weights stored as INT8"
    for n in weight_dq:
        assert inits[n.input[0]].data_type == TensorProto.INT8
        assert len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1  # a scale per output channel
    h = onnx.load(str(repo / "v1_fp16/1/model.onnx"))
    onnx.checker.check_model(h, full_check=True)
    for model in (q, h):
        assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
        assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    conv_w = next(t for t in h.graph.initializer if t.name.endswith("_W"))
    assert conv_w.data_type == TensorProto.FLOAT16


def test_int8_without_calibration_warns_and_image_folder_calibrates(files: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    r = sepconv("export", "mobilenet_v2", "--weights", str(files / TORCH_V2), "--resolution", "96",
                "--repo", str(repo), "--name", "t_syn", "--precision", "int8")
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "synthetic" in r.stderr and "not representative" in r.stderr
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(synthetic_images(6, seed=9, size=120)):
        im.save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (folder / "notes.txt").write_text("not an image: skipped")
    r = sepconv("export", "mobilenet_v2", "--weights", str(files / TORCH_V2), "--resolution", "96",
                "--repo", str(repo), "--name", "t_img", "--precision", "int8", "--calibration", str(folder),
                "--calibration-method", "percentile")
    assert r.returncode == 0, r.stderr
    meta = read_metadata(repo / "t_img/1/model.onnx")
    # torchvision weights: the images were preprocessed torchvision's way
    assert meta["calibration"] == "images/ (6 images, torchvision preprocessing), percentile"


def test_preprocessing_styles() -> None:
    im = synthetic_images(1, seed=4, size=300)[0].resize((300, 200))
    k = preprocess(im, 96, "keras", "NHWC")
    assert k.shape == (96, 96, 3) and k.dtype == np.float32 and -1.0 <= k.min() and k.max() <= 1.0
    assert np.allclose(preprocess(im, 96, "keras", "NCHW"), k.transpose(2, 0, 1))
    t = preprocess(im, 224, "torchvision", "NHWC")
    # torchvision: short side to 256, centre crop 224, /255, ImageNet mean/std
    ref = im.resize((384, 256), PIL.Image.BILINEAR).crop((80, 16, 304, 240))
    ref = (np.asarray(ref, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(t, ref, atol=1e-6)


# --------------------------------------------------------------------------------------------
# bad calibration inputs: a clear error, nothing written
# --------------------------------------------------------------------------------------------
def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "empty").mkdir()
    (tmp / "broken").mkdir()
    (tmp / "broken" / "a.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    cases = {
        "shape": (np.zeros((4, 3, 64, 64), np.float32), "has shape [4, 3, 64, 64]"),
        "layout": (np.zeros((4, 96, 96, 3), np.float32), "that is the NHWC layout, the model's is NCHW"),
        "dtype": (np.zeros((4, 3, 96, 96), np.uint8), "holds uint8 values"),
        "nobatch": (np.zeros((3, 96, 96), np.float32), "without the batch axis"),
        "nan": (np.full((2, 3, 96, 96), np.nan, np.float32), "NaN"),
        "objects": (np.array([{"a": 1}], dtype=object), "not a plain numeric .npy"),
    }
    out = {}
    for key, (array, message) in cases.items():
        np.save(tmp / f"{key}.npy", array, allow_pickle=True)
        out[key] = (tmp / f"{key}.npy", message)
    (tmp / "inputs.csv").write_text("1,2,3")
    out["suffix"] = (tmp / "inputs.csv", "give a .npy")
    out["empty"] = (tmp / "empty", "holds no images")
    out["unreadable"] = (tmp / "broken", "cannot read image")
    out["missing"] = (tmp / "nope.npy", "does not exist")
    return out


def test_bad_calibration_inputs_are_refused_and_nothing_is_written(files: Path, tmp_path: Path) -> None:
    for key, (path, message) in _bad_inputs(tmp_path).items():
        repo = tmp_path / f"models_{key}"
        r = sepconv("export", "mobilenet_v2", "--weights", str(files / KERAS_V2), "--resolution", "96",
                    "--repo", str(repo), "--name", "bad", "--precision", "int8", "--calibration", str(path))
        assert r.returncode == 2, (key, r.stderr)
        assert r.stderr.startswith("error: ") and message in r.stderr, (key, r.stderr)
        assert "Traceback" not in r.stderr
        assert not repo.exists() or not any(repo.rglob("*")), f"{key}: something was written"
    # the unreadable image is named
    r = sepconv("export", "mobilenet_v2", "--resolution", "96", "--alpha", "0.35", "--repo", str(tmp_path / "m"),
                "--precision", "int8", "--calibration", str(tmp_path / "broken"))
    assert "a.jpg" in r.stderr


def test_unknown_precision_method_and_fp32_calibration_are_refused(tmp_path: Path, calib: Path) -> None:
    for args, message in ((["--precision", "int4"], "unknown precision 'int4'"),
                          (["--precision", "int8", "--calibration-method", "kl"], "unknown calibration method"),
                          (["--calibration", str(calib)], "--calibration applies to --precision int8 or fp16")):
        r = sepconv("export", "mobilenet_v2", "--alpha", "0.35", "--resolution", "96", "--repo", str(tmp_path),
                    *args)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert not any(tmp_path.rglob("*.onnx"))


def test_summary_reports_precision_and_drift(calib: Path) -> None:
    """``sepconv summary --precision``: the same accounting as FP32 plus ``precision`` and the drift report; FP32 keeps
    DESIGN.md's exact key set; a bad precision is a clean error."""
    base = ["summary", "mobilenet_v2", "--alpha", "0.35", "--resolution", "96", "--json"]
    fp32 = json.loads(sepconv(*base).stdout)
    assert "precision" not in fp32 and "drift" not in fp32
    for precision in ("int8", "fp16"):
        r = sepconv(*base, "--precision", precision, "--calibration", str(calib))
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["precision"] == precision and s["total_params"] == fp32["total_params"] == 1691208
        assert s["macs"] == fp32["macs"] and len(s["layers"]) == len(fp32["layers"])
        drift = s["drift"]
        assert drift["precision"] == precision and math.isfinite(drift["output"]["snr_db"])
        assert {row["name"] for row in drift["layers"]} <= {la["name"] for la in fp32["layers"]}
    r = sepconv(*base, "--precision", "int4")
    assert r.returncode == 2 and "unknown precision 'int4'" in r.stderr and "Traceback" not in r.stderr


def test_load_calibration_accepts_float64_and_checks_against_the_model(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 96, 96, 3)))
    nhwc = InputSpec((96, 96, 3), "NHWC", 96, "keras")
    x, text = load_calibration(tmp_path / "x.npy", nhwc)
    assert x.dtype == np.float32 and x.shape == (2, 96, 96, 3) and text == "x.npy (2 inputs)"
    with pytest.raises(ExportError, match="NHWC layout, the model's is NCHW"):
        load_calibration(tmp_path / "x.npy", SPEC)


# --------------------------------------------------------------------------------------------
# the catalog
# --------------------------------------------------------------------------------------------
def test_catalog_takes_precision_and_calibration(tmp_path: Path, calib: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f'[defaults]\nrepo = "{tmp_path / "models"}"\nalpha = 0.35\nresolution = 96\n\n'
                       f'[[model]]\narch = "mobilenet_v2"\nname = "c_int8"\nprecision = "int8"\n'
                       f'calibration = "{calib}"\ncalibration_method = "entropy"\n\n'
                       f'[[model]]\narch = "mobilenet_v2"\nname = "c_fp16"\nprecision = "fp16"\n')
    r = sepconv("export", "--catalog", str(catalog))
    assert r.returncode == 0, r.stderr
    meta = {n: read_metadata(tmp_path / "models" / n / "1" / "model.onnx") for n in ("c_int8", "c_fp16")}
    assert meta["c_int8"]["precision"] == "int8" and meta["c_int8"]["calibration"].endswith(", entropy")
    assert meta["c_fp16"]["precision"] == "fp16"
    again = sepconv("export", "--catalog", str(catalog))
    assert again.returncode == 0 and again.stderr.count("up to date") == 2, again.stderr
    catalog.write_text(catalog.read_text().replace('"fp16"', '"bf16"'))
    bad = sepconv("export", "--catalog", str(catalog))
    assert bad.returncode == 2 and "unknown precision 'bf16'" in bad.stderr


# --------------------------------------------------------------------------------------------
# serving and profiling over a real server
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(repo=repo, trace_dir=tmp_path_factory.mktemp("traces"), profile_max_runs=50)
    with running_server(create_app(settings)) as url:
        yield url


def _infer(url: str, model: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["datatype"] == "FP32"
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_every_precision_is_served(server: str) -> None:
    x = synthetic_inputs(SPEC, 4, seed=11)
    ref = _infer(server, "v1_fp32", x)
    for precision in ("int8", "fp16"):
        name = f"v1_{precision}"
        meta = httpx.get(f"{server}/v2/models/{name}").json()
        assert meta["inputs"][0]["datatype"] == "FP32" and meta["outputs"][0]["datatype"] == "FP32"
        config = httpx.get(f"{server}/v2/models/{name}/config").json()
        assert config["input"][0]["data_type"] == "TYPE_FP32"
        y = _infer(server, name, x)
        assert y.shape == ref.shape == (4, 10)
        assert not np.array_equal(y, ref) and np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.5
        summary = httpx.get(f"{server}/v1/models/{name}/summary").json()
        assert summary["precision"] == precision and summary["drift"]["precision"] == precision
        assert summary["drift"]["output"]["distinct_top1"] >= MIN_DISTINCT
    assert httpx.get(f"{server}/v1/models/v1_fp32/summary").json()["precision"] == "fp32"


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_profile_rows_carry_the_exporter_layer_names(server: str, precision: str) -> None:
    def profile(model: str) -> dict:
        r = httpx.post(f"{server}/v1/models/{model}/profile", json={"batch_size": 2, "runs": 5}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    fp32, variant = profile("v1_fp32"), profile(f"v1_{precision}")
    assert variant["layer_source"] == "exporter"
    assert {r["name"] for r in variant["layers"]} == {r["name"] for r in fp32["layers"]}
    assert variant["unattributed_nodes"] == []
    assert set(variant["by_kind"]) == set(fp32["by_kind"]) >= {"depthwise", "pointwise"}
    timed = [r for r in variant["layers"] if r["time_us"]["p50"] > 0]
    convs = [r for r in variant["layers"] if r["kind"] in ("depthwise", "pointwise", "standard")]
    assert {r["name"] for r in convs} <= {r["name"] for r in timed}, "every conv layer gets its kernels' time"
    trace = httpx.get(variant["trace_url"], timeout=30)
    assert trace.status_code == 200
    events = trace.json()
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    kernels = [e for e in events if e.get("cat") == "Node"]
    names = {r["name"] for r in fp32["layers"]}
    assert kernels and all(e["args"]["layer"] in names for e in kernels)
    if precision == "int8":  # ORT ran integer kernels, charged to the exporter's layers
        qconv = [e for e in kernels if e["args"].get("op_name") in ("QLinearConv", "ConvInteger")]
        assert qconv and {e["args"]["layer"] for e in qconv} & {r["name"] for r in convs}
