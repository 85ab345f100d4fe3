"""Parsing of ``--input NAME:SHAPE[:DTYPE]`` overrides.

Examples: ``x:1x3x224x224``, ``images:Nx3x640x640:float32``, ``1x1x28x28`` (name
omitted: applies to a model with a single input), ``tokens:1,max_len:int64``
(commas when a dimension name contains an x). A dimension that is not a
positive integer (``N``, ``batch``, ``?``, ``-1``) is dynamic.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from toolchain.errors import UsageError

Dim = int | str

SUPPORTED_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool")
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SPEC_FORMAT = "expected NAME:SHAPE[:DTYPE] such as 'input:1x3x224x224' or 'input:Nx3x224x224:float32'"


@dataclass(frozen=True)
class InputSpec:
    """A user's override of one model input's name, shape and dtype."""

    name: str | None
    shape: tuple[Dim, ...]
    dtype: str | None = None
    """None when the user did not say; the model's own dtype (or float32) applies."""

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """Shape with the leading dynamic dimension set to ``batch``; other dynamic dims are an error."""
        return concrete_dims(self.name or "input", self.shape, batch)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype or "float32")

    def __str__(self) -> str:
        shape = "x".join(str(d) for d in self.shape)
        dtype = f":{self.dtype}" if self.dtype else ""
        return f"{self.name + ':' if self.name else ''}{shape}{dtype}"


def concrete_dims(name: str, shape: tuple[Dim, ...], batch: int = 1) -> tuple[int, ...]:
    """``shape`` with a symbolic axis 0 set to ``batch``; any other symbolic axis is a ``UsageError``."""
    dims: list[int] = []
    for axis, dim in enumerate(shape):
        if isinstance(dim, int):
            dims.append(dim)
        elif axis == 0:
            dims.append(batch)
        else:
            raise UsageError(f"input '{name}' has unknown size at axis {axis} ('{dim}')",
                             hint=f"Give a concrete size with --input {name}:SHAPE.")
    return tuple(dims)


def _parse_dim(text: str, spec: str) -> Dim:
    if text in {"?", "-1"}:
        return "batch"
    if text.isdigit():
        value = int(text)
        if value == 0:
            raise UsageError(f"bad --input '{spec}': dimension 0 is not allowed")
        return value
    if _DIM_NAME.match(text):
        return text
    raise UsageError(f"bad --input '{spec}': dimension '{text}' is neither a positive integer nor a name")


def parse_input_spec(spec: str) -> InputSpec:
    """Parse one ``--input`` value; raise ``UsageError`` with the reason when malformed."""
    parts = spec.strip().split(":")
    if not spec.strip() or len(parts) > 3:
        raise UsageError(f"bad --input '{spec}': {_SPEC_FORMAT}")
    dtype: str | None = None
    if len(parts) == 3:
        name, shape_text, dtype = parts
    elif len(parts) == 2 and parts[1] in SUPPORTED_DTYPES:
        name, shape_text, dtype = None, parts[0], parts[1]
    elif len(parts) == 2:
        name, shape_text = parts
    else:
        name, shape_text = None, parts[0]
    if name is not None and not name:
        raise UsageError(f"bad --input '{spec}': the input name is empty")
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        raise UsageError(f"bad --input '{spec}': dtype '{dtype}' is not one of {', '.join(SUPPORTED_DTYPES)}")
    if not shape_text:
        raise UsageError(f"bad --input '{spec}': the shape is empty; {_SPEC_FORMAT}")
    # Commas allow dimension names that contain an 'x' ("max_len,128").
    dims = shape_text.split(",") if "," in shape_text else shape_text.split("x")
    shape = tuple(_parse_dim(d.strip(), spec) for d in dims)
    return InputSpec(name=name, shape=shape, dtype=dtype)


def parse_input_specs(specs: list[str] | tuple[str, ...]) -> list[InputSpec]:
    parsed = [parse_input_spec(s) for s in specs]
    if len(parsed) > 1 and any(p.name is None for p in parsed):
        raise UsageError("several --input options given but not all name their input; use NAME:SHAPE for each")
    names = [p.name for p in parsed if p.name]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"--input given twice for {', '.join(duplicates)}")
    return parsed


def parse_kwargs(value: str | dict | None, flag: str = "--model-kwargs") -> dict:
    """Constructor keyword arguments given as a dict or a JSON object string."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(parsed, dict):
        raise UsageError(f"{flag} must be a JSON object such as '{{\"num_classes\": 10}}'")
    return parsed
