"""PyTorch ingest with real torch and real ONNX Runtime on a tiny model saved in every supported format."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from toolchain import api
from toolchain.errors import ConversionError, InputFileError, UsageError, VerificationError
from toolchain.frontends import detect_format
from toolchain.frontends.base import ConvertOptions

torch = pytest.importorskip("torch")


def _run_onnx(path: Path, feed: dict) -> dict:
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner.from_path(path).run(feed)


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_serialized_programs_convert_within_tolerance(torch_models, tmp_path, kind):
    inputs = [] if kind == "export" else ["x:1x1x8x8"]
    result = api.convert(torch_models[kind], tmp_path / "m.onnx", inputs=inputs)
    assert result.framework == "torch"
    assert result.source_format == {"torchscript": "torchscript", "export": "torch-export"}[kind]
    worst = max(o.max_abs for r in result.parity for o in r.outputs)
    assert result.parity and worst < 1e-5
    assert min(o.cosine for r in result.parity for o in r.outputs) > 0.99999
    assert (tmp_path / "m.onnx").is_file()


def test_state_dict_with_class_from_file_and_kwargs(torch_models, tmp_path):
    result = api.convert(None, tmp_path / "m.onnx", model_class=f"{torch_models['class_file']}:TinyNet",
                         weights=torch_models["state_dict"], model_kwargs='{"channels": 4, "classes": 10}',
                         inputs=["x:1x1x8x8"])
    assert result.source_format == "state-dict"
    assert [o.name for o in result.outputs] == ["output"]
    assert max(o.max_abs for r in result.parity for o in r.outputs) < 1e-5


def test_state_dict_with_wrong_kwargs_names_the_mismatch(torch_models, tmp_path):
    with pytest.raises(InputFileError, match="weights do not match"):
        api.convert(None, tmp_path / "m.onnx", model_class=f"{torch_models['class_file']}:TinyNet",
                    weights=torch_models["state_dict"], model_kwargs={"channels": 8}, inputs=["x:1x1x8x8"])
    assert not (tmp_path / "m.onnx").exists()


def test_state_dict_without_class_is_explained(torch_models, tmp_path):
    with pytest.raises(UsageError, match="--model-class"):
        api.convert(torch_models["state_dict"], tmp_path / "m.onnx", inputs=["1x1x8x8"])


def test_pickled_model_refused_without_trust_and_loaded_with_it(torch_models, tmp_path):
    with pytest.raises(InputFileError, match="--trust-pickle"):
        api.convert(torch_models["pickled"], tmp_path / "m.onnx", inputs=["1x1x8x8"])
    import sys

    sys.path.insert(0, str(torch_models["class_file"].parent))
    try:
        result = api.convert(torch_models["pickled"], tmp_path / "m.onnx", inputs=["1x1x8x8"], trust_pickle=True)
    finally:
        sys.path.remove(str(torch_models["class_file"].parent))
    assert result.source_format == "pickled-module"


class _Payload:
    """Unpickling this calls Path.touch on the marker: proof that code would have run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_does_not_execute(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": _Payload(marker)}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(InputFileError, match="pickled Python object"):
        api.convert(evil, tmp_path / "m.onnx", inputs=["1x1x8x8"])
    assert not marker.exists()
    assert not (tmp_path / "m.onnx").exists()


def test_dynamic_batch_runs_at_other_batch_sizes(torch_models, tmp_path):
    result = api.convert(torch_models["torchscript"], tmp_path / "m.onnx", inputs=["x:1x1x8x8"], dynamic_batch=True)
    assert result.inputs[0].shape[0] == "batch" and result.outputs[0].shape[0] == "batch"
    assert any("batch 2" in r.inputs for r in result.parity)
    out = _run_onnx(tmp_path / "m.onnx", {"x": np.zeros((3, 1, 8, 8), np.float32)})
    assert out["output"].shape == (3, 10)


def test_symbolic_dim_in_input_spec_makes_that_axis_dynamic(torch_models, tmp_path):
    result = api.convert(torch_models["torchscript"], tmp_path / "m.onnx", inputs=["x:Nx1x8x8"])
    assert result.inputs[0].shape[0] == "N"


def test_multi_input_multi_output_torchscript(torch_models, tmp_path):
    result = api.convert(torch_models["two_heads"], tmp_path / "m.onnx", inputs=["x:2x6", "y:2x4"])
    assert [i.name for i in result.inputs] == ["x", "y"]
    assert [o.name for o in result.outputs] == ["output_0", "output_1"]
    assert [o.shape for o in result.outputs] == [(2, 3), (2, 2)]


def test_opset_and_target_default(torch_models, tmp_path):
    assert api.convert(torch_models["torchscript"], tmp_path / "a.onnx", inputs=["x:1x1x8x8"], opset=13).opset == 13
    nano = api.convert(torch_models["torchscript"], tmp_path / "b.onnx", inputs=["x:1x1x8x8"], target="jetson-nano")
    assert nano.opset == 13


def test_missing_input_shape_is_a_usage_error(torch_models, tmp_path):
    with pytest.raises(UsageError, match="--input"):
        api.convert(torch_models["torchscript"], tmp_path / "m.onnx")


def test_wrong_input_shape_is_reported_not_a_traceback(torch_models, tmp_path):
    with pytest.raises(UsageError, match="fails on inputs"):
        api.convert(torch_models["torchscript"], tmp_path / "m.onnx", inputs=["x:1x3x8x8"])


def test_pt2_refuses_shape_overrides(torch_models, tmp_path):
    with pytest.raises(UsageError, match="fixes its input shapes"):
        api.convert(torch_models["export"], tmp_path / "m.onnx", inputs=["x:2x1x8x8"])


def test_dynamo_exporter_on_a_module(torch_models, tmp_path):
    result = api.convert(None, tmp_path / "m.onnx", model_class=f"{torch_models['class_file']}:TinyNet",
                         weights=torch_models["state_dict"], inputs=["x:1x1x8x8"], exporter="dynamo", opset=18)
    assert "dynamo" in result.notes[0]
    assert max(o.max_abs for r in result.parity for o in r.outputs) < 1e-5


@pytest.mark.parametrize("cut", [0, 10, 200, -100])
def test_truncated_or_empty_files_are_input_errors(torch_models, tmp_path, cut):
    data = torch_models["torchscript"].read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(InputFileError):
        api.convert(bad, tmp_path / "m.onnx", inputs=["x:1x1x8x8"])
    assert not (tmp_path / "m.onnx").exists()


def test_zip_that_is_not_pytorch(tmp_path):
    bogus = tmp_path / "notes.pt"
    with zipfile.ZipFile(bogus, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(InputFileError, match="not a PyTorch file"):
        api.convert(bogus, tmp_path / "m.onnx", inputs=["1x1x8x8"])


def test_bad_model_class_references(torch_models, tmp_path):
    for reference, message in [("nocolon", "expected package.module:Class"),
                               ("no_such_module_xyz:Net", "cannot import"),
                               (f"{torch_models['class_file']}:Missing", "has no class")]:
        with pytest.raises(UsageError, match=message):
            api.convert(None, tmp_path / "m.onnx", model_class=reference, weights=torch_models["state_dict"],
                        inputs=["1x1x8x8"])


def test_detect_format_by_extension_and_content(torch_models, tmp_path):
    options = ConvertOptions()
    assert detect_format(torch_models["export"], options) == "torch-export"
    renamed = tmp_path / "model.weird"
    renamed.write_bytes(torch_models["torchscript"].read_bytes())
    assert detect_format(renamed, options) == "torch"
    unknown = tmp_path / "model.xyz"
    unknown.write_bytes(b"not a model at all")
    with pytest.raises(InputFileError, match="cannot tell"):
        detect_format(unknown, options)


def test_export_failure_is_a_conversion_error(tmp_path):
    source = tmp_path / "unexportable.py"
    source.write_text("import torch\n\nclass Net(torch.nn.Module):\n"
                      "    def forward(self, x):\n        return torch.linalg.eigvals(x).real\n")
    weights = tmp_path / "empty.pth"
    torch.save({}, weights)
    with pytest.raises(ConversionError, match="could not export"):
        api.convert(None, tmp_path / "m.onnx", model_class=f"{source}:Net", weights=weights, inputs=["x:1x3x3"])


def test_failed_verification_names_output_and_writes_nothing(torch_models, tmp_path):
    with pytest.raises(VerificationError) as info:
        api.convert(torch_models["torchscript"], tmp_path / "m.onnx", inputs=["x:1x1x8x8"], atol=0, rtol=0)
    message = str(info.value)
    assert "output: max abs" in message and "cosine" in message and "--atol" in message
    assert list(tmp_path.iterdir()) == []
