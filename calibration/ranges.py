"""Activation ranges in a framework-neutral file, and the TensorRT calibration cache made from them.

The ranges are computed once (by ONNX Runtime's calibrators, see
``toolchain.passes.quantize``) and then serve every consumer: ONNX Runtime's
quantizer, the TensorRT implicit-INT8 calibration cache, and reports.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from toolchain.errors import InputFileError
from toolchain.fileio import atomic_file

RANGES_FORMAT = "edgekiln-activation-ranges/1"


@dataclass(frozen=True)
class ActivationRanges:
    """Per-tensor (low, high) float ranges of a model's activations, with how they were measured."""

    method: str
    ranges: dict[str, tuple[float, float]]
    details: dict = field(default_factory=dict)
    """Calibration details: sample count, histogram bins, percentile, symmetric, model hash."""

    def to_dict(self) -> dict:
        return {"format": RANGES_FORMAT, "method": self.method, "details": self.details,
                "ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in sorted(self.ranges.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> "ActivationRanges":
        if not isinstance(data, dict) or data.get("format") != RANGES_FORMAT:
            raise InputFileError(f"not an {RANGES_FORMAT} file")
        try:
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in data["ranges"].items()}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputFileError(f"activation ranges file is malformed: {exc}") from exc
        return cls(str(data["method"]), ranges, dict(data.get("details", {})))

    def save(self, path: Path) -> None:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ActivationRanges":
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputFileError(f"cannot read activation ranges '{path}': {exc}") from exc


def symmetric_scale(low: float, high: float, levels: int = 127) -> float:
    """Scale of a symmetric int8 quantizer covering [low, high] (TensorRT's convention: amax / 127)."""
    amax = max(abs(low), abs(high))
    return amax / levels if amax > 0 else 1.0 / levels


def _float_hex(value: float) -> str:
    # TensorRT stores each scale as the big-endian bytes of an IEEE-754 float32, in hex.
    return struct.pack(">f", value).hex()


def tensorrt_cache_text(ranges: ActivationRanges, *, tensorrt_version: str = "8201",
                        algorithm: str = "EntropyCalibration2") -> str:
    """The text calibration cache TensorRT's implicit-INT8 calibrators read (``readCalibrationCache``).

    Format: a header ``TRT-<version>-<algorithm>`` then ``tensor_name: <hex float32 scale>`` per tensor.
    TensorRT (8.x) checks the header's version against its own, so it must match the device's.
    """
    lines = [f"TRT-{tensorrt_version}-{algorithm}"]
    for name, (low, high) in sorted(ranges.ranges.items()):
        if not (math.isfinite(low) and math.isfinite(high)):
            continue
        lines.append(f"{name}: {_float_hex(symmetric_scale(low, high))}")
    return "\n".join(lines) + "\n"


def write_tensorrt_cache(ranges: ActivationRanges, path: Path, **header: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(tensorrt_cache_text(ranges, **header))


def read_tensorrt_cache(text: str) -> dict[str, float]:
    """Scales per tensor from a TensorRT calibration cache (the inverse of ``tensorrt_cache_text``)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise InputFileError("not a TensorRT calibration cache (no TRT- header)")
    scales = {}
    for line in lines[1:]:
        name, _, value = line.rpartition(": ")
        scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
    return scales
