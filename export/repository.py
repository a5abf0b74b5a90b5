"""Write a Triton-layout model repository: ``REPO/NAME/V/model.onnx`` + ``REPO/NAME/config.pbtxt``.

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a
server scanning the repository never sees half a model. Each model carries an export key in its
metadata; :func:`is_up_to_date` compares it so re-exporting an unchanged catalog is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from sepconv.export.errors import ExportError

DEFAULT_REPO = Path("models")
DEFAULT_VERSION = 1
DEFAULT_MAX_BATCH = 8
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
EXPORT_KEY = "sepconv.export_key"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_EXPORT_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's ``dynamic_batching`` block (what the server batches requests by)."""

    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DynamicBatching | None:
        if d is None:
            return None
        unknown = set(d) - {"preferred_batch_size", "max_queue_delay_microseconds"}
        if unknown:
            raise ExportError(f"dynamic_batching: unknown field(s) {', '.join(sorted(unknown))}")
        sizes = d.get("preferred_batch_size", [])
        delay = d.get("max_queue_delay_microseconds", 0)
        if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 1 for s in sizes):
            raise ExportError(f"dynamic_batching.preferred_batch_size must be a list of ints >= 1, got {sizes!r}")
        if not isinstance(delay, int) or delay < 0:
            raise ExportError(f"dynamic_batching.max_queue_delay_microseconds must be an int >= 0, got {delay!r}")
        return cls(tuple(sizes), delay)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise ExportError(f"model name {name!r} is not allowed: use letters, digits, '_', '.', '-' "
                          "(no path separators, at most 128 characters)")
    return name


def check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"model version must be an integer >= 1, got {version!r}")
    return version


def check_max_batch(max_batch: int) -> int:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 0 <= max_batch <= 4096:
        raise ExportError(f"max batch size must be an integer between 0 and 4096, got {max_batch!r}")
    return max_batch


def model_path(repo: Path, name: str, version: int = DEFAULT_VERSION) -> Path:
    return Path(repo) / name / str(version) / MODEL_FILE


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def config_pbtxt(name: str, model: onnx.ModelProto, max_batch: int,
                 dynamic_batching: DynamicBatching | None = None) -> str:
    """Triton ``config.pbtxt`` for an ONNX model with a symbolic batch axis.

    ``max_batch >= 1``: dims exclude the batch axis (Triton's batching convention);
    ``max_batch == 0``: no batching, dims are the full shape with ``-1`` for the batch.
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
                      f"    dims: [ {', '.join(str(d) for d in dims)} ]", "  }" + ("," if i < len(values) - 1 else "")]
        lines.append("]")
    if dynamic_batching is not None and max_batch > 0:
        lines.append("dynamic_batching {")
        if dynamic_batching.preferred_batch_size:
            sizes = ", ".join(str(s) for s in dynamic_batching.preferred_batch_size)
            lines.append(f"  preferred_batch_size: [ {sizes} ]")
        lines.append(f"  max_queue_delay_microseconds: {dynamic_batching.max_queue_delay_microseconds}")
        lines.append("}")
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


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def is_up_to_date(repo: Path, name: str, version: int, key: str, config_text: str | None = None) -> bool:
    """True when the model file exists with the same export key (and, if given, the same config)."""
    path = model_path(repo, name, version)
    cfg = Path(repo) / name / CONFIG_FILE
    if not path.is_file() or not cfg.is_file():
        return False
    if config_text is not None and cfg.read_text() != config_text:
        return False
    try:
        return read_metadata(path).get(EXPORT_KEY) == key
    except Exception:  # noqa: BLE001 - an unreadable file is simply not up to date
        return False


def write_model(model: onnx.ModelProto, repo: Path, name: str, *, version: int = DEFAULT_VERSION,
                max_batch: int = DEFAULT_MAX_BATCH, dynamic_batching: DynamicBatching | None = None,
                metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` (with extra ``metadata``) and its ``config.pbtxt``; returns the model path."""
    check_name(name)
    check_version(version)
    check_max_batch(max_batch)
    if metadata:
        set_metadata(model, metadata)
    path = model_path(repo, name, version)
    try:
        atomic_write(path, model.SerializeToString())
        atomic_write(Path(repo) / name / CONFIG_FILE,
                     config_pbtxt(name, model, max_batch, dynamic_batching).encode())
    except OSError as exc:
        raise ExportError(f"cannot write the model repository at {repo}: {exc.strerror or exc}") from None
    return path
