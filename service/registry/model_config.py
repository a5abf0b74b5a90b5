"""Triton model configuration: read from ``config.pbtxt``, auto-completed from the ONNX model, shown as JSON.

Only the parts this server acts on are modelled (name, platform/backend, max_batch_size, input,
output, instance_group, dynamic_batching, version_policy, default_model_filename, parameters);
everything else in the file is kept and echoed back in ``GET .../config``. The ``dynamic_batching`` block is
the exporter's own :class:`~sepconv.export.repository.layout.DynamicBatching` (one class, one set of field
names, Triton's). Everything wrong in a config raises :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from sepconv.export.repository.layout import DynamicBatching, LayoutError
from sepconv.service.datatypes import CONFIG_TO_V2, ORT_TO_V2, V2_TO_CONFIG
from sepconv.service.registry import pbtxt

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"



def _repeated_fields() -> frozenset[str]:
    """The names of the repeated (list) fields of Triton's ``ModelConfig`` and every message in it, read from its
    schema (the committed ``model_config.proto``), so fields this server does not act on are echoed back as lists
    too — as Triton's JSON has them and as gRPC's ``ModelConfig`` parses them."""
    from sepconv.service.grpc.generated import model_config_pb2  # noqa: PLC0415 - Triton's schema

    names: set[str] = set()
    seen: set[str] = set()

    def walk(message) -> None:  # noqa: ANN001 - a protobuf Descriptor
        if message.full_name in seen:
            return
        seen.add(message.full_name)
        for f in message.fields:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                continue  # a map: a JSON object, not a list
            if f.is_repeated:
                names.add(f.name)
            if f.message_type is not None:
                walk(f.message_type)

    walk(model_config_pb2.ModelConfig.DESCRIPTOR)
    return frozenset(names)


_REPEATED = _repeated_fields()


class ConfigError(ValueError):
    """config.pbtxt is invalid or does not fit the model."""


@dataclass
class TensorConfig:
    name: str
    datatype: str  # V2 name: FP32, FP16, BYTES...
    dims: list[int]  # without the batch dimension when max_batch_size > 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, is_input: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "data_type": V2_TO_CONFIG.get(self.datatype, "TYPE_INVALID"),
                               "dims": list(self.dims)}
        if is_input:
            out.update({"format": "FORMAT_NONE", "is_shape_tensor": False, "allow_ragged_batch": False,
                        "optional": False})
        else:
            out.update({"label_filename": "", "is_shape_tensor": False})
        out.update(self.extra)
        return out


@dataclass
class InstanceGroup:
    kind: str = "KIND_AUTO"  # KIND_AUTO | KIND_CPU | KIND_GPU
    count: int = 1
    gpus: list[int] = field(default_factory=list)
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "count": self.count, "gpus": list(self.gpus),
                "secondary_devices": [], "profile": [], "passive": False, "host_policy": ""}


@dataclass
class ModelConfig:
    name: str
    max_batch_size: int | None = None  # None = not given (auto-complete decides)
    inputs: list[TensorConfig] = field(default_factory=list)
    outputs: list[TensorConfig] = field(default_factory=list)
    instance_groups: list[InstanceGroup] = field(default_factory=list)
    dynamic_batching: DynamicBatching | None = None
    version_policy: tuple[str, Any] = ("latest", 1)  # ("latest", n) | ("all", None) | ("specific", [v...])
    default_model_filename: str = "model.onnx"
    parameters: dict[str, str] = field(default_factory=dict)
    platform: str = PLATFORM
    extra: dict[str, Any] = field(default_factory=dict)  # other fields of the file, echoed back
    auto_completed: list[str] = field(default_factory=list)

    # -- versions ---------------------------------------------------------------------------
    def select_versions(self, available: list[int]) -> list[int]:
        """The versions the policy serves, out of ``available`` (ascending)."""
        kind, arg = self.version_policy
        ordered = sorted(available)
        if kind == "all":
            return ordered
        if kind == "specific":
            return [v for v in ordered if v in set(arg)]
        return ordered[-int(arg):] if int(arg) > 0 else []

    # -- devices ------------------------------------------------------------------------------
    @property
    def instance_kind(self) -> str:
        kinds = {g.kind for g in self.instance_groups}
        if "KIND_GPU" in kinds:
            return "KIND_GPU"
        if "KIND_CPU" in kinds:
            return "KIND_CPU"
        return "KIND_AUTO"

    @property
    def instance_count(self) -> int:
        return max(1, sum(g.count for g in self.instance_groups)) if self.instance_groups else 1

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self, providers: list[str] | None = None) -> dict[str, Any]:
        kind, arg = self.version_policy
        if kind == "latest":
            policy: dict[str, Any] = {"latest": {"num_versions": int(arg)}}
        elif kind == "all":
            policy = {"all": {}}
        else:
            policy = {"specific": {"versions": list(arg)}}
        groups = self.instance_groups or [InstanceGroup()]
        out: dict[str, Any] = {
            "name": self.name,
            "platform": self.platform,
            "backend": BACKEND,
            "runtime": "",
            "version_policy": policy,
            "max_batch_size": int(self.max_batch_size or 0),
            "input": [t.to_json(True) for t in self.inputs],
            "output": [t.to_json(False) for t in self.outputs],
            "batch_input": [],
            "batch_output": [],
            "optimization": {"priority": "PRIORITY_DEFAULT", "input_pinned_memory": {"enable": True},
                             "output_pinned_memory": {"enable": True}, "gather_kernel_buffer_threshold": 0,
                             "eager_batching": False},
            "instance_group": [
                {**g.to_json(), "name": g.name or f"{self.name}_{i}"} for i, g in enumerate(groups)
            ],
            "default_model_filename": self.default_model_filename,
            "cc_model_filenames": {},
            "metric_tags": {},
            "parameters": {k: {"string_value": v} for k, v in self.parameters.items()},
            "model_warmup": [],
        }
        if self.dynamic_batching is not None:
            out["dynamic_batching"] = self.dynamic_batching.to_json()
        for key, value in self.extra.items():
            out.setdefault(key, value)
        if providers is not None:
            out["parameters"]["execution_providers"] = {"string_value": ",".join(providers)}
        return out


# --------------------------------------------------------------------------------------------
# reading config.pbtxt
# --------------------------------------------------------------------------------------------
def _plain(fields: dict[str, list[Any]]) -> dict[str, Any]:
    """Schema-less pbtxt dict -> JSON-like dict (lists only for known repeated fields)."""
    out: dict[str, Any] = {}
    for key, values in fields.items():
        conv = [_plain(v) if isinstance(v, dict) else v for v in values]
        out[key] = conv if key in _REPEATED else conv[-1]
    return out


def _one(fields: dict[str, list[Any]], key: str, default: Any = None) -> Any:
    values = fields.get(key)
    return values[-1] if values else default


def _block(value: Any, what: str) -> dict[str, list[Any]]:
    """A nested message (``{...}`` in pbtxt, an object in JSON); anything else is the config's mistake."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a block ({{...}}), got {value!r}"[:300])
    return value


def _blocks(fields: dict[str, list[Any]], key: str) -> list[dict[str, list[Any]]]:
    return [_block(v, key) for v in fields.get(key, [])]


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return value


def _tensor(fields: dict[str, list[Any]], what: str) -> TensorConfig:
    name = _one(fields, "name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"every {what} needs a name")
    dt = _one(fields, "data_type", "TYPE_INVALID")
    if dt not in CONFIG_TO_V2:
        raise ConfigError(f"{what} {name!r}: unsupported data_type {dt!r}")
    dims = [_int(d, f"{what} {name!r} dims") for d in fields.get("dims", [])]
    if any(d < -1 or d == 0 for d in dims):
        raise ConfigError(f"{what} {name!r}: dims must be positive or -1, got {dims}")
    extra = {k: _plain({k: v})[k] for k, v in fields.items() if k not in ("name", "data_type", "dims")}
    return TensorConfig(name=name, datatype=CONFIG_TO_V2[dt], dims=dims, extra=extra)


def parse_config(text: str, model_name: str) -> ModelConfig:
    """A :class:`ModelConfig` from the text of a ``config.pbtxt`` (fields not given stay unset)."""
    try:
        fields = pbtxt.parse(text)
    except pbtxt.PbtxtError as exc:
        raise ConfigError(f"config.pbtxt: {exc}") from exc
    return config_from_fields(fields, model_name)


_INT_FIELDS = {"dims", "max_batch_size", "count", "num_versions", "versions", "max_queue_delay_microseconds",
               "preferred_batch_size", "gpus"}


_INT_TEXT = re.compile(r"-?[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes '²'
MAX_INSTANCES = 64  # concurrent session.run calls per model; each is a worker task and a thread's worth of memory


def _json_fields(obj: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for key, value in obj.items():
        items = value if isinstance(value, list) else [value]
        conv: list[Any] = []
        for item in items:
            if isinstance(item, dict):
                conv.append(_json_fields(item))
            elif key in _INT_FIELDS and isinstance(item, str) and _INT_TEXT.fullmatch(item):
                conv.append(int(item))
            else:
                conv.append(item)
        if key == "parameters" and isinstance(value, dict):  # JSON map form {"k": {"string_value": v}}
            conv = [{"key": [k], "value": [_json_fields(v) if isinstance(v, dict) else {}]}
                    for k, v in value.items()]
        out[key] = conv
    return out


def config_from_json(obj: Any, model_name: str) -> ModelConfig:
    """A :class:`ModelConfig` from Triton's JSON form (the ``config`` parameter of a load request)."""
    if not isinstance(obj, dict):
        raise ConfigError("the model configuration must be a JSON object")
    try:
        return config_from_fields(_json_fields(obj), model_name)
    except ConfigError:
        raise
    except (RecursionError, ValueError, TypeError) as exc:  # absurd nesting or values: a client's mistake
        raise ConfigError(f"not a model configuration ({type(exc).__name__}: {str(exc)[:200]})") from exc


def config_from_fields(fields: dict[str, list[Any]], model_name: str) -> ModelConfig:
    name = _one(fields, "name", model_name) or model_name
    if name != model_name:
        raise ConfigError(f"config.pbtxt names the model {name!r}, but its directory is {model_name!r}")
    cfg = ModelConfig(name=model_name)
    platform = _one(fields, "platform")
    backend = _one(fields, "backend")
    if platform not in (None, "", PLATFORM) or backend not in (None, "", BACKEND):
        raise ConfigError(f"platform {platform!r} / backend {backend!r} is not served here (only {PLATFORM})")
    if "max_batch_size" in fields:
        cfg.max_batch_size = _int(_one(fields, "max_batch_size"), "max_batch_size")
        if cfg.max_batch_size < 0:
            raise ConfigError("max_batch_size must be >= 0")
    cfg.inputs = [_tensor(f, "input") for f in _blocks(fields, "input")]
    cfg.outputs = [_tensor(f, "output") for f in _blocks(fields, "output")]
    for g in _blocks(fields, "instance_group"):
        kind = _one(g, "kind", "KIND_AUTO")
        if kind not in ("KIND_AUTO", "KIND_CPU", "KIND_GPU"):
            raise ConfigError(f"instance_group kind {kind!r} is not supported (KIND_AUTO, KIND_CPU, KIND_GPU)")
        count = _int(_one(g, "count", 1), "instance_group count")
        if not 1 <= count <= MAX_INSTANCES:
            raise ConfigError(f"instance_group count must be between 1 and {MAX_INSTANCES}")
        gpus = [_int(x, "instance_group gpus") for x in g.get("gpus", [])]
        cfg.instance_groups.append(InstanceGroup(kind=kind, count=count, gpus=gpus, name=_one(g, "name", "")))
    if "dynamic_batching" in fields:
        db = _block(_one(fields, "dynamic_batching"), "dynamic_batching")
        delay = _int(_one(db, "max_queue_delay_microseconds", 0), "max_queue_delay_microseconds")
        preferred = [_int(x, "preferred_batch_size") for x in db.get("preferred_batch_size", [])]
        if delay < 0 or any(p < 1 for p in preferred):
            raise ConfigError("dynamic_batching: delays and preferred sizes must be positive")
        try:
            cfg.dynamic_batching = DynamicBatching(preferred_batch_size=tuple(preferred),
                                                   max_queue_delay_microseconds=delay,
                                                   preserve_ordering=bool(_one(db, "preserve_ordering", False)))
        except LayoutError as exc:
            raise ConfigError(str(exc)) from exc
    if "version_policy" in fields:
        vp = _block(_one(fields, "version_policy"), "version_policy")
        if "latest" in vp:
            n = _int(_one(_block(_one(vp, "latest"), "version_policy.latest"), "num_versions", 1), "num_versions")
            if n < 1:
                raise ConfigError("version_policy latest num_versions must be >= 1")
            cfg.version_policy = ("latest", n)
        elif "all" in vp:
            cfg.version_policy = ("all", None)
        elif "specific" in vp:
            specific = _block(_one(vp, "specific"), "version_policy.specific")
            versions = [_int(v, "versions") for v in specific.get("versions", [])]
            cfg.version_policy = ("specific", versions)
    filename = _one(fields, "default_model_filename")
    if filename:
        if not isinstance(filename, str) or "/" in filename or "\\" in filename or filename in (".", ".."):
            raise ConfigError(f"default_model_filename {filename!r} must be a plain file name")
        cfg.default_model_filename = filename
    for p in _blocks(fields, "parameters"):
        key = _one(p, "key")
        value = _block(_one(p, "value"), "parameters value")
        if isinstance(key, str):
            cfg.parameters[key] = str(_one(value, "string_value", ""))
    known = {"name", "platform", "backend", "max_batch_size", "input", "output", "instance_group",
             "dynamic_batching", "version_policy", "default_model_filename", "parameters"}
    cfg.extra = {k: v for k, v in _plain({k: v for k, v in fields.items() if k not in known}).items()}
    return cfg


# --------------------------------------------------------------------------------------------
# auto-complete and check against the ONNX model
# --------------------------------------------------------------------------------------------
def _model_dims(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


def complete_config(cfg: ModelConfig, model_inputs: list[Any], model_outputs: list[Any],
                    default_max_batch: int, default_delay_us: int) -> ModelConfig:
    """Fill what ``cfg`` leaves out from the ONNX model's inputs/outputs (``NodeArg``s), as Triton's
    ONNX Runtime backend does, and check that what it does say fits the model. Returns a new config."""
    cfg = copy.deepcopy(cfg)
    io = [(i, "input") for i in model_inputs] + [(o, "output") for o in model_outputs]
    for arg, what in io:
        if arg.type not in ORT_TO_V2 or ORT_TO_V2[arg.type] == "BF16":
            raise ConfigError(f"model {what} {arg.name!r} has type {arg.type}, which this server cannot serve")
    batchable = all(len(a.shape) >= 1 and _model_dims(a.shape)[0] == -1 for a, _ in io)
    if cfg.max_batch_size is None:
        cfg.max_batch_size = default_max_batch if batchable else 0
        cfg.auto_completed.append("max_batch_size")
        if cfg.max_batch_size > 0 and cfg.dynamic_batching is None:
            cfg.dynamic_batching = DynamicBatching(max_queue_delay_microseconds=default_delay_us)
            cfg.auto_completed.append("dynamic_batching")
    if cfg.max_batch_size > 0 and not batchable:
        raise ConfigError(f"max_batch_size is {cfg.max_batch_size}, but the model's first dimension is not a "
                          "dynamic batch dimension on every input and output")
    skip = 1 if cfg.max_batch_size > 0 else 0

    def fill(configured: list[TensorConfig], args: list[Any], what: str) -> list[TensorConfig]:
        by_name = {a.name: a for a in args}
        if not configured:
            cfg.auto_completed.append(what)
            return [TensorConfig(a.name, ORT_TO_V2[a.type], _model_dims(a.shape)[skip:]) for a in args]
        result = []
        for t in configured:
            arg = by_name.get(t.name)
            if arg is None:
                raise ConfigError(f"config {what} {t.name!r} is not a {what} of the model "
                                  f"(it has {', '.join(by_name)})")
            if ORT_TO_V2[arg.type] != t.datatype:
                raise ConfigError(f"config {what} {t.name!r} is {t.datatype}, the model says {ORT_TO_V2[arg.type]}")
            model_dims = _model_dims(arg.shape)[skip:]
            if "reshape" in t.extra:
                raise ConfigError(f"config {what} {t.name!r}: 'reshape' is not supported by this server")
            if len(model_dims) != len(t.dims) or any(
                    m != -1 and c != -1 and m != c for m, c in zip(model_dims, t.dims, strict=False)):
                raise ConfigError(f"config {what} {t.name!r} has dims {t.dims}, the model has {model_dims}"
                                  + (" (after the batch dimension)" if skip else ""))
            t = TensorConfig(t.name, t.datatype, [c if c != -1 else m for c, m in zip(t.dims, model_dims,
                                                                                      strict=False)], t.extra)
            result.append(t)
        if what == "input":
            missing = [a.name for a in args if a.name not in {t.name for t in configured}]
            if missing:
                raise ConfigError(f"config leaves out model input(s) {', '.join(missing)}")
        return result

    cfg.inputs = fill(cfg.inputs, model_inputs, "input")
    cfg.outputs = fill(cfg.outputs, model_outputs, "output")
    return cfg
