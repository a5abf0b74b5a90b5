"""PyTorch weights: ``torch.save``'d state_dicts (``torch.load(weights_only=True)``, never a full
unpickle) and ``.safetensors``. ``torch`` / ``safetensors`` are imported only here, when needed."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sepconv.export.errors import ExportError

# Checkpoints often wrap the state_dict: {"state_dict": {...}, "epoch": 3, ...}.
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "module")


def read_torch_file(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        raise ExportError(f"{path.name} is a PyTorch file; reading it needs torch (pip install torch), or save "
                          "the state_dict as .safetensors") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"{path.name}: not a plain state_dict - torch.load(weights_only=True) refused it ({first}). "
            "Save model.state_dict() rather than the whole model") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise ExportError(f"{path.name}: cannot read this PyTorch file - is it truncated or damaged? ({exc})") \
            from None
    return _state_dict_arrays(_unwrap(obj, path), path, torch)


def _unwrap(obj: Any, path: Path) -> Mapping:
    """The state_dict itself, or the one a training checkpoint wraps (``{"state_dict": ..., "epoch": 3}``)."""
    if not isinstance(obj, Mapping):
        raise ExportError(f"{path.name}: holds a {type(obj).__name__}, not a state_dict (a mapping of parameter "
                          "names to tensors)")
    for key in _WRAPPERS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            return inner
    return obj


def _state_dict_arrays(state: Mapping, path: Path, torch: Any) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ExportError(f"{path.name}: not a state_dict - entry {key!r} holds a {type(value).__name__}, "
                              "not a tensor")
        t = value.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        arrays[key.removeprefix("module.")] = t.numpy()
    if not arrays:
        raise ExportError(f"{path.name}: the state_dict is empty")
    return arrays


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors import SafetensorError  # noqa: PLC0415
        from safetensors.numpy import load_file  # noqa: PLC0415
    except ImportError:
        raise ExportError(f"{path.name} is a .safetensors file; reading it needs safetensors "
                          "(pip install 'sepconv[weights]' or pip install safetensors)") from None
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ExportError(f"{path.name}: cannot read this .safetensors file - is it truncated or damaged? "
                          f"({exc})") from None
    if not arrays:
        raise ExportError(f"{path.name}: the file holds no tensors")
    return {k.removeprefix("module."): np.asarray(v) for k, v in arrays.items()}
