"""Compile and link the firmware for Cortex-M4F with ``arm-none-eabi-gcc``; sizes from the linker map.

TFLM's objects depend only on the compiler, the flags and the TFLM sources, so
they are cached under ``<cache root>/tflm/<key>/`` (key: compiler version,
flags, sha256 of the TFLM tree) and shared by every model and every rebuild,
like ccache. Each object is published by an atomic rename, so concurrent builds
never read a half-written one. The model's own files are compiled fresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.tflite.firmware import sources
from backends.tflite.firmware.tflm import TFLMTree
from toolchain.errors import ConversionError, MissingDependencyError

log = logging.getLogger("edgekiln.tflite")

CROSS = "arm-none-eabi-"
CACHE_FOLDER = "tflm"
_COMPILE_TIMEOUT_S = 600
# Output sections in flash (code and read-only data, plus .data's initial values) and in RAM.
_FLASH_SECTIONS = (".text", ".rodata", ".ARM.extab", ".ARM.exidx", ".preinit_array", ".init_array", ".fini_array")


def toolchain_missing() -> str | None:
    """Why the Cortex-M toolchain cannot be used here, or None."""
    for tool in ("gcc", "g++"):
        if shutil.which(CROSS + tool) is None:
            return f"{CROSS}{tool} is not installed (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi " \
                   f"libstdc++-arm-none-eabi-newlib)"
    return None


def require_toolchain() -> None:
    why = toolchain_missing()
    if why:
        raise MissingDependencyError(f"building the Cortex-M4 firmware needs {why}")


def compiler_version() -> str:
    done = subprocess.run([CROSS + "g++", "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.splitlines()[0] if done.stdout else "unknown"


@dataclass(frozen=True)
class Sizes:
    """Bytes per output section group, read from the linker map."""

    text: int
    rodata: int
    data: int
    bss: int
    arena: int
    stack: int
    model: int

    @property
    def flash(self) -> int:
        return self.text + self.rodata + self.data

    @property
    def ram(self) -> int:
        """data + bss; the tensor arena is a bss array, so it is included."""
        return self.data + self.bss

    def to_dict(self) -> dict[str, int]:
        return {"flash_bytes": self.flash, "ram_bytes": self.ram, "text": self.text, "rodata": self.rodata,
                "data": self.data, "bss": self.bss, "arena_bytes": self.arena, "stack_bytes": self.stack,
                "model_bytes": self.model}


@dataclass
class Firmware:
    elf: Path
    map_file: Path
    sizes: Sizes
    compiled: int
    """TFLM objects compiled by this build (the rest came from the cache)."""
    cached: int
    seconds: float
    sources: dict[str, list[str]] = field(default_factory=dict)


def cache_root_default() -> Path:
    from backends.tflite.tool_cache import tools_cache_root

    return tools_cache_root()


def cache_dir(tree: TFLMTree, cache_root: Path) -> Path:
    flags = {"arch": sources.ARCH_FLAGS, "common": sources.COMMON_FLAGS, "cxx": sources.CXX_FLAGS,
             "core": sources.CORE_OPT, "kernel": sources.KERNEL_OPT, "compiler": compiler_version()}
    key = hashlib.sha256(json.dumps(flags, sort_keys=True).encode() + tree.content_hash.encode()).hexdigest()[:24]
    return cache_root / CACHE_FOLDER / key


def _cxx_command(tree: TFLMTree, opt: str, source: Path, output: Path, extra_includes: list[str]) -> list[str]:
    return [CROSS + "g++", *sources.ARCH_FLAGS, *sources.COMMON_FLAGS, *sources.CXX_FLAGS, opt,
            *extra_includes, *tree.include_flags(), "-c", str(source), "-o", str(output)]


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"{what} took longer than {_COMPILE_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "error" in line.lower()] or done.stderr.splitlines()
        raise ConversionError(f"{what} failed: {(errors[0] if errors else 'no message')[:400]}")


def _cached_object(tree: TFLMTree, rel: str, opt: str, folder: Path) -> tuple[Path, bool]:
    """The object for TFLM source ``rel``: from the cache, or compiled and published atomically."""
    target = folder / (rel.replace("/", "__") + ".o")
    if target.is_file() and target.stat().st_size > 0:
        return target, False
    folder.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=target.name + ".", suffix=".partial", dir=folder)
    os.close(fd)
    try:
        _run(_cxx_command(tree, opt, tree.root / rel, Path(partial), []), f"compiling TFLM's {rel}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target, True


def build(project: Path, tree: TFLMTree, cache_root: Path, work: Path, *, kernels: list[str],
          arena_bytes: int | None = None, jobs: int | None = None, shared: Path | None = None) -> Firmware:
    """Compile TFLM (cached) and the project in ``project``; link ``work/firmware.elf`` and its map.

    ``shared``: a folder where the model's array and test vector objects are kept for another build of the
    same project (only ``main.cc`` depends on the arena size).
    """
    require_toolchain()
    started = time.perf_counter()
    objects_dir = cache_dir(tree, cache_root)
    core = tree.core_sources()
    units = [(rel, sources.CORE_OPT) for rel in core] + [(rel, sources.KERNEL_OPT) for rel in kernels]
    workers = jobs or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda unit: _cached_object(tree, unit[0], unit[1], objects_dir), units))
    compiled = sum(1 for _, fresh in results if fresh)
    app_dir = work / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    defines = [f"-DEDGEKILN_ARENA_SIZE={arena_bytes}"] if arena_bytes else []
    data_dir = shared or app_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    app_units = [(project / "main.cc", app_dir / "main.o")] + [
        (project / name, data_dir / (name.replace("/", "__") + ".o")) for name in ("model_data.cc", "test_vector.cc")]

    def compile_app(unit: tuple[Path, Path]) -> Path:
        source, output = unit
        if output.parent == data_dir and shared is not None and output.is_file():
            return output
        _run(_cxx_command(tree, sources.KERNEL_OPT, source, output, [f"-I{project}", *defines]),
             f"compiling the firmware's {source.name}")
        return output

    with ThreadPoolExecutor(max_workers=workers) as pool:
        app_objects = list(pool.map(compile_app, app_units))
    startup = project / "board" / sources.BOARD / "startup.c"
    startup_object = app_dir / "startup.o"
    _run([CROSS + "gcc", *sources.ARCH_FLAGS, *sources.COMMON_FLAGS, *sources.C_FLAGS, sources.KERNEL_OPT,
          "-c", str(startup), "-o", str(startup_object)], "compiling the board start-up code")
    elf, map_file = work / "firmware.elf", work / "firmware.map"
    script = project / "board" / sources.BOARD / "linker.ld"
    _run([CROSS + "g++", *sources.ARCH_FLAGS, *sources.LINK_FLAGS, "-T", str(script), f"-Wl,-Map={map_file}",
          str(startup_object), *map(str, app_objects), *(str(path) for path, _ in results), "-o", str(elf)],
         "linking the firmware")
    sizes = read_map(map_file.read_text(errors="replace"))
    return Firmware(elf, map_file, sizes, compiled, len(results) - compiled, time.perf_counter() - started,
                    {"core": core, "kernels": kernels})


_SECTION = re.compile(r"^(\.[A-Za-z0-9_.]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)", re.M)
_SECTION_WRAPPED = re.compile(r"^(\.[A-Za-z0-9_.]+)\n\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)", re.M)
_SYMBOL_SIZE = r"^\s+{section}\.?\S*{symbol}\S*\s*\n?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)"


def read_map(text: str) -> Sizes:
    """Output-section sizes from GNU ld's map ('Linker script and memory map' part)."""
    body = text.split("Linker script and memory map", 1)[-1]
    sections: dict[str, int] = {}
    for pattern in (_SECTION, _SECTION_WRAPPED):
        for name, _address, size in pattern.findall(body):
            sections.setdefault(name, int(size, 16))
    if ".text" not in sections:
        raise ConversionError("the linker map has no .text section (unexpected linker output)")
    rodata = sum(sections.get(name, 0) for name in _FLASH_SECTIONS if name != ".text")
    return Sizes(text=sections[".text"], rodata=rodata, data=sections.get(".data", 0), bss=sections.get(".bss", 0),
                 arena=_symbol_size(body, ".bss", "g_tensor_arena"), stack=sources.STACK_BYTES,
                 model=_symbol_size(body, ".rodata", "g_model_data"))


def _symbol_size(body: str, section: str, symbol: str) -> int:
    """Size of the input section holding ``symbol`` (-fdata-sections gives every array its own)."""
    pattern = re.compile(_SYMBOL_SIZE.format(section=re.escape(section), symbol=re.escape(symbol)), re.M)
    match = pattern.search(body)
    return int(match.group(2), 16) if match else 0


def describe(firmware: Firmware) -> dict[str, Any]:
    return {**firmware.sizes.to_dict(), "tflm_objects_compiled": firmware.compiled,
            "tflm_objects_cached": firmware.cached}
