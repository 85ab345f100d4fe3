"""Precision as ONNX transformations: fp32 (none), fp16, dynamic INT8, static INT8 (guarded).

Backends that run ONNX directly (ONNX Runtime) get their precision this way;
backends with their own quantizer (TFLite, TensorRT) reuse the same calibration
set and ranges instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.errors import UsageError
from toolchain.onnx_io import load_onnx, save_onnx
from toolchain.quant_guard import Budget
from toolchain.targets import Target

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
LOSSY = ("fp16", "dynamic", "int8")


@dataclass(frozen=True)
class QuantOptions:
    """Everything INT8 needs besides the model: samples, quantizer overrides and the accuracy budget."""

    calibration: Any | None = None
    """``toolchain.passes.calibrate.CalibrationOptions``; required for int8."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """``QuantizeConfig`` fields the user set (method, per_channel, ...); the rest come from the target."""
    budget: Budget | None = Budget()
    """None disables the accuracy guard."""


def require_samples(calibration: Any | None) -> Any:
    """``calibration``, or the one error every INT8 path gives without samples."""
    if calibration is None:
        raise UsageError("--precision int8 needs calibration samples",
                         hint="Pass --calib DIR (a folder of sample images, or .npy/.npz samples).")
    return calibration


@dataclass
class LoweredModel:
    path: Path
    details: dict[str, Any] = field(default_factory=dict)
    extra_files: list[Path] = field(default_factory=list)


def apply_precision(model_path: Path, precision: str, workdir: Path, *, target: str | Target | None,
                    quant: QuantOptions) -> LoweredModel:
    """Write the model at ``precision`` into ``workdir`` (fp32 returns the input unchanged)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return LoweredModel(model_path)
    if precision == "int8":
        return _static_int8(model_path, workdir, target, quant)
    from toolchain.passes.quantize import convert_fp16, quantize_dynamic

    model = load_onnx(model_path)
    lowered, report = convert_fp16(model) if precision == "fp16" else quantize_dynamic(model)
    out = workdir / f"model.{precision}.onnx"
    save_onnx(lowered, out)
    return LoweredModel(out, {"pass": report.summary()})


def _static_int8(model_path: Path, workdir: Path, target: str | Target | None, quant: QuantOptions) -> LoweredModel:
    from toolchain.passes.calibrate import calibrate
    from toolchain.passes.quantize import QuantizeConfig, scheme_note
    from toolchain.quant_guard import float_layers_note

    require_samples(quant.calibration)
    config = QuantizeConfig.for_target(target, **quant.overrides)
    result = calibrate(model_path, workdir / "model.int8.onnx", quant.calibration, config, quant.budget)
    note = scheme_note(target, config)
    # The first attempt's "kept" layers are the user's own exclusions, not the guard's fallback.
    fell_back = result.guard is not None and len(result.guard.attempts) > 1
    kept = float_layers_note(list(result.guard.final.kept_float)) if fell_back else None
    details = {"quantize": config.model_dump(mode="json"), "calibration": result.calibration_summary,
               "guard": result.guard.to_dict() if result.guard else None,
               "notes": [n for n in (note, kept) if n] + result.notes}
    return LoweredModel(result.output, details, [result.ranges_path])
