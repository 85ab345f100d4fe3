"""Per-layer INT8 sensitivity: quantize one weighted layer at a time and measure the damage at the outputs.

This ranking is what the accuracy guard keeps layers in float by, and it used to be half of the guard's
time. Two things make it cheaper while ranking the layers the same way (bench/guard.md: same order, same
layers kept in float; scores equal, or within 1.1e-8 on the MobileNetV2-sized CNN, whose border values come
from a separate float run):

- The single-layer models are cut from one quantization of the whole model
  (``toolchain.passes.single_layer``) instead of one quantizer call per layer.
- A single-layer model computes exactly what the float model computes upstream of its layer, so only the
  part downstream of the layer's quantized inputs is run, fed with the float model's values at its border
  (one float run with every layer's border tensors as extra outputs). For a chain of layers that halves
  the work on average. Where the border values would take too much memory, the whole model is run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from calibration.ranges import ActivationRanges
from toolchain.frontends.base import Feed
from toolchain.passes.quantize import QuantizeConfig, quantizable_nodes
from toolchain.passes.single_layer import single_layer_models
from toolchain.quality import sample_cosines

# Samples used for the one-layer-at-a-time ranking (the guard's final checks use every held-out sample).
SENSITIVITY_SAMPLES = 16
SENSITIVITY_METRIC = "1 - mean per-sample cosine of the outputs (channels scaled alike) when only that layer is INT8"
# Above this many bytes of border tensors, the single-layer models run whole instead.
BORDER_BYTES_LIMIT = 1 << 30


def run_all(model: onnx.ModelProto, feeds: Sequence[Feed], config: QuantizeConfig | None = None,
            names: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    """Per feed, the outputs (or the tensors ``names``); INT8 models run as ``config.guard_runtime`` says."""
    runner = _runner(model, config)
    if names is None:
        return [runner.run(feed) for feed in feeds]
    return [runner.run_named(feed, list(names)) for feed in feeds]


def _runner(model: onnx.ModelProto, config: QuantizeConfig | None):
    from toolchain.runtime import OnnxRuntimeRunner

    return OnnxRuntimeRunner.from_model(model, integer_reference=config is not None and
                                        config.guard_runtime == "reference")


def concatenated(outputs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}


def with_float_biases(model: onnx.ModelProto, source: onnx.ModelProto | None,
                      names: Sequence[str]) -> onnx.ModelProto:
    """``model`` with the biases of the nodes ``names`` taken from ``source`` (same graph before bias
    correction): a layer that stays float must not carry the correction made for its own INT8 error."""
    if source is None or not names:
        return model
    wanted = set(names)
    source_inits = {t.name: t for t in source.graph.initializer}
    biases = {n.input[2] for n in model.graph.node if n.name in wanted and len(n.input) > 2 and n.input[2]}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name in biases and tensor.name in source_inits:
            tensor.CopyFrom(source_inits[tensor.name])
    return copy


def layer_sensitivity(model: onnx.ModelProto, ranges: ActivationRanges, config: QuantizeConfig,
                      feeds: Sequence[Feed], reference: onnx.ModelProto | None = None,
                      bias_source: onnx.ModelProto | None = None) -> list[tuple[str, str, float]]:
    """Quantize one weighted layer at a time and rank layers by the damage to the final outputs.

    ``model`` is the float model the INT8 model is made from (equalized, biases corrected), so the ranking
    measures what is left after those passes; ``reference`` is the FP32 model it is judged against
    (``model`` itself when None)."""
    subset = list(feeds)[:SENSITIVITY_SAMPLES]
    # Its own FP32 run: feeds may be batches of different sizes, so slicing a full reference is fragile.
    subset_reference = concatenated(run_all(reference if reference is not None else model, subset))
    layers = quantizable_nodes(model)
    names = [n.name for n in layers]
    op_types = {n.name: n.op_type for n in layers}
    # Upstream of any one layer, its single-layer model is this one: every layer float, biases uncorrected.
    upstream = with_float_biases(model, bias_source, names)
    border = _Border.measure(upstream, layers, subset, config)

    def float_model(layer: str) -> onnx.ModelProto:  # every other layer's bias as before correction
        return with_float_biases(model, bias_source, [name for name in names if name != layer])

    unchanged = concatenated([{n: v[n] for n in subset_reference} for v in border.values]) if border else {}
    scores = []
    for name, single in single_layer_models(model, ranges, config, names, float_model):
        suffix = border.suffix(single, name) if border is not None else None
        if suffix is None:
            outputs = concatenated(run_all(single, subset, config))
        else:
            model_part, inputs = suffix
            ran = run_all(model_part, [{t: values[t] for t in inputs} for values in border.values], config)
            changed = concatenated(ran)
            outputs = {n: changed[n] if n in changed else unchanged[n] for n in subset_reference}
        # Channels scaled alike (a detector's boxes must not hide its scores); the mean over samples ranks
        # more steadily than the worst sample.
        damage = max(1.0 - float(np.nan_to_num(sample_cosines(subset_reference[n], outputs[n]), nan=-1.0).mean())
                     for n in outputs)
        scores.append((name, op_types[name], damage))
    return sorted(scores, key=lambda item: -item[2])


class _Border:
    """The float model's values at each layer's border, and the downstream part of a single-layer model."""

    def __init__(self, upstream: onnx.ModelProto, values: list[dict[str, np.ndarray]]) -> None:
        self.float_tensors = {i.name for i in upstream.graph.input}
        for node in upstream.graph.node:
            self.float_tensors.update(node.output)
        self.values = values

    @classmethod
    def measure(cls, upstream: onnx.ModelProto, layers: Sequence[onnx.NodeProto], feeds: Sequence[Feed],
                config: QuantizeConfig) -> "_Border | None":
        """One float run returning every layer's border tensors, or None if they would not fit the limit."""
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for node in upstream.graph.node for a in node.attribute):
            return None  # a subgraph may read outer tensors that no border lists
        graph_inputs = {i.name for i in upstream.graph.input}
        outputs = [o.name for o in upstream.graph.output]
        border = set().union(*(_downstream(upstream, layer.name)[1] for layer in layers)) - graph_inputs
        # The graph outputs too: an output no quantized layer reaches keeps the float model's value.
        names = [*outputs, *sorted(border - set(outputs))]
        probe = _runner(_with_outputs(upstream, names[len(outputs):]), config)
        values: list[dict[str, np.ndarray]] = []
        held = 0
        for feed in feeds:  # one feed at a time, so that the limit stops it before memory runs out
            found = probe.run_named(feed, names)
            found.update(feed)  # graph inputs on the border are the feeds themselves
            held += sum(a.nbytes for a in found.values())
            if held > BORDER_BYTES_LIMIT:
                return None
            values.append(found)
        return cls(upstream, values)

    def suffix(self, single: onnx.ModelProto, layer: str) -> tuple[onnx.ModelProto, list[str]] | None:
        """The part of ``single`` downstream of ``layer``'s quantized inputs, and its border inputs."""
        kept, border = _downstream(single, layer, self.float_tensors)
        if kept is None or not set(border) <= set(self.values[0]):
            return None
        return _cut(single, kept, border, self.values[0]), border


def _downstream(model: onnx.ModelProto, layer: str, float_tensors: set[str] | None = None
                ) -> tuple[list[int] | None, list[str]]:
    """Indices of the nodes that ``layer`` being quantized can change, and the tensors they read from
    outside that set (its border).

    Seeds: the layer and every consumer of the layer's activation inputs (ORT quantizes a tensor for all
    its consumers). In a single-layer model, nodes that read only initializers (its weight's
    DequantizeLinear) and produce tensors the float model lacks join too (``float_tensors``)."""
    nodes = list(model.graph.node)
    initializers = {t.name for t in model.graph.initializer}
    consumers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
        for name in node.output:
            producer[name] = i
    at = next((i for i, n in enumerate(nodes) if n.name == layer), None)
    if at is None:
        return None, []
    seeds = {at}
    for name in nodes[at].input:
        if name and name not in initializers:
            seeds.update(consumers.get(name, []))
    kept, stack = set(), list(seeds)
    while stack:
        i = stack.pop()
        if i in kept:
            continue
        kept.add(i)
        for name in nodes[i].output:
            stack.extend(consumers.get(name, []))
    border: list[str] = []
    pending = [name for i in kept for name in nodes[i].input]
    while pending:
        name = pending.pop()
        if not name or name in initializers or name in border:
            continue
        source = producer.get(name)
        if source is not None and source in kept:
            continue
        if source is not None and not any(nodes[source].input):  # a Constant: kept, so it stays constant
            kept.add(source)
            continue
        if float_tensors is not None and name not in float_tensors:
            if source is None:
                return None, []
            kept.add(source)  # e.g. a weight's DequantizeLinear, which only reads initializers
            pending.extend(nodes[source].input)
            continue
        border.append(name)
    return sorted(kept), sorted(border)


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    if not names:
        return model
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return probe


def _cut(model: onnx.ModelProto, kept: Sequence[int], border: Sequence[str],
         example: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``model``'s nodes ``kept`` as a model of their own, reading ``border`` as graph inputs."""
    part = model  # read only: make_graph copies what it keeps, so the whole model is never copied
    nodes = [part.graph.node[i] for i in kept]
    produced = {name for node in nodes for name in node.output}
    used = {name for node in nodes for name in node.input}
    outputs = [o for o in part.graph.output if o.name in produced]
    initializers = [t for t in part.graph.initializer if t.name in used]
    inputs = []
    for name in border:
        array = example[name]
        # Batch dimension left free: the feeds may be batches of different sizes.
        shape = ["batch", *array.shape[1:]] if array.ndim else []
        inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), shape))
    graph = helper.make_graph(nodes, part.graph.name, inputs, outputs, initializers)
    cut = helper.make_model(graph, opset_imports=list(part.opset_import), ir_version=part.ir_version)
    cut.functions.extend(part.functions)
    return cut
