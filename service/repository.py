"""The model repository: Triton's layout on disk, loaded into ONNX Runtime sessions.

Layout::

    REPO/NAME/config.pbtxt          (optional; auto-completed from the ONNX model when absent)
    REPO/NAME/VERSION/model.onnx    (VERSION = a positive integer)

``ModelRepository.get(name, version=None)`` returns a :class:`LoadedModel` — ``.name``, ``.version``,
``.path`` (the model.onnx), ``.session`` (ORT ``InferenceSession``), ``.metadata`` (ONNX metadata_props),
``.max_batch_size``, ``.config`` (:class:`~sepconv.service.model_config.ModelConfig`), ``.providers`` (what the
session really runs on) — or raises ``ApiError`` 404 (unknown model/version) / 503 (not ready).
Other parts of the service (profiling, dashboard) use exactly that.

Each version has a state: ``LOADING``, ``READY``, ``UNAVAILABLE`` (with a reason), ``UNLOADING``.
A broken model only makes itself unavailable. Model names are validated and no path outside the
repository is ever opened: symlinks are resolved and checked, and so are ONNX external-data locations.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from sepconv.service.errors import ApiError
from sepconv.service.model_config import ConfigError, InstanceGroup, ModelConfig, complete_config, parse_config
from sepconv.service.runtime import ProviderError, make_session, resolve_providers, wants_gpu
from sepconv.service.settings import Settings
from sepconv.service.stats import ModelStats

log = logging.getLogger("sepconv.repository")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
VERSION_RE = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit takes '²'), and fits an int64

LOADING, READY, UNAVAILABLE, UNLOADING = "LOADING", "READY", "UNAVAILABLE", "UNLOADING"

# Concurrent ``session.run`` calls per model when its config has no instance_group: ORT sessions are
# thread-safe, and two runs in flight fill the cores better than one (see service.batcher).
DEFAULT_INSTANCES = 2


class LoadError(Exception):
    """Why a model version could not be loaded (becomes its UNAVAILABLE reason)."""


def valid_name(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name)) and ".." not in name


def check_name(name: str) -> str:
    if not valid_name(name):
        raise ApiError(400, f"invalid model name {name!r}: use letters, digits, '_', '-', '.' (max 128, no '..')")
    return name


def check_version(version: str | None) -> str | None:
    if version is None or version == "":
        return None
    if not VERSION_RE.fullmatch(version) or int(version) < 1:
        raise ApiError(400, f"invalid model version {version[:40]!r}: a positive integer")
    return str(int(version))


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as clients see it (``shape`` with -1 for dynamic dims, batch included)."""

    name: str
    datatype: str
    shape: list[int]


@dataclass
class LoadedModel:
    """A version that is loaded: its session, config and the bookkeeping the server needs."""

    name: str
    version: str
    path: Path
    session: ort.InferenceSession
    metadata: dict[str, str]
    config: ModelConfig
    providers: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    stats: ModelStats = field(default_factory=ModelStats)
    scheduler: Any = None  # service.batcher.Scheduler, attached by the app when the model loads
    requested_providers: list[str] = field(default_factory=list)  # what was asked for (providers = what runs)
    metric_children: Any = None  # per-model Prometheus children, attached by the app
    loaded_at: float = field(default_factory=time.time)

    @property
    def max_batch_size(self) -> int:
        return int(self.config.max_batch_size or 0)

    @property
    def input_map(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.inputs}

    @property
    def output_map(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.outputs}

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()


@dataclass
class VersionState:
    version: str
    state: str
    reason: str = ""
    model: LoadedModel | None = None


@dataclass
class ModelEntry:
    name: str
    state: str = UNAVAILABLE
    reason: str = ""
    versions: dict[str, VersionState] = field(default_factory=dict)
    config: ModelConfig | None = None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve(strict=False).relative_to(root)
    except ValueError:
        return False
    return True


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers (dense and sparse), tensor attributes, and the same inside
    subgraphs (``If``/``Loop``/``Scan`` bodies), where external data could hide as well."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _check_external_data(proto: onnx.ModelProto, model_path: Path, root: Path) -> None:
    """Every external-data location must be a relative path that stays inside the repository."""
    functions = (t for f in proto.functions for t in _node_tensors(f.node))  # model-local functions too
    for tensor in itertools.chain(_all_tensors(proto.graph), functions):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        if not location or Path(location).is_absolute() or location.startswith(("/", "\\")):
            raise LoadError(f"tensor {tensor.name!r}: external data location {location!r} must be relative")
        target = model_path.parent / location
        if not _inside(target, root):
            raise LoadError(f"tensor {tensor.name!r}: external data {location!r} points outside the repository")
        if not target.is_file():
            raise LoadError(f"tensor {tensor.name!r}: external data file {location!r} is missing")


def _spec_shape(dims: list[int], batched: bool) -> list[int]:
    return ([-1] if batched else []) + [int(d) for d in dims]


class ModelRepository:
    """Scans, loads, unloads and hands out models. Thread-safe; loads run in the caller's thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.repo).expanduser().resolve()
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()
        self._model_locks: dict[str, threading.Lock] = {}
        self.on_loaded: list[Any] = []  # callbacks(LoadedModel) -> None (e.g. attach a scheduler)
        self.on_unloaded: list[Any] = []

    # -- discovery ---------------------------------------------------------------------------
    def scan(self) -> list[str]:
        """Names of the model directories in the repository (valid names only, never outside it)."""
        if not self.root.is_dir():
            return []
        names = []
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(".") or not child.is_dir() or not valid_name(child.name):
                continue
            if not _inside(child, self.root):
                log.warning("skipping %s: it resolves outside the repository", child)
                continue
            names.append(child.name)
        return names

    def _model_dir(self, name: str) -> Path:
        check_name(name)
        path = self.root / name
        if not _inside(path, self.root):
            raise LoadError(f"model directory {name!r} resolves outside the repository")
        return path

    def _lock_for(self, name: str) -> threading.Lock:
        with self._lock:
            return self._model_locks.setdefault(name, threading.Lock())

    # -- loading --------------------------------------------------------------------------------
    def load_all(self) -> None:
        for name in self.scan():
            try:
                self.load(name)
            except ApiError as exc:  # already recorded as UNAVAILABLE
                log.warning("model %s not loaded: %s", name, exc.message)

    def load(self, name: str, config_override: ModelConfig | None = None) -> ModelEntry:
        """(Re)load every version the policy selects; raises ApiError when nothing could be loaded."""
        check_name(name)
        if self.entry(name) is None and not (self.root / name).is_dir():
            # nothing to record: a name that never was a model leaves no trace (the index stays bounded)
            raise ApiError(404, f"failed to load {name!r}: no model directory {name!r} in the repository")
        with self._lock_for(name):
            entry = self._load_locked(name, config_override)
        if entry.state != READY:
            status = 404 if entry.reason.startswith("no model directory") else 400
            raise ApiError(status, f"failed to load {name!r}: {entry.reason}")
        return entry

    def _load_locked(self, name: str, config_override: ModelConfig | None) -> ModelEntry:
        old = self._models.get(name)
        entry = ModelEntry(name=name, state=LOADING)
        if old is not None:  # keep serving the old versions until the new ones are ready
            entry.versions = dict(old.versions)
        with self._lock:
            self._models[name] = entry if old is None else old
        try:
            model_dir = self._model_dir(name)
            if not model_dir.is_dir():
                raise LoadError(f"no model directory {name!r} in the repository")
            config = config_override or self._read_config(model_dir, name)
            entry.config = config
            versions = [int(p.name) for p in model_dir.iterdir()
                        if p.is_dir() and VERSION_RE.fullmatch(p.name) and int(p.name) > 0 and _inside(p, self.root)]
            chosen = config.select_versions(versions)
            if not chosen:
                raise LoadError("no version directory (a positive integer) selected by the version policy")
        except Exception as exc:  # noqa: BLE001 - whatever is wrong on disk only makes this model unavailable
            if isinstance(exc, ApiError):
                reason = exc.message
            elif isinstance(exc, LoadError | ConfigError):
                reason = str(exc)
            else:
                reason = f"{type(exc).__name__}: {str(exc)[:500]}"
            entry.state, entry.reason, entry.versions = UNAVAILABLE, reason, {}
            return self._install_failed(name, old, entry)

        new_versions: dict[str, VersionState] = {}
        for v in chosen:
            version = str(v)
            state = VersionState(version=version, state=LOADING)
            try:
                state.model = self._load_version(name, version, model_dir, config)
                state.state = READY
            except (LoadError, ConfigError, ProviderError) as exc:
                state.state = UNAVAILABLE
                state.reason = exc.message if isinstance(exc, ApiError) else str(exc)
                log.warning("model %s version %s unavailable: %s", name, version, state.reason)
            except Exception as exc:  # noqa: BLE001 - ORT raises many types for a bad model
                state.state = UNAVAILABLE
                state.reason = f"{type(exc).__name__}: {exc}".strip()
                log.warning("model %s version %s unavailable: %s", name, version, state.reason)
            new_versions[version] = state
        entry.versions = new_versions
        ready = [s for s in new_versions.values() if s.state == READY]
        entry.state = READY if ready else UNAVAILABLE
        entry.reason = "" if ready else "; ".join(f"version {s.version}: {s.reason}" for s in new_versions.values())
        if not ready:
            return self._install_failed(name, old, entry)
        with self._lock:
            self._models[name] = entry
        self._retire(old, keep={id(s.model) for s in new_versions.values() if s.model})
        for state in ready:
            log.info("model %s version %s READY on %s", name, state.version, ",".join(state.model.providers))
        return entry

    def _install_failed(self, name: str, old: ModelEntry | None, entry: ModelEntry) -> ModelEntry:
        """A load that produced nothing ready: a model that was serving keeps serving its old versions
        (as Triton does on a failed reload); otherwise the failure becomes the model's state."""
        log.warning("model %s unavailable: %s", name, entry.reason)
        if old is not None and any(s.state == READY for s in old.versions.values()):
            return entry  # not installed: the caller reports the failure, the old versions serve on
        for state in entry.versions.values():
            if state.model is not None:
                state.model.close()
        with self._lock:
            self._models[name] = entry
        self._retire(old, keep=set())
        return entry

    def _retire(self, old: ModelEntry | None, keep: set[int]) -> None:
        if old is None:
            return
        for state in old.versions.values():
            if state.model is not None and id(state.model) not in keep:
                state.model.close()
                for cb in self.on_unloaded:
                    cb(state.model)

    def _read_config(self, model_dir: Path, name: str) -> ModelConfig:
        path = model_dir / "config.pbtxt"
        if not path.exists():
            return ModelConfig(name=name)
        if not _inside(path, self.root) or not path.is_file():
            raise LoadError("config.pbtxt is not a regular file inside the repository")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LoadError(f"cannot read config.pbtxt: {exc}") from exc
        return parse_config(text, name)

    def _providers_for(self, config: ModelConfig) -> str | list[str] | None:
        kind = config.instance_kind
        if kind == "KIND_CPU":
            return "cpu"
        if kind == "KIND_GPU":
            return "cuda"
        return None  # settings decide

    def _load_version(self, name: str, version: str, model_dir: Path, config: ModelConfig) -> LoadedModel:
        path = model_dir / version / config.default_model_filename
        if not path.exists():
            raise LoadError(f"{version}/{config.default_model_filename} is missing")
        if not _inside(path, self.root):
            raise LoadError(f"{version}/{config.default_model_filename} resolves outside the repository")
        if not path.is_file():
            raise LoadError(f"{version}/{config.default_model_filename} is not a regular file")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf decode errors have various types
            raise LoadError(f"{version}/{config.default_model_filename} is not a valid ONNX model: {exc}") from exc
        if not proto.graph.node and not proto.graph.output:
            raise LoadError(f"{version}/{config.default_model_filename} holds no graph (empty or not ONNX)")
        _check_external_data(proto, path, self.root)
        metadata = {p.key: p.value for p in proto.metadata_props}
        del proto
        requested = self._providers_for(config)
        gpus = [g for group in config.instance_groups for g in group.gpus]
        settings = self.settings.model_copy(update={"cuda_device_id": gpus[0]}) if gpus else self.settings
        if len(set(gpus)) > 1:
            log.warning("model %s: instance_group lists GPUs %s; one session runs on GPU %d", name, gpus, gpus[0])
        session = make_session(path, settings, providers=requested)
        completed = complete_config(config, session.get_inputs(), session.get_outputs(),
                                    self.settings.default_max_batch_size, self.settings.default_queue_delay_us)
        batched = completed.max_batch_size > 0
        providers = list(session.get_providers())
        if not completed.instance_groups:  # as Triton does: the kind the session really got
            completed.instance_groups = [InstanceGroup(kind="KIND_GPU" if wants_gpu(providers) else "KIND_CPU",
                                                       count=self.settings.batch_workers or DEFAULT_INSTANCES)]
            completed.auto_completed.append("instance_group")
        model = LoadedModel(
            name=name, version=version, path=path, session=session, metadata=metadata, config=completed,
            providers=providers, requested_providers=resolve_providers(requested, self.settings),
            inputs=[TensorSpec(t.name, t.datatype, _spec_shape(t.dims, batched)) for t in completed.inputs],
            outputs=[TensorSpec(t.name, t.datatype, _spec_shape(t.dims, batched)) for t in completed.outputs],
        )
        for cb in self.on_loaded:
            cb(model)
        return model

    def unload(self, name: str) -> None:
        check_name(name)
        with self._lock_for(name):
            with self._lock:
                entry = self._models.get(name)
                if entry is None:
                    raise ApiError(404, f"unknown model {name!r}")
                old = ModelEntry(name=name, versions=dict(entry.versions))
                self._models[name] = ModelEntry(name=name, state=UNAVAILABLE, reason="unloaded",
                                                config=entry.config)
            self._retire(old, keep=set())
        log.info("model %s unloaded", name)

    def close(self) -> None:
        with self._lock:
            names = list(self._models)
        for name in names:
            try:
                self.unload(name)
            except ApiError:
                pass

    # -- queries -----------------------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The loaded model (latest ready version unless ``version``); 404 unknown, 503 not ready."""
        version = check_version(version)
        with self._lock:
            entry = self._models.get(name)
        if entry is None:
            if not valid_name(name):
                raise ApiError(400, f"invalid model name {name!r}")
            raise ApiError(404, f"unknown model {name!r}")
        if version is None:
            ready = [s for s in entry.versions.values() if s.state == READY and s.model is not None]
            if not ready:
                reason = entry.reason or entry.state
                raise ApiError(503, f"model {name!r} is not ready: {reason}")
            return max(ready, key=lambda s: int(s.version)).model  # type: ignore[return-value]
        state = entry.versions.get(version)
        if state is None:
            raise ApiError(404, f"unknown version {version} of model {name!r}")
        if state.state != READY or state.model is None:
            raise ApiError(503, f"model {name!r} version {version} is not ready: {state.reason or state.state}")
        return state.model

    def entry(self, name: str) -> ModelEntry | None:
        with self._lock:
            return self._models.get(name)

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return [self._models[n] for n in sorted(self._models)]

    def loaded(self) -> list[LoadedModel]:
        out = []
        for entry in self.entries():
            out.extend(s.model for s in entry.versions.values() if s.model is not None and s.state == READY)
        return out

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's repository index: every model directory, loaded or not, with version/state/reason."""
        known = {e.name: e for e in self.entries()}
        rows: list[dict[str, Any]] = []
        for name in sorted(set(self.scan()) | set(known)):
            entry = known.get(name)
            if entry is None:
                rows.append({"name": name, "state": UNAVAILABLE, "reason": "unloaded"})
                continue
            if not entry.versions:
                rows.append({"name": name, "state": entry.state, "reason": entry.reason})
                continue
            for v in sorted(entry.versions, key=int):
                s = entry.versions[v]
                rows.append({"name": name, "version": v, "state": s.state, "reason": s.reason})
        if ready_only:
            rows = [r for r in rows if r["state"] == READY]
        return rows

    def all_ready(self) -> bool:
        """Server readiness: every model that was asked to load is ready (an empty repo is ready)."""
        return all(e.state == READY or e.reason == "unloaded" for e in self.entries()) or not self.entries()
