"""Write models into a Triton-layout repository: ``REPO/NAME/V/model.onnx`` + ``REPO/NAME/config.pbtxt``, and
``REPO/NAME/labels.txt`` for a classifier with labels (named by ``label_filename`` on its output in the config, as
Triton's classification extension reads it; the rules: :mod:`.layout`).

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a
server scanning the repository never sees half a model. An export killed mid-write (SIGKILL: no ``except``
runs) leaves its ``.{file}.*.tmp``; the next write into that folder removes those older than
:data:`STALE_TEMP_S` (younger ones may belong to an export still running). Each model carries an export key in its
metadata; :func:`is_up_to_date` compares it so re-exporting an unchanged catalog is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from sepconv.export.errors import ExportError
from sepconv.export.labels import labels_text
from sepconv.export.repository.layout import (
    DEFAULT_MAX_BATCH,
    DEFAULT_VERSION,
    LABELS_FILE,
    TEMP_SUFFIX,
    DynamicBatching,
    MetaKey,
    check_max_batch,
    check_name,
    check_version,
    config_path,
    model_dir,
    model_path,
)

_EXPORT_DIR = Path(__file__).resolve().parent.parent  # the whole exporter: its source hashes into the export key


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def config_pbtxt(name: str, model: onnx.ModelProto, max_batch: int,
                 dynamic_batching: DynamicBatching | None = None, label_filename: str | None = None) -> str:
    """Triton ``config.pbtxt`` for an ONNX model with a symbolic batch axis.

    ``max_batch >= 1``: dims exclude the batch axis (Triton's batching convention);
    ``max_batch == 0``: no batching, dims are the full shape with ``-1`` for the batch.
    ``label_filename``: the labels file (in the model's folder) of the outputs, for Triton's classification.
    """
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', 'backend: "onnxruntime"',
             f"max_batch_size: {max_batch}"]
    for section, values in (("input", model.graph.input), ("output", model.graph.output)):
        lines.append(f"{section} [")
        for i, vi in enumerate(values):
            dims = _dims(vi)
            if max_batch > 0:
                dims = dims[1:]
            lines += ["  {", f'    name: "{vi.name}"', "    data_type: TYPE_FP32",
                      f"    dims: [ {', '.join(str(d) for d in dims)} ]"]
            if section == "output" and label_filename:
                lines.append(f'    label_filename: "{label_filename}"')
            lines.append("  }" + ("," if i < len(values) - 1 else ""))
        lines.append("]")
    if dynamic_batching is not None and max_batch > 0:
        lines += dynamic_batching.to_pbtxt()
    return "\n".join(lines) + "\n"


def exporter_fingerprint() -> str:
    """A hash of the exporter's source, so a code change makes old exports stale."""
    h = hashlib.sha256()
    for path in sorted(_EXPORT_DIR.rglob("*.py")):
        h.update(str(path.relative_to(_EXPORT_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def export_key(request: dict[str, Any]) -> str:
    """What identifies an export: the request (arch, alpha, ..., weights file and its mtime) + the exporter."""
    return json.dumps({**request, "exporter": exporter_fingerprint()}, sort_keys=True, default=str)


STALE_TEMP_S = 600.0  # a temporary file this old is left from an interrupted write


def sweep_stale_temps(folder: Path, name: str, max_age_s: float = STALE_TEMP_S) -> list[Path]:
    """Remove ``folder``'s temporary files of ``name`` (``.{name}.*.tmp``) older than ``max_age_s``."""
    removed = []
    now = time.time()
    for tmp in folder.glob(f".{name}.*{TEMP_SUFFIX}"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue  # gone meanwhile, or not ours to remove
    return removed


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)


def read_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def is_up_to_date(repo: Path, name: str, version: int, key: str) -> bool:
    """True when the model file and its config exist and the model carries the same export key."""
    path = model_path(repo, name, version)
    cfg = config_path(repo, name)
    if not path.is_file() or not cfg.is_file():
        return False
    if f'label_filename: "{LABELS_FILE}"' in cfg.read_text() and not (model_dir(repo, name) / LABELS_FILE).is_file():
        return False
    try:
        return read_metadata(path).get(MetaKey.EXPORT_KEY) == key
    except Exception:  # noqa: BLE001 - an unreadable file is simply not up to date
        return False


def write_model(model: onnx.ModelProto, repo: Path, name: str, *, version: int = DEFAULT_VERSION,
                max_batch: int = DEFAULT_MAX_BATCH, dynamic_batching: DynamicBatching | None = None,
                metadata: dict[str, str] | None = None, labels: list[str] | None = None) -> Path:
    """Write ``model`` (with extra ``metadata``), its ``labels.txt`` when ``labels`` are given (one per class of
    its output; a stale one is removed otherwise) and its ``config.pbtxt``, in that order, so that a server never
    reads a config naming a labels file not yet there. Returns the model path."""
    check_name(name)
    check_version(version)
    check_max_batch(max_batch)
    if labels:
        classes = {_dims(vi)[-1] for vi in model.graph.output if _dims(vi)}
        if classes != {len(labels)}:
            raise ExportError(f"{len(labels)} labels for a model whose output has {sorted(classes)} classes")
    if metadata:
        set_metadata(model, metadata)
    path = model_path(repo, name, version)
    try:
        atomic_write(path, model.SerializeToString())
        labels_path = model_dir(repo, name) / LABELS_FILE
        if labels:
            atomic_write(labels_path, labels_text(labels).encode("utf-8"))
        atomic_write(config_path(repo, name),
                     config_pbtxt(name, model, max_batch, dynamic_batching,
                                  LABELS_FILE if labels else None).encode())
        if not labels:
            labels_path.unlink(missing_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write the model repository at {repo}: {exc.strerror or exc}") from None
    return path
