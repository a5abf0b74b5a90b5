"""Which kind of weights file this is, from its first bytes (never only from its suffix)."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from sepconv.export.errors import ExportError

HDF5 = "hdf5"  # keras-applications HDF5 or Keras 3 .weights.h5
KERAS_ZIP = "keras-zip"  # a Keras 3 .keras archive (model.weights.h5 inside)
TORCH_ZIP = "torch-zip"  # torch.save (zip serialisation, the default since PyTorch 1.6)
TORCH_PICKLE = "torch-pickle"  # torch.save(..., _use_new_zipfile_serialization=False)
SAFETENSORS = "safetensors"

FORMATS = (HDF5, KERAS_ZIP, TORCH_ZIP, TORCH_PICKLE, SAFETENSORS)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
# HDF5 may start after a user block of 512, 1024, 2048, ... bytes.
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096, 8192)
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def detect_format(path: str | Path) -> str:
    """Return one of :data:`FORMATS`, or raise :class:`ExportError` saying what the file is not."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
            if size == 0:
                raise ExportError(f"{path.name}: the file is empty")
            if _is_hdf5(f, head):
                return HDF5
            if head.startswith(_ZIP_MAGIC):
                return _zip_kind(path)
            if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
                return TORCH_PICKLE
            if _is_safetensors(f, head, size):
                return SAFETENSORS
    except OSError as exc:
        raise ExportError(f"cannot read weights file {str(path)!r}: {exc.strerror or exc}") from None
    raise ExportError(
        f"{path.name}: not a weights file this tool reads (first bytes {head[:8].hex(' ')}); expected a "
        "Keras HDF5 (.h5 / .weights.h5), a .keras archive, a PyTorch state_dict (.pth / .pt) or .safetensors"
    )


def _is_hdf5(f, head: bytes) -> bool:  # noqa: ANN001 - an open binary file
    if head.startswith(_HDF5_MAGIC):
        return True
    for offset in _HDF5_OFFSETS[1:]:
        f.seek(offset)
        if f.read(8) == _HDF5_MAGIC:
            return True
    return False


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExportError(f"{path.name}: a damaged or truncated zip archive ({exc})") from None
    if any(n == "model.weights.h5" for n in names):
        return KERAS_ZIP
    if any(n.endswith("data.pkl") for n in names):
        return TORCH_ZIP
    shown = ", ".join(names[:5]) or "nothing"
    raise ExportError(f"{path.name}: a zip archive that is neither a PyTorch checkpoint (no data.pkl) nor a "
                      f".keras archive (no model.weights.h5); it holds {shown}")


def _is_safetensors(f, head: bytes, size: int) -> bool:  # noqa: ANN001 - an open binary file
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= min(size - 8, _MAX_SAFETENSORS_HEADER) or head[8:9] != b"{":
        return False
    f.seek(8)
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(header, dict)
