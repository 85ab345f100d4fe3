"""ONNX rewrites applied before onnx2tf, each exact, each a pattern -> check -> rewrite.

Node names TensorFlow refuses: onnx2tf passes some ONNX node names straight to TensorFlow as op names
(Softmax, for one), and TensorFlow only takes names matching ``[A-Za-z0-9_.\\/>-]`` (starting with a
letter, digit or dot). Paddle2ONNX names every node ``Op@N`` (PP-OCR: ``Softmax@0``), so its models
failed with "'Softmax@0' is not a valid scope name". Node names carry no meaning in the graph's
arithmetic, so renaming them is exact; tensor names and the graph's inputs and outputs stay as they are.

Constant nodes: onnx2tf lays out the output of a Constant node as if it were an activation (a 3-D
``[1, 2, N]`` becomes ``[1, N, 2]``) but leaves the tensors it meets unchanged, so a later Concat joins
mismatched layouts (YOLOv8's anchor grid: "Dimension 0 in both shapes must be equal" at
``/model.22/Concat_25``). It takes initializers as given, so each Constant becomes the initializer it
denotes: the same tensor, bit for bit.

Padded MaxPool after ReLU: ONNX pads MaxPool with -inf; onnx2tf lowers that to a PADV2 with a huge
negative constant, and in full-integer TFLite that constant's range sets the quantization of the
ReLU output sharing its parameters (a scale of ~1e36 on a ResNet stem), which LiteRT then
refuses to load. After a ReLU every value is >= 0 and every pooling window holds at least one
real element, so padding with 0 gives the same maxima: an explicit zero Pad plus an unpadded
MaxPool is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

_TF_NAME_CHAR = re.compile(r"[^A-Za-z0-9_.\\/>-]")
_TF_NAME_START = re.compile(r"[A-Za-z0-9.]")


def tf_safe_name(name: str) -> str:
    """``name`` with every character TensorFlow refuses in an op name replaced by ``_``."""
    safe = _TF_NAME_CHAR.sub("_", name)
    return safe if not safe or _TF_NAME_START.match(safe) else f"n{safe}"


def tf_safe_node_names(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` whose node names TensorFlow accepts (kept unique), and new name -> old name."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    taken = {node.name for node in result.graph.node}
    renamed: dict[str, str] = {}
    for node in result.graph.node:
        safe = tf_safe_name(node.name)
        if safe == node.name:
            continue
        candidate, suffix = safe, 1
        while candidate in taken:
            candidate, suffix = f"{safe}_{suffix}", suffix + 1
        taken.add(candidate)
        renamed[candidate] = node.name
        node.name = candidate
    return result, renamed


def _pads(node: onnx.NodeProto) -> list[int]:
    for attribute in node.attribute:
        if attribute.name == "pads":
            return list(attribute.ints)
    return []


def _zero_pad_rejection(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> str | None:
    """Why this node is not rewritten (None: rewrite it)."""
    if node.op_type != "MaxPool":
        return "not a MaxPool"
    if not any(_pads(node)):
        return "no padding"
    if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in node.attribute):
        return "auto_pad padding"
    producer = producers.get(node.input[0])
    if producer is None or producer.op_type != "Relu":
        return "input is not a ReLU output (may be negative)"
    return None


def zero_pad_maxpools(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every padded MaxPool after a ReLU rewritten as zero Pad + MaxPool."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    producers = {out: node for node in graph.node for out in node.output}
    nodes, rewritten = [], 0
    for index, node in enumerate(graph.node):
        if _zero_pad_rejection(node, producers) is None:
            pads = _pads(node)
            half = len(pads) // 2
            name = f"{node.name or f'maxpool_{index}'}_zero_pad"
            graph.initializer.append(numpy_helper.from_array(
                np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], np.int64), f"{name}_pads"))
            nodes.append(helper.make_node("Pad", [node.input[0], f"{name}_pads"], [f"{name}_out"], name=name,
                                          mode="constant"))
            node.input[0] = f"{name}_out"
            next(a for a in node.attribute if a.name == "pads").ints[:] = [0] * len(pads)
            rewritten += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return result, rewritten


_CONSTANT_VALUES = {"value": lambda a: numpy_helper.to_array(a.t),
                    "value_float": lambda a: np.array(a.f, np.float32),
                    "value_floats": lambda a: np.array(list(a.floats), np.float32),
                    "value_int": lambda a: np.array(a.i, np.int64),
                    "value_ints": lambda a: np.array(list(a.ints), np.int64)}


def constants_as_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with each dense Constant node of the main graph replaced by an initializer."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    outputs = {value.name for value in graph.output}
    kept, folded = [], 0
    for node in graph.node:
        value = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if value is None or value.name not in _CONSTANT_VALUES or node.output[0] in outputs:
            kept.append(node)  # sparse or string constants, and graph outputs, stay nodes
            continue
        graph.initializer.append(numpy_helper.from_array(_CONSTANT_VALUES[value.name](value), node.output[0]))
        folded += 1
    del graph.node[:]
    graph.node.extend(kept)
    return result, folded


@dataclass
class Prepared:
    model: onnx.ModelProto
    notes: list[str]
    """One line for each rewrite that changed something."""
    original_names: dict[str, str]
    """Renamed node -> the user's node name (for messages)."""


def prepare_for_onnx2tf(model: onnx.ModelProto) -> Prepared:
    """Every exact rewrite above, in order."""
    notes = []
    model, renamed = tf_safe_node_names(model)
    if renamed:
        notes.append(f"{len(renamed)} node name(s) TensorFlow refuses renamed (names only: exact)")
    model, folded = constants_as_initializers(model)
    if folded:
        notes.append(f"{folded} Constant node(s) made initializers (the same tensors)")
    model, rewritten = zero_pad_maxpools(model)
    if rewritten:
        notes.append(f"{rewritten} padded MaxPool(s) after ReLU made explicit zero pads (exact)")
    return Prepared(model, notes, renamed)
