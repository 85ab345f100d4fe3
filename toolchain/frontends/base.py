"""What every ingest frontend takes and returns.

A frontend turns a source model into an ``onnx.ModelProto`` and hands back a
*reference*: a callable that runs the source framework on the same inputs,
keyed by the ONNX graph's input names, returning outputs keyed by the ONNX
graph's output names. Verification compares the two without knowing which
framework produced the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from toolchain.inputs import InputSpec

Feed = dict[str, np.ndarray]
ReferenceFn = Callable[[Feed], Feed]

# ONNX opset used when neither the user nor a target asks for one: supported by
# ONNX Runtime >= 1.14, TensorRT >= 8.6 and onnx2tf. Targets override it.
DEFAULT_OPSET = 17

Exporter = Literal["auto", "dynamo", "torchscript"]


@dataclass(frozen=True)
class ConvertOptions:
    """Options of ``edgekiln convert`` (each maps to one CLI flag)."""

    inputs: tuple[InputSpec, ...] = ()
    """Input name/shape/dtype overrides (``--input``)."""
    dynamic_batch: bool = False
    """Make axis 0 of every input and output symbolic (``--dynamic-batch``)."""
    opset: int | None = None
    """ONNX opset to export to; ``None`` means the target's default (``--opset``)."""
    model_class: str | None = None
    """``package.module:Class`` or ``path/to/file.py:Class`` for state-dict weights (``--model-class``)."""
    weights: Path | None = None
    """State-dict file for ``model_class`` (``--weights``)."""
    model_kwargs: dict = field(default_factory=dict)
    """Keyword arguments for the model class constructor (``--model-kwargs``, JSON)."""
    trust_pickle: bool = False
    trust_savedmodel: bool = False
    """Allow unpickling a whole model object, which can execute code (``--trust-pickle``)."""
    exporter: Exporter = "auto"
    """PyTorch exporter: TorchScript-based, dynamo (torch.export) or auto (``--exporter``)."""
    keras_safe_mode: bool = True
    """Keep Keras safe mode (refuses Lambda layers' pickled code) (``--no-keras-safe-mode`` turns it off)."""

    @property
    def opset_or_default(self) -> int:
        return self.opset or DEFAULT_OPSET

    def input_for(self, name: str, index: int, count: int) -> InputSpec | None:
        """The override for input ``name`` (an unnamed override applies to a single-input model)."""
        for spec in self.inputs:
            if spec.name == name or (spec.name is None and count == 1 and index == 0):
                return spec
        return None


@dataclass
class IngestedModel:
    """An ONNX model plus a way to run the framework it came from."""

    model: onnx.ModelProto
    reference: ReferenceFn
    source_format: str
    framework: str
    framework_version: str
    notes: list[str] = field(default_factory=list)
    reference_label: str = ""
    """How verification reports name the reference (default: framework and version)."""

    def describe_reference(self) -> str:
        return self.reference_label or f"{self.framework} {self.framework_version}"
