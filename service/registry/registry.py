"""The loaded model versions and their states: load, unload, get, index (Triton's model lifecycle).

Finding models on disk is :mod:`sepconv.service.registry.scan`'s job; this module keeps what was loaded.
``ModelRegistry.get(name, version=None)`` returns a :class:`~sepconv.service.registry.model.LoadedModel` or
raises ``ModelNotFound`` (unknown model), ``NotFound`` (unknown version), ``ModelNotReady`` (not READY) or
``InvalidInput`` (a malformed name or version). Other parts of the service (data plane, profiling,
dashboard) use exactly that.

Each version has a state: ``LOADING``, ``READY``, ``UNAVAILABLE`` (with a reason), ``UNLOADING``.
A broken model only makes itself unavailable; a failed reload of a serving model keeps its old versions
serving (as Triton does). :class:`ModelRegistryHook` objects are told when a version is loaded (before it
becomes READY: the serving hook gives it a scheduler there) and when one is retired.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

from sepconv.export.repository import layout
from sepconv.service.errors import InvalidInput, ModelNotFound, ModelNotReady, NotFound, ServiceError
from sepconv.service.registry import scan
from sepconv.service.registry.model import LoadedModel, ModelEntry, ModelState, TensorSpec, VersionState
from sepconv.service.registry.model_config import ConfigError, InstanceGroup, ModelConfig, complete_config
from sepconv.service.registry.scan import LoadError, check_name, check_version
from sepconv.service.runtime.sessions import (
    ProviderError,
    default_instance_count,
    make_session,
    resolve_providers,
    wants_gpu,
)
from sepconv.service.settings import Settings

log = logging.getLogger("sepconv.repository")

LOADING, READY, UNAVAILABLE, UNLOADING = (ModelState.LOADING, ModelState.READY, ModelState.UNAVAILABLE,
                                          ModelState.UNLOADING)


class ModelRegistryHook:
    """Told about versions as they come and go (MLServer's ``ModelRegistryHook``). Subclass and override."""

    def on_load(self, model: LoadedModel) -> None:
        """``model`` is loaded and about to become READY (raising makes the version UNAVAILABLE)."""

    def on_unload(self, model: LoadedModel) -> None:
        """``model`` was retired (unloaded, or replaced by a reload); its scheduler is already closed."""

    def session_settings(self, settings: Settings, providers: list[str]) -> Settings:
        """The settings the version's session is made with (``providers``: the ORT providers asked for, in
        order); the default keeps ``settings``."""
        return settings


def _spec_shape(dims: list[int], batched: bool) -> list[int]:
    return ([-1] if batched else []) + [int(d) for d in dims]


class ModelRegistry:
    """Loads, unloads and hands out model versions. Thread-safe; loads run in the caller's thread."""

    def __init__(self, settings: Settings, hooks: list[ModelRegistryHook] | None = None) -> None:
        self.settings = settings
        self.root = Path(settings.repo).expanduser().resolve()
        self.hooks: list[ModelRegistryHook] = list(hooks or [])
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()
        self._model_locks: dict[str, threading.Lock] = {}

    def scan(self) -> list[str]:
        """Names of the model directories in the repository (see :func:`scan.model_names`)."""
        return scan.model_names(self.root)

    def _public(self, reason: str) -> str:
        """``reason`` without the repository's absolute path (reasons reach clients: index, load, get)."""
        for root in {str(self.root), str(Path(self.settings.repo).expanduser())}:
            reason = reason.replace(root + "/", "").replace(root, "<repository>")
        return reason

    def _lock_for(self, name: str) -> threading.Lock:
        """The lock serialising loads/unloads of ``name``; only names with a model directory or an entry get
        one (callers check), so the locks stay as many as the repository's models."""
        with self._lock:
            return self._model_locks.setdefault(name, threading.Lock())

    # -- loading --------------------------------------------------------------------------------
    def load_all(self) -> None:
        for name in self.scan():
            try:
                self.load(name)
            except ServiceError as exc:  # already recorded as UNAVAILABLE
                log.warning("model %s not loaded: %s", name, exc.message)

    def load(self, name: str, config_override: ModelConfig | None = None) -> ModelEntry:
        """(Re)load every version the policy selects; when nothing could be loaded raises ``ModelNotFound`` (no
        such directory) or ``InvalidInput`` (the model is broken: the reason says why)."""
        check_name(name)
        if self.entry(name) is None and not (self.root / name).is_dir():
            # nothing to record: a name that never was a model leaves no trace (the index stays bounded)
            raise ModelNotFound(f"failed to load {name!r}: no model directory {name!r} in the repository")
        with self._lock_for(name):
            entry = self._load_locked(name, config_override)
        if entry.state != READY:
            error = ModelNotFound if entry.reason.startswith("no model directory") else InvalidInput
            raise error(f"failed to load {name!r}: {entry.reason}")
        return entry

    def _load_locked(self, name: str, config_override: ModelConfig | None) -> ModelEntry:
        old = self._models.get(name)
        entry = ModelEntry(name=name, state=LOADING)
        if old is not None:  # keep serving the old versions until the new ones are ready
            entry.versions = dict(old.versions)
        with self._lock:
            self._models[name] = entry if old is None else old
        try:
            model_dir = scan.model_dir(self.root, name)
            if not model_dir.is_dir():
                raise LoadError(f"no model directory {name!r} in the repository")
            config = config_override or scan.read_config(model_dir, self.root, name)
            entry.config = config
            versions = scan.version_numbers(model_dir, self.root)
            chosen = config.select_versions(versions)
            if not chosen:
                raise LoadError("no version directory (a positive integer) selected by the version policy")
        except Exception as exc:  # noqa: BLE001 - whatever is wrong on disk only makes this model unavailable
            if isinstance(exc, ServiceError):
                reason = exc.message
            elif isinstance(exc, LoadError | ConfigError):
                reason = str(exc)
            else:
                reason = self._public(f"{type(exc).__name__}: {str(exc)[:500]}")
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
                state.reason = self._public(exc.message if isinstance(exc, ProviderError) else str(exc))
                log.warning("model %s version %s unavailable: %s", name, version, state.reason)
            except Exception as exc:  # noqa: BLE001 - ORT raises many types for a bad model
                state.state = UNAVAILABLE
                state.reason = self._public(f"{type(exc).__name__}: {exc}".strip())
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
                for hook in self.hooks:
                    hook.on_unload(state.model)

    def _providers_for(self, config: ModelConfig) -> str | list[str] | None:
        kind = config.instance_kind
        if kind == "KIND_CPU":
            return "cpu"
        if kind == "KIND_GPU":
            return "cuda"
        return None  # settings decide

    def _load_version(self, name: str, version: str, model_dir: Path, config: ModelConfig) -> LoadedModel:
        filename = config.default_model_filename
        path = scan.model_file(model_dir, self.root, version, filename)
        data = path.read_bytes()  # read once: the session, the metadata and the hash all come from these bytes
        metadata, external = scan.read_metadata(path, self.root, f"{version}/{filename}", data)
        requested = self._providers_for(config)
        gpus = [g for group in config.instance_groups for g in group.gpus]
        settings = self.settings.model_copy(update={"cuda_device_id": gpus[0]}) if gpus else self.settings
        if len(set(gpus)) > 1:
            log.warning("model %s: instance_group lists GPUs %s; one session runs on GPU %d", name, gpus, gpus[0])
        for hook in self.hooks:
            settings = hook.session_settings(settings, resolve_providers(requested, settings))
        session = make_session(path if external else data, settings, providers=requested)
        completed = complete_config(config, session.get_inputs(), session.get_outputs(),
                                    self.settings.default_max_batch_size, self.settings.default_queue_delay_us)
        batched = completed.max_batch_size > 0
        labels = {}
        for t in completed.outputs:
            filename = t.extra.get("label_filename")
            if filename:
                classes = t.dims[-1] if t.dims and t.dims[-1] > 0 else None
                labels[t.name] = scan.read_labels(model_dir, self.root, str(filename), t.name, classes)
        providers = list(session.get_providers())
        if not completed.instance_groups:  # as Triton does: the kind the session really got
            gpu = wants_gpu(providers)
            completed.instance_groups = [InstanceGroup(kind="KIND_GPU" if gpu else "KIND_CPU",
                                                       count=default_instance_count(self.settings, gpu))]
            completed.auto_completed.append("instance_group")
        model = LoadedModel(
            name=name, version=version, path=path, session=session, metadata=metadata, config=completed,
            providers=providers, requested_providers=resolve_providers(requested, self.settings),
            sha256=hashlib.sha256(data).hexdigest(),
            inputs=[TensorSpec(t.name, t.datatype, _spec_shape(t.dims, batched)) for t in completed.inputs],
            outputs=[TensorSpec(t.name, t.datatype, _spec_shape(t.dims, batched)) for t in completed.outputs],
            labels=labels,
        )
        for hook in self.hooks:
            hook.on_load(model)
        return model

    def unload(self, name: str) -> None:
        check_name(name)
        if self.entry(name) is None:  # before a lock is made for it: unknown names leave nothing behind
            raise ModelNotFound(f"unknown model {name!r}")
        with self._lock_for(name):
            with self._lock:
                entry = self._models.get(name)
                if entry is None:
                    raise ModelNotFound(f"unknown model {name!r}")
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
            except ServiceError:
                pass

    # -- queries -----------------------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The loaded model (latest ready version unless ``version``): ``ModelNotFound`` for an unknown model,
        ``NotFound`` for an unknown version, ``ModelNotReady`` for one not READY, ``InvalidInput`` for a
        malformed name or version."""
        version = check_version(version)
        with self._lock:
            entry = self._models.get(name)
        if entry is None:
            if not layout.valid_name(name):
                raise InvalidInput(f"invalid model name {name!r}")
            raise ModelNotFound(f"unknown model {name!r}")
        if version is None:
            ready = [s for s in entry.versions.values() if s.state == READY and s.model is not None]
            if not ready:
                reason = entry.reason or entry.state
                raise ModelNotReady(f"model {name!r} is not ready: {reason}")
            return max(ready, key=lambda s: int(s.version)).model  # type: ignore[return-value]
        state = entry.versions.get(version)
        if state is None:
            raise NotFound(f"unknown version {version} of model {name!r}")
        if state.state != READY or state.model is None:
            raise ModelNotReady(f"model {name!r} version {version} is not ready: {state.reason or state.state}")
        return state.model

    def ready_versions(self, name: str) -> list[str]:
        """The READY versions of ``name``, ascending (empty when it has none)."""
        entry = self.entry(name)
        if entry is None:
            return []
        return sorted((v for v, s in entry.versions.items() if s.state == READY), key=int)

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
