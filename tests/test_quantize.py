"""INT8 / FP16 passes on real ONNX Runtime: ranges, QDQ structure, target schemes, caches."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from backends.onnxruntime.runner import OnnxRuntimeRunner
from calibration.ranges import ActivationRanges, read_tensorrt_cache, tensorrt_cache_text
from helpers import make_onnx_model
from toolchain.errors import InputFileError, UsageError
from toolchain.onnx_io import check_model
from toolchain.passes.quantize import (QuantizeConfig, compute_ranges, convert_fp16, has_float_weights,
                                       quantize_dynamic, quantize_static)


def _feeds(count: int = 24, seed: int = 0, heavy_tail: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    feeds = []
    for index in range(count):
        x = rng.random((1, 1, 8, 8), dtype=np.float32)
        if heavy_tail and index == 0:  # one rare large value: where minmax and entropy/percentile must differ
            x[0, 0, 0, 0] = 40.0
        feeds.append({"x": x})
    return feeds


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_entropy_and_percentile_really_differ_from_minmax():
    model, feeds = make_onnx_model(), _feeds(heavy_tail=True)
    widths = {}
    for method in ("minmax", "entropy", "percentile"):
        ranges = compute_ranges(model, feeds, QuantizeConfig(method=method, percentile=99.9))
        low, high = ranges.ranges["r"]  # the Relu activation downstream of the outlier pixel
        widths[method] = high - low
        if method != "minmax":
            assert ranges.details["histogram_bins"] == 2048
    assert widths["minmax"] > 40.0
    assert widths["entropy"] < 0.5 * widths["minmax"]
    assert widths["percentile"] < 0.5 * widths["minmax"]


def test_static_int8_structure_and_numbers():
    """The u8s8 scheme of x86 CPUs with VNNI (on a CPU without it, judged with exact integer arithmetic,
    which is what VNNI computes; tests/test_cpu_isa.py covers the scheme chosen there)."""
    model, feeds = make_onnx_model(), _feeds()
    config = QuantizeConfig.for_target("x86-vnni")
    exact = config.guard_runtime == "reference"
    quantized = quantize_static(model, compute_ranges(model, feeds, config), config)
    check_model(quantized)
    ops = {n.op_type for n in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert int8_weights, "conv weights are stored as int8"
    per_channel_scales = [t for t in quantized.graph.initializer if t.name.startswith("w_scale")]
    assert per_channel_scales and per_channel_scales[0].dims == [4]  # one scale per output channel
    activation_zero_points = [t for t in quantized.graph.initializer
                              if t.name.endswith("zero_point") and t.data_type == onnx.TensorProto.UINT8]
    assert activation_zero_points, "x86 default: uint8 activations"
    ref = OnnxRuntimeRunner.from_model(model).run(feeds[0])["y"]
    out = OnnxRuntimeRunner.from_model(quantized, integer_reference=exact).run(feeds[0])["y"]
    assert _cosine(ref, out) > 0.999
    assert not has_float_weights(quantized) and has_float_weights(model)


def test_tensorrt_scheme_is_symmetric_int8():
    config = QuantizeConfig.for_target("jetson-orin")
    assert config.activation_type == "int8" and config.activation_symmetric
    model = make_onnx_model()
    quantized = quantize_static(model, compute_ranges(model, _feeds(), config), config)
    zero_points = [onnx.numpy_helper.to_array(t) for t in quantized.graph.initializer
                   if t.name.endswith("zero_point") and "_quantized_" not in t.name]  # biases are int32 by design
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_user_override_beats_target_default():
    config = QuantizeConfig.for_target("jetson-orin", activation_type="uint8", activation_symmetric=False)
    assert config.activation_type == "uint8"
    with pytest.raises(UsageError, match="method"):
        QuantizeConfig.from_options(method="magic")


def test_dynamic_and_fp16_passes_keep_outputs_close():
    model, feed = make_onnx_model(), _feeds(1)[0]
    ref = OnnxRuntimeRunner.from_model(model).run(feed)["y"]
    for transformed, report in (quantize_dynamic(model), convert_fp16(model)):
        check_model(transformed)  # the FP16 converter's output is re-sorted so the checker accepts it
        assert _cosine(ref, OnnxRuntimeRunner.from_model(transformed).run(feed)["y"]) > 0.999
        assert report.after.serialized_bytes < report.before.serialized_bytes


def test_ranges_file_round_trip(tmp_path):
    ranges = ActivationRanges("entropy", {"b": (-1.0, 2.0), "a": (0.0, 6.5)}, {"samples": 3})
    ranges.save(tmp_path / "r.json")
    assert ActivationRanges.load(tmp_path / "r.json") == ranges
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(InputFileError):
        ActivationRanges.load(tmp_path / "bad.json")


def test_tensorrt_cache_format():
    ranges = ActivationRanges("minmax", {"conv_out": (-3.0, 6.35), "input": (0.0, 1.0)})
    text = tensorrt_cache_text(ranges, tensorrt_version="8601")
    lines = text.splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert lines[1] == "conv_out: 3d4ccccd"  # 6.35 / 127 = 0.05 as big-endian IEEE-754 float32
    scales = read_tensorrt_cache(text)
    assert scales["conv_out"] == pytest.approx(6.35 / 127)
    assert scales["input"] == pytest.approx(1.0 / 127)
