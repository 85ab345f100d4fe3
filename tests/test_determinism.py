"""The same inputs and options give byte-identical models (times live only in the manifest's 'timings')."""

from __future__ import annotations

import json

import onnx
import pytest

from helpers import make_onnx_model, write_images
from toolchain import api


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_convert_simplify_calibrate_compile_are_byte_identical(tmp_path, torch_models):
    images = write_images(tmp_path / "imgs", count=60, size=8)
    onnx.save(make_onnx_model(), str(tmp_path / "m.onnx"))
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        api.convert(torch_models["torchscript"], out / "t.onnx", inputs=["x:1x1x8x8"], dynamic_batch=True)
        api.optimize(out / "t.onnx", out / "s.onnx", simplify=True)
        api.calibrate(tmp_path / "m.onnx", out / "q.onnx", calib=images, calib_size=30, holdout=30, no_cache=True,
                      method="entropy")
        api.compile(tmp_path / "m.onnx", out / "art", precision="int8", calib=images, calib_size=30, holdout=30,
                    no_cache=True)
        manifest = json.loads((out / "art" / "manifest.json").read_text())
        manifest.pop("timings")
        digests.append([_sha(out / name) for name in ("t.onnx", "s.onnx", "q.onnx", "q.ranges.json",
                                                       "art/model.onnx", "art/ranges.json")] + [manifest])
    assert digests[0] == digests[1]


@pytest.mark.parametrize("kind", ["keras"])
def test_tensorflow_conversion_is_byte_identical(tmp_path, kind):
    tf = pytest.importorskip("tensorflow")
    model = tf.keras.Sequential([tf.keras.Input((6, 6, 3)), tf.keras.layers.Conv2D(2, 3), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(3)])
    model.save(tmp_path / "m.keras")
    api.convert(tmp_path / "m.keras", tmp_path / "a.onnx")
    api.convert(tmp_path / "m.keras", tmp_path / "b.onnx")
    assert _sha(tmp_path / "a.onnx") == _sha(tmp_path / "b.onnx")
