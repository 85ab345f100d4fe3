"""The table of graph passes ``edgekiln optimize`` (and the build) can run, as data.

A pass is one row: its switch (``--simplify``), its config (whose ``Flag`` fields become the pass's own
flags, recipe keys and API keywords), the function that runs it and what it needs. Adding a pass is a
module with a config and a ``run_pass`` function, plus one row here; the CLI, the API and the
optimize stage read the table. Light to import: modules are named, not imported.

The pass protocol: ``run_pass(model, config, context) -> (model, PassReport)``, where ``context`` is a
``PassContext`` that hands in the samples (and never a backend).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from toolchain.errors import UsageError


@dataclass(frozen=True)
class PassEntry:
    name: str
    """The switch's API keyword; its flag is ``--`` + the name with dashes."""
    help: str
    run: str
    """``module:function`` implementing the pass protocol."""
    config: str | None = None
    """``module:Class`` of its config (a ``PassConfig``), or None for a pass without settings."""
    lossy: bool = False
    """Verified by cosine against the input (else exactly)."""
    alternatives: tuple[str, ...] = ()
    """Passes it cannot be combined with."""
    reads_samples: bool = False
    """Judges itself on --calib's calibration and held-out samples when they are given."""
    in_build: bool = False
    """Offered by ``edgekiln build`` as a stage of its own (after simplify, before the targets)."""
    report: str | None = None
    """``module:function`` turning its ``PassReport`` into the lines ``optimize`` prints (None: none)."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def config_class(self) -> type | None:
        return _load(self.config) if self.config else None

    def runner(self) -> Callable[..., Any]:
        return _load(self.run)

    def formatter(self) -> Callable[[Any], str]:
        return _load(self.report) if self.report else str


@dataclass
class PassContext:
    """What a pass may use besides the model: samples from --calib (loaded on first use)."""

    load_samples: Callable[[Any], Any] | None = None
    """model -> ``(calibration feeds, held-out feeds, held-out labels)``; None when no --calib was given."""

    def samples(self, model: Any) -> tuple[Sequence[Any], Sequence[Any] | None, Any] | None:
        return self.load_samples(model) if self.load_samples is not None else None


# In the order they run.
PASSES: tuple[PassEntry, ...] = (
    PassEntry("simplify", "Constant folding and redundant-node removal (onnxsim, else onnxslim).",
              "toolchain.passes.simplify:run_pass", "toolchain.passes.simplify:SimplifyConfig"),
    PassEntry("lowrank", "Low-rank (SVD) factorization of large Gemm/MatMul/Conv weights (see --lowrank-mode).",
              "toolchain.passes.lowrank:run_pass", "toolchain.passes.lowrank_options:LowRankConfig", lossy=True,
              reads_samples=True, in_build=True, report="toolchain.passes.lowrank:format_report"),
    PassEntry("fp16", "FP16 weights and compute (float32 inputs/outputs kept).", "toolchain.passes.quantize:fp16_pass",
              lossy=True, alternatives=("dynamic_int8",)),
    PassEntry("dynamic_int8", "INT8 weights, activations quantized at run time (no calibration).",
              "toolchain.passes.quantize:dynamic_int8_pass", lossy=True, alternatives=("fp16",)),
)


BUILD_PASSES: tuple[str, ...] = tuple(entry.name for entry in PASSES if entry.in_build)


def pass_entry(name: str) -> PassEntry:
    for entry in PASSES:
        if entry.name == name:
            return entry
    raise UsageError(f"unknown pass '{name}'; passes: {', '.join(e.name for e in PASSES)}")


def chosen(switches: dict[str, bool]) -> list[PassEntry]:
    """The passes switched on, in table order; alternatives chosen together are refused."""
    entries = [entry for entry in PASSES if switches.get(entry.name)]
    names = {entry.name for entry in entries}
    for entry in entries:
        clash = next((other for other in entry.alternatives if other in names), None)
        if clash is not None:
            raise UsageError(f"{entry.flag} and {pass_entry(clash).flag} are alternatives; choose one")
    return entries


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)
