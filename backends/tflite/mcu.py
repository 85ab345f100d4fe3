"""TensorFlow Lite Micro: op support, arena estimate, C/C++ bundle and flash/RAM budgets.

TFLite Micro links only the kernels an application registers with a
``MicroMutableOpResolver``, runs every tensor out of one statically sized
arena, and reads the model from a byte array in flash. This module produces
what a firmware project needs for that: the model as an aligned array
(``model_data.cc/.h``, like ``xxd -i``), the input/output shapes and
quantization (``model_config.h``), the op registrations (``model_ops.h``), and
an arena estimate from the tensors' lifetimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.tflite.flatbuffer import TFLiteGraph
from backends.tflite.io_binding import IOBindings
from toolchain.errors import ConversionError, VerificationError

# Builtin op -> MicroMutableOpResolver method, from tflite-micro's micro_mutable_op_resolver.h.
# Declared data: an op missing here has no TFLite Micro kernel as far as edgekiln knows.
TFLM_OPS: dict[str, str] = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax", "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs", "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast", "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv", "ELU": "AddElu",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup", "EQUAL": "AddEqual", "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor", "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod", "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd", "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish", "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D", "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess", "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog", "LOG_SOFTMAX": "AddLogSoftmax", "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot", "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic",
    "MAX_POOL_2D": "AddMaxPool2D", "MAXIMUM": "AddMaximum", "MEAN": "AddMean", "MINIMUM": "AddMinimum",
    "MIRROR_PAD": "AddMirrorPad", "MUL": "AddMul", "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2", "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable", "REDUCE_MAX": "AddReduceMax", "RELU": "AddRelu", "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "ROUND": "AddRound", "RSQRT": "AddRsqrt",
    "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape", "SIN": "AddSin", "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax", "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQRT": "AddSqrt", "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference", "SQUEEZE": "AddSqueeze", "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf", "TANH": "AddTanh", "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv", "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "UNPACK": "AddUnpack", "VAR_HANDLE": "AddVarHandle", "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}

ALIGNMENT = 16
"""TFLM aligns every arena buffer, and the model array, to 16 bytes."""
# Run-time bookkeeping per tensor and per op on a 32-bit MCU (TfLiteEvalTensor, TfLiteNode plus op data),
# and per output channel of a per-channel quantized conv/FC (int32 multiplier and shift).
_BYTES_PER_TENSOR = 16
_BYTES_PER_OP = 64
_BYTES_PER_CHANNEL = 8
_SAFETY = 1.10  # kernels' scratch buffers (e.g. CMSIS-NN im2col) are not in the graph
_PER_CHANNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


@dataclass(frozen=True)
class MicroOps:
    registrations: list[tuple[str, str]]
    """(builtin op, resolver method) in first-use order."""
    unsupported: list[str]


def micro_ops(graph: TFLiteGraph) -> MicroOps:
    registrations, unsupported = [], []
    for op in graph.op_types:
        if op in TFLM_OPS:
            registrations.append((op, TFLM_OPS[op]))
        else:
            unsupported.append(op)
    return MicroOps(registrations, unsupported)


def require_micro_ops(graph: TFLiteGraph) -> MicroOps:
    ops = micro_ops(graph)
    if ops.unsupported:
        raise ConversionError(f"TensorFlow Lite Micro has no kernel for {', '.join(ops.unsupported)} "
                              f"(used by this model)",
                              hint="Change the model to avoid these ops, or target rpi4/rpi5 (full TFLite).")
    return ops


@dataclass(frozen=True)
class ArenaEstimate:
    activations: int
    """Peak bytes of the activation buffers, placed by lifetime as TFLM's greedy planner does."""
    persistent: int
    """Bookkeeping estimate: tensor/op structs and per-channel requantization parameters."""
    total: int
    """What to give ``kTensorArenaSize``: both, plus 10% for kernel scratch, rounded up to 16 bytes."""

    def to_dict(self) -> dict[str, int]:
        return {"activations": self.activations, "persistent": self.persistent, "total": self.total}


def _align(value: int, alignment: int = ALIGNMENT) -> int:
    return -(-value // alignment) * alignment


def _lifetimes(graph: TFLiteGraph) -> dict[int, tuple[int, int]]:
    """Tensor index -> (first op, last op) for every non-constant tensor the graph reads or writes."""
    end = len(graph.operators)
    spans: dict[int, list[int]] = {i: [0, 0] for i in graph.inputs}
    for op in graph.operators:
        for index in (*op.inputs, *op.outputs):
            if index < 0 or graph.tensors[index].is_constant:
                continue
            span = spans.setdefault(index, [op.index, op.index])
            span[0], span[1] = min(span[0], op.index), max(span[1], op.index)
    for index in graph.outputs:
        spans.setdefault(index, [end, end])[1] = end  # outputs are read after the last op
    return {i: (a, b) for i, (a, b) in spans.items()}


def plan_activations(graph: TFLiteGraph) -> int:
    """Peak arena bytes for activations: largest first, each at the lowest offset free during its lifetime."""
    lifetimes = _lifetimes(graph)
    buffers = sorted(((graph.tensors[i].nbytes, i) for i in lifetimes), key=lambda item: (-item[0], item[1]))
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    peak = 0
    for size, index in buffers:
        size = _align(size)
        first, last = lifetimes[index]
        busy = sorted((o, s) for o, s, f, l in placed if not (l < first or last < f))
        offset = 0
        for other_offset, other_size in busy:
            if offset + size <= other_offset:
                break
            offset = max(offset, other_offset + other_size)
        placed.append((offset, size, first, last))
        peak = max(peak, offset + size)
    return peak


def estimate_arena(graph: TFLiteGraph) -> ArenaEstimate:
    activations = plan_activations(graph)
    channels = 0
    for op in graph.operators:
        if op.op in _PER_CHANNEL_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
            weights = graph.tensors[op.inputs[1]]
            channels += max(len(weights.scales), 1)
    persistent = (_BYTES_PER_TENSOR * len(graph.tensors) + _BYTES_PER_OP * len(graph.operators)
                  + _BYTES_PER_CHANNEL * channels)
    return ArenaEstimate(activations, persistent, _align(int((activations + persistent) * _SAFETY)))


@dataclass(frozen=True)
class MicroBudget:
    flash_kb: float | None = None
    ram_kb: float | None = None


def check_budgets(model_bytes: int, arena: ArenaEstimate | None, budget: MicroBudget) -> None:
    """Fail with the measured numbers when the model (flash) or the arena (RAM) exceeds its budget."""
    problems = []
    if budget.flash_kb is not None and model_bytes > budget.flash_kb * 1024:
        problems.append(f"model needs {model_bytes / 1024:.1f} KiB of flash > --flash-kb {budget.flash_kb:g}")
    if budget.ram_kb is not None and arena is not None and arena.total > budget.ram_kb * 1024:
        problems.append(f"tensor arena needs about {arena.total / 1024:.1f} KiB of RAM "
                        f"(activations {arena.activations / 1024:.1f} KiB + bookkeeping "
                        f"{arena.persistent / 1024:.1f} KiB + 10%) > --ram-kb {budget.ram_kb:g}")
    if problems:
        raise VerificationError(f"the TFLite build exceeds its budget: {'; '.join(problems)}",
                                hint="Nothing was written. Use a smaller model or raise the budget; "
                                     "the TFLite Micro runtime's own code and stack are not counted.")


# ---- the C/C++ bundle -----------------------------------------------------------------------

HEADER = "// Generated by edgekiln from {source}; do not edit.\n"


def c_array(data: bytes, per_line: int = 12) -> str:
    lines = [", ".join(f"0x{b:02x}" for b in data[i:i + per_line]) for i in range(0, len(data), per_line)]
    return ",\n    ".join(lines)


def model_data_files(data: bytes, source: str) -> dict[str, str]:
    header = (HEADER.format(source=source) +
              "#ifndef EDGEKILN_MODEL_DATA_H_\n#define EDGEKILN_MODEL_DATA_H_\n\n"
              "// The .tflite flatbuffer, 16-byte aligned as TFLite Micro requires.\n"
              "extern const unsigned char g_model_data[];\n"
              "extern const unsigned int g_model_data_len;\n\n#endif  // EDGEKILN_MODEL_DATA_H_\n")
    source_file = (HEADER.format(source=source) + '#include "model_data.h"\n\n'
                   f"alignas({ALIGNMENT}) const unsigned char g_model_data[] = {{\n    {c_array(data)}\n}};\n"
                   f"const unsigned int g_model_data_len = {len(data)};\n")
    return {"model_data.h": header, "model_data.cc": source_file}


def _tensor_block(prefix: str, tensor, binding, layout_note: str) -> list[str]:
    dims = ", ".join(str(d) for d in tensor.shape)
    scale = tensor.scales[0] if tensor.scales else 0.0
    zero_point = tensor.zero_points[0] if tensor.zero_points else 0
    return [f"// {prefix.lower()} '{binding.name}': {tensor.dtype} [{dims}] (TFLite layout){layout_note}",
            f"constexpr int k{prefix}Rank = {len(tensor.shape)};",
            f"constexpr int k{prefix}Dims[] = {{{dims}}};",
            f"constexpr int k{prefix}Elements = {max(1, _product(tensor.shape))};",
            f"constexpr float k{prefix}Scale = {float(scale)!r}f;",
            f"constexpr int32_t k{prefix}ZeroPoint = {int(zero_point)};", ""]


def _product(shape: tuple[int, ...]) -> int:
    result = 1
    for d in shape:
        result *= max(d, 1)
    return result


def _layout_note(binding) -> str:
    if binding.perm is None:
        return ""
    onnx = "x".join(str(d) for d in binding.shape)
    return f"; the ONNX model's {onnx} tensor transposed by {list(binding.perm)}"


def model_config_file(graph: TFLiteGraph, bindings: IOBindings, arena: ArenaEstimate, source: str,
                      measured: str | None = None) -> str:
    """``measured``: how ``arena.total`` was measured; None when it is the estimate."""
    by_key = _signature_tensors(graph)
    estimate = (f"// Arena estimate: activations {arena.activations} B (planned by lifetime) + bookkeeping "
                f"{arena.persistent} B, plus 10% for kernel scratch.")
    lines = [HEADER.format(source=source).rstrip("\n"), "#ifndef EDGEKILN_MODEL_CONFIG_H_",
             "#define EDGEKILN_MODEL_CONFIG_H_", "", "#include <cstdint>", "", "namespace edgekiln_model {", "",
             f"// Tensor arena: {measured}" if measured else estimate,
             f"constexpr unsigned int kTensorArenaSize = {arena.total};",
             f"constexpr int kNumInputs = {len(bindings.inputs)};",
             f"constexpr int kNumOutputs = {len(bindings.outputs)};", "",
             "// real_value = scale * (quantized_value - zero_point)"]
    for i, binding in enumerate(bindings.inputs):
        tensor = graph.tensors[by_key["inputs"].get(binding.key, graph.inputs[i])]
        lines += _tensor_block(f"Input{i}", tensor, binding, _layout_note(binding))
    for i, binding in enumerate(bindings.outputs):
        tensor = graph.tensors[by_key["outputs"].get(binding.key, graph.outputs[i])]
        lines += _tensor_block(f"Output{i}", tensor, binding, _layout_note(binding))
    lines += ["}  // namespace edgekiln_model", "", "#endif  // EDGEKILN_MODEL_CONFIG_H_", ""]
    return "\n".join(lines)


def _signature_tensors(graph: TFLiteGraph) -> dict[str, dict[str, int]]:
    signature = next(iter(graph.signatures.values()), None)
    return signature if signature else {"inputs": {}, "outputs": {}}


def model_ops_file(ops: MicroOps, source: str) -> str:
    calls = "\n".join(f"  if ((status = resolver.{method}()) != kTfLiteOk) return status;  // {op}"
                      for op, method in ops.registrations)
    return (HEADER.format(source=source) +
            "#ifndef EDGEKILN_MODEL_OPS_H_\n#define EDGEKILN_MODEL_OPS_H_\n\n"
            '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n\n'
            "namespace edgekiln_model {\n\n"
            f"constexpr unsigned int kOpCount = {len(ops.registrations)};\n"
            "using OpResolver = tflite::MicroMutableOpResolver<kOpCount>;\n\n"
            "// Registers exactly the kernels this model uses.\n"
            "inline TfLiteStatus RegisterOps(OpResolver& resolver) {\n"
            "  TfLiteStatus status = kTfLiteOk;\n"
            f"{calls}\n"
            "  return status;\n}\n\n}  // namespace edgekiln_model\n\n#endif  // EDGEKILN_MODEL_OPS_H_\n")


def write_bundle(out_dir: Path, data: bytes, graph: TFLiteGraph, bindings: IOBindings, ops: MicroOps,
                 arena: ArenaEstimate, source: str) -> list[str]:
    """Write model_data.cc/.h, model_config.h and model_ops.h; returns the file names."""
    files = model_data_files(data, source)
    files["model_config.h"] = model_config_file(graph, bindings, arena, source)
    files["model_ops.h"] = model_ops_file(ops, source)
    for name, text in files.items():
        (out_dir / name).write_text(text)
    return sorted(files)


def bundle_details(data: bytes, ops: MicroOps, arena: ArenaEstimate, files: list[str]) -> dict[str, Any]:
    return {"flash_bytes": len(data), "arena": arena.to_dict(), "ops": [op for op, _ in ops.registrations],
            "resolver_calls": [method for _, method in ops.registrations], "files": files}
