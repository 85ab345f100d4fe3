"""Raspberry Pi artifacts on aarch64: the real aarch64 LiteRT wheel under qemu-user, against x86 LiteRT.

The arm64 Python and the wheels are prepared once, before the tests
(``python -m backends.tflite.emulate prepare``, which .ci/run does into
``$EDGEKILN_TOOLS_CACHE``); without them these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from backends.tflite import TFLiteBackend, emulate
from backends.tflite.tool_cache import TOOLS_ENV
from helpers import run_main
from toolchain import api
from toolchain.examples import fashion_mnist

_AVAILABLE, _WHY = TFLiteBackend().is_available()
if not _AVAILABLE:
    pytest.skip(f"tflite backend not usable here: {_WHY}", allow_module_level=True)

_TOOLS = Path(os.environ[TOOLS_ENV]) if os.environ.get(TOOLS_ENV) else None
_MISSING = emulate.missing(_TOOLS) if _TOOLS else f"${TOOLS_ENV} is not set (it holds the prepared aarch64 Python)"
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"aarch64 LiteRT under QEMU: {_MISSING}")
CALIB = {"calib_size": 48, "holdout": 16, "no_cache": True}


@pytest.fixture(scope="module")
def rpi4(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("rpi")
    onnx_path = api.convert(fashion_mnist.weights_path(), folder / "model.onnx", model_class=fashion_mnist.MODEL_CLASS,
                            inputs=[f"{fashion_mnist.INPUT_NAME}:1x1x28x28"]).output
    return api.compile(onnx_path, folder / "rpi4", target="rpi4", calib=fashion_mnist.samples_dir(), **CALIB)


def _details(result) -> dict:
    return result.artifact.manifest["metrics"]["details"]


def test_rpi4_build_runs_the_artifact_on_aarch64_litert_and_it_equals_x86(rpi4):
    details = _details(rpi4)
    (run,) = [e for e in details["executed_on"] if e["where"] == emulate.AARCH64]
    assert run["machine"] == "aarch64" and run["cpu"] == "cortex-a72"  # the Pi 4's core, as QEMU emulates it
    assert run["bit_identical"] and run["max_abs"] == 0.0 and run["inputs"] == emulate.BUILD_SAMPLES
    assert run["threads"] == 4 and run["xnnpack"] is True and run["input_source"] == "held-out calibration samples"
    assert any(e["where"] == "x86 LiteRT" for e in details["executed_on"]) and details["not_executed_on"] == []


def test_aarch64_outputs_are_real_predictions_not_a_degenerate_match(rpi4):
    # Equality proves nothing if both sides print zeros: the images must give distinct, confident classes.
    folder = rpi4.artifact.path
    feeds = [{fashion_mnist.INPUT_NAME: _image(path)} for path in sorted(fashion_mnist.samples_dir().rglob("*.png"))[::30]]
    from backends.tflite.io_binding import IOBindings

    bindings = IOBindings.from_dict(rpi4.artifact.runtime_options["io"])
    raw = emulate.raw_feeds(folder / "model.tflite", bindings, feeds)
    ran = emulate.run(folder / "model.tflite", raw, target="rpi4", threads=4, xnnpack=True, cache_root=_TOOLS)
    predicted = [int(np.argmax(outputs[0])) for outputs in ran.outputs]
    assert len(set(predicted)) >= 8  # ten classes, one image each
    assert all(np.isfinite(outputs[0]).all() and np.ptp(outputs[0]) > 1.0 for outputs in ran.outputs)


def _image(path: Path) -> np.ndarray:
    from PIL import Image

    return (np.asarray(Image.open(path).convert("L"), np.float32) / 255.0)[None, None]


def test_verify_on_qemu_aarch64_with_images_records_in_the_manifest(rpi4, tmp_path, capsys):
    copy = tmp_path / "rpi4"
    shutil.copytree(rpi4.artifact.path, copy)
    code, out, err = run_main(["verify", str(copy), "--on", "qemu-aarch64", "--calib",
                               str(fashion_mnist.samples_dir()), "--count", "6"], capsys)
    assert code == 0, err
    assert "6 input(s) bit-identical to x86 LiteRT" in out
    entries = [e for e in json.loads((copy / "manifest.json").read_text())["metrics"]["details"]["executed_on"]
               if e["where"] == emulate.AARCH64]
    assert len(entries) == 1 and entries[0]["inputs"] == 6 and entries[0]["input_source"].startswith("images from")


def test_rpi5_runs_on_a_cortex_a76(rpi4, tmp_path):
    copy = tmp_path / "rpi5"
    shutil.copytree(rpi4.artifact.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["options"]["target"] = "rpi5"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    from toolchain.verify_device import verify_on

    result = verify_on(copy, "qemu-aarch64", count=2)
    assert result.record["cpu"] == "cortex-a76" and result.record["bit_identical"]


def test_verify_on_qemu_aarch64_refuses_a_non_tflite_artifact(tmp_path, capsys):
    from helpers import make_onnx_model
    import onnx

    onnx.save(make_onnx_model(), tmp_path / "m.onnx")
    api.compile(tmp_path / "m.onnx", tmp_path / "x86", backend="onnxruntime")
    code, _, err = run_main(["verify", str(tmp_path / "x86"), "--on", "qemu-aarch64"], capsys)
    assert code == 2 and err.strip().startswith("error: ") and "runs TFLite artifacts" in err
    assert len([l for l in err.splitlines() if l.strip()]) == 1
