"""The scratch workspace (model, images, stage cache, outputs) and the command lines of the variants.

Everything here runs before the rounds: ``setup`` prepares the files once, the command helpers say how each
variant is started (``raw_command`` is variant C's child process, ``python -m bench.build_overhead --raw``).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.build_overhead.params import (CALIB_SIZE, CHECKS_OFF, CNN_SOURCE, GUARD_BUDGET, HOLDOUT,
                                         IMAGE_COUNT, MODEL_NAME, NANO_OPSET, PREPROCESS, REPO_DIR, SEED,
                                         TARGETS, progress)


@dataclasses.dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def model(self) -> Path:
        return self.root / f"{MODEL_NAME}.onnx"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def stage_cache(self) -> Path:
        return self.root / "stage-cache"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def output(self, variant: str) -> Path:
        return self.root / f"out-{variant}"


def prepare_model(workspace: Workspace) -> Path:
    """``bench.run``'s cached FP32 export of the MobileNetV2-sized CNN, copied under a plain name."""
    from bench import run as ort_bench

    exported = ort_bench.cnn_fp32(MODEL_NAME, CNN_SOURCE)
    if not workspace.model.is_file() or workspace.model.read_bytes() != exported.read_bytes():
        shutil.copyfile(exported, workspace.model)
    return workspace.model


def prepare_images(folder: Path, count: int = IMAGE_COUNT, seed: int = SEED) -> Path:
    """``count`` PNGs of seeded 224x224 random crops of scikit-image's photos (``bench.data``'s crops).

    Rewritten every run (about a second): PNG output is deterministic, so the files' bytes, and with them
    the build's content-based cache keys, stay the same from run to run.
    """
    import numpy as np
    from PIL import Image

    from bench import data

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    photos = data._skimage_photos()  # noqa: SLF001 - the crops bench.run calibrates on, as files
    rng = np.random.default_rng(seed)
    for index in range(count):
        crop = data._random_crop(photos[index % len(photos)], rng)  # noqa: SLF001
        pixels = np.clip(np.rint(np.asarray(crop) * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return folder


def calibration_files(workspace: Workspace) -> list[str]:
    """The files ``edgekiln build`` calibrates on (its seeded split), so the raw path uses the same ones."""
    from calibration.dataset import build_calibration_set
    from calibration.spec import PreprocessSpec

    spec = PreprocessSpec.preset(PREPROCESS, 224, 224)
    chosen = build_calibration_set(workspace.images, spec, count=CALIB_SIZE, holdout=HOLDOUT, seed=SEED)
    return [str((workspace.images / name).resolve()) for name in chosen.calibration_files]


def nano_converter(model: Path) -> str:
    """'onnx' when ``onnx.version_converter`` takes the simplified model to opset 13 itself, else 'relabel'."""
    import onnx
    import onnxsim

    simplified, _ = onnxsim.simplify(onnx.load(str(model)))
    try:
        onnx.version_converter.convert_version(simplified, NANO_OPSET)
    except Exception:  # noqa: BLE001 - any converter failure means the by-hand path needs the relabel
        return "relabel"
    return "onnx"


def edgekiln_command() -> list[str]:
    """The installed console script beside this interpreter (a pyenv shim would add its own start-up)."""
    script = Path(sys.executable).with_name("edgekiln")
    if script.is_file():
        return [str(script)]
    found = shutil.which("edgekiln")
    return [found] if found else [sys.executable, "-m", "toolchain"]


def build_arguments(workspace: Workspace, variant: str) -> list[str]:
    """``edgekiln build`` arguments of variant A, B or D (without the program)."""
    targets = [part for target in TARGETS for part in ("--target", target)]
    arguments = ["build", str(workspace.model), *targets, "--calib", str(workspace.images),
                 "--preprocess", PREPROCESS, "--calib-size", str(CALIB_SIZE), "--holdout", str(HOLDOUT),
                 *GUARD_BUDGET]
    if variant == "B":
        arguments += CHECKS_OFF
    arguments += ["--cache-dir", str(workspace.stage_cache)] if variant == "D" else ["--no-cache"]
    return [*arguments, "-o", str(workspace.output(variant))]


def raw_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "bench.build_overhead", "--raw", str(config)]


def _relative(text: str) -> str:
    """Commands are recorded with repository-relative paths so the record does not name this checkout."""
    return text.replace(str(REPO_DIR) + "/", "")


def commands_as_typed(workspace: Workspace, raw_config: Path) -> dict[str, str]:
    """The commands as a user would type them: ``edgekiln`` for the console script, ``python`` for this
    interpreter (the exact paths are in the settings)."""
    commands = {v: shlex.join(["edgekiln", *build_arguments(workspace, v)]) for v in ("A", "B", "D")}
    commands["C"] = shlex.join(["python", *raw_command(raw_config)[1:]])
    return {variant: _relative(text) for variant, text in commands.items()}


def write_raw_config(workspace: Workspace, files: list[str], converter: str) -> Path:
    path = workspace.root / "raw-config.json"
    path.write_text(json.dumps({"model": str(workspace.model), "files": files, "nano_converter": converter,
                                "workdir": str(workspace.output("C")),
                                "steps_json": str(workspace.root / "raw-steps.json")}, indent=1) + "\n")
    return path


def setup(workspace: Workspace) -> tuple[Path, dict[str, Any]]:
    """Model, images and the raw path's configuration; returns the config path and the settings record."""
    workspace.root.mkdir(parents=True, exist_ok=True)
    progress("preparing the model (bench.run's cached export) and the image folder")
    model = prepare_model(workspace)
    prepare_images(workspace.images)
    files = calibration_files(workspace)
    converter = nano_converter(model)
    config = write_raw_config(workspace, files, converter)
    settings = {"python": sys.executable, "model": MODEL_NAME, "cnn_source": CNN_SOURCE,
                "model_bytes": model.stat().st_size,
                "images": IMAGE_COUNT, "calib_size": CALIB_SIZE, "holdout": HOLDOUT, "targets": list(TARGETS),
                "preprocess": PREPROCESS, "guard_budget": list(GUARD_BUDGET), "nano_converter": converter,
                "seed": SEED, "edgekiln": edgekiln_command()}
    return config, settings
