"""The engine build settings: the user's options checked against the device's rules.

``resolve_settings`` is the only place where a request can be changed (INT8 on a
GPU without fast INT8 becomes FP16), and every such change comes back as a note
that is logged and recorded, or as an error with ``strict``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from backends.tensorrt.devices import TensorRTDevice, release_for
from backends.tensorrt.options import TensorRTOptions
from toolchain.errors import UsageError
from toolchain.onnx_io import TensorInfo
from toolchain.options import keywords_of

log = logging.getLogger("edgekiln")

PRECISIONS = ("fp32", "fp16", "int8")
INT8_MODES = ("qdq", "cache")
EXTRA_KEYS = (*keywords_of(TensorRTOptions), "min_cosine", "graph_optimization")
"""Keys of ``CompileOptions.extra`` this backend reads (graph_optimization is the ORT option the API always sends)."""


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max shapes of one input (all equal for a static input)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def dynamic(self) -> bool:
        return self.min != self.max


@dataclass(frozen=True)
class BuildSettings:
    """Everything that decides the engine; ``key_options`` is the part that enters the engine cache key."""

    target: str
    requested_precision: str
    precision: str
    int8_mode: str | None
    """'qdq' (explicit quantization), 'cache' (implicit, calibration cache) or None when not INT8."""
    tensorrt_version: str
    workspace_mb: int
    dla_core: int | None
    profiles: tuple[ShapeProfile, ...]
    min_cosine: float
    notes: tuple[str, ...] = field(default=())

    @property
    def dynamic(self) -> bool:
        return any(p.dynamic for p in self.profiles)

    def key_options(self) -> dict[str, Any]:
        """The build options that change the engine, as plain JSON (same on host and device)."""
        options: dict[str, Any] = {"precision": self.precision, "int8_mode": self.int8_mode,
                                   "workspace_mb": self.workspace_mb, "dla_core": self.dla_core,
                                   "tf32": self.precision != "fp32"}
        if self.dynamic:
            options["profiles"] = [{"name": p.name, "min": list(p.min), "opt": list(p.opt), "max": list(p.max)}
                                   for p in self.profiles]
        return options

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["profiles"] = [asdict(p) for p in self.profiles]
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildSettings":
        profiles = tuple(ShapeProfile(p["name"], tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
                         for p in data["profiles"])
        return cls(**{**data, "profiles": profiles, "notes": tuple(data.get("notes", ()))})


def resolve_settings(device: TensorRTDevice, precision: str, extra: dict[str, Any],
                     inputs: list[TensorInfo]) -> BuildSettings:
    """Check the options against the device's rules; notes say what was changed and why."""
    extra = {k: v for k, v in extra.items() if v is not None}  # the CLI passes unset flags as None
    unknown = sorted(set(extra) - set(EXTRA_KEYS))
    if unknown:
        raise UsageError(f"unknown TensorRT option(s): {', '.join(unknown)}; known: {', '.join(EXTRA_KEYS[:-1])}")
    if precision not in PRECISIONS:
        raise UsageError(f"TensorRT builds {', '.join(PRECISIONS)} engines, not '{precision}'")
    strict = bool(extra.get("strict", False))
    notes: list[str] = []
    version = str(extra.get("tensorrt_version") or device.tensorrt)
    release = release_for(version)
    effective = _effective_precision(device, precision, strict, notes)
    int8_mode = _int8_mode(device, effective, extra.get("int8_mode"), release.implicit_int8_deprecated, notes)
    dla_core = _dla_core(device, effective, extra.get("dla_core"))
    for note in notes:
        log.warning("%s", note)  # never a silent change: the note is also returned in the compile details
    return BuildSettings(device.target, precision, effective, int8_mode, version,
                         _positive_int(extra.get("workspace_mb", device.workspace_mb), "workspace_mb"),
                         dla_core, shape_profiles(inputs, extra), _min_cosine(extra.get("min_cosine", 0.99)),
                         tuple(notes))


def _effective_precision(device: TensorRTDevice, precision: str, strict: bool, notes: list[str]) -> str:
    if precision == "int8" and not device.fast_int8:
        message = (f"{device.target}: INT8 was requested, but its GPU has no fast INT8 kernels "
                   f"(TensorRT would run INT8 layers no faster than FP16, or not at all)")
        if strict:
            raise UsageError(message, hint="Use --precision fp16, or drop --strict to get FP16 with this note.")
        notes.append(f"{message}; building FP16 instead (pass --strict to make this an error)")
        return "fp16"
    if precision == "fp16" and not device.fast_fp16:
        raise UsageError(f"{device.target} has no fast FP16; use --precision fp32")
    return precision


def _int8_mode(device: TensorRTDevice, precision: str, requested: Any, deprecated: bool,
               notes: list[str]) -> str | None:
    if precision != "int8":
        return None
    mode = requested or device.int8_modes[0]
    if mode not in INT8_MODES:
        raise UsageError(f"int8_mode '{mode}' is not one of {', '.join(INT8_MODES)}")
    if mode == "cache" and deprecated:
        notes.append(f"{device.target}: implicit INT8 with a calibration cache is deprecated in TensorRT 10; "
                     "the QDQ model (int8_mode 'qdq') is the supported path")
    return mode


def _dla_core(device: TensorRTDevice, precision: str, requested: Any) -> int | None:
    if requested is None:
        return None
    core = _positive_int(requested, "dla_core", allow_zero=True)
    if device.dla_cores == 0:
        raise UsageError(f"{device.target} has no DLA cores; drop --dla-core")
    if core >= device.dla_cores:
        raise UsageError(f"{device.target} has DLA cores 0-{device.dla_cores - 1}, not {core}")
    if precision == "fp32":
        raise UsageError("the DLA runs FP16 and INT8 layers only; use --precision fp16 or int8 with --dla-core")
    return core


def shape_profiles(inputs: list[TensorInfo], extra: dict[str, Any]) -> tuple[ShapeProfile, ...]:
    """One optimization profile: a symbolic batch axis spans 1..max_batch; any other symbolic axis is an error."""
    max_batch = _positive_int(extra.get("max_batch", 8), "max_batch")
    opt_batch = _positive_int(extra.get("opt_batch", 1), "opt_batch")
    if opt_batch > max_batch:
        raise UsageError(f"opt_batch {opt_batch} is larger than max_batch {max_batch}")
    profiles = []
    for info in inputs:
        rest = info.shape[1:]
        symbolic = [d for d in rest if not isinstance(d, int)]
        if symbolic:
            raise UsageError(f"input '{info.name}' has symbolic dimension(s) {', '.join(map(str, symbolic))} besides "
                             "the batch; TensorRT needs them fixed",
                             hint="Fix them with: edgekiln convert model.onnx --input NAME:SHAPE -o fixed.onnx")
        if info.shape and not isinstance(info.shape[0], int):
            profiles.append(ShapeProfile(info.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest)))
        else:
            fixed = tuple(int(d) for d in info.shape)
            profiles.append(ShapeProfile(info.name, fixed, fixed, fixed))
    return tuple(profiles)


def _positive_int(value: Any, name: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise UsageError(f"{name} must be a whole number {'>= 0' if allow_zero else '>= 1'}, got {value!r}")
    return value


def _min_cosine(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UsageError(f"min_cosine must be in (0, 1], got {value!r}")
    return float(value)
