"""Run an MCU artifact where it will run: TFLM's host interpreter, and a Cortex-M4 under QEMU.

``compile --target mcu`` calls ``check_micro`` after writing the bundle; ``edgekiln
verify --on qemu-cortex-m4`` calls ``run_cortex_m4`` on an existing artifact.
Outputs are compared with x86 LiteRT's reference kernels (``BUILTIN_REF``) on
the same int8 inputs, in units of the output's last place (LSB): at most 1
(they have been bit-identical). LiteRT's default kernels (XNNPACK) are not the
reference: they requantize differently, and the difference is recorded, not
judged. The arena TFLM reports on the Cortex-M4
(``arena_used_bytes()``) sizes ``kTensorArenaSize``, plus 10% for optimized
kernels' scratch buffers.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends.tflite.firmware import cortex_m, host, qemu, sources
from backends.tflite.firmware.project import TestVector
from backends.tflite.firmware.tflm import ROOT_ENV, TFLMTree
from backends.tflite.flatbuffer import TFLiteGraph
from toolchain.errors import MissingDependencyError, VerificationError

log = logging.getLogger("edgekiln.tflite")

MAX_LSB = 1
HOST_SAMPLES = 8
SCRATCH_MARGIN = 1.10
X86_LITERT = "x86 LiteRT"
X86_LITERT_REF = "x86 LiteRT (reference kernels)"
HOST_TFLM = "TFLM host interpreter (x86-64)"
CORTEX_M4 = f"Cortex-M4 under QEMU ({sources.BOARD})"


def align16(value: float) -> int:
    return -(-int(np.ceil(value)) // 16) * 16


def agreement(lsb: float) -> str:
    return "bit-identical to" if lsb == 0 else f"within {lsb:g} LSB of"


def output_lsb_scales(graph: TFLiteGraph) -> list[float | None]:
    """Per graph output, the size of one LSB: 1 for integer outputs, the quantized scale behind a DEQUANTIZE."""
    producers = {out: op for op in graph.operators for out in op.outputs}
    scales: list[float | None] = []
    for index in graph.outputs:
        tensor = graph.tensors[index]
        if tensor.dtype in ("int8", "uint8", "int16", "int32"):
            scales.append(1.0)
            continue
        op = producers.get(index)
        if op is not None and op.op == "DEQUANTIZE" and graph.tensors[op.inputs[0]].scales:
            scales.append(float(graph.tensors[op.inputs[0]].scales[0]))
        else:
            scales.append(None)
    return scales


def max_lsb(candidate: list[np.ndarray], reference: list[np.ndarray], scales: list[float | None]) -> float:
    """Largest difference in LSBs over all outputs (inf for a float output that differs without a scale)."""
    worst = 0.0
    for got, want, scale in zip(candidate, reference, scales):
        if got.shape != want.shape:
            return float("inf")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        if not np.isfinite(diff).all():
            return float("inf")
        if scale is None:
            worst = max(worst, 0.0 if not diff.any() else float("inf"))
        else:
            worst = max(worst, float(diff.max(initial=0.0)) / scale)
    return round(worst, 3)


def litert_outputs(model: bytes, input_sets: list[list[np.ndarray]], *,
                   reference_kernels: bool = True) -> list[list[np.ndarray]]:
    """x86 LiteRT's raw outputs (TFLite order and types) for raw inputs (TFLite order).

    ``reference_kernels``: LiteRT's BUILTIN_REF kernels, the arithmetic TFLM's reference kernels implement
    (bit-identical in every model tried). Its default kernels (XNNPACK, optimized builtins) requantize
    differently; over a deep network that adds up to tens of LSBs (35 on a MobileNetV2 at 96x96).
    """
    import sys

    from backends.tflite.runner import interpreter_class, make_interpreter

    if reference_kernels:
        cls = interpreter_class()
        resolver = sys.modules[cls.__module__].OpResolverType.BUILTIN_REF
        interpreter = cls(model_content=model, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    else:
        interpreter = make_interpreter(model)
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    results = []
    for inputs in input_sets:
        for detail, value in zip(ins, inputs):
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        results.append([np.array(interpreter.get_tensor(d["index"])) for d in outs])
    return results


def raw_inputs(model: bytes, graph: TFLiteGraph, bindings: Any, name: str | None,
               samples: np.ndarray | None, count: int, seed: int = 0) -> tuple[list[list[np.ndarray]], str]:
    """Input sets in TFLite layout and type: real samples for the calibrated input, seeded noise elsewhere."""
    from backends.tflite.runner import make_interpreter, quantize

    details = make_interpreter(model).get_input_details()
    signature = next(iter(graph.signatures.values()), {"inputs": {}})["inputs"]
    by_tensor = {signature.get(b.key): b for b in bindings.inputs}
    rng = np.random.default_rng(seed)
    available = 0 if samples is None else len(samples)
    sets = []
    for k in range(max(1, min(count, available) if available else 1)):
        values = []
        for detail in details:
            binding = by_tensor.get(detail["index"])
            dtype = np.dtype(detail["dtype"])
            if binding is not None and binding.name == name and available:
                value = samples[k][None]
                value = value.transpose(binding.perm) if binding.perm is not None else value
                scale, _ = detail["quantization"]
                value = quantize(value, detail) if scale and dtype.kind in "iu" else value.astype(dtype)
            elif dtype.kind in "iu":
                info = np.iinfo(dtype)
                value = rng.integers(info.min, info.max, size=detail["shape"], endpoint=True, dtype=dtype)
            else:
                value = rng.standard_normal(detail["shape"]).astype(dtype)
            values.append(np.ascontiguousarray(value))
        sets.append(values)
    source = (f"held-out calibration sample(s) of input '{name}'" if available else "seeded random inputs")
    return sets, source


@dataclass
class MicroCheck:
    """What ran where, for the manifest and the build report."""

    executed: list[dict[str, Any]] = field(default_factory=list)
    not_executed: list[dict[str, str]] = field(default_factory=list)
    arena_bytes: int | None = None
    """The measured arena that sizes kTensorArenaSize (Cortex-M4 if it ran, else the host's)."""
    arena_source: str | None = None
    firmware: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"executed_on": self.executed, "not_executed_on": self.not_executed}


def host_check(model: bytes, graph: TFLiteGraph, input_sets: list[list[np.ndarray]],
               reference: list[list[np.ndarray]], generous_arena: int, result: MicroCheck) -> None:
    why = host.missing()
    if why:
        result.not_executed.append({"where": HOST_TFLM, "why": why})
        result.notes.append(f"not run on the TFLM host interpreter: {why}")
        return
    try:
        ran = host.run(model, input_sets, len(graph.outputs), generous_arena)
    except MissingDependencyError as exc:
        result.not_executed.append({"where": HOST_TFLM, "why": exc.message})
        result.notes.append(f"not run on the TFLM host interpreter: {exc.message}")
        return
    scales = output_lsb_scales(graph)
    worst = max(max_lsb(got, want, scales) for got, want in zip(ran.outputs, reference))
    if worst > MAX_LSB:
        raise VerificationError(f"the TFLM host interpreter's outputs differ from x86 LiteRT's reference kernels by {worst:g} LSB "
                                f"(at most {MAX_LSB} allowed) on {len(input_sets)} input(s)")
    result.executed.append({"where": HOST_TFLM, "runtime": f"tflite-micro {host.package_version()}",
                            "inputs": len(input_sets), "max_diff_lsb": worst, "arena_bytes": ran.arena_bytes})
    result.arena_bytes, result.arena_source = ran.arena_bytes, HOST_TFLM
    result.notes.append(f"TFLM host interpreter: {len(input_sets)} input(s) {agreement(worst)} x86 LiteRT (reference "
                        f"kernels); "
                        f"needs a {ran.arena_bytes}-byte arena (64-bit host)")


def cortex_m4_missing(tree: TFLMTree | None) -> str | None:
    if tree is None:
        return f"no TFLM source tree (set ${ROOT_ENV} to one; verify also takes --tflm-root)"
    return cortex_m.toolchain_missing() or qemu.qemu_missing()


@dataclass
class CortexM4Run:
    run: qemu.Run
    firmware: cortex_m.Firmware
    max_diff_lsb: float


def run_cortex_m4(project: Path, tree: TFLMTree, cache_root: Path, kernels: list[str], vector: TestVector,
                  graph: TFLiteGraph, arena_bytes: int | None, work: Path, shared: Path | None = None) -> CortexM4Run:
    """Build the project's firmware (arena overridden when given), run it in QEMU, compare with the vector."""
    firmware = cortex_m.build(project, tree, cache_root, work, kernels=kernels, arena_bytes=arena_bytes,
                              shared=shared)
    log.info("TFLM: Cortex-M4 firmware built in %.1f s (%d TFLM objects compiled, %d cached)", firmware.seconds,
             firmware.compiled, firmware.cached)
    ran = qemu.run(firmware.elf)
    log.info("TFLM: ran on QEMU %s in %.1f s (not a latency: QEMU is not cycle-accurate)", sources.BOARD,
             ran.seconds)
    got = qemu.as_arrays(ran, vector.expected)
    worst = max_lsb(got, vector.expected, output_lsb_scales(graph))
    if worst > MAX_LSB:
        raise VerificationError(f"the Cortex-M4 firmware's outputs differ from x86 LiteRT's reference kernels by {worst:g} LSB "
                                f"(at most {MAX_LSB} allowed)")
    return CortexM4Run(ran, firmware, worst)


def describe_cortex_m4(done: CortexM4Run, tree: TFLMTree, arena_bytes: int) -> dict[str, Any]:
    sizes = done.firmware.sizes
    return {"where": CORTEX_M4, "runtime": "TensorFlow Lite Micro (reference kernels)",
            "tflm_revision": tree.revision, "compiler": cortex_m.compiler_version(),
            "flags": " ".join(sources.ARCH_FLAGS), "inputs": 1, "max_diff_lsb": done.max_diff_lsb,
            "arena_used_bytes": done.run.arena_used, "arena_bytes": arena_bytes,
            "flash_bytes": sizes.flash, "ram_bytes": sizes.ram, "sizes": sizes.to_dict(),
            "tflm_objects_compiled": done.firmware.compiled, "tflm_objects_cached": done.firmware.cached}


def measure_on_cortex_m4(project: Path, tree: TFLMTree, cache_root: Path, kernels: list[str], vector: TestVector,
                         graph: TFLiteGraph, generous_arena: int, result: MicroCheck,
                         rewrite_config: Any) -> None:
    """Run once with a generous arena to measure it, size kTensorArenaSize, then run the shipped size."""
    with tempfile.TemporaryDirectory(prefix="edgekiln-fw-") as work:
        shared = Path(work) / "shared"
        probe = run_cortex_m4(project, tree, cache_root, kernels, vector, graph, generous_arena, Path(work) / "probe",
                              shared)
        arena = align16(probe.run.arena_used * SCRATCH_MARGIN)
        rewrite_config(arena, probe.run.arena_used, CORTEX_M4)
        shipped = run_cortex_m4(project, tree, cache_root, kernels, vector, graph, None, Path(work) / "shipped",
                                shared)
    result.arena_bytes, result.arena_source = shipped.run.arena_used, CORTEX_M4
    result.firmware = describe_cortex_m4(shipped, tree, arena)
    result.executed.append(result.firmware)
    sizes = shipped.firmware.sizes
    result.notes.append(f"Cortex-M4 under QEMU {sources.BOARD}: outputs {agreement(shipped.max_diff_lsb)} "
                        f"x86 LiteRT (reference kernels); arena used {shipped.run.arena_used} B (kTensorArenaSize {arena}); firmware "
                        f"flash {sizes.flash} B, RAM {sizes.ram} B (TFLM {tree.revision[:12]})")


def check_budgets(firmware: dict[str, Any], flash_kb: float | None, ram_kb: float | None,
                  building: bool = True) -> None:
    """The measured firmware against --flash-kb/--ram-kb (flash: text+rodata+data; RAM: data+bss incl. arena)."""
    problems = []
    if flash_kb is not None and firmware["flash_bytes"] > flash_kb * 1024:
        problems.append(f"firmware needs {firmware['flash_bytes'] / 1024:.1f} KiB of flash (text + rodata + data, "
                        f"model {firmware['sizes']['model_bytes'] / 1024:.1f} KiB) > --flash-kb {flash_kb:g}")
    if ram_kb is not None and firmware["ram_bytes"] > ram_kb * 1024:
        problems.append(f"firmware needs {firmware['ram_bytes'] / 1024:.1f} KiB of RAM (data + bss, tensor arena "
                        f"{firmware['arena_bytes'] / 1024:.1f} KiB) > --ram-kb {ram_kb:g}")
    if problems:
        raise VerificationError(f"the Cortex-M4 firmware exceeds its budget, measured from the linker map: "
                                f"{'; '.join(problems)}",
                                hint=("Nothing was written. " if building else "") +
                                "Use a smaller model or raise the budget (the stack is not counted).")


def require_cortex_m4(tree: TFLMTree | None) -> TFLMTree:
    why = cortex_m4_missing(tree)
    if why:
        raise MissingDependencyError(f"running on a Cortex-M4 under QEMU needs {why}")
    assert tree is not None
    return tree
