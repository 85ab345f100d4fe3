"""What to do after ``edgekiln build``: where each artifact is and the commands that use it.

Printed to the terminal (stderr) after a successful build's tables, never with --json or --quiet.
Standard library only: it runs on every build's CLI path.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# What 'edgekiln run --input' reads as an image (the rest of calibration's readable types are rarer).
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def sample_image(folder: Path | None) -> Path | None:
    """The first image (in sorted order) under ``folder``, to show a ready-to-paste ``run`` command."""
    if folder is None or not folder.is_dir():
        return None
    return next((p for p in sorted(folder.rglob("*")) if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()),
                None)


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def _commands(target: dict[str, Any], artifact: Path, sample: Path | None) -> list[str]:
    """The commands for one delivered artifact, by what runs it."""
    name = target.get("target", "")
    if target.get("backend") == "tensorrt":
        return [f"scp -r {_q(artifact)} jetson@<device>:~/   # then on the device: "
                f"cd {_q(artifact.name)} && ./build_engine.sh   (builds and verifies the engine)"]
    run = f"edgekiln run {_q(artifact)} --input {_q(sample) if sample else 'IMAGE'}"
    lines = [run, f"edgekiln bench {_q(artifact)}"]
    if name == "mcu":
        lines.append(f"edgekiln verify {_q(artifact)} --on qemu-cortex-m4 --tflm-root TFLM_DIR   "
                     f"# the firmware: make -C {_q(artifact)} TFLM_ROOT=TFLM_DIR run")
    elif name.startswith("rpi"):
        lines.append(f"edgekiln verify {_q(artifact)} --on qemu-aarch64   "
                     f"# on the Pi: {_q(artifact / 'model.tflite')} with LiteRT (pip install ai-edge-litert)")
    return lines


def next_steps(output: Path, targets: Sequence[dict[str, Any]], sample: Path | None = None) -> list[str]:
    """The lines to print: per delivered artifact its folder and commands, then the HTML report."""
    lines = ["next steps:"]
    for target in targets:
        if target.get("status", "ok") != "ok":
            continue
        artifact = output / str(target["artifact"])
        lines.append(f"  {target['artifact']} ({target.get('backend')}, {target.get('precision')}): {artifact}/")
        lines += [f"    {command}" for command in _commands(target, artifact, sample)]
    lines.append(f"  report: {output / 'report.html'} (open it in a browser; report.json has the same data)")
    return lines
