"""The repository's rules, owned here once and used by the exporter and the server alike.

Triton's layout::

    REPO/NAME/config.pbtxt          (the server completes a missing one from the model)
    REPO/NAME/VERSION/model.onnx    (VERSION = a positive integer)

* Model names: ASCII letters, digits, ``_``, ``.``, ``-``; first character a letter or digit; at most 128;
  no ``..``. The exporter refuses a name the server would not serve, and the server's scan skips the same.
* Versions: ASCII digits only (``str.isdigit`` takes ``'²'``), at least 1, fits an int64.
* :class:`MetaKey`: the keys of the ONNX ``metadata_props`` the exporter writes and the server reads.
* :class:`DynamicBatching`: Triton's ``dynamic_batching`` block, written by the exporter and read by the server.

Errors are :class:`LayoutError` (an ``ExportError``, so a ``ValueError``); the server turns them into
``InvalidInput``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sepconv.export.errors import ExportError

DEFAULT_REPO = Path("models")
DEFAULT_VERSION = 1
DEFAULT_MAX_BATCH = 8
MAX_BATCH_LIMIT = 4096
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
TEMP_SUFFIX = ".tmp"  # atomic writes: ``.{name}.*.tmp`` beside the file, then os.replace

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
VERSION_RE = re.compile(r"[0-9]{1,18}")


class LayoutError(ExportError):
    """A name, version or block that breaks the repository's rules (a ``ValueError``)."""


class MetaKey:
    """Keys of the exporter's ONNX ``metadata_props``. ``sepconv.*`` keys are bulky or internal: the V2
    model metadata leaves them out (``/v1/models/{m}/summary`` serves the summary)."""

    ARCHITECTURE = "architecture"
    ALPHA = "alpha"
    RESOLUTION = "resolution"
    CLASSES = "classes"
    INCLUDE_TOP = "include_top"
    PADDING = "padding"
    INPUT_NAME = "input_name"
    OUTPUT_NAME = "output_name"
    INPUT_LAYOUT = "input_layout"
    INPUT_SHAPE = "input_shape"
    PREPROCESSING = "preprocessing"
    OUTPUT = "output"
    WEIGHTS = "weights"
    # an imported file's: its name, format and framework, the BN epsilon it needs, what the import used
    WEIGHTS_FILE = "weights_file"
    WEIGHTS_FORMAT = "weights_format"
    WEIGHTS_ORIGIN = "weights_origin"
    BN_EPSILON = "bn_epsilon"
    IMPORT_REPORT = "import_report"
    BN_FOLDED = "bn_folded"
    PARAMS = "params"
    TRAINABLE_PARAMS = "trainable_params"
    WEIGHT_PARAMS = "weight_params"
    DEPLOYED_PARAMS = "deployed_params"
    MACS = "macs"
    # precision variants (export/precision/): fp32 | fp16 | int8, what INT8 was calibrated on, the drift vs FP32
    PRECISION = "precision"
    CALIBRATION = "calibration"
    INTERNAL_PREFIX = "sepconv."
    SUMMARY = "sepconv.summary"
    EXPORT_KEY = "sepconv.export_key"
    CONV_OP = "sepconv.conv_op"
    DRIFT = "sepconv.drift"  # the drift report (JSON) of a fp16 / int8 variant against its FP32 model


def is_internal_key(key: str) -> bool:
    return key.startswith(MetaKey.INTERNAL_PREFIX)


def valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(NAME_RE.fullmatch(name)) and ".." not in name


def check_name(name: object) -> str:
    if not valid_name(name):
        raise LayoutError(f"invalid model name {str(name)[:140]!r}: use letters, digits, '_', '-', '.', starting "
                          "with a letter or digit (at most 128 characters, no '..')")
    return name  # type: ignore[return-value]


def parse_version(text: str) -> int:
    """A version directory's or URL's text -> the version number (raises :class:`LayoutError`)."""
    if not isinstance(text, str) or not VERSION_RE.fullmatch(text) or int(text) < 1:
        raise LayoutError(f"invalid model version {str(text)[:40]!r}: a positive integer")
    return int(text)


def check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 10**18:
        raise LayoutError(f"model version must be an integer >= 1, got {version!r}")
    return version


def is_version_dir(path: Path) -> bool:
    return path.is_dir() and bool(VERSION_RE.fullmatch(path.name)) and int(path.name) > 0


def check_max_batch(max_batch: object) -> int:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 0 <= max_batch <= MAX_BATCH_LIMIT:
        raise LayoutError(f"max batch size must be an integer between 0 and {MAX_BATCH_LIMIT}, got {max_batch!r}")
    return max_batch


def model_dir(repo: Path, name: str) -> Path:
    return Path(repo) / check_name(name)


def model_path(repo: Path, name: str, version: int = DEFAULT_VERSION, filename: str = MODEL_FILE) -> Path:
    return model_dir(repo, name) / str(check_version(version)) / filename


def config_path(repo: Path, name: str) -> Path:
    return model_dir(repo, name) / CONFIG_FILE


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's ``dynamic_batching`` block: what the server batches requests by."""

    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    preserve_ordering: bool = False

    def __post_init__(self) -> None:
        sizes = self.preferred_batch_size
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
            raise LayoutError(f"dynamic_batching.preferred_batch_size must be integers >= 1, got {list(sizes)!r}")
        delay = self.max_queue_delay_microseconds
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise LayoutError(f"dynamic_batching.max_queue_delay_microseconds must be an integer >= 0, "
                              f"got {delay!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DynamicBatching | None:
        """From the catalog's / a JSON config's form (unknown fields refused)."""
        if d is None:
            return None
        unknown = set(d) - {"preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering"}
        if unknown:
            raise LayoutError(f"dynamic_batching: unknown field(s) {', '.join(sorted(unknown))}")
        sizes = d.get("preferred_batch_size", [])
        if not isinstance(sizes, list | tuple):
            raise LayoutError(f"dynamic_batching.preferred_batch_size must be a list, got {sizes!r}")
        return cls(tuple(sizes), d.get("max_queue_delay_microseconds", 0), bool(d.get("preserve_ordering", False)))

    def to_pbtxt(self) -> list[str]:
        lines = ["dynamic_batching {"]
        if self.preferred_batch_size:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(s) for s in self.preferred_batch_size)} ]")
        lines.append(f"  max_queue_delay_microseconds: {self.max_queue_delay_microseconds}")
        if self.preserve_ordering:
            lines.append("  preserve_ordering: true")
        lines.append("}")
        return lines

    def to_json(self) -> dict[str, Any]:
        """Triton's JSON form (``GET .../config``)."""
        return {
            "preferred_batch_size": list(self.preferred_batch_size),
            "max_queue_delay_microseconds": self.max_queue_delay_microseconds,
            "preserve_ordering": self.preserve_ordering,
            "priority_levels": 0,
            "default_priority_level": 0,
            "priority_queue_policy": {},
        }
