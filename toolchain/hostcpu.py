"""The CPU this process runs on: its model and the instruction-set features INT8 kernels depend on.

ONNX Runtime's x86 INT8 kernels differ by ISA. With AVX-512 VNNI (or AVX-VNNI) a u8 x s8 dot
product accumulates exactly in int32; without it (AVX2, AVX-512 without VNNI) MLAS uses
``vpmaddubsw``, which adds pairs of u8 x s8 products into a *saturating* int16, so full-range
8-bit weights can overflow (ONNX Runtime's quantization docs; the remedy is 7-bit weights,
``reduce_range``). The features are read with CPUID, through numpy's own CPU dispatch probe,
so they describe the CPU this process really sees (inside a VM or an emulator too), not what
``/proc/cpuinfo`` of the host says.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Int8Isa = Literal["x86-vnni", "x86-avx2", "x86-sse", "arm64", "other"]

# numpy's CPUID feature names -> the names used in edgekiln's reports (Linux /proc/cpuinfo spelling).
_NUMPY_FEATURES = {"AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                   "AVX512VNNI": "avx512_vnni", "AVX512_SPR": "avx512_fp16", "ASIMD": "asimd",
                   "ASIMDDP": "asimddp", "SVE": "sve"}
# Features numpy does not probe; taken from /proc/cpuinfo only when it describes this CPU (see _cpuinfo_agrees).
_CPUINFO_ONLY = ("avx_vnni", "amx_int8")


@dataclass(frozen=True)
class HostCpu:
    model: str
    machine: str
    features: tuple[str, ...]
    logical_cpus: int

    @property
    def int8_isa(self) -> Int8Isa:
        """The class of INT8 kernels ONNX Runtime picks here (what decides the x86 INT8 scheme)."""
        has = set(self.features)
        if self.machine in ("x86_64", "AMD64", "i686", "x86"):
            if has & {"avx512_vnni", "avx_vnni", "amx_int8"}:
                return "x86-vnni"
            if "avx2" in has:
                return "x86-avx2"  # AVX-512 without VNNI has the same saturating u8s8 path
            return "x86-sse"
        if self.machine in ("aarch64", "arm64"):
            return "arm64"
        return "other"

    def describe(self) -> str:
        """One line for reports: ``AMD EPYC, x86-vnni (avx2 avx512f avx512_vnni), 2 CPUs``."""
        shown = " ".join(self.features) or "no SIMD features detected"
        return f"{self.model}, {self.int8_isa} ({shown}), {self.logical_cpus} CPUs"

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "machine": self.machine, "int8_isa": self.int8_isa,
                "features": list(self.features), "logical_cpus": self.logical_cpus}


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _numpy_features() -> set[str]:
    try:  # numpy runs CPUID (or reads HWCAP) itself to pick its own kernels
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return {ours for theirs, ours in _NUMPY_FEATURES.items() if __cpu_features__.get(theirs)}


def _cpuinfo_agrees(cpuid: set[str], flags: set[str]) -> bool:
    """/proc/cpuinfo is the host's even under an emulator or a CPUID-masking hypervisor: trust its
    extra flags only when it agrees with CPUID on the features both know."""
    return all((name in cpuid) == (name in flags) for name in ("avx2", "avx512f", "avx512_vnni"))


@functools.lru_cache(maxsize=1)
def host_cpu() -> HostCpu:
    """The CPU this process runs on (cached: it does not change while the process runs)."""
    model, flags = _cpuinfo()
    features = _numpy_features()
    if _cpuinfo_agrees(features, flags):
        features |= {name for name in _CPUINFO_ONLY if name in flags}
    return HostCpu(model or platform.processor() or "unknown CPU", platform.machine(),
                   tuple(sorted(features)), os.cpu_count() or 1)
