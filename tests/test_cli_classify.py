"""``sepconv classify --url URL MODEL IMAGE... [--top-k K] [--json]`` against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.classify_repo import KERAS_MODEL, TEN_LABELS, make_classify_repo
from tests.images import encode, picture
from tests.serving import running_server

pytest.importorskip("h5py")
pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    from sepconv.service.app import create_app
    from sepconv.service.settings import Settings

    repo = make_classify_repo(tmp_path_factory.mktemp("cli_repo"), tmp_path_factory.mktemp("weights"))
    with running_server(create_app(Settings(repo=repo, providers="cpu", access_log=False))) as base:
        yield base


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sepconv", "classify", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


def test_json_and_table(url: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    a.write_bytes(encode(picture(80, 60, seed=1), "PNG"))
    b.write_bytes(encode(picture(60, 80, seed=2), "JPEG"))
    result = run("--url", url, KERAS_MODEL, str(a), str(b), "--top-k", "3", "--json")
    assert result.returncode == 0, (result.stdout + result.stderr)
    out = json.loads(result.stdout)
    assert [r["image"] for r in out] == [str(a), str(b)]
    assert all(len(r["top_k"]) == 3 and r["model"] == KERAS_MODEL for r in out)
    assert out[1]["preprocessing"]["image"]["format"] == "JPEG"
    table = run("--url", url, KERAS_MODEL, str(a))
    assert table.returncode == 0, table.stderr
    assert out[0]["top_k"][0]["label"] in table.stdout and "a.png" in table.stdout
    assert out[0]["top_k"][0]["label"] in TEN_LABELS


def test_errors(url: str, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    good = tmp_path / "ok.png"
    good.write_bytes(encode(picture(40, 40), "PNG"))
    result = run("--url", url, KERAS_MODEL, str(good), str(text), "--json")
    assert result.returncode == 1
    out = json.loads(result.stdout)
    assert "top_k" in out[0] and "HTTP 400" in out[1]["error"] and "not an image" in out[1]["error"]
    result = run("--url", url, KERAS_MODEL, str(tmp_path / "missing.png"))
    assert result.returncode == 2 and "does not exist" in (result.stdout + result.stderr)
    result = run("--url", url, "no_such_model", str(good))
    assert result.returncode == 1 and "HTTP 404" in (result.stdout + result.stderr)
