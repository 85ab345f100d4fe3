"""FP32 export (through ``toolchain.api.convert``) and the precision variants benchmarked against it.

Variants, in table order:

* ``fp32``: the verified export.
* ``int8``: edgekiln static INT8 (``compute_ranges`` + ``quantize_static`` with
  ``QuantizeConfig.for_target("x86")``: QDQ, uint8 activations, int8 per-channel weights, MinMax).
* ``int8-ort-default``: the peer baseline, ``onnxruntime.quantization.quantize_static`` with its
  default settings (QDQ, int8 activations and weights, per-tensor, MinMax) on the same feeds.
* ``dynamic``: ``quantize_dynamic`` (int8 weights, activations quantized at run time).
* ``fp16``: ``convert_fp16`` (float32 kept at the inputs and outputs).
* ``int8-api``: ``toolchain.api.calibrate`` (the ``edgekiln calibrate`` command: the same static
  INT8 plus its accuracy guard), only where that API exists.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

Feed = dict[str, np.ndarray]

VARIANTS = ("fp32", "int8", "int8-ort-default", "dynamic", "fp16", "int8-api")
LABELS = {
    "fp32": "FP32",
    "int8": "edgekiln INT8 (QDQ, u8 act, s8 per-channel, MinMax)",
    "int8-ort-default": "peer: ORT quantize_static defaults (QDQ, s8/s8 per-tensor, MinMax)",
    "dynamic": "dynamic INT8 (quantize_dynamic)",
    "fp16": "FP16 (convert_fp16)",
    "int8-api": "edgekiln calibrate (api.calibrate, accuracy guard on)",
}
OPSET = 17


@dataclass
class Variant:
    name: str
    path: Path | None
    build_seconds: float
    error: str | None = None
    note: str | None = None
    """What the accuracy guard did (``int8-api`` only)."""
    calibration_data: str | None = None
    """Set when the variant saw other calibration samples than the rows it is compared with."""


@dataclass(frozen=True)
class ApiCalibration:
    """Inputs for ``api.calibrate``: a sample source it splits itself into calibration and held-out parts."""

    source: Path
    calib_size: int
    holdout: int
    description: str
    preprocess: str | None = None


# --- FP32 export ------------------------------------------------------------------------------


def cache_key(*parts: object) -> str:
    """Short hash of everything that determines an exported model, so stale exports are never reused."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


def convert_state_dict(weights: Path, model_class: str, input_spec: str, output: Path, *,
                       model_kwargs: dict | None = None, dynamic_batch: bool = False) -> Path:
    """``edgekiln convert`` of a state dict to verified ONNX, via the public API."""
    from toolchain import api

    api.convert(None, output, weights=weights, model_class=model_class, model_kwargs=model_kwargs,
                inputs=[input_spec], dynamic_batch=dynamic_batch, opset=OPSET)
    return output


# --- variants ---------------------------------------------------------------------------------


class _Reader:
    """ORT's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._iterator = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._iterator, None)

    def rewind(self) -> None:  # part of ORT's protocol; each reader here is used once
        pass


def _edgekiln_int8(model: onnx.ModelProto, feeds: Sequence[Feed]) -> onnx.ModelProto:
    from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantize_static

    config = QuantizeConfig.for_target("x86")
    return quantize_static(model, compute_ranges(model, feeds, config), config)


def _ort_default_int8(source: Path, feeds: Sequence[Feed], output: Path) -> None:
    from onnxruntime.quantization import quantize_static

    from toolchain.quiet import quiet

    with quiet("root", "onnxruntime", "onnxruntime.quantization"):
        # Deliberately no options: this row is what a user gets from ORT out of the box.
        quantize_static(str(source), str(output), _Reader(feeds))


def _dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    from toolchain.passes.quantize import quantize_dynamic

    return quantize_dynamic(model)[0]


def _fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from toolchain.passes.quantize import convert_fp16

    return convert_fp16(model)[0]


def has_api_calibrate() -> bool:
    from toolchain import api

    return callable(getattr(api, "calibrate", None))


def _api_int8(fp32: Path, calibration: ApiCalibration, output: Path) -> str:
    """Run ``api.calibrate`` with its default budget; return what the guard did."""
    from toolchain import api

    output.unlink(missing_ok=True)
    result = api.calibrate(fp32, output, calib=calibration.source, target="x86", calib_size=calibration.calib_size,
                           holdout=calibration.holdout, seed=0, preprocess=calibration.preprocess, no_cache=True)
    return _guard_summary(getattr(result, "guard", None))


def _guard_summary(guard: object) -> str:
    """One line from the guard's report (a new API: read defensively, a model was written either way)."""
    if guard is None:
        return "guard did not run"
    try:
        final, quality = guard.final, guard.final.quality
        drop = quality.drop_points
        if drop is None:
            top1 = ""
        elif quality.accuracy_reference is not None:
            top1 = f", top-1 accuracy {-drop:+.2f} points vs FP32"
        else:
            top1 = f", top-1 disagreement with FP32 {drop:.2f} points"
        return (f"guard passed after {len(guard.attempts)} attempt(s) with {len(final.kept_float)} layer(s) kept "
                f"in float; on its {quality.samples} held-out samples: worst cosine {quality.min_cosine:.4f}{top1}")
    except AttributeError as exc:
        return f"guard passed (its report has changed shape: {exc})"


def _timed(name: str, output: Path, make: Callable[[], str | None]) -> Variant:
    started = time.perf_counter()
    try:
        note = make()
    except Exception as exc:  # a failing or refused variant is a result to report, not a reason to stop
        return Variant(name, None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}".splitlines()[0])
    return Variant(name, output, time.perf_counter() - started, note=note)


def make_variants(fp32: Path, feeds: Sequence[Feed], out_dir: Path,
                  api_calibration: ApiCalibration | None = None) -> dict[str, Variant]:
    """Every variant of ``fp32`` as a file in ``out_dir``; static INT8 ones calibrated on ``feeds``.

    ``int8-api`` is added when ``api_calibration`` is given and ``toolchain.api.calibrate`` exists.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(fp32))

    def save(builder: Callable[[], onnx.ModelProto], path: Path) -> Callable[[], None]:
        return lambda: onnx.save_model(builder(), str(path))

    paths = {name: out_dir / f"{name}.onnx" for name in VARIANTS[1:]}
    makers: dict[str, Callable[[], str | None]] = {
        "int8": save(lambda: _edgekiln_int8(model, feeds), paths["int8"]),
        "int8-ort-default": lambda: _ort_default_int8(fp32, feeds, paths["int8-ort-default"]),
        "dynamic": save(lambda: _dynamic(model), paths["dynamic"]),
        "fp16": save(lambda: _fp16(model), paths["fp16"]),
    }
    if api_calibration is not None and has_api_calibrate():
        makers["int8-api"] = lambda: _api_int8(fp32, api_calibration, paths["int8-api"])
    variants = {"fp32": Variant("fp32", fp32, 0.0)}
    for name, make in makers.items():
        variants[name] = _timed(name, paths[name], make)
    if "int8-api" in variants:  # which samples it saw matters whether it succeeded or refused
        variants["int8-api"].calibration_data = api_calibration.description
    return variants


# --- what ONNX Runtime actually runs -----------------------------------------------------------


@dataclass(frozen=True)
class OptimizedGraph:
    ops: dict[str, int]
    """Op types, most frequent first."""
    weight_types: dict[str, int]
    """Initializer element types (FLOAT, FLOAT16, INT8...) and how many of each."""


def optimized_graph(path: Path, threads: int = 2) -> OptimizedGraph:
    """The graph ORT actually runs, after its own optimisations (fusions, QDQ -> QLinear*, inserted casts).

    This is what shows which ops really run in INT8 (a QDQ file only marks intent: ORT keeps a
    Q/DQ pair around a float op when it has no fused integer kernel for it) and which precision
    an FP16 file really computes in.
    """
    from backends.onnxruntime.runner import session_options
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bench-opt-") as tmp:
        options = session_options(threads)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    ops = Counter(_op_label(node) for node in graph.node)
    types = Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in graph.initializer)
    return OptimizedGraph(dict(ops.most_common()), dict(types.most_common()))


def _op_label(node: onnx.NodeProto) -> str:
    # ORT's blocked-layout (NCHWc) kernels reuse standard op names; mark them so they are not mistaken.
    return f"{node.op_type}(nchwc)" if node.domain == "com.microsoft.nchwc" else node.op_type


_QUANT_PLUMBING = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# NhwcMaxPool (com.microsoft) only has uint8/int8 kernels: ORT uses it for pooling inside an INT8 graph.
_INTEGER_OPS = ("QLinear", "QGemm", "Integer", "QAttention", "DynamicQuantizeMatMul", "NhwcMaxPool")
_SHAPE_OPS = {"Reshape", "Flatten", "Shape", "Gather", "Unsqueeze", "Concat", "Squeeze", "Identity", "Transpose",
              "ReorderInput", "ReorderOutput", "Cast"}


def _base_op(label: str) -> str:
    return label.split("(")[0]


def float_compute_ops(counts: dict[str, int]) -> dict[str, int]:
    """The compute ops that still run in float: not integer kernels, not Q/DQ, not layout/shape plumbing."""
    return {op: n for op, n in counts.items()
            if _base_op(op) not in _QUANT_PLUMBING | _SHAPE_OPS and not any(tag in op for tag in _INTEGER_OPS)}


def integer_ops(counts: dict[str, int]) -> dict[str, int]:
    return {op: n for op, n in counts.items() if any(tag in op for tag in _INTEGER_OPS)}


def quant_param_bytes(path: Path) -> int:
    """Bytes of scales and zero points stored in the file (per-channel quantization stores one per channel)."""
    model = onnx.load(str(path), load_external_data=False)
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer
               if t.name.endswith(("_scale", "_zero_point")))
