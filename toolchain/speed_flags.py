"""Say so when a built variant runs slower than FP32 on the machine that measured both.

A "faster" INT8 model that is slower is shipped only when nobody looks: on a tiny model the per-call
overhead and the quantize/dequantize at the inputs and outputs outweigh the cheaper kernels, and on an
x86 CPU without VNNI the int8 dot products are emulated. The build measures every variant and the FP32
reference in the same run, so the comparison is made there and written into the report.
"""

from __future__ import annotations

from typing import Any

SLOWER_RATIO = 1.10
"""A variant's p50 must exceed the FP32 p50 by this factor to count as slower (p50 noise on a shared host)."""
TINY_MODEL_MS = 1.0
"""Below this FP32 p50 a model is small enough for per-call overhead to decide its speed."""
REFERENCE_BACKEND = "onnxruntime"


def _fp32_baseline(target: dict[str, Any], targets: list[dict[str, Any]],
                   reference: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """The FP32 latency this variant is judged against, and what it is: the same backend's FP32 build in
    this run (the figure the user sees beside it), else for ONNX Runtime the FP32 reference model."""
    for other in targets:
        if other is not target and other["backend"] == target["backend"] and other["precision"] == "fp32" \
                and other.get("status", "ok") == "ok" and other.get("latency"):
            return other["latency"], f"its FP32 build {other['artifact']}"
    if target["backend"] == REFERENCE_BACKEND:
        return reference, "the FP32 model in ONNX Runtime"
    return None, ""  # no FP32 build of this backend here: comparing runtimes would say nothing about INT8


def _reason(fp32_ms: float, isa: str | None, precision: str) -> str:
    if fp32_ms < TINY_MODEL_MS:
        return (f"at {fp32_ms:.2f} ms per FP32 call the model is too small for {precision} to pay: per-call "
                "overhead and the quantize/dequantize at its inputs and outputs dominate")
    if precision == "int8" and isa in ("x86-avx2", "x86-sse"):
        return f"this CPU has no VNNI int8 dot-product instructions ({isa}), so int8 kernels gain little"
    return "its quantize/dequantize nodes and any layers kept in float cost more than its cheaper kernels save"


def flag_slower_variants(targets: list[dict[str, Any]], reference_latency: dict[str, Any] | None,
                         isa: str | None) -> None:
    """Adds ``latency['vs_fp32']`` (FP32 p50 / variant p50: above 1 is faster) to each measured lossy
    variant and, where it is slower than FP32 on this machine, a one-line note saying why."""
    for target in targets:
        latency = target.get("latency")
        if target.get("status", "ok") != "ok" or not latency or target["precision"] == "fp32":
            continue
        baseline, against = _fp32_baseline(target, targets, reference_latency)
        if not baseline or not baseline.get("p50_ms") or not latency.get("p50_ms"):
            continue
        fp32_ms, variant_ms = float(baseline["p50_ms"]), float(latency["p50_ms"])
        latency["vs_fp32"] = round(fp32_ms / variant_ms, 3)
        latency["vs_fp32_against"] = against
        if variant_ms > fp32_ms * SLOWER_RATIO:
            target["notes"].append(
                f"slower than FP32 on this machine: p50 {variant_ms:.3f} ms against {fp32_ms:.3f} ms for "
                f"{against} ({fp32_ms / variant_ms:.2f}x); {_reason(fp32_ms, isa, target['precision'])}. "
                "Measure on the device before shipping it, or ship the FP32 build.")
