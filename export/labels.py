"""Class labels of exported classifiers: ImageNet's names shipped with the package, and user label files.

* :func:`imagenet_labels` — ImageNet's 1000 class names (``data/imagenet_classes.txt``, from torchvision, BSD);
* :func:`default_labels` — what a classifier gets without ``--labels``: ImageNet's names for 1000 classes,
  ``background`` and then those names for 1001 (TF-slim's checkpoints), nothing otherwise;
* :func:`read_labels_file` — a user's file (``sepconv export --labels FILE``): UTF-8, one label a line, exactly
  one line per class; :func:`parse_labels` is the same check on text (the server reads ``labels.txt`` with it);
* :func:`labels_text` — the ``labels.txt`` the repository writer puts beside ``config.pbtxt``.

Errors are :class:`LabelsError` (an ``ExportError``, so a ``ValueError``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from sepconv.export.errors import ExportError

IMAGENET_CLASSES = 1000
BACKGROUND = "background"
MAX_LABEL_CHARS = 1024
MAX_LABELS_BYTES = 16 * 1024 * 1024


class LabelsError(ExportError):
    """A labels file that cannot label the model's classes."""


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """ImageNet's 1000 class names, index 0 (``tench``) first."""
    text = resources.files("sepconv.export").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line and not line.startswith("#"))
    if len(names) != IMAGENET_CLASSES:  # the package is broken: say so rather than mislabel
        raise LabelsError(f"the shipped ImageNet class list has {len(names)} names, not {IMAGENET_CLASSES}")
    return names


def default_labels(classes: int, include_top: bool = True) -> list[str] | None:
    """ImageNet's labels for a 1000-class classifier (1001: ``background`` first), else ``None``."""
    if not include_top:
        return None
    if classes == IMAGENET_CLASSES:
        return list(imagenet_labels())
    if classes == IMAGENET_CLASSES + 1:
        return [BACKGROUND, *imagenet_labels()]
    return None


def parse_labels(text: str, classes: int | None, where: str) -> list[str]:
    """One label a line (a final newline optional, ``\\r\\n`` accepted); with ``classes``, exactly that many."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    labels = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not labels:
        raise LabelsError(f"{where} holds no labels")
    for i, label in enumerate(labels):
        if len(label) > MAX_LABEL_CHARS:
            raise LabelsError(f"{where}: the label of class {i} is over {MAX_LABEL_CHARS} characters")
        if "\r" in label or "\x00" in label:
            raise LabelsError(f"{where}: the label of class {i} holds a control character")
    if classes is not None and len(labels) != classes:
        raise LabelsError(f"{where} has {len(labels)} labels, the model has {classes} classes (one label a line)")
    return labels


def read_labels_file(path: str | Path, classes: int | None = None) -> list[str]:
    """A labels file as :func:`parse_labels` checks it (``LabelsError`` for a missing, large or non-UTF-8 file)."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"labels file {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise LabelsError(f"labels file {path.name} is over {MAX_LABELS_BYTES} bytes")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"labels file {path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {path.name}: {exc.strerror or exc}") from None
    return parse_labels(text, classes, f"labels file {path.name}")


def labels_text(labels: list[str] | tuple[str, ...]) -> str:
    return "".join(f"{label}\n" for label in labels)
