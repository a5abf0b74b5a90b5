"""The imported weights as a :class:`~sepconv.export.weights.WeightSource`, checking every tensor the
network asks for and keeping the import report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sepconv.export.errors import ExportError
from sepconv.export.importers.schema import TOP_LAYERS, guess_arch
from sepconv.export.importers.store import TORCHVISION, WeightFile
from sepconv.export.repository.layout import MetaKey


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(int(d)) for d in shape) + ")"


@dataclass
class ImportReport:
    """What an import used: filled in while the network is built, complete after :meth:`finish`."""

    path: str
    format: str
    layout: str
    origin: str
    arch: str
    layers_in_file: int = 0
    tensors_in_file: int = 0
    layers_matched: int = 0
    tensors_loaded: int = 0
    params_loaded: int = 0
    unused: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def text(self) -> str:
        unused = f"{len(self.unused)} unused tensor(s)" + (f": {', '.join(self.unused[:5])}"
                                                          + (" ..." if len(self.unused) > 5 else "")
                                                          if self.unused else "")
        return (f"{Path(self.path).name} ({self.layout}): {self.layers_matched}/{self.layers_in_file} layers matched, "
                f"{self.tensors_loaded} tensors, {self.params_loaded:,} params loaded, {unused}")


class ImportedWeights:
    """A :class:`~sepconv.export.weights.WeightSource` over a weights file already read and mapped to Keras names.

    ``get`` raises :class:`ExportError` naming the first tensor that does not fit; ``finish``
    (after the network is built) refuses a file with tensors the network never asked for.
    """

    random = False

    def __init__(self, wf: WeightFile, *, path: Path, arch: str, alpha: float, classes: int | None,
                 include_top: bool, allow_unused: bool, bn_epsilon: float, padding: str, preprocessing: str,
                 file_alpha: float | None, file_classes: int | None, resolution: int | None = None) -> None:
        self.file = wf
        self.path = path
        self.arch = arch
        self.alpha = alpha
        self.classes = classes
        self.include_top = include_top
        self.allow_unused = allow_unused
        self.bn_epsilon = bn_epsilon
        self.padding = padding
        self.preprocessing = preprocessing
        self.file_alpha = file_alpha
        self.file_classes = file_classes
        self.resolution = resolution  # not in the file (convolutions do not depend on it); kept for the caller
        self.description = f"{path.name} ({wf.detail})"
        self._used: set[tuple[str, str]] = set()
        self.report = ImportReport(path=str(path), format=wf.format, layout=wf.detail, origin=wf.origin, arch=arch,
                                   layers_in_file=len(wf.layers), tensors_in_file=wf.tensor_count()
                                   + len(wf.unmapped))

    # -- WeightSource -------------------------------------------------------------------------
    def get(self, layer: str, weight: str, shape: tuple[int, ...]) -> np.ndarray:
        shape = tuple(int(d) for d in shape)
        if layer not in self.file.layers:
            raise ExportError(self._missing_layer(layer))
        tensor = self.file.find(layer, weight)
        if tensor is None:
            held = ", ".join(sorted(self.file.layers[layer]))
            raise ExportError(f"{layer}: the file has no {weight} for this layer (it has {held})")
        arr = tensor.array
        if tuple(arr.shape) != shape:
            raise ExportError(f"{layer}: expected {weight} {fmt_shape(shape)}, file has {fmt_shape(arr.shape)}"
                              f"{self._hint(layer)}")
        if arr.dtype.kind not in "fiu":
            raise ExportError(f"{layer}: {weight} in the file has dtype {arr.dtype}, not a number")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise ExportError(f"{layer}: {weight} in the file holds NaN or infinite values")
        key = (layer, weight)
        if key not in self._used:
            self._used.add(key)
            self.report.tensors_loaded += 1
            self.report.params_loaded += int(arr.size)
        return arr

    # -- after the build ------------------------------------------------------------------------
    def finish(self) -> ImportReport:
        """Complete the report; refuse tensors the network did not use (unless ``allow_unused``)."""
        used_ids = {id(self.file.find(layer, weight)) for layer, weight in self._used}
        unused = [t.source for tensors in self.file.layers.values() for t in tensors.values()
                  if id(t) not in used_ids]
        self.report.unused = sorted(unused + list(self.file.unmapped))
        self.report.layers_matched = len({layer for layer, _ in self._used})
        if self.report.tensors_loaded == 0:
            raise ExportError(f"{self.path.name}: the network used none of the file's tensors")
        if self.report.unused and not self.allow_unused:
            n = len(self.report.unused)
            shown = ", ".join(self.report.unused[:5]) + (" ..." if n > 5 else "")
            top = ""
            if not self.include_top and any(layer in self.file.layers for layer in TOP_LAYERS[self.arch]):
                top = " (the file has a classifier and the network has none: drop --no-top)"
            raise ExportError(f"{self.path.name}: {n} tensor(s) in the file are not used by {self.arch}{top}: "
                              f"{shown} - pass --allow-unused to import anyway")
        return self.report

    def metadata(self) -> dict[str, str]:
        """Extra model metadata describing the import."""
        import json  # noqa: PLC0415

        return {
            MetaKey.WEIGHTS_FILE: self.path.name,
            MetaKey.WEIGHTS_FORMAT: f"{self.file.format}: {self.file.detail}",
            MetaKey.WEIGHTS_ORIGIN: self.file.origin,
            MetaKey.BN_EPSILON: repr(float(self.bn_epsilon)),
            MetaKey.PREPROCESSING: self.preprocessing,
            MetaKey.IMPORT_REPORT: json.dumps(self.report.as_dict(), separators=(",", ":")),
        }

    # -- messages ---------------------------------------------------------------------------------
    def _hint(self, layer: str) -> str:
        if self.file_alpha is not None and abs(self.file_alpha - self.alpha) > 1e-9:
            return f" — was this exported with alpha={self.file_alpha}?"
        if layer in TOP_LAYERS[self.arch] and self.file_classes is not None and self.file_classes != self.classes:
            return f" — the file's classifier has {self.file_classes} classes (pass --classes {self.file_classes})"
        return ""

    def _missing_layer(self, layer: str) -> str:
        msg = f"{layer}: the file has no weights for this layer"
        if layer in TOP_LAYERS[self.arch]:
            return msg + " — was it saved without its classifier (include_top=False)? Export with --no-top"
        names = set(self.file.layers)
        if self.file.origin != TORCHVISION:
            guess, score = guess_arch(names)
            if guess is not None and guess != self.arch and score > 0.5:
                return msg + f" — the file looks like {guess} weights, not {self.arch}"
        shown = ", ".join(list(self.file.layers)[:4])
        return msg + f" (the file's layers begin {shown}, ...)"
