"""edgekiln compare: artifacts on the same inputs, and per-layer location of INT8 damage."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from helpers import make_onnx_model, make_outlier_cnn, write_images
from toolchain import api
from toolchain.cli import cli
from toolchain.errors import UsageError


def test_compare_fp32_int8_fp16(tmp_path):
    images = write_images(tmp_path / "imgs", count=80, size=8)
    onnx.save(make_onnx_model(), str(tmp_path / "m.onnx"))
    api.compile(tmp_path / "m.onnx", tmp_path / "fp32")
    api.compile(tmp_path / "m.onnx", tmp_path / "int8", precision="int8", calib=images, calib_size=40, holdout=40,
                no_cache=True)
    api.compile(tmp_path / "m.onnx", tmp_path / "fp16", precision="fp16")
    comparisons, _ = api.compare([tmp_path / "fp32", tmp_path / "int8", tmp_path / "fp16"], calib=images, count=16)
    assert [c.candidate for c in comparisons] == [str(tmp_path / "int8"), str(tmp_path / "fp16")]
    for comparison in comparisons:
        (output,) = comparison.outputs
        assert comparison.samples == 16 and output.cosine > 0.99 and 0 < output.mean_abs <= output.max_abs
        assert set(output.top_k_agreement) == {1, 5}


def test_per_layer_points_at_the_outlier(tmp_path):
    images = write_images(tmp_path / "imgs", count=80, size=8)
    onnx.save(make_outlier_cnn(1000.0), str(tmp_path / "m.onnx"))
    # Plain MinMax INT8 (no post-training passes: equalization repairs this outlier), unguarded: a model
    # with one badly quantized layer, which the per-layer comparison must find.
    from toolchain.passes.calibrate import CalibrationOptions, calibrate
    from toolchain.passes.quantize import QuantizeConfig

    plain = QuantizeConfig.for_target(None, equalize=False, range_search="off", bias_correction=False)
    calibrate(tmp_path / "m.onnx", tmp_path / "q.onnx", CalibrationOptions(images, count=40, holdout=0), plain, None)
    _, layers = api.compare([tmp_path / "m.onnx", tmp_path / "q.onnx"], calib=images, count=8, per_layer=True)
    worst = layers[str(tmp_path / "q.onnx")][0]
    assert worst.relative_error > 0.5
    runner = CliRunner()
    shown = runner.invoke(cli, ["compare", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--per-layer",
                                "--calib", str(images), "--json"])
    assert shown.exit_code == 0
    assert json.loads(shown.output)["per_layer"][str(tmp_path / "q.onnx")][0]["tensor"] == worst.tensor


def test_compare_needs_two(tiny_onnx):
    with pytest.raises(UsageError, match="at least two"):
        api.compare([tiny_onnx])
