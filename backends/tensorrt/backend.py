"""The TensorRT backend: always writes a device bundle; builds and runs engines where TensorRT and a GPU exist.

Engines are tied to the GPU and TensorRT version that built them, so the usual
flow is: compile (and calibrate) in the build container, copy the artifact folder
to the Jetson, run build_engine.sh there. Where tensorrt, a CUDA binding and a
GPU are usable, compile also builds the engine here and ``load`` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from backends.base import Backend, Capabilities, CompiledFiles, CompileOptions, Runner
from backends.tensorrt.options import TensorRTOptions
from toolchain.lazy import is_installed

ENGINE_HINT = ("on a machine with an NVIDIA GPU: pip install 'edgekiln[tensorrt]'; on a Jetson: JetPack's "
               "python3-libnvinfer plus pycuda or cuda-python")


def usable_here() -> tuple[bool, str]:
    """Whether engines can be built and run here: tensorrt, a CUDA Python binding, and a GPU the driver reports."""
    from backends.tensorrt import verify_engine as device_script

    if not is_installed("tensorrt"):
        return False, f"tensorrt is not installed ({ENGINE_HINT})"
    if not (is_installed("pycuda") or is_installed("cuda")):
        return False, "neither pycuda nor cuda-python is installed (one is needed for GPU buffers)"
    try:
        gpu = device_script.gpu_name()
    except device_script.BundleError as exc:
        return False, str(exc)
    return True, f"TensorRT and {gpu}"


class TensorRTBackend(Backend):
    name = "tensorrt"
    description = "NVIDIA TensorRT engines (Jetson Nano/Xavier/Orin, CUDA GPUs); writes a device bundle everywhere"
    capabilities = Capabilities(precisions=("fp32", "fp16", "int8"), opset_range=(7, onnx.defs.onnx_opset_version()),
                                layouts=("NCHW",), needs_gpu=True, runs_here=False, precision_via_onnx=False)
    required_modules = ("tensorrt",)
    options = TensorRTOptions
    distributions = ("tensorrt",)

    def is_available(self) -> tuple[bool, str]:
        # A bundle needs only ONNX and ONNX Runtime, so compile works everywhere; say what is missing for engines.
        runnable, reason = usable_here()
        return True, f"ready: {reason}" if runnable else f"device bundle only: {reason}"

    def can_run(self) -> tuple[bool, str]:
        return usable_here()

    def compile(self, onnx_path: Path, options: CompileOptions, out_dir: Path) -> CompiledFiles:
        from backends.tensorrt.compile import compile_bundle

        return compile_bundle(onnx_path, options, out_dir, build_here=self.can_run()[0])

    def load(self, model_path: Path, runtime_options: dict[str, Any]) -> Runner:
        from backends.tensorrt.runner import TensorRTRunner

        return TensorRTRunner.open(model_path, runtime_options)
