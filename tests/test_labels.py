"""Class labels: ImageNet's names shipped in the package, ``labels.txt`` + ``label_filename`` written by the
exporter (``--labels FILE`` for other classes), and read by the server at load under the repository's path rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sepconv.export.labels import BACKGROUND, LabelsError, default_labels, imagenet_labels, read_labels_file
from tests.serving import running_server

EXPORT = ["export", "mobilenet_v1", "--alpha", "0.25", "--resolution", "32"]


def run(*args: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "sepconv", *args], capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_imagenet_labels() -> None:
    names = imagenet_labels()
    assert len(names) == 1000 == len(set(names))
    assert (names[0], names[1], names[285], names[999]) == ("tench", "goldfish", "Egyptian cat", "toilet tissue")
    assert default_labels(1000) == list(names)
    assert default_labels(1001) == [BACKGROUND, *names]
    assert default_labels(10) is None and default_labels(1000, include_top=False) is None


def test_read_labels_file(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_bytes(b"cat\r\ndog\r\n")
    assert read_labels_file(path, 2) == ["cat", "dog"]
    with pytest.raises(LabelsError, match="2 labels, the model has 3 classes"):
        read_labels_file(path, 3)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(LabelsError, match="UTF-8"):
        read_labels_file(path)
    with pytest.raises(LabelsError, match="does not exist"):
        read_labels_file(tmp_path / "missing.txt")


def test_export_writes_imagenet_labels(tmp_path: Path) -> None:
    code, out = run(*EXPORT, "--repo", str(tmp_path), "--name", "m")
    assert code == 0, out
    assert (tmp_path / "m" / "labels.txt").read_text().splitlines() == list(imagenet_labels())
    assert 'label_filename: "labels.txt"' in (tmp_path / "m" / "config.pbtxt").read_text()
    code, out = run(*EXPORT, "--classes", "1001", "--repo", str(tmp_path), "--name", "m1001")
    assert code == 0, out
    assert (tmp_path / "m1001" / "labels.txt").read_text().splitlines()[:2] == [BACKGROUND, "tench"]
    # re-exported without the classifier: no labels any more
    code, out = run(*EXPORT, "--no-top", "--repo", str(tmp_path), "--name", "m")
    assert code == 0, out
    assert not (tmp_path / "m" / "labels.txt").exists()
    assert "label_filename" not in (tmp_path / "m" / "config.pbtxt").read_text()


def test_export_labels_option(tmp_path: Path) -> None:
    labels = tmp_path / "names.txt"
    labels.write_text("red\ngreen\nblue\n")
    repo = tmp_path / "repo"
    code, out = run(*EXPORT, "--classes", "3", "--labels", str(labels), "--repo", str(repo), "--name", "rgb")
    assert code == 0, out
    assert (repo / "rgb" / "labels.txt").read_text() == "red\ngreen\nblue\n"
    code, out = run(*EXPORT, "--classes", "4", "--labels", str(labels), "--repo", str(repo), "--name", "four")
    assert code == 2 and "3 labels, the model has 4 classes" in out
    code, out = run(*EXPORT, "--no-top", "--labels", str(labels), "--repo", str(repo), "--name", "nt")
    assert code == 2 and "--no-top" in out
    code, out = run(*EXPORT, "--classes", "7", "--repo", str(repo), "--name", "seven")
    assert code == 0 and not (repo / "seven" / "labels.txt").exists()  # no names known for 7 classes


def test_server_reads_labels_under_the_path_rules(tmp_path: Path) -> None:
    from sepconv.service.app import create_app
    from sepconv.service.settings import Settings

    repo = tmp_path / "repo"
    for name in ("good", "missing", "outside", "short"):
        assert run(*EXPORT, "--classes", "3", "--labels", str(_labels(tmp_path)), "--repo", str(repo),
                   "--name", name)[0] == 0
    (repo / "missing" / "labels.txt").unlink()
    (repo / "outside" / "labels.txt").unlink()
    secret = tmp_path / "secret.txt"
    secret.write_text("a\nb\nc\n")
    os.symlink(secret, repo / "outside" / "labels.txt")
    (repo / "short" / "labels.txt").write_text("only one\n")
    with running_server(create_app(Settings(repo=repo, providers="cpu", access_log=False))) as url:
        index = {m["name"]: m for m in httpx.post(f"{url}/v2/repository/index", json={}).json()}
        assert index["good"]["state"] == "READY"
        assert index["missing"]["state"] == "UNAVAILABLE" and "missing" in index["missing"]["reason"]
        assert index["outside"]["state"] == "UNAVAILABLE" and "outside the repository" in index["outside"]["reason"]
        assert index["short"]["state"] == "UNAVAILABLE" and "1 labels" in index["short"]["reason"]
        config = httpx.get(f"{url}/v2/models/good/config").json()
        assert config["output"][0]["label_filename"] == "labels.txt"


def _labels(tmp_path: Path) -> Path:
    path = tmp_path / "three.txt"
    path.write_text("x\ny\nz\n")
    return path
