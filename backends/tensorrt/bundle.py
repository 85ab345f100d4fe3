"""The device bundle: one folder the user copies to the device, with everything the engine build needs.

Layout (flat, inside the artifact folder; manifest.json sits beside it):

    model.onnx          the FP32 model prepared for the device (opset and ops its TensorRT parses)
    model.int8.onnx     INT8 as a QDQ model (explicit quantization)                  [int8, qdq]
    calibration.cache   TensorRT calibration cache for implicit INT8                 [int8, cache]
    ranges.json         the activation ranges both INT8 forms came from              [int8]
    preprocess.json     how an image becomes the model input (the spec used for verification)
    samples/, reference/  sample inputs and ONNX Runtime's outputs for them (.npy)
    bundle.json         device, build options (the engine cache key's part), file hashes, pass criteria
    build_engine.sh     the exact trtexec command for the target, named by the engine cache key
    verify_engine.py    runs the engine on the samples and compares with reference/ (Python 3.6+)
    README.txt          the steps on the device
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends.tensorrt import verify_engine as device_script
from backends.tensorrt.devices import TensorRTDevice
from backends.tensorrt.settings import BuildSettings
from backends.tensorrt.trtexec import build_script, trtexec_flags
from toolchain.fileio import sha256_file
from toolchain.frontends.base import Feed
from toolchain.onnx_io import TensorInfo

SCRIPT_NAME = "build_engine.sh"
VERIFY_NAME = "verify_engine.py"


@dataclass
class BundleContents:
    """What goes into bundle.json besides the device and the settings."""

    engine_source: str
    """The ONNX file the engine is built from (model.onnx, or model.int8.onnx for a QDQ model)."""
    reference_model: str
    """The ONNX file whose ONNX Runtime outputs are the references."""
    calibration_cache: str | None
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    feeds: list[Feed]
    references: list[Feed]
    check: dict[str, Any]
    preprocess: dict[str, Any] | None
    extra_files: list[str] = field(default_factory=list)


def check_for(precision: str, int8_mode: str | None, min_cosine: float) -> dict[str, Any]:
    """Pass criterion on the device: FP32 must match closely; FP16 and INT8 by cosine, as in edgekiln's own checks."""
    if precision == "fp32":
        return {"mode": "allclose", "atol": 1e-3, "rtol": 1e-3}
    return {"mode": "cosine", "min_cosine": min_cosine,
            "against": "the INT8 QDQ model" if int8_mode == "qdq" else "the FP32 model"}


def write_bundle(folder: Path, device: TensorRTDevice, settings: BuildSettings, contents: BundleContents,
                 tool_version: str) -> dict[str, Any]:
    """Write every bundle file into ``folder`` (which already holds the models); returns bundle.json's content."""
    sample_files = _write_arrays(folder, contents)
    (folder / "preprocess.json").write_text(json.dumps(contents.preprocess, indent=1) + "\n")
    shutil.copyfile(Path(device_script.__file__), folder / VERIFY_NAME)
    sources = [contents.engine_source] + ([contents.calibration_cache] if contents.calibration_cache else [])
    hashed = sources + contents.extra_files + ["preprocess.json"] + [
        path for sample in sample_files for group in sample.values() for path in group.values()]
    flags = trtexec_flags(settings, device, contents.engine_source, contents.calibration_cache)
    bundle = {
        "format": device_script.BUNDLE_FORMAT,
        "target": device.target,
        "device": {"description": device.description, "tensorrt": settings.tensorrt_version,
                   "tensorrt_range": device.tensorrt_range, "jetpack": device.jetpack,
                   "python": ".".join(map(str, device.python)), "dla_cores": device.dla_cores,
                   "fast_int8": device.fast_int8},
        "precision": settings.precision,
        "requested_precision": settings.requested_precision,
        "notes": list(settings.notes),
        "engine_source": contents.engine_source,
        "engine_sources": sources,
        "reference_model": contents.reference_model,
        "calibration_cache": contents.calibration_cache,
        "build_options": settings.key_options(),
        "settings": settings.to_dict(),
        "trtexec": [device.trtexec, *flags],
        "inputs": [_info(i) for i in contents.inputs],
        "outputs": [_info(o) for o in contents.outputs],
        "samples": sample_files,
        "check": contents.check,
        "files": {name: sha256_file(folder / name) for name in sorted(set(hashed))},
        "edgekiln": tool_version,
    }
    (folder / device_script.BUNDLE_FILE).write_text(json.dumps(bundle, indent=1, sort_keys=True) + "\n")
    script = folder / SCRIPT_NAME
    script.write_text(build_script(settings, device, flags, tool_version))
    script.chmod(0o755)
    (folder / "README.txt").write_text(device_readme(device, settings, contents))
    return bundle


def _write_arrays(folder: Path, contents: BundleContents) -> list[dict[str, dict[str, str]]]:
    """samples/<i>_<k>.npy and reference/<i>_<k>.npy; names are mapped in bundle.json (tensor names may hold '/')."""
    (folder / "samples").mkdir()
    (folder / "reference").mkdir()
    entries = []
    for index, (feed, outputs) in enumerate(zip(contents.feeds, contents.references)):
        entry: dict[str, dict[str, str]] = {"inputs": {}, "outputs": {}}
        for part, arrays, sub in (("inputs", feed, "samples"), ("outputs", outputs, "reference")):
            for k, name in enumerate(sorted(arrays)):
                path = f"{sub}/{index}_{k}.npy"
                np.save(folder / path, np.ascontiguousarray(arrays[name]), allow_pickle=False)
                entry[part][name] = path
        entries.append(entry)
    return entries


def _info(info: TensorInfo) -> dict[str, Any]:
    return {"name": info.name, "shape": list(info.shape), "dtype": str(info.dtype)}


def device_readme(device: TensorRTDevice, settings: BuildSettings, contents: BundleContents) -> str:
    python = ".".join(map(str, device.python))
    cuda_binding = ("pycuda (pip3 install pycuda; CUDA 10.2 has no cuda-python)" if device.python < (3, 8)
                    else "cuda-python or pycuda")
    notes = "".join(f"  - {note}\n" for note in settings.notes) or "  (none)\n"
    return f"""TensorRT bundle for {device.target}: {device.description}
Made by edgekiln for TensorRT {settings.tensorrt_version} ({device.tensorrt_range}), precision {settings.precision}.

The engine is built here, on the device: engines only run on the GPU model and
TensorRT version that built them. Nothing in this folder was run on TensorRT
before you run it.

1. Copy this whole folder to the device (scp -r, rsync, USB stick).
2. On the device, in this folder:

       ./build_engine.sh

   It checks the files (bundle.json lists their hashes), builds the engine with
   {device.trtexec}, names it by its cache key in engines/ (model bytes + TensorRT
   version + GPU + build options; a stale engine is never reused), links
   model.engine to it, and runs verify_engine.py.

verify_engine.py runs on the device's Python {python} and needs tensorrt (JetPack's
python3-libnvinfer), numpy and {cuda_binding}. It feeds samples/ to the engine
and compares with reference/ (ONNX Runtime's outputs of {contents.reference_model}):
{_criterion(contents.check)}.

Notes from compile:
{notes}"""


def _criterion(check: dict[str, Any]) -> str:
    if check["mode"] == "allclose":
        return f"every element within atol {check['atol']:g} + rtol {check['rtol']:g} * |reference|"
    return f"cosine similarity >= {check['min_cosine']:g} per output (against {check['against']})"
