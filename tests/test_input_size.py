"""Oversized inputs are refused before anything is allocated (issue #17, defect 4)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import assert_one_line_error, run_main
from toolchain.errors import UsageError
from toolchain.feeds import MAX_INPUT_BYTES, random_feed
from toolchain.onnx_io import TensorInfo


def test_a_huge_shape_is_refused_naming_the_input_and_its_size():
    with pytest.raises(UsageError) as refused:
        random_feed([TensorInfo("image", (1, 3, 100000, 100000), np.dtype("float32"))])
    assert "input 'image' of shape 1x3x100000x100000 (float32) would take 111.8 GiB" in refused.value.one_line()


def test_dims_whose_product_overflows_int64_are_still_refused():
    with pytest.raises(UsageError):
        random_feed([TensorInfo("x", (2**40, 2**40), np.dtype("float32"))])


def test_an_input_just_under_the_limit_is_made_in_its_own_dtype():
    side = int((MAX_INPUT_BYTES // 2) ** 0.5) // 2  # a float16 tensor well under the limit, over 64 MiB as float64
    feed = random_feed([TensorInfo("x", (1, 1, side, side), np.dtype("float16"))])
    assert feed["x"].dtype == np.float16 and np.isfinite(feed["x"]).all()


def test_small_inputs_keep_their_recorded_values():
    # Earlier benchmark and test records were made with these exact draws.
    feed = random_feed([TensorInfo("x", (1, 4), np.dtype("float32"))], seed=0)
    expected = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    np.testing.assert_array_equal(feed["x"], expected)


def test_convert_with_a_declared_huge_input_is_one_line(tmp_path, capsys):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])])
    model = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(model))
    out = tmp_path / "out.onnx"
    code, _, err = run_main(["convert", str(model), "-o", str(out), "--input", "x:1x3x100000x100000"], capsys)
    assert_one_line_error(code, err, "input 'x' of shape 1x3x100000x100000", "GiB")
    assert code == 2 and not out.exists()


def _forged_npy(path, shape=(1, 3, 100000, 100000)):
    from numpy.lib import format as npy_format

    with open(path, "wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        handle.write(bytes(16))
    return path


def test_run_refuses_a_npy_whose_header_lies_about_its_shape(tmp_path, capsys):
    from helpers import make_onnx_model

    model = tmp_path / "m.onnx"
    onnx.save(make_onnx_model(), str(model))
    code, _, err = run_main(["compile", str(model), "-o", str(tmp_path / "art"), "--backend", "onnxruntime"], capsys)
    assert code == 0, err
    forged = _forged_npy(tmp_path / "forged.npy")
    code, _, err = run_main(["run", str(tmp_path / "art"), "--input", str(forged)], capsys)
    assert_one_line_error(code, err, "declares an array of shape (1, 3, 100000, 100000)", "holds only 16 bytes")
    assert "MemoryError" not in err


def test_a_forged_npy_sample_in_a_calibration_folder_is_skipped_by_name(tmp_path, capsys):
    """Like an unreadable image: skipped, named with the reason, never allocated (was: MemoryError)."""
    from helpers import make_onnx_model

    model = tmp_path / "m.onnx"
    onnx.save(make_onnx_model(), str(model))
    samples = tmp_path / "samples"
    samples.mkdir()
    for i in range(30):
        np.save(samples / f"s{i:02}.npy", np.random.default_rng(i).standard_normal((1, 8, 8)).astype(np.float32))
    _forged_npy(samples / "s15.npy", shape=(1, 80000, 80000))
    out = tmp_path / "q.onnx"
    code, printed, err = run_main(["calibrate", str(model), "--calib", str(samples), "-o", str(out), "--no-guard",
                                   "--no-cache"], capsys)
    assert code == 0, err
    assert "skipped 1: s15.npy" in printed and "holds only 16 bytes of data" in printed
    assert out.exists()
