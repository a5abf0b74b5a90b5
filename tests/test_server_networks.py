"""The real networks: the default catalog (``sepconv export --catalog``) and a small NHWC MobileNetV2,
exported by the CLI into a temporary repository, served, and checked against in-process ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from sepconv.service.app import create_app
from sepconv.service.settings import Settings
from tests.serving import running_server

ROOT = Path(__file__).resolve().parents[1]


def _sepconv(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "sepconv", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def catalog_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("catalog")
    _sepconv("export", "--catalog", "--repo", str(repo))
    _sepconv("export", "mobilenet_v2", "--alpha", "0.5", "--resolution", "64", "--input-layout", "NHWC",
             "--name", "mnv2_nhwc", "--max-batch", "4", "--repo", str(repo))
    return repo


def test_default_catalog_and_mobilenet_v2_served(catalog_repo: Path) -> None:
    import tomllib

    catalog = tomllib.loads((ROOT / "models" / "catalog.toml").read_text())
    app = create_app(Settings(repo=catalog_repo, providers="cpu", access_log=False))
    with running_server(app) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=300)
        index = client.get_model_repository_index()
        assert len(index) == len(catalog["model"]) + 1
        assert all(row["state"] == "READY" for row in index), index
        for row in index:
            name = row["name"]
            meta = client.get_model_metadata(name)
            config = client.get_model_config(name)
            (inp,), (out,) = meta["inputs"], meta["outputs"]
            assert (inp["name"], out["name"]) == ("input", "logits")
            assert inp["shape"][0] == -1 and config["max_batch_size"] >= 4
            if name != "mnv2_nhwc":
                assert "dynamic_batching" in config  # from the catalog's config.pbtxt
            x = np.random.default_rng(len(name)).standard_normal((2, *inp["shape"][1:])).astype(np.float32)
            sess = ort.InferenceSession(str(catalog_repo / name / "1" / "model.onnx"),
                                        providers=["CPUExecutionProvider"])
            expected = sess.run(["logits"], {"input": x})[0]
            for binary in (True, False):
                i = httpclient.InferInput("input", list(x.shape), "FP32")
                i.set_data_from_numpy(x, binary_data=binary)
                o = httpclient.InferRequestedOutput("logits", binary_data=binary)
                got = client.infer(name, [i], outputs=[o]).as_numpy("logits")
                assert got.shape == expected.shape
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
            onnx_meta = meta["parameters"]["onnx_metadata"]
            assert onnx_meta["architecture"].startswith("mobilenet") and int(onnx_meta["macs"]) > 0
            assert not any(k.startswith("sepconv.") for k in onnx_meta), "bulky keys stay in /v1/models/{m}/summary"
