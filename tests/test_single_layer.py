"""The guard's per-layer ranking, made cheap, computes what it computed before, bit for bit.

Single-layer INT8 models cut from one quantization of the whole model must equal ONNX Runtime's own
``nodes_to_quantize=(layer,)`` models, and the ranking run on the downstream part of each model (fed with
the float model's border values) must give the same scores as whole-model runs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from toolchain import sensitivity
from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantizable_nodes, quantize_static
from toolchain.passes.single_layer import SingleLayerVariants
from toolchain.quality import sample_cosines
from toolchain.runtime import OnnxRuntimeRunner

TARGETS = ("x86-vnni", "x86-avx2", "jetson-nano", "rpi4")


def _branchy_cnn() -> onnx.ModelProto:
    """Conv-ReLU, a depthwise Conv-Clip(0, 6), a pointwise Conv with a residual Add, pooling, a Gemm head,
    and a second output from a side Conv that the head's layers never reach."""
    rng = np.random.default_rng(7)

    def init(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Relu", ["c1"], ["r1"], name="stem_relu"),
        helper.make_node("Conv", ["r1", "dw", "dwb"], ["c2"], pads=[1, 1, 1, 1], group=8, name="depthwise"),
        helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(np.array(6.0, np.float32)),
                         name="six"),  # as exporters write it: a Constant node, not an initializer
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6"),
        helper.make_node("Conv", ["r2", "pw", "pwb"], ["c3"], name="pointwise"),
        helper.make_node("Add", ["c3", "r1"], ["s"], name="residual"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="head"),
        helper.make_node("Conv", ["r1", "sw", "sb"], ["aux"], name="side"),
    ]
    initializers = [init("w1", 8, 3, 3, 3), init("b1", 8, scale=0.1), init("dw", 8, 1, 3, 3),
                    init("dwb", 8, scale=0.1), init("pw", 8, 8, 1, 1), init("pwb", 8, scale=0.1),
                    init("fc_w", 10, 8), init("fc_b", 10, scale=0.1), init("sw", 4, 8, 1, 1),
                    init("sb", 4, scale=0.1),
                    numpy_helper.from_array(np.array(0.0, np.float32), "lo")]
    graph = helper.make_graph(
        nodes, "branchy", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("aux", onnx.TensorProto.FLOAT, [1, 4, 12, 12])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(count)]


def _outputs(model: onnx.ModelProto, feeds, config: QuantizeConfig) -> dict[str, np.ndarray]:
    runner = OnnxRuntimeRunner.from_model(model, integer_reference=config.guard_runtime == "reference")
    runs = [runner.run(feed) for feed in feeds]
    return {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}


@pytest.mark.parametrize("target", TARGETS)
def test_cut_variants_equal_ort_single_layer_quantization(target):
    model, feeds = _branchy_cnn(), _feeds(6, 0)
    config = QuantizeConfig.for_target(target)
    ranges = compute_ranges(model, feeds, config)
    variants = SingleLayerVariants(model, ranges, config)
    layers = [n.name for n in quantizable_nodes(model)]
    assert layers == ["stem", "depthwise", "pointwise", "head", "side"]
    for layer in layers:
        cut = variants.variant(model, layer)
        assert cut is not None, layer
        onnx.checker.check_model(cut)
        ort = quantize_static(model, ranges, config.model_copy(
            update={"nodes_to_quantize": (layer,), "nodes_to_exclude": ()}))
        ours, theirs = _outputs(cut, feeds, config), _outputs(ort, feeds, config)
        for name in theirs:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"{layer}: {name}")
        # and it is quantized: not the float model
        assert not np.array_equal(ours["y"], _outputs(model, feeds, config)["y"]) or layer == "side", layer


def _ranking_the_old_way(model, ranges, config, feeds, reference_model=None, bias_source=None):
    """The ranking as the guard computed it before: a quantizer call per layer, whole-model runs."""
    subset = feeds[:sensitivity.SENSITIVITY_SAMPLES]
    reference = _outputs(reference_model or model, subset, QuantizeConfig())
    names = [n.name for n in quantizable_nodes(model)]
    scores = []
    for node in quantizable_nodes(model):
        base = sensitivity.with_float_biases(model, bias_source, [n for n in names if n != node.name])
        single = quantize_static(base, ranges, config.model_copy(
            update={"nodes_to_quantize": (node.name,), "nodes_to_exclude": ()}))
        outputs = _outputs(single, subset, config)
        scores.append((node.name, node.op_type, max(
            1.0 - float(np.nan_to_num(sample_cosines(reference[n], outputs[n]), nan=-1.0).mean()) for n in outputs)))
    return sorted(scores, key=lambda item: -item[2])


@pytest.mark.parametrize("target", ["x86-avx2", "jetson-nano"])
@pytest.mark.parametrize("border_limit", [sensitivity.BORDER_BYTES_LIMIT, 0])  # 0: every model runs whole
def test_ranking_is_the_same_as_whole_model_runs(target, border_limit, monkeypatch):
    monkeypatch.setattr(sensitivity, "BORDER_BYTES_LIMIT", border_limit)
    model, feeds = _branchy_cnn(), _feeds(20, 1)
    config = QuantizeConfig.for_target(target)
    ranges = compute_ranges(model, feeds, config)
    ours = sensitivity.layer_sensitivity(model, ranges, config, feeds)
    assert ours == _ranking_the_old_way(model, ranges, config, feeds)
    assert len({score for _, _, score in ours}) == len(ours)  # distinct scores: the order is a real test


def test_ranking_with_bias_correction_takes_the_uncorrected_biases_elsewhere():
    """With a bias source (the model before bias correction), every layer but the measured one is float
    with its uncorrected bias: the cut models and the border values must both honour that."""
    model, feeds = _branchy_cnn(), _feeds(20, 2)
    corrected = onnx.ModelProto()
    corrected.CopyFrom(model)
    for tensor in corrected.graph.initializer:
        if tensor.name in ("b1", "pwb", "fc_b"):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + np.float32(0.05), tensor.name))
    config = QuantizeConfig.for_target("x86-vnni")
    ranges = compute_ranges(corrected, feeds, config)
    ours = sensitivity.layer_sensitivity(corrected, ranges, config, feeds, reference=model, bias_source=model)
    assert ours == _ranking_the_old_way(corrected, ranges, config, feeds, reference_model=model, bias_source=model)



@pytest.mark.parametrize("min_cosine, passes", [(0.99999, False), (0.999, True)])
def test_early_stopped_attempts_decide_as_full_comparisons(min_cosine, passes):
    """Fallback attempts stop comparing at the first sample under the cosine floor: the guard must reach
    the same attempts, the same outcome and, for a refusal, the same final figures as comparing every
    sample; stopped attempts say how far they got."""
    from toolchain.errors import VerificationError
    from toolchain.quant_guard import Budget, guarded_quantize

    model, feeds = _branchy_cnn(), _feeds(24, 3)
    config = QuantizeConfig.for_target("x86-avx2")
    ranges = compute_ranges(model, feeds[:12], config)
    budget = Budget(max_drop=1.0, min_cosine=min_cosine, task="generic")

    def guard(stop_early: bool):
        try:
            # The plain schedule, so that a refusal has failed attempts before its last (a hopeless one skips them).
            return guarded_quantize(model, ranges, config, feeds[12:], budget, stop_early=stop_early,
                                    refuse_hopeless=False)[1].to_dict()
        except VerificationError as error:
            return error.report

    early, full = guard(True), guard(False)
    assert [a["kept_float"] for a in early["attempts"]] == [a["kept_float"] for a in full["attempts"]]
    assert early["passed"] == full["passed"] and early["sensitivity"] == full["sensitivity"]
    assert early["attempts"][0] == full["attempts"][0] and early["attempts"][-1] == full["attempts"][-1]
    assert early["passed"] is passes and len(early["attempts"]) >= 2  # the fallback ran
    assert early["attempts"][-1]["quality"]["of_samples"] is None  # passed or refused on every sample
    stopped = [a["quality"] for a in early["attempts"] if a["quality"]["of_samples"]]
    if not passes:
        assert stopped, early["attempts"]  # a refusal's failed attempts stopped early
    assert all(q["of_samples"] == 12 and q["samples"] < 12 and q["min_cosine"] < min_cosine for q in stopped)


@pytest.mark.parametrize("min_cosine", [0.99999, 0.999, 0.99])
def test_refusing_a_hopeless_model_at_once_hands_over_what_the_plain_schedule_does(min_cosine):
    """After the one-layer choices the guard tries its largest fallback step and refuses at once when that
    misses by far; otherwise it walks the schedule as before. Either way the model, the layers kept in
    float, the verdict and the final figures are the plain schedule's."""
    from toolchain.errors import VerificationError
    from toolchain.quant_guard import Budget, guarded_quantize

    model, feeds = _branchy_cnn(), _feeds(24, 3)
    config = QuantizeConfig.for_target("x86-avx2")
    ranges = compute_ranges(model, feeds[:12], config)
    budget = Budget(max_drop=1.0, min_cosine=min_cosine, task="generic")

    def guard(refuse_hopeless: bool):
        try:
            # Up to 4 of its 5 layers in float: steps 1, 2, 3 and 4, so there are steps to skip.
            quantized, report = guarded_quantize(model, ranges, config, feeds[12:], budget, max_float_fraction=0.8,
                                                 refuse_hopeless=refuse_hopeless)
            return quantized.SerializeToString(), report.to_dict(), ""
        except VerificationError as error:
            return None, error.report, str(error)

    (quick_model, quick, said), (plain_model, plain, _) = guard(True), guard(False)
    assert quick_model == plain_model and quick["passed"] == plain["passed"]
    assert quick["attempts"][-1] == plain["attempts"][-1] and quick["sensitivity"] == plain["sensitivity"]
    assert [len(a["kept_float"]) for a in quick["attempts"]] == sorted(len(a["kept_float"]) for a in quick["attempts"])
    if min_cosine == 0.99999:  # every sample diverges: hopeless, refused after the one-layer choices and one more
        assert not plain["passed"] and "missed by far" in said
        assert len(quick["attempts"]) == 1 + 3 + 1 < len(plain["attempts"])
    else:
        assert len(quick["attempts"]) <= len(plain["attempts"]) + 1


def test_a_stopped_attempt_says_so_where_attempts_are_listed():
    """The build's 'tried' lines and the guard table show a stopped attempt's figures as partial."""
    from toolchain.build import _tried
    from toolchain.errors import VerificationError
    from toolchain.quant_guard import Budget, guarded_quantize

    model, feeds = _branchy_cnn(), _feeds(24, 3)
    config = QuantizeConfig.for_target("x86-avx2")
    ranges = compute_ranges(model, feeds[:12], config)
    with pytest.raises(VerificationError) as refused:
        guarded_quantize(model, ranges, config, feeds[12:], Budget(min_cosine=0.99999, task="generic"),
                         refuse_hopeless=False)
    report = refused.value.report.to_dict() if hasattr(refused.value.report, "to_dict") else refused.value.report
    lines = _tried(report)
    stopped = [a["quality"]["of_samples"] is not None for a in report["attempts"]]
    assert any(stopped) and not stopped[0] and not stopped[-1]
    assert [("stopped after" in line and "of 12 samples: cannot pass" in line) for line in lines] == stopped
