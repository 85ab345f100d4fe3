"""What ``edgekiln inspect MODEL`` reports about an ONNX model.

``summarize`` gathers static facts (I/O, opsets, producer, op histogram, weights)
and an estimate of the multiply-accumulate (MAC) count of the compute-heavy ops.

MAC conventions (the usual ones for "model complexity" tables):

* Only ops dominated by multiply-accumulates are counted: Conv, ConvTranspose,
  Gemm, MatMul, their quantized forms, Einsum (two operands), RNN/GRU/LSTM and
  ORT's FusedConv/FusedGemm. Elementwise ops, pooling, normalisation, softmax and
  activations are ignored: they are cheap next to these and every tool counts
  them differently, so including them would make numbers less comparable.
* Bias additions are not counted.
* Dynamic leading dims of graph inputs are set to ``batch`` before shape
  inference, so a model exported with a symbolic batch still gets a number.
  Other unknown dims make the node's cost unknown (``unknown_shape_ops``).
* Nodes inside subgraphs (If/Loop/Scan bodies) are counted once; a Loop body's
  real cost depends on its trip count, which is not known statically.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper

from toolchain.errors import printable
from toolchain.onnx_io import TensorInfo, graph_inputs, graph_outputs, infer_shapes, opset_version

# Ops whose presence means the model is (at least partly) quantized.
_QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    # onnxruntime contrib ops produced by its quantization tools
    "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits",
})

_DEFAULT_DOMAINS = ("", "ai.onnx")

# Tensors up to this many elements keep their data in the copy used for shape
# inference: shape inference reads small constants (Reshape shapes, Resize
# scales), never weights, so dropping big data keeps inference cheap for
# multi-GB models (and possible past protobuf's 2 GiB limit).
_KEEP_DATA_ELEMENTS = 4096

# Element types that are not "parameters" (not float/int numbers).
_NON_NUMERIC = frozenset({onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING, onnx.TensorProto.BOOL})

# Sub-byte types: numpy's itemsize (1) would overstate their storage.
_SUB_BYTE_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, name)
}

Shape = tuple[int | None, ...]  # None for a dim that is not known


@dataclass
class OpCost:
    """MACs of all estimated nodes of one op type (``count`` = how many nodes were estimated)."""

    op_type: str
    count: int
    macs: int


@dataclass
class ModelSummary:
    path: str | None
    file_bytes: int  # the .onnx file plus the external-data files it references
    ir_version: int
    opset: int
    other_opsets: dict[str, int]  # custom domains (com.microsoft, ai.onnx.ml, ...)
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    node_count: int  # all nodes, subgraphs included; equals sum(op_histogram.values())
    op_histogram: dict[str, int]  # sorted by count desc, then name
    parameter_count: int  # elements of numeric initializers and Constant tensors
    parameter_bytes: int
    weight_dtypes: dict[str, int]  # dtype name -> element count
    macs: int
    macs_by_op: list[OpCost]  # sorted by MACs desc, then name
    unknown_shape_ops: int  # MAC-bearing nodes whose cost needs shapes we do not know
    has_quantized_ops: bool
    batch: int = 1  # the batch size used for dynamic leading dims in ``macs``

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``inspect --json``): shapes as lists, dtypes as strings."""

        def tensor(info: TensorInfo) -> dict[str, Any]:
            return {"name": info.name, "shape": list(info.shape), "dtype": str(info.dtype)}

        return {
            "path": self.path,
            "file_bytes": self.file_bytes,
            "ir_version": self.ir_version,
            "opset": self.opset,
            "other_opsets": dict(self.other_opsets),
            "producer": self.producer,
            "inputs": [tensor(t) for t in self.inputs],
            "outputs": [tensor(t) for t in self.outputs],
            "node_count": self.node_count,
            "op_histogram": dict(self.op_histogram),
            "parameter_count": self.parameter_count,
            "parameter_bytes": self.parameter_bytes,
            "weight_dtypes": dict(self.weight_dtypes),
            "macs": self.macs,
            "macs_by_op": [{"op_type": c.op_type, "count": c.count, "macs": c.macs} for c in self.macs_by_op],
            "unknown_shape_ops": self.unknown_shape_ops,
            "has_quantized_ops": self.has_quantized_ops,
            "batch": self.batch,
        }

    def parameters_human(self) -> str:
        return human_count(self.parameter_count)

    def macs_human(self) -> str:
        return human_count(self.macs)

    def size_human(self) -> str:
        return human_bytes(self.file_bytes)


def human_count(n: int) -> str:
    """1234 -> '1.234 K', 2_310_000 -> '2.31 M' (4 significant digits, SI units)."""
    if abs(n) < 1000:
        return str(n)
    value = float(n)
    for unit in ("K", "M", "G", "T", "P"):
        value /= 1000.0
        # Round first so 999_999 becomes '1 M', not '1000 K'.
        if abs(float(f"{value:.4g}")) < 1000 or unit == "P":
            return f"{value:.4g} {unit}"
    raise AssertionError("unreachable")


def human_bytes(n: int) -> str:
    """Decimal units (1 KB = 1000 B), matching the K/M of the counts."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000.0
        if value < 999.95 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- graph walking


def _op_name(node: onnx.NodeProto) -> str:
    # Custom-domain ops are qualified so 'com.microsoft.FusedConv' is not mistaken for a standard op.
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _all_graphs(sub)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for g in _all_graphs(graph):
        yield from g.node


# --------------------------------------------------------------------------- parameters


def _dtype_name(data_type: int) -> str:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(data_type).lower()


def _dtype_bits(data_type: int) -> int:
    if data_type in _SUB_BYTE_BITS:
        return _SUB_BYTE_BITS[data_type]
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8
    except (KeyError, TypeError, ValueError):
        return 32


def _constant_tensors(node: onnx.NodeProto) -> Iterator[tuple[int, int]]:
    """(data_type, element count) of a Constant node's value, whatever attribute holds it."""
    for attr in node.attribute:
        if attr.name == "value":
            yield attr.t.data_type, math.prod(attr.t.dims)
        elif attr.name == "sparse_value":
            yield attr.sparse_tensor.values.data_type, math.prod(attr.sparse_tensor.values.dims)
        elif attr.name == "value_float":
            yield onnx.TensorProto.FLOAT, 1
        elif attr.name == "value_floats":
            yield onnx.TensorProto.FLOAT, len(attr.floats)
        elif attr.name == "value_int":
            yield onnx.TensorProto.INT64, 1
        elif attr.name == "value_ints":
            yield onnx.TensorProto.INT64, len(attr.ints)


def _parameter_tensors(model: onnx.ModelProto) -> Iterator[tuple[int, int]]:
    # Sizes come from dims, not data, so external data need not be loaded.
    for graph in _all_graphs(model.graph):
        for init in graph.initializer:
            yield init.data_type, math.prod(init.dims)
        for sparse in graph.sparse_initializer:
            yield sparse.values.data_type, math.prod(sparse.values.dims)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
                yield from _constant_tensors(node)


def _parameters(model: onnx.ModelProto) -> tuple[int, int, dict[str, int]]:
    count = 0
    bits = 0
    by_dtype: Counter[str] = Counter()
    for data_type, elements in _parameter_tensors(model):
        if data_type in _NON_NUMERIC:
            continue
        count += elements
        bits += math.ceil(elements * _dtype_bits(data_type) / 8) * 8  # sub-byte tensors pad to a byte
        by_dtype[_dtype_name(data_type)] += elements
    return count, bits // 8, dict(sorted(by_dtype.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------- file size


def _external_locations(model: onnx.ModelProto) -> set[str]:
    locations = set()
    for tensor in external_data_helper._get_all_tensors(model):  # onnx has no public iterator for this
        if external_data_helper.uses_external_data(tensor):
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return locations


def _byte_size(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except Exception:  # overflows past 2 GiB in some protobuf builds; such a model cannot be one file
        return 1 << 62


def _file_bytes(model: onnx.ModelProto, path: Path | None) -> int:
    if path is None or not path.is_file():
        return 0
    size = path.stat().st_size
    locations = _external_locations(model)
    if not locations and _byte_size(model) > size:
        # load_onnx inlines external data and drops the references; a file
        # smaller than the model must have had some, so re-read only the
        # references (weights stay on disk).
        try:
            locations = _external_locations(onnx.load(str(path), load_external_data=False))
        except Exception:  # the size is informational; the model itself is already loaded
            locations = set()
    base = path.parent.resolve()
    for location in sorted(locations):
        target = (base / location).resolve()
        if base in target.parents and target.is_file():  # like load_onnx: only files beside the model
            size += target.stat().st_size
    return size


# --------------------------------------------------------------------------- shapes


def _light_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The tensor itself if small, else just its name/type/dims (what inference needs)."""
    light = onnx.TensorProto()
    if math.prod(tensor.dims) <= _KEEP_DATA_ELEMENTS and not external_data_helper.uses_external_data(tensor):
        light.CopyFrom(tensor)
    else:
        light.name = tensor.name
        light.data_type = tensor.data_type
        light.dims.extend(tensor.dims)
    return light


def _lighten_graph(graph: onnx.GraphProto) -> None:
    """Drop big tensor data in place (on a copy) from Constant nodes and subgraphs."""
    for i, init in enumerate(graph.initializer):
        if math.prod(init.dims) > _KEEP_DATA_ELEMENTS:
            graph.initializer[i].CopyFrom(_light_tensor(init))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and math.prod(attr.t.dims) > _KEEP_DATA_ELEMENTS:
                attr.t.CopyFrom(_light_tensor(attr.t))
        for sub in _subgraphs(node):
            _lighten_graph(sub)


def _copy_fields(src: Any, dst: Any, skip: tuple[str, ...] = ()) -> None:
    for desc, value in src.ListFields():
        if desc.name in skip:
            continue
        # protobuf 6 removed FieldDescriptor.label in favour of is_repeated
        repeated = desc.is_repeated if hasattr(desc, "is_repeated") else desc.label == desc.LABEL_REPEATED
        if repeated:
            getattr(dst, desc.name).extend(value)
        elif desc.message_type is not None:
            getattr(dst, desc.name).CopyFrom(value)
        else:
            setattr(dst, desc.name, value)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without weight data: cheap to shape-infer and safe to edit."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip=("graph",))
    graph = skeleton.graph
    _copy_fields(model.graph, graph, skip=("initializer", "node"))
    graph.initializer.extend(_light_tensor(t) for t in model.graph.initializer)
    for node in model.graph.node:
        copy = graph.node.add()
        copy.CopyFrom(node)  # one node at a time, so a huge Constant is held twice only briefly
        for attr in copy.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and math.prod(attr.t.dims) > _KEEP_DATA_ELEMENTS:
                attr.t.CopyFrom(_light_tensor(attr.t))
        for sub in _subgraphs(copy):
            _lighten_graph(sub)
    return skeleton


def _fix_batch(model: onnx.ModelProto, batch: int) -> None:
    """Set dynamic leading dims of the real inputs (and every use of their symbol) to ``batch``."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    symbols = set()
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            if dims[0].dim_param:
                symbols.add(dims[0].dim_param)
            dims[0].dim_value = batch  # clears dim_param (oneof)
    if not symbols:
        return
    # The same symbol elsewhere (other inputs, declared value_info/outputs) is the same batch.
    for value in [*inputs, *model.graph.value_info, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_value = batch


def _shape_of(value: onnx.ValueInfoProto) -> Shape | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)


def _shape_table(model: onnx.ModelProto) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for graph in _all_graphs(model.graph):
        for value in [*graph.value_info, *graph.input, *graph.output]:
            shape = _shape_of(value)
            if shape is not None and (value.name not in shapes or None in shapes[value.name]):
                shapes[value.name] = shape
        for init in graph.initializer:
            shapes[init.name] = tuple(init.dims)
        for node in graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] not in shapes:
                for attr in node.attribute:
                    if attr.name == "value":
                        shapes[node.output[0]] = tuple(attr.t.dims)
    return shapes


# --------------------------------------------------------------------------- MACs


class _Unknown(Exception):
    """A shape needed for a node's cost is not known."""


class _Ctx:
    """Shape and attribute lookups for one node; raises _Unknown instead of guessing."""

    def __init__(self, node: onnx.NodeProto, shapes: dict[str, Shape]) -> None:
        self.node = node
        self.shapes = shapes
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def shape(self, index: int, *, output: bool = False, rank: int | None = None) -> tuple[int, ...]:
        names = self.node.output if output else self.node.input
        if index >= len(names) or not names[index]:
            raise _Unknown
        shape = self.shapes.get(names[index])
        if shape is None or any(d is None for d in shape) or (rank is not None and len(shape) != rank):
            raise _Unknown
        return shape  # type: ignore[return-value]

    def maybe_shape(self, index: int, *, output: bool = False) -> tuple[int, ...] | None:
        try:
            return self.shape(index, output=output)
        except _Unknown:
            return None

    def attr(self, name: str, default: Any) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value


def conv_output_spatial(in_spatial: tuple[int, ...], kernel: tuple[int, ...], *, strides: list[int] | None = None,
                        pads: list[int] | None = None, dilations: list[int] | None = None,
                        auto_pad: str = "NOTSET") -> tuple[int, ...]:
    """Spatial output size of a Conv (the ONNX formula), used when inference gave no output shape."""
    n = len(in_spatial)
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    pads = list(pads or [0] * (2 * n))
    out = []
    for i in range(n):
        effective_k = dilations[i] * (kernel[i] - 1) + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-in_spatial[i] // strides[i]))
        elif auto_pad == "VALID":
            out.append((in_spatial[i] - effective_k) // strides[i] + 1)
        else:
            out.append((in_spatial[i] + pads[i] + pads[i + n] - effective_k) // strides[i] + 1)
    return tuple(out)


def _conv_macs(ctx: _Ctx, x_index: int, w_index: int) -> int:
    # MACs = N * Cout * prod(out spatial) * (Cin/groups) * prod(kernel) = prod(Y) * prod(W[1:])
    w = ctx.shape(w_index)
    y = ctx.maybe_shape(0, output=True)
    if y is None or len(y) != len(w):
        x = ctx.shape(x_index, rank=len(w))
        spatial = conv_output_spatial(x[2:], tuple(ctx.attr("kernel_shape", w[2:])), strides=ctx.attr("strides", None),
                                      pads=ctx.attr("pads", None), dilations=ctx.attr("dilations", None),
                                      auto_pad=ctx.attr("auto_pad", "NOTSET"))
        y = (x[0], w[0], *spatial)
    return math.prod(y) * math.prod(w[1:])


def _conv_transpose_macs(ctx: _Ctx) -> int:
    # Each input element is scattered through (Cout/groups) * prod(kernel) weights:
    # N * Cin * prod(in spatial) * (Cout/groups) * prod(kernel) = prod(X) * prod(W[1:]).
    w = ctx.shape(1)
    x = ctx.shape(0, rank=len(w))
    return math.prod(x) * math.prod(w[1:])


def _gemm_macs(ctx: _Ctx) -> int:
    a = ctx.shape(0, rank=2)
    b = ctx.shape(1, rank=2)
    m, k = (a[1], a[0]) if ctx.attr("transA", 0) else a
    n = b[0] if ctx.attr("transB", 0) else b[1]
    return m * n * k


def _matmul_macs(ctx: _Ctx, a_index: int, b_index: int) -> int:
    # numpy semantics: 1-D operands gain (then lose) a dim; batch dims broadcast.
    a = ctx.shape(a_index)
    b = ctx.shape(b_index)
    if not a or not b:
        raise _Unknown
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    try:
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    except ValueError as exc:  # inconsistent model; ORT would reject it too
        raise _Unknown from exc
    return math.prod(batch) * a2[-2] * b2[-1] * a2[-1]


def _einsum_macs(ctx: _Ctx) -> int:
    # Two operands: every combination of all letters is one multiply-add.
    # One operand is a transpose/reduction (no multiplies); three or more depend
    # on contraction order, which ORT picks, so they stay unknown.
    equation = str(ctx.attr("equation", "")).replace(" ", "")
    terms = equation.split("->")[0].split(",")
    if len(terms) == 1:
        return 0
    if len(terms) != 2 or len(ctx.node.input) != 2:
        raise _Unknown
    sizes: dict[str, int] = {}
    ellipses: list[tuple[int, ...]] = []
    for index, term in enumerate(terms):
        shape = ctx.shape(index)
        letters = term.replace("...", "")
        if not re.fullmatch(r"[A-Za-z]*", letters):
            raise _Unknown
        n_ellipsis = len(shape) - len(letters)
        if n_ellipsis < 0 or (n_ellipsis and "..." not in term):
            raise _Unknown
        head = term.split("...")[0] if "..." in term else term
        dims = list(shape)
        if "..." in term:
            ellipses.append(tuple(dims[len(head):len(head) + n_ellipsis]))
            del dims[len(head):len(head) + n_ellipsis]
        for letter, size in zip(letters, dims, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), size)  # a 1 broadcasts against the other operand
    try:
        broadcast = np.broadcast_shapes(*ellipses) if ellipses else ()
    except ValueError as exc:
        raise _Unknown from exc
    return math.prod(sizes.values()) * math.prod(broadcast)


def _rnn_macs(ctx: _Ctx) -> int:
    # Per step and batch row: W (num_dirs*gates*hidden x input) and R (... x hidden) products.
    x = ctx.shape(0, rank=3)
    w = ctx.shape(1, rank=3)
    r = ctx.shape(2, rank=3)
    seq, batch = (x[1], x[0]) if ctx.attr("layout", 0) else (x[0], x[1])
    return seq * batch * (math.prod(w) + math.prod(r))


_MAC_RULES: dict[tuple[str, str], Callable[[_Ctx], int]] = {
    ("", "Conv"): lambda c: _conv_macs(c, 0, 1),
    ("", "ConvInteger"): lambda c: _conv_macs(c, 0, 1),
    ("", "QLinearConv"): lambda c: _conv_macs(c, 0, 3),
    ("", "ConvTranspose"): _conv_transpose_macs,
    ("", "Gemm"): _gemm_macs,
    ("", "MatMul"): lambda c: _matmul_macs(c, 0, 1),
    ("", "MatMulInteger"): lambda c: _matmul_macs(c, 0, 1),
    ("", "QLinearMatMul"): lambda c: _matmul_macs(c, 0, 3),
    ("", "Einsum"): _einsum_macs,
    ("", "RNN"): _rnn_macs,
    ("", "GRU"): _rnn_macs,
    ("", "LSTM"): _rnn_macs,
    # Written by ORT's offline graph optimizer; same maths as the standard op.
    ("com.microsoft", "FusedConv"): lambda c: _conv_macs(c, 0, 1),
    ("com.microsoft", "FusedGemm"): _gemm_macs,
}


def _mac_rule(node: onnx.NodeProto) -> Callable[[_Ctx], int] | None:
    domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
    return _MAC_RULES.get((domain, node.op_type))


def _estimate_macs(model: onnx.ModelProto, shapes: dict[str, Shape]) -> tuple[int, list[OpCost], int]:
    per_op: dict[str, list[int]] = {}  # op -> [count, macs]
    unknown = 0
    for node in _all_nodes(model.graph):
        rule = _mac_rule(node)
        if rule is None:
            continue
        try:
            macs = rule(_Ctx(node, shapes))
        except _Unknown:
            unknown += 1
            continue
        entry = per_op.setdefault(_op_name(node), [0, 0])
        entry[0] += 1
        entry[1] += macs
    costs = sorted((OpCost(op, n, m) for op, (n, m) in per_op.items()), key=lambda c: (-c.macs, c.op_type))
    return sum(c.macs for c in costs), costs, unknown


# --------------------------------------------------------------------------- public API


def summarize(model: onnx.ModelProto, path: Path | None = None, *, batch: int = 1) -> ModelSummary:
    """Everything ``inspect`` shows about ``model`` (read from ``path``, if given); ``model`` is not modified.

    ``batch`` replaces dynamic leading input dims for the MAC estimate only;
    ``inputs``/``outputs`` keep the model's own (possibly symbolic) dims.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    skeleton = _skeleton(model)
    _fix_batch(skeleton, batch)
    inferred = infer_shapes(skeleton)
    macs, macs_by_op, unknown = _estimate_macs(inferred, _shape_table(inferred))

    outputs = graph_outputs(model)
    if any(not v.type.tensor_type.HasField("shape") for v in model.graph.output):
        # Declared outputs without shapes: report inferred ones, with the model's own symbolic batch.
        outputs = graph_outputs(infer_shapes(_skeleton(model)))

    histogram = Counter(_op_name(node) for node in _all_nodes(model.graph))
    parameter_count, parameter_bytes, weight_dtypes = _parameters(model)
    return ModelSummary(
        path=str(path) if path is not None else None,
        file_bytes=_file_bytes(model, path),
        ir_version=int(model.ir_version),
        opset=opset_version(model),
        other_opsets={op.domain: int(op.version) for op in sorted(model.opset_import, key=lambda o: o.domain)
                      if op.domain not in _DEFAULT_DOMAINS},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=graph_inputs(model),
        outputs=outputs,
        node_count=sum(histogram.values()),
        op_histogram=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        parameter_count=parameter_count,
        parameter_bytes=parameter_bytes,
        weight_dtypes=weight_dtypes,
        macs=macs,
        macs_by_op=macs_by_op,
        unknown_shape_ops=unknown,
        has_quantized_ops=any(node.op_type.startswith("QLinear") or node.op_type in _QUANTIZED_OPS
                              for node in _all_nodes(model.graph)),
        batch=batch,
    )


def _tensor_rows(tensors: list[TensorInfo]) -> list[str]:
    if not tensors:
        return ["  (none)"]
    names = [printable(t.name) for t in tensors]  # escaped first, so the columns line up as printed
    name_w = max(len(n) for n in names)
    shapes = ["x".join(str(d) for d in t.shape) or "scalar" for t in tensors]
    shape_w = max(len(s) for s in shapes)
    return [f"  {n:<{name_w}}  {s:<{shape_w}}  {t.dtype}" for n, t, s in zip(names, tensors, shapes, strict=True)]


def format_summary(summary: ModelSummary) -> str:
    """Plain-text report for the terminal (no colour, so it pipes and logs cleanly)."""
    lines: list[str] = []
    if summary.path is not None:
        lines.append(f"Model:       {summary.path} ({human_bytes(summary.file_bytes)})")
    opsets = f"{summary.opset}" + "".join(f", {d} {v}" for d, v in summary.other_opsets.items())
    lines += [
        f"Producer:    {summary.producer or 'unknown'}",
        f"IR version:  {summary.ir_version}    Opset: {opsets}",
        "Inputs:",
        *_tensor_rows(summary.inputs),
        "Outputs:",
        *_tensor_rows(summary.outputs),
    ]
    dtypes = ", ".join(f"{name} {human_count(n)}" for name, n in summary.weight_dtypes.items())
    lines.append(f"Parameters:  {human_count(summary.parameter_count)} ({human_bytes(summary.parameter_bytes)}"
                 + (f"; {dtypes})" if dtypes else ")"))
    macs = f"MACs:        {human_count(summary.macs)} (batch {summary.batch}"
    if summary.unknown_shape_ops:
        macs += f"; {summary.unknown_shape_ops} node(s) with unknown shapes not counted"
    lines.append(macs + ")")
    if summary.has_quantized_ops:
        lines.append("Quantized:   yes (QDQ / integer ops present)")
    lines.append(f"Nodes:       {summary.node_count}")
    if summary.op_histogram:
        macs_of = {c.op_type: c.macs for c in summary.macs_by_op}
        name_w = max(len(op) for op in summary.op_histogram)
        count_w = max(len(str(n)) for n in summary.op_histogram.values())
        for op, count in summary.op_histogram.items():
            row = f"  {op:<{name_w}}  {count:>{count_w}}"
            if op in macs_of:
                row += f"  {human_count(macs_of[op])} MACs"
            lines.append(row.rstrip())
    # Every name, producer string and op type comes from the file: never hand its control characters over.
    return "\n".join(printable(line) for line in lines)
