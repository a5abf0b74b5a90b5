"""A loaded model version and the records the registry keeps about every version.

:class:`LoadedModel` is what every feature gets from ``registry.get(name, version=None)``: ``.name``,
``.version``, ``.path`` (the model.onnx), ``.session`` (ORT ``InferenceSession``), ``.metadata`` (ONNX
metadata_props), ``.max_batch_size``, ``.config`` (:class:`~sepconv.service.registry.model_config.ModelConfig`;
``.config.to_json()`` is the V2 config), ``.providers`` (what the session really runs on), ``.inputs`` /
``.outputs`` (:class:`TensorSpec`, as clients see them), ``.labels`` (output name -> its class labels, read from
the config's ``label_filename``), ``.stats`` (Triton's statistics), ``.metrics`` (its
Prometheus children) and ``.scheduler`` (set by the serving hook when the version loads).
``.serialized()`` gives the bytes the session was made from (the file read again and checked against the
SHA-256 taken at load: a file changed or truncated since is ``Unavailable``, never another network's graph).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import onnxruntime as ort

from sepconv.service.errors import Unavailable
from sepconv.service.metrics import ModelMetrics
from sepconv.service.registry.model_config import ModelConfig
from sepconv.service.runtime.scheduler import Scheduler
from sepconv.service.runtime.stats import ModelStats


class ModelState(StrEnum):
    """A version's (and a model's) state, as Triton's repository index names them."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


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
    requested_providers: list[str] = field(default_factory=list)  # what was asked for (providers = what runs)
    labels: dict[str, list[str]] = field(default_factory=dict)  # output name -> class labels (label_filename)
    stats: ModelStats = field(default_factory=ModelStats)
    scheduler: Scheduler | None = None  # attached by the serving hook (service.runtime.serving) on load
    sha256: str = ""  # of the model file's bytes the session was made from ("" = not recorded)
    metrics: ModelMetrics = field(init=False)
    input_map: dict[str, TensorSpec] = field(init=False)
    output_map: dict[str, TensorSpec] = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ModelMetrics.of(self.name, self.version)
        self.input_map = {t.name: t for t in self.inputs}
        self.output_map = {t.name: t for t in self.outputs}

    @property
    def max_batch_size(self) -> int:
        return int(self.config.max_batch_size or 0)

    def serialized(self) -> bytes:
        """The model's bytes as loaded: ``Unavailable`` when the file is gone or differs from them now."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise Unavailable(f"model {self.name!r} version {self.version}: its file cannot be read any more "
                              f"({exc.strerror or exc}); reload the model") from None
        if self.sha256 and hashlib.sha256(data).hexdigest() != self.sha256:
            raise Unavailable(f"model {self.name!r} version {self.version}: its file changed on disk since it was "
                              "loaded; the loaded version is still served — reload the model to profile it")
        return data

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()


@dataclass
class VersionState:
    version: str
    state: ModelState
    reason: str = ""
    model: LoadedModel | None = None


@dataclass
class ModelEntry:
    name: str
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    versions: dict[str, VersionState] = field(default_factory=dict)
    config: ModelConfig | None = None
