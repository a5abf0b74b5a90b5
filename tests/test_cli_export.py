"""``sepconv summary`` / ``sepconv export`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sepconv(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "sepconv", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_summary_json_has_the_design_fields():
    r = sepconv("summary", "mobilenet_v2", "--alpha", "0.35", "--resolution", "96", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert set(s) == {"arch", "alpha", "resolution", "classes", "layers", "total_params", "trainable_params",
                      "non_trainable_params", "weight_params", "deployed_params", "macs"}
    assert (s["arch"], s["alpha"], s["resolution"], s["classes"]) == ("mobilenet_v2", 0.35, 96, 1000)
    assert s["total_params"] == 1691208
    assert all(set(layer) == {"name", "kind", "output_shape", "params", "macs"} for layer in s["layers"])
    assert s["layers"][0] == {"name": "Conv1", "kind": "standard", "output_shape": [48, 48, 16],
                              "params": 3 * 3 * 3 * 16 + 4 * 16, "macs": 48 * 48 * 27 * 16}
    assert s["macs"] == sum(layer["macs"] for layer in s["layers"])


def test_summary_table():
    r = sepconv("summary", "mobilenet_v1", "--no-top", "--padding", "symmetric", "--input-layout", "NHWC")
    assert r.returncode == 0, r.stderr
    assert "conv_dw_13" in r.stdout and "conv_preds" not in r.stdout
    assert "Total params: 3,228,864" in r.stdout  # keras MobileNet(include_top=False)
    assert "depthwise" in r.stdout and "pointwise" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["summary", "mobilenet_v7"], "unknown architecture"),
        (["summary", "mobilenet_v2", "--alpha", "0"], "alpha must be > 0"),
        (["summary", "mobilenet_v2", "--alpha", "-0.5"], "alpha must be > 0"),
        (["summary", "mobilenet_v3_small", "--resolution", "16"], "too small"),
        (["summary", "mobilenet_v1", "--classes", "0"], "classes must be >= 1"),
        (["summary", "mobilenet_v1", "--padding", "full"], "padding must be"),
        (["summary", "mobilenet_v1", "--alpha", "wide"], "--alpha"),
        (["summary", "mobilenet_v2", "--alpha", "4", "--classes", "1000000"], "the most an ONNX file holds"),
        (["export", "mobilenet_v1", "--max-batch", "-1", "--repo", "{tmp}"], "max batch"),
        (["export", "mobilenet_v1", "--name", "../x", "--repo", "{tmp}"], "model name"),
        (["export", "mobilenet_v1", "--name", "_m", "--repo", "{tmp}"], "invalid model name '_m'"),
        (["export", "mobilenet_v1", "--name", "a..b", "--repo", "{tmp}"], "invalid model name 'a..b'"),
        (["export", "mobilenet_v1", "--weights", "{tmp}/none.h5", "--repo", "{tmp}"], "does not exist"),
        (["export", "--catalog", "{tmp}/none.toml"], "does not exist"),
        (["export"], "architecture"),
    ],
)
def test_bad_arguments_fail_cleanly(tmp_path, args, message):
    r = sepconv(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode != 0
    assert message in r.stderr + r.stdout
    assert "Traceback" not in r.stderr + r.stdout
    assert not list(tmp_path.rglob("*.onnx"))


@pytest.mark.parametrize("name", ["_m", "a..b"])
def test_export_refuses_a_name_the_server_would_skip_and_writes_nothing(tmp_path, name):
    repo = tmp_path / "repo"
    r = sepconv("export", "mobilenet_v2", "--alpha", "0.35", "--resolution", "96", "--name", name,
                "--repo", str(repo))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: invalid model name") and "Traceback" not in r.stderr
    assert not repo.exists()


def test_unknown_architecture_lists_the_registered_ones():
    from sepconv.export.networks import list_models  # noqa: PLC0415

    r = sepconv("summary", "mobilenet_v7")
    assert r.returncode == 2
    assert f"expected one of {', '.join(list_models())}" in r.stderr


def test_export_prints_the_model_path_and_catalog_skips_up_to_date(tmp_path):
    r = sepconv("export", "mobilenet_v3_small", "--alpha", "0.75", "--resolution", "64", "--repo", str(tmp_path),
                "--name", "small", "--version", "2", "--max-batch", "4", "--classes", "10")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "small" / "2" / "model.onnx" and path.is_file()
    from sepconv.export.repository.layout import valid_name  # noqa: PLC0415

    assert valid_name(path.parent.parent.name)
    assert "max_batch_size: 4" in (tmp_path / "small" / "config.pbtxt").read_text()

    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f"[defaults]\nrepo = '{tmp_path / 'repo'}'\n"
                       "[[model]]\narch = 'mobilenet_v2'\nalpha = 0.35\nresolution = 96\n"
                       "[[model]]\narch = 'mobilenet_v1'\nalpha = 0.25\nresolution = 128\n")
    first = sepconv("export", "--catalog", str(catalog))
    assert first.returncode == 0, first.stderr
    paths = first.stdout.split()
    assert [Path(p).relative_to(tmp_path / "repo").parts[0] for p in paths] == [
        "mobilenet_v2_0.35_96", "mobilenet_v1_0.25_128"]
    second = sepconv("export", "--catalog", str(catalog))
    assert second.returncode == 0 and second.stderr.count("up to date") == 2
    forced = sepconv("export", "--catalog", str(catalog), "--force")
    assert forced.returncode == 0 and "up to date" not in forced.stderr


def test_export_with_weights_takes_alpha_and_classes_from_the_file(tmp_path):
    fixture = ROOT / "tests" / "fixtures" / "weights" / "mobilenet_v1_0.25_96_keras_applications.h5.xz"
    pytest.importorskip("h5py")
    import lzma  # noqa: PLC0415

    import onnx  # noqa: PLC0415

    weights = tmp_path / "v1.h5"
    weights.write_bytes(lzma.decompress(fixture.read_bytes()))
    r = sepconv("export", "mobilenet_v1", "--resolution", "96", "--weights", str(weights), "--repo", str(tmp_path))
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "mobilenet_v1_0.25_96" / "1" / "model.onnx"  # alpha read from the file
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert (meta["alpha"], meta["classes"], meta["padding"]) == ("0.25", "10", "same")
    assert meta["weights"].startswith("imported from v1.h5")
    # a width that does not fit the file is refused with the importer's message, not a traceback
    bad = sepconv("export", "mobilenet_v1", "--alpha", "0.5", "--weights", str(weights), "--repo", str(tmp_path))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and bad.stderr.startswith("error:")


def test_cli_default_opset_is_the_exporters() -> None:
    """The CLI spells the default opset out (importing ``export.graph`` would load onnx for ``--help``): it must
    stay the exporter's ``DEFAULT_OPSET``."""
    import inspect

    from sepconv.commands import export as export_command
    from sepconv.export.graph import DEFAULT_OPSET

    commands = [f for f in vars(export_command).values()
                if inspect.isfunction(f) and "opset" in inspect.signature(f).parameters]
    assert commands and all(inspect.signature(f).parameters["opset"].default == DEFAULT_OPSET for f in commands)
