"""Target profiles: named devices that pick backend, precision and opset defaults and know their limits.

Data only; commands read these instead of branching on target names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from toolchain.errors import UsageError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str
    precision: str
    opset: int
    """Default ONNX opset: the newest the device's converter/runtime version handles well."""
    notes: str = ""
    cpu_isa: str | None = None
    """For CPU targets whose INT8 scheme depends on the instruction set: ``host`` (the machine that
    builds) or a named class (``x86-vnni``, ``x86-avx2``; see ``toolchain.hostcpu``)."""
    int8: dict[str, object] = field(default_factory=dict, hash=False, compare=False)
    """``QuantizeConfig`` defaults of the device's INT8 (what its runtime computes fastest or at all)."""

    def int8_isa(self) -> str | None:
        """The ISA class this target's INT8 is made for: the host's for ``host`` targets."""
        if self.cpu_isa != "host":
            return self.cpu_isa
        from toolchain.hostcpu import host_cpu

        return host_cpu().int8_isa


# TensorRT runs symmetric int8 activations, and its INT8 is judged with exact integer arithmetic (no GPU here).
_TENSORRT_INT8 = {"activation_type": "int8", "activation_symmetric": True, "guard_runtime": "reference"}
_TFLITE_INT8 = {"activation_type": "int8"}  # TFLite's full-integer kernels are signed int8

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("x86", "x86-64 CPU server or PC, ONNX Runtime; INT8 made for the CPU of the machine that builds",
           "onnxruntime", "fp32", 17, "INT8 scheme by this machine's ISA: see x86-vnni and x86-avx2", cpu_isa="host"),
    Target("x86-vnni", "x86-64 CPU with AVX-512 VNNI or AVX-VNNI (Cascade Lake, Ice Lake, Alder Lake, Zen 4 and "
           "newer), ONNX Runtime", "onnxruntime", "fp32", 17, "INT8: uint8 activations x int8 weights, full range",
           cpu_isa="x86-vnni"),
    Target("x86-avx2", "x86-64 CPU with AVX2 but no VNNI (Haswell to Skylake, Zen 1-3), ONNX Runtime",
           "onnxruntime", "fp32", 17, "INT8: 7-bit weights, 8-bit in depthwise convolutions (u8 x s8 GEMM sums saturate there)",
           cpu_isa="x86-avx2"),
    Target("cuda", "NVIDIA desktop/server GPU, TensorRT 10", "tensorrt", "fp16", 17, int8=_TENSORRT_INT8),
    Target("jetson-nano", "Jetson Nano, JetPack 4.6: TensorRT 8.2, CUDA 10.2, Maxwell GPU", "tensorrt", "fp16", 13,
           "FP16 yes; no fast INT8 on Maxwell; TensorRT 8.2's ONNX parser is safest at opset 13", int8=_TENSORRT_INT8),
    Target("jetson-xavier", "Jetson Xavier NX/AGX, JetPack 5: TensorRT 8.5, INT8 and DLA", "tensorrt", "int8", 17,
           int8=_TENSORRT_INT8),
    Target("jetson-orin", "Jetson Orin, JetPack 6: TensorRT 8.6-10.x, INT8 and DLA", "tensorrt", "int8", 17,
           int8=_TENSORRT_INT8),
    Target("rpi4", "Raspberry Pi 4 (Cortex-A72), TFLite with XNNPACK", "tflite", "int8", 17, int8=_TFLITE_INT8),
    Target("rpi5", "Raspberry Pi 5 (Cortex-A76), TFLite with XNNPACK", "tflite", "int8", 17, int8=_TFLITE_INT8),
    Target("mcu", "Microcontroller, TensorFlow Lite Micro, full INT8", "tflite", "int8", 17, int8=_TFLITE_INT8),
)}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UsageError(f"unknown target '{name}'; known targets: {', '.join(TARGETS)}")
    return TARGETS[name]


PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Variant:
    """One artifact a build makes: a target at a precision (``x86`` or ``x86:int8``).

    ``name`` is the artifact's folder in the build output: the target name, suffixed with the
    precision when it differs from the target's default, so two variants never share a folder.
    """

    target: Target
    precision: str

    @property
    def name(self) -> str:
        return self.target.name if self.precision == self.target.precision else f"{self.target.name}-{self.precision}"


def parse_variant(spec: str, find: Callable[[str], Target] | None = None) -> Variant:
    """``TARGET`` or ``TARGET:PRECISION`` (fp32, fp16, int8) as a build variant; ``find`` looks targets up
    (default: the built-in profiles; the pipeline passes ``backends.registry.find_target``, plugins' too)."""
    name, _, precision = spec.partition(":")
    target = (find or get_target)(name.strip())
    precision = precision.strip().lower() or target.precision
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' in '{spec}'; use one of {', '.join(PRECISIONS)}")
    return Variant(target, precision)

