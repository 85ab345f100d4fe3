"""edgekiln's post-training passes on a real pretrained model: EfficientNet-Lite0 on ordinary held-out photos.

Every layer stays INT8 (no guard, so no float fallback), on photos calibration never saw. What the passes
do on every x86 CPU: they remove at least 30% of the INT8 model's remaining cosine error and raise its
worst image's cosine. Where plain MinMax misses the issue's agreement bar (the 7-bit-weight scheme of CPUs
without VNNI: 76.9% of 39 images), the passes must reach it (87.2% measured). Where MinMax already meets it
(VNNI, 8-bit weights: 92.3%), they did not help agreement: 84.6%, three images fewer, for a better cosine
(0.9919 -> 0.9951), one reason the passes are opt-in; the test records that figure rather than asserting it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo import metrics
from zoo.models import MODELS, spec_for
from zoo.test_targets import MIN_AGREEMENT, MIN_MEAN_COSINE

EFFNET = next(m for m in MODELS if m.key == "effnet-lite0")


def _outputs(path: Path, batch: np.ndarray) -> np.ndarray:
    return metrics.OnnxModel(path)(batch)[0]


def test_effnet_all_int8_passes_cut_the_cosine_error_and_reach_the_bar_where_minmax_misses_it(zoo, tmp_path):
    from toolchain import api
    from toolchain.passes.calibrate import CalibrationOptions, calibrate
    from toolchain.passes.quantize import QuantizeConfig, int8_weighted_nodes, quantizable_nodes
    from toolchain.onnx_io import load_onnx

    build = zoo.build(EFFNET, "x86")
    artifact = build.artifact()
    assert artifact is not None, build.result.describe()
    fp32 = artifact / "model.onnx"
    spec = spec_for(EFFNET)
    calib = zoo.calib_folder()
    count = len(list(calib.iterdir()))
    with_passes = tmp_path / "passes.onnx"
    result = api.calibrate(fp32, with_passes, calib=calib, target="x86", preprocess=spec,
                           calib_size=count, holdout=0, guard=False, cache_dir=zoo.cache,
                           equalize=True, range_search="mse", bias_correction=True)
    assert any(note.startswith("bias correction:") for note in result.notes)
    plain = tmp_path / "plain.onnx"
    config = QuantizeConfig.for_target("x86", equalize=False, range_search="off", bias_correction=False)
    calibrate(fp32, plain, CalibrationOptions(calib, count=count, holdout=0, preprocess=spec), config,
              budget=None)
    quantized = load_onnx(with_passes)
    assert len(int8_weighted_nodes(quantized)) == len(quantizable_nodes(load_onnx(fp32)))  # nothing in float
    held = metrics.preprocess(spec, zoo.heldout_files())
    reference = _outputs(fp32, held)
    ours = metrics.class_agreement(reference, _outputs(with_passes, held))
    theirs = metrics.class_agreement(reference, _outputs(plain, held))
    zoo.record("effnet-lite0", "ptq x86 all-INT8", {"with passes": ours, "without": theirs})
    assert ours.cosine_mean >= MIN_MEAN_COSINE, ours
    assert 1 - ours.cosine_mean <= 0.7 * (1 - theirs.cosine_mean) and ours.cosine_min > theirs.cosine_min, \
        (ours, theirs)
    if theirs.agreement < MIN_AGREEMENT:
        assert ours.agreement >= MIN_AGREEMENT, (ours, theirs)



def test_effnet_guarded_with_the_passes_is_delivered_nearly_all_int8_and_judged_on_what_is_written(zoo, tmp_path):
    """Issue #42: with every pass on, the guard refused the INT8 model that tracks FP32 best on unseen photos,
    or kept 24 layers in float for it, because it counted every top-1 change on 30-50 held-out samples as a
    point of accuracy lost. Judged by the accuracy FP32's own probabilities expect it to lose, it is delivered
    with at most 2 layers in float and holds the bar on photos no pass and no guard decision saw; and the
    guard's figures are those of the file written, run again on the same held-out samples."""
    from toolchain import api
    from toolchain.onnx_io import load_onnx
    from toolchain.passes.calibrate import CalibrationOptions, load_calibration_set
    from toolchain.passes.quantize import QuantizeConfig, named_copy
    from toolchain.quant_guard import compare_quality
    from toolchain.runtime import OnnxRuntimeRunner
    from toolchain.sensitivity import concatenated

    build = zoo.build(EFFNET, "x86")
    artifact = build.artifact()
    assert artifact is not None, build.result.describe()
    fp32, spec, calib = artifact / "model.onnx", spec_for(EFFNET), zoo.calib_folder()
    written = tmp_path / "guarded.onnx"
    result = api.calibrate(fp32, written, calib=calib, target="x86", preprocess=spec, cache_dir=zoo.cache,
                           equalize=True, range_search="mse", bias_correction=True, weight_rounding="learned")
    final = result.guard.final
    assert result.guard.passed and len(final.kept_float) <= 2, [(len(a.kept_float), a.quality.misses(
        result.guard.budget)) for a in result.guard.attempts]
    _, samples = load_calibration_set(named_copy(load_onnx(fp32)), CalibrationOptions(calib, preprocess=spec))
    name = load_onnx(fp32).graph.input[0].name
    feeds = list(samples.feeds(name, "holdout", batch=1))
    exact = QuantizeConfig.for_target("x86").guard_runtime == "reference"  # as the guard ran it on this CPU
    ours = OnnxRuntimeRunner.from_model(load_onnx(written), integer_reference=exact)
    again = compare_quality(concatenated([OnnxRuntimeRunner.from_model(load_onnx(fp32)).run(f) for f in feeds]),
                            concatenated([ours.run(f) for f in feeds]))
    assert again.samples == final.quality.samples and again.lost == final.quality.lost
    assert np.allclose(again.cosines, final.quality.cosines, atol=1e-4)
    held = metrics.preprocess(spec, zoo.heldout_files())
    unseen = metrics.class_agreement(_outputs(fp32, held), _outputs(written, held))
    zoo.record("effnet-lite0", "ptq x86 guarded with passes", {"kept_float": len(final.kept_float), "unseen": unseen})
    assert unseen.agreement >= MIN_AGREEMENT and unseen.cosine_mean >= MIN_MEAN_COSINE, unseen
