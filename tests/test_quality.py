"""The metrics that compare a lossy model with FP32 (toolchain.quality, the guard's compare_quality): each
must fail a model a user would call broken."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from toolchain.errors import VerificationError


def test_nan_outputs_fail_the_comparison_and_a_nan_reference_is_an_error():
    from toolchain.quant_guard import Budget, compare_quality

    ref = {"y": np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)}
    bad = {"y": np.full((8, 10), np.nan, np.float32)}
    quality = compare_quality(ref, bad)
    assert quality.misses(Budget()) and "non-finite" in quality.misses(Budget())[0]
    with pytest.raises(VerificationError, match="FP32 model itself gives NaN"):
        compare_quality(bad, ref)


def test_mixed_scale_outputs_are_compared_per_channel():
    """A YOLO-style head: boxes in pixels beside scores in 0..1. Zeroing the scores must not keep cosine ~1."""
    from toolchain.quality import guess_task, sample_cosines

    rng = np.random.default_rng(1)
    head = np.concatenate([rng.uniform(0, 640, (4, 4, 2100)), rng.uniform(0, 1, (4, 18, 2100))], axis=1)
    broken = head.copy()
    broken[:, 4:] = 0.0
    raw = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in
           zip(head.reshape(4, -1), broken.reshape(4, -1))]
    assert min(raw) > 0.95  # what fooled the old check
    assert sample_cosines(head, broken).max() < 0.5
    assert guess_task({"output0": head}) == "detect"


def test_the_drop_budget_means_the_same_for_40_and_400_samples():
    from toolchain.quality import rate_lower_bound, smallest_refused_rate

    # One flip in 40 is 2.5 points, but not evidence of a true drop over 1 point; 3 in 40 is.
    assert rate_lower_bound(1, 40) < 0.01 < rate_lower_bound(3, 40)
    assert rate_lower_bound(4, 400) < 0.01 < rate_lower_bound(10, 400)
    assert abs(smallest_refused_rate(400, 0.01) - smallest_refused_rate(4000, 0.01)) < 0.01


def _embeddings_with_diverged(samples: int, diverged: int, diverged_cosine: float, seed: int = 5):
    """FP32 embeddings and a candidate equal to them except ``diverged`` samples turned to ``diverged_cosine``."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((samples, 64))
    cand = ref.copy()
    for i in range(diverged):
        unit = ref[i] / np.linalg.norm(ref[i])
        other = rng.standard_normal(64)
        other -= (other @ unit) * unit
        other /= np.linalg.norm(other)
        cand[i] = np.linalg.norm(ref[i]) * (diverged_cosine * unit + np.sqrt(1 - diverged_cosine ** 2) * other)
    return {"emb": ref}, {"emb": cand}


@pytest.mark.parametrize("samples, allowed, refused", [(40, 1, 3), (400, 4, 10)])
def test_the_cosine_budget_counts_diverged_samples_the_same_way_for_40_and_400(samples, allowed, refused):
    """The lowest cosine of a set only falls as samples are added, so it cannot be the budget: samples under
    --min-cosine are counted and their share judged like top-1 flips; one broken sample fails on its own."""
    from toolchain.quant_guard import Budget, compare_quality

    budget = Budget(task="generic")
    passing = compare_quality(*_embeddings_with_diverged(samples, allowed, 0.97), task="generic")
    assert passing.diverged_under(0.99) == allowed and passing.min_cosine < 0.99
    assert passing.misses(budget) == []
    failing = compare_quality(*_embeddings_with_diverged(samples, refused, 0.97), task="generic")
    assert failing.misses(budget) and f"{refused} of {samples} samples have a cosine under 0.99" in failing.misses(budget)[0]
    broken = compare_quality(*_embeddings_with_diverged(samples, 1, 0.5), task="generic")
    assert broken.misses(budget) and "a broken output" in broken.misses(budget)[0]
    # A stricter floor counts more samples: every sample is at cosine 1 but for the diverged ones.
    assert compare_quality(*_embeddings_with_diverged(samples, allowed, 0.9995), task="generic").misses(
        Budget(min_cosine=0.9999, task="generic")) == []


def test_only_a_miss_far_over_the_budget_is_hopeless():
    """The guard refuses without walking its fallback steps only when its largest step misses by far: a near
    miss (noise between neighbouring steps) walks the steps, and a wider budget widens what counts as far."""
    from toolchain.quant_guard import Budget, compare_quality

    budget = Budget(task="generic")
    near = compare_quality(*_embeddings_with_diverged(40, 4, 0.97), task="generic")
    assert near.misses(budget) and not near.hopeless(budget)
    far = compare_quality(*_embeddings_with_diverged(40, 20, 0.97), task="generic")
    assert far.misses(budget) and far.hopeless(budget)
    assert not far.hopeless(Budget(max_drop=5.0, task="generic"))  # 50 points of slack before "far"
    nan = compare_quality({"y": np.ones((4, 3))}, {"y": np.full((4, 3), np.nan)}, task="generic")
    assert nan.hopeless(budget)
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((40, 10))
    flipped = logits.copy()
    flipped[:20] = -logits[:20]  # half the top-1 decisions change: hopeless by the drop alone
    quality = compare_quality({"y": logits}, {"y": flipped}, task="classify")
    assert quality.drop_bound_points > 10 and quality.hopeless(Budget(min_cosine=-1.0, task="classify"))


def test_a_guard_record_from_before_per_sample_cosines_is_judged_by_its_lowest():
    from toolchain.quant_guard import Budget, Quality

    old = Quality.from_dict({"samples": 40, "min_cosine": 0.98, "max_abs": {}, "task": "generic"})
    assert old.misses(Budget(task="generic"))
    assert Quality.from_dict(old.to_dict()).misses(Budget(task="generic")) == old.misses(Budget(task="generic"))


def test_embeddings_are_not_judged_by_top_1():
    from toolchain.quality import guess_task

    rng = np.random.default_rng(4)
    embeddings = rng.standard_normal((8, 128))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert guess_task({"emb": embeddings}) == "generic"
    assert guess_task({"logits": rng.standard_normal((8, 10)) * 3}) == "classify"
    softmax = np.exp(rng.standard_normal((8, 10)))
    assert guess_task({"p": softmax / softmax.sum(1, keepdims=True)}) == "classify"


def _yolo_head(boxes: list[tuple[float, float, float, float, int, float]], anchors: int = 400,
               classes: int = 3) -> np.ndarray:
    """A [1, 4 + classes, anchors] head: the given (cx, cy, w, h, class, score) rows, every other anchor near 0."""
    head = np.zeros((1, 4 + classes, anchors), np.float32)
    head[0, :4] = 10.0
    head[0, 4:] = 0.01
    for index, (cx, cy, w, h, cls, score) in enumerate(boxes):
        head[0, :4, index] = (cx, cy, w, h)
        head[0, 4 + cls, index] = score
    return head


def test_detections_kept_counts_lost_and_moved_objects_not_threshold_jitter():
    from toolchain.quality import match_detections, yolo_layout

    reference = _yolo_head([(50, 50, 20, 20, 0, 0.9), (150, 80, 30, 40, 1, 0.6), (250, 250, 40, 40, 2, 0.26)])
    same_but_jitter = _yolo_head([(51, 50, 20, 20, 0, 0.85), (150, 81, 30, 40, 1, 0.55), (250, 250, 40, 40, 2, 0.24)])
    lost_and_moved = _yolo_head([(50, 50, 20, 20, 0, 0.9), (190, 80, 30, 40, 1, 0.6)])  # one gone, one moved away
    layout = yolo_layout({"out": reference})
    assert layout is not None and layout.classes == 3
    kept = match_detections({"out": reference}, {"out": same_but_jitter}, layout)
    assert (kept.reference, kept.matched) == (3, 3)  # 0.26 -> 0.24 at the 0.25 threshold is not a lost object
    broken = match_detections({"out": reference}, {"out": lost_and_moved}, layout)
    assert broken.matched == 1 and broken.kept == 1 / 3


def test_a_flip_between_near_tied_classes_is_a_tie_and_a_real_flip_is_not():
    from toolchain.quant_guard import compare_quality

    reference = {"y": np.array([[5.0, 4.99, 0.0, -1.0], [5.0, 2.0, 0.0, -1.0]], np.float32)}
    candidate = {"y": np.array([[4.98, 4.985, 0.0, -1.0], [2.0, 5.0, 0.0, -1.0]], np.float32)}
    quality = compare_quality(reference, candidate, task="classify")
    assert quality.ties == 1 and quality.lost == 1 and quality.top1_agreement == 0.5


def test_a_detector_head_keeps_its_post_processing_and_mixed_scale_concat_float():
    """Boxes in pixels concatenated with sigmoid scores: one 8-bit scale would leave the scores a few levels."""
    from onnx import helper, numpy_helper

    from backends.onnxruntime.runner import OnnxRuntimeRunner
    from toolchain.passes.quantize import QuantizeConfig, compute_ranges, float_by_rule, quantize_static

    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "wb"),
             numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "ws"),
             numpy_helper.from_array(np.array(300.0, np.float32), "stride")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "wb"], ["b"], name="box_conv"),
         helper.make_node("Conv", ["x", "ws"], ["s"], name="score_conv"),
         helper.make_node("Mul", ["b", "stride"], ["boxes"], name="decode"),
         helper.make_node("Sigmoid", ["s"], ["scores"], name="sigmoid"),
         helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1, name="head")], "head",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = [{"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32)} for _ in range(16)]
    config = QuantizeConfig.for_target("x86-vnni")
    ranges = compute_ranges(model, feeds, config)
    assert set(float_by_rule(model, ranges)) == {"decode", "sigmoid", "head"}
    quantized = quantize_static(model, ranges, config)
    fp32, int8 = OnnxRuntimeRunner.from_model(model), OnnxRuntimeRunner.from_model(quantized, integer_reference=True)
    scores_error = max(float(np.abs(fp32.run(f)["y"][:, 4:] - int8.run(f)["y"][:, 4:]).max()) for f in feeds)
    assert scores_error < 0.05  # one scale over 0..~1000 would be steps of ~4: every score 0 or ~4


def test_the_declared_task_reaches_the_guard_and_a_wrong_one_is_one_line(tmp_path, capsys):
    from helpers import assert_one_line_error, make_onnx_model, run_main

    onnx.save(make_onnx_model(), str(tmp_path / "m.onnx"))
    samples = tmp_path / "s.npy"
    np.save(samples, np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32))
    common = ["calibrate", str(tmp_path / "m.onnx"), "--calib", str(samples), "--calib-size", "20",
              "--holdout", "20", "--no-cache"]
    code, out, err = run_main([*common, "--task", "generic", "-o", str(tmp_path / "q.onnx")], capsys)
    assert code == 0, err
    assert "accuracy guard metric: generic (as declared" in out + err
    code, _, err = run_main([*common, "--task", "detect", "-o", str(tmp_path / "d.onnx")], capsys)
    assert_one_line_error(code, err, "--task detect needs a YOLO-style output")
    assert not (tmp_path / "d.onnx").exists()


def _two_class_race(samples: int, lead: float, flipped: int) -> tuple[dict, dict]:
    """Logits where class 0 leads class 1 by ``lead`` (the other 8 far behind), and a candidate whose first
    ``flipped`` samples choose class 1 instead: the same top-1 changes, as sure or as unsure as ``lead`` says."""
    rng = np.random.default_rng(5)
    reference = rng.normal(-6.0, 0.1, (samples, 10))
    reference[:, 0], reference[:, 1] = lead, 0.0
    candidate = reference.copy()
    candidate[:flipped, 1] = lead + 0.01
    return {"y": reference}, {"y": candidate}


def test_a_top1_change_costs_the_accuracy_fp32_was_sure_of():
    """Issue #42: without labels, 8 top-1 changes in 40 samples between two classes the FP32 model holds
    nearly equally likely cost next to nothing, and the same 8 changes away from a class it is sure of cost
    8 points of expected accuracy: the first passes a 1-point budget, the second is refused by it."""
    from toolchain.quant_guard import Budget, compare_quality

    budget = Budget(min_cosine=-1.0, task="classify")  # the top-1 rule alone
    unsure = compare_quality(*_two_class_race(40, 0.1, 8), task="classify")  # 52.5% vs 47.5%, not a tie
    sure = compare_quality(*_two_class_race(40, 6.0, 8), task="classify")
    assert unsure.top1_agreement == sure.top1_agreement == 0.8 and unsure.lost == sure.lost == 8
    assert 0.9 < unsure.drop_points < 1.1 and not unsure.misses(budget)
    assert 19 < sure.drop_points < 20 and sure.drop_bound_points > 9
    assert "top-1 accuracy lost by FP32's own probabilities (8 top-1 changes of 40)" in sure.misses(budget)[0]
    assert compare_quality(*_two_class_race(40, 6.0, 0), task="classify").drop_points == 0.0


def test_class_probabilities_read_softmax_outputs_as_they_are_and_logits_through_a_softmax():
    from toolchain.quality import class_probabilities

    logits = np.array([[2.0, 1.0, -1.0], [0.0, 0.0, 3.0]])
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.allclose(class_probabilities(logits), softmax)
    assert np.allclose(class_probabilities(softmax), softmax)  # not flattened by a second softmax
    assert np.allclose(class_probabilities(np.array([[0.9, 0.3]])), [[0.75, 0.25]])  # sigmoid scores, scaled
