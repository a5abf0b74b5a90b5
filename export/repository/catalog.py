"""Export requests and the catalog file (``models/catalog.toml``) that lists the default repository.

An :class:`ExportRequest` is one ``sepconv export`` invocation; :func:`export` builds it, skips it
when the repository already holds an identical export, and writes it otherwise.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sepconv.export.errors import ExportError
from sepconv.export.graph import DEFAULT_OPSET
from sepconv.export.labels import default_labels, read_labels_file
from sepconv.export.repository.layout import (
    DEFAULT_MAX_BATCH,
    DEFAULT_REPO,
    DEFAULT_VERSION,
    LABELS_FILE,
    DynamicBatching,
    MetaKey,
    check_max_batch,
    check_name,
    check_version,
    config_path,
    model_path,
)
from sepconv.export.repository.writer import (
    config_pbtxt,
    export_key,
    is_up_to_date,
    read_metadata,
    set_metadata,
    write_model,
)

if TYPE_CHECKING:
    from sepconv.export.importers import ImportedWeights

DEFAULT_CATALOG = Path("models/catalog.toml")


@dataclass
class ExportRequest:
    """One export. ``alpha``/``classes``/``padding`` left as ``None`` mean the defaults (1.0, 1000,
    "same"), or, with a ``weights`` file, what that file says (its width, its classifier, Keras'
    padding for Keras files and PyTorch's for torchvision ones)."""

    arch: str
    alpha: float | None = None
    resolution: int = 224
    classes: int | None = None
    include_top: bool = True
    padding: str | None = None
    input_layout: str = "NCHW"
    seed: int = 0
    fold_bn: bool = True
    opset: int = DEFAULT_OPSET
    weights: Path | None = None
    allow_unused: bool = False
    name: str | None = None
    version: int = DEFAULT_VERSION
    max_batch_size: int = DEFAULT_MAX_BATCH
    dynamic_batching: dict[str, Any] | None = field(default=None)
    precision: str = "fp32"  # fp32 | fp16 | int8 (export/precision/)
    calibration: Path | None = None  # .npy of inputs or a folder of images (int8 calibration, drift inputs)
    calibration_method: str = "minmax"  # minmax | entropy | percentile
    labels: Path | None = None  # one class name a line; default: ImageNet's for 1000 (1001) classes

    def resolved(self, weights: Any = None) -> ExportRequest:
        """Concrete alpha/classes/padding: given ones first, then the weight source's, then the defaults."""
        pick = lambda given, attr, default: (  # noqa: E731
            given if given is not None else (getattr(weights, attr, None) or default))
        return replace(self, alpha=float(pick(self.alpha, "alpha", 1.0)), classes=pick(self.classes, "classes", 1000),
                       padding=pick(self.padding, "padding", "same"))

    @property
    def model_name(self) -> str:
        from sepconv.export.networks import NetworkConfig  # noqa: PLC0415

        if self.name is not None:
            return self.name
        alpha = 1.0 if self.alpha is None else self.alpha
        return NetworkConfig(self.arch, alpha=alpha, resolution=self.resolution).default_name

    def network_kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("alpha", "resolution", "classes", "include_top", "padding",
                                              "input_layout", "seed", "fold_bn", "opset")}

    def key(self) -> str:
        d = asdict(self)
        for attr in ("weights", "calibration", "labels"):
            path = getattr(self, attr)
            if path is not None:
                d[attr] = _stamp(Path(path))
        return export_key(d)

    def class_labels(self) -> list[str] | None:
        """The labels to write: the ``labels`` file's (checked against ``classes``), or ImageNet's for a
        1000/1001-class classifier, or none."""
        if self.labels is None:
            return default_labels(int(self.classes or 1000), self.include_top)
        if not self.include_top:
            raise ExportError("--labels needs a classifier: a model exported with --no-top has no classes to label")
        return read_labels_file(self.labels, int(self.classes or 1000))


def _stamp(path: Path) -> str:
    """A file's (or an image folder's) identity for the export key: path, mtime and size (of each file)."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    parts = []
    for p in files:
        try:
            st = p.stat()
        except OSError:
            continue
        parts.append(f"{p.name}@{st.st_mtime_ns}:{st.st_size}")
    return f"{path.resolve()}|" + ",".join(parts)


@dataclass
class ExportResult:
    name: str
    path: Path
    skipped: bool
    macs: int | None = None
    params: int | None = None
    import_report: str | None = None  # with --weights: layers matched, params loaded, unused tensors
    drift: dict[str, Any] | None = None  # fp16 / int8: the drift report against FP32 (export/precision/drift.py)
    warnings: list[str] = field(default_factory=list)
    note: str | None = None  # why an existing model was kept


def imported_weights_file(repo: Path, name: str, version: int) -> str | None:
    """The weights file an existing model was exported from (None for random weights or no model)."""
    path = model_path(repo, name, version)
    if not path.is_file():
        return None
    try:
        return read_metadata(path).get(MetaKey.WEIGHTS_FILE)
    except Exception:  # noqa: BLE001 - an unreadable file holds nothing worth keeping
        return None


def load_weight_source(path: Path, request: ExportRequest) -> ImportedWeights:
    """``sepconv.export.importers.load_weights`` for the request, refusing a padding that would not reproduce
    the file's framework (imported lazily: h5py/torch are optional)."""
    from sepconv.export.importers import load_weights  # noqa: PLC0415

    try:
        source = load_weights(Path(path), arch=request.arch, alpha=request.alpha, resolution=request.resolution,
                              classes=request.classes, include_top=request.include_top,
                              allow_unused=request.allow_unused)
    except ExportError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot read weights from {path}: {exc}") from None
    if request.padding is not None and request.padding != source.padding:
        origin = "PyTorch pads k//2 on both sides" if source.padding == "symmetric" else "Keras pads as TF's SAME"
        raise ExportError(f"{Path(path).name} holds {source.file.origin} weights, which need --padding "
                          f"{source.padding} ({origin}); with --padding {request.padding} the model would not "
                          "reproduce its framework's outputs. Leave --padding out to get the right one")
    return source


def export(request: ExportRequest, repo: Path = DEFAULT_REPO, *, force: bool = False) -> ExportResult:
    """Build and write one model (unless an identical export is already there and not ``force``)."""
    from sepconv.export.networks import NetworkConfig, build_network  # noqa: PLC0415
    from sepconv.export.precision import check_method, check_precision  # noqa: PLC0415
    from sepconv.export.precision.variant import make_variant  # noqa: PLC0415

    check_precision(request.precision)
    check_method(request.calibration_method)
    if request.calibration is not None and not Path(request.calibration).exists():
        raise ExportError(f"calibration path {str(request.calibration)!r} does not exist "
                          "(give a .npy of inputs or a folder of images)")
    if request.name is not None:
        check_name(request.name)  # a name the server would skip is refused before anything is read or built
    check_version(request.version)
    check_max_batch(request.max_batch_size)
    batching = DynamicBatching.from_dict(request.dynamic_batching)
    NetworkConfig(request.arch, **request.resolved().network_kwargs()).validate()  # before reading any file
    source = load_weight_source(request.weights, request) if request.weights is not None else None
    request = request.resolved(source)
    NetworkConfig(request.arch, **request.network_kwargs()).validate()
    labels = request.class_labels()
    name = check_name(request.model_name)
    key = request.key()
    if not force and is_up_to_date(repo, name, request.version, key):
        # the config must match too (the model's I/O comes from the existing file)
        import onnx  # noqa: PLC0415

        existing = onnx.load(str(model_path(repo, name, request.version)), load_external_data=False)
        text = config_pbtxt(name, existing, request.max_batch_size, batching, LABELS_FILE if labels else None)
        if config_path(repo, name).read_text() == text:
            return ExportResult(name, model_path(repo, name, request.version), skipped=True)
    kept = None if force or request.weights is not None else imported_weights_file(repo, name, request.version)
    if kept:
        # never replace a user's imported weights with random ones behind their back (`make serve` runs the catalog)
        return ExportResult(name, model_path(repo, name, request.version), skipped=True,
                            note=f"kept: holds weights imported from {kept}; --force replaces them with random ones")
    net = build_network(request.arch, weights=source, **request.network_kwargs())
    extra = {MetaKey.EXPORT_KEY: key}
    report = None
    if source is not None:
        report = source.finish().text()  # the importer refuses a file with tensors the network never used
        extra.update({str(k): str(v) for k, v in source.metadata().items()})
    set_metadata(net.model, extra)  # the variant reads the weights' origin (its preprocessing) off the model
    variant = make_variant(net.model, request.precision, request.calibration, request.calibration_method)
    extra.update(variant.metadata)
    path = write_model(variant.model, repo, name, version=request.version, max_batch=request.max_batch_size,
                       dynamic_batching=batching, metadata=extra, labels=labels)
    totals = net.summary()
    return ExportResult(name, path, skipped=False, macs=totals["macs"], params=totals["total_params"],
                        import_report=report, drift=variant.report, warnings=variant.warnings)


_FIELDS = {f.name for f in fields(ExportRequest)}


def load_catalog(path: Path = DEFAULT_CATALOG) -> tuple[Path, list[ExportRequest]]:
    """Read a catalog: ``[defaults]`` (``repo``, and any request field) and ``[[model]]`` entries.

    Relative ``repo`` and ``weights`` paths are taken from the current directory (the project root
    for ``make serve``).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"catalog file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read catalog {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExportError(f"catalog {path} is not valid TOML: {exc}") from None
    defaults = dict(data.get("defaults", {}))
    repo = Path(defaults.pop("repo", str(DEFAULT_REPO)))
    models = data.get("model", [])
    if not isinstance(models, list) or not models:
        raise ExportError(f"catalog {path} lists no [[model]] entries")
    requests = []
    for i, entry in enumerate(models, 1):
        merged = {**defaults, **entry}
        unknown = set(merged) - _FIELDS
        if unknown:
            raise ExportError(f"catalog {path}, model #{i}: unknown field(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(_FIELDS))}")
        if "arch" not in merged:
            raise ExportError(f"catalog {path}, model #{i}: 'arch' is required")
        if merged.get("weights") and merged.get("name") is None and merged.get("alpha") is None:
            # its default name takes the width from the weights file, unknown until it is read: progress, error
            # messages and the duplicate check below need the name now
            raise ExportError(f"catalog {path}, model #{i}: an entry with 'weights' needs a 'name' (or its 'alpha')")
        for attr in ("weights", "calibration", "labels"):
            if merged.get(attr):
                merged[attr] = Path(merged[attr])
        try:
            requests.append(ExportRequest(**merged))
        except TypeError as exc:
            raise ExportError(f"catalog {path}, model #{i}: {exc}") from None
    names = [r.model_name for r in requests]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ExportError(f"catalog {path} lists the same model name more than once: {', '.join(dupes)}")
    return repo, requests
