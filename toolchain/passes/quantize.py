"""INT8 and FP16 passes on ONNX models, with ONNX Runtime's quantization tools underneath.

Static INT8 is split in two steps so the expensive part runs once:
``compute_ranges`` runs ORT's calibrator (MinMax, Entropy or Percentile) over the
calibration feeds and returns framework-neutral ``ActivationRanges``;
``quantize_static`` turns a model plus ranges into a QDQ model (ORT's
``quantize_static`` fed through its calibration-cache file). The accuracy guard
re-quantizes with different fallback layers from the same ranges.

Why not plain ``quantize_static(..., calibrate_method=Entropy)``: it builds the
entropy calibrator with 128 histogram bins, where the KL search degenerates to
roughly min/max. ``compute_ranges`` builds the calibrator itself with a real
histogram (2048 bins by default).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field

from calibration.ranges import ActivationRanges
from toolchain.errors import ConversionError, UsageError, first_line, whole_message
from toolchain.frontends.base import Feed
from toolchain.passes.base import GraphStats, PassConfig, PassReport
from toolchain.quiet import quiet
from toolchain.targets import Target, get_target

_QUANT_LOGGERS = ("root", "onnxruntime", "onnxruntime.quantization")
# Ops worth quantizing on every backend edgekiln targets; elementwise ops stay float unless fused.
DEFAULT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "MaxPool",
                    "AveragePool", "GlobalAveragePool", "Concat", "Reshape", "Flatten", "Transpose", "Sigmoid",
                    "Resize", "Softmax")


class QuantizeConfig(PassConfig):
    """Static INT8 quantization (QDQ format)."""

    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How activation ranges are measured on the calibration images.")
    per_channel: bool = Field(True, description="One weight scale per output channel (more accurate, same speed).")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="Activation type: uint8 is fastest with ONNX Runtime on x86 (VNNI); TensorRT wants int8.")
    activation_symmetric: bool = Field(False, description="Symmetric activation ranges (zero point 0), as TensorRT needs.")
    weight_type: Literal["int8", "uint8"] = Field("int8", description="Weight type.")
    weight_symmetric: bool = Field(True, description="Symmetric weight ranges.")
    histogram_bins: int = Field(2048, ge=128, le=65536, description="Histogram bins for entropy/percentile.")
    percentile: float = Field(99.999, gt=90.0, le=100.0, description="Percentile of |activation| kept by 'percentile'.")
    op_types: tuple[str, ...] = Field(DEFAULT_OP_TYPES, description="Operator types to quantize.")
    nodes_to_exclude: tuple[str, ...] = Field((), description="Node names kept in float.")
    nodes_to_quantize: tuple[str, ...] = Field((), description="Only these nodes (empty: all of op_types).")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI where 8-bit can overflow.")
    depthwise_full_range: bool = Field(
        False, description="With reduce_range: depthwise convolutions keep 8-bit weights (ONNX Runtime's depthwise "
                           "kernels widen to 32 bits before adding, so they do not saturate).")
    # The post-training passes below are opt-in until they beat plain MinMax on every measured model and
    # backend (bench/ptq.md): on the TFLite path and some outlier models they made INT8 worse.
    equalize: bool = Field(
        False, description="Cross-layer equalization with bias absorption before calibration (exact in FP32; "
                          "Conv pairs joined by ReLU or nothing; ReLU6 pairs are skipped).")
    range_search: Literal["mse", "off"] = Field(
        "off", description="Narrow each activation range to its lowest-MSE quantization range on the calibration "
                           "samples ('off': the method's ranges as measured).")
    weight_rounding: Literal["nearest", "learned"] = Field(
        "nearest", description="'learned': round each weight up or down to minimise its layer's output error on "
                               "the calibration samples (AdaRound's objective, GPTQ's solver); for hard cases, "
                               "costs a pass over the calibration samples and a few seconds per layer.")
    bias_correction: bool = Field(
        False, description="Shift each INT8 layer's bias by its mean output error per channel on the calibration "
                          "samples (NNCF-style fast bias correction).")
    guard_runtime: Literal["host", "reference"] = Field(
        "host", description="How the accuracy guard and verification run the INT8 model: 'host' with this "
                            "machine's ONNX Runtime INT8 kernels (the x86 target is this machine), 'reference' "
                            "with exact integer arithmetic (Q/DQ evaluated in float, no kernel fusion), as "
                            "TensorRT or another CPU computes it.")

    @classmethod
    def for_target(cls, target: str | Target | None, **overrides: object) -> "QuantizeConfig":
        """The target's INT8 defaults (``Target.int8``: TensorRT wants symmetric int8 activations), or for a
        CPU target those of its ISA (uint8 activations, 7-bit weights without VNNI); then ``overrides``.
        No target means ONNX Runtime on this machine (``x86``). A ``Target`` may be given instead of a name
        (a plugin's, which the built-in table does not know)."""
        profile = _profile(target)
        defaults: dict[str, object] = dict(profile.int8)
        if profile.cpu_isa:
            defaults.update(cpu_scheme(profile.int8_isa() or "other"))
        return cls.from_options(**{**defaults, **overrides})


def _profile(target: str | Target | None) -> Target:
    return target if isinstance(target, Target) else get_target(target or "x86")


# ISA classes whose u8 x s8 products go through a saturating int16 sum in ONNX Runtime (vpmaddubsw).
SATURATING_ISAS = ("x86-avx2", "x86-sse")


def cpu_scheme(isa: str) -> dict[str, object]:
    """``QuantizeConfig`` defaults for an ONNX Runtime CPU of ISA class ``isa``.

    Without VNNI, ONNX Runtime's u8 x s8 GEMM kernels add pairs of products into a saturating int16,
    so full-range int8 weights can overflow. ORT documents two cures: 7-bit weights (``reduce_range``)
    or uint8 weights (u8u8). Measured on EfficientNet-Lite0 with real photos (bench/isa.md): u8u8 keeps
    87% top-1 agreement but runs at 0.2x FP32 (ORT's uint8-weight QLinearConv takes a slow path), 7-bit
    weights everywhere keep 74% at 1.8x; 7-bit weights only where the GEMM kernels saturate, with
    depthwise convolutions (their own kernels, no int16 sums) at 8 bits, keep more at the same speed.
    The guard runs this machine's kernels only when they compute what the target's do; otherwise exact
    integer arithmetic stands in for the target's CPU.
    """
    from toolchain.hostcpu import host_cpu

    if isa in SATURATING_ISAS:  # 7-bit weights are exact on every x86 CPU, so this machine's kernels can judge them
        return {"reduce_range": True, "depthwise_full_range": True, "guard_runtime": "host"}
    host_isa = host_cpu().int8_isa
    faithful_here = host_isa == isa or host_isa not in SATURATING_ISAS
    return {"reduce_range": False, "guard_runtime": "host" if faithful_here else "reference"}


def scheme_note(target: str | None, config: "QuantizeConfig") -> str | None:
    """One line saying which INT8 scheme a CPU target got and why (None for other targets)."""
    from toolchain.hostcpu import host_cpu

    profile = _profile(target)
    if not profile.cpu_isa:
        return None
    isa = profile.int8_isa()
    weights = f"{config.weight_type} weights"
    if config.reduce_range:
        weights = ("7-bit int8 weights (8-bit in depthwise convolutions)" if config.depthwise_full_range
                   else "7-bit int8 weights (reduce_range)")
    made_for = f"this machine's CPU ({host_cpu().model}, {isa})" if profile.cpu_isa == "host" else isa
    note = f"INT8 made for {made_for}: {config.activation_type} activations, {weights}"
    if isa in SATURATING_ISAS:
        note += " (no VNNI there: int8 weights would saturate ONNX Runtime's u8s8 kernels)"
    if config.guard_runtime == "reference":
        note += (f"; checked with exact integer arithmetic, and latencies measured here ({host_cpu().int8_isa}) "
                 f"are not that CPU's")
    return note


class DynamicQuantizeConfig(PassConfig):
    """Dynamic quantization: INT8 weights, activations quantized at run time."""

    per_channel: bool = Field(False, description="One weight scale per output channel.")
    op_types: tuple[str, ...] = Field(("MatMul", "Gemm", "Conv"), description="Operator types to quantize.")


class Fp16Config(PassConfig):
    """FP16 weights and compute."""

    keep_io_types: bool = Field(True, description="Keep float32 inputs and outputs (casts at the edges).")
    op_block_list: tuple[str, ...] = Field((), description="Operator types kept in float32.")


class _FeedReader:
    """ORT's CalibrationDataReader protocol over an iterable of feeds."""

    def __init__(self, feeds: Iterable[Feed]) -> None:
        self._iterator = iter(feeds)
        self.count = 0

    def get_next(self) -> Feed | None:
        feed = next(self._iterator, None)
        if feed is not None:
            self.count += 1
        return feed


_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}


def _save_temp(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    path = folder / name
    onnx.save_model(model, str(path))
    return path


def compute_ranges(model: onnx.ModelProto, feeds: Iterable[Feed], config: QuantizeConfig) -> ActivationRanges:
    """Run ORT's calibrator over ``feeds`` and return every activation's (low, high) range."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    extra = {"symmetric": config.activation_symmetric, "num_bins": config.histogram_bins,
             "percentile": config.percentile}
    if config.method == "minmax":
        extra = {"symmetric": config.activation_symmetric}
    reader = _FeedReader(feeds)
    with tempfile.TemporaryDirectory(prefix="edgekiln-calib-") as tmp, quiet(*_QUANT_LOGGERS):
        source = _save_temp(model, Path(tmp), "model.onnx")
        try:
            calibrator = create_calibrator(source, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=getattr(CalibrationMethod, _METHODS[config.method]),
                                           extra_options=extra)
            calibrator.collect_data(reader)
            data = calibrator.compute_data()
        except Exception as exc:  # ORT raises ValueError/RuntimeError/its own types for bad graphs or data
            raise ConversionError(f"calibration failed: {whole_message(exc)}") from exc
    if reader.count == 0:
        raise UsageError("calibration needs at least one sample; the calibration set is empty")
    ranges = {name: _low_high(value) for name, value in data.data.items()}
    details = {"samples": reader.count, "symmetric": config.activation_symmetric}
    if config.method != "minmax":
        details["histogram_bins"] = config.histogram_bins
    if config.method == "percentile":
        details["percentile"] = config.percentile
    return ActivationRanges(config.method, ranges, details)


def _low_high(value: object) -> tuple[float, float]:
    import numpy as np

    low, high = getattr(value, "range_value", value)
    # ORT stores each bound as a 0-d or 1-element float array depending on the calibrator.
    return float(np.asarray(low).reshape(-1)[0]), float(np.asarray(high).reshape(-1)[0])


def _ort_cache(ranges: ActivationRanges, path: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    import numpy as np

    method = getattr(CalibrationMethod, _METHODS[ranges.method])
    data = {name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for name, (lo, hi) in ranges.ranges.items()}
    save_tensors_data(TensorsData(method, data), path)


def quantize_static(model: onnx.ModelProto, ranges: ActivationRanges, config: QuantizeConfig, *,
                    weight_bits: Literal[8, 4] = 8) -> onnx.ModelProto:
    """A QDQ INT8 model from ``model`` and precomputed activation ``ranges``.

    ``weight_bits=4`` stores the weights as ORT's ``QInt4`` instead of ``config.weight_type``
    (activations keep the config's 8-bit type). Such a model needs opset 21 and runs only on ONNX
    Runtime, which has no int4 kernels: QAT asks for it explicitly, and it is not a ``QuantizeConfig``
    choice that targets and recipes could make.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    if weight_bits not in (8, 4):
        raise UsageError(f"weights are quantized to 8 or 4 bits, not {weight_bits!r}")
    by_rule = [name for name in float_by_rule(model, ranges) if name not in config.nodes_to_exclude]
    if by_rule:
        config = config.model_copy(update={"nodes_to_exclude": tuple(config.nodes_to_exclude) + tuple(by_rule)})
    overrides = {}
    if config.reduce_range and config.depthwise_full_range and weight_bits == 8:
        per_weight = [{"axis": 0, "reduce_range": False}] if config.per_channel else [{"reduce_range": False}]
        overrides = {name: per_weight for name in depthwise_weights(model)}
    weight_type = QuantType.QInt4 if weight_bits == 4 else getattr(QuantType, _TYPES[config.weight_type])
    with tempfile.TemporaryDirectory(prefix="edgekiln-quant-") as tmp, quiet(*_QUANT_LOGGERS):
        cache = Path(tmp) / "ranges.json"
        _ort_cache(ranges, cache)
        out = Path(tmp) / "quantized.onnx"
        try:
            ort_quantize_static(
                _save_temp(model, Path(tmp), "model.onnx"), out, None, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(config.op_types), per_channel=config.per_channel,
                # int4 has no headroom problem, and ORT's "reduced" int4 would be 3-bit
                reduce_range=config.reduce_range and weight_bits == 8,
                activation_type=getattr(QuantType, _TYPES[config.activation_type]), weight_type=weight_type,
                nodes_to_exclude=list(config.nodes_to_exclude),
                nodes_to_quantize=list(config.nodes_to_quantize) or None,
                calibrate_method=getattr(CalibrationMethod, _METHODS[ranges.method]),
                extra_options={"ActivationSymmetric": config.activation_symmetric,
                               "WeightSymmetric": config.weight_symmetric,
                               **({"TensorQuantOverrides": overrides} if overrides else {})},
                calibration_cache_path=cache)
        except Exception as exc:  # ORT's quantizer raises many exception types
            what = "4-bit quantization" if weight_bits == 4 else "static quantization"
            raise ConversionError(f"{what} failed: {first_line(exc)}") from exc
        return onnx.load(str(out))


# A Concat whose inputs' ranges differ more than this keeps float: one 8-bit scale over both would
# leave the small one a few levels (a YOLO head joins boxes in pixels, 0..640, with scores in 0..1).
MIXED_SCALE_RATIO = 16.0


def mixed_scale_concats(model: onnx.ModelProto, ranges: ActivationRanges) -> list[str]:
    """Names of Concat nodes whose inputs span ranges more than ``MIXED_SCALE_RATIO`` apart."""
    found = []
    for node in model.graph.node:
        if node.op_type != "Concat":
            continue
        widths = [hi - lo for lo, hi in (ranges.ranges.get(name, (0.0, 0.0)) for name in node.input)]
        widths = [w for w in widths if w > 0]
        if len(widths) >= 2 and max(widths) > MIXED_SCALE_RATIO * min(widths):
            found.append(node.name)
    return found


def float_by_rule(model: onnx.ModelProto, ranges: ActivationRanges) -> list[str]:
    """Nodes every static INT8 model keeps float: mixed-scale Concats and the post-processing tail."""
    return list(dict.fromkeys([*mixed_scale_concats(model, ranges), *postprocessing_tail(model)]))


def depthwise_weights(model: onnx.ModelProto) -> list[str]:
    """Weight initializers of depthwise convolutions (one input channel per group)."""
    weights = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if weight is not None and group > 1 and len(weight.dims) >= 2 and weight.dims[1] == 1:
            found.append(weight.name)
    return found


def postprocessing_tail(model: onnx.ModelProto) -> list[str]:
    """Nodes after the last weighted layer on every path to the outputs (decoding, NMS inputs, softmax).

    They keep float: they are cheap, and they are where scales mix (anchor offsets, strides, scores),
    which is why NNCF and Ultralytics leave a detector's post-processing unquantized too.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_weighted: dict[str, bool] = {}
    for node in reversed(model.graph.node):  # topological order: consumers are seen first
        feeds_weighted[node.name] = any(
            c.op_type in WEIGHTED_OP_TYPES or feeds_weighted.get(c.name, False)
            for output in node.output for c in consumers.get(output, []))
    weighted = {n.name for n in quantizable_nodes(model)}
    if not weighted:
        return []
    return [n.name for n in model.graph.node
            if n.name not in weighted and n.op_type not in WEIGHTED_OP_TYPES and not feeds_weighted[n.name]]


# Per-channel DequantizeLinear (its axis attribute) exists from opset 13 on.
PER_CHANNEL_OPSET = 13


def prepare_for_quantization(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A model the quantizer can work on: weights as initializers (exporters such as paddle2onnx leave
    them in Constant nodes, where no quantizer sees them), BatchNorm folded, opset at least 13 (older
    models get per-channel DequantizeLinear nodes their opset does not have, which no runtime loads).
    Returns the model unchanged (the same object) when nothing was needed; the caller checks the numbers
    of a changed one."""
    from toolchain.passes import simplify

    notes: list[str] = []
    result = model
    if any(n.op_type in ("Constant", "BatchNormalization") for n in model.graph.node):
        result, _report = simplify.run(result)
        notes.append("weights moved from Constant nodes to initializers and BatchNorm folded (onnxsim) so "
                     "that every layer can be quantized")
    opset = next((o.version for o in result.opset_import if o.domain in ("", "ai.onnx")), PER_CHANNEL_OPSET)
    if opset < PER_CHANNEL_OPSET:
        try:
            result = onnx.version_converter.convert_version(result, PER_CHANNEL_OPSET)
        except Exception as exc:  # the converter raises plain RuntimeErrors for ops it cannot move
            raise ConversionError(f"the model's opset {opset} is older than the {PER_CHANNEL_OPSET} per-channel "
                                  f"INT8 needs, and upgrading it failed: {first_line(exc)}",
                                  hint="Export the model again at opset 13 or newer, or use --per-tensor.") from exc
        notes.append(f"opset upgraded from {opset} to {PER_CHANNEL_OPSET} (per-channel INT8 needs it)")
    return result, notes


def quantize_dynamic(model: onnx.ModelProto, config: DynamicQuantizeConfig | None = None) -> tuple[onnx.ModelProto, PassReport]:
    """INT8 weights with run-time activation quantization (no calibration data needed)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    config = config or DynamicQuantizeConfig()
    with tempfile.TemporaryDirectory(prefix="edgekiln-dyn-") as tmp, quiet(*_QUANT_LOGGERS):
        out = Path(tmp) / "quantized.onnx"
        try:
            ort_quantize_dynamic(_save_temp(model, Path(tmp), "model.onnx"), out,
                                 op_types_to_quantize=list(config.op_types), per_channel=config.per_channel,
                                 weight_type=QuantType.QInt8)
        except Exception as exc:
            raise ConversionError(f"dynamic quantization failed: {first_line(exc)}") from exc
        result = onnx.load(str(out))
    return result, PassReport("dynamic-int8", GraphStats.of(model), GraphStats.of(result),
                              {"config": json.loads(config.model_dump_json())})


def convert_fp16(model: onnx.ModelProto, config: Fp16Config | None = None) -> tuple[onnx.ModelProto, PassReport]:
    """FP16 weights and compute (ORT's converter), float32 at the model's edges by default."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    config = config or Fp16Config()
    source = onnx.ModelProto()
    source.CopyFrom(model)
    with quiet(*_QUANT_LOGGERS):
        try:
            result = convert_float_to_float16(source, keep_io_types=config.keep_io_types,
                                              op_block_list=list(config.op_block_list) or None)
            # The converter appends its input Casts at the end of the node list; ORT runs that,
            # but the ONNX checker (and other runtimes) require topological order.
            OnnxModel(result).topological_sort()
        except Exception as exc:
            raise ConversionError(f"FP16 conversion failed: {first_line(exc)}") from exc
    return result, PassReport("fp16", GraphStats.of(model), GraphStats.of(result),
                              {"config": json.loads(config.model_dump_json())})




# Nodes whose quantization changes numbers most; the guard ranks and keeps these in float.
WEIGHTED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def quantizable_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Weighted nodes (Conv, Gemm, MatMul...) fed directly by a float weight initializer."""
    float_weights = {t.name for t in model.graph.initializer if t.data_type in _FLOAT_TYPES and len(t.dims) >= 2}
    return [n for n in model.graph.node
            if n.op_type in WEIGHTED_OP_TYPES and any(i in float_weights for i in n.input)]


# Operators only a quantized model contains.
QUANTIZED_OP_TYPES = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                      "MatMulInteger", "DynamicQuantizeLinear")


def is_quantized(model: onnx.ModelProto) -> bool:
    """True for a model that was quantized already (fully or partly: the guard may keep layers float)."""
    return any(node.op_type in QUANTIZED_OP_TYPES for node in model.graph.node)


def int8_weighted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Weighted nodes whose weight reaches them through DequantizeLinear: the INT8 compute of a QDQ model."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n for n in model.graph.node
            if n.op_type in WEIGHTED_OP_TYPES and len(n.input) > 1 and n.input[1] in dequantized]


def has_float_weights(model: onnx.ModelProto) -> bool:
    """False for models already quantized (their weights reach the kernels through DequantizeLinear)."""
    return bool(quantizable_nodes(model))


def named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which every node has a unique name (fallback lists and reports refer to nodes by name)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    seen: set[str] = set()
    for index, node in enumerate(copy.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
    return copy


def fp16_pass(model: onnx.ModelProto, config: object, context: object) -> tuple[onnx.ModelProto, PassReport]:
    """The pass protocol (``toolchain.passes.registry``) for ``convert_fp16``."""
    return convert_fp16(model)


def dynamic_int8_pass(model: onnx.ModelProto, config: object, context: object) -> tuple[onnx.ModelProto, PassReport]:
    """The pass protocol (``toolchain.passes.registry``) for ``quantize_dynamic``."""
    return quantize_dynamic(model)
