"""ONNX Runtime builder: the artifact is the ONNX model itself plus session options.

ORT can also save its own optimized graph, but that file is tied to the ORT
version and CPU it was made on, so the portable ONNX model is what ships and
ORT optimizes it at load time.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from backends.base import Backend, Capabilities, CompiledFiles, CompileOptions, Runner
from toolchain.errors import UsageError

MODEL_FILE = "model.onnx"
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX Runtime on CPU (CUDA where onnxruntime-gpu is installed); the reference backend"
    capabilities = Capabilities(precisions=("fp32", "fp16", "dynamic", "int8"), opset_range=(7, 23),
                                layouts=("NCHW", "NHWC"), precision_via_onnx=True)
    required_modules = ("onnxruntime",)

    def compile(self, onnx_path: Path, options: CompileOptions, out_dir: Path) -> CompiledFiles:
        level = options.extra.get("graph_optimization", "all")
        if level not in GRAPH_OPTIMIZATION_LEVELS:
            raise UsageError(f"graph optimization level '{level}' is not one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
        shutil.copyfile(onnx_path, out_dir / MODEL_FILE)
        external = onnx_path.with_name(onnx_path.name + ".data")
        if external.is_file():
            shutil.copyfile(external, out_dir / external.name)
        runtime: dict[str, Any] = {"graph_optimization": level}
        if options.threads:
            runtime["threads"] = options.threads
        return CompiledFiles(model_file=MODEL_FILE, runtime_options=runtime)

    def load(self, model_path: Path, runtime_options: dict[str, Any]) -> Runner:
        from backends.onnxruntime.runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner.from_path(model_path, **runtime_options)
