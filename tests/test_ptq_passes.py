"""The post-training passes on tiny synthetic ONNX models: each keeps what it must and reduces what it claims."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from toolchain.passes.bias_correction import correct_biases
from toolchain.passes.equalize import equalize, find_pairs
from toolchain.passes.ptq import prepare_int8
from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantize_static
from toolchain.passes.range_search import best_range, quantization_mse, search_ranges
from toolchain.passes.weight_rounding import round_weights
from toolchain.runtime import OnnxRuntimeRunner


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def separable_model(relu6_first: bool = False, seed: int = 0) -> onnx.ModelProto:
    """stem 3x3 conv -> ReLU (or ReLU6) -> depthwise 3x3 -> ReLU -> pointwise 1x1 -> (identity) -> 1x1 -> ReLU
    -> global pool -> Gemm. Channels of the stem and depthwise layers differ in scale by up to 100x, as
    BatchNorm folding leaves real depthwise-separable networks."""
    rng = np.random.default_rng(seed)
    c = 8
    spread = np.geomspace(0.05, 5.0, c)
    w1 = rng.standard_normal((c, 3, 3, 3)) * spread[:, None, None, None]
    b1 = rng.uniform(0.0, 0.5, c) * spread
    w2 = rng.standard_normal((c, 1, 3, 3)) / spread[::-1, None, None, None]
    b2 = rng.uniform(-0.2, 0.2, c)
    w3 = rng.standard_normal((c, c, 1, 1)) * 0.3
    b3 = rng.uniform(0.5, 1.5, c)  # an offset the identity junction's absorption can centre
    w4 = rng.standard_normal((c, c, 1, 1)) * 0.3
    b4 = np.zeros(c)
    fc = rng.standard_normal((10, c)) * 0.5
    inits = [_init(n, v) for n, v in dict(w1=w1, b1=b1, w2=w2, b2=b2, w3=w3, b3=b3, w4=w4, b4=b4, fc=fc,
                                           fc_b=np.zeros(10), lo=np.array(0.0), hi=np.array(6.0)).items()]
    act1 = (helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6_1") if relu6_first
            else helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="stem"), act1,
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=c, name="dw"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="project"),
        helper.make_node("Conv", ["c3", "w4", "b4"], ["c4"], name="expand"),
        helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["r4"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(nodes, "separable", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                 [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _feeds(count: int, seed: int, offset: float = 0.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((1, 3, 12, 12)) + offset).astype(np.float32)} for _ in range(count)]


def _outputs(model: onnx.ModelProto, feeds, exact: bool = True) -> np.ndarray:
    runner = OnnxRuntimeRunner.from_model(model, integer_reference=exact)
    return np.concatenate([runner.run(feed)["y"] for feed in feeds])


def _weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


CONFIG = QuantizeConfig(equalize=False, range_search="off", bias_correction=False)


def test_equalization_keeps_fp32_outputs_on_unseen_inputs_and_equalizes_ranges():
    model = separable_model()
    equalized, report = equalize(model, _feeds(8, seed=1), absorb_bias=True)
    unseen = _feeds(8, seed=2, offset=0.5)  # not the calibration inputs: the pass must be exact, not data-fitted
    np.testing.assert_allclose(_outputs(equalized, unseen), _outputs(model, unseen), rtol=1e-5, atol=1e-5)
    assert {(a, b) for a, b, _ in report.pairs} == {("stem", "dw"), ("dw", "project"), ("project", "expand")}
    w1, w2 = _weight(equalized, "w1"), _weight(equalized, "w2")
    r1 = np.abs(w1).reshape(8, -1).max(1)
    r2 = np.abs(w2).reshape(8, -1).max(1)
    before = np.abs(_weight(model, "w1")).reshape(8, -1).max(1)
    assert before.max() / before.min() > 20 and r1.max() / r1.min() < before.max() / before.min() / 3
    np.testing.assert_allclose(r1, r2, rtol=0.05)  # stem's output ranges match depthwise's input ranges
    assert report.absorbed == 8  # the identity junction project -> expand (1x1, unpadded)
    assert report.range_spread_after < report.range_spread_before


def test_equalization_skips_relu6_pairs_and_says_why():
    pairs, skipped = find_pairs(separable_model(relu6_first=True))
    assert ("stem", "dw") not in {(p.first.name, p.second.name) for p in pairs}
    assert skipped and skipped[0][0] == "stem" and "ReLU6" in skipped[0][2]


def test_equalization_reduces_int8_error_of_a_depthwise_separable_model():
    model = separable_model()
    calibration, holdout = _feeds(16, seed=1), _feeds(16, seed=3)
    reference = _outputs(model, holdout)

    def error(m: onnx.ModelProto) -> float:
        quantized = quantize_static(m, compute_ranges(m, calibration, CONFIG), CONFIG)
        return float(np.abs(_outputs(quantized, holdout) - reference).mean())

    assert error(equalize(model, calibration)[0]) < 0.7 * error(model)


def test_range_search_narrows_a_tensor_with_outliers_and_lowers_its_error():
    rng = np.random.default_rng(0)
    values = rng.standard_t(3, 100_000)  # heavy tails: MinMax spends levels on a few values
    low, high = float(values.min()), float(values.max())
    counts = np.histogram(values, bins=2048, range=(low, high))[0]
    new_low, new_high, before, after = best_range(counts, low, high, "uint8", symmetric=False)
    assert new_high < 0.9 * high and new_low > 0.9 * low and after < 0.85 * before
    # A uniform tensor has no tail worth clipping: its range stays (nearly) MinMax.
    uniform = np.histogram(rng.uniform(0, 1, 100_000), bins=2048, range=(0.0, 1.0))[0]
    assert best_range(uniform, 0.0, 1.0, "uint8", symmetric=False)[1] > 0.97


def test_quantization_mse_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    centres = rng.uniform(-2, 3, 50)
    counts = rng.integers(1, 10, 50).astype(float)
    got = quantization_mse(centres, counts, np.array([-2.0]), np.array([3.0]), 0, 255, symmetric=False)[0]
    scale = 5.0 / 255
    zero = np.round(0 - (-2.0) / scale)
    q = (np.clip(np.round(centres / scale) + zero, 0, 255) - zero) * scale
    assert got == pytest.approx(float(((q - centres) ** 2 * counts).sum() / counts.sum()))


def test_range_search_keeps_every_tensor_and_only_narrows():
    model = separable_model()
    calibration = _feeds(8, seed=1)
    ranges = compute_ranges(model, calibration, CONFIG)
    searched, report = search_ranges(model, calibration, ranges, "uint8", False)
    assert set(searched.ranges) == set(ranges.ranges) and report.tensors > 0
    for name, (low, high) in searched.ranges.items():
        old_low, old_high = ranges.ranges[name]
        assert min(old_low, 0) - 1e-6 <= low <= high <= max(old_high, 0) + 1e-6
    assert report.mse_after <= report.mse_before


def test_bias_correction_removes_most_of_the_mean_output_error():
    model = separable_model(seed=4)
    calibration, holdout = _feeds(24, seed=1), _feeds(24, seed=5)
    ranges = compute_ranges(model, calibration, CONFIG)
    quantized = quantize_static(model, ranges, CONFIG)
    corrected, report = correct_biases(model, quantized, calibration)
    assert report.layers == 5  # stem, dw, project, expand, fc
    reference = _outputs(model, holdout)
    mean_error_before = np.abs((_outputs(quantized, holdout) - reference).mean(0)).mean()
    after = quantize_static(corrected, ranges, CONFIG)
    mean_error_after = np.abs((_outputs(after, holdout) - reference).mean(0)).mean()
    assert mean_error_after < 0.5 * mean_error_before
    # Only biases move: every weight is the FP32 one.
    for name in ("w1", "w2", "w3", "w4", "fc"):
        np.testing.assert_array_equal(_weight(corrected, name), _weight(model, name))


def test_learned_rounding_lowers_layer_error_and_onnx_runtime_keeps_its_integers():
    model = separable_model(seed=6)
    calibration = _feeds(16, seed=1, offset=2.0)  # a large common offset: correlated inputs, as images have
    rounded, report = round_weights(model, calibration, reduce_range=False, depthwise_full_range=False,
                                    per_channel=True)
    assert report.layers >= 3 and report.error_learned < 0.8 * report.error_nearest
    weight = _weight(rounded, "w1").astype(np.float64)
    scale = np.abs(_weight(model, "w1")).reshape(8, -1).max(1) / 127
    levels = weight / scale[:, None, None, None]
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)  # on the grid
    np.testing.assert_array_less(np.abs(levels - _weight(model, "w1") / scale[:, None, None, None]), 1.0 + 1e-4)
    quantized = quantize_static(rounded, compute_ranges(rounded, calibration, CONFIG), CONFIG)
    ints = next(numpy_helper.to_array(t) for t in quantized.graph.initializer if t.name == "w1_quantized")
    np.testing.assert_array_equal(ints.astype(np.int64), np.round(levels).astype(np.int64))


def test_prepare_int8_reports_each_pass_with_a_measurement():
    model = separable_model()
    config = QuantizeConfig(equalize=True, range_search="mse", bias_correction=True, weight_rounding="learned")
    improved, ranges, report = prepare_int8(model, _feeds(16, seed=1), config)
    steps = [s.step for s in report.steps]
    assert steps == ["none", "+ equalization", "+ range search", "+ learned rounding", "+ bias correction"]
    assert all(-1.0 <= s.min_cosine <= s.mean_cosine <= 1.0 for s in report.steps)
    assert report.steps[-1].mean_cosine > report.steps[0].mean_cosine
    lines = report.lines()
    assert any(line.startswith("cross-layer equalization: 3 layer pairs") for line in lines)
    assert any(line.startswith("bias correction:") for line in lines)
    assert set(ranges.ranges) and improved is not model


def test_a_layer_the_guard_keeps_in_float_gets_its_uncorrected_bias_back():
    from toolchain.quant_guard import with_float_biases

    model = separable_model(seed=4)
    calibration = _feeds(16, seed=1)
    ranges = compute_ranges(model, calibration, CONFIG)
    corrected, _ = correct_biases(model, quantize_static(model, ranges, CONFIG), calibration)
    restored = with_float_biases(corrected, model, ["stem"])
    np.testing.assert_array_equal(_weight(restored, "b1"), _weight(model, "b1"))
    np.testing.assert_array_equal(_weight(restored, "b2"), _weight(corrected, "b2"))  # the others keep theirs
    assert not np.array_equal(_weight(corrected, "b1"), _weight(model, "b1"))
