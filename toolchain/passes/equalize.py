"""Cross-layer equalization with bias absorption (Nagel et al., "Data-Free Quantization", ICCV 2019).

For two convolutions joined through a positively homogeneous activation (ReLU, or none), scaling the
first one's output channel i by 1/s_i and the second one's input channel i by s_i leaves the float
function unchanged; choosing s_i = sqrt(r1_i / r2_i) (r: the channel's largest |weight| in either layer)
gives both layers the same per-channel ranges, so one activation scale and the weights' scales fit every
channel (depthwise convolutions, whose channels differ by orders of magnitude, gain most). Chains
(expand -> depthwise -> project) are equalized pair by pair, repeatedly, until the scales settle.

ReLU6 (Clip 0..6) is not homogeneous: clip(x / s, 0, 6) != clip(x, 0, 6) / s, and a scalar Clip cannot
take per-channel bounds, so such pairs are skipped and reported. (Bounding the scales by the calibration
data's per-channel maxima, so that the moved bound never acts on them, was tried on EfficientNet-Lite0:
exact on the calibration images, but held-out photos reach the moved bounds and the FP32 logits moved by
up to 1.8. AIMET and the paper replace ReLU6 by ReLU instead, which changes the FP32 model.)

Bias absorption moves a constant c_i from the first layer's bias into the second layer's bias where
that is exact: an identity junction (c_i = the channel's mid-range on the calibration data, centring it
on zero, which narrows the tensor's one per-tensor range), and only into an unpadded second convolution
(zero padding would not carry the constant). Through a ReLU the paper's c_i = max(0, beta - 3 gamma) is
exact only while the channel stays above c_i, which held-out data need not do, so ReLU junctions are not
absorbed.

Absorption is off by default: on the synthetic depthwise-separable model of ``tests/test_ptq_passes.py``
it narrowed the junction's range threefold and yet raised the INT8 output error on five seeds out of five
(mean |error| 0.23 -> 0.54 on seed 0, against 0.33 without equalization), while equalization alone lowered
it on all five (why is not settled here; the paper's motivation, symmetric activation grids, does not
apply to edgekiln's asymmetric uint8/int8 activations). ``absorb_bias=True`` turns it on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from toolchain.frontends.base import Feed
from toolchain.passes.tensor_stats import channel_axis_stats, stream

SWEEPS = 8
SCALE_LIMITS = (1e-3, 1e3)


@dataclass
class Pair:
    first: onnx.NodeProto
    second: onnx.NodeProto
    activation: str
    """"identity" or "relu"."""


@dataclass
class EqualizeReport:
    pairs: list[tuple[str, str, str]] = field(default_factory=list)
    """(first layer, second layer, activation) of every equalized pair."""
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """(first layer, second layer, why) of the pairs left alone."""
    absorbed: int = 0
    """Channels whose bias constant moved into the next layer."""
    range_spread_before: float = 0.0
    """Median over equalized layers of (largest / median per-channel |weight| range) before the pass."""
    range_spread_after: float = 0.0

    def summary(self) -> str:
        return (f"cross-layer equalization: {len(self.pairs)} layer pairs equalized "
                f"({', '.join(f'{n} {a}' for a, n in self._by_activation().items())}), {len(self.skipped)} skipped; "
                f"per-channel weight range spread (max/median) {self.range_spread_before:.1f} -> "
                f"{self.range_spread_after:.1f}; bias absorbed on {self.absorbed} channels")

    def _by_activation(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, _, activation in self.pairs:
            counts[activation] = counts.get(activation, 0) + 1
        return counts


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and the values of Constant nodes (exporters keep Clip bounds in either)."""
    found = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                found[node.output[0]] = value
    return found


def _clip_bounds(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[float, float] | None:
    if len(node.input) > 1:  # opset 11+: bounds are inputs
        values = []
        for name in (node.input[1] if len(node.input) > 1 else "", node.input[2] if len(node.input) > 2 else ""):
            if not name:
                values.append(None)
            elif name in inits:
                values.append(float(numpy_helper.to_array(inits[name]).reshape(-1)[0]))
            else:
                return None
        low, high = values
    else:
        low, high = _attr(node, "min", None), _attr(node, "max", None)
    return (float("-inf") if low is None else low), (float("inf") if high is None else high)


def _kind(conv: onnx.NodeProto, weight: np.ndarray) -> str | None:
    """"dense" (group 1), "depthwise" (one input channel per group, as many groups as outputs) or None."""
    group = int(_attr(conv, "group", 1))
    if group == 1:
        return "dense"
    if weight.shape[1] == 1 and group == weight.shape[0]:
        return "depthwise"
    return None


def find_pairs(model: onnx.ModelProto) -> tuple[list[Pair], list[tuple[str, str, str]]]:
    """Conv -> (ReLU | ReLU6 | nothing) -> Conv junctions whose middle tensor feeds nothing else."""
    inits = _constants(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1

    # Weights and biases are rewritten in place, so they must be initializers: a Constant node's value
    # (opset-11 exports keep weights there) is read by _constants but cannot be written back.
    initializers = {t.name for t in model.graph.initializer}

    def conv_ok(node: onnx.NodeProto) -> bool:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in initializers:
            return False
        if len(node.input) > 2 and node.input[2] and node.input[2] not in initializers:
            return False
        if any(uses.get(name, 0) > 1 for name in node.input[1:] if name):
            return False  # a shared weight or bias would change another layer too
        return _kind(node, numpy_helper.to_array(inits[node.input[1]])) is not None

    pairs, skipped = [], []
    for node in model.graph.node:
        if not conv_ok(node):
            continue
        after = node.output[0]
        activation = "identity"
        nexts = consumers.get(after, [])
        if len(nexts) == 1 and nexts[0].op_type in ("Relu", "Clip") and after not in outputs:
            act = nexts[0]
            if act.op_type == "Relu":
                activation = "relu"
            else:
                bounds = _clip_bounds(act, inits)
                if bounds is None or bounds[0] != 0.0:
                    skipped.append((node.name, act.name, "Clip with bounds other than 0..max"))
                    continue
                if bounds[1] != float("inf"):
                    skipped.append((node.name, act.name, f"Clip 0..{bounds[1]:g} (ReLU6): its bound cannot follow "
                                                         f"per-channel scales"))
                    continue
                activation = "relu"
            after = act.output[0]
            nexts = consumers.get(after, [])
        if len(nexts) != 1 or after in outputs:
            continue
        second = nexts[0]
        if second.op_type != "Conv" or second.input[0] != after:
            continue
        if not conv_ok(second):
            skipped.append((node.name, second.name, "grouped (not depthwise) or shared weights"))
            continue
        pairs.append(Pair(node, second, activation))
    return pairs, skipped


def _weights(inits: dict[str, onnx.TensorProto], node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray | None]:
    weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    bias = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2] else None)
    return weight, bias


def _out_ranges(weight: np.ndarray) -> np.ndarray:
    return np.abs(weight).reshape(weight.shape[0], -1).max(1)


def _in_ranges(weight: np.ndarray, kind: str) -> np.ndarray:
    if kind == "depthwise":
        return _out_ranges(weight)
    return np.abs(np.moveaxis(weight, 1, 0)).reshape(weight.shape[1], -1).max(1)


def _spread(weight: np.ndarray) -> float:
    ranges = _out_ranges(weight)
    median = float(np.median(ranges))
    return float(ranges.max() / median) if median > 0 else 1.0


def _unpadded(conv: onnx.NodeProto) -> bool:
    return not any(_attr(conv, "pads", [0]) or [0]) and _attr(conv, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET",
                                                                                                b"VALID", "VALID")


def equalize(model: onnx.ModelProto, feeds: Iterable[Feed],
             absorb_bias: bool = False) -> tuple[onnx.ModelProto, EqualizeReport]:
    """``model`` with every eligible Conv pair equalized (see the module doc); ``feeds`` give the per-channel
    ranges that bias absorption is computed from."""
    pairs, skipped = find_pairs(model)
    report = EqualizeReport(skipped=skipped)
    if not pairs:
        return model, report
    lows: dict[str, np.ndarray] = {}
    highs: dict[str, np.ndarray] = {}

    def consume(values: dict[str, np.ndarray]) -> None:
        for pair in pairs:
            name = pair.first.output[0]
            low, high, _, _ = channel_axis_stats(values[name])
            lows[name] = np.minimum(lows[name], low) if name in lows else low
            highs[name] = np.maximum(highs[name], high) if name in highs else high

    stream(model, feeds, [p.first.output[0] for p in pairs], consume)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    inits = {t.name: t for t in result.graph.initializer}
    weights = {}
    for pair in pairs:
        for node in (pair.first, pair.second):
            weights.setdefault(node.name, list(_weights(inits, node)))
    spreads_before = {name: _spread(w) for name, (w, _) in weights.items()}
    for _ in range(SWEEPS):
        largest_change = 0.0
        for pair in pairs:
            w1, b1 = weights[pair.first.name]
            w2, _ = weights[pair.second.name]
            kind2 = _kind(pair.second, w2)
            r1, r2 = _out_ranges(w1), _in_ranges(w2, kind2)
            with np.errstate(divide="ignore", invalid="ignore"):
                scales = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / r2), 1.0)
            scales = np.clip(scales, *SCALE_LIMITS)
            name = pair.first.output[0]
            largest_change = max(largest_change, float(np.abs(np.log(scales)).max()))
            w1 /= scales.reshape(-1, *([1] * (w1.ndim - 1)))
            if b1 is not None:
                b1 /= scales
            if kind2 == "depthwise":
                w2 *= scales.reshape(-1, *([1] * (w2.ndim - 1)))
            else:
                w2 *= scales.reshape(1, -1, *([1] * (w2.ndim - 2)))
            lows[name], highs[name] = lows[name] / scales, highs[name] / scales
        if largest_change < 1e-3:
            break
    report.pairs = [(p.first.name, p.second.name, p.activation) for p in pairs]
    if absorb_bias:
        report.absorbed = _absorb(pairs, weights, lows, highs)
    for node_name, (weight, bias) in weights.items():
        node = next(n for n in result.graph.node if n.name == node_name)
        dtype = numpy_helper.to_array(inits[node.input[1]]).dtype
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight.astype(dtype), node.input[1]))
        if bias is not None:
            if len(node.input) > 2 and node.input[2]:
                inits[node.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(dtype), node.input[2]))
            else:
                name = f"{node.name}_absorbed_bias"
                result.graph.initializer.append(numpy_helper.from_array(bias.astype(dtype), name))
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2] = name
    report.range_spread_before = float(np.median(list(spreads_before.values())))
    report.range_spread_after = float(np.median([_spread(w) for w, _ in weights.values()]))
    return result, report


def _absorb(pairs: list[Pair], weights: dict[str, list], lows: dict[str, np.ndarray],
            highs: dict[str, np.ndarray]) -> int:
    """Move exact constants from each pair's first bias into its second (see the module doc)."""
    moved = 0
    for pair in pairs:
        w1, b1 = weights[pair.first.name]
        w2, b2 = weights[pair.second.name]
        if b1 is None or pair.activation != "identity" or not _unpadded(pair.second):
            continue
        name = pair.first.output[0]
        shift = (lows[name] + highs[name]) / 2
        if not np.any(shift):
            continue
        kind2 = _kind(pair.second, w2)
        if kind2 == "depthwise":
            carried = shift * w2.reshape(w2.shape[0], -1).sum(1)
        else:
            carried = (w2.reshape(w2.shape[0], w2.shape[1], -1).sum(2) * shift[None, :]).sum(1)
        weights[pair.first.name][1] = b1 - shift
        weights[pair.second.name][1] = (b2 if b2 is not None else np.zeros(w2.shape[0])) + carried
        lows[name], highs[name] = lows[name] - shift, highs[name] - shift
        moved += int(np.count_nonzero(shift))
    return moved
