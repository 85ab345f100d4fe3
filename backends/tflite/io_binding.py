"""How the ONNX model's inputs and outputs map onto the TFLite model's tensors.

onnx2tf turns channel-first tensors (NCW, NCHW, NCDHW) into channel-last ones,
keeps the ONNX input names as signature names, and names outputs ``output_0``,
``output_1``... in ONNX order. Each ``Binding`` records the signature key and
the axis permutation, so the runner can take and return arrays exactly as the
ONNX model does. Where shapes leave a choice open (a square tensor whose
channel count equals its height, two outputs of one shape), the builder runs
both models once and keeps the candidate that matches (``resolve_outputs``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.errors import ConversionError
from toolchain.onnx_io import TensorInfo

Perm = tuple[int, ...]


@dataclass(frozen=True)
class Binding:
    """One ONNX tensor and the TFLite signature tensor that carries it."""

    name: str
    key: str
    shape: tuple[int | str, ...]
    dtype: str
    perm: Perm | None = None
    """Inputs: ``tflite = onnx.transpose(perm)``; outputs: ``onnx = tflite.transpose(perm)``. None: same layout."""

    def info(self) -> TensorInfo:
        return TensorInfo(self.name, self.shape, np.dtype(self.dtype))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "shape": list(self.shape), "dtype": self.dtype,
                "perm": list(self.perm) if self.perm is not None else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Binding":
        perm = data.get("perm")
        return cls(data["name"], data["key"], tuple(data["shape"]), data["dtype"],
                   tuple(perm) if perm is not None else None)


@dataclass(frozen=True)
class IOBindings:
    inputs: tuple[Binding, ...]
    outputs: tuple[Binding, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [b.to_dict() for b in self.inputs], "outputs": [b.to_dict() for b in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IOBindings":
        return cls(tuple(Binding.from_dict(b) for b in data["inputs"]),
                   tuple(Binding.from_dict(b) for b in data["outputs"]))


def channel_last(rank: int) -> Perm:
    """NC... -> N...C, e.g. (0, 2, 3, 1) for rank 4."""
    return (0, *range(2, rank), 1)


def inverse(perm: Perm) -> Perm:
    return tuple(int(i) for i in np.argsort(perm))


def _fits(onnx_shape: Sequence[int | str], tflite_shape: Sequence[int], perm: Perm | None) -> bool:
    shape = list(onnx_shape) if perm is None else [onnx_shape[i] for i in perm]
    if len(shape) != len(tflite_shape):
        return False
    # Symbolic ONNX dims and -1/None TFLite dims match anything.
    return all(isinstance(a, str) or b < 0 or a == b for a, b in zip(shape, tflite_shape))


def input_perm(onnx_shape: Sequence[int | str], tflite_shape: Sequence[int]) -> Perm | None:
    """The permutation onnx2tf applied to an input: channel-last for rank 3-5 when it fits, else none."""
    rank = len(onnx_shape)
    if 3 <= rank <= 5 and _fits(onnx_shape, tflite_shape, channel_last(rank)):
        return channel_last(rank)  # onnx2tf's rule, also when the identity would fit as well
    if _fits(onnx_shape, tflite_shape, None):
        return None
    raise ConversionError(f"cannot map ONNX input shape {tuple(onnx_shape)} onto TFLite shape {tuple(tflite_shape)}")


def output_perms(onnx_shape: Sequence[int | str], tflite_shape: Sequence[int]) -> list[Perm | None]:
    """Every permutation that could turn a TFLite output back into the ONNX one (identity first)."""
    rank = len(onnx_shape)
    options: list[Perm | None] = [None]
    if 3 <= rank <= 5:
        options.append(inverse(channel_last(rank)))
    return [p for p in options if _fits(onnx_shape, tflite_shape, None if p is None else inverse(p))]


_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/]")


def _signature_name(onnx_name: str, keys: Sequence[str]) -> str | None:
    if onnx_name in keys:
        return onnx_name
    cleaned = _UNSAFE.sub("_", onnx_name.replace(":", "_"))  # onnx2tf's substitutions for SavedModel names
    candidates = {cleaned, re.sub("^/", "wa/", cleaned), cleaned.lstrip("/")}
    return next((k for k in keys if k in candidates), None)


def bind_inputs(inputs: Sequence[TensorInfo], signature: dict[str, Sequence[int]]) -> tuple[Binding, ...]:
    """Match ONNX inputs to signature inputs by name (position as a last resort) and find their layout."""
    keys = list(signature)
    if len(keys) != len(inputs):
        raise ConversionError(f"the TFLite model has {len(keys)} inputs, the ONNX model {len(inputs)}")
    bindings = []
    for position, info in enumerate(inputs):
        key = _signature_name(info.name, keys) or keys[position]
        bindings.append(Binding(info.name, key, info.shape, str(info.dtype), input_perm(info.shape, signature[key])))
    return tuple(bindings)


def output_candidates(outputs: Sequence[TensorInfo],
                      signature: dict[str, Sequence[int]]) -> list[list[Binding]]:
    """Per ONNX output, the (signature key, permutation) pairs its shape allows, the expected one first."""
    keys = sorted(signature, key=_output_position)
    if len(keys) != len(outputs):
        raise ConversionError(f"the TFLite model has {len(keys)} outputs, the ONNX model {len(outputs)}")
    result = []
    for position, info in enumerate(outputs):
        # onnx2tf keeps ONNX output order (output_0, output_1, ...), so that key is tried first.
        ordered = [keys[position]] + [k for k in keys if k != keys[position]]
        options = [Binding(info.name, key, info.shape, str(info.dtype), perm)
                   for key in ordered for perm in output_perms(info.shape, signature[key])]
        if not options:
            raise ConversionError(f"no TFLite output has a shape compatible with ONNX output '{info.name}' "
                                  f"{tuple(info.shape)}")
        result.append(options)
    return result


def _output_position(key: str) -> tuple[int, str]:
    match = re.fullmatch(r"output_(\d+)", key)
    return (int(match.group(1)), key) if match else (1 << 30, key)


def resolve_outputs(candidates: list[list[Binding]],
                    error_of: Callable[[Binding], float]) -> tuple[Binding, ...]:
    """Choose one binding per output, each key used once, minimising the measured error.

    ``error_of(binding)`` compares that TFLite output (after the permutation) with the ONNX output.
    With no ambiguity the expected binding is taken without measuring.
    """
    if all(len(c) == 1 for c in candidates):
        return tuple(c[0] for c in candidates)
    chosen: list[Binding] = []
    for options in candidates:
        # Greedy in ONNX order: outputs are few, and a wrong match shows up as a large error anyway.
        free = [b for b in options if b.key not in {c.key for c in chosen}]
        if not free:
            raise ConversionError("cannot match the TFLite outputs to the ONNX outputs one to one")
        chosen.append(min(free, key=error_of) if len(free) > 1 else free[0])
    return tuple(chosen)
