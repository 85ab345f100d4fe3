"""INT8 models with one weighted layer quantized, cut from one quantization of the whole model.

The accuracy guard ranks layers by quantizing one layer at a time and measuring the damage. Calling ONNX
Runtime's quantizer once per layer (``nodes_to_quantize=(layer,)``) spent most of that ranking in the
quantizer itself: about 0.7 s per call on a ResNet-18-sized CNN, mostly shape inference and protobuf
round trips, to place four Q/DQ pairs. ORT has no API that returns per-layer variants, so this is written
by hand: the model's weighted layers are quantized once, together (``nodes_to_quantize`` = all of them, so
no ReLU or Clip is folded into a layer's output range and every output keeps its own Q/DQ, as in a
single-layer run), and each variant copies one layer's Q/DQ nodes and quantized initializers from that
model into the float model.

What ORT writes for ``nodes_to_quantize=(layer,)`` is a Q/DQ pair on each activation input, a DequantizeLinear
on the weight and the bias, and a Q/DQ pair on the output; the copies here are of exactly those nodes, with
the scales and zero points ORT computed from the same ranges. ``tests/test_single_layer.py`` checks the
outputs are bit-identical to ORT's own single-layer models for every layer. A layer whose neighbourhood
does not have that shape gets ``None``, and the caller falls back to the quantizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import onnx

from calibration.ranges import ActivationRanges
from toolchain.passes.quantize import QuantizeConfig, quantizable_nodes, quantize_static

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"


class _Graph:
    """Who produces and who consumes each tensor of a model (by name)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.by_name = {n.name: n for n in model.graph.node}


class SingleLayerVariants:
    """Single-layer INT8 variants of ``model`` (see the module doc); one full quantization up front."""

    def __init__(self, model: onnx.ModelProto, ranges: ActivationRanges, config: QuantizeConfig) -> None:
        # Only the weighted layers: ReLU/Clip left out are not folded into the layer's output range, so
        # each output keeps a Q/DQ pair with its own range, as in a single-layer quantization.
        layers = tuple(n.name for n in quantizable_nodes(model))
        every_layer = config.model_copy(update={"nodes_to_quantize": layers, "nodes_to_exclude": ()})
        self._full = _Graph(quantize_static(model, ranges, every_layer))

    def variant(self, base: onnx.ModelProto, layer: str) -> onnx.ModelProto | None:
        """``base`` (the float model) with only ``layer`` quantized as in the full quantization, or None
        when the full model's Q/DQ around the layer are not the single-layer pattern."""
        full = self._full
        node = full.by_name.get(layer)
        if node is None:
            return None
        tensors = _tensor_names(base)
        before: list[onnx.NodeProto] = []
        after: list[onnx.NodeProto] = []
        initializers: list[onnx.TensorProto] = []
        rewire: dict[str, str] = {}
        for name in node.input:
            dq = full.producer.get(name)
            if dq is None or dq.op_type != _DQ:
                if name and name not in tensors:
                    return None  # a float input the base model does not have
                continue
            source = dq.input[0]
            if source in full.initializers:  # a quantized weight or bias
                before.append(dq)
                initializers += [full.initializers[n] for n in dq.input if n in full.initializers]
                continue
            quantize = full.producer.get(source)
            if quantize is None or quantize.op_type != _Q or quantize.input[0] not in tensors:
                return None
            before += [quantize, dq]
            initializers += [full.initializers[n] for n in (*quantize.input[1:], *dq.input[1:])
                             if n in full.initializers]
            # ORT quantizes a tensor, not an edge: every consumer of it reads the one dequantized copy
            # (a residual Add beside the layer too).
            rewire[quantize.input[0]] = dq.output[0]
        graph_outputs = {o.name for o in base.graph.output}
        for name in node.output:
            quantize = next((c for c in full.consumers.get(name, []) if c.op_type == _Q), None)
            dq = next((c for c in full.consumers.get(quantize.output[0], []) if c.op_type == _DQ), None) \
                if quantize is not None else None
            if quantize is None or dq is None:
                continue
            if name in tensors:  # consumers of the float output now read the dequantized one
                if name in graph_outputs:
                    return None  # ORT renames a quantized graph output; not the pattern seen here
                rewire[name] = dq.output[0]
            elif dq.output[0] not in graph_outputs:  # a renamed output must be a graph output's
                return None
            after += [quantize, dq]
            initializers += [full.initializers[n] for n in (*quantize.input[1:], *dq.input[1:])
                             if n in full.initializers]
        return _assemble(base, layer, node, before, after, initializers, rewire)


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    names = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
    for node in model.graph.node:
        names.update(node.output)
    return names


def _assemble(base: onnx.ModelProto, layer: str, quantized: onnx.NodeProto, before: Sequence[onnx.NodeProto],
              after: Sequence[onnx.NodeProto], initializers: Sequence[onnx.TensorProto],
              rewire: dict[str, str]) -> onnx.ModelProto | None:
    variant = onnx.ModelProto()
    variant.CopyFrom(base)
    nodes = list(variant.graph.node)
    position = next((i for i, n in enumerate(nodes) if n.name == layer), None)
    if position is None:
        return None
    layer_node = onnx.NodeProto()
    layer_node.CopyFrom(quantized)
    inserted = {id(n) for n in (*before, *after)}
    for node in nodes:
        if id(node) in inserted:
            continue
        for k, name in enumerate(node.input):
            if name in rewire:
                node.input[k] = rewire[name]
    # A rewired consumer may come before the layer (a residual Add, a side branch): sort again.
    new_nodes = _topological([*nodes[:position], *before, layer_node, *after, *nodes[position + 1:]])
    # A DequantizeLinear may take the float tensor's own name (ORT names a bias's DQ output after the bias):
    # the float initializer of that name goes, as in ORT's output.
    produced = {name for n in (*before, *after) for name in n.output}
    kept = [t for t in variant.graph.initializer if t.name not in produced]
    used = {name for n in new_nodes for name in n.input}
    present = {t.name for t in kept}
    kept = [t for t in kept if t.name in used or t.name in {o.name for o in variant.graph.output}]
    kept += [t for t in _unique(initializers) if t.name not in present]
    del variant.graph.node[:]
    variant.graph.node.extend(new_nodes)
    del variant.graph.initializer[:]
    variant.graph.initializer.extend(kept)
    return variant


def _topological(nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each comes after its inputs' producers, otherwise as given."""
    producer = {name: i for i, node in enumerate(nodes) for name in node.output}
    placed: set[int] = set()
    order: list[onnx.NodeProto] = []

    def place(i: int) -> None:  # depth-first: a graph's depth is small next to its width
        stack = [i]
        while stack:
            j = stack[-1]
            waiting = [producer[n] for n in nodes[j].input if n in producer and producer[n] not in placed
                       and producer[n] != j]
            if waiting:
                if len(stack) > len(nodes):
                    raise ValueError("the graph has a cycle")  # never in a valid ONNX model
                stack.append(waiting[0])
                continue
            stack.pop()
            if j not in placed:
                placed.add(j)
                order.append(nodes[j])

    for i in range(len(nodes)):
        place(i)
    return order


def _unique(tensors: Sequence[onnx.TensorProto]) -> list[onnx.TensorProto]:
    seen: dict[str, onnx.TensorProto] = {}
    for tensor in tensors:
        seen.setdefault(tensor.name, tensor)
    return list(seen.values())


def single_layer_models(model: onnx.ModelProto, ranges: ActivationRanges, config: QuantizeConfig,
                        layers: Sequence[str], base_for: Callable[[str], onnx.ModelProto]) -> Iterator[tuple[str, onnx.ModelProto]]:
    """(layer, variant) for each of ``layers``, one at a time (each is a full copy of the model).

    ``base_for(layer)`` gives the float model that layer's variant starts from. Where the cut does not
    apply, the layer is quantized alone by ONNX Runtime's quantizer instead, so every layer gets a model."""
    variants = SingleLayerVariants(model, ranges, config)
    for layer in layers:
        base = base_for(layer)
        found = variants.variant(base, layer)
        if found is None:
            found = quantize_static(base, ranges, config.model_copy(
                update={"nodes_to_quantize": (layer,), "nodes_to_exclude": ()}))
        yield layer, found
