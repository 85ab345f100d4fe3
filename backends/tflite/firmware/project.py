"""Write the firmware project ``--target mcu`` ships: example main, test vector, Makefile, board files, README.

The test vector is real: one of the calibration set's held-out images, in the
model's input type, with the outputs x86 LiteRT's reference kernels compute for it. The example
``main`` runs it and prints the outputs and their largest difference from
LiteRT's, so the same check works on QEMU and on a real board.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backends.tflite.firmware import sources
from backends.tflite.mcu import HEADER, c_array

TEST_VECTOR_FILE = "test_vector.npz"
BOARD_DIR = f"board/{sources.BOARD}"
PROJECT_FILES = ("main.cc", "test_vector.h", "test_vector.cc", TEST_VECTOR_FILE, "Makefile", "README.md",
                 f"{BOARD_DIR}/startup.c", f"{BOARD_DIR}/linker.ld")


@dataclass(frozen=True)
class TestVector:
    """Inputs in TFLite layout and type, and x86 LiteRT's outputs for them (raw tensors, signature order)."""

    inputs: list[np.ndarray]
    expected: list[np.ndarray]
    source: str
    """Where the inputs came from, in words."""

    def save(self, path: Path) -> None:
        """An .npz np.load reads, written with fixed zip timestamps so the same model gives the same bytes."""
        arrays = {"source": np.array(self.source), **{f"input_{i}": a for i, a in enumerate(self.inputs)},
                  **{f"expected_{i}": a for i, a in enumerate(self.expected)}}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "TestVector":
        with np.load(path, allow_pickle=False) as data:
            inputs = [data[f"input_{i}"] for i in range(sum(1 for k in data.files if k.startswith("input_")))]
            expected = [data[f"expected_{i}"] for i in range(sum(1 for k in data.files if k.startswith("expected_")))]
            return cls(inputs, expected, str(data["source"]))


def test_vector_files(vector: TestVector, source: str) -> dict[str, str]:
    def arrays(prefix: str, table: str, values: list[np.ndarray]) -> list[str]:
        lines = []
        for i, value in enumerate(values):
            data = np.ascontiguousarray(value).tobytes()
            lines.append(f"alignas(16) const unsigned char k{prefix}{i}[] = {{\n    {c_array(data)}\n}};")
        names = ", ".join(f"k{prefix}{i}" for i in range(len(values)))
        sizes = ", ".join(str(np.asarray(v).nbytes) for v in values)
        return lines + [f"const unsigned char* const {table}[] = {{{names}}};",
                        f"const unsigned int k{prefix}Bytes[] = {{{sizes}}};"]

    header = (HEADER.format(source=source) +
              "#ifndef EDGEKILN_TEST_VECTOR_H_\n#define EDGEKILN_TEST_VECTOR_H_\n\n"
              f"// {vector.source}; expected outputs from x86 LiteRT's reference kernels.\n"
              "namespace edgekiln_test {\n\n"
              f"constexpr int kNumInputs = {len(vector.inputs)};\n"
              f"constexpr int kNumOutputs = {len(vector.expected)};\n"
              "extern const unsigned char* const kInputs[];\nextern const unsigned int kInputBytes[];\n"
              "extern const unsigned char* const kExpected[];\nextern const unsigned int kExpectedBytes[];\n\n"
              "}  // namespace edgekiln_test\n\n#endif  // EDGEKILN_TEST_VECTOR_H_\n")
    body = "\n".join(arrays("Input", "kInputs", vector.inputs) + arrays("Expected", "kExpected", vector.expected))
    cc = (HEADER.format(source=source) + '#include "test_vector.h"\n\nnamespace edgekiln_test {\n\n' + body +
          "\n\n}  // namespace edgekiln_test\n")
    return {"test_vector.h": header, "test_vector.cc": cc}


def makefile(core: list[str] | None, kernels: list[str] | None) -> str:
    """The Makefile; without a TFLM tree at compile time it compiles every kernel (the linker drops the rest)."""
    def listing(files: list[str] | None, wildcard: str) -> str:
        if files is None:
            return wildcard
        return " \\\n    ".join(files)

    core_wildcard = ("$(filter-out %_test.cc %fake_micro_context.cc %mock_micro_graph.cc %test_helpers.cc "
                     "%test_helper_custom_ops.cc,$(patsubst $(TFLM_ROOT)/%,%,$(wildcard "
                     "$(TFLM_ROOT)/tensorflow/lite/micro/*.cc $(TFLM_ROOT)/tensorflow/lite/micro/arena_allocator/*.cc "
                     "$(TFLM_ROOT)/tensorflow/lite/micro/memory_planner/*.cc "
                     "$(TFLM_ROOT)/tensorflow/lite/micro/tflite_bridge/*.cc $(TFLM_ROOT)/tensorflow/lite/core/*/*.cc "
                     "$(TFLM_ROOT)/tensorflow/lite/core/c/*.cc $(TFLM_ROOT)/tensorflow/lite/kernels/*.cc "
                     "$(TFLM_ROOT)/tensorflow/lite/kernels/internal/*.cc "
                     "$(TFLM_ROOT)/tensorflow/lite/kernels/internal/reference/*.cc "
                     "$(TFLM_ROOT)/tensorflow/compiler/mlir/lite/core/api/*.cc "
                     "$(TFLM_ROOT)/tensorflow/compiler/mlir/lite/schema/*.cc)))")
    kernel_wildcard = ("$(filter-out %_test.cc,$(patsubst $(TFLM_ROOT)/%,%,"
                       "$(wildcard $(TFLM_ROOT)/tensorflow/lite/micro/kernels/*.cc)))")
    return sources.MAKEFILE.format(
        board=sources.BOARD, arch=" ".join(sources.ARCH_FLAGS), common=" ".join(sources.COMMON_FLAGS),
        cxx=" ".join(sources.CXX_FLAGS), c=" ".join(sources.C_FLAGS), link=" ".join(sources.LINK_FLAGS),
        core_opt=sources.CORE_OPT, kernel_opt=sources.KERNEL_OPT,
        core=listing(core, core_wildcard), kernels=listing(kernels, kernel_wildcard))


def readme(checked: dict[str, Any] | None, ops: list[str]) -> str:
    """What the project is, how to build it, and which TFLM revision it was checked with (or that it was not)."""
    if checked:
        status = (f"Checked by edgekiln with TensorFlow Lite Micro revision `{checked['tflm_revision']}`, "
                  f"{checked['compiler']}, on QEMU's `{sources.BOARD}` (Cortex-M4F): outputs within "
                  f"{checked['max_diff_lsb']:g} LSB of x86 LiteRT's reference kernels on the test vector; tensor arena used "
                  f"{checked['arena_used_bytes']} bytes; firmware flash {checked['flash_bytes']} bytes "
                  f"(text + rodata + data), RAM {checked['ram_bytes']} bytes (data + bss, arena included).")
    else:
        status = ("**Not checked on a Cortex-M build**: edgekiln had no TFLM tree or Arm toolchain when it wrote "
                  "this project. Run `edgekiln verify <this folder> --on qemu-cortex-m4 --tflm-root DIR` to check it.")
    return f"""# TensorFlow Lite Micro firmware project (generated by edgekiln)

{status}

| file | what it is |
|---|---|
| `model_data.cc/.h` | the INT8 `.tflite` model as a 16-byte-aligned array |
| `model_config.h` | input/output shapes, scales, zero points, and `kTensorArenaSize` |
| `model_ops.h` | `RegisterOps()`: exactly the kernels this model uses ({", ".join(ops)}) |
| `main.cc` | example: runs the model on the test vector, prints the outputs and the largest difference from LiteRT |
| `test_vector.cc/.h`, `test_vector.npz` | one real input and x86 LiteRT's outputs for it (reference kernels) |
| `{BOARD_DIR}/` | start-up code and linker script for the Arm MPS2 AN386 board (as QEMU emulates it) |
| `Makefile` | builds `build/firmware.elf` with `arm-none-eabi-gcc` against your TFLM checkout |

Build and run under QEMU (Debian: `gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib
qemu-system-arm`):

```
make TFLM_ROOT=/path/to/tflite-micro
make TFLM_ROOT=/path/to/tflite-micro run
```

`TFLM_ROOT` is a TensorFlow Lite Micro source tree with the flatbuffers, gemmlowp and ruy headers under
`third_party/` (`flatbuffers_include/`, `gemmlowp/`, `ruy/`), as TFLM's own Makefile would download them.

On your own board: add `model_data.cc`, the three headers and the TFLM sources listed in the `Makefile` to your
project, compile with the same TFLM flags, and give `MicroInterpreter` an arena of `kTensorArenaSize` bytes.
`main.cc` shows the calls. Optimized kernels (CMSIS-NN, like LiteRT's XNNPACK) requantize differently from the
reference kernels checked here, so their outputs can differ by a few LSBs, and they may need more arena for
scratch buffers: `kTensorArenaSize` leaves 10% for that.
QEMU is not cycle-accurate: no latency was measured.
"""


def write_project(out_dir: Path, vector: TestVector, source: str, *, core: list[str] | None,
                  kernels: list[str] | None, checked: dict[str, Any] | None, ops: list[str]) -> list[str]:
    """Write the project files next to the model bundle; returns their paths relative to ``out_dir``."""
    files = {"main.cc": sources.MAIN_CC, **test_vector_files(vector, source), "Makefile": makefile(core, kernels),
             "README.md": readme(checked, ops), f"{BOARD_DIR}/startup.c": sources.STARTUP_C,
             f"{BOARD_DIR}/linker.ld": sources.LINKER_SCRIPT.replace("STACK_BYTES", hex(sources.STACK_BYTES))}
    (out_dir / BOARD_DIR).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / name).write_text(text)
    vector.save(out_dir / TEST_VECTOR_FILE)
    return sorted([*files, TEST_VECTOR_FILE])


def update_readme(out_dir: Path, checked: dict[str, Any], ops: list[str]) -> None:
    (out_dir / "README.md").write_text(readme(checked, ops))
