"""FP32 export (through ``toolchain.api.convert``) and the precision variants benchmarked against it.

Variants, in table order:

* ``fp32``: the verified export.
* ``int8``: edgekiln static INT8 (``compute_ranges`` + ``quantize_static`` with
  ``QuantizeConfig.for_target("x86")``: QDQ, uint8 activations, int8 per-channel weights, MinMax).
* ``int8-ort-default``: the peer baseline, ``onnxruntime.quantization.quantize_static`` with its
  default settings (QDQ, int8 activations and weights, per-tensor, MinMax) on the same feeds.
* ``dynamic``: ``quantize_dynamic`` (int8 weights, activations quantized at run time).
* ``fp16``: ``convert_fp16`` (float32 kept at the inputs and outputs).
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

VARIANTS = ("fp32", "int8", "int8-ort-default", "dynamic", "fp16")
LABELS = {
    "fp32": "FP32",
    "int8": "edgekiln INT8 (QDQ, u8 act, s8 per-channel, MinMax)",
    "int8-ort-default": "peer: ORT quantize_static defaults (QDQ, s8/s8 per-tensor, MinMax)",
    "dynamic": "dynamic INT8 (quantize_dynamic)",
    "fp16": "FP16 (convert_fp16)",
}


@dataclass
class Variant:
    name: str
    path: Path | None
    build_seconds: float
    error: str | None = None


# --- FP32 export ------------------------------------------------------------------------------


def cache_key(*parts: object) -> str:
    """Short hash of everything that determines an exported model, so stale exports are never reused."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


def convert_state_dict(weights: Path, model_class: str, input_spec: str, output: Path, *,
                       model_kwargs: dict | None = None, dynamic_batch: bool = False) -> Path:
    """``edgekiln convert`` of a state dict to verified ONNX (opset 17), via the public API."""
    from toolchain import api

    api.convert(None, output, weights=weights, model_class=model_class, model_kwargs=model_kwargs,
                inputs=[input_spec], dynamic_batch=dynamic_batch, opset=17)
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


def _timed(name: str, output: Path, make: Callable[[], None]) -> Variant:
    started = time.perf_counter()
    try:
        make()
    except Exception as exc:  # a failing variant is a result to report, not a reason to stop the run
        return Variant(name, None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}".splitlines()[0])
    return Variant(name, output, time.perf_counter() - started)


def make_variants(fp32: Path, feeds: Sequence[Feed], out_dir: Path) -> dict[str, Variant]:
    """Every variant of ``fp32`` as a file in ``out_dir``; static INT8 ones calibrated on ``feeds``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(fp32))

    def save(builder: Callable[[], onnx.ModelProto], path: Path) -> Callable[[], None]:
        return lambda: onnx.save_model(builder(), str(path))

    paths = {name: out_dir / f"{name}.onnx" for name in VARIANTS[1:]}
    makers: dict[str, Callable[[], None]] = {
        "int8": save(lambda: _edgekiln_int8(model, feeds), paths["int8"]),
        "int8-ort-default": lambda: _ort_default_int8(fp32, feeds, paths["int8-ort-default"]),
        "dynamic": save(lambda: _dynamic(model), paths["dynamic"]),
        "fp16": save(lambda: _fp16(model), paths["fp16"]),
    }
    variants = {"fp32": Variant("fp32", fp32, 0.0)}
    for name, make in makers.items():
        variants[name] = _timed(name, paths[name], make)
    return variants


# --- what ONNX Runtime actually runs -----------------------------------------------------------


def optimized_op_counts(path: Path, threads: int = 2) -> dict[str, int]:
    """Op types of the graph after ORT's own optimisations (fusions, QDQ -> QLinear*), most frequent first.

    This is what shows which ops really run in INT8: a QDQ file only marks intent, and ORT
    leaves a Q/DQ pair in float when it has no fused integer kernel for the op between them.
    """
    from backends.onnxruntime.runner import session_options
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bench-opt-") as tmp:
        options = session_options(threads)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    counts = Counter(_op_label(node) for node in graph.node)
    return dict(counts.most_common())


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
