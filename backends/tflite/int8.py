"""Full-integer INT8 TFLite models, calibrated and guarded like the ONNX Runtime INT8 path.

Same samples: ``load_calibration_set`` gives the calibration/held-out split and
preprocessing the ORT path uses; calibration samples are fed to TFLite's
converter in its layout (NHWC). Same guard: the INT8 TFLite model and the FP32
ONNX model (in ONNX Runtime) run the held-out samples, ``compare_quality`` and
the ``Budget`` decide. When the budget is missed, TFLite's quantization
debugger measures every layer's own INT8 error; the worst layers are named and,
where the target allows float ops (not TFLite Micro), kept in float one step at
a time until the budget holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from backends.tflite.converter import LayerError, LowerConfig, layer_errors, lower
from backends.tflite.float_stats import Join, TensorStats, float_tensor_stats
from backends.tflite.io_binding import IOBindings
from toolchain.errors import UsageError, VerificationError
from toolchain.quant_guard import Budget, Quality, compare_quality, float_layers_note, refusal_hint

log = logging.getLogger("edgekiln.tflite")

# Same schedule as the ONNX Runtime guard: how many of the worst layers stay float per retry.
FALLBACK_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
DEBUG_SAMPLES = 16
# Ops whose outputs carry weights' errors; used to name the ONNX node behind a TFLite layer.
_WEIGHTED_TFLITE = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL", "CONV_3D")
_WEIGHTED_ONNX = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# QuantizeConfig fields the TFLite converter can honour, and the only values it has for the others.
_FIXED = {"method": "minmax", "activation_type": "int8", "activation_symmetric": False}
# Post-training passes that change only float weights and biases, so they can run on the ONNX model before
# onnx2tf; the others set ranges or rounding, which TFLite's converter decides itself.
BEFORE_CONVERSION = ("equalize", "bias_correction")
# Both stay opt-in here too. Bias correction raised TFLite INT8's agreement with FP32 on EfficientNet-Lite0 by
# 5.7 points over 298 held-out images (bench/tflite_agreement.md), but a layer the guard then keeps in float
# keeps its corrected bias, computed for its INT8 error: on a model with an outlier channel that float layer
# is wrong, and the fallback cannot recover (tests/backends/test_tflite.py's outlier CNN is refused). So,
# unless the user chose, the guard tries it as a candidate when plain INT8 misses (``Alternative``) and keeps
# walking the layer fallback from whichever of the two measured better.
TFLITE_PASS_DEFAULTS = {"equalize": False, "bias_correction": False}
_ONNX_QUANTIZER_ONLY = ("range_search", "weight_rounding")


@dataclass
class Int8Result:
    model: bytes
    quality: Quality | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Samples:
    """Calibration and held-out samples in ONNX layout, plus what the guard needs."""

    name: str
    calibration: np.ndarray
    holdout: np.ndarray
    labels: np.ndarray | None
    summary: str


def check_overrides(overrides: dict[str, Any]) -> bool:
    """The per-channel choice; refuse quantizer options the TFLite converter cannot apply (never ignore them)."""
    for key, value in overrides.items():
        if key == "per_channel" or key in BEFORE_CONVERSION:
            continue
        if key in _FIXED and value != _FIXED[key]:
            raise UsageError(f"the tflite backend cannot apply {key}={value}: TFLite's converter measures "
                             f"min/max ranges with asymmetric int8 activations")
        if key in _ONNX_QUANTIZER_ONLY:
            raise UsageError(f"--{key.replace('_', '-')} is a pass of edgekiln's ONNX quantizer (ONNX Runtime and "
                             f"TensorRT INT8); the tflite backend's INT8 comes from TFLite's converter, which "
                             f"measures its own ranges and rounds to nearest",
                             hint="Leave it out for TFLite targets (a build applies it to every INT8 target).")
        if key not in _FIXED:
            raise UsageError(f"the tflite backend does not support the quantizer option '{key}'")
    return bool(overrides.get("per_channel", True))


def passes_before_conversion(model: onnx.ModelProto, quant: Any,
                             force: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with the chosen ``BEFORE_CONVERSION`` passes applied, and what each did (unchanged: none chosen).

    Bias correction needs the INT8 model's error: edgekiln's quantizer stands in for TFLite's with TFLite's
    scheme (int8 asymmetric activations, symmetric int8 weights, min/max ranges) in exact integer
    arithmetic, as an ARM CPU computes it. On EfficientNet-Lite0 this raised TFLite INT8's agreement with
    FP32 from 86.2% to 90.3% over 298 held-out photos (bench/ptq.md). A layer the guard later keeps in float
    keeps its corrected bias: the guard still judges the result against the untouched FP32 model."""
    chosen = {key: True for key in BEFORE_CONVERSION if chosen_pass(quant, key) or key in force}
    if not chosen:
        return model, []
    from toolchain.passes.calibrate import prepared_for_int8
    from toolchain.passes.ptq import prepare_int8
    from toolchain.passes.quantize import QuantizeConfig

    samples = load_samples(model, quant.calibration)
    feeds = [{samples.name: sample[None]} for sample in samples.calibration]
    prepared, notes = prepared_for_int8(model, feeds[0])
    config = QuantizeConfig(activation_type="int8", per_channel=bool(quant.overrides.get("per_channel", True)),
                            guard_runtime="reference", **chosen)
    corrected, _, report = prepare_int8(prepared, feeds, config)
    return corrected, notes + report.lines()


def chosen_pass(quant: Any, key: str) -> bool:
    """Whether the ``BEFORE_CONVERSION`` pass ``key`` runs: the user's choice, else the TFLite default."""
    return bool(quant.overrides.get(key, TFLITE_PASS_DEFAULTS[key]))


def load_samples(model: onnx.ModelProto, calibration: Any) -> Samples:
    from toolchain.passes.calibrate import load_calibration_set
    from toolchain.precision import require_samples

    info, samples = load_calibration_set(model, require_samples(calibration))
    return Samples(info.name, np.asarray(samples.calibration, np.float32), np.asarray(samples.holdout, np.float32),
                   samples.holdout_labels, samples.summary())


def _tflite_batches(samples: np.ndarray, bindings: IOBindings) -> Iterator[list[np.ndarray]]:
    perm = bindings.inputs[0].perm
    for sample in samples:
        batch = sample[None]
        yield [np.ascontiguousarray(batch.transpose(perm) if perm is not None else batch)]


def _feeder(samples: np.ndarray, bindings: IOBindings) -> Callable[[], Iterator[list[np.ndarray]]]:
    """A re-iterable sample source, as TFLite's converter and debugger expect."""
    return lambda: _tflite_batches(samples, bindings)


def _reference_outputs(model: onnx.ModelProto, samples: Samples) -> dict[str, np.ndarray]:
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner.from_model(model)
    outputs = [runner.run({samples.name: s[None]}) for s in samples.holdout]
    return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def measure(model_bytes: bytes, bindings: IOBindings, samples: Samples,
            reference: dict[str, np.ndarray], task: str = "auto") -> Quality:
    """INT8 TFLite vs FP32 ONNX on the held-out samples, through the ONNX-layout runner."""
    from backends.tflite.runner import TFLiteRunner

    runner = TFLiteRunner.from_model(model_bytes, io=bindings.to_dict())
    outputs = [runner.run({samples.name: s[None]}) for s in samples.holdout]
    candidate = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return compare_quality(reference, candidate, samples.labels, task)


@dataclass
class GuardLog:
    """The guard's record, in the shape ``toolchain.report.print_guard`` reads (as the ONNX Runtime guard's)."""

    budget: Budget
    attempts: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = False

    def add(self, kept: list[str], quality: Quality) -> bool:
        """Record an attempt; True when it meets the budget."""
        self.attempts.append({"kept_float": kept, "quality": quality.to_dict()})
        self.passed = not quality.misses(self.budget)
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {"budget": asdict(self.budget), "passed": self.passed, "attempts": self.attempts,
                "sensitivity": self.sensitivity,
                "sensitivity_metric": "relative RMS error of each layer's own INT8 output (TFLite debugger)"}


def _float_profile(saved_model: Path, samples: Samples, bindings: IOBindings) -> tuple[dict[str, TensorStats],
                                                                                       list[Join]]:
    """Every float tensor's magnitude on calibration samples, and the joins INT8 would make lossy."""
    float_model = lower(saved_model, LowerConfig("fp32"))
    return float_tensor_stats(float_model, _tflite_batches(samples.calibration[:DEBUG_SAMPLES], bindings))


def _describe_join(join: Join) -> str:
    ranges = ", ".join(f"{r:.3g}" for r in join.ranges)
    return (f"{join.op} '{join.tensor[:60]}' joins inputs of max |x| {ranges} at one int8 scale "
            f"(the narrowest keeps {join.levels:.1f} of 256 levels)")


@dataclass
class Alternative:
    """A second starting point for the guard: the same model with bias correction, converted only if asked."""

    make: Callable[[], tuple[Path, list[str]]]
    """-> (its SavedModel, what the pass did)."""


@dataclass
class _Start:
    """One full-INT8 starting point: its SavedModel, float profile, config and first attempt."""

    saved_model: Path
    stats: dict[str, TensorStats]
    joins: list[Join]
    config: LowerConfig
    model_bytes: bytes


def _start(saved_model: Path, samples: Samples, bindings: IOBindings, io_dtype: str, per_channel: bool,
           allow_float_fallback: bool) -> _Start:
    stats, joins = _float_profile(saved_model, samples, bindings)
    float_joins = tuple(j.tensor for j in joins) if allow_float_fallback and io_dtype == "float32" else ()
    config = LowerConfig("int8", io_dtype, per_channel, float_joins)
    for join in joins:
        log.info("TFLite INT8: %s%s", _describe_join(join), ": kept in float" if float_joins else "")
    return _Start(saved_model, stats, joins, config, lower(saved_model, config, _feeder(samples.calibration, bindings)))


def _describe_start(start: _Start, details: dict[str, Any]) -> None:
    details["all_int8_bytes"] = len(start.model_bytes) if not start.config.float_nodes else None
    details.pop("mixed_range_joins", None)
    details.pop("kept_float", None)
    if start.joins:
        details["mixed_range_joins"] = [_describe_join(j) for j in start.joins]
    if start.config.float_nodes:
        details["kept_float"] = [f"{_describe_join(j)}: kept in float" for j in start.joins]


def _preference(quality: Quality, budget: Budget) -> tuple[float, ...]:
    """Which of two missed attempts is nearer the budget: fewer misses, then the task figure, then cosine."""
    detections = quality.detections or {}
    kept = detections["matched"] / detections["reference"] if detections.get("reference") else None
    task = quality.top1_agreement if quality.top1_agreement is not None else kept
    return (-len(quality.misses(budget)), task if task is not None else 0.0, quality.mean_cosine)


def quantize_int8(saved_model: Path, model: onnx.ModelProto, bindings: IOBindings, quant: Any, *,
                  io_dtype: str, allow_float_fallback: bool, alternative: Alternative | None = None) -> Int8Result:
    """Calibrate, convert and (unless ``quant.budget`` is None) guard a full-integer INT8 model.

    ``alternative``: tried when the plain model misses the budget (see ``TFLITE_PASS_DEFAULTS``)."""
    per_channel = check_overrides(dict(quant.overrides))
    samples = load_samples(model, quant.calibration)
    log.info("TFLite INT8: calibrating on %d samples", len(samples.calibration))
    start = _start(saved_model, samples, bindings, io_dtype, per_channel, allow_float_fallback)
    details: dict[str, Any] = {"calibration": samples.summary, "per_channel": per_channel, "io_dtype": io_dtype,
                               "bias_corrected": chosen_pass(quant, "bias_correction")}
    _describe_start(start, details)
    if quant.budget is None:  # --no-guard: no held-out comparison either (as on the ONNX Runtime path)
        return Int8Result(start.model_bytes, None, details)
    if len(samples.holdout) == 0:
        raise UsageError("the accuracy guard needs held-out samples; raise --holdout or pass --no-guard")
    reference = _reference_outputs(model, samples)
    quality = measure(start.model_bytes, bindings, samples, reference, quant.budget.task)
    details["quality"] = quality.to_dict()
    guard = GuardLog(quant.budget)
    try:
        if guard.add([], quality):
            return Int8Result(start.model_bytes, quality, details)
        if alternative is not None:
            log.info("TFLite INT8 misses the budget; trying bias correction")
            corrected_model, notes = alternative.make()
            corrected = _start(corrected_model, samples, bindings, io_dtype, per_channel, allow_float_fallback)
            corrected_quality = measure(corrected.model_bytes, bindings, samples, reference, quant.budget.task)
            guard.add([], corrected_quality)
            guard.attempts[-1]["bias_corrected"] = True
            # A hopeless corrected model is never the starting point: its biases were fitted to a broken INT8
            # model, and a layer kept in float would keep them (the outlier CNN of the tests).
            better = (not corrected_quality.hopeless(quant.budget)
                      and _preference(corrected_quality, quant.budget) > _preference(quality, quant.budget))
            guard.attempts[0 if guard.passed or better else -1]["set_aside"] = True
            if guard.passed or better:
                start, quality = corrected, corrected_quality
                details.update(bias_corrected=True, ptq=notes, quality=quality.to_dict())
                _describe_start(start, details)
            if guard.passed:
                return Int8Result(start.model_bytes, quality, details)
            log.info("TFLite INT8: layer fallback from the %s model",
                     "bias-corrected" if details["bias_corrected"] else "plain")
        return _fallback(start.saved_model, model, bindings, samples, reference, start.config, guard, details,
                         allow_float_fallback, start.stats, start.joins)
    finally:
        details["guard"] = guard.to_dict()


def _fallback(saved_model: Path, model: onnx.ModelProto, bindings: IOBindings, samples: Samples,
              reference: dict[str, np.ndarray], config: LowerConfig, guard: GuardLog, details: dict[str, Any],
              allow_float_fallback: bool, stats: dict[str, TensorStats], joins: list[Join]) -> Int8Result:
    log.info("TFLite INT8 misses the budget; measuring each layer's error")
    representative = _feeder(samples.calibration, bindings)
    in_order = layer_errors(saved_model, config, representative, _feeder(samples.holdout[:DEBUG_SAMPLES], bindings),
                            stats)
    names = onnx_node_names(model, in_order)
    kept_first = set(config.float_nodes)
    # Worst first; NaN (no float magnitude) last; layers already kept in float are not candidates.
    layers = sorted((layer for layer in in_order if layer.tensor not in kept_first),
                    key=lambda layer: -layer.relative_rmse if np.isfinite(layer.relative_rmse) else float("inf"))
    guard.sensitivity = [{"node": names.get(l.tensor, l.tensor), "op_type": l.op, "tensor": l.tensor,
                          "score": round(l.relative_rmse, 6)} for l in layers]
    if allow_float_fallback and config.io_dtype == "float32":
        limit = max(2, len(layers) // 2)
        steps = [s for s in FALLBACK_STEPS if s <= limit]

        def attempt(step: int) -> tuple[bytes, Quality, list[str]]:
            kept = layers[:step]
            candidate = lower(saved_model, LowerConfig("int8", "float32", config.per_channel,
                                                       (*config.float_nodes, *(layer.tensor for layer in kept))),
                              representative)
            return (candidate, measure(candidate, bindings, samples, reference, guard.budget.task),
                    [names.get(layer.tensor, layer.tensor) for layer in kept])

        def accept(step: int, candidate: bytes, quality: Quality) -> Int8Result:
            details["quality"] = quality.to_dict()
            details["kept_float"] = [*details.get("kept_float", []), *(describe(layer, names) for layer in layers[:step])]
            return Int8Result(candidate, quality, details)

        largest: tuple[bytes, Quality, list[str]] | None = None
        for index, step in enumerate(steps):
            if index == 1 and len(steps) > 2:
                # As the ONNX Runtime guard: after one layer in float, the most the schedule allows; a miss
                # by far there is refused at once (each step is a conversion), otherwise it stands for the
                # last step.
                largest = attempt(steps[-1])
                guard.add(largest[2], largest[1])
                probe_entry, guard.passed = guard.attempts[-1], False
                if largest[1].hopeless(guard.budget):
                    raise budget_error(guard, layers, names, len(samples.holdout), allow_float_fallback,
                                       bias_corrected=bool(details.get("bias_corrected")), hopeless=True,
                                       joins=joins)
            if largest is not None and step == steps[-1]:
                guard.attempts = [a for a in guard.attempts if a is not probe_entry]
                candidate, quality, kept_names = largest
            else:
                candidate, quality, kept_names = attempt(step)
            if details.get("all_int8_bytes") is None and not config.float_nodes:
                details["all_int8_bytes"] = len(model_bytes)
            if guard.add(kept_names, quality):
                return accept(step, candidate, quality)
    raise budget_error(guard, layers, names, len(samples.holdout), allow_float_fallback,
                       bias_corrected=bool(details.get("bias_corrected")), joins=joins)


def budget_error(guard: GuardLog, layers: list[LayerError], names: dict[str, str], samples: int,
                 fallback_allowed: bool, bias_corrected: bool = False, hopeless: bool = False,
                 joins: list[Join] = ()) -> VerificationError:
    final = next(a for a in reversed(guard.attempts) if not a.get("set_aside"))
    quality = Quality.from_dict(final["quality"])
    worst = ", ".join(describe(layer, names) for layer in layers[:3]) or "no single layer stands out"
    if joins and not fallback_allowed:
        worst = f"{_describe_join(joins[0])}; {worst}"
    skipped = " (missed by far, so fewer were not tried)" if hopeless else ""
    corrected = " (bias correction tried too)" if any(a.get("bias_corrected") for a in guard.attempts) else ""
    fallback = (f" even with {len(final['kept_float'])} layer(s) kept in float{skipped}{corrected}"
                if any(a["kept_float"] for a in guard.attempts)
                else corrected if fallback_allowed else f" (full-integer target: no float fallback){corrected}")
    error = VerificationError(
        f"TFLite INT8 misses the accuracy budget on {samples} held-out samples{fallback}: "
        f"{'; '.join(quality.misses(guard.budget))}; layers with the largest INT8 error: {worst}",
        hint=refusal_hint(bias_corrected or bool(corrected), methods=False))
    error.report = guard.to_dict()  # type: ignore[attr-defined]  # the build reports the attempts
    return error


def kept_float_note(details: dict[str, Any], model_bytes: int) -> str | None:
    """The console's line about layers kept in float and what they cost in size, or None."""
    return float_layers_note(details.get("kept_float") or [], model_bytes, details.get("all_int8_bytes"))


def describe(layer: LayerError, names: dict[str, str]) -> str:
    node = names.get(layer.tensor)
    where = f"ONNX node '{node}'" if node else f"TFLite tensor '{layer.tensor[:60]}'"
    return f"{layer.op} {where} (relative error {layer.relative_rmse:.2f})"


def onnx_node_names(model: onnx.ModelProto, layers: list[LayerError]) -> dict[str, str]:
    """TFLite tensor name -> ONNX node name for weighted layers, matched in execution order.

    onnx2tf names TensorFlow ops after their TF function, not the ONNX node, but it keeps the order of
    convolutions and matrix products; the match is only made when both sides have the same count.
    """
    weighted_tflite = [layer.tensor for layer in layers if layer.op in _WEIGHTED_TFLITE]
    weighted_onnx = [node.name or node.output[0] for node in model.graph.node if node.op_type in _WEIGHTED_ONNX]
    if len(weighted_tflite) != len(weighted_onnx):
        return {}
    return dict(zip(weighted_tflite, weighted_onnx))
