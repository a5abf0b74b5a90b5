"""``load_weights``: read any supported file, map it onto Keras names, check it fits the
architecture, and hand back a WeightSource; ``build_imported`` also builds and validates the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sepconv.export.errors import ExportError
from sepconv.export.graph import DEFAULT_OPSET
from sepconv.export.importers import detect
from sepconv.export.importers.schema import TOP_LAYERS, infer_alpha, infer_classes, keras_layers
from sepconv.export.importers.source import ImportedWeights
from sepconv.export.importers.store import KERAS, WeightFile
from sepconv.export.importers.torchvision_map import TORCHVISION_BN_EPSILON, map_torchvision
from sepconv.export.layers import KERAS_BN_EPSILON
from sepconv.export.networks import KERAS_PREPROCESSING
from sepconv.export.repository.writer import set_metadata

KERAS_V3_PREPROCESSING = ("scale RGB pixels to [-1, 1]: x / 127.5 - 1 (what the Keras model's own Rescaling "
                          "layer does; this graph does not include it)")
TORCHVISION_PREPROCESSING = ("RGB in [0, 1], then per channel (x - mean) / std with mean (0.485, 0.456, 0.406), "
                             "std (0.229, 0.224, 0.225) (torchvision ImageNet)")


def load_weights(path: str | Path, *, arch: str, alpha: float | None = None, resolution: int | None = None,
                 classes: int | None = None, include_top: bool = True, allow_unused: bool = False) -> ImportedWeights:
    """Read a weights file for ``arch``; alpha/classes not given are read from the file.

    Formats (detected from the content): keras-applications HDF5, Keras 3 ``.weights.h5`` (or a
    ``.keras`` archive), a PyTorch ``state_dict`` in torchvision's naming (``.pth``/``.pt``) or
    ``.safetensors``. Raises :class:`ExportError` for a file that does not fit.
    """
    from sepconv.export.networks import get_model_builder  # noqa: PLC0415

    get_model_builder(arch)  # an unknown architecture, named with the registered ones, before opening the file
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"weights file {str(path)!r} is a folder; give the weights file itself")
    if not path.is_file():
        raise ExportError(f"weights file {str(path)!r} does not exist")
    wf = read_weight_file(path, arch)
    _check_arch(wf, arch, path)
    file_alpha, file_classes = infer_alpha(arch, wf), infer_classes(arch, wf)
    if wf.origin != KERAS and arch.startswith("mobilenet_v3") and file_alpha not in (None, 1.0):
        raise ExportError(f"{path.name}: a torchvision MobileNetV3 with width_mult={file_alpha}; torchvision scales "
                          "V3's expansion channels by width_mult and Keras (whose network this exporter builds) "
                          "does not, so only width_mult=1.0 can be imported")
    keras = wf.origin == KERAS
    weights = ImportedWeights(
        wf, path=path, arch=arch,
        alpha=float(alpha) if alpha is not None else (file_alpha or 1.0),
        classes=classes if classes is not None else (file_classes or 1000),
        include_top=include_top, allow_unused=allow_unused,
        bn_epsilon=KERAS_BN_EPSILON if keras else TORCHVISION_BN_EPSILON[arch],
        padding="same" if keras else "symmetric",
        preprocessing=(KERAS_V3_PREPROCESSING if arch.startswith("mobilenet_v3") else KERAS_PREPROCESSING)
        if keras else TORCHVISION_PREPROCESSING,
        file_alpha=file_alpha, file_classes=file_classes, resolution=resolution,
    )
    return weights


def read_weight_file(path: Path, arch: str) -> WeightFile:
    """Detect the format and read the file into Keras names and layouts."""
    fmt = detect.detect_format(path)
    if fmt in (detect.HDF5, detect.KERAS_ZIP):
        from sepconv.export.importers.keras_h5 import read_keras_h5  # noqa: PLC0415

        wf = read_keras_h5(path, arch, inside_zip=fmt == detect.KERAS_ZIP)
    else:
        from sepconv.export.importers.torch_files import read_safetensors, read_torch_file  # noqa: PLC0415

        state = read_safetensors(path) if fmt == detect.SAFETENSORS else read_torch_file(path)
        wf = map_torchvision(state, arch, path.name)
    wf.format = fmt
    if not wf.layers:
        raise ExportError(f"{path.name}: the file holds no layer weights")
    return wf


def _check_arch(wf: WeightFile, arch: str, path: Path) -> None:
    """Refuse, before any build, a file that plainly holds another architecture's weights."""
    from sepconv.export.networks import list_models  # noqa: PLC0415

    def score(a: str) -> float:
        top = set(TOP_LAYERS[a])
        want = {la.name for la in keras_layers(a, True)} - top
        have = set(wf.layers) - top
        return len(want & have) / max(len(want | have), 1)

    mine = score(arch)
    if mine >= 0.99:
        return
    best = max(list_models(), key=score)
    if best != arch and score(best) > mine:
        raise ExportError(f"{path.name} holds {best} weights, not {arch} ({wf.detail}; its layers include "
                          f"{', '.join(list(wf.layers)[:3])})")


def build_imported(path: str | Path, arch: str, *, alpha: float | None = None, resolution: int = 224,
                   classes: int | None = None, include_top: bool = True, allow_unused: bool = False,
                   input_layout: str = "NCHW", fold_bn: bool = True,
                   opset: int = DEFAULT_OPSET) -> tuple[Any, ImportedWeights]:
    """Import and build in memory: the network (padding, alpha, classes chosen from the file where not given),
    validated against the file (no unused tensors unless ``allow_unused``). Nothing is written."""
    from sepconv.export.networks import build_network  # noqa: PLC0415

    weights = load_weights(path, arch=arch, alpha=alpha, resolution=resolution, classes=classes,
                           include_top=include_top, allow_unused=allow_unused)
    net = build_network(arch, alpha=weights.alpha, resolution=resolution, classes=weights.classes,
                        include_top=include_top, padding=weights.padding, input_layout=input_layout,
                        weights=weights, fold_bn=fold_bn, opset=opset)
    weights.finish()
    extra = weights.metadata()
    set_metadata(net.model, extra)
    net.metadata.update(extra)
    return net, weights
