"""Contracts every backend implements.

A backend declares what it can do as data (``Capabilities``) so the rest of the
tool never branches on backend names. Its ``compile`` writes model files into a
folder that the caller turns into an artifact (manifest, verification); its
``load`` returns a ``Runner`` that speaks the ONNX model's layout and dtypes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from toolchain.lazy import install_hint, is_installed
from toolchain.runtime import Feed, Runner  # noqa: F401 - re-exported: the contract backends implement
from toolchain.targets import Target


@dataclass(frozen=True)
class Capabilities:
    precisions: tuple[str, ...]
    """Precisions ``compile --precision`` accepts."""
    opset_range: tuple[int, int]
    """Lowest and highest ONNX opset the backend's converter accepts."""
    layouts: tuple[str, ...] = ("NCHW",)
    """Input layouts the compiled model uses internally (the runner always speaks the ONNX layout)."""
    needs_gpu: bool = False
    runs_here: bool = True
    """False where the artifact can only be finished/run on the device (e.g. TensorRT engines on a Jetson)."""
    precision_via_onnx: bool = False
    """True when the backend runs ONNX as given, so precision is applied as ONNX passes before compile."""


@dataclass(frozen=True)
class CompileOptions:
    """Options of ``edgekiln compile`` shared by all backends."""

    precision: str = "fp32"
    target: str | None = None
    threads: int | None = None
    """Intra-op threads the runner uses by default (None: the runtime's default)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific options, recorded in the manifest."""
    quant: Any = None
    """``toolchain.precision.QuantOptions`` (calibration samples, quantizer overrides, accuracy budget) for
    backends that quantize themselves (``Capabilities.precision_via_onnx`` False)."""
    verify: bool = True
    """The backend's own checks of what it wrote (an emulated device run) are wanted; False with --no-verify."""


@dataclass
class CompiledFiles:
    """What ``Backend.compile`` wrote: the main model file (relative to the artifact folder) and details."""

    model_file: str
    runtime_options: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """A backend declares, as class data, everything the rest of the tool needs to know about it, so adding
    one is its folder plus one line in ``backends.registry.BUILTIN`` (or a plugin's entry point)."""

    name: str
    description: str
    capabilities: Capabilities
    required_modules: tuple[str, ...]
    """Python modules the backend needs; checked without importing them."""
    options: ClassVar[type | None] = None
    """Its own compile settings (a ``toolchain.options.OptionGroup``): ``compile`` and ``build`` get their flags,
    recipes their keys, the API its keywords, and the build's cache keys their values."""
    targets: ClassVar[tuple[Target, ...]] = ()
    """Device profiles it adds (``--target``); the built-in backends' are in ``toolchain.targets.TARGETS``."""
    distributions: ClassVar[tuple[str, ...]] = ()
    """Distributions whose versions change what it writes: recorded in manifests, part of the cache keys."""

    def is_available(self) -> tuple[bool, str]:
        """Whether the backend can be used here and, if not, what to install (never imports the SDK)."""
        missing = [m for m in self.required_modules if not is_installed(m)]
        if missing:
            return False, f"missing {', '.join(missing)}: {install_hint(missing[0])}"
        return True, "ready"

    def can_run(self) -> tuple[bool, str]:
        """Whether artifacts can be loaded and run on this machine (False e.g. for TensorRT without a GPU)."""
        return self.is_available()

    @abc.abstractmethod
    def compile(self, onnx_path: Path, options: CompileOptions, out_dir: Path) -> CompiledFiles:
        """Write the backend's model files into ``out_dir`` (an empty temporary folder)."""

    @abc.abstractmethod
    def load(self, model_path: Path, runtime_options: dict[str, Any]) -> Runner:
        """Load a compiled model for inference."""
