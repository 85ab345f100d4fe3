"""ONNX prepared for a device's TensorRT: ops its parser knows, at an opset it accepts.

Two declared tables, both from onnx-tensorrt's own documents (``docs/Changelog.md``
and ``docs/operators.md``): operators a release first parses, and operators no
release parses (marked "N" from 8.x through 10.15). They are deliberately small:
only entries stated there. An op not listed may still fail on the device; the
device's parser has the last word, and build_engine.sh shows its message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from toolchain.opset import convert_down
from toolchain.errors import ConversionError
from toolchain.onnx_io import check_model, infer_shapes, opset_version

FIRST_PARSED_IN: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("Einsum", "IsNaN", "GatherND", "Scatter", "ScatterElements", "ScatterND", "Sign", "Round"),
                    (8, 2)),
    **dict.fromkeys(("Shrink", "Xor"), (8, 4)),
    **dict.fromkeys(("RandomNormal", "RandomUniform", "MeanVarianceNormalization", "RoiAlign", "Mod", "Trilu",
                     "GridSample", "NonZero", "NonMaxSuppression"), (8, 5)),
    **dict.fromkeys(("GroupNormalization", "LayerNormalization", "IsInf"), (8, 6)),
    "Hardmax": (9, 2),
    "DeformConv": (10, 1),
    **dict.fromkeys(("BlackmanWindow", "HammingWindow", "HannWindow"), (10, 4)),
    "STFT": (10, 5),
}
"""Op -> first TensorRT release whose ONNX parser imports it (onnx-tensorrt changelog)."""

NEVER_PARSED: frozenset[str] = frozenset((
    "BitShift", "Compress", "ConcatFromSequence", "ConvInteger", "Det", "DynamicQuantizeLinear", "MatMulInteger",
    "MaxRoiPool", "MaxUnpool", "Multinomial", "NegativeLogLikelihoodLoss", "QLinearConv", "QLinearMatMul",
    "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
    "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringNormalizer", "TfIdfVectorizer", "Unique",
))
"""Ops marked unsupported in every onnx-tensorrt operators.md from 8.x to 10.15 (ONNX Runtime's integer ops among them)."""

_STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class PreparedModel:
    model: onnx.ModelProto
    opset_from: int
    opset_to: int
    notes: list[str] = field(default_factory=list)


def unparsable_ops(model: onnx.ModelProto, version: tuple[int, int, int]) -> list[str]:
    """Why some nodes would not parse on TensorRT ``version``: one sentence per op type, sorted."""
    problems: dict[str, str] = {}
    for node in _all_nodes(model.graph):
        op = node.op_type
        if node.domain not in _STANDARD_DOMAINS:
            problems[op] = f"{op} (domain '{node.domain}') is not a standard ONNX op; TensorRT needs a plugin for it"
        elif op in NEVER_PARSED:
            problems[op] = f"{op} is not supported by TensorRT's ONNX parser"
        elif op in FIRST_PARSED_IN and version[:2] < FIRST_PARSED_IN[op]:
            since = ".".join(map(str, FIRST_PARSED_IN[op]))
            problems[op] = f"{op} needs TensorRT {since} or newer"
    return [problems[op] for op in sorted(problems)]


def prepare_for_device(model: onnx.ModelProto, version: tuple[int, int, int], max_opset: int,
                       target: str) -> PreparedModel:
    """Check the ops and convert the opset down to ``max_opset`` when needed; the input is not modified."""
    problems = unparsable_ops(model, version)
    if problems:
        trt = ".".join(map(str, version))
        raise ConversionError(f"{target} (TensorRT {trt}) cannot parse this model: {'; '.join(problems)}",
                              hint="Replace those ops in the source model, or choose a target with a newer TensorRT.")
    source = opset_version(model)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    notes = []
    if source > max_opset:
        del prepared.graph.value_info[:]  # re-inferred below; stale entries could contradict converted ops
        prepared = _convert(prepared, source, max_opset, target)
        notes.append(f"opset converted from {source} to {max_opset}, the newest {target}'s TensorRT parses")
        check_model(prepared)
    return PreparedModel(infer_shapes(prepared), source, opset_version(prepared), notes)


def _convert(model: onnx.ModelProto, source: int, opset: int, target: str) -> onnx.ModelProto:
    try:
        return convert_down(model, source, opset)
    except ConversionError as exc:
        raise ConversionError(f"{target}: {exc.message}",
                              hint=f"Export the model at opset {opset} or lower (edgekiln convert --opset).") from exc


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:  # If/Loop/Scan bodies are parsed too
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)
