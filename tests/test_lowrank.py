"""Low-rank factorization pass on real ONNX Runtime: rewrites, rank modes, bias correction, errors, INT8."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from backends.onnxruntime.runner import OnnxRuntimeRunner
from toolchain.errors import UsageError, VerificationError
from toolchain.model_info import summarize
from toolchain.passes import lowrank
from toolchain.passes.lowrank import LowRankConfig, NothingToFactorizeError
from toolchain.passes.lowrank_rules import SUPPORTED_OP_TYPES, Layer, apply, match
from toolchain.passes.lowrank_select import Spectrum, round_rank

FLOAT = onnx.TensorProto.FLOAT


# --------------------------------------------------------------------------- model builders


def _with_spectrum(rows: int, cols: int, singular: np.ndarray, seed: int) -> np.ndarray:
    """A rows x cols matrix whose singular values are exactly ``singular`` (zeros after them)."""
    rng = np.random.default_rng(seed)
    k = min(rows, cols)
    u, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    s = np.zeros(k)
    s[:len(singular)] = singular
    return ((u * s) @ v.T).astype(np.float32)


def _decaying(rows: int, cols: int, decay: float, seed: int, scale: float = 1.0) -> np.ndarray:
    k = min(rows, cols)
    return _with_spectrum(rows, cols, scale * decay ** np.arange(k), seed)


def _model(nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray],
           opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "lowrank-test", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_mlp(fc1: np.ndarray | None = None, seed: int = 0) -> onnx.ModelProto:
    """x (N, 64) -> Gemm fc1 (64->96) -> Relu -> MatMul mm + Add (96->48) -> Relu -> Gemm fc3 (48->10)."""
    rng = np.random.default_rng(seed)
    weights = {"fc1_w": (fc1 if fc1 is not None else _decaying(64, 96, 0.93, seed)).T.copy(),
               "fc1_b": rng.standard_normal(96).astype(np.float32) * 0.1,
               "mm_w": _decaying(96, 48, 0.9, seed + 1), "mm_b": rng.standard_normal(48).astype(np.float32) * 0.1,
               "fc3_w": rng.standard_normal((10, 48)).astype(np.float32) * 0.3,
               "fc3_b": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "fc1_w", "fc1_b"], ["h1"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "mm_w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "mm_b"], ["h2"], name="mm_add"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "fc3_w", "fc3_b"], ["y"], transB=1, name="fc3")]
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 64])],
                  [helper.make_tensor_value_info("y", FLOAT, ["N", 10])], weights)


def make_convnet(seed: int = 0) -> onnx.ModelProto:
    """3x3 conv, depthwise conv, grouped conv, 1x1 conv, pooling and a Gemm head on (1, 8, 16, 16)."""
    rng = np.random.default_rng(seed)
    conv1 = _decaying(8 * 9, 64, 0.85, seed).T.reshape(64, 8, 3, 3)
    weights = {"c1_w": np.ascontiguousarray(conv1), "c1_b": rng.standard_normal(64).astype(np.float32) * 0.1,
               "dw_w": rng.standard_normal((64, 1, 3, 3)).astype(np.float32) * 0.3,
               "gc_w": rng.standard_normal((64, 16, 3, 3)).astype(np.float32) * 0.1,
               "pw_w": np.ascontiguousarray(_decaying(64, 96, 0.9, seed + 1).T.reshape(96, 64, 1, 1)),
               "fc_w": rng.standard_normal((10, 96)).astype(np.float32) * 0.2, "fc_b": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "dw_w"], ["d"], pads=[1, 1, 1, 1], group=64, name="depthwise"),
             helper.make_node("Conv", ["d", "gc_w"], ["g"], pads=[1, 1, 1, 1], group=4, name="grouped"),
             helper.make_node("Relu", ["g"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "pw_w"], ["p"], name="pointwise"),
             helper.make_node("GlobalAveragePool", ["p"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc")]
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, [1, 8, 16, 16])],
                  [helper.make_tensor_value_info("y", FLOAT, [1, 10])], weights)


def make_budget_net(seed: int = 0) -> onnx.ModelProto:
    """A conv trunk holding most MACs (slowly decaying spectra) and a head whose spectra decay fast.

    A uniform energy fraction treats every layer alike; the budget search should spend the error
    where MACs are, which is what this model rewards.
    """
    rng = np.random.default_rng(seed)
    conv1 = _decaying(16 * 9, 64, 0.97, seed, scale=0.3).T.reshape(64, 16, 3, 3)
    conv2 = _decaying(64, 64, 0.95, seed + 1, scale=0.5).T.reshape(64, 64, 1, 1)
    weights = {"c1_w": np.ascontiguousarray(conv1), "c1_b": np.full(64, 0.05, np.float32),
               "c2_w": np.ascontiguousarray(conv2), "c2_b": np.zeros(64, np.float32),
               "fc1_w": _decaying(64, 128, 0.8, seed + 2).T.copy(), "fc1_b": np.zeros(128, np.float32),
               "fc2_w": rng.standard_normal((10, 128)).astype(np.float32) * 0.2, "fc2_b": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc1_w", "fc1_b"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["rh"], name="relu3"),
             helper.make_node("Gemm", ["rh", "fc2_w", "fc2_b"], ["y"], transB=1, name="fc2")]
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 16, 12, 12])],
                  [helper.make_tensor_value_info("y", FLOAT, ["N", 10])], weights)


def make_sequence_model() -> onnx.ModelProto:
    """x (N, 6, 64) -> MatMul (64->96, no bias) -> Relu -> MatMul + a (1, 1, 32) bias Add (operands swapped)
    -> flatten -> Gemm with alpha/beta and an untransposed weight."""
    rng = np.random.default_rng(7)
    weights = {"w1": _decaying(64, 96, 0.9, 7), "w2": _decaying(96, 32, 0.9, 8),
               "b2": rng.standard_normal((1, 1, 32)).astype(np.float32),
               "shape": np.array([-1, 6 * 32], np.int64), "w3": _decaying(6 * 32, 40, 0.9, 9),
               "b3": rng.standard_normal(40).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="seq_mm"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="seq_mm2"),
             helper.make_node("Add", ["b2", "h2"], ["a2"], name="seq_add"),
             helper.make_node("Reshape", ["a2", "shape"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], alpha=0.5, beta=2.0, name="scaled_gemm")]
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 6, 64])],
                  [helper.make_tensor_value_info("y", FLOAT, ["N", 40])], weights)


def _feeds(shape: tuple[int, ...], count: int, seed: int, name: str = "x") -> list[dict[str, np.ndarray]]:
    # Non-negative inputs, like images or post-ReLU activations: their mean is not zero.
    rng = np.random.default_rng(seed)
    return [{name: rng.random(shape, dtype=np.float32)} for _ in range(count)]


def _run(model: onnx.ModelProto, feeds: list[dict]) -> np.ndarray:
    runner = OnnxRuntimeRunner.from_model(model)
    return np.concatenate([next(iter(runner.run(feed).values())) for feed in feeds])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _config(**options) -> LowRankConfig:
    return LowRankConfig.from_options(latency_rounds=0, **options)


def _ranks(report) -> dict[str, int]:
    return {row["layer"]: row["rank"] for row in report.details["layers"]}


def _macs_removed(model: onnx.ModelProto, result: onnx.ModelProto) -> int:
    return summarize(model).macs - summarize(result).macs


# --------------------------------------------------------------------------- rewrites


@pytest.mark.parametrize("build, shape", [(make_mlp, (3, 64)), (make_convnet, (1, 8, 16, 16)),
                                          (make_sequence_model, (2, 6, 64))])
def test_full_rank_factorization_reconstructs_exactly(build, shape):
    model = build()
    layers = [item for item in match(model, SUPPORTED_OP_TYPES) if isinstance(item, Layer)]
    assert {layer.op_type for layer in layers} >= ({"Conv", "Gemm"} if build is make_convnet else {"Gemm", "MatMul"})
    rewrites = {layer.name: (layer, Spectrum.of(layer).factors(layer.full_rank, layer.bias)) for layer in layers}
    result = apply(model, rewrites)
    onnx.checker.check_model(result)
    feeds = _feeds(shape, 2, seed=1)
    reference, factorized = _run(model, feeds), _run(result, feeds)
    np.testing.assert_allclose(factorized, reference, rtol=1e-4, atol=1e-4)
    assert not {"fc1_w", "mm_w", "c1_w", "pw_w"} & {t.name for t in result.graph.initializer}, "old weights dropped"


def test_a_rank_deficient_layer_is_reproduced_at_its_rank():
    fc1 = _with_spectrum(64, 96, np.array([5.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.25]), seed=3)  # rank 8 exactly
    model = make_mlp(fc1)
    result, report = lowrank.run(model, _config(mode="energy", energy=0.999999, nodes_to_exclude=("mm",)))
    assert _ranks(report)["fc1"] == 8
    feeds = _feeds((4, 64), 2, seed=2)
    layer_error = next(r for r in report.details["layers"] if r["layer"] == "fc1")["weight_error"]
    assert layer_error < 1e-5
    ops = [n.name for n in result.graph.node]
    assert "fc1.lowrank_1" in ops and "fc1.lowrank_2" in ops and "fc1" not in ops
    np.testing.assert_allclose(_run(result, feeds), _run(model, feeds), rtol=1e-4, atol=1e-5)


def test_matmul_on_sequences_and_scaled_gemm():
    model = make_sequence_model()
    calibration, holdout = _feeds((4, 6, 64), 3, seed=50), _feeds((4, 6, 64), 2, seed=51)
    result, report = lowrank.run(model, _config(energy=0.95, min_parameters=1000), calibration, holdout)
    rows = {r["layer"]: r for r in report.details["layers"]}
    assert set(rows) == {"seq_mm", "seq_mm2", "scaled_gemm"}
    assert rows["seq_mm"]["macs_before"] == 6 * 64 * 96, "positions of a (1, 6, 64) input at batch 1"
    names = {n.name for n in result.graph.node}
    assert "seq_mm.lowrank_bias_add" in names, "a corrected MatMul without a bias gets one"
    assert "seq_add" not in names and "seq_mm2.lowrank_bias_add" in names, "the bias Add is carried over"
    onnx.checker.check_model(result)
    assert _cosines(_run(model, holdout), _run(result, holdout)).min() > 0.99


def test_conv_becomes_kxk_to_rank_channels_then_1x1():
    model = make_convnet()
    result, report = lowrank.run(model, _config(mode="energy", energy=0.97, min_parameters=1000))
    nodes = {n.name: n for n in result.graph.node}
    rank = _ranks(report)["conv1"]
    first, second = nodes["conv1.lowrank_1"], nodes["conv1.lowrank_2"]
    weights = {t.name: t for t in result.graph.initializer}
    assert list(weights[first.input[1]].dims) == [rank, 8, 3, 3]
    assert list(weights[second.input[1]].dims) == [64, rank, 1, 1]
    assert len(second.input) == 3, "the bias stays on the second convolution"
    assert rank % 8 == 0 and rank <= report.details["layers"][0]["max_rank"]
    feeds = _feeds((1, 8, 16, 16), 2, seed=4)
    assert np.all(_cosines(_run(model, feeds), _run(result, feeds)) > 0.97)


def test_depthwise_and_grouped_convolutions_are_skipped_with_reasons():
    _, report = lowrank.run(make_convnet(), _config(mode="energy", energy=0.9, min_parameters=1000))
    reasons = {s["name"]: s["reason"] for s in report.details["skipped"]}
    assert "depthwise convolution (group=64)" in reasons["depthwise"]
    assert "grouped convolution (group=4)" in reasons["grouped"]
    assert "depthwise" not in _ranks(report) and "grouped" not in _ranks(report)
    rows = lowrank.layer_rows(report)
    assert {r["status"] for r in rows} == {"factorized", "skipped"}
    text = lowrank.format_report(report)
    assert "skipped depthwise (Conv): depthwise convolution" in text and "conv1" in text


# --------------------------------------------------------------------------- rank selection


def test_energy_mode_picks_the_ranks_a_known_spectrum_implies():
    energies = np.array([40, 30, 20, 5, 3, 1, 0.5, 0.5])  # sum 100: cumulative 0.4 0.7 0.9 0.95 0.98 0.99 ...
    fc1 = _with_spectrum(64, 96, np.sqrt(energies), seed=5)
    model = make_mlp(fc1)
    expected = {0.85: 3, 0.93: 4, 0.97: 5, 0.985: 6, 0.999: 8}
    for fraction, rank in expected.items():
        _, report = lowrank.run(model, _config(energy=fraction, rank_multiple=1, nodes_to_exclude=("mm",)))
        assert _ranks(report) == {"fc1": rank}, fraction
    _, report = lowrank.run(model, _config(energy=0.85, nodes_to_exclude=("mm",)))
    assert _ranks(report) == {"fc1": 8}, "rounded up to the multiple of 8 while it still saves"


def test_rank_rounding_never_breaks_the_saving():
    assert round_rank(3, 8, 27) == 8
    assert round_rank(26, 8, 27) == 26  # 32 would no longer save parameters: keep the exact rank
    assert round_rank(30, 8, 27) is None


def test_ratio_mode_meets_the_whole_model_ratio():
    model = make_mlp()
    before = summarize(model).parameter_count
    for target in (0.6, 0.4):
        result, report = lowrank.run(model, _config(mode="ratio", target_ratio=target))
        after = summarize(result).parameter_count
        assert after <= target * before
        assert after >= 0.8 * target * before, "close to the target, not far below it"
        assert report.details["selection"]["target_ratio"] == target


def test_ratio_mode_says_when_the_ratio_cannot_be_reached():
    with pytest.raises(UsageError, match="target_ratio 0.05 cannot be reached"):
        lowrank.run(make_mlp(), _config(mode="ratio", target_ratio=0.05))


def test_budget_mode_holds_the_budget_and_beats_a_uniform_choice():
    model = make_budget_net()
    calibration, holdout = _feeds((8, 16, 12, 12), 6, seed=10), _feeds((8, 16, 12, 12), 4, seed=11)
    budget = 0.995
    result, report = lowrank.run(model, _config(mode="budget", min_cosine=budget, min_parameters=1000),
                                 calibration, holdout)
    reference = _run(model, holdout)
    assert _cosines(reference, _run(result, holdout)).min() >= budget
    assert report.details["output_error"]["basis"] == "holdout"
    assert report.details["output_error"]["min_cosine"] >= budget
    removed = _macs_removed(model, result)
    # The uniform choice: one energy fraction for all layers, the lowest that holds the same budget (bisection).
    low, high, uniform_best = 0.3, 0.999, 0
    for _ in range(7):
        fraction = (low + high) / 2
        candidate, _ = lowrank.run(model, _config(energy=fraction, min_parameters=1000), calibration)
        if _cosines(reference, _run(candidate, holdout)).min() >= budget:
            uniform_best, high = max(uniform_best, _macs_removed(model, candidate)), fraction
        else:
            low = fraction
    assert removed > uniform_best > 0
    assert report.details["selection"]["evaluations"] <= 20
    assert lowrank.format_report(report).startswith("lowrank (budget cosine >= 0.995): ")


def test_budget_defaults():
    assert LowRankConfig().cosine_budget == 0.99
    assert LowRankConfig(max_relative_error=0.1).cosine_budget is None, "a relative-error budget alone is the budget"
    assert LowRankConfig(min_cosine=0.9, max_relative_error=0.1).cosine_budget == 0.9


def test_budget_mode_refuses_a_budget_nothing_can_meet():
    model = make_budget_net()
    with pytest.raises(VerificationError, match="no layer can be factorized within the error budget"):
        lowrank.run(model, _config(mode="budget", max_relative_error=1e-9, min_parameters=1000),
                    _feeds((4, 16, 12, 12), 2, seed=1), _feeds((4, 16, 12, 12), 2, seed=2))


def test_bias_correction_lowers_the_error():
    model = make_mlp()
    calibration, holdout = _feeds((16, 64), 4, seed=20), _feeds((16, 64), 4, seed=21)
    errors, layer_errors = {}, {}
    for corrected in (False, True):
        _, report = lowrank.run(model, _config(energy=0.8, bias_correction=corrected), calibration, holdout)
        errors[corrected] = report.details["output_error"]["relative_error"]
        layer_errors[corrected] = {r["layer"]: r["output_error"] for r in report.details["layers"]}
        assert report.details["bias_correction"] is corrected
    assert errors[True] < 0.8 * errors[False]
    assert all(layer_errors[True][name] < layer_errors[False][name] for name in layer_errors[True])


def test_per_layer_macs_add_up_to_inspect_totals():
    model = make_convnet()
    result, report = lowrank.run(model, _config(energy=0.9, min_parameters=1000))
    removed = sum(r["macs_before"] - r["macs_after"] for r in report.details["layers"])
    assert removed == _macs_removed(model, result) > 0
    totals = report.details["model"]
    assert totals["macs_before"] - totals["macs_after"] == removed
    assert totals["parameters_after"] < totals["parameters_before"]


def test_the_input_model_is_not_modified_and_latency_is_measured():
    model = make_mlp()
    before = model.SerializeToString()
    _, report = lowrank.run(model, LowRankConfig.from_options(latency_rounds=1))
    assert model.SerializeToString() == before
    assert report.details["model"]["latency_ms_before"] > 0 and report.details["model"]["latency_ms_after"] > 0
    assert report.details["output_error"]["basis"] == "random inputs"


# --------------------------------------------------------------------------- bad input


def _depthwise_only() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = {"dw": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
               "fc_w": rng.standard_normal((4, 8)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "dw"], ["d"], group=8, pads=[1, 1, 1, 1], name="dw"),
             helper.make_node("GlobalAveragePool", ["d"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w"], ["y"], transB=1, name="fc")]
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, [1, 8, 8, 8])],
                  [helper.make_tensor_value_info("y", FLOAT, [1, 4])], weights)


def test_no_factorizable_layer_is_a_clear_error_and_the_file_is_untouched(tmp_path: Path):
    from toolchain.onnx_io import load_onnx

    path = tmp_path / "dw.onnx"
    onnx.save(_depthwise_only(), str(path))
    content = path.read_bytes()
    with pytest.raises(NothingToFactorizeError) as caught:
        lowrank.run(load_onnx(path), _config())
    message = str(caught.value)
    assert isinstance(caught.value, UsageError)
    assert message.startswith("no layer of the model can be factorized")
    assert "'dw' (Conv): depthwise convolution" in message and "'fc' (Gemm): 32 weights" in message
    assert "left unchanged" in message
    assert path.read_bytes() == content


def test_nothing_chosen_is_also_a_clear_error():
    expected = r"no layer was factorized: .*'fc1' \(Gemm\): keeping 0.999 of its energy needs rank 63"
    with pytest.raises(NothingToFactorizeError, match=expected):
        lowrank.run(make_mlp(np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)),
                    _config(energy=0.999, nodes_to_exclude=("mm",)))


@pytest.mark.parametrize("options, field", [
    ({"min_cosine": 1.0}, "min_cosine"), ({"min_cosine": 0.0}, "min_cosine"), ({"min_cosine": 1.5}, "min_cosine"),
    ({"max_relative_error": 0.0}, "max_relative_error"), ({"max_relative_error": 2.0}, "max_relative_error"),
    ({"energy": 1.2}, "energy"), ({"target_ratio": 0.0}, "target_ratio"), ({"rank_multiple": 0}, "rank_multiple"),
    ({"ranks": {"fc1": 0}}, "ranks.fc1"), ({"mode": "magic"}, "mode"), ({"op_types": ("Conv", "LSTM")}, "op_types"),
])
def test_bad_options_are_one_plain_line(options, field):
    with pytest.raises(UsageError) as caught:
        LowRankConfig.from_options(**options)
    assert caught.value.message.startswith(f"invalid options for LowRankConfig: {field}")
    assert "\n" not in str(caught.value)


def test_a_rank_larger_than_the_layer_allows():
    with pytest.raises(UsageError, match=r"rank 40 for 'fc1' is larger than the layer allows: its 64x96 weight "
                                         r"saves parameters and MACs only up to rank 38"):
        lowrank.run(make_mlp(), _config(ranks={"fc1": 40}))
    with pytest.raises(UsageError, match="ranks names 'nope', which is not a Gemm/MatMul/Conv node"):
        lowrank.run(make_mlp(), _config(ranks={"nope": 4}))
    with pytest.raises(UsageError, match="'depthwise' cannot be given a rank: depthwise convolution"):
        lowrank.run(make_convnet(), _config(ranks={"depthwise": 4}))


def test_fixed_ranks_are_used_as_given():
    _, report = lowrank.run(make_mlp(), _config(ranks={"fc1": 5}))
    row = next(r for r in report.details["layers"] if r["layer"] == "fc1")
    assert row["rank"] == 5 and row["rank_source"] == "fixed"


def test_an_error_budget_without_calibration_data():
    with pytest.raises(UsageError, match="--lowrank with an error budget needs calibration data"):
        lowrank.run(make_mlp(), _config(mode="budget", min_cosine=0.99))
    with pytest.raises(UsageError, match="bias correction .* needs calibration data"):
        lowrank.run(make_mlp(), _config(bias_correction=True))


# --------------------------------------------------------------------------- composition


def test_lowrank_then_int8_runs_in_onnxruntime():
    from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantize_static

    model = make_mlp()
    calibration = _feeds((8, 64), 4, seed=30)
    factorized, _ = lowrank.run(model, _config(energy=0.9), calibration)
    config = QuantizeConfig()
    quantized = quantize_static(factorized, compute_ranges(factorized, calibration, config), config)
    onnx.checker.check_model(quantized)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in quantized.graph.node}
    int8_weights = [t.name for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert any("lowrank_a" in name for name in int8_weights) and any("lowrank_b" in name for name in int8_weights)
    feeds = _feeds((8, 64), 2, seed=31)
    assert _cosines(_run(model, feeds), _run(quantized, feeds)).min() > 0.98


TORCH_MLP = textwrap.dedent('''
    import torch

    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                            torch.nn.ReLU(), torch.nn.Linear(128, 10))

        def forward(self, x):
            return self.body(x)
''')


def test_a_torch_model_converted_by_edgekiln(tmp_path: Path):
    torch = pytest.importorskip("torch")
    from toolchain import api
    from toolchain.onnx_io import load_onnx

    source = tmp_path / "mlp.py"
    source.write_text(TORCH_MLP)
    namespace: dict = {}
    exec(compile(TORCH_MLP, str(source), "exec"), namespace)
    torch.manual_seed(0)
    network = namespace["Mlp"]()
    with torch.no_grad():  # trained layers have decaying spectra; random init ones are flat and do not compress
        for index, layer in enumerate(m for m in network.modules() if isinstance(m, torch.nn.Linear)):
            rows, cols = layer.weight.shape
            layer.weight.copy_(torch.from_numpy(_decaying(rows, cols, 0.85, seed=index)))
    weights = tmp_path / "mlp.pth"
    torch.save(network.state_dict(), weights)
    api.convert(None, tmp_path / "mlp.onnx", weights=weights, model_class=f"{source}:Mlp", inputs=["x:Nx64"],
                dynamic_batch=True)
    model = load_onnx(tmp_path / "mlp.onnx")
    calibration, holdout = _feeds((8, 64), 4, seed=40), _feeds((8, 64), 2, seed=41)
    result, report = lowrank.run(model, _config(mode="budget", min_cosine=0.99), calibration, holdout)
    assert report.details["layers"], "the Linear layers exported as Gemm/MatMul are factorized"
    assert _cosines(_run(model, holdout), _run(result, holdout)).min() >= 0.99
    assert summarize(result).parameter_count < summarize(model).parameter_count


def _tflite_backend_usable() -> tuple[bool, str]:
    try:
        from backends.registry import get_backend

        return get_backend("tflite").is_available()  # checked without importing onnx2tf or TensorFlow
    except Exception as exc:  # the backend is another engineer's work in progress; absent or broken means skip
        return False, f"{type(exc).__name__}: {exc}"


def test_the_factorized_model_lowers_to_tflite(tmp_path: Path):
    usable, why = _tflite_backend_usable()
    if not usable:
        pytest.skip(f"tflite backend not usable here: {why}")
    from toolchain import api

    model = make_budget_net()
    factorized, report = lowrank.run(model, _config(energy=0.9, min_parameters=1000))
    assert {r["op_type"] for r in report.details["layers"]} == {"Conv", "Gemm"}
    onnx.save(factorized, str(tmp_path / "lowrank.onnx"))
    result = api.compile(tmp_path / "lowrank.onnx", tmp_path / "tflite", backend="tflite")
    assert result.parity and all(p.passed for p in result.parity), "the TFLite artifact matches ONNX Runtime"


def test_build_runs_the_pass_as_a_stage_of_its_own(tmp_path):
    """The build's pass stages come from the pass table: --lowrank is a stage between simplify and the
    targets, with its settings in the stage's cache key; a model with nothing to factorize passes through."""
    from helpers import make_onnx_model, make_single_layer_model
    from toolchain import api

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 8)) @ rng.standard_normal((8, 64))).astype(np.float32)
    onnx.save(make_single_layer_model(weight, "Gemm"), str(tmp_path / "m.onnx"))
    common = dict(targets=["x86"], bench_iterations=0, cache_dir=tmp_path / "cache", lowrank=True,
                  lowrank_min_params=1024)
    plan = api.build(tmp_path / "m.onnx", tmp_path / "out", dry_run=True, lowrank_energy=0.999, **common)
    names = [stage.name for stage in plan]
    assert names[:2] == ["convert", "simplify"] and names.index("lowrank") < names.index("compile x86")
    assert "mode energy" in plan[names.index("lowrank")].description
    other = api.build(tmp_path / "m.onnx", tmp_path / "out", dry_run=True, lowrank_energy=0.9, **common)
    assert plan[names.index("lowrank")].key != other[names.index("lowrank")].key
    assert plan[0].key == other[0].key

    built = api.build(tmp_path / "m.onnx", tmp_path / "out", lowrank_energy=0.999, **common)
    stage = next(s for s in built.stages if s["stage"] == "lowrank")
    assert stage["output"] == "model.lowrank.onnx" and (tmp_path / "out" / "model.lowrank.onnx").is_file()
    assert any("factorized" in note or "nodes" in note for note in stage["notes"])

    onnx.save(make_onnx_model(), str(tmp_path / "tiny.onnx"))  # weights too small to factorize
    passed = api.build(tmp_path / "tiny.onnx", tmp_path / "tiny", **{**common, "lowrank_min_params": 4096})
    stage = next(s for s in passed.stages if s["stage"] == "lowrank")
    assert stage["output"] == "-" and stage["notes"][0].startswith("skipped: ") and passed.ok

    with pytest.raises(UsageError, match="budget needs calibration data"):
        api.build(tmp_path / "m.onnx", tmp_path / "budget", lowrank_mode="budget", **common)
    assert not (tmp_path / "budget").exists()
