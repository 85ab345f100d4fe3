"""A TensorFlow Lite Micro source tree: where it is, whether it is complete, its revision, what to compile.

TFLM's own Makefile downloads flatbuffers, gemmlowp and ruy, which cannot work
offline, so edgekiln builds with its own file list: the TFLM core (the same
globs as TFLM's ``tools/make/sources.inc``) plus only the kernels the model's
ops need, found by reading which ``Register_*()`` each resolver method calls
and which kernel file defines it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from toolchain.errors import ConversionError, UsageError

ROOT_ENV = "EDGEKILN_TFLM_ROOT"
INCLUDE_DIRS = (".", "third_party/flatbuffers_include", "third_party/gemmlowp", "third_party/ruy")
# One file per part the build needs; a tree missing any of them is refused before compiling.
REQUIRED = {
    "TFLM core": "tensorflow/lite/micro/micro_interpreter.cc",
    "TFLM op resolver": "tensorflow/lite/micro/micro_mutable_op_resolver.h",
    "TFLM kernels": "tensorflow/lite/micro/kernels/kernel_util.cc",
    "TFLite schema": "tensorflow/lite/schema/schema_generated.h",
    "flatbuffers headers": "third_party/flatbuffers_include/flatbuffers/flatbuffers.h",
    "gemmlowp headers": "third_party/gemmlowp/fixedpoint/fixedpoint.h",
    "ruy profiler header": "third_party/ruy/ruy/profiler/instrumentation.h",
}
_CORE_DIRS = ("tensorflow/lite/micro", "tensorflow/lite/micro/arena_allocator",
              "tensorflow/lite/micro/memory_planner", "tensorflow/lite/micro/tflite_bridge")
# Test doubles that sources.inc lists as core but no application links.
_NOT_CORE = ("fake_micro_context.cc", "mock_micro_graph.cc", "test_helpers.cc", "test_helper_custom_ops.cc")
# Kernel helpers every kernel build needs (shared by many ops, defined outside any op's file).
_KERNEL_HELPERS = ("kernel_util.cc", "micro_tensor_utils.cc")
_HEX40 = re.compile(r"\b[0-9a-f]{40}\b")


@dataclass(frozen=True)
class TFLMTree:
    root: Path

    @classmethod
    def locate(cls, given: Path | str | None) -> "TFLMTree | None":
        """``--tflm-root``, else ``$EDGEKILN_TFLM_ROOT``, else None; a given tree must be complete."""
        path = given if given is not None else os.environ.get(ROOT_ENV) or None
        if path is None:
            return None
        tree = cls(Path(path).expanduser().resolve())
        tree.check()
        return tree

    def check(self) -> None:
        source = f"TFLM root '{self.root}'"
        if not self.root.is_dir():
            raise UsageError(f"{source} is not a folder", hint=f"Pass --tflm-root or set ${ROOT_ENV} to a "
                                                                 "TensorFlow Lite Micro source tree.")
        missing = [f"{part} ({rel})" for part, rel in REQUIRED.items() if not (self.root / rel).is_file()]
        if missing:
            raise UsageError(f"{source} is not a usable TensorFlow Lite Micro tree: missing {', '.join(missing)}",
                             hint="TFLM's Makefile downloads flatbuffers, gemmlowp and ruy itself; put their "
                                  "headers under third_party/ (flatbuffers_include/, gemmlowp/, ruy/).")

    @cached_property
    def revision(self) -> str:
        """The upstream commit: from git, else from a SOURCES.md/VERSION note, else 'unknown'."""
        if (self.root / ".git").exists():
            try:
                done = subprocess.run(["git", "-C", str(self.root), "rev-parse", "HEAD"], capture_output=True,
                                      text=True, timeout=20)
                if done.returncode == 0 and _HEX40.fullmatch(done.stdout.strip()):
                    return done.stdout.strip()
            except (OSError, subprocess.SubprocessError):
                pass
        for note in ("SOURCES.md", "VERSION"):
            path = self.root / note
            if path.is_file():
                for line in path.read_text(errors="replace").splitlines():
                    if "tflite-micro" in line or note == "VERSION":
                        found = _HEX40.search(line)
                        if found:
                            return found.group(0)
        return "unknown"

    @cached_property
    def content_hash(self) -> str:
        """sha256 over every source and header (paths and bytes): the object cache's notion of 'revision'."""
        digest = hashlib.sha256()
        for path in sorted(self._sources_and_headers()):
            digest.update(str(path.relative_to(self.root)).encode() + b"\0")
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def _sources_and_headers(self) -> list[Path]:
        found = []
        for top in ("tensorflow", "third_party", "signal"):
            base = self.root / top
            if base.is_dir():
                found += [p for p in base.rglob("*") if p.suffix in (".h", ".hpp", ".cc", ".c", ".inc")
                          and p.is_file()]
        return found

    def include_flags(self) -> list[str]:
        return [f"-I{self.root / d}" if d != "." else f"-I{self.root}" for d in INCLUDE_DIRS]

    def core_sources(self) -> list[str]:
        """TFLM's core, as sources.inc has it: the micro/ runtime plus the shared tensorflow/lite parts."""
        files: list[str] = []
        for folder in _CORE_DIRS:
            files += sorted(f"{folder}/{p.name}" for p in (self.root / folder).glob("*.cc")
                            if not p.name.endswith("_test.cc") and p.name not in _NOT_CORE)
        shared = [p for p in (self.root / "tensorflow").rglob("*.cc")
                  if not _under(p, self.root / "tensorflow/lite/micro")
                  and not _under(p, self.root / "tensorflow/lite/experimental")
                  and p.name != "array.cc" and not p.name.endswith("_test.cc")]  # array.cc: not with static memory
        return files + sorted(str(p.relative_to(self.root)) for p in shared)

    @cached_property
    def _resolver_header(self) -> str:
        return (self.root / REQUIRED["TFLM op resolver"]).read_text(errors="replace")

    def resolver_methods(self) -> set[str]:
        return set(re.findall(r"TfLiteStatus\s+(Add\w+)\s*\(", self._resolver_header))

    def kernel_sources(self, methods: list[str]) -> list[str]:
        """The kernel files for these resolver methods (``AddConv2D`` -> conv.cc, conv_common.cc, ...)."""
        definitions = self._definitions
        files = {f"tensorflow/lite/micro/kernels/{name}" for name in _KERNEL_HELPERS}
        lacking = []
        for method in methods:
            registers = self._registrations_of(method)
            if not registers:
                lacking.append(method)
                continue
            for register in registers:
                source = definitions.get(register)
                if source is None:
                    raise ConversionError(f"the TFLM tree at '{self.root}' declares {method} but no kernel file "
                                          f"defines {register}()")
                files.add(f"tensorflow/lite/micro/kernels/{source.name}")
                common = source.with_name(source.stem + "_common.cc")
                if common.is_file():
                    files.add(f"tensorflow/lite/micro/kernels/{common.name}")
        if lacking:
            raise ConversionError(f"the TFLM tree at '{self.root}' (revision {self.revision[:12]}) has no "
                                  f"{', '.join(lacking)} (ops this model uses)",
                                  hint="Use a newer TensorFlow Lite Micro, or change the model to avoid these ops.")
        return sorted(files)

    def _registrations_of(self, method: str) -> list[str]:
        # The registration is the default argument or a call in the body: read up to the method's end.
        match = re.search(rf"TfLiteStatus\s+{method}\s*\(.*?\n  \}}", self._resolver_header, re.S)
        if match is None:
            return []
        return re.findall(r"Register_(\w+)\s*\(\s*\)", match.group(0))

    @cached_property
    def _definitions(self) -> dict[str, Path]:
        return self._registration_files(self.root / "tensorflow/lite/micro/kernels")

    @staticmethod
    def _registration_files(kernels: Path) -> dict[str, Path]:
        """``CONV_2D`` -> kernels/conv.cc: the file that defines ``TFLMRegistration Register_CONV_2D()``."""
        found: dict[str, Path] = {}
        pattern = re.compile(r"^TFLMRegistration\s+(?:tflite::)?Register_(\w+)\s*\(\s*\)\s*\{", re.M)
        for source in sorted(kernels.glob("*.cc")):
            if source.name.endswith("_test.cc"):
                continue
            for name in pattern.findall(source.read_text(errors="replace")):
                found.setdefault(name, source)
        return found


def _under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False
