"""Variant C: the build's work done by hand with the underlying tools, in its own fresh interpreter.

``python -m bench.build_overhead --raw CONFIG`` calls ``raw_main``: it reads the configuration that
``workspace.write_raw_config`` wrote, runs ``raw_build`` and writes the timed steps where the config says.
Each tool is imported inside the timed step that first needs it, so its import time is part of that step.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.build_overhead.params import NANO_OPSET, ONNX2TF_SAMPLE_FILE


class StepTimer:
    """Named, grouped wall-clock steps of the raw path (a group is the build stage the step matches)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    @contextmanager
    def __call__(self, group: str, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.steps.append({"group": group, "step": name, "seconds": round(time.perf_counter() - started, 3)})


def _imagenet_sample(path: str, size: int = 224) -> Any:
    """The ``imagenet`` preprocessing written out with PIL and numpy: shorter side to size/0.875,
    centre crop, x/255, ImageNet mean/std, CHW float32."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    box = round(size / 0.875)
    width, height = image.size
    if height <= width:
        new_w, new_h = max(box, int(width * box / height)), box
    else:
        new_w, new_h = box, max(box, int(height * box / width))
    image = image.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((pixels - mean) / std).astype(np.float32).transpose(2, 0, 1)


def _ort_reader(input_name: str, samples: Sequence[Any]) -> Any:
    """ORT's ``CalibrationDataReader`` over the preprocessed samples, one at a time (batch 1)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(samples)

        def get_next(self) -> dict[str, Any] | None:
            row = next(self._rows, None)
            return None if row is None else {input_name: row[None]}

    return Reader()


def _raw_simplify(timer: StepTimer, model: Path, out: Path) -> Path:
    with timer("simplify", "import onnx, onnxsim"):
        import onnx
        import onnxsim
    with timer("simplify", "onnxsim.simplify (load, simplify, save)"):
        simplified, ok = onnxsim.simplify(onnx.load(str(model)))
        if not ok:
            raise RuntimeError("onnxsim could not validate the simplified model")
        onnx.save(simplified, str(out))
    return out


def _raw_x86_int8(timer: StepTimer, model: Path, files: Sequence[str], out: Path) -> list[Any]:
    """ORT static INT8 as edgekiln's x86 default: QDQ, per-channel int8 weights, uint8 activations, MinMax."""
    with timer("x86:int8", "import onnxruntime.quantization"):
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    with timer("x86:int8", f"preprocess {len(files)} calibration images (PIL, numpy)"):
        samples = [_imagenet_sample(path) for path in files]
    with timer("x86:int8", "quantize_static (calibrate + quantize, QDQ)"):
        quantize_static(str(model), str(out), _ort_reader("input", samples), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return samples


def _raw_rpi4(timer: StepTimer, model: Path, samples: Sequence[Any], work: Path, out: Path) -> None:
    """onnx2tf with edgekiln's arguments (in this process), then TFLite full INT8 with float I/O."""
    import numpy as np

    with timer("rpi4", "import onnx2tf (and TensorFlow)"):
        import onnx2tf
        import tensorflow as tf
    with timer("rpi4", "onnx2tf.convert to a SavedModel"):
        work.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, work / "model.onnx")  # onnx2tf rewrites its input file in place
        # Without this file in its working directory onnx2tf tries to download it (edgekiln does the same).
        np.save(work / ONNX2TF_SAMPLE_FILE, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
        previous = os.getcwd()
        os.chdir(work)
        try:
            onnx2tf.convert(input_onnx_file_path="model.onnx", output_folder_path="saved_model",
                            output_signaturedefs=True, not_use_onnxsim=True, verbosity="info")
        finally:
            os.chdir(previous)
    with timer("rpi4", f"TFLiteConverter full INT8 ({len(samples)} representative samples)"):
        def representative() -> Iterator[list[Any]]:
            for sample in samples:  # onnx2tf's SavedModel takes NHWC
                yield [np.ascontiguousarray(sample[None].transpose(0, 2, 3, 1))]

        converter = tf.lite.TFLiteConverter.from_saved_model(str(work / "saved_model"))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
        out.write_bytes(converter.convert())


def _raw_nano(timer: StepTimer, model: Path, converter: str, out: Path) -> None:
    tool = "onnx.version_converter" if converter == "onnx" else "toolchain.opset relabel"
    with timer("jetson-nano", f"opset 17 -> {NANO_OPSET} ({tool}) + save"):
        import onnx

        loaded = onnx.load(str(model))
        if converter == "onnx":
            converted = onnx.version_converter.convert_version(loaded, NANO_OPSET)
        else:  # onnx's converter has no down-adapters for this model (see toolchain/opset.py)
            from toolchain.opset import convert_down

            converted = convert_down(loaded, loaded.opset_import[0].version, NANO_OPSET)
        onnx.save(converted, str(out))


def raw_build(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The build's work done by hand with the underlying tools; returns the timed steps."""
    timer = StepTimer()
    out = Path(config["workdir"])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    simplified = _raw_simplify(timer, Path(config["model"]), out / "model.simplified.onnx")
    samples = _raw_x86_int8(timer, simplified, config["files"], out / "x86-int8.onnx")
    _raw_rpi4(timer, simplified, samples, out / "onnx2tf", out / "rpi4.tflite")
    _raw_nano(timer, simplified, config["nano_converter"], out / "jetson-nano.onnx")
    return timer.steps


def raw_main(config_path: Path) -> int:
    config = json.loads(config_path.read_text())
    steps = raw_build(config)
    Path(config["steps_json"]).write_text(json.dumps(steps, indent=1) + "\n")
    return 0
