"""Writing the Triton-layout repository and the catalog (export/repository.py, export/catalog.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sepconv.export.errors import ExportError
from sepconv.export.networks import NetworkConfig, build_network, list_models
from sepconv.export.repository.catalog import DEFAULT_CATALOG, ExportRequest, export, load_catalog
from sepconv.export.repository.layout import DynamicBatching, LayoutError, MetaKey, valid_name
from sepconv.export.repository.writer import config_pbtxt, write_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"arch": "mobilenet_v2", "alpha": 0.35, "resolution": 96}


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_export_writes_triton_layout_with_metadata(tmp_path):
    result = export(ExportRequest(**SMALL, max_batch_size=4,
                                  dynamic_batching={"preferred_batch_size": [2, 4],
                                                    "max_queue_delay_microseconds": 100}), tmp_path)
    assert result.path == tmp_path / "mobilenet_v2_0.35_96" / "1" / "model.onnx"
    assert not result.skipped
    assert sorted(p.name for p in (tmp_path / "mobilenet_v2_0.35_96").rglob("*")) == [
        "1", "config.pbtxt", "labels.txt", "model.onnx"]  # no temporary files left behind; ImageNet's labels
    cfg = (tmp_path / "mobilenet_v2_0.35_96" / "config.pbtxt").read_text()
    for line in ('name: "mobilenet_v2_0.35_96"', 'platform: "onnxruntime_onnx"', "max_batch_size: 4",
                 'name: "input"', "dims: [ 3, 96, 96 ]", 'name: "logits"', "dims: [ 1000 ]",
                 "data_type: TYPE_FP32", "preferred_batch_size: [ 2, 4 ]", "max_queue_delay_microseconds: 100",
                 'label_filename: "labels.txt"'):
        assert line in cfg, line
    meta = _meta(result.path)
    assert meta["architecture"] == "mobilenet_v2" and meta["alpha"] == "0.35" and meta["resolution"] == "96"
    assert meta["classes"] == "1000" and meta["input_layout"] == "NCHW"
    assert "[-1, 1]" in meta["preprocessing"]
    assert meta["weights"].startswith("random")
    assert int(meta["params"]) == 1691208 and int(meta["macs"]) > 0
    summary = json.loads(meta["sepconv.summary"])
    assert summary["total_params"] == 1691208
    node_names = {n.name for n in onnx.load(str(result.path)).graph.node}
    for layer in summary["layers"]:
        assert layer["onnx_nodes"] and set(layer["onnx_nodes"]) <= node_names
        assert layer["op_type"] and layer["kind"] in ("standard", "depthwise", "pointwise", "dense", "other")
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": np.zeros((3, 3, 96, 96), np.float32)})[0]
    assert y.shape == (3, 1000)


def test_second_export_is_skipped_unless_forced_or_changed(tmp_path):
    req = ExportRequest(**SMALL)
    first = export(req, tmp_path)
    mtime = first.path.stat().st_mtime_ns
    again = export(req, tmp_path)
    assert again.skipped and again.path.stat().st_mtime_ns == mtime
    assert not export(req, tmp_path, force=True).skipped
    assert not export(ExportRequest(**SMALL, max_batch_size=2), tmp_path).skipped  # config changed
    # a hand-edited config.pbtxt is rewritten
    (tmp_path / "mobilenet_v2_0.35_96" / "config.pbtxt").write_text("garbage")
    assert not export(ExportRequest(**SMALL, max_batch_size=2), tmp_path).skipped


def test_no_batching_config_keeps_the_batch_dim():
    net = build_network("mobilenet_v3_small", alpha=0.75, resolution=64, input_layout="NHWC")
    cfg = config_pbtxt("m", net.model, 0, DynamicBatching((1,), 0))
    assert "max_batch_size: 0" in cfg and "dims: [ -1, 64, 64, 3 ]" in cfg and "dynamic_batching" not in cfg


def test_name_and_version_options(tmp_path):
    r = export(ExportRequest(**SMALL, name="tiny", version=3), tmp_path)
    assert r.path == tmp_path / "tiny" / "3" / "model.onnx"
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ExportError, match="model name"):
            export(ExportRequest(**SMALL, name=bad), tmp_path)
    with pytest.raises(ExportError, match="version"):
        export(ExportRequest(**SMALL, version=0), tmp_path)
    with pytest.raises(ExportError, match="max batch"):
        export(ExportRequest(**SMALL, max_batch_size=-1), tmp_path)
    with pytest.raises(ExportError, match="does not exist"):
        export(ExportRequest(**SMALL, weights=tmp_path / "missing.h5"), tmp_path)


@pytest.mark.parametrize("bad", ["_m", "a..b"])
def test_names_the_server_would_skip_are_refused_before_any_work(tmp_path, bad):
    assert not valid_name(bad)
    with pytest.raises(LayoutError, match="invalid model name"):
        export(ExportRequest(**SMALL, name=bad), tmp_path)
    # checked first: before the weights file is looked at (it does not exist) and before anything is built
    with pytest.raises(LayoutError, match="invalid model name"):
        export(ExportRequest(**SMALL, name=bad, weights=tmp_path / "missing.h5"), tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("arch", list_models())
@pytest.mark.parametrize(("alpha", "resolution"), [(1.0, 224), (0.35, 96), (0.75, 160), (1.3, 32), (1e-05, 4096)])
def test_default_names_are_names_the_server_serves(arch, alpha, resolution):
    assert valid_name(NetworkConfig(arch, alpha=alpha, resolution=resolution).default_name)


def test_exported_name_is_valid_and_metadata_uses_the_layout_keys(tmp_path):
    result = export(ExportRequest(**SMALL, name="v2.small-1"), tmp_path)
    assert valid_name(result.name) and result.path.parent.parent.name == result.name
    meta = _meta(result.path)
    keys = {v for k, v in vars(MetaKey).items() if k.isupper() and k != "INTERNAL_PREFIX"}
    written = {MetaKey.ARCHITECTURE, MetaKey.ALPHA, MetaKey.RESOLUTION, MetaKey.CLASSES, MetaKey.INCLUDE_TOP,
               MetaKey.PADDING, MetaKey.INPUT_NAME, MetaKey.OUTPUT_NAME, MetaKey.INPUT_LAYOUT, MetaKey.INPUT_SHAPE,
               MetaKey.PREPROCESSING, MetaKey.OUTPUT, MetaKey.WEIGHTS, MetaKey.BN_FOLDED, MetaKey.PARAMS,
               MetaKey.TRAINABLE_PARAMS, MetaKey.WEIGHT_PARAMS, MetaKey.DEPLOYED_PARAMS, MetaKey.MACS,
               MetaKey.SUMMARY, MetaKey.EXPORT_KEY, MetaKey.PRECISION}
    assert set(meta) == written and written <= keys


def test_write_model_refuses_an_unwritable_repository(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    net = build_network(**SMALL)
    with pytest.raises(ExportError, match="cannot write"):
        write_model(net.model, blocker, "m")


def test_default_catalog_lists_the_required_models():
    repo, requests = load_catalog(ROOT / DEFAULT_CATALOG)
    assert repo == Path("models")
    names = [r.model_name for r in requests]
    for required in ("mobilenet_v1_1.0_224", "mobilenet_v2_1.0_224", "mobilenet_v3_small_1.0_224",
                     "mobilenet_v2_0.35_96"):
        assert required in names
    for r in requests:
        assert r.max_batch_size >= 1 and r.dynamic_batching and r.dynamic_batching["preferred_batch_size"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[model]]\narch = 'mobilenet_v1'\nwidth = 2\n", "unknown field"),
        ("[[model]]\nalpha = 1.0\n", "'arch' is required"),
        ("[[model]]\narch = 'mobilenet_v1'\n[[model]]\narch = 'mobilenet_v1'\n", "more than once"),
        ("[[model]\n", "not valid TOML"),
        ("[defaults]\nrepo = 'x'\n", r"no \[\[model\]\]"),
    ],
)
def test_bad_catalogs(tmp_path, text, message):
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    with pytest.raises(ExportError, match=message):
        load_catalog(path)


def test_missing_catalog(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        load_catalog(tmp_path / "nope.toml")


def test_catalog_defaults_apply(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[defaults]\nrepo = 'elsewhere'\nmax_batch_size = 2\nclasses = 5\n"
                    "[[model]]\narch = 'mobilenet_v3_small'\nalpha = 0.75\nresolution = 64\n"
                    "[[model]]\narch = 'mobilenet_v3_small'\nalpha = 0.75\nresolution = 64\nname = 'b'\nclasses = 3\n")
    repo, reqs = load_catalog(path)
    assert repo == Path("elsewhere")
    assert [(r.model_name, r.classes, r.max_batch_size) for r in reqs] == [
        ("mobilenet_v3_small_0.75_64", 5, 2), ("b", 3, 2)]
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        results = [export(r, repo) for r in reqs]
    finally:
        os.chdir(cwd)
    assert all((tmp_path / r.path).is_file() for r in results)


def test_catalog_entry_with_weights_needs_a_name(tmp_path: Path) -> None:
    """Its default name would take the width from the file, unknown before reading it: refused, with the reason."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[[model]]\narch = "mobilenet_v2"\nweights = "w.h5"\n')
    with pytest.raises(ExportError, match="needs a 'name'"):
        load_catalog(catalog)
    catalog.write_text('[[model]]\narch = "mobilenet_v2"\nweights = "w.h5"\nname = "mine"\n')
    assert load_catalog(catalog)[1][0].model_name == "mine"
