"""Empirical bias correction: shift each INT8 layer's bias by its mean output error per channel.

Quantizing a layer's weights (and its input) moves the mean of its outputs: rounding nine weights of a
depthwise filter does not average out, and the shift passes through every later layer (Nagel et al.,
"Data-Free Quantization", ICCV 2019, section 4.2). Like NNCF's "fast bias correction", each layer is
corrected on its own: on the calibration feeds, the FP32 layer's input is quantized as the INT8 model
quantizes it, run through the layer with the INT8 model's dequantized weights, and the mean difference
to the FP32 layer's output, per output channel, is subtracted from the float bias. The corrected float
model is then quantized again with the same ranges; its biases are what the INT8 kernels add.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from toolchain.frontends.base import Feed
from toolchain.passes.tensor_stats import stream

_CORRECTED_OPS = ("Conv", "Gemm")


@dataclass
class BiasCorrectionReport:
    layers: int = 0
    """Layers whose bias was shifted."""
    relative_error_before: float = 0.0
    """Mean over layers of |mean output error per channel| / output standard deviation (before correction)."""
    largest: list[tuple[str, float]] = field(default_factory=list)
    """(layer, relative mean error) of the layers with the largest shifts."""

    def summary(self) -> str:
        worst = ", ".join(f"{name} ({value:.3f})" for name, value in self.largest[:3])
        return (f"bias correction: {self.layers} INT8 layers' biases shifted by their mean output error per channel "
                f"(mean |error| / output std {self.relative_error_before:.4f} before; largest: {worst})")


@dataclass
class _Layer:
    node: onnx.NodeProto
    weight: np.ndarray
    """The INT8 model's dequantized weight."""
    input_quant: tuple[float, int, int, int] | None
    """(scale, zero point, qmin, qmax) of the layer's input in the INT8 model; None when it stays float."""
    bias_name: str
    axis: int


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _dequantized(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    if any(name not in inits for name in dq.input[:2]):
        return None
    values = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2]
            else np.zeros_like(scale))
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((values - zero) * scale).astype(np.float32)


def _activation_quant(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[float, int, int, int] | None:
    if len(dq.input) < 2 or dq.input[1] not in inits:
        return None
    scale = numpy_helper.to_array(inits[dq.input[1]])
    if scale.size != 1:
        return None
    zero_tensor = inits.get(dq.input[2]) if len(dq.input) > 2 else None
    zero = numpy_helper.to_array(zero_tensor) if zero_tensor is not None else np.zeros((), np.uint8)
    info = np.iinfo(zero.dtype)
    return float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0]), int(info.min), int(info.max)


def int8_layers(model: onnx.ModelProto, quantized: onnx.ModelProto) -> list[_Layer]:
    """Layers of ``model`` with a float bias whose namesake in ``quantized`` has a dequantized INT8 weight."""
    float_inits = {t.name: t for t in model.graph.initializer}
    q_inits = {t.name: t for t in quantized.graph.initializer}
    q_producers = _producers(quantized)
    q_nodes = {n.name: n for n in quantized.graph.node}
    layers = []
    for node in model.graph.node:
        if node.op_type not in _CORRECTED_OPS or len(node.input) < 3 or node.input[2] not in float_inits:
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        twin = q_nodes.get(node.name)
        weight_dq = q_producers.get(twin.input[1]) if twin is not None and len(twin.input) > 1 else None
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear":
            continue
        weight = _dequantized(weight_dq, q_inits)
        if weight is None:
            continue
        input_dq = q_producers.get(twin.input[0])
        input_quant = (_activation_quant(input_dq, q_inits)
                       if input_dq is not None and input_dq.op_type == "DequantizeLinear" else None)
        axis = 1 if node.op_type == "Conv" else -1
        layers.append(_Layer(node, weight, input_quant, node.input[2], axis))
    return layers


def _twin_model(model: onnx.ModelProto, layers: list[_Layer]) -> onnx.ModelProto:
    """One float model computing every layer from its own input with the INT8 model's weights."""
    nodes, inputs, outputs, inits = [], [], [], []
    float_inits = {t.name: t for t in model.graph.initializer}
    for index, layer in enumerate(layers):
        source = layer.node
        x, y, w = f"bc_in_{index}", f"bc_out_{index}", f"bc_w_{index}"
        inputs.append(onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None))
        outputs.append(onnx.ValueInfoProto(name=y))
        inits.append(numpy_helper.from_array(layer.weight, w))
        bias = onnx.TensorProto()
        bias.CopyFrom(float_inits[layer.bias_name])
        bias.name = f"bc_b_{index}"
        inits.append(bias)
        node = onnx.helper.make_node(source.op_type, [x, w, bias.name], [y], name=f"bc_{index}")
        node.attribute.extend(source.attribute)
        nodes.append(node)
    graph = onnx.helper.make_graph(nodes, "bias-correction-twin", inputs, outputs, inits)
    twin = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    twin.ir_version = model.ir_version
    return twin


def _fake_quant(value: np.ndarray, quant: tuple[float, int, int, int] | None) -> np.ndarray:
    if quant is None:
        return value
    scale, zero, qmin, qmax = quant
    return ((np.clip(np.round(value / scale) + zero, qmin, qmax) - zero) * scale).astype(np.float32)


def _channel_sums(value: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.asarray(value, np.float64), axis, 0)
    return moved.reshape(moved.shape[0], -1).sum(1)


def correct_biases(model: onnx.ModelProto, quantized: onnx.ModelProto,
                   feeds: Iterable[Feed]) -> tuple[onnx.ModelProto, BiasCorrectionReport]:
    """``model`` with each INT8 layer's bias shifted by its mean output error on ``feeds`` (see module doc)."""
    import onnxruntime as ort

    from toolchain.runtime import session_options

    layers = int8_layers(model, quantized)
    report = BiasCorrectionReport()
    if not layers:
        return model, report
    twin = ort.InferenceSession(_twin_model(model, layers).SerializeToString(), session_options(),
                                providers=["CPUExecutionProvider"])
    error_sums = [np.zeros(0) for _ in layers]
    output_sums = [np.zeros(0) for _ in layers]
    output_squares = [np.zeros(0) for _ in layers]
    counts = [0] * len(layers)

    def consume(values: dict[str, np.ndarray]) -> None:
        feed = {f"bc_in_{i}": _fake_quant(values[layer.node.input[0]], layer.input_quant)
                for i, layer in enumerate(layers)}
        got = twin.run([f"bc_out_{i}" for i in range(len(layers))], feed)
        for i, layer in enumerate(layers):
            reference = values[layer.node.output[0]]
            difference = _channel_sums(got[i] - reference, layer.axis)
            sums = _channel_sums(reference, layer.axis)
            squares = _channel_sums(np.square(reference, dtype=np.float64), layer.axis)
            if counts[i] == 0:
                error_sums[i], output_sums[i], output_squares[i] = difference, sums, squares
            else:
                error_sums[i] += difference
                output_sums[i] += sums
                output_squares[i] += squares
            counts[i] += reference.size // reference.shape[layer.axis]

    names = [name for layer in layers for name in (layer.node.input[0], layer.node.output[0])]
    stream(model, feeds, names, consume)
    corrected = onnx.ModelProto()
    corrected.CopyFrom(model)
    inits = {t.name: t for t in corrected.graph.initializer}
    relative = []
    for i, layer in enumerate(layers):
        if counts[i] == 0:
            continue
        mean_error = error_sums[i] / counts[i]
        mean = output_sums[i] / counts[i]
        std = np.sqrt(np.maximum(output_squares[i] / counts[i] - mean ** 2, 1e-12))
        tensor = inits[layer.bias_name]
        bias = numpy_helper.to_array(tensor).astype(np.float64)
        if bias.shape != mean_error.shape:
            continue  # a broadcast bias shared by channels cannot take a per-channel shift
        tensor.CopyFrom(numpy_helper.from_array((bias - mean_error).astype(numpy_helper.to_array(tensor).dtype),
                                                layer.bias_name))
        relative.append((layer.node.name, float(np.mean(np.abs(mean_error) / std))))
        report.layers += 1
    report.relative_error_before = float(np.mean([r for _, r in relative])) if relative else 0.0
    report.largest = sorted(relative, key=lambda item: -item[1])[:5]
    return corrected, report
