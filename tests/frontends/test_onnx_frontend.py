"""ONNX passthrough: checker, overrides, dynamic batch, opset conversion, external data and its safety."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import make_onnx_model
from toolchain import api
from toolchain.errors import ConversionError, InputFileError, UsageError
from toolchain.onnx_io import load_onnx


def test_passthrough_keeps_model_and_producer(tiny_onnx, tmp_path):
    result = api.convert(tiny_onnx, tmp_path / "out.onnx")
    assert result.source_format == "onnx"
    assert "unchanged" in result.notes[0]
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert out.producer_name == "edgekiln-tests"
    assert result.parity[0].outputs[0].max_abs == 0.0


def test_symbolic_batch_can_be_fixed_by_override(tmp_path):
    source = tmp_path / "dyn.onnx"
    onnx.save(make_onnx_model(batch="N"), str(source))
    result = api.convert(source, tmp_path / "out.onnx", inputs=["x:4x1x8x8"])
    assert result.inputs[0].shape == (4, 1, 8, 8)
    assert result.outputs[0].shape == (4, 10)


def test_dynamic_batch_on_fixed_model_is_verified_at_batch_2(tiny_onnx, tmp_path):
    result = api.convert(tiny_onnx, tmp_path / "out.onnx", dynamic_batch=True)
    assert result.inputs[0].shape[0] == "batch"
    labels = [r.inputs for r in result.parity]
    assert "random inputs at batch 2" in labels
    assert all(o.max_abs < 1e-6 for r in result.parity for o in r.outputs)


@pytest.mark.parametrize("spec, message", [
    ("x:2x1x8x8", "fixes it to 1"),
    ("x:1x8x8", "rank 3"),
    ("nope:1x1x8x8", "inputs are: x"),
    ("x:1x1x8x8:int64", "cannot be changed"),
])
def test_bad_overrides_are_explained(tiny_onnx, tmp_path, spec, message):
    with pytest.raises(UsageError, match=message):
        api.convert(tiny_onnx, tmp_path / "out.onnx", inputs=[spec])
    assert not (tmp_path / "out.onnx").exists()


def test_opset_upgrade_is_verified(tiny_onnx, tmp_path):
    result = api.convert(tiny_onnx, tmp_path / "out.onnx", opset=19)
    assert result.opset == 19
    assert any("opset converted" in n for n in result.notes)
    assert result.parity[0].outputs[0].max_abs < 1e-6


def test_opset_downgrade_is_verified(tiny_onnx, tmp_path):
    """onnx's converter has no Relu 14->13 adapter; toolchain.opset relabels it and ORT checks the numbers."""
    result = api.convert(tiny_onnx, tmp_path / "out.onnx", opset=13)
    assert result.opset == 13 and result.parity[0].outputs[0].max_abs < 1e-6


def test_impossible_opset_downgrade_is_a_clear_conversion_error(tmp_path):
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"])], "g",  # Gelu only exists from opset 20
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "gelu.onnx"))
    with pytest.raises(ConversionError, match="from opset 20 to 13, stopped at .*Gelu does not exist before opset 20"):
        api.convert(tmp_path / "gelu.onnx", tmp_path / "out.onnx", opset=13)
    assert not (tmp_path / "out.onnx").exists()


def test_external_data_model_round_trips(tmp_path):
    source = tmp_path / "ext" / "model.onnx"
    source.parent.mkdir()
    onnx.save_model(make_onnx_model(), str(source), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    result = api.convert(source, tmp_path / "out.onnx")
    assert result.parity[0].passed
    loaded = load_onnx(tmp_path / "out.onnx")
    assert len(loaded.graph.initializer) == 4


def test_missing_external_data_is_an_input_error(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save_model(make_onnx_model(), str(source), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(InputFileError, match="missing"):
        api.convert(source, tmp_path / "out.onnx")


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model = make_onnx_model()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.zeros(64, np.float32).tobytes())
    folder = tmp_path / "models"
    folder.mkdir()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "144")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InputFileError, match="outside the model's folder"):
        api.convert(path, tmp_path / "out.onnx")


def test_dangling_input_fails_the_checker(tmp_path):
    model = make_onnx_model()
    model.graph.node[1].input[0] = "does_not_exist"
    path = tmp_path / "dangling.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InputFileError, match="ONNX checker"):
        api.convert(path, tmp_path / "out.onnx")


@pytest.mark.parametrize("content", [b"", b"\x00" * 5, b"random bytes that are not protobuf \xff\xfe"])
def test_garbage_onnx_files(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(InputFileError):
        api.convert(path, tmp_path / "out.onnx")


def test_truncated_onnx(tiny_onnx, tmp_path):
    data = tiny_onnx.read_bytes()
    for cut in (len(data) // 3, len(data) - 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(InputFileError):
            api.convert(path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
