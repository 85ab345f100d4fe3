"""Opset down-conversion that also covers ops onnx's version converter has no down-adapter for.

``onnx.version_converter`` cannot take even a plain CNN from opset 17 to 13: it has
no down-adapter for Relu/Add/Mul/Sub/Div 14, Reshape 14, BatchNormalization 15,
Pow 15, Shape 15 or Identity 16 (checked with onnx 1.23). Most of those version
bumps only added tensor types or an attribute whose default keeps the old
behaviour. So each opset step is tried with the converter first and, where it
fails, by relabelling: allowed only when every op that changed at that step is
in ``STEP_RULES`` and its check passes for the node (pattern -> check -> rewrite).
The result then has to pass the ONNX checker with full type inference, and the
caller compares it with the original in ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import onnx
from onnx import defs

from toolchain.errors import ConversionError, first_line

Rule = Callable[[onnx.NodeProto], str | None]
"""Returns why the node cannot be relabelled to the previous opset (None: it can; the rule may drop attributes)."""


def types_only(node: onnx.NodeProto) -> str | None:
    """The new version only added tensor types; the checker rejects the model if the node uses one of them."""
    return None


def attribute_default(name: str, default: object) -> Rule:
    """A new attribute whose default is the old behaviour: fine when absent or set to the default (then dropped)."""
    def rule(node: onnx.NodeProto) -> str | None:
        for index, attribute in enumerate(node.attribute):
            if attribute.name == name:
                if onnx.helper.get_attribute_value(attribute) != default:
                    return f"{node.op_type} '{node.name}' sets {name}, which older opsets do not have"
                del node.attribute[index]
                return None
        return None
    return rule


def no_attribute(*names: str) -> Rule:
    def rule(node: onnx.NodeProto) -> str | None:
        used = [a.name for a in node.attribute if a.name in names]
        return f"{node.op_type} '{node.name}' uses {', '.join(used)}, which older opsets do not have" if used else None
    return rule


def no_input(index: int) -> Rule:
    def rule(node: onnx.NodeProto) -> str | None:
        if len(node.input) > index and node.input[index]:
            return f"{node.op_type} '{node.name}' uses input {index}, which older opsets do not have"
        return None
    return rule


def attribute_not(name: str, value: str) -> Rule:
    def rule(node: onnx.NodeProto) -> str | None:
        for attribute in node.attribute:
            if attribute.name == name and onnx.helper.get_attribute_value(attribute) == value.encode():
                return f"{node.op_type} '{node.name}' uses {name}={value}, which older opsets do not have"
        return None
    return rule


def inference_batchnorm(node: onnx.NodeProto) -> str | None:
    """BatchNormalization 14 added training mode; inference (one output, training_mode 0) is unchanged."""
    if len([o for o in node.output if o]) != 1:
        return f"BatchNormalization '{node.name}' outputs running statistics (training mode)"
    return attribute_default("training_mode", 0)(node)


STEP_RULES: dict[str, dict[int, Rule]] = {
    **{op: {14: types_only} for op in ("Relu", "Add", "Sub", "Mul", "Div", "CumSum")},
    "Reshape": {14: attribute_default("allowzero", 0), 19: types_only, 21: types_only},
    "BatchNormalization": {14: inference_batchnorm, 15: types_only},
    # Opset 14 added 'layout' (batch-first tensors) to the recurrent ops; the default is the old layout.
    **{op: {14: attribute_default("layout", 0)} for op in ("LSTM", "GRU", "RNN")},
    "Pow": {15: types_only},
    "Shape": {15: no_attribute("start", "end"), 19: types_only, 21: types_only},
    "Identity": {14: types_only, 16: types_only, 19: types_only, 21: types_only},
    **{op: {16: types_only} for op in ("LeakyRelu", "PRelu", "Where", "GreaterOrEqual", "LessOrEqual")},
    "Split": {18: no_attribute("num_outputs")},
    "Pad": {18: no_input(3), 19: attribute_not("mode", "wrap"), 21: types_only},
    "Resize": {18: no_attribute("antialias", "axes", "keep_aspect_ratio_policy"),
               19: attribute_not("coordinate_transformation_mode", "half_pixel_symmetric")},
    "Cast": {19: types_only, 21: types_only},
    "Constant": {19: types_only, 21: types_only},
    **{op: {21: types_only} for op in ("Flatten", "Transpose", "Squeeze", "Unsqueeze", "Size")},
    "QuantizeLinear": {19: types_only, 21: no_attribute("block_size", "output_dtype")},
    "DequantizeLinear": {19: types_only, 21: no_attribute("block_size")},
}
"""op -> {version that changed it: rule that decides whether the node means the same one opset earlier}."""


def convert_down(model: onnx.ModelProto, source: int, target: int) -> onnx.ModelProto:
    """``model`` from opset ``source`` down to ``target``, one opset at a time."""
    current = model
    for opset in range(source, target, -1):
        try:
            current = onnx.version_converter.convert_version(current, opset - 1)
        except Exception as exc:  # no adapter for some op at this step: try the declared relabel rules
            try:
                current = _relabel(current, opset, first_line(exc))
            except ConversionError as step:
                raise ConversionError(f"cannot convert the model from opset {source} to {target}, "
                                      f"stopped at {step.message}") from exc
    try:
        onnx.checker.check_model(current, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"the model converted to opset {target} is not valid: {first_line(exc)}") from exc
    return current


def _relabel(model: onnx.ModelProto, opset: int, converter_error: str) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    problems = [p for node in _nodes(result.graph) if (p := _step_problem(node, opset))]
    if problems:
        raise ConversionError(f"cannot convert from opset {opset} to {opset - 1}: {'; '.join(sorted(set(problems)))} "
                              f"(onnx's converter: {converter_error.split(': ')[-1]})")
    for entry in result.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset - 1
    return result


def _step_problem(node: onnx.NodeProto, opset: int) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    newer = defs.get_schema(node.op_type, opset).since_version
    if newer != opset:
        return None  # unchanged at this step
    try:
        defs.get_schema(node.op_type, opset - 1)
    except defs.SchemaError:
        return f"{node.op_type} does not exist before opset {opset}"
    rule = STEP_RULES.get(node.op_type, {}).get(opset)
    if rule is None:
        return f"{node.op_type} changed in opset {opset} in a way edgekiln cannot convert"
    return rule(node)


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _nodes(sub)
