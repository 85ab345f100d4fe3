"""Run a ``.tflite`` with the aarch64 LiteRT wheel under qemu-user, as on a Raspberry Pi.

``prepare`` assembles, once, an arm64 userland under the edgekiln cache root:
Debian's arm64 ``python3.11`` packages (``apt-get download`` with a private
package list, so the machine's apt configuration is untouched), and the aarch64
wheels of the LiteRT and numpy versions installed here (``pip download``).
``run`` then executes a small script with ``qemu-aarch64-static -cpu <core> -L
<root>``. XNNPACK's cpuinfo reads ``/proc/cpuinfo`` and ``/sys``; the host's
x86 ones make it crash, so the root carries the files a Raspberry Pi 4 (Cortex-A72)
or 5 (Cortex-A76) shows, and QEMU finds those first. About 80x slower than
native: a check of numbers, never a latency.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toolchain.errors import MissingDependencyError, VerificationError, first_line

if TYPE_CHECKING:
    from backends.tflite.io_binding import IOBindings

log = logging.getLogger("edgekiln.tflite")

QEMU_USER = "qemu-aarch64-static"
PYTHON = "3.11"
CACHE_FOLDER = "aarch64"
READY = "ready.json"
RUN_TIMEOUT_S = 600
# Debian arm64 packages a bare python3.11 needs (Depends of python3.11-minimal/libpython3.11-stdlib, closed by hand).
DEBIAN_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "zlib1g",
                   "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libstdc++6", "libgcc-s1",
                   "libcrypt1")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                   "manylinux2014_aarch64")


@dataclass(frozen=True)
class Core:
    qemu_cpu: str
    part: str
    """MIDR part number /proc/cpuinfo shows."""
    features: str


CORES = {
    "rpi4": Core("cortex-a72", "0xd08", "fp asimd evtstrm crc32 cpuid"),
    "rpi5": Core("cortex-a76", "0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                                        "asimdrdm lrcpc dcpop asimddp"),
}

CHILD = r"""
import sys, json
sys.path.insert(0, sys.argv[1])
import numpy as np
from ai_edge_litert import interpreter as litert
model, inputs, outputs, threads, xnnpack = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == "1"
kwargs = {"num_threads": threads} if threads > 0 else {}
if not xnnpack:
    kwargs["experimental_op_resolver_type"] = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
interp = litert.Interpreter(model_path=model, **kwargs)
interp.allocate_tensors()
ins, outs = interp.get_input_details(), interp.get_output_details()
feed = np.load(inputs)
count = int(feed["count"])
result = {}
for s in range(count):
    for j, d in enumerate(ins):
        interp.set_tensor(d["index"], feed[f"set{s}_{j}"])
    interp.invoke()
    for j, d in enumerate(outs):
        result[f"set{s}_{j}"] = interp.get_tensor(d["index"])
import platform
np.savez(outputs, machine=np.array(platform.machine()), **result)
"""


def litert_version() -> str | None:
    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return None


def cache_root_default() -> Path:
    from backends.tflite.tool_cache import tools_cache_root

    return tools_cache_root()


def env_dir(cache_root: Path) -> Path:
    key = f"py{PYTHON}-litert{litert_version()}-numpy{version('numpy')}"
    return cache_root / CACHE_FOLDER / key


def missing(cache_root: Path) -> str | None:
    """Why aarch64 LiteRT cannot run here, or None."""
    if shutil.which(QEMU_USER) is None:
        return f"{QEMU_USER} is not installed (apt-get install qemu-user-static)"
    if litert_version() is None:
        return "ai-edge-litert is not installed here (pip install 'edgekiln[tflite]')"
    if not (env_dir(cache_root) / READY).is_file():
        return (f"no aarch64 Python + LiteRT prepared under {env_dir(cache_root)} "
                f"(run: python -m backends.tflite.emulate prepare)")
    return None


def _fake_cpu_files(root: Path, core: Core) -> None:
    """/proc/cpuinfo and /sys/devices/system/cpu of a 4-core Raspberry Pi, for XNNPACK's cpuinfo."""
    cpu = root / "sys/devices/system/cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    for name, text in (("kernel_max", "3"), ("possible", "0-3"), ("present", "0-3"), ("online", "0-3")):
        (cpu / name).write_text(text + "\n")
    blocks = []
    for i in range(4):
        (cpu / f"cpu{i}/topology").mkdir(parents=True, exist_ok=True)
        (cpu / f"cpu{i}/cpufreq").mkdir(parents=True, exist_ok=True)
        (cpu / f"cpu{i}/topology/physical_package_id").write_text("0\n")
        (cpu / f"cpu{i}/topology/cluster_cpus_list").write_text("0-3\n")
        (cpu / f"cpu{i}/topology/core_siblings_list").write_text("0-3\n")
        (cpu / f"cpu{i}/topology/thread_siblings_list").write_text(f"{i}\n")
        (cpu / f"cpu{i}/cpufreq/cpuinfo_max_freq").write_text("1800000\n")
        (cpu / f"cpu{i}/cpufreq/cpuinfo_min_freq").write_text("600000\n")
        blocks.append(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {core.features}\nCPU implementer\t: 0x41\n"
                      f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {core.part}\nCPU revision\t: 3\n")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text("\n".join(blocks) + "\n")


def _run_setup(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        lines = [l for l in (done.stderr + done.stdout).splitlines() if l.strip() and "WARNING" not in l]
        raise MissingDependencyError(f"{what} failed: {(lines[-1] if lines else 'no message')[:300]}")


def prepare(cache_root: Path) -> Path:
    """Download and unpack the arm64 userland once (PyPI and Debian by name); returns its folder."""
    target = env_dir(cache_root)
    if (target / READY).is_file():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise MissingDependencyError("preparing the aarch64 Python needs apt-get and dpkg-deb (Debian)")
    if litert_version() is None:
        raise MissingDependencyError("ai-edge-litert is not installed here (pip install 'edgekiln[tflite]')")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".aarch64-", dir=target.parent))
    try:
        apt = staging / "apt"
        for sub in ("lists/partial", "cache/archives/partial", "debs"):
            (apt / sub).mkdir(parents=True)
        options = ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
                   "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
                   "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1", "-qq"]
        log.info("aarch64: fetching Debian's arm64 package lists")
        _run_setup(["apt-get", *options, "update"], "apt-get update (arm64 lists)")
        done = subprocess.run(["apt-get", *options, "download", *DEBIAN_PACKAGES], cwd=apt / "debs",
                              capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise MissingDependencyError(f"apt-get download of arm64 python{PYTHON} failed: "
                                         f"{first_line(RuntimeError(done.stderr))}")
        base = staging / "base"
        for deb in sorted((apt / "debs").glob("*.deb")):
            _run_setup(["dpkg-deb", "-x", str(deb), str(base)], f"unpacking {deb.name}")
        wheels, site = staging / "wheels", staging / "site"
        log.info("aarch64: downloading the aarch64 wheels of ai-edge-litert %s and numpy", litert_version())
        platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        _run_setup([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version",
                    PYTHON, *platforms, "-d", str(wheels), f"ai-edge-litert=={litert_version()}",
                    f"numpy=={version('numpy')}"], "pip download of the aarch64 LiteRT wheel")
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
        for name, core in CORES.items():
            root = staging / f"root-{core.qemu_cpu}"
            shutil.copytree(base, root, symlinks=True, copy_function=os.link)  # hard links: one copy on disk
            _fake_cpu_files(root, core)
        shutil.rmtree(apt)
        shutil.rmtree(wheels)
        shutil.rmtree(base)
        (staging / "child.py").write_text(CHILD)
        (staging / READY).write_text(json.dumps({"litert": litert_version(), "numpy": version("numpy"),
                                                 "python": PYTHON, "packages": DEBIAN_PACKAGES}) + "\n")
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / READY).is_file():  # another process published it first: keep theirs
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass(frozen=True)
class EmulatedRun:
    outputs: list[list[np.ndarray]]
    machine: str
    cpu: str
    seconds: float


def run(model: Path, input_sets: list[list[np.ndarray]], *, target: str | None, threads: int | None,
        xnnpack: bool, cache_root: Path) -> EmulatedRun:
    """Run raw TFLite inputs (subgraph order) with aarch64 LiteRT under QEMU; raw outputs back."""
    why = missing(cache_root)
    if why:
        raise MissingDependencyError(f"running aarch64 LiteRT under QEMU needs {why}")
    env = env_dir(cache_root)
    core = CORES.get(target or "", CORES["rpi4"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekiln-aarch64-") as tmp:
        feed = {f"set{s}_{j}": np.ascontiguousarray(a) for s, values in enumerate(input_sets)
                for j, a in enumerate(values)}
        np.savez(Path(tmp) / "in.npz", count=np.array(len(input_sets)), **feed)
        command = [shutil.which(QEMU_USER) or QEMU_USER, "-cpu", core.qemu_cpu, "-L", str(env / f"root-{core.qemu_cpu}"),
                   str(env / f"root-{core.qemu_cpu}/usr/bin/python{PYTHON}"), "-I", str(env / "child.py"),
                   str(env / "site"), str(model.resolve()), str(Path(tmp) / "in.npz"), str(Path(tmp) / "out.npz"),
                   str(threads or 0), "1" if xnnpack else "0"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        except subprocess.TimeoutExpired as exc:
            raise VerificationError(f"aarch64 LiteRT under QEMU did not finish within {RUN_TIMEOUT_S} s") from exc
        if done.returncode != 0 or not (Path(tmp) / "out.npz").is_file():
            lines = [l for l in done.stderr.splitlines() if l.strip() and "XNNPACK" not in l]
            raise VerificationError(f"aarch64 LiteRT under QEMU failed (exit code {done.returncode}): "
                                    f"{(lines[-1] if lines else 'no message')[:300]}")
        with np.load(Path(tmp) / "out.npz", allow_pickle=False) as data:
            count = len(input_sets)
            per_set = sum(1 for k in data.files if k.startswith("set0_"))
            outputs = [[data[f"set{s}_{j}"] for j in range(per_set)] for s in range(count)]
            machine = str(data["machine"])
    return EmulatedRun(outputs, machine, core.qemu_cpu, time.perf_counter() - started)


def main(argv: list[str]) -> int:
    """``python -m backends.tflite.emulate prepare [CACHE_ROOT]``: set up once (CI runs this)."""
    if not argv or argv[0] != "prepare":
        print("usage: python -m backends.tflite.emulate prepare [CACHE_ROOT]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(argv[1]) if len(argv) > 1 else cache_root_default()
    try:
        print(prepare(root))
    except MissingDependencyError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


AARCH64 = "aarch64 LiteRT under QEMU"


def raw_feeds(model: Path | bytes, bindings: "IOBindings", feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """ONNX-layout feeds -> raw TFLite inputs in subgraph order (transposed, quantized where the model is int8)."""
    from backends.tflite.runner import make_interpreter, quantize, tensor_details

    interpreter = make_interpreter(model)
    keyed, _ = tensor_details(interpreter)
    order = [d["index"] for d in interpreter.get_input_details()]
    by_index = {keyed[b.key]["index"]: (b, keyed[b.key]) for b in bindings.inputs}
    sets = []
    for feed in feeds:
        values = []
        for index in order:
            binding, detail = by_index[index]
            value = np.asarray(feed[binding.name])
            value = value.transpose(binding.perm) if binding.perm is not None else value
            dtype = np.dtype(detail["dtype"])
            scale, _ = detail["quantization"]
            value = quantize(value, detail) if scale and dtype.kind in "iu" and value.dtype.kind == "f" \
                else value.astype(dtype)
            values.append(np.ascontiguousarray(value))
        sets.append(values)
    return sets


def compare_with_x86(model: Path, input_sets: list[list[np.ndarray]], *, target: str | None, threads: int | None,
                     xnnpack: bool, cache_root: Path) -> dict:
    """aarch64 LiteRT under QEMU against x86 LiteRT (same threads and delegate); raises when they differ."""
    from backends.tflite.firmware.check import MAX_LSB, max_lsb, output_lsb_scales
    from backends.tflite.flatbuffer import parse_tflite
    from backends.tflite.runner import make_interpreter

    emulated = run(model, input_sets, target=target, threads=threads, xnnpack=xnnpack, cache_root=cache_root)
    interpreter = make_interpreter(model, threads, xnnpack)
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    scales = output_lsb_scales(parse_tflite(model.read_bytes(), model.name))
    worst_lsb, worst_abs, identical = 0.0, 0.0, True
    for inputs, got in zip(input_sets, emulated.outputs):
        for detail, value in zip(ins, inputs):
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        want = [np.array(interpreter.get_tensor(d["index"])) for d in outs]
        identical = identical and all(np.array_equal(a, b) for a, b in zip(got, want))
        worst_abs = max(worst_abs, max(float(np.abs(a.astype(np.float64) - b).max(initial=0.0))
                                       for a, b in zip(got, want)))
        for a, b, scale in zip(got, want, scales):
            if scale is not None:  # integer output, or dequantized from one: compare in its LSBs
                worst_lsb = max(worst_lsb, max_lsb([a], [b], [scale]))
            elif not np.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max(initial=0.0)))):
                worst_lsb = float("inf")  # float model: SIMD widths may reorder sums, nothing more
    log.info("aarch64: %d input set(s) on %s under QEMU in %.1f s (not a latency), %s", len(input_sets),
             emulated.cpu, emulated.seconds, "bit-identical to x86" if identical else f"max abs {worst_abs:.3g}")
    if worst_lsb > MAX_LSB:
        raise VerificationError(f"aarch64 LiteRT under QEMU ({emulated.cpu}) differs from x86 LiteRT: max abs "
                                f"{worst_abs:.3g} ({worst_lsb:g} LSB) on {len(input_sets)} input(s)")
    return {"where": AARCH64, "machine": emulated.machine, "cpu": emulated.cpu,
            "runtime": f"ai-edge-litert {litert_version()} (aarch64 wheel)", "inputs": len(input_sets),
            "bit_identical": identical, "max_abs": worst_abs, "max_diff_lsb": worst_lsb,
            "threads": threads, "xnnpack": xnnpack}


BUILD_SAMPLES = 4


def check_skipped(why: str) -> dict:
    """What ``compile --target rpi4/rpi5`` records when its checks were turned off: nothing ran anywhere."""
    return {"executed_on": [], "not_executed_on": [{"where": AARCH64, "why": why}],
            "notes": [f"not run on aarch64 LiteRT: {why}"]}


def build_check(model_path: Path, bindings: "IOBindings", target: str, threads: int | None, xnnpack: bool,
                onnx_model, quant) -> dict:
    """What ``compile --target rpi4/rpi5`` records: the aarch64 run where it can happen, else why not."""
    from backends.tflite.firmware.check import X86_LITERT
    from toolchain.feeds import random_feed

    executed = [{"where": X86_LITERT, "what": "verification against ONNX Runtime"}]
    cache_root = cache_root_default()
    why = missing(cache_root)
    if why is not None:
        return {"executed_on": executed, "not_executed_on": [{"where": AARCH64, "why": why}],
                "notes": [f"not run on aarch64 LiteRT: {why}"]}
    feeds = [random_feed([b.info() for b in bindings.inputs], seed=i) for i in range(BUILD_SAMPLES)]
    origin = "seeded random inputs"
    if quant is not None and getattr(quant, "calibration", None) is not None:
        from backends.tflite.int8 import load_samples

        samples = load_samples(onnx_model, quant.calibration)
        chosen = samples.holdout if len(samples.holdout) else samples.calibration
        for feed, sample in zip(feeds, chosen[:BUILD_SAMPLES]):
            feed[samples.name] = sample[None]
        origin = "held-out calibration samples"
    record = compare_with_x86(model_path, raw_feeds(model_path, bindings, feeds), target=target, threads=threads,
                              xnnpack=xnnpack, cache_root=cache_root)
    record["input_source"] = origin
    same = "bit-identical to" if record["bit_identical"] else f"within {record['max_diff_lsb']:g} LSB of"
    return {"executed_on": executed + [record], "not_executed_on": [],
            "notes": [f"aarch64 LiteRT under QEMU ({record['cpu']}): {record['inputs']} {origin} {same} x86 LiteRT"]}
