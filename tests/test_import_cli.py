"""``sepconv export ARCH --weights FILE`` as a user runs it (real subprocesses, real files): a good file
becomes a model that reproduces the source framework; a wrong one is refused and writes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.fixtures.weights import decompress_all, expected, reference_input

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = expected()
V1_H5 = "mobilenet_v1_0.25_96_keras_applications.h5"
V2_KERAS3 = "mobilenet_v2_0.35_96.weights.h5"
V2_TORCH = "mobilenet_v2_0.35_96_torchvision.safetensors"


def sepconv(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "sepconv", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures, decompressed into a temporary folder."""
    return decompress_all(tmp_path_factory.mktemp("weights"))


@pytest.mark.parametrize("name", [V2_KERAS3, V2_TORCH])
def test_export_with_weights_reproduces_the_framework(files: Path, tmp_path: Path, name: str) -> None:
    spec = FIXTURES["fixtures"][name]
    repo = tmp_path / "repo"
    # no --alpha / --classes / --padding: they come from the file
    r = sepconv("export", spec["arch"], "--weights", files / name, "--resolution", spec["resolution"],
                "--input-layout", spec["input_layout"], "--repo", repo)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path == repo / f"{spec['arch']}_{spec['alpha']}_{spec['resolution']}" / "1" / "model.onnx"
    # the import report, on stderr (stdout is the model path alone)
    assert re.search(r"imported .*: (\d+)/\1 layers matched, \d+ tensors, [\d,]+ params loaded, 0 unused", r.stderr), \
        r.stderr
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["padding"] == spec["padding"] and meta["weights_origin"] in ("keras", "torchvision")
    assert json.loads(meta["import_report"])["unused"] == []
    x = reference_input(spec, FIXTURES["batch"])
    if spec["input_layout"] == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert float(np.abs(out - np.asarray(spec["logits"], np.float32)).max()) <= 1e-4


def _corrupt(files: Path, tmp: Path) -> dict[str, Path]:
    data = (files / V2_KERAS3).read_bytes()
    made = {"truncated": tmp / "truncated.h5", "random": tmp / "random.pth", "pickle": tmp / "list.pkl"}
    made["truncated"].write_bytes(data[: len(data) // 3])
    made["random"].write_bytes(np.random.default_rng(1).bytes(2048))
    made["pickle"].write_bytes(b"\x80\x02]q\x00(K\x01K\x02e.")
    return made


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("v1-as-v2", [], "holds mobilenet_v1 weights, not mobilenet_v2"),
        ("alpha", ["--alpha", "1.0"], "was this exported with alpha=0.35"),
        ("no-top", ["--no-top"], "not used by mobilenet_v2"),
        ("truncated", [], "truncated"),
        ("random", [], "not a weights file"),
        ("pickle", [], "PyTorch|torch"),
        ("torch-same", ["--padding", "same"], "torchvision weights, which need --padding symmetric"),
        ("keras-symmetric", ["--padding", "symmetric"], "keras weights, which need --padding same"),
        ("folder", [], "is a folder"),
    ],
)
def test_wrong_weights_write_nothing(files: Path, tmp_path: Path, case: str, extra: list[str], message: str) -> None:
    weights = {"v1-as-v2": files / V1_H5, "alpha": files / V2_KERAS3, "no-top": files / V2_KERAS3,
               "torch-same": files / V2_TORCH, "keras-symmetric": files / V2_KERAS3, "folder": files,
               **_corrupt(files, tmp_path)}[case]
    repo = tmp_path / "repo"
    r = sepconv("export", "mobilenet_v2", "--weights", weights, "--resolution", "96", "--repo", repo, *extra)
    assert r.returncode != 0
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert not repo.exists() or not any(repo.rglob("*")), sorted(repo.rglob("*"))


def test_no_top_with_a_classifier_in_the_file_needs_allow_unused(files: Path, tmp_path: Path) -> None:
    spec = FIXTURES["fixtures"][V2_TORCH]
    repo = tmp_path / "repo"
    args = ("export", spec["arch"], "--weights", files / V2_TORCH, "--resolution", spec["resolution"],
            "--no-top", "--repo", repo)
    refused = sepconv(*args)
    assert refused.returncode != 0 and "--allow-unused" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr
    assert not repo.exists() or not any(repo.rglob("model.onnx")), "a refused import writes nothing"
    accepted = sepconv(*args, "--allow-unused")
    assert accepted.returncode == 0, accepted.stderr
    path = Path(accepted.stdout.strip().splitlines()[-1])
    report = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["import_report"])
    assert report["unused"], "the classifier tensors are reported as unused"


def test_catalog_export_keeps_a_model_with_imported_weights(files: Path, tmp_path: Path) -> None:
    """`make serve` runs `export --catalog`: it must not swap a user's imported weights for random ones."""
    spec = FIXTURES["fixtures"][V2_KERAS3]
    repo = tmp_path / "repo"
    imported = sepconv("export", spec["arch"], "--weights", files / V2_KERAS3, "--resolution", spec["resolution"],
                       "--repo", repo)
    assert imported.returncode == 0, imported.stderr
    path = Path(imported.stdout.strip().splitlines()[-1])
    before = path.read_bytes()
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f'[defaults]\nrepo = "{repo}"\n\n[[model]]\narch = "{spec["arch"]}"\n'
                       f'alpha = {spec["alpha"]}\nresolution = {spec["resolution"]}\n')
    kept = sepconv("export", "--catalog", catalog)
    assert kept.returncode == 0, kept.stderr
    assert "weights imported from" in kept.stderr and path.read_bytes() == before
    forced = sepconv("export", "--catalog", catalog, "--force")
    assert forced.returncode == 0, forced.stderr
    assert path.read_bytes() != before and "weights_file" not in {p.key for p in onnx.load(str(path)).metadata_props}
