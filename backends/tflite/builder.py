"""TFLite builder: ONNX -> (onnx2tf) SavedModel -> (TFLiteConverter) ``model.tflite``.

One build is: simplify the ONNX model in-process, convert it with onnx2tf in a
child process (``onnx2tf_run``), map ONNX inputs/outputs onto the SavedModel's
serving signature, which the TFLite model keeps (``io_binding``), then
produce the requested precision (``converter``; INT8 through ``int8`` with the
accuracy guard). ``--target mcu`` adds the TFLite Micro bundle (``mcu``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from backends.base import Backend, Capabilities, CompiledFiles, CompileOptions, Runner
from backends.tflite.converter import LowerConfig, lower
from backends.tflite.flatbuffer import TFLiteGraph, parse_tflite
from backends.tflite.io_binding import Binding, IOBindings, bind_inputs, output_candidates, resolve_outputs
from backends.tflite.mcu import MicroBudget
from backends.tflite.options import TFLiteOptions
from toolchain.errors import ConversionError, UsageError
from toolchain.lazy import is_installed
from toolchain.onnx_io import graph_inputs, graph_outputs, load_onnx

log = logging.getLogger("edgekiln.tflite")

MODEL_FILE = "model.tflite"
LOG_FILE = "onnx2tf.log"
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


@dataclass(frozen=True)
class TargetDefaults:
    """What a target profile means for a TFLite build (declared data, read by ``BuildPlan``)."""

    threads: int | None = None
    xnnpack: bool = True
    io_dtype: str = "float32"
    """Input/output type of INT8 models: float keeps quantize/dequantize inside the model."""
    micro: bool = False
    """TensorFlow Lite Micro: full INT8 only, no float fallback, C bundle, flash/RAM budgets."""


TARGET_DEFAULTS: dict[str, TargetDefaults] = {
    "rpi4": TargetDefaults(threads=4),
    "rpi5": TargetDefaults(threads=4),
    "mcu": TargetDefaults(io_dtype="int8", micro=True),
}


@dataclass(frozen=True)
class BuildPlan:
    precision: str
    target: str | None
    threads: int | None
    xnnpack: bool
    io_dtype: str
    micro: bool
    budget: MicroBudget = field(default_factory=MicroBudget)

    @classmethod
    def from_options(cls, options: CompileOptions) -> "BuildPlan":
        if options.precision not in PRECISIONS:
            raise UsageError(f"the tflite backend does not support precision '{options.precision}'; "
                             f"it supports {', '.join(PRECISIONS)}")
        defaults = TARGET_DEFAULTS.get(options.target or "", TargetDefaults())
        if defaults.micro and options.precision != "int8":
            raise UsageError(f"target '{options.target}' (TensorFlow Lite Micro) needs --precision int8, "
                             f"not {options.precision}")
        io_dtype = options.extra.get("io_dtype") or defaults.io_dtype
        if io_dtype not in ("float32", "int8"):
            raise UsageError(f"TFLite input/output type '{io_dtype}' is not float32 or int8")
        if io_dtype != "float32" and options.precision != "int8":
            raise UsageError("int8 inputs/outputs need --precision int8")
        budget = MicroBudget(_budget(options.extra, "flash_kb"), _budget(options.extra, "ram_kb"))
        if budget.ram_kb is not None and not defaults.micro:
            raise UsageError("--ram-kb applies to --target mcu (the TFLite Micro tensor arena)")
        if options.precision == "int8":
            _check_int8_options(options.quant)
        return cls(options.precision, options.target, options.threads or defaults.threads, defaults.xnnpack,
                   io_dtype, defaults.micro, budget)


def _check_int8_options(quant: Any) -> None:
    """Fail before the slow conversion when INT8 cannot be done as asked."""
    from backends.tflite.int8 import check_overrides
    from toolchain.precision import require_samples

    require_samples(quant.calibration if quant is not None else None)
    check_overrides(dict(quant.overrides))


def _budget(extra: dict[str, Any], key: str) -> float | None:
    value = extra.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(f"--{key.replace('_', '-')} must be a positive number of KiB, got {value!r}")
    return float(value)


class TFLiteBackend(Backend):
    name = "tflite"
    description = "TensorFlow Lite / LiteRT via onnx2tf (fp32, fp16, dynamic, full-integer INT8; TFLite Micro bundle)"
    capabilities = Capabilities(precisions=PRECISIONS, opset_range=(7, 23), layouts=("NHWC",),
                                precision_via_onnx=False)
    # onnx2tf 1.28 declares no dependencies; it imports these three at start-up besides TensorFlow.
    required_modules = ("onnx2tf", "tensorflow", "tf_keras", "onnx_graphsurgeon", "sng4onnx")
    options = TFLiteOptions
    distributions = ("tensorflow", "onnx2tf", "ai-edge-litert", "onnx-graphsurgeon", "tf-keras")

    def can_run(self) -> tuple[bool, str]:
        # Running needs only an interpreter: LiteRT, or TensorFlow's own.
        if is_installed("ai_edge_litert") or is_installed("tensorflow"):
            return True, "ready"
        return False, "no TFLite interpreter: pip install 'edgekiln[tflite]'"

    def compile(self, onnx_path: Path, options: CompileOptions, out_dir: Path) -> CompiledFiles:
        plan = BuildPlan.from_options(options)
        model = load_onnx(onnx_path)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edgekiln-tflite-") as tmp:
            built = _build(model, plan, options.quant, Path(tmp), out_dir / LOG_FILE)
        (out_dir / MODEL_FILE).write_bytes(built.data)
        graph = parse_tflite(built.data, MODEL_FILE)
        details = {**built.details, **summary_details(graph)}
        details["files"] = [MODEL_FILE, LOG_FILE]
        if plan.micro:
            from backends.tflite.micro_build import micro_bundle

            details.update(micro_bundle(out_dir, built.data, graph, built.bindings, plan.budget, onnx_path.name,
                                        model, options.quant, options.extra.get("tflm_root")))
            details["files"] += details["mcu"]["files"]
        elif plan.budget.flash_kb is not None:
            from backends.tflite.mcu import check_budgets

            check_budgets(len(built.data), None, plan.budget)
        if not plan.micro and plan.target in ("rpi4", "rpi5"):
            from backends.tflite.emulate import build_check, check_skipped  # aarch64 LiteRT under qemu-user

            details.update(build_check(out_dir / MODEL_FILE, built.bindings, plan.target, plan.threads,
                                       plan.xnnpack, model, options.quant) if options.verify
                           else check_skipped("--no-verify"))
        if plan.precision == "int8":
            from backends.tflite.int8 import kept_float_note

            int8 = details.get("int8", {})
            tried = any(a.get("bias_corrected") for a in (int8.get("guard") or {}).get("attempts", []))
            notes = ["bias correction applied: plain INT8 missed the accuracy budget and the bias-corrected model "
                     "measured closer to it"] if tried and int8.get("bias_corrected") else []
            note = kept_float_note(int8, len(built.data))
            details["notes"] = [*details.get("notes", []), *notes, *([note] if note else [])]
        # Durations stay out of the details: the manifest keeps times under "timings" only.
        log.info("TFLite: %s build done in %.1f s", plan.precision, time.perf_counter() - started)
        runtime: dict[str, Any] = {"xnnpack": plan.xnnpack, "io": built.bindings.to_dict()}
        if plan.threads:
            runtime["threads"] = plan.threads
        return CompiledFiles(model_file=MODEL_FILE, runtime_options=runtime, details=details)

    def load(self, model_path: Path, runtime_options: dict[str, Any]) -> Runner:
        from backends.tflite.runner import TFLiteRunner

        return TFLiteRunner.from_path(model_path, **runtime_options)


@dataclass
class Built:
    data: bytes
    bindings: IOBindings
    details: dict[str, Any]


def _build(model: onnx.ModelProto, plan: BuildPlan, quant: Any, work: Path, log_path: Path) -> Built:
    from backends.tflite.converter import preload_tensorflow
    from backends.tflite.onnx2tf_run import convert_to_saved_model
    from backends.tflite.prepare import prepare_for_onnx2tf

    def converted(onnx_model: onnx.ModelProto, folder: Path, log_file: Path, preload: bool):
        log.info("TFLite: converting with onnx2tf (log: %s)", log_path.name)
        prepared = prepare_for_onnx2tf(onnx_model)
        for note in prepared.notes:
            log.info("TFLite: %s", note)
        folder.mkdir(exist_ok=True)
        return convert_to_saved_model(prepared.model, folder, log_file, node_names=prepared.original_names,
                                      while_waiting=preload_tensorflow if preload else None)

    base, ptq_notes = _simplified(model), []
    simplified = base
    if plan.precision == "int8":
        from backends.tflite.int8 import passes_before_conversion

        simplified, ptq_notes = passes_before_conversion(base, quant)
        for note in ptq_notes:
            log.info("TFLite INT8: %s", note)
    saved = converted(simplified, work, log_path, preload=True)
    # Only an FP32 build needs the float TFLite model itself; the others bind from the SavedModel's
    # signature and lower the float model only when shapes leave the output order open.
    float_model = _FloatModel(saved.path, eager=plan.precision == "fp32")
    bindings = bind(model, saved_model_signature(saved.path), float_model)
    log.info("TFLite: onnx2tf %s in %.1f s", "reused" if saved.reused else "converted", saved.seconds)
    details: dict[str, Any] = {"precision": plan.precision, "onnx2tf_warnings": saved.warnings, "log": LOG_FILE}
    log.info("TFLite: lowering to %s", plan.precision)
    if plan.precision == "fp32":
        return Built(float_model(), bindings, details)
    if plan.precision in ("fp16", "dynamic"):
        return Built(lower(saved.path, LowerConfig(plan.precision)), bindings, details)
    from backends.tflite.int8 import Alternative, quantize_int8

    def bias_corrected() -> tuple[Path, list[str]]:
        corrected, notes = passes_before_conversion(base, quant, force=("bias_correction",))
        second_log = work / "bias-corrected" / LOG_FILE
        again = converted(corrected, second_log.parent, second_log, preload=False)
        with open(log_path, "a", encoding="utf-8") as sink:  # one log for everything the build converted
            sink.write("\n[edgekiln] second conversion, the bias-corrected model:\n")
            sink.write(second_log.read_text(errors="replace"))
        return again.path, notes

    untouched = "bias_correction" not in quant.overrides and not ptq_notes
    result = quantize_int8(saved.path, model, bindings, quant, io_dtype=plan.io_dtype,
                           allow_float_fallback=not plan.micro,
                           alternative=Alternative(bias_corrected) if untouched else None)
    ptq = result.details.pop("ptq", None) or ptq_notes
    details["int8"] = {**result.details, **({"ptq": ptq} if ptq else {})}
    return Built(result.model, bindings, details)


def _simplified(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx2tf converts simplified graphs best; its own onnxsim step costs ~13 s, so simplify here once."""
    from toolchain.passes import simplify

    try:
        return simplify.run(model)[0]
    except ConversionError as exc:
        log.info("TFLite: simplification skipped (%s)", exc.message)
        return model


class _FloatModel:
    """The FP32 TFLite model of a SavedModel, lowered at most once and only when asked for."""

    def __init__(self, saved_model: Path, eager: bool) -> None:
        self._saved_model = saved_model
        self._data: bytes | None = lower(saved_model, LowerConfig("fp32")) if eager else None

    def __call__(self) -> bytes:
        if self._data is None:
            self._data = lower(self._saved_model, LowerConfig("fp32"))
        return self._data


Shapes = dict[str, tuple[int, ...]]


def saved_model_signature(saved_model: Path) -> tuple[Shapes, Shapes]:
    """Input and output shapes of the SavedModel's serving signature, keyed as the TFLite signature will be.

    The TFLite converter keeps the serving signature's keys and shapes (-1 for a dynamic axis), so reading
    them from ``saved_model.pb`` spares a float32 conversion run (about 1.2 s on a MobileNetV2-sized CNN)
    that would serve only to learn them.
    """
    from backends.tflite.converter import saved_model_proto

    signatures = {key: sig for graph in saved_model_proto(saved_model).meta_graphs
                  for key, sig in graph.signature_def.items() if not key.startswith("__")}
    if not signatures:
        raise ConversionError("the converted SavedModel has no signature to map its inputs and outputs")
    signature = signatures.get("serving_default") or next(iter(signatures.values()))

    def shapes(tensors) -> Shapes:
        return {key: tuple(int(d.size) for d in info.tensor_shape.dim) for key, info in tensors.items()}

    return shapes(signature.inputs), shapes(signature.outputs)


def bind(model: onnx.ModelProto, signature: tuple[Shapes, Shapes], float_model: Callable[[], bytes]) -> IOBindings:
    """Map ONNX inputs/outputs onto the TFLite signature; ambiguous outputs are settled by one probe run
    of the float TFLite model."""
    in_shapes, out_shapes = signature
    inputs = bind_inputs(graph_inputs(model), in_shapes)
    candidates = output_candidates(graph_outputs(model), out_shapes)
    if all(len(c) == 1 for c in candidates):
        return IOBindings(inputs, tuple(c[0] for c in candidates))
    return IOBindings(inputs, resolve_outputs(candidates, _probe(model, float_model(), inputs)))


def _probe(model: onnx.ModelProto, float_model: bytes, inputs: tuple[Binding, ...]):
    from backends.onnxruntime.runner import OnnxRuntimeRunner
    from backends.tflite.runner import make_interpreter, tensor_details
    from toolchain.feeds import random_feed

    feed = random_feed([b.info() for b in inputs], seed=0)
    reference = OnnxRuntimeRunner.from_model(model).run(feed)
    interpreter = make_interpreter(float_model)
    in_details, out_details = tensor_details(interpreter)
    for binding in inputs:
        value = feed[binding.name]
        interpreter.set_tensor(in_details[binding.key]["index"],
                               value.transpose(binding.perm) if binding.perm is not None else value)
    interpreter.invoke()

    def error_of(binding: Binding) -> float:
        value = interpreter.get_tensor(out_details[binding.key]["index"])
        value = value.transpose(binding.perm) if binding.perm is not None else value
        expected = reference[binding.name]
        if value.shape != expected.shape:
            return float("inf")
        return float(np.abs(value.astype(np.float64) - expected).max())

    return error_of


def summary_details(graph: TFLiteGraph) -> dict[str, Any]:
    return {"size_bytes": graph.size_bytes, "ops": dict(Counter(op.op for op in graph.operators)),
            "tensor_types": dict(Counter(t.dtype for t in graph.tensors))}
