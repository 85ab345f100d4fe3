"""The ``--target mcu`` bundle: model array, config, ops, firmware project, and the checks that size it.

Order: ops TFLM has, the arena estimate, the model against --flash-kb; a real
test vector; the bundle and firmware project; the TFLM host interpreter on
held-out samples (outputs and the arena it needs); then, where a TFLM tree
(``$EDGEKILN_TFLM_ROOT``), ``arm-none-eabi-gcc`` and ``qemu-system-arm`` are
present, the firmware built and run on a Cortex-M4, its measured arena written
into ``model_config.h`` and its flash/RAM checked against the budgets. Any
failure raises before the artifact folder is published, so nothing is left.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from backends.tflite.firmware import check, project
from backends.tflite.firmware.tflm import TFLMTree
from backends.tflite.flatbuffer import TFLiteGraph
from backends.tflite.io_binding import IOBindings
from backends.tflite.mcu import (MicroBudget, bundle_details, check_budgets, estimate_arena,
                                 model_config_file, require_micro_ops, write_bundle)

log = logging.getLogger("edgekiln.tflite")

_RAM_CAP = 3 * 1024 * 1024  # the probe arena must leave room in the board's 4 MiB RAM


def _samples(model: onnx.ModelProto, quant: Any) -> tuple[str | None, np.ndarray | None]:
    """Held-out samples of the calibrated input (calibration samples when nothing is held out)."""
    if quant is None or quant.calibration is None:
        return None, None
    from backends.tflite.int8 import load_samples

    samples = load_samples(model, quant.calibration)
    chosen = samples.holdout if len(samples.holdout) else samples.calibration
    return samples.name, chosen


def micro_bundle(out_dir: Path, data: bytes, graph: TFLiteGraph, bindings: IOBindings, budget: MicroBudget,
                 source: str, model: onnx.ModelProto, quant: Any, tflm_root: str | None = None) -> dict[str, Any]:
    """``tflm_root``: the compile option of that name, else ``$EDGEKILN_TFLM_ROOT``."""
    ops = require_micro_ops(graph)
    estimate = estimate_arena(graph)
    tree = TFLMTree.locate(tflm_root)
    why_not = check.cortex_m4_missing(tree)
    # Fail early on what is certain: the model alone against --flash-kb; without the Cortex-M4 run, the
    # estimated arena against --ram-kb too (with it, the measured firmware is checked instead).
    check_budgets(len(data), estimate if why_not else None, MicroBudget(budget.flash_kb, budget.ram_kb))
    kernels = tree.kernel_sources([m for _, m in ops.registrations]) if tree is not None else None
    name, samples = _samples(model, quant)
    input_sets, origin = check.raw_inputs(data, graph, bindings, name, samples, check.HOST_SAMPLES)
    reference = check.litert_outputs(data, input_sets)
    default = check.litert_outputs(data, input_sets, reference_kernels=False)
    scales = check.output_lsb_scales(graph)
    vector = project.TestVector(input_sets[0], reference[0], origin.replace("sample(s)", "sample"))
    result = check.MicroCheck(executed=[{
        "where": check.X86_LITERT, "inputs": len(input_sets),
        "what": "reference outputs for the TFLM checks (BUILTIN_REF kernels); verification (default kernels)",
        "reference_vs_default_max_lsb": max(check.max_lsb(a, b, scales) for a, b in zip(default, reference))}])

    check.host_check(data, graph, input_sets, reference, max(4 * estimate.total, 1 << 20), result)
    arena = estimate
    if result.arena_bytes is not None and result.arena_bytes > estimate.total:
        arena = replace(estimate, total=check.align16(result.arena_bytes))  # the estimate was low: trust the run
    if why_not is not None and arena is not estimate:
        check_budgets(len(data), arena, budget)
    files = write_bundle(out_dir, data, graph, bindings, ops, arena, source)
    if arena is not estimate:
        (out_dir / "model_config.h").write_text(model_config_file(
            graph, bindings, arena, source, measured=f"{result.arena_bytes} B needed by TFLM's host interpreter "
            f"(64-bit: an upper bound for a 32-bit MCU); edgekiln's estimate was {estimate.total} B."))
    files += project.write_project(out_dir, vector, source, core=tree.core_sources() if tree else None,
                                   kernels=kernels, checked=None, ops=[op for op, _ in ops.registrations])
    shipped = {"total": arena.total, "measured": arena.total != estimate.total, "source": result.arena_source}

    if why_not is None:
        assert tree is not None and kernels is not None

        def rewrite_config(size: int, used: int, where: str) -> None:
            note = (f"{used} B used on the {where} (TFLM arena_used_bytes()), plus 10% for optimized kernels' "
                    f"scratch; edgekiln's estimate was {estimate.total} B.")
            (out_dir / "model_config.h").write_text(
                model_config_file(graph, bindings, replace(estimate, total=size), source, measured=note))
            shipped.update(total=size, measured=True, source=where)

        probe = min(_RAM_CAP, check.align16(max(2 * estimate.total, estimate.total + 65536)))
        check.measure_on_cortex_m4(out_dir, tree, check.cortex_m.cache_root_default(), kernels, vector, graph,
                                   probe, result, rewrite_config)
        check.check_budgets(result.firmware, budget.flash_kb, budget.ram_kb)
        project.update_readme(out_dir, {"tflm_revision": tree.revision, "compiler": result.firmware["compiler"],
                                        "max_diff_lsb": result.firmware["max_diff_lsb"],
                                        "arena_used_bytes": result.firmware["arena_used_bytes"],
                                        "flash_bytes": result.firmware["flash_bytes"],
                                        "ram_bytes": result.firmware["ram_bytes"]},
                              [op for op, _ in ops.registrations])
    else:
        result.not_executed.append({"where": check.CORTEX_M4, "why": why_not})
        result.notes.append(f"not run on a Cortex-M4: {why_not}")
    details = bundle_details(data, ops, estimate, files)
    details["arena"] = {**estimate.to_dict(), "estimate": estimate.total, "total": shipped["total"],
                        "measured_on": shipped["source"] if shipped["measured"] else None,
                        "measured_bytes": result.arena_bytes}
    if tree is not None:
        details["tflm_revision"] = tree.revision
    if result.firmware is not None:
        details["firmware"] = result.firmware
    return {"mcu": details, **result.to_dict(), "notes": result.notes}


def device_check_environment(target: str | None, tflm_root: str | None = None) -> dict[str, str]:
    """What decides whether a compile for ``target`` runs on emulated devices: for the build's stage key.

    A cached compile made without TFLM/QEMU must not stand in for one that would have run them.
    """
    from backends.tflite import emulate
    from backends.tflite.firmware import cortex_m, host, qemu

    if target == "mcu":
        tree = TFLMTree.locate(tflm_root)
        return {"tflite-micro": host.package_version() if host.missing() is None else "absent",
                "tflm": tree.content_hash if tree is not None else "absent",
                "arm-gcc": "absent" if cortex_m.toolchain_missing() else cortex_m.compiler_version(),
                "qemu-system-arm": "absent" if qemu.qemu_missing() else "present"}
    if target in emulate.CORES:
        root = emulate.cache_root_default()
        return {"aarch64": "absent" if emulate.missing(root) else str(emulate.env_dir(root))}
    return {}
