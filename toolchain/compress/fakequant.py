"""Fake quantization of a PyTorch module, in exactly the INT8 scheme edgekiln's PTQ writes.

What is simulated, and why it matches the QDQ model ``toolchain.passes.quantize``
builds with ONNX Runtime's quantizer:

* weights of every Conv/Linear: int8 (or int4), symmetric, one scale per output channel
  (``2 * absmax / (qmax - qmin)`` over ORT's symmetric range: [-127, 127] for int8,
  [-8, 7] for int4), recomputed from the current weights on every forward pass, as
  ORT computes them from the final ones;
* the input of every Conv/Linear and the model's output: per-tensor, with the
  target's activation type (uint8 asymmetric for ONNX Runtime, int8 symmetric for
  TensorRT, int8 asymmetric for TFLite). Scale and zero point come from ORT's own
  ``compute_scale_zp`` on min/max ranges measured over the calibration images, the
  same numbers ORT's MinMax calibrator measures on the same images.

Gradients use the straight-through estimator built into
``torch.fake_quantize_per_{tensor,channel}_affine`` (identity inside the range, zero
outside). BatchNorm stays in eval mode: its statistics are frozen, and with
per-channel weight scales folding it into the convolution (as the ONNX export does)
changes no quantized value, so the unfolded module simulates the folded graph.

Weights go through ``torch.nn.utils.parametrize`` and inputs through forward
pre-hooks, so the user's module code is untouched and any ``nn.Module`` works
without tracing.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.errors import UsageError
from toolchain.lazy import require

_PURPOSE = "Quantization-aware training"
_CALIBRATION_BATCH = 64
# Parametrized weights are stored under this suffix; the plain module stores them as "<name>.weight".
_ORIGINAL = ".parametrizations.weight.original"


@dataclass(frozen=True)
class QuantScheme:
    """The INT8 scheme, from the same ``QuantizeConfig`` the PTQ pass uses for the target."""

    activation_type: str  # "uint8" | "int8"
    activation_symmetric: bool
    weight_bits: int = 8

    @classmethod
    def from_config(cls, config: Any, weight_bits: int = 8) -> "QuantScheme":
        if config.weight_type != "int8" or not config.weight_symmetric or not config.per_channel:
            raise UsageError("QAT simulates int8 symmetric per-channel weights only (the PTQ default)")
        return cls(config.activation_type, config.activation_symmetric, weight_bits)

    def activation_range(self) -> tuple[int, int]:
        import onnx
        from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

        qtype = onnx.TensorProto.UINT8 if self.activation_type == "uint8" else onnx.TensorProto.INT8
        qmin, qmax = get_qmin_qmax_for_qType(qtype, symmetric=self.activation_symmetric)
        return int(qmin), int(qmax)

    def weight_range(self) -> tuple[int, int]:
        """ORT's symmetric weight range: [-127, 127] for int8, but [-8, 7] for int4 (scale = absmax / 7.5)."""
        import onnx
        from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

        qtype = onnx.TensorProto.INT4 if self.weight_bits == 4 else onnx.TensorProto.INT8
        qmin, qmax = get_qmin_qmax_for_qType(qtype, symmetric=True)
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


@functools.cache
def _module_classes() -> tuple[type, type, type]:
    """The nn.Module subclasses, defined on first use so importing this module needs no torch."""
    torch = require("torch", _PURPOSE)
    nn = torch.nn

    class ActivationQuant(nn.Module):
        """Per-tensor fake quantization; in observing mode it records min/max and passes values through."""

        def __init__(self, qmin: int, qmax: int) -> None:
            super().__init__()
            self.qmin, self.qmax = qmin, qmax
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
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)

    class WeightQuant(nn.Module):
        """Parametrization: symmetric per-output-channel fake quantization of a weight."""

        def __init__(self, axis: int, qmin: int, qmax: int) -> None:
            super().__init__()
            self.axis, self.qmin, self.qmax = axis, qmin, qmax

        def forward(self, weight: Any) -> Any:
            dims = [d for d in range(weight.dim()) if d != self.axis]
            absmax = weight.detach().abs().amax(dim=dims).float()
            tiny = torch.finfo(torch.float32).tiny
            # ORT's compute_scale_zp gives an all-zero channel scale 1.0; any positive scale quantizes zeros to 0.
            scale = torch.where(absmax > tiny, absmax * (2.0 / (self.qmax - self.qmin)), torch.ones_like(absmax))
            zero_point = torch.zeros_like(scale, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, self.axis, self.qmin, self.qmax)

    class FakeQuantModel(nn.Module):
        """The instrumented copy plus the output quantizer; BatchNorm stays frozen in train mode too."""

        def __init__(self, model: Any, output_quant: Any) -> None:
            super().__init__()
            self.model = model
            self.output_quant = output_quant

        def forward(self, *args: Any) -> Any:
            out = self.model(*args)
            return self.output_quant(out) if isinstance(out, torch.Tensor) else out

        def train(self, mode: bool = True) -> Any:
            super().train(mode)
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
            return self

    return ActivationQuant, WeightQuant, FakeQuantModel


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
    """An instrumented deep copy of ``model`` (the original is not changed); calibrate it before use."""
    torch = require("torch", _PURPOSE)
    from torch.nn.utils import parametrize

    # A .pt2 program's module() is an fx.GraphModule of aten calls: no Conv/Linear modules to instrument.
    if isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)) or not isinstance(model, torch.nn.Module):
        raise UsageError("QAT needs the model as Python code: TorchScript and .pt2 programs cannot be re-instrumented",
                         hint="Give the state dict with --model-class module:Class (and --weights).")
    activation, weight, wrapper = _module_classes()
    copied = copy.deepcopy(model)
    layers = weighted_layers(copied)
    if not layers:
        raise UsageError("the model has no Conv or Linear layers to quantize")
    qmin, qmax = scheme.activation_range()
    wmin, wmax = scheme.weight_range()
    for _name, module, axis in layers:
        parametrize.register_parametrization(module, "weight", weight(axis, wmin, wmax))
        module.input_quant = activation(qmin, qmax)
        module.register_forward_pre_hook(_quantize_input)
    return wrapper(copied, activation(qmin, qmax)).eval()


def _quantize_input(module: Any, args: tuple) -> tuple:
    return (module.input_quant(args[0]), *args[1:])


def activation_quantizers(model: Any) -> list[Any]:
    activation = _module_classes()[0]
    return [m for m in model.modules() if isinstance(m, activation)]


def calibrate(model: Any, images: np.ndarray, scheme: QuantScheme) -> None:
    """Measure min/max of every quantized activation over ``images`` and set scales and zero points."""
    torch = require("torch", _PURPOSE)
    quantizers = activation_quantizers(model)
    for quantizer in quantizers:
        quantizer.low.fill_(float("inf"))
        quantizer.high.fill_(float("-inf"))
        quantizer.observing = True
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), _CALIBRATION_BATCH):
                model(torch.from_numpy(np.ascontiguousarray(images[start:start + _CALIBRATION_BATCH])))
    finally:
        for quantizer in quantizers:
            quantizer.observing = False
        model.train(was_training)
    for quantizer in quantizers:
        scale, zero_point = activation_qparams(float(quantizer.low), float(quantizer.high), scheme)
        quantizer.scale.fill_(scale)
        quantizer.zero_point.fill_(zero_point)


def float_state_dict(model: Any) -> dict[str, Any]:
    """The trained float weights under the original module's names (quantizers dropped)."""
    state = {}
    for key, value in model.state_dict().items():
        if not key.startswith("model.") or ".input_quant." in key:
            continue  # the output quantizer and the input quantizers are not part of the user's module
        key = key[len("model."):]
        if key.endswith(_ORIGINAL):
            key = key[: -len(_ORIGINAL)] + ".weight"
        state[key] = value.detach().clone()
    return state


def float_model(model: Any, template: Any) -> Any:
    """A copy of ``template`` (the user's FP32 module) carrying ``model``'s trained weights, in eval mode."""
    plain = copy.deepcopy(template)
    plain.load_state_dict(float_state_dict(model), strict=True)
    return plain.eval()
