"""Simplify: constant folding and redundant-node removal via onnxsim, falling back to onnxslim.

onnxsim is the reference tool but fails on some graphs (and has no wheels on
some platforms); onnxslim covers most of the same rewrites in pure Python.
Numerical re-verification is done by the caller on the before/after models.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import onnx
from pydantic import Field

from toolchain.errors import ConversionError, first_line
from toolchain.lazy import is_installed
from toolchain.options import Flag
from toolchain.passes.base import GraphStats, PassConfig, PassReport


class SimplifyConfig(PassConfig):
    prefix: ClassVar[str] = "simplify"

    engine: Annotated[Literal["auto", "onnxsim", "onnxslim"], Flag()] = Field(
        "auto", description="Which simplifier to use; auto tries onnxsim first and falls back to onnxslim.")
    fuse_batchnorm: bool = Field(
        True, description="Fold BatchNormalization into the preceding Conv/Gemm (onnxsim's default).")

def _with_onnxsim(model: onnx.ModelProto, config: SimplifyConfig) -> onnx.ModelProto:
    import onnxsim

    simplified, check_ok = onnxsim.simplify(model, check_n=0, skip_fuse_bn=not config.fuse_batchnorm)
    if not check_ok:
        raise RuntimeError("onnxsim's own check failed")
    return simplified


def _with_onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def run(model: onnx.ModelProto, config: SimplifyConfig | None = None) -> tuple[onnx.ModelProto, PassReport]:
    """Return a simplified copy of ``model`` and a report; the input model is not modified."""
    config = config or SimplifyConfig()
    notes: list[str] = []
    attempts = ["onnxsim", "onnxslim"] if config.engine == "auto" else [config.engine]
    source = onnx.ModelProto()
    source.CopyFrom(model)
    for engine in attempts:
        if not is_installed(engine):
            notes.append(f"{engine} is not installed")
            continue
        try:
            result = _with_onnxsim(source, config) if engine == "onnxsim" else _with_onnxslim(source)
        except Exception as exc:  # simplifiers raise anything from protobuf to ORT errors
            notes.append(f"{engine} failed: {first_line(exc, 200)}")
            continue
        report = PassReport("simplify", GraphStats.of(model), GraphStats.of(result), {"engine": engine}, notes)
        return result, report
    raise ConversionError(f"no simplifier could process the model ({'; '.join(notes)})",
                          hint="Skip simplification, or report the model to onnxsim/onnxslim.")


def run_pass(model: onnx.ModelProto, config: SimplifyConfig | None, context: object) -> tuple[onnx.ModelProto, PassReport]:
    """The pass protocol (``toolchain.passes.registry``): simplify needs no samples."""
    return run(model, config)
