"""``edgekiln calibrate``: FP32 ONNX + sample images -> guarded static INT8 ONNX.

Writes the INT8 model, the activation ranges beside it (``<name>.ranges.json``)
and, when asked, a TensorRT calibration cache made from the same ranges.
Nothing is written unless the INT8 model meets the accuracy budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from toolchain.errors import ConversionError, UsageError, VerificationError
from toolchain.feeds import concrete_shape, resolve_preprocess
from toolchain.fileio import check_writable_destination
from toolchain.onnx_io import graph_inputs, load_onnx, save_onnx
from toolchain.passes.ptq import prepare_int8
from toolchain.passes.quantize import (QuantizeConfig, float_by_rule, has_float_weights, int8_weighted_nodes,
                                       is_quantized, named_copy, prepare_for_quantization, quantize_static)
from toolchain.quant_guard import Budget, GuardReport, guarded_quantize


@dataclass(frozen=True)
class CalibrationOptions:
    """Where the samples come from and how many are used (``--calib``, ``--calib-size``, ``--holdout``...)."""

    source: Path
    count: int | None = None
    """None: chosen from the number of samples (``calibration.dataset.choose_split``)."""
    holdout: int | None = None
    seed: int = 0
    preprocess: str | dict | None = None
    cache_dir: Path | None = None


@dataclass
class CalibrateResult:
    output: Path
    ranges_path: Path
    tensorrt_cache: Path | None
    config: QuantizeConfig
    guard: GuardReport | None
    calibration_summary: str
    size_before: int
    size_after: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def calibration_cache_dir(cache_dir: Path | str | None, no_cache: bool) -> Path | None:
    """Where preprocessed calibration sets are cached: ``<cache root>/calibration``; None with --no-cache.

    ``cache_dir`` is the edgekiln cache root (``--cache-dir``), shared with the build's stage cache.
    """
    from toolchain.cache_root import default_cache_root

    if no_cache:
        return None
    return (Path(cache_dir) if cache_dir else default_cache_root()) / "calibration"


def load_calibration_set(model: onnx.ModelProto, options: CalibrationOptions):
    """The calibration/held-out samples for ``model``'s single input, preprocessed per the declared spec."""
    from calibration.dataset import build_calibration_set, check_varied, is_array_source

    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise UsageError(f"calibration feeds one input; this model has {len(inputs)} "
                         f"({', '.join(i.name for i in inputs)})")
    spec = None if is_array_source(options.source) else resolve_preprocess(options.preprocess, inputs[0])
    samples = build_calibration_set(options.source, spec, count=options.count, holdout=options.holdout,
                                    seed=options.seed, cache_dir=options.cache_dir)
    check_varied(samples, options.source)
    expected = concrete_shape(inputs[0], batch=1)[1:]
    if tuple(samples.calibration.shape[1:]) != expected:
        raise UsageError(f"calibration samples have shape {tuple(samples.calibration.shape[1:])} but input "
                         f"'{inputs[0].name}' expects {expected}",
                         hint="Check the channel count and --preprocess (or the .npy samples).")
    return inputs[0], samples


def _batched(samples, name: str, part: str, batch_axis_fixed: bool):
    return list(samples.feeds(name, part, batch=1 if batch_axis_fixed else 16))


def prepared_for_int8(model: onnx.ModelProto, feed: dict) -> tuple[onnx.ModelProto, list[str]]:
    """``prepare_for_quantization``, with every change checked against the input model on ``feed``."""
    import numpy as np

    from toolchain.runtime import OnnxRuntimeRunner

    prepared, notes = prepare_for_quantization(model)
    if prepared is model:
        return model, notes
    before, after = OnnxRuntimeRunner.from_model(model).run(feed), OnnxRuntimeRunner.from_model(prepared).run(feed)
    for name, value in before.items():
        if not np.allclose(value, after[name], rtol=1e-3, atol=1e-4):
            raise ConversionError(f"preparing the model for INT8 ({'; '.join(notes)}) changed output '{name}' "
                                  f"(max abs {float(np.abs(value - after[name]).max()):.3g})")
    return named_copy(prepared), notes


def calibrate(model_path: Path, output: Path, calibration: CalibrationOptions, config: QuantizeConfig,
              budget: Budget | None = Budget(), tensorrt_cache: Path | None = None,
              tensorrt_version: str = "8201") -> CalibrateResult:
    """Quantize ``model_path`` to INT8 with the accuracy guard (``budget=None`` disables it)."""
    from calibration.ranges import write_tensorrt_cache

    started = time.perf_counter()
    if output.suffix.lower() != ".onnx":
        raise UsageError(f"output '{output}' must end in .onnx")
    check_writable_destination(output)
    if tensorrt_cache is not None:
        check_writable_destination(tensorrt_cache)
    model = named_copy(load_onnx(model_path))
    if is_quantized(model):
        raise UsageError(f"'{model_path.name}' is already quantized (it has QuantizeLinear/DequantizeLinear or "
                         f"integer nodes), so it has no float weights to quantize; calibrate the FP32 model instead")
    info, samples = load_calibration_set(model, calibration)
    fixed_batch = isinstance(info.shape[0], int)
    model, notes = prepared_for_int8(model, next(iter(_batched(samples, info.name, "calibration", True))))
    if not has_float_weights(model):
        raise UsageError(f"'{model_path.name}' has no float weights to quantize (already quantized?)")
    reference = model
    model, ranges, ptq = prepare_int8(model, _batched(samples, info.name, "calibration", fixed_batch), config)
    notes += ptq.lines()
    ranges.details.update({"calibration_set": samples.key, "preprocess": samples.spec, "ptq": ptq.to_dict()})
    by_rule = float_by_rule(model, ranges)
    if by_rule:
        shown = ", ".join(by_rule[:4]) + (f" (+{len(by_rule) - 4} more)" if len(by_rule) > 4 else "")
        notes.append(f"{len(by_rule)} node(s) kept float by rule (post-processing after the last weighted layer, "
                     f"Concats of mixed-scale inputs): {shown}")
    guard = None
    if budget is None:
        quantized = quantize_static(model, ranges, config)
    else:
        if len(samples.holdout) == 0:
            raise UsageError("the accuracy guard needs held-out samples; raise --holdout or pass --no-guard")
        quantized, guard = guarded_quantize(model, ranges, config, _batched(samples, info.name, "holdout", fixed_batch),
                                            budget, samples.holdout_labels, reference=reference,
                                            bias_source=ptq.uncorrected)
    if not int8_weighted_nodes(quantized):
        raise VerificationError(f"the INT8 model of '{model_path.name}' has no INT8 layer left (every weighted "
                                f"layer is excluded or kept in float), so it is not an INT8 model",
                                hint="No model was written. Exclude fewer nodes, or use fp16.")
    ranges_path = output.with_suffix(".ranges.json")
    save_onnx(quantized, output)
    ranges.save(ranges_path)
    if tensorrt_cache is not None:
        write_tensorrt_cache(ranges, tensorrt_cache, tensorrt_version=tensorrt_version)
    return CalibrateResult(output, ranges_path, tensorrt_cache, config, guard, samples.summary(),
                           model_path.stat().st_size, output.stat().st_size, time.perf_counter() - started,
                           notes)
