"""Learned weight rounding: choose each weight's rounding direction to minimise the layer's output error.

Rounding every weight to its nearest INT8 level minimises the weights' own error, not the layer's output
error: when a layer's inputs are correlated (an image's three channels, a normalised input with a large
common offset) the small rounding errors add up along that direction (Nagel et al., "Up or Down? Adaptive
Rounding for Post-Training Quantization" (AdaRound), ICML 2020). Here the layer-output error
``(W_q - W) H (W_q - W)^T`` with ``H = E[x x^T]`` over the layer's FP32 inputs on the calibration feeds is
reduced column by column with the optimal-brain-quantization update of GPTQ (Frantar et al., 2022):
each column is rounded, and its error is pushed onto the columns not yet rounded through ``H``'s
inverse. Unlike GPTQ, and as in AdaRound, a weight may only go to the level just below or just above its
FP32 value, so the per-channel scale ONNX Runtime's quantizer derives from the weights' absolute maximum
(which is on the grid and never moves) stays the same: the rounded float weights are on the grid, and
the quantizer turns them into exactly these integers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from toolchain.frontends.base import Feed
from toolchain.passes.tensor_stats import stream

BLOCK = 64
POSITIONS = 32
"""Output positions per side sampled per feature map for H (so at most 32 x 32 per sample)."""
DAMPING = 0.01
"""Added to H's diagonal, as a share of its mean: keeps the inverse stable for nearly dead inputs."""


@dataclass
class RoundingReport:
    layers: int = 0
    error_nearest: float = 0.0
    """Sum over layers of the layer-output MSE of nearest rounding, relative to the output's power."""
    error_learned: float = 0.0
    worst: list[tuple[str, float, float]] = field(default_factory=list)
    """(layer, relative error nearest, learned) of the layers nearest rounding hurt most."""
    skipped: str = ""

    def summary(self) -> str:
        if self.skipped:
            return f"learned weight rounding: not applied ({self.skipped})"
        reduction = 1 - self.error_learned / self.error_nearest if self.error_nearest > 0 else 0.0
        worst = ", ".join(f"{n} {a:.2e} -> {b:.2e}" for n, a, b in self.worst[:3])
        return (f"learned weight rounding: {self.layers} layers; layer-output error of the weights (relative, summed) "
                f"{self.error_nearest:.3g} -> {self.error_learned:.3g} ({100 * reduction:.0f}% less; largest: {worst})")


@dataclass
class _Layer:
    node: onnx.NodeProto
    weight_name: str
    kind: str
    """"dense" (Conv group 1), "depthwise", "gemm" (weight [out, in]) or "gemm_t" (weight [in, out])."""
    qmax: int
    hessian: np.ndarray | None = None
    count: int = 0


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _patches(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, int]) -> np.ndarray:
    """[N, C, OH, OW, kh, kw] windows of ``x`` as the Conv ``node`` sees them (explicit pads only)."""
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    strides = list(_attr(node, "strides", [1, 1]))
    dilations = list(_attr(node, "dilations", [1, 1]))
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = ((kernel[0] - 1) * dilations[0] + 1, (kernel[1] - 1) * dilations[1] + 1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))
    return windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]


def _eligible(model: onnx.ModelProto, reduce_range: bool, depthwise_full_range: bool) -> list[_Layer]:
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if uses.get(node.input[1], 0) > 1 or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        dims = list(inits[node.input[1]].dims)
        if node.op_type == "Conv":
            if len(dims) != 4:
                continue
            group = int(_attr(node, "group", 1))
            kind = "dense" if group == 1 else "depthwise" if dims[1] == 1 and group == dims[0] else None
        else:
            kind = None if _attr(node, "transA", 0) else ("gemm" if _attr(node, "transB", 0) else "gemm_t")
        if kind is None:
            continue
        seven_bit = reduce_range and not (kind == "depthwise" and depthwise_full_range)
        layers.append(_Layer(node, node.input[1], kind, 64 if seven_bit else 127))
    return layers


def _subgrid(windows: np.ndarray) -> np.ndarray:
    """Every few output positions (at most ~``POSITIONS``^2 per sample): H is an average, and a regular
    subset estimates it well at a fraction of the cost on large feature maps."""
    step_h, step_w = (max(1, -(-size // POSITIONS)) for size in windows.shape[2:4])
    return windows[:, :, step_h // 2::step_h, step_w // 2::step_w]


def _accumulate(layer: _Layer, x: np.ndarray, weight_shape: tuple[int, ...]) -> None:
    x = np.asarray(x, np.float32)
    if layer.kind == "depthwise":
        windows = _subgrid(_patches(x, layer.node, tuple(weight_shape[2:])))  # [N, C, OH, OW, kh, kw]
        k = weight_shape[2] * weight_shape[3]
        columns = np.moveaxis(windows.reshape(*windows.shape[:2], -1, k), 1, 0).reshape(windows.shape[1], -1, k)
        hessian = np.matmul(np.swapaxes(columns, 1, 2), columns)  # [C, k, k], BLAS rather than einsum
        count = columns.shape[1]
    else:
        if layer.kind == "dense":
            if tuple(weight_shape[2:]) == (1, 1) and not any(_attr(layer.node, "pads", [0])) and \
                    all(s == 1 for s in _attr(layer.node, "strides", [1, 1])):
                step_h, step_w = (max(1, -(-size // POSITIONS)) for size in x.shape[2:4])
                sub = x[:, :, step_h // 2::step_h, step_w // 2::step_w]
                columns = np.moveaxis(sub, 1, -1).reshape(-1, x.shape[1])
            else:
                windows = _subgrid(_patches(x, layer.node, tuple(weight_shape[2:])))  # [N, C, OH, OW, kh, kw]
                columns = np.transpose(windows, (0, 2, 3, 1, 4, 5)).reshape(-1, int(np.prod(weight_shape[1:])))
        else:
            columns = x.reshape(x.shape[0], -1)
        hessian = columns.T @ columns
        count = columns.shape[0]
    hessian = hessian.astype(np.float64)
    layer.hessian = hessian if layer.hessian is None else layer.hessian + hessian
    layer.count += count


def _round_rows(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """GPTQ's column sweep with each weight held to its two neighbouring levels. ``weight`` [rows, d];
    ``hessian`` [d, d] shared by every row, or [rows, d, d] one per row; ``scale`` [rows]."""
    rows, width = weight.shape
    shared = hessian.ndim == 2
    h = hessian.copy() if shared else hessian.copy()
    diagonal = np.diagonal(h, axis1=-2, axis2=-1)
    damp = DAMPING * np.maximum(diagonal.mean(-1), 1e-12)
    h += (damp[..., None, None] if not shared else damp) * np.eye(width)
    inverse = np.linalg.inv(h)
    upper = np.swapaxes(np.linalg.cholesky(inverse), -1, -2)  # H^-1 = U^T U
    level = weight / scale[:, None]
    low, high = np.clip(np.floor(level), -qmax, qmax), np.clip(np.ceil(level), -qmax, qmax)
    work = weight.copy()
    result = np.empty_like(weight)
    if shared:  # GPTQ's lazy batch updates: columns in blocks, one matrix product per block for the rest
        for start in range(0, width, BLOCK):
            stop = min(start + BLOCK, width)
            block = work[:, start:stop].copy()
            errors = np.empty_like(block)
            for j in range(stop - start):
                col = start + j
                q = np.clip(np.round(block[:, j] / scale), low[:, col], high[:, col])
                result[:, col] = q * scale
                errors[:, j] = (block[:, j] - result[:, col]) / upper[col, col]
                block[:, j + 1:] -= errors[:, j:j + 1] * upper[col, col + 1:stop][None, :]
            work[:, stop:] -= errors @ upper[start:stop, stop:]
        return result
    for j in range(width):
        q = np.clip(np.round(work[:, j] / scale), low[:, j], high[:, j])
        result[:, j] = q * scale
        pivot = upper[j, j] if shared else upper[:, j, j]
        error = (work[:, j] - result[:, j]) / pivot
        if j + 1 < width:
            tail = upper[j, j + 1:][None, :] if shared else upper[:, j, j + 1:]
            work[:, j + 1:] -= error[:, None] * tail
    return result


def _output_error(delta: np.ndarray, hessian: np.ndarray) -> float:
    if hessian.ndim == 2:
        return float(((delta @ hessian) * delta).sum())
    return float((np.matmul(delta[:, None, :], hessian)[:, 0, :] * delta).sum())


def round_weights(model: onnx.ModelProto, feeds: Iterable[Feed], *, reduce_range: bool, depthwise_full_range: bool,
                  per_channel: bool) -> tuple[onnx.ModelProto, RoundingReport]:
    """``model`` with the weights of its Conv/Gemm layers rounded to their INT8 levels as above."""
    report = RoundingReport()
    if not per_channel:
        report.skipped = "it keeps the per-channel scales; per-tensor weights are not supported"
        return model, report
    layers = _eligible(model, reduce_range, depthwise_full_range)
    if not layers:
        return model, report
    inits = {t.name: t for t in model.graph.initializer}
    shapes = {layer.node.name: tuple(inits[layer.weight_name].dims) for layer in layers}

    def consume(values: dict[str, np.ndarray]) -> None:
        for layer in layers:
            _accumulate(layer, values[layer.node.input[0]], shapes[layer.node.name])

    stream(model, feeds, [layer.node.input[0] for layer in layers], consume)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    out_inits = {t.name: t for t in result.graph.initializer}
    worst = []
    for layer in layers:
        if layer.hessian is None or layer.count == 0:
            continue
        tensor = out_inits[layer.weight_name]
        original = numpy_helper.to_array(tensor)
        weight = original.astype(np.float64)
        if layer.kind == "gemm_t":
            weight = weight.T
        matrix = weight.reshape(weight.shape[0], -1)
        hessian = layer.hessian / layer.count
        absmax = np.abs(matrix).max(1)
        scale = np.where(absmax > 0, absmax / layer.qmax, 1.0)
        rounded = _round_rows(matrix, hessian, scale, layer.qmax)
        nearest = np.clip(np.round(matrix / scale[:, None]), -layer.qmax, layer.qmax) * scale[:, None]
        power = _output_error(matrix, hessian)
        before = _output_error(nearest - matrix, hessian) / max(power, 1e-30)
        after = _output_error(rounded - matrix, hessian) / max(power, 1e-30)
        if after >= before:  # the sweep only promises less error; keep nearest where it did not deliver
            continue
        report.layers += 1
        report.error_nearest += before
        report.error_learned += after
        worst.append((layer.node.name, before, after))
        new = rounded.reshape(weight.shape)
        if layer.kind == "gemm_t":
            new = new.T
        tensor.CopyFrom(numpy_helper.from_array(new.astype(original.dtype), layer.weight_name))
    report.worst = sorted(worst, key=lambda item: -item[1])[:5]
    return result, report
