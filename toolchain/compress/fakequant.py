"""Fake quantization of a PyTorch module, in exactly the INT8 scheme edgekiln's PTQ writes.

What is simulated, and why it matches the QDQ model ``toolchain.passes.quantize``
builds with ONNX Runtime's quantizer from the exported ONNX:

* BatchNorm folded into the convolution before it, as the ONNX export does (the
  TorchScript exporter folds every Conv whose output only feeds an eval-mode
  BatchNorm): such a convolution runs with the folded weight
  ``w * gamma / sqrt(running_var + eps)`` and bias ``beta + (b - mean) * gamma /
  sqrt(running_var + eps)``, computed with the exporter's float32 operations in the
  exporter's order (so bit for bit the initializers ORT quantizes), and the BatchNorm
  is skipped. Quantizing the convolution's own weight instead is not the same grid:
  a negative gamma flips the sign, and the last float bit of the folded weight
  decides the int4 ties (see below). Which convolutions are folded is found on
  one calibration image, by forward hooks and the autograd graph;
* weights of every Conv/Linear (folded where folded): symmetric, one scale per output
  channel, recomputed from the current weights on every forward pass as ORT
  computes them from the final ones, with ORT's arithmetic: ``compute_scale_zp``'s
  scale ``2 * absmax / (qmax - qmin)`` in float64 over ORT's symmetric range
  ([-127, 127] for int8, [-8, 7] for int4, hence absmax / 7.5), stored as float32;
  then ``quantize_nparray``: a float32 *division* by the scale, numpy's
  round-half-to-even, saturation to the type's range. The channel's extreme int4
  weight divides to +-7.5 give or take an ulp, where -7.5 is a tie between -8 and
  -7: torch's ``fake_quantize_*`` (a multiplication by 1/scale) can break it the
  other way. int8 weights with a bias get ORT's scale increase for biases that would
  overflow int32 (``_adjust_weight_scale_for_int32_bias``); the bias itself stays
  float (ORT's int32 bias rounding is far below the weights');
* the input of every Conv/Linear and the model's output: per-tensor, with the
  target's activation type (uint8 asymmetric for ONNX Runtime, int8 symmetric for
  TensorRT, int8 asymmetric for TFLite), quantized as ONNX's QuantizeLinear does
  (division, round-half-to-even, saturation). Scale and zero point come from ORT's
  own ``compute_scale_zp`` on min/max ranges measured over the calibration images on
  the *float* model (weights unquantized, BatchNorm folded), as PTQ's MinMax
  calibrator measures them on the FP32 ONNX.

Gradients use the straight-through estimator (identity where a value was not
saturated, zero where it was), so they reach the weights and, through the fold,
BatchNorm's gamma and beta. BatchNorm stays in eval mode: its statistics are frozen.

Weights go through ``torch.nn.utils.parametrize`` and inputs through forward
pre-hooks, so the user's module code is untouched and any ``nn.Module`` works
without tracing.
"""

from __future__ import annotations

import copy
import functools
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.errors import UsageError
from toolchain.lazy import require

_PURPOSE = "Quantization-aware training"
_CALIBRATION_BATCH = 64
# Parametrized tensors are stored under these keys; the plain module stores them as "<name>.weight"/"<name>.bias".
_ORIGINAL = re.compile(r"\.parametrizations\.(weight|bias)\.original$")
# ORT's check that an int32 bias fits (qdq_quantizer._adjust_weight_scale_for_int32_bias).
_INT32_BIAS_RANGE = float(np.iinfo(np.int32).max) - float(np.iinfo(np.int32).min + 1)
_BIAS_EPSILON = 1.0001
# Set on a BatchNorm folded into the convolution before it: "bias" (it adds the folded bias) or "identity".
_FOLD_ATTRIBUTE = "_edgekiln_folded"


@dataclass(frozen=True)
class QuantScheme:
    """The INT8 scheme, from the same ``QuantizeConfig`` the PTQ pass uses for the target."""

    activation_type: str  # "uint8" | "int8"
    activation_symmetric: bool
    weight_bits: int = 8
    reduce_range: bool = False
    """7-bit weights ([-64, 64]), the x86 scheme for CPUs without VNNI (8-bit weights only)."""

    @classmethod
    def from_config(cls, config: Any, weight_bits: int = 8) -> "QuantScheme":
        if config.weight_type != "int8" or not config.weight_symmetric or not config.per_channel:
            raise UsageError("QAT simulates int8 symmetric per-channel weights only (the PTQ default)")
        return cls(config.activation_type, config.activation_symmetric, weight_bits,
                   bool(config.reduce_range) and weight_bits == 8)

    def _activation_qtype(self) -> int:
        import onnx

        return onnx.TensorProto.UINT8 if self.activation_type == "uint8" else onnx.TensorProto.INT8

    def _weight_qtype(self) -> int:
        import onnx

        return onnx.TensorProto.INT4 if self.weight_bits == 4 else onnx.TensorProto.INT8

    def activation_range(self) -> tuple[int, int]:
        """The range ORT computes activation scales over ([-127, 127] for symmetric int8)."""
        from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

        qmin, qmax = get_qmin_qmax_for_qType(self._activation_qtype(), symmetric=self.activation_symmetric)
        return int(qmin), int(qmax)

    def activation_clip(self) -> tuple[int, int]:
        """What QuantizeLinear saturates activations to: the type's whole range."""
        from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

        qmin, qmax = get_qmin_qmax_for_qType(self._activation_qtype())
        return int(qmin), int(qmax)

    def weight_range(self) -> tuple[int, int]:
        """ORT's symmetric weight range: [-127, 127] for int8 ([-64, 64] reduced), [-8, 7] for int4 (absmax / 7.5)."""
        from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

        qmin, qmax = get_qmin_qmax_for_qType(self._weight_qtype(), reduce_range=self.reduce_range, symmetric=True)
        return int(qmin), int(qmax)

    def weight_clip(self) -> tuple[int, int]:
        """What ORT's ``quantize_nparray`` saturates weights to: the type's whole range ([-128, 127], [-8, 7])."""
        from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

        qmin, qmax = get_qmin_qmax_for_qType(self._weight_qtype())
        return int(qmin), int(qmax)


def activation_qparams(low: float, high: float, scheme: QuantScheme) -> tuple[float, int]:
    """Scale and zero point for a measured range, by ONNX Runtime's own formula."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    qmin, qmax = scheme.activation_range()
    dtype = np.uint8 if scheme.activation_type == "uint8" else np.int8
    zero_point, scale = compute_scale_zp(np.array(low, np.float32), np.array(high, np.float32),
                                         np.array(qmin, dtype), np.array(qmax, dtype),
                                         symmetric=scheme.activation_symmetric)
    return float(scale), int(zero_point)


def fake_quantize(x: Any, scale: Any, zero_point: Any, low: int, high: int) -> Any:
    """QuantizeLinear then DequantizeLinear, computed as ONNX Runtime computes them, with a straight-through gradient.

    ``round_half_to_even(x / scale) + zero_point`` saturated to [low, high], times ``scale`` after
    removing the zero point. The division is a float32 division, as numpy's and ORT's: torch's
    ``fake_quantize_*`` multiply by ``1 / scale`` instead, which rounds differently on ties. The value
    is exactly the dequantized one; the gradient is 1 where ``x`` was not saturated, else 0.
    """
    import torch

    q = torch.round(x.detach() / scale) + zero_point
    inside = (q >= low) & (q <= high)
    value = (q.clamp(low, high) - zero_point) * scale
    return value + (x - x.detach()) * inside


def weight_scales(weight: Any, axis: int, qmin: int, qmax: int, *, bias: Any = None,
                  input_scale: Any = None) -> Any:
    """ORT's symmetric per-channel scales of ``weight`` (float32, one per index of ``axis``).

    ``compute_scale_zp``: ``(absmax - (-absmax)) / (qmax - qmin)`` in float64, 1.0 where that is below
    float32's smallest normal (all-zero channels), then float32. With ``bias`` and ``input_scale`` (int8
    weights), ORT's ``_adjust_weight_scale_for_int32_bias``: a channel whose bias would overflow int32
    at scale ``input_scale * weight_scale`` gets a larger weight scale.
    """
    import torch

    weight = weight.detach()
    dims = [d for d in range(weight.dim()) if d != axis]
    absmax = weight.abs().amax(dim=dims) if dims else weight.abs()
    scale = absmax.double() * 2.0 / float(qmax - qmin)
    scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale).float()
    if bias is None or input_scale is None or bias.numel() != scale.numel():
        return scale
    # Float32 products as numpy computes them (python floats are weak scalars), then float64.
    smallest = ((2.0 * bias.detach().abs().float()) * _BIAS_EPSILON).double() / _INT32_BIAS_RANGE
    candidate = input_scale.detach().double() * scale.double()
    adjust = (candidate < smallest) & (candidate > 0.0)
    if bool(adjust.any()):
        ratio = smallest / torch.where(adjust, candidate, torch.ones_like(candidate))
        scale = torch.where(adjust, (scale.double() * ratio).float(), scale)
    return scale


def batchnorm_scale(bn: Any) -> Any:
    """``gamma / sqrt(running_var + eps)``, float32, in the order the ONNX exporter folds it (eval_peephole)."""
    import torch

    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)  # affine=False: ones
    return gamma / torch.sqrt(bn.running_var + bn.eps)


def fold_weight(weight: Any, bn: Any) -> Any:
    """The convolution weight with ``bn`` folded in, bit for bit the exporter's (per output channel, float32)."""
    return weight * batchnorm_scale(bn).reshape(-1, *([1] * (weight.dim() - 1)))


def fold_bias(bn: Any, bias: Any = None) -> Any:
    """The folded bias: ``beta - mean * s`` without a conv bias, ``(b - mean) * s + beta`` with one (exporter order)."""
    import torch

    scale = batchnorm_scale(bn)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)  # affine=False: zeros
    if bias is None:
        return beta - bn.running_mean * scale
    return (bias - bn.running_mean) * scale + beta


@functools.cache
def _module_classes() -> tuple[type, type, type, type]:
    """The nn.Module subclasses, defined on first use so importing this module needs no torch."""
    torch = require("torch", _PURPOSE)
    nn = torch.nn

    class ActivationQuant(nn.Module):
        """Per-tensor fake quantization; in observing mode it records min/max and passes values through."""

        def __init__(self, qmin: int, qmax: int, clip: tuple[int, int] | None = None) -> None:
            super().__init__()
            self.qmin, self.qmax = qmin, qmax
            self.low_q, self.high_q = clip if clip is not None else (qmin, qmax)
            self.observing = False
            self.register_buffer("scale", torch.tensor(1.0))
            self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
            self.register_buffer("low", torch.tensor(float("inf")))
            self.register_buffer("high", torch.tensor(float("-inf")))

        def forward(self, x: Any) -> Any:
            if self.observing:
                self.low = torch.minimum(self.low, x.detach().min().float())
                self.high = torch.maximum(self.high, x.detach().max().float())
                return x
            return fake_quantize(x, self.scale, self.zero_point.float(), self.low_q, self.high_q)

    class WeightQuant(nn.Module):
        """Parametrization: symmetric per-output-channel fake quantization of a (BatchNorm-folded) weight.

        ``enabled`` False gives the float weight (folded where folded): what PTQ's calibrator runs.
        The layer and the folded BatchNorm are kept in plain lists, not as submodules, so that
        they are not saved a second time in the state dict.
        """

        def __init__(self, axis: int, qmin: int, qmax: int, clip: tuple[int, int] | None = None,
                     adjust_for_bias: bool = False) -> None:
            super().__init__()
            self.axis, self.qmin, self.qmax = axis, qmin, qmax
            self.low_q, self.high_q = clip if clip is not None else (qmin, qmax)
            self.adjust_for_bias = adjust_for_bias
            self.enabled = True
            self.layer: list[Any] = []
            self.batchnorm: list[Any] = []

        def float_weight(self, weight: Any) -> Any:
            return fold_weight(weight, self.batchnorm[0]) if self.batchnorm else weight

        def forward(self, weight: Any) -> Any:
            weight = self.float_weight(weight)
            if not self.enabled:
                return weight
            bias = input_scale = None
            if self.adjust_for_bias and self.layer:
                bias, input_scale = exported_bias(self.layer[0]), self.layer[0].input_quant.scale
            scale = weight_scales(weight, self.axis, self.qmin, self.qmax, bias=bias, input_scale=input_scale)
            shape = [1] * weight.dim()
            shape[self.axis] = -1
            return fake_quantize(weight, scale.reshape(shape), 0.0, self.low_q, self.high_q)

    class FoldedBias(nn.Module):
        """Parametrization of a folded convolution's own bias: the folded bias."""

        def __init__(self, batchnorm: Any) -> None:
            super().__init__()
            self.batchnorm = [batchnorm]

        def forward(self, bias: Any) -> Any:
            return fold_bias(self.batchnorm[0], bias)

    class FakeQuantModel(nn.Module):
        """The instrumented copy plus the output quantizer; BatchNorm stays frozen in train mode too."""

        def __init__(self, model: Any, output_quant: Any) -> None:
            super().__init__()
            self.model = model
            self.output_quant = output_quant
            self.folded: list[tuple[str, str]] | None = None  # (conv, batchnorm) names, once calibrated

        def forward(self, *args: Any) -> Any:
            out = self.model(*args)
            return self.output_quant(out) if isinstance(out, torch.Tensor) else out

        def train(self, mode: bool = True) -> Any:
            super().train(mode)
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
            return self

    return ActivationQuant, WeightQuant, FakeQuantModel, FoldedBias


def weighted_layers(model: Any) -> list[tuple[str, Any, int]]:
    """(name, module, output-channel axis of its weight) for every Conv and Linear."""
    torch = require("torch", _PURPOSE)
    nn = torch.nn
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            found.append((name, module, 0))
        elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            found.append((name, module, 1))  # (in, out/groups, ...): ORT's per-channel axis for ConvTranspose
    return found


def fake_quant_model(model: Any, scheme: QuantScheme) -> Any:
    """An instrumented deep copy of ``model`` (the original is not changed); calibrate it before use.

    ``calibrate`` also finds the Conv+BatchNorm pairs the ONNX export folds and folds them here too.
    """
    torch = require("torch", _PURPOSE)
    from torch.nn.utils import parametrize

    # A .pt2 program's module() is an fx.GraphModule of aten calls: no Conv/Linear modules to instrument.
    if isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)) or not isinstance(model, torch.nn.Module):
        raise UsageError("QAT needs the model as Python code: TorchScript and .pt2 programs cannot be re-instrumented",
                         hint="Give the state dict with --model-class module:Class (and --weights).")
    activation, weight, wrapper, _folded_bias = _module_classes()
    copied = copy.deepcopy(model)
    layers = weighted_layers(copied)
    if not layers:
        raise UsageError("the model has no Conv or Linear layers to quantize")
    qmin, qmax = scheme.activation_range()
    clip = scheme.activation_clip()
    wmin, wmax = scheme.weight_range()
    for _name, module, axis in layers:
        quantizer = weight(axis, wmin, wmax, scheme.weight_clip(), adjust_for_bias=scheme.weight_bits == 8)
        parametrize.register_parametrization(module, "weight", quantizer)
        module.input_quant = activation(qmin, qmax, clip)
        quantizer.layer.append(module)  # after registering: it runs the parametrization once
        module.register_forward_pre_hook(_quantize_input)
    return wrapper(copied, activation(qmin, qmax, clip)).eval()


def _quantize_input(module: Any, args: tuple) -> tuple:
    return (module.input_quant(args[0]), *args[1:])


def _skip_folded_batchnorm(module: Any, args: tuple, output: Any) -> Any:
    """Forward hook of a folded BatchNorm: its input (the folded conv's output), plus the folded bias if needed."""
    x = args[0]
    if getattr(module, _FOLD_ATTRIBUTE) == "bias":
        return x + fold_bias(module).reshape(1, -1, *([1] * (x.dim() - 2)))
    return x


def activation_quantizers(model: Any) -> list[Any]:
    activation = _module_classes()[0]
    return [m for m in model.modules() if isinstance(m, activation)]


def weight_quantizers(model: Any) -> list[Any]:
    weight = _module_classes()[1]
    return [m for m in model.modules() if isinstance(m, weight)]


def _weight_quantizer(layer: Any) -> Any:
    return layer.parametrizations.weight[0]


def _original(layer: Any, name: str) -> Any:
    """A layer's own (unparametrized) weight or bias."""
    parametrizations = getattr(layer, "parametrizations", None)
    if parametrizations is not None and name in parametrizations:
        return getattr(parametrizations, name).original
    return getattr(layer, name)


def exported_bias(layer: Any) -> Any:
    """The bias the exported ONNX gives this layer: folded where BatchNorm is folded, else its own (or None)."""
    quantizer = _weight_quantizer(layer)
    bias = _original(layer, "bias")
    return fold_bias(quantizer.batchnorm[0], bias) if quantizer.batchnorm else bias


def exported_weights(model: Any) -> list[tuple[str, np.ndarray]]:
    """(layer name, float weight) for every quantized layer: folded where folded, i.e. what ORT will quantize."""
    torch = require("torch", _PURPOSE)
    with torch.no_grad():
        return [(_user_name(name), _weight_quantizer(layer).float_weight(_original(layer, "weight")).numpy().copy())
                for name, layer, _axis in weighted_layers(model)]


def quantized_weights(model: Any) -> list[tuple[str, np.ndarray]]:
    """(layer name, dequantized weight the fake-quant model computes with) for every quantized layer."""
    torch = require("torch", _PURPOSE)
    with torch.no_grad():
        return [(_user_name(name), layer.weight.detach().numpy().copy())
                for name, layer, _axis in weighted_layers(model)]


def _user_name(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name


@contextmanager
def _float_mode(model: Any) -> Iterator[None]:
    """Float weights (folded where folded) and observing activation quantizers: the FP32 model PTQ calibrates."""
    activations, weights = activation_quantizers(model), weight_quantizers(model)
    for quantizer in activations:
        quantizer.observing = True
    for quantizer in weights:
        quantizer.enabled = False
    try:
        yield
    finally:
        for quantizer in activations:
            quantizer.observing = False
        for quantizer in weights:
            quantizer.enabled = True


def fold_batchnorms(model: Any, example: np.ndarray) -> list[tuple[str, str]]:
    """Fold into each convolution the BatchNorm the ONNX export folds into it; returns the (conv, BatchNorm) names.

    The TorchScript exporter folds a Conv whose output has exactly one use, an eval-mode
    BatchNormalization with parameters. Here: one forward pass on ``example`` finds the BatchNorm
    whose input is the very tensor a convolution returned (unmodified), the autograd graph says
    that nothing else reads that tensor, and modules called more than once are left alone. Runs
    once per model; ``calibrate`` calls it.
    """
    if model.folded is not None:
        return list(model.folded)
    pairs = _conv_batchnorm_pairs(model, example)
    _activation, _weight, _wrapper, folded_bias = _module_classes()
    from torch.nn.utils import parametrize

    names = {module: _user_name(name) for name, module in model.named_modules()}
    for conv, bn in pairs:
        _weight_quantizer(conv).batchnorm.append(bn)
        if conv.bias is not None:
            parametrize.register_parametrization(conv, "bias", folded_bias(bn))
            setattr(bn, _FOLD_ATTRIBUTE, "identity")
        else:
            setattr(bn, _FOLD_ATTRIBUTE, "bias")
        bn.register_forward_hook(_skip_folded_batchnorm)
    model.folded = [(names[conv], names[bn]) for conv, bn in pairs]
    return list(model.folded)


def _conv_batchnorm_pairs(model: Any, example: np.ndarray) -> list[tuple[Any, Any]]:
    torch = require("torch", _PURPOSE)
    nn = torch.nn
    convs = [m for _n, m, _a in weighted_layers(model) if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  and m.running_mean is not None and m.running_var is not None]
    if not convs or not batchnorms:
        return []
    calls: Counter = Counter()
    produced: dict[int, tuple[Any, Any, int]] = {}
    fed: dict[Any, tuple[Any, Any]] = {}

    def after_conv(module: Any, _args: tuple, output: Any) -> None:
        calls[module] += 1
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (module, output, output._version)

    def before_batchnorm(module: Any, args: tuple) -> None:
        calls[module] += 1
        x = args[0] if args else None
        hit = produced.get(id(x))
        if hit is not None and hit[1] is x and x._version == hit[2]:
            fed[module] = (hit[0], x)

    handles = [m.register_forward_hook(after_conv) for m in convs]
    handles += [m.register_forward_pre_hook(before_batchnorm) for m in batchnorms]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), _float_mode(model):
            inputs = torch.from_numpy(np.array(example[:1]))
            if inputs.is_floating_point():  # so that every op after the input is in the autograd graph
                inputs.requires_grad_()
            outputs = list(_tensors(model.model(inputs)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    readers = _autograd_readers(outputs)
    pairs = []
    for bn, (conv, tensor) in fed.items():
        if calls[bn] != 1 or calls[conv] != 1 or any(tensor is out for out in outputs):
            continue  # a module called twice cannot carry two folds; a returned conv output is a second use
        if tensor.grad_fn is None or readers[tensor.grad_fn] != 1:
            continue
        pairs.append((conv, bn))
    return pairs


def _tensors(value: Any) -> Iterator[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _autograd_readers(outputs: list[Any]) -> Counter:
    """How many autograd nodes read each node's result, over the graph that produced ``outputs``."""
    readers: Counter = Counter()
    seen: set = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for following, _index in node.next_functions:
            if following is not None:
                readers[following] += 1
                stack.append(following)
    return readers


def calibrate(model: Any, images: np.ndarray, scheme: QuantScheme) -> None:
    """Measure min/max of every quantized activation over ``images`` and set scales and zero points.

    The ranges are measured on the float model (BatchNorm folded, weights not quantized), as PTQ
    measures them on the FP32 ONNX, so the fake-quant model uses PTQ's activation grid. The first
    call also folds BatchNorm into the convolutions the export folds it into (``fold_batchnorms``).
    """
    torch = require("torch", _PURPOSE)
    if len(images) == 0:
        raise UsageError("calibrating the fake-quant model needs at least one image")
    fold_batchnorms(model, images[:1])
    quantizers = activation_quantizers(model)
    for quantizer in quantizers:
        quantizer.low.fill_(float("inf"))
        quantizer.high.fill_(float("-inf"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _float_mode(model):
            for start in range(0, len(images), _CALIBRATION_BATCH):
                model(torch.from_numpy(np.ascontiguousarray(images[start:start + _CALIBRATION_BATCH])))
    finally:
        model.train(was_training)
    for quantizer in quantizers:
        scale, zero_point = activation_qparams(float(quantizer.low), float(quantizer.high), scheme)
        quantizer.scale.fill_(scale)
        quantizer.zero_point.fill_(zero_point)


def float_state_dict(model: Any) -> dict[str, Any]:
    """The trained float weights under the original module's names (quantizers dropped, BatchNorm unfolded)."""
    state = {}
    for key, value in model.state_dict().items():
        if not key.startswith("model.") or ".input_quant." in key:
            continue  # the output quantizer and the input quantizers are not part of the user's module
        key = _ORIGINAL.sub(r".\1", key[len("model."):])
        state[key] = value.detach().clone()
    return state


def float_model(model: Any, template: Any) -> Any:
    """A copy of ``template`` (the user's FP32 module) carrying ``model``'s trained weights, in eval mode."""
    plain = copy.deepcopy(template)
    plain.load_state_dict(float_state_dict(model), strict=True)
    return plain.eval()
