"""ONNX rewrites applied before onnx2tf, each exact, each a pattern -> check -> rewrite.

Padded MaxPool after ReLU: ONNX pads MaxPool with -inf; onnx2tf lowers that to a PADV2 with a huge
negative constant, and in full-integer TFLite that constant's range sets the quantization of the
ReLU output sharing its parameters (a scale of ~1e36 on a ResNet stem), which LiteRT then
refuses to load. After a ReLU every value is >= 0 and every pooling window holds at least one
real element, so padding with 0 gives the same maxima: an explicit zero Pad plus an unpadded
MaxPool is exact.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


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
