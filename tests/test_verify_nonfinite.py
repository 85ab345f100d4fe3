"""Verification treats NaN/Inf and input-blind outputs as failures (issue #17, defect 2).

Real ONNX Runtime sessions of models built with onnx.helper; NaN compared with NaN used to "agree"
(max abs 0, cosine 1.000000, ok).
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import make_onnx_model, with_weight, write_images
from toolchain.errors import VerificationError
from toolchain.onnx_io import graph_inputs
from toolchain.runtime import OnnxRuntimeRunner
from toolchain.verify import VerifyOptions, verify_callables


def _runner(value: float | None = None, weight: str = "fc_b", scale: float = 1.0) -> OnnxRuntimeRunner:
    return OnnxRuntimeRunner.from_model(with_weight(make_onnx_model(), weight, value, scale))


def _verify(reference: OnnxRuntimeRunner, candidate: OnnxRuntimeRunner, options: VerifyOptions = VerifyOptions(),
            lossy: bool = False) -> list:
    return verify_callables(reference.run, candidate.run, graph_inputs(make_onnx_model()), options,
                            reference="FP32 model", candidate="candidate model", lossy=lossy)


@pytest.mark.parametrize("lossy", [False, True])
def test_nan_in_the_candidate_is_its_own_failure(lossy):
    with pytest.raises(VerificationError) as caught:
        _verify(_runner(), _runner(np.nan), lossy=lossy)
    message = str(caught.value)
    assert "candidate model gives non-finite outputs on 2 random inputs" in message
    assert "output 'y' has 2 NaN values" in message


def test_nan_on_both_sides_is_an_error_in_the_source_model():
    with pytest.raises(VerificationError) as caught:
        _verify(_runner(np.nan), _runner(np.nan))
    message = str(caught.value)
    assert "FP32 model itself gives non-finite outputs" in message and "output 'y' has 2 NaN values" in message
    assert "the source model is broken" in message


def test_inf_on_both_sides_fails_with_the_count():
    with pytest.raises(VerificationError) as caught:
        _verify(_runner(np.inf), _runner(np.inf))
    assert "output 'y' has 2 Inf values" in str(caught.value)


def test_finite_models_still_pass():
    reports = _verify(_runner(), _runner())
    assert all(r.passed for r in reports) and reports[0].outputs[0].cosine == pytest.approx(1.0)


def test_an_output_that_ignores_real_images_fails(tmp_path):
    dead = _runner(weight="w", scale=0.0)  # Conv weights zero: y is Gemm(bias) whatever the image
    # The folder's name is printed as given, braces too (labels are not format strings).
    options = VerifyOptions(calib=write_images(tmp_path / "images {0}", count=8), preprocess="gray01")
    with pytest.raises(VerificationError) as caught:
        _verify(dead, dead, options)
    message = str(caught.value)
    assert "gives the same output 'y' for all 8 images from images {0}" in message
    assert "ignores its input" in message


def test_identical_images_may_give_identical_outputs(tmp_path):
    """Twenty copies of one picture prove nothing about the model: no constant-output failure."""
    folder = write_images(tmp_path / "one", count=1)
    for i in range(1, 8):
        (folder / f"copy_{i}.png").write_bytes((folder / "img_0.png").read_bytes())
    reports = _verify(_runner(), _runner(), VerifyOptions(calib=folder, preprocess="gray01"))
    assert all(r.passed for r in reports)


def test_a_candidate_that_goes_constant_on_real_images_fails(tmp_path):
    options = VerifyOptions(calib=write_images(tmp_path / "images", count=8), preprocess="gray01", min_cosine=0.0)
    with pytest.raises(VerificationError) as caught:
        _verify(_runner(), _runner(weight="w", scale=0.0), options, lossy=True)
    assert "gives the same output 'y' for all 8 images" in str(caught.value)


def test_compare_refuses_non_finite_outputs(tmp_path):
    from toolchain.compare import diff_outputs

    good = {"y": np.ones((2, 10), np.float32)}
    bad = {"y": np.full((2, 10), np.nan, np.float32)}
    with pytest.raises(VerificationError, match="output 'y' has 20 NaN values"):
        diff_outputs(good, bad, ("a.onnx", "b.onnx"))
    with pytest.raises(VerificationError, match="a.onnx itself"):
        diff_outputs(bad, good, ("a.onnx", "b.onnx"))
