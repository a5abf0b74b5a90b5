"""Keras HDF5 readers: the keras-applications (legacy ``save_weights``) layout and Keras 3's
``.weights.h5`` layout (also inside a ``.keras`` archive). ``h5py`` is imported only here."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sepconv.export.errors import ExportError
from sepconv.export.importers.schema import KERAS_VARIABLES, keras3_group_names
from sepconv.export.importers.store import KERAS, WeightFile

_KNOWN = {"kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"}
_KERAS3_ROOTS = ("layers", "_layer_checkpoint_dependencies")  # the second is Keras 2.13's spelling


def _h5py() -> Any:
    try:
        import h5py  # noqa: PLC0415
    except ImportError:
        raise ExportError("reading Keras HDF5 weights needs h5py: pip install 'sepconv[weights]' "
                          "(or pip install h5py)") from None
    return h5py


def read_keras_h5(path: Path, arch: str, *, inside_zip: bool = False) -> WeightFile:
    """Read either Keras layout from an HDF5 file (or a ``.keras`` archive when ``inside_zip``)."""
    h5py = _h5py()
    try:
        if inside_zip:
            with zipfile.ZipFile(path) as z:
                source: Any = io.BytesIO(z.read("model.weights.h5"))
        else:
            source = str(path)
        with h5py.File(source, "r") as f:
            root = f["model_weights"] if "model_weights" in f and "layer_names" not in f.attrs else f
            if "layer_names" in root.attrs:
                return _read_legacy(root, path)
            for key in _KERAS3_ROOTS:
                if key in f and isinstance(f[key], h5py.Group):
                    return _read_keras3(f[key], path, arch, key)
            keys = ", ".join(list(f.keys())[:6]) or "nothing"
            raise ExportError(f"{path.name}: an HDF5 file in neither Keras layout (no 'layer_names' attribute, "
                              f"no 'layers' group; top level holds {keys})")
    except ExportError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile) as exc:
        raise ExportError(f"{path.name}: cannot read this HDF5 file - is it truncated or damaged? ({exc})") from None


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _array(ds: Any) -> np.ndarray:
    arr = np.asarray(ds[()])
    if ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):  # Keras 3 stores bfloat16 as raw 16-bit words
        arr = (arr.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return arr


def _read_legacy(root: Any, path: Path) -> WeightFile:
    wf = WeightFile(format="hdf5", origin=KERAS, detail="keras-applications HDF5 layout")
    for layer in (_text(n) for n in root.attrs["layer_names"]):
        if layer not in root:
            raise ExportError(f"{path.name}: layer {layer!r} is listed in layer_names but has no group "
                              "(truncated file?)")
        group = root[layer]
        names = [_text(n) for n in group.attrs.get("weight_names", [])]
        if not names:
            continue
        shorts = [n.split("/")[-1].split(":")[0] for n in names]
        if not set(shorts) <= _KNOWN or len(set(shorts)) != len(shorts):
            # Names we cannot read (e.g. "variable:0"): Keras' fixed variable order decides.
            shorts = list(KERAS_VARIABLES["batch_normalization"]) if len(names) == 4 else ["kernel", "bias"][
                :len(names)]
        for full, short in zip(names, shorts, strict=False):
            if full not in group:
                raise ExportError(f"{path.name}: {layer} lists weight {full!r} but the file does not hold it "
                                  "(truncated file?)")
            wf.add(layer, short, full, _array(group[full]))
    return wf


def _read_keras3(layers: Any, path: Path, arch: str, root_key: str) -> WeightFile:
    wf = WeightFile(format="hdf5", origin=KERAS, detail="Keras 3 .weights.h5 layout")
    positional: dict[str, str] | None = None
    for group_name in layers:
        group = layers[group_name]
        vars_ = group.get("vars")
        if vars_ is None or len(vars_) == 0:
            continue
        keras_class = re.sub(r"_\d+$", "", group_name)
        variables = KERAS_VARIABLES.get(keras_class)
        where = f"{root_key}/{group_name}/vars"
        if variables is None:  # a class MobileNets do not have (e.g. Normalization): report it unused
            wf.unmapped += [f"{where}/{k}" for k in vars_]
            continue
        layer = vars_.attrs.get("name")
        if layer is None:  # Keras < 3.?: no name attribute; the class order gives the layer
            positional = positional if positional is not None else keras3_group_names(arch)
            layer = positional.get(group_name)
            if layer is None:
                wf.unmapped += [f"{where}/{k}" for k in vars_]
                continue
        layer = _text(layer)
        for key in vars_:
            if not key.isdigit() or int(key) >= len(variables):
                wf.unmapped.append(f"{where}/{key}")
                continue
            wf.add(layer, variables[int(key)], f"{where}/{key}", _array(vars_[key]))
    return wf
