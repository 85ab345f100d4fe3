"""Helpers for tests/fleet: tiny fleets of small ONNX CNNs (tests/helpers.make_onnx_model with shifted
biases) and the bundled example's sample images for calibration, built for x86 and x86:int8."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx

from helpers import make_onnx_model


def write_model(path: Path, shift: float) -> Path:
    """A distinct model per ``shift`` (its conv bias moved), same graph."""
    model = make_onnx_model()
    bias = next(t for t in model.graph.initializer if t.name == "b")
    bias.raw_data = (np.frombuffer(bias.raw_data, np.float32) + np.float32(shift)).tobytes()
    onnx.save(model, str(path))
    return path


def write_fleet(folder: Path, count: int = 2, extra: str = "", targets: str = "[x86, x86:int8]") -> Path:
    from toolchain.examples import fashion_mnist as example

    folder.mkdir(parents=True, exist_ok=True)
    models = "".join(f"  - source: m{i}.onnx\n" for i in range(count) if write_model(folder / f"m{i}.onnx", i))
    path = folder / "fleet.yaml"
    path.write_text(f"targets: {targets}\ndefaults:\n  calib: {example.samples_dir()}\n  bench-iterations: 2\n"
                    f"models:\n{models}{extra}")
    return path


def cache_is_sound(cache: Path) -> int:
    """Every published cache entry's files match their recorded hashes; returns how many entries."""
    entries = list((cache / "stages").glob("*/*/entry.json"))
    for entry_path in entries:
        entry = json.loads(entry_path.read_text())
        for relative, meta in entry["files"].items():
            data = (entry_path.parent / "files" / relative).read_bytes()
            assert len(data) == meta["size"] and hashlib.sha256(data).hexdigest() == meta["sha256"], entry_path
    return len(entries)


def ctrl_c_reaches_the_child() -> None:
    """``preexec_fn`` for a child that a test will Ctrl-C: a test run started in the background by a shell
    inherits SIGINT ignored, and so would the child (a CLI rightly leaves an ignored SIGINT alone)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
