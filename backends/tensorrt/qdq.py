"""QDQ models in the form TensorRT's explicit quantization accepts, and a checker for its rules.

ONNX Runtime's quantizer writes weights as int8 initializers behind a
DequantizeLinear and biases as int32 behind another. TensorRT's ONNX parser
rejects an int32 DequantizeLinear ("only activation types allowed as input to
this layer": onnx-tensorrt#850, onnxruntime#14229) and, before 10.x, documented
float weights with a Q/DQ pair (what ORT's ``AddQDQPairToWeight``/``QuantizeBias=False``
options produce). ``to_tensorrt_qdq`` rewrites to that form. The values are the
dequantized ones, so ONNX Runtime computes the same numbers the accuracy guard measured.

Rules checked (``qdq_problems``), from TensorRT's quantization docs and onnx-tensorrt's
operators.md: int8 only, zero point 0 (symmetric), per-tensor scales for activations,
per-channel scales only on weights and along the output-channel axis, positive finite scales.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"


def output_channel_axis(consumer: onnx.NodeProto, weight_rank: int) -> int | None:
    """Axis of a weight that indexes the consumer's output channels (None: not a weighted op)."""
    if consumer.op_type == "Conv":
        return 0  # KCRS
    if consumer.op_type == "ConvTranspose":
        return 1  # CKRS
    if consumer.op_type == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if consumer.op_type == "MatMul":
        return weight_rank - 1
    return None


def to_tensorrt_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Float weights with a Q/DQ pair and float biases instead of pre-quantized initializers; returns counts."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    inits = {t.name: t for t in graph.initializer}
    counts = {"weights": 0, "biases": 0}
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        source = inits.get(node.input[0]) if node.op_type == _DQ else None
        if source is None:
            new_nodes.append(node)
            continue
        values = _dequantize(node, inits)
        if source.data_type == onnx.TensorProto.INT32:  # a bias: TensorRT quantizes biases itself
            graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
            counts["biases"] += 1
            continue
        float_name = f"{node.input[0]}_float"
        graph.initializer.append(numpy_helper.from_array(values, float_name))
        quantized = f"{node.input[0]}_qdq"
        new_nodes.append(helper.make_node(_Q, [float_name, *node.input[1:]], [quantized], name=f"{node.name}_q",
                                          axis=_axis(node)))
        new_nodes.append(helper.make_node(_DQ, [quantized, *node.input[1:]], list(node.output), name=node.name,
                                          axis=_axis(node)))
        counts["weights"] += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)
    return result, counts


def _dequantize(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    values = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) if len(node.input) > 2 and node.input[2]
            else np.zeros_like(scale))
    if scale.ndim == 1 and scale.size > 1:  # per-channel: broadcast along the node's axis
        shape = [1] * values.ndim
        shape[_axis(node) % values.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((values - zero) * scale).astype(np.float32)  # DequantizeLinear's own formula, in float32


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def qdq_problems(model: onnx.ModelProto) -> list[str]:
    """Every violation of TensorRT's explicit-quantization rules, one sentence each (empty: the model follows them)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems = []
    for node in graph.node:
        if node.op_type not in (_Q, _DQ):
            continue
        problems += _zero_point_problems(node, inits)
        problems += _scale_problems(node, inits, consumers, producers)
        if node.op_type == _DQ and node.input[0] in inits:
            problems.append(f"{node.name}: DequantizeLinear reads initializer '{node.input[0]}' directly "
                            "(TensorRT wants float weights with a QuantizeLinear/DequantizeLinear pair)")
    return problems


def _zero_point_problems(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[str]:
    if len(node.input) < 3 or not node.input[2]:
        return [f"{node.name}: no zero point, which means uint8; TensorRT needs int8 with zero point 0"]
    zero = inits.get(node.input[2])
    if zero is None:
        return [f"{node.name}: zero point '{node.input[2]}' is not a constant"]
    if zero.data_type != onnx.TensorProto.INT8:
        return [f"{node.name}: zero point is {onnx.TensorProto.DataType.Name(zero.data_type)}, TensorRT needs INT8"]
    if np.any(numpy_helper.to_array(zero) != 0):
        return [f"{node.name}: zero point is not 0 (TensorRT quantization is symmetric)"]
    return []


def _scale_problems(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                    consumers: dict[str, list[onnx.NodeProto]], producers: dict[str, onnx.NodeProto]) -> list[str]:
    scale_tensor = inits.get(node.input[1])
    if scale_tensor is None:
        return [f"{node.name}: scale '{node.input[1]}' is not a constant"]
    scale = numpy_helper.to_array(scale_tensor)
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        return [f"{node.name}: scales must be positive and finite"]
    if scale.size == 1:
        return []
    weight = _weight_of(node, inits, producers)
    if weight is None:
        return [f"{node.name}: per-channel scales on an activation; TensorRT allows them on weights only"]
    axis = _axis(node) % len(weight.dims)
    problems = []
    for consumer in _weighted_consumers(node, consumers):
        expected = output_channel_axis(consumer, len(weight.dims))
        if expected is not None and axis != expected:
            problems.append(f"{node.name}: per-channel axis {axis} of weight '{weight.name}' is not the output-channel "
                            f"axis {expected} of {consumer.op_type} '{consumer.name}'")
    if weight.dims[axis] != scale.size:
        problems.append(f"{node.name}: {scale.size} scales for {weight.dims[axis]} channels of '{weight.name}'")
    return problems


def _weight_of(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
               producers: dict[str, onnx.NodeProto]) -> onnx.TensorProto | None:
    """The weight initializer quantized by ``node`` (a Q on it, or the DQ after such a Q), else None."""
    source = node.input[0]
    if node.op_type == _DQ and source in producers and producers[source].op_type == _Q:
        source = producers[source].input[0]
    return inits.get(source)


def _weighted_consumers(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> list[onnx.NodeProto]:
    """The Conv/Gemm/MatMul nodes that read the weight this Q or DQ node belongs to."""
    dq_outputs = node.output if node.op_type == _DQ else [
        o for c in consumers.get(node.output[0], []) if c.op_type == _DQ for o in c.output]
    return [c for out in dq_outputs for c in consumers.get(out, [])]
