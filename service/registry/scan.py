"""The model repository on disk (Triton's layout), read and checked; nothing here loads a session.

Layout (names, versions and file names are :mod:`sepconv.export.repository.layout`'s, the one owner of those rules)::

    REPO/NAME/config.pbtxt          (optional; auto-completed from the ONNX model when absent)
    REPO/NAME/labels.txt            (optional; any file an output's ``label_filename`` names, in the model folder)
    REPO/NAME/VERSION/model.onnx    (VERSION = a positive integer; the file name is the config's
                                     ``default_model_filename``)

Promises: no path outside the repository root is ever opened. Model directories, version directories,
``config.pbtxt`` and the model file are resolved (symlinks followed) and must stay under the root, and so must
every ONNX external-data location (checked in every tensor, subgraphs and model-local functions included).
What is wrong on disk raises :class:`LoadError` (it becomes the model's UNAVAILABLE reason); a name that
breaks the layout's rules raises ``InvalidInput``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx

from sepconv.export.labels import MAX_LABELS_BYTES, LabelsError, parse_labels
from sepconv.export.repository import layout
from sepconv.service.errors import InvalidInput
from sepconv.service.registry.model_config import ModelConfig, parse_config

log = logging.getLogger("sepconv.repository")


class LoadError(Exception):
    """Why a model version could not be loaded (becomes its UNAVAILABLE reason)."""


def check_name(name: str) -> str:
    """``name`` when the layout allows it, else ``InvalidInput`` (the layout's message)."""
    try:
        return layout.check_name(name)
    except layout.LayoutError as exc:
        raise InvalidInput(str(exc)) from None


def check_version(version: str | None) -> str | None:
    """A version from a URL: ``None``/empty = "the latest ready one", else its canonical text (``"007"`` ->
    ``"7"``); ``InvalidInput`` when it is not a positive integer of ASCII digits."""
    if version is None or version == "":
        return None
    try:
        return str(layout.parse_version(version))
    except layout.LayoutError as exc:
        raise InvalidInput(str(exc)) from None


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks resolved, is under ``root`` (itself resolved)."""
    try:
        path.resolve(strict=False).relative_to(root)
    except ValueError:
        return False
    return True


def model_names(root: Path) -> list[str]:
    """Names of the model directories in the repository (valid names only, never outside it)."""
    if not root.is_dir():
        return []
    names = []
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir() or not layout.valid_name(child.name):
            continue
        if not inside(child, root):
            log.warning("skipping %s: it resolves outside the repository", child)
            continue
        names.append(child.name)
    return names


def model_dir(root: Path, name: str) -> Path:
    path = root / check_name(name)
    if not inside(path, root):
        raise LoadError(f"model directory {name!r} resolves outside the repository")
    return path


def version_numbers(directory: Path, root: Path) -> list[int]:
    """The version directories of a model (positive integers, inside the repository)."""
    return [int(p.name) for p in directory.iterdir() if layout.is_version_dir(p) and inside(p, root)]


def read_config(directory: Path, root: Path, name: str) -> ModelConfig:
    """The model's ``config.pbtxt`` parsed (an empty config when there is none: auto-completion fills it)."""
    path = directory / layout.CONFIG_FILE
    if not path.exists():
        return ModelConfig(name=name)
    if not inside(path, root) or not path.is_file():
        raise LoadError(f"{layout.CONFIG_FILE} is not a regular file inside the repository")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadError(f"cannot read {layout.CONFIG_FILE}: {exc}") from exc
    return parse_config(text, name)


def model_file(directory: Path, root: Path, version: str, filename: str) -> Path:
    """The version's model file: present, a regular file, inside the repository."""
    path = directory / version / filename
    if not path.exists():
        raise LoadError(f"{version}/{filename} is missing")
    if not inside(path, root):
        raise LoadError(f"{version}/{filename} resolves outside the repository")
    if not path.is_file():
        raise LoadError(f"{version}/{filename} is not a regular file")
    return path


def read_metadata(path: Path, root: Path, shown: str, data: bytes) -> tuple[dict[str, str], bool]:
    """The ONNX model's ``metadata_props`` (from ``data``, the file's bytes) and whether it has external data,
    after checking that it holds a graph and that its external data stays inside the repository (the
    weights themselves are not read: ``shown`` names the file in messages)."""
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have various types
        raise LoadError(f"{shown} is not a valid ONNX model: {exc}") from exc
    if not proto.graph.node and not proto.graph.output:
        raise LoadError(f"{shown} holds no graph (empty or not ONNX)")
    external = check_external_data(proto, path, root)
    return {p.key: p.value for p in proto.metadata_props}, external


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers (dense and sparse), tensor attributes, and the same inside
    subgraphs (``If``/``Loop``/``Scan`` bodies), where external data could hide as well."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def check_external_data(proto: onnx.ModelProto, model_path: Path, root: Path) -> bool:
    """Every external-data location must be a relative path that stays inside the repository; True when the
    model has any."""
    found = False
    functions = (t for f in proto.functions for t in _node_tensors(f.node))  # model-local functions too
    for tensor in itertools.chain(_all_tensors(proto.graph), functions):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        if not location or Path(location).is_absolute() or location.startswith(("/", "\\")):
            raise LoadError(f"tensor {tensor.name!r}: external data location {location!r} must be relative")
        target = model_path.parent / location
        if not inside(target, root):
            raise LoadError(f"tensor {tensor.name!r}: external data {location!r} points outside the repository")
        if not target.is_file():
            raise LoadError(f"tensor {tensor.name!r}: external data file {location!r} is missing")
    return found


def read_labels(directory: Path, root: Path, filename: str, output: str, classes: int | None) -> list[str]:
    """The labels an output's ``label_filename`` names (a plain file name in the model folder, as Triton reads
    it): inside the repository, a regular UTF-8 file of at most ``MAX_LABELS_BYTES``, one label a line, and, when
    the output's class count is known, exactly one line per class."""
    shown = f"label_filename {filename!r} of output {output!r}"
    if not filename or "/" in filename or "\\" in filename or filename in (".", ".."):
        raise LoadError(f"{shown} must be a plain file name in the model's folder")
    path = directory / filename
    if not path.exists():
        raise LoadError(f"{shown}: the file is missing")
    if not inside(path, root):
        raise LoadError(f"{shown} resolves outside the repository")
    if not path.is_file():
        raise LoadError(f"{shown} is not a regular file")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise LoadError(f"{shown} is over {MAX_LABELS_BYTES} bytes")
    try:
        return parse_labels(path.read_bytes().decode("utf-8"), classes, shown)
    except UnicodeDecodeError as exc:
        raise LoadError(f"{shown} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, LabelsError) as exc:
        raise LoadError(str(exc)) from None
