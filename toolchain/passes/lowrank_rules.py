"""Low-rank rewrite rules: pattern -> check -> rewrite, one small set of functions per operator.

Every accepted layer is seen the same way, as ``y = x @ matrix (+ bias)`` at each
output position (a Gemm/MatMul row, a Conv output pixel with ``x`` its input patch),
so rank selection and bias correction are written once. Each rule has:

* ``check(node, view) -> reason | None``: why the node is *not* factorized (reported);
* ``extract(node, view) -> Layer``: the matrix view of an accepted node;
* ``rewrite(layer, factors, names) -> nodes``: the two products that replace it;
* ``probe(layer, basis, names) -> (nodes, output, channel_axis)``: ``x @ basis`` from the same
  input, used to measure, on calibration data, how much of ``x`` each singular direction carries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.onnx_io import infer_shapes, opset_version
from toolchain.passes.lowrank_options import SUPPORTED_OP_TYPES  # noqa: F401 - re-exported


@dataclass(frozen=True)
class Layer:
    """A weighted node accepted for factorization, as ``y = x @ matrix (+ bias)`` per output position."""

    name: str
    op_type: str
    matrix: np.ndarray
    """(n_in, n_out) float32; for a Conv n_in = C_in * prod(kernel) (one input patch)."""
    bias: np.ndarray | None
    """What is added to ``x @ matrix``, in its own (broadcastable) shape; None when there is none."""
    input: str
    output: str
    replaces: tuple[int, ...]
    """Indices in graph.node of the nodes the rewrite replaces (a MatMul may bring its bias Add)."""
    positions: int | None
    """Output positions per sample at batch 1 (MACs = positions * n_in * n_out); None if shapes are unknown."""
    node: onnx.NodeProto
    kernel: tuple[int, ...] = ()

    @property
    def n_in(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_out(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def parameters(self) -> int:
        return self.n_in * self.n_out

    @property
    def weight_shape(self) -> str:
        """For the report: a Conv's own weight shape, else the matrix as (inputs x outputs)."""
        if self.op_type == "Conv":
            dims = (self.n_out, self.n_in // math.prod(self.kernel), *self.kernel)
            return "x".join(map(str, dims))
        return f"{self.n_in}x{self.n_out}"

    @property
    def full_rank(self) -> int:
        return min(self.n_in, self.n_out)

    @property
    def max_rank(self) -> int:
        """The largest rank that still saves parameters and MACs: r * (m + n) < m * n."""
        return (self.n_in * self.n_out - 1) // (self.n_in + self.n_out)

    def parameters_at(self, rank: int) -> int:
        return rank * (self.n_in + self.n_out)

    @property
    def macs(self) -> int | None:
        return None if self.positions is None else self.positions * self.parameters

    def macs_at(self, rank: int) -> int | None:
        return None if self.positions is None else self.positions * self.parameters_at(rank)


@dataclass(frozen=True)
class Factors:
    """W ~ first @ second through ``rank``, plus the bias the second product carries (None: no bias)."""

    first: np.ndarray  # (n_in, rank)
    second: np.ndarray  # (rank, n_out)
    bias: np.ndarray | None

    @property
    def rank(self) -> int:
        return int(self.first.shape[1])


class Names:
    """Fresh tensor and node names, and the initializers a rewrite adds."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._taken = {t.name for t in model.graph.initializer} | {v.name for v in model.graph.input}
        self._taken |= {name for node in model.graph.node for name in (*node.input, *node.output, node.name)}
        self.initializers: list[onnx.TensorProto] = []

    def fresh(self, base: str) -> str:
        name, index = base, 1
        while name in self._taken:
            index += 1
            name = f"{base}_{index}"
        self._taken.add(name)
        return name

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name


class GraphView:
    """What the rules read from a model: constant weights, consumers, opset and batch-1 output shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = opset_version(model)
        self._initializers = {t.name: t for t in model.graph.initializer}
        self._overridable = {v.name for v in model.graph.input}
        self._graph_outputs = {v.name for v in model.graph.output}
        self._consumers: dict[str, list[int]] = {}
        for index, node in enumerate(model.graph.node):
            for name in node.input:
                self._consumers.setdefault(name, []).append(index)
        self._shapes: dict[str, tuple[int | None, ...]] | None = None

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer that cannot be overridden at run time, else None."""
        if name in self._overridable or name not in self._initializers:
            return None
        return numpy_helper.to_array(self._initializers[name])

    def is_constant(self, name: str) -> bool:
        return name in self._initializers and name not in self._overridable

    def is_float32_constant(self, name: str) -> bool:
        tensor = self._initializers.get(name)
        return tensor is not None and name not in self._overridable and tensor.data_type == onnx.TensorProto.FLOAT

    def dims(self, name: str) -> tuple[int, ...] | None:
        tensor = self._initializers.get(name)
        return None if tensor is None else tuple(tensor.dims)

    def consumers(self, name: str) -> list[int]:
        return self._consumers.get(name, [])

    def is_graph_output(self, name: str) -> bool:
        return name in self._graph_outputs

    def node(self, index: int) -> onnx.NodeProto:
        return self.model.graph.node[index]

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        if self._shapes is None:
            self._shapes = _batch1_shapes(self.model)
        return self._shapes.get(name)


def _batch1_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    # The weight-free skeleton and batch fixing that ``inspect`` uses, so per-layer MACs add up to its totals.
    from toolchain.model_info import _fix_batch, _shape_table, _skeleton

    skeleton = _skeleton(model)
    _fix_batch(skeleton, 1)
    return _shape_table(infer_shapes(skeleton))


def _positions(shape: tuple[int | None, ...] | None, channel_axis: int) -> int | None:
    if not shape or any(d is None for d in shape):
        return None
    dims = list(shape)
    del dims[channel_axis]
    return math.prod(dims)  # type: ignore[arg-type]


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# --------------------------------------------------------------------------- Gemm


def check_gemm(node: onnx.NodeProto, view: GraphView) -> str | None:
    attrs = _attrs(node)
    if attrs.get("transA", 0):
        return "Gemm with transA=1 is not handled"
    if not view.is_float32_constant(node.input[1]):
        return "its weight is not a float32 constant initializer"
    if len(node.input) > 2 and node.input[2] and view.constant(node.input[2]) is None:
        return "its bias is not a constant initializer"
    if view.opset < 11:
        return f"opset {view.opset} < 11 (Gemm without a bias needs opset 11)"
    return None


def extract_gemm(node: onnx.NodeProto, index: int, view: GraphView) -> Layer:
    attrs = _attrs(node)
    weight = view.constant(node.input[1]).astype(np.float32)
    matrix = (weight.T if attrs.get("transB", 0) else weight) * np.float32(attrs.get("alpha", 1.0))
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = view.constant(node.input[2]).astype(np.float32) * np.float32(attrs.get("beta", 1.0))
    shape = view.shape(node.output[0])
    return Layer(node.name, "Gemm", np.ascontiguousarray(matrix), bias, node.input[0], node.output[0], (index,),
                 _positions(shape, -1), node)


def rewrite_gemm(layer: Layer, factors: Factors, names: Names) -> list[onnx.NodeProto]:
    # Both products keep PyTorch's Linear layout (transB=1), which every backend maps to a fully connected layer.
    hidden = names.fresh(f"{layer.output}_lowrank")
    first = names.constant(f"{layer.name}.lowrank_a", factors.first.T)
    second = names.constant(f"{layer.name}.lowrank_b", factors.second.T)
    inputs = [hidden, second]
    if factors.bias is not None:
        inputs.append(names.constant(f"{layer.name}.lowrank_bias", factors.bias))
    return [helper.make_node("Gemm", [layer.input, first], [hidden], name=f"{layer.name}.lowrank_1", transB=1),
            helper.make_node("Gemm", inputs, [layer.output], name=f"{layer.name}.lowrank_2", transB=1)]


def probe_matrix(layer: Layer, basis: np.ndarray, names: Names) -> tuple[list[onnx.NodeProto], str, int]:
    output = names.fresh(f"{layer.name}_probe")
    weight = names.constant(f"{layer.name}.probe_basis", basis.astype(np.float32))
    return [helper.make_node("MatMul", [layer.input, weight], [output], name=f"{layer.name}.probe")], output, -1


# --------------------------------------------------------------------------- MatMul (+ bias Add)


def check_matmul(node: onnx.NodeProto, view: GraphView) -> str | None:
    if view.is_constant(node.input[0]) and not view.is_constant(node.input[1]):
        return "the constant is the left operand (x @ W with W on the right is handled)"
    if not view.is_float32_constant(node.input[1]):
        return "its weight is not a float32 constant initializer"
    dims = view.dims(node.input[1])
    if dims is None or len(dims) != 2:
        return f"its weight has {len(dims or ())} dimensions (a 2-D matrix is handled)"
    return None


def _bias_add(node: onnx.NodeProto, view: GraphView, n_out: int) -> tuple[int, np.ndarray, str] | None:
    """The Add right after a MatMul that adds a constant vector of n_out values (the Linear bias)."""
    consumers = view.consumers(node.output[0])
    if len(consumers) != 1 or view.is_graph_output(node.output[0]):
        return None
    add = view.node(consumers[0])
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    value = view.constant(other)
    if value is None or value.dtype != np.float32 or value.size != n_out or (value.ndim and value.shape[-1] != n_out):
        return None
    return consumers[0], value, add.output[0]


def extract_matmul(node: onnx.NodeProto, index: int, view: GraphView) -> Layer:
    matrix = view.constant(node.input[1]).astype(np.float32)
    bias_add = _bias_add(node, view, matrix.shape[1])
    replaces, bias, output = (index,), None, node.output[0]
    if bias_add is not None:
        add_index, bias, output = bias_add
        replaces = (index, add_index)
    return Layer(node.name, "MatMul", matrix, bias, node.input[0], output, replaces,
                 _positions(view.shape(node.output[0]), -1), node)


def rewrite_matmul(layer: Layer, factors: Factors, names: Names) -> list[onnx.NodeProto]:
    hidden = names.fresh(f"{layer.output}_lowrank")
    first = names.constant(f"{layer.name}.lowrank_a", factors.first)
    second = names.constant(f"{layer.name}.lowrank_b", factors.second)
    nodes = [helper.make_node("MatMul", [layer.input, first], [hidden], name=f"{layer.name}.lowrank_1")]
    if factors.bias is None:
        return nodes + [helper.make_node("MatMul", [hidden, second], [layer.output], name=f"{layer.name}.lowrank_2")]
    product = names.fresh(f"{layer.output}_lowrank_product")
    bias = names.constant(f"{layer.name}.lowrank_bias", factors.bias)
    return nodes + [helper.make_node("MatMul", [hidden, second], [product], name=f"{layer.name}.lowrank_2"),
                    helper.make_node("Add", [product, bias], [layer.output], name=f"{layer.name}.lowrank_bias_add")]


# --------------------------------------------------------------------------- Conv (groups = 1)


def check_conv(node: onnx.NodeProto, view: GraphView) -> str | None:
    group = int(_attrs(node).get("group", 1))
    dims = view.dims(node.input[1])
    if group != 1:
        depthwise = dims is not None and dims[1] == 1 and group == dims[0]
        return (f"depthwise convolution (group={group}): one filter per channel, nothing to share"
                if depthwise else f"grouped convolution (group={group}) is left alone")
    if not view.is_float32_constant(node.input[1]):
        return "its weight is not a float32 constant initializer"
    if len(node.input) > 2 and node.input[2] and view.constant(node.input[2]) is None:
        return "its bias is not a constant initializer"
    return None


def extract_conv(node: onnx.NodeProto, index: int, view: GraphView) -> Layer:
    weight = view.constant(node.input[1]).astype(np.float32)
    matrix = weight.reshape(weight.shape[0], -1).T  # (C_in * prod(kernel), C_out): one patch per row
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = view.constant(node.input[2]).astype(np.float32)
    return Layer(node.name, "Conv", np.ascontiguousarray(matrix), bias, node.input[0], node.output[0], (index,),
                 _positions(view.shape(node.output[0]), 1), node, kernel=tuple(weight.shape[2:]))


def _conv_filters(columns: np.ndarray, layer: Layer) -> np.ndarray:
    """(C_in * prod(kernel), k) columns -> k filters of shape (C_in, *kernel)."""
    in_channels = layer.n_in // math.prod(layer.kernel)
    return np.ascontiguousarray(columns.T.reshape(columns.shape[1], in_channels, *layer.kernel))


def rewrite_conv(layer: Layer, factors: Factors, names: Names) -> list[onnx.NodeProto]:
    # k x k convolution to `rank` channels (same strides/pads/dilations), then a 1 x 1 convolution back out.
    hidden = names.fresh(f"{layer.output}_lowrank")
    first = names.constant(f"{layer.name}.lowrank_a", _conv_filters(factors.first, layer))
    pointwise = factors.second.T.reshape(layer.n_out, factors.rank, *([1] * len(layer.kernel)))
    second = names.constant(f"{layer.name}.lowrank_b", pointwise)
    inputs = [hidden, second]
    if factors.bias is not None:
        inputs.append(names.constant(f"{layer.name}.lowrank_bias", factors.bias))
    spatial = len(layer.kernel)
    first_node = helper.make_node("Conv", [layer.input, first], [hidden], name=f"{layer.name}.lowrank_1")
    first_node.attribute.extend(a for a in layer.node.attribute if a.name != "group")
    second_node = helper.make_node("Conv", inputs, [layer.output], name=f"{layer.name}.lowrank_2",
                                   kernel_shape=[1] * spatial)
    return [first_node, second_node]


def probe_conv(layer: Layer, basis: np.ndarray, names: Names) -> tuple[list[onnx.NodeProto], str, int]:
    output = names.fresh(f"{layer.name}_probe")
    weight = names.constant(f"{layer.name}.probe_basis", _conv_filters(basis.astype(np.float32), layer))
    node = helper.make_node("Conv", [layer.input, weight], [output], name=f"{layer.name}.probe")
    node.attribute.extend(a for a in layer.node.attribute if a.name != "group")
    return [node], output, 1


# --------------------------------------------------------------------------- the rule table


@dataclass(frozen=True)
class Rule:
    op_type: str
    check: Callable[[onnx.NodeProto, GraphView], str | None]
    extract: Callable[[onnx.NodeProto, int, GraphView], Layer]
    rewrite: Callable[[Layer, Factors, Names], list[onnx.NodeProto]]
    probe: Callable[[Layer, np.ndarray, Names], tuple[list[onnx.NodeProto], str, int]]


RULES: dict[str, Rule] = {
    "Gemm": Rule("Gemm", check_gemm, extract_gemm, rewrite_gemm, probe_matrix),
    "MatMul": Rule("MatMul", check_matmul, extract_matmul, rewrite_matmul, probe_matrix),
    "Conv": Rule("Conv", check_conv, extract_conv, rewrite_conv, probe_conv),
}


@dataclass(frozen=True)
class Skipped:
    name: str
    op_type: str
    reason: str


def match(model: onnx.ModelProto, op_types: tuple[str, ...]) -> Iterator[Layer | Skipped]:
    """Every node of ``op_types`` in the main graph: a Layer when accepted, else Skipped with the reason."""
    view = GraphView(model)
    for index, node in enumerate(model.graph.node):
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None or node.op_type not in op_types:
            continue
        reason = rule.check(node, view)
        yield Skipped(node.name, node.op_type, reason) if reason else rule.extract(node, index, view)


def apply(model: onnx.ModelProto, rewrites: dict[str, tuple[Layer, Factors]]) -> onnx.ModelProto:
    """A copy of ``model`` with each named layer replaced by its two products; unused weights dropped."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    names = Names(result)
    replacement: dict[int, list[onnx.NodeProto]] = {}
    for layer, factors in rewrites.values():
        first, *rest = layer.replaces
        replacement[first] = RULES[layer.op_type].rewrite(layer, factors, names)
        replacement.update({index: [] for index in rest})
    replaced_inputs = {name for index in replacement for name in result.graph.node[index].input}
    nodes = [new for index, node in enumerate(result.graph.node) for new in replacement.get(index, [node])]
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    result.graph.initializer.extend(names.initializers)
    drop_unused_initializers(result, replaced_inputs)
    return result


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {v.name for v in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                used |= _used_names(sub)  # subgraphs may read outer-scope weights
    return used


def drop_unused_initializers(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove the ``candidates`` initializers nothing reads any more (other unused ones are not ours to drop)."""
    used = _used_names(model.graph) | {v.name for v in model.graph.input}
    kept = [t for t in model.graph.initializer if t.name in used or t.name not in candidates]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
