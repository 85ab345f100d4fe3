"""What the numbers were measured on: CPU, instruction-set flags that matter for INT8, versions, load."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# VNNI (avx512_vnni / avx_vnni) gives x86 a fused u8 x s8 dot product: the reason INT8 can beat FP32.
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_int8", "amx_tile")
_PACKAGES = ("onnxruntime", "onnx", "torch", "numpy", "edgekiln", "scikit-image")


def _cpuinfo_field(text: str, key: str) -> str | None:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def cpu() -> dict[str, object]:
    """CPU model and the INT8-relevant flags from /proc/cpuinfo (empty where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or "unknown", "flags": [], "logical_cpus": os.cpu_count()}
    flags = set((_cpuinfo_field(text, "flags") or "").split())
    return {"model": _cpuinfo_field(text, "model name") or "unknown",
            "flags": [f for f in INTERESTING_FLAGS if f in flags],
            "vnni": any(f in flags for f in ("avx512_vnni", "avx_vnni")),
            "logical_cpus": os.cpu_count()}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def describe() -> dict[str, object]:
    return {"cpu": cpu(), "versions": versions(), "platform": platform.platform()}


def summary(described: dict[str, object]) -> str:
    """One line for a record's header, from ``describe()``: CPU, its INT8-relevant flags, library versions."""
    cpu_info = described["cpu"]
    versions_text = ", ".join(f"{k} {v}" for k, v in described["versions"].items())
    return (f"{cpu_info['model']}, {cpu_info['logical_cpus']} logical CPUs, VNNI: {'yes' if cpu_info['vnni'] else 'no'} "
            f"(flags: {', '.join(cpu_info['flags'])}); {versions_text}")


PRODUCT_DIRS = ("toolchain", "backends", "calibration")


def commit() -> str:
    """The checkout's commit (12 hex digits), and which product files differ from it: a record must say
    when it measured code that no commit holds."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout

    found = git("rev-parse", "--short=12", "HEAD").strip()
    dirty = [line[3:] for line in git("status", "--porcelain", "--", *PRODUCT_DIRS).splitlines() if line.strip()]
    return found + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else "")
