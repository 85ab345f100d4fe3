"""``edgekiln verify ARTIFACT --on DEVICE``: run an artifact on its own instruction set, emulated.

``qemu-cortex-m4``: the ``--target mcu`` firmware project compiled with
arm-none-eabi-gcc against a TFLM tree, run on QEMU's mps2-an386, outputs within
1 LSB of x86 LiteRT's reference kernels, measured arena and flash/RAM against the budgets.
``qemu-aarch64``: a TFLite artifact run by the aarch64 LiteRT wheel under
qemu-user and compared with x86 LiteRT. The result is recorded in the
artifact's ``manifest.json`` (``metrics.details.executed_on``), replacing an
earlier record of the same device, by an atomic rewrite.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.artifact import MANIFEST_NAME, Artifact
from toolchain.errors import InputFileError, UsageError

DEVICES = {"qemu-cortex-m4": "Cortex-M4F on QEMU mps2-an386, TensorFlow Lite Micro",
           "qemu-aarch64": "aarch64 LiteRT under qemu-user (Raspberry Pi 4: Cortex-A72, Pi 5: Cortex-A76)"}


@dataclass
class DeviceCheck:
    artifact: Path
    device: str
    record: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": str(self.artifact), "device": self.device, "record": self.record,
                "seconds": round(self.seconds, 3), "notes": self.notes}


def verify_on(artifact_path: Path, device: str, *, tflm_root: Path | None = None, flash_kb: float | None = None,
              ram_kb: float | None = None, calib: Path | None = None, count: int = 4, seed: int = 0,
              record: bool = True) -> DeviceCheck:
    if device not in DEVICES:
        raise UsageError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    artifact = Artifact.open(Path(artifact_path))
    if artifact.backend != "tflite":
        raise UsageError(f"'{artifact_path}' is a {artifact.backend} artifact; --on {device} runs TFLite artifacts")
    started = time.perf_counter()
    if device == "qemu-cortex-m4":
        result, notes = _cortex_m4(artifact, tflm_root, flash_kb, ram_kb)
    else:
        result, notes = _aarch64(artifact, calib, count, seed)
    if record:
        _record(artifact, result)
    return DeviceCheck(artifact.path, device, result, time.perf_counter() - started, notes)


def _budget(value: float | None, artifact: Artifact, key: str) -> float | None:
    chosen = value if value is not None else artifact.manifest.get("options", {}).get(key)
    if chosen is not None and (isinstance(chosen, bool) or not isinstance(chosen, (int, float)) or chosen <= 0):
        raise UsageError(f"--{key.replace('_', '-')} must be a positive number of KiB, got {chosen!r}")
    return chosen


def _configured_arena(folder: Path) -> int:
    text = (folder / "model_config.h").read_text(errors="replace")
    match = re.search(r"kTensorArenaSize\s*=\s*(\d+)", text)
    if match is None:
        raise InputFileError(f"{folder / 'model_config.h'} has no kTensorArenaSize")
    return int(match.group(1))


def _cortex_m4(artifact: Artifact, tflm_root: Path | None, flash_kb: float | None,
               ram_kb: float | None) -> tuple[dict[str, Any], list[str]]:
    from backends.tflite.firmware import check, project, qemu
    from backends.tflite.firmware.cortex_m import cache_root_default
    from backends.tflite.firmware.tflm import ROOT_ENV, TFLMTree
    from backends.tflite.flatbuffer import parse_tflite

    folder = artifact.path
    if artifact.manifest.get("options", {}).get("target") != "mcu":
        raise UsageError(f"'{folder}' was not built for --target mcu; --on qemu-cortex-m4 runs the MCU firmware")
    missing = [name for name in project.PROJECT_FILES + ("model_data.cc", "model_ops.h", "model_config.h")
               if not (folder / name).is_file()]
    if missing:
        raise InputFileError(f"'{folder}' has no firmware project ({', '.join(missing)} missing)",
                             hint="Rebuild it with this edgekiln: compile/build --target mcu.")
    flash_kb, ram_kb = _budget(flash_kb, artifact, "flash_kb"), _budget(ram_kb, artifact, "ram_kb")
    tree = TFLMTree.locate(tflm_root)
    if tree is None:
        raise UsageError(f"--on qemu-cortex-m4 needs a TensorFlow Lite Micro source tree: pass --tflm-root DIR "
                         f"or set ${ROOT_ENV}")
    check.require_cortex_m4(tree)
    mcu = artifact.manifest.get("metrics", {}).get("details", {}).get("mcu", {})
    methods = mcu.get("resolver_calls") or re.findall(r"resolver\.(Add\w+)\(", (folder / "model_ops.h").read_text())
    lacking = sorted(set(methods) - tree.resolver_methods())
    if lacking:
        from toolchain.errors import ConversionError

        raise ConversionError(f"the TFLM tree at '{tree.root}' (revision {tree.revision[:12]}) has no "
                              f"{', '.join(lacking)} (ops this model uses)",
                              hint="Use a newer TensorFlow Lite Micro, or change the model to avoid these ops.")
    kernels = tree.kernel_sources(methods)
    model = artifact.model_path.read_bytes()
    graph = parse_tflite(model, artifact.model_path.name)
    stored = project.TestVector.load(folder / project.TEST_VECTOR_FILE)
    fresh = check.litert_outputs(model, [stored.inputs])[0]  # recomputed: the stored copy is not trusted
    vector = project.TestVector(stored.inputs, fresh, stored.source)
    notes = []
    if check.max_lsb(fresh, stored.expected, check.output_lsb_scales(graph)) != 0:
        notes.append("this LiteRT's outputs differ from the ones stored in the test vector; compared with this one")
    configured = _configured_arena(folder)
    cache_root = cache_root_default()
    with tempfile.TemporaryDirectory(prefix="edgekiln-verify-") as work:
        try:
            done = check.run_cortex_m4(folder, tree, cache_root, kernels, vector, graph, None, Path(work) / "shipped",
                                       Path(work) / "shared")
        except qemu.ArenaTooSmall:
            probe = check.align16(max(2 * configured, configured + 65536))
            measured = check.run_cortex_m4(folder, tree, cache_root, kernels, vector, graph, probe,
                                           Path(work) / "probe", Path(work) / "shared")
            from toolchain.errors import VerificationError

            raise VerificationError(f"kTensorArenaSize in model_config.h ({configured} B) is too small: TFLM "
                                    f"needs {measured.run.arena_used} B on the Cortex-M4",
                                    hint="Raise kTensorArenaSize, or rebuild the artifact (the build measures it).")
    result = check.describe_cortex_m4(done, tree, configured)
    check.check_budgets(result, flash_kb, ram_kb, building=False)
    if check.host.missing() is None:
        host_result = check.MicroCheck()
        check.host_check(model, graph, [vector.inputs], [vector.expected], max(4 * configured, 1 << 20), host_result)
        notes += host_result.notes
    notes.append(f"Cortex-M4 under QEMU {check.sources.BOARD}: {check.agreement(done.max_diff_lsb)} x86 LiteRT "
                 f"(reference kernels); "
                 f"arena used {done.run.arena_used} B of {configured} B; flash {result['flash_bytes']} B, "
                 f"RAM {result['ram_bytes']} B; TFLM {tree.revision}")
    return result, notes


def _aarch64(artifact: Artifact, calib: Path | None, count: int, seed: int) -> tuple[dict[str, Any], list[str]]:
    from backends.tflite import emulate
    from backends.tflite.io_binding import IOBindings
    from toolchain.compare import comparison_feeds

    if count < 1:
        raise UsageError(f"--count must be at least 1, got {count}")
    target = artifact.manifest.get("options", {}).get("target")
    io = artifact.runtime_options.get("io")
    if not io:
        raise InputFileError(f"'{artifact.path}' has no input/output bindings in its manifest")
    bindings = IOBindings.from_dict(io)
    feeds = comparison_feeds(artifact, calib, count, seed)
    inputs = emulate.raw_feeds(artifact.model_path, bindings, feeds)
    options = artifact.runtime_options
    result = emulate.compare_with_x86(artifact.model_path, inputs, target=target, threads=options.get("threads"),
                                      xnnpack=options.get("xnnpack", True), cache_root=emulate.cache_root_default())
    result["input_source"] = f"images from {calib}" if calib else "seeded random inputs"
    same = "bit-identical to" if result["bit_identical"] else f"within {result['max_diff_lsb']:g} LSB of"
    return result, [f"aarch64 LiteRT under QEMU ({result['cpu']}): {result['inputs']} input(s) {same} x86 LiteRT"]


def _record(artifact: Artifact, result: dict[str, Any]) -> None:
    """Replace this device's entry in ``executed_on`` (and drop it from ``not_executed_on``), atomically."""
    path = artifact.path / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    details = manifest.setdefault("metrics", {}).setdefault("details", {})
    details["executed_on"] = [e for e in details.get("executed_on", []) if e.get("where") != result["where"]]
    details["executed_on"].append(result)
    details["not_executed_on"] = [e for e in details.get("not_executed_on", []) if e.get("where") != result["where"]]
    fd, partial = tempfile.mkstemp(prefix=".manifest.", dir=artifact.path)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
