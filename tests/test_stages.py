"""optimize / compile / run / bench / eval on real ONNX Runtime, and their output guarantees."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from helpers import files_in, make_onnx_model, write_images
from toolchain import api
from toolchain.artifact import Artifact
from toolchain.errors import InputFileError, OutputError, UsageError, VerificationError


def _bn_model(tmp_path):
    """Conv followed by BatchNormalization: something for the simplifier to fold."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 1, 3, 3)), "scale": rng.uniform(0.5, 2, 4), "bias": rng.standard_normal(4),
             "mean": rng.standard_normal(4), "var": rng.uniform(0.5, 2, 4)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"])],
        "bn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "bn.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("engine", ["onnxsim", "onnxslim"])
def test_simplify_folds_batchnorm_and_verifies(tmp_path, engine):
    result = api.optimize(_bn_model(tmp_path), tmp_path / "out.onnx", simplify=True, simplify_engine=engine)
    report = result.passes[0]
    assert report.details["engine"] == engine
    assert report.before.nodes == 2 and report.after.nodes == 1
    assert "BatchNormalization" not in report.after.op_counts
    assert result.parity[0].outputs[0].max_abs < 1e-5


def test_optimize_without_a_pass_is_a_usage_error(tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="nothing to do"):
        api.optimize(tiny_onnx, tmp_path / "out.onnx")


def test_compile_writes_artifact_with_manifest(tiny_onnx, tmp_path):
    result = api.compile(tiny_onnx, tmp_path / "art", threads=1)
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime"
    assert manifest["source"]["sha256"] and manifest["sdk"]["onnxruntime"]
    assert manifest["runtime_options"] == {"graph_optimization": "all", "threads": 1}
    assert manifest["metrics"]["verify"][0]["passed"]
    assert result.artifact.model_path.is_file()
    assert files_in(tmp_path) == ["art", "art/manifest.json", "art/model.onnx", "tiny.onnx"]


def test_compile_refuses_precision_the_backend_lacks(tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="does not support precision 'int4'"):
        api.compile(tiny_onnx, tmp_path / "art", precision="int4")
    assert not (tmp_path / "art").exists()


def test_compile_refuses_to_replace_a_foreign_folder(tiny_onnx, tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(OutputError, match="refusing to replace"):
        api.compile(tiny_onnx, precious)
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_recompile_replaces_previous_artifact(tiny_onnx, tmp_path):
    api.compile(tiny_onnx, tmp_path / "art")
    api.compile(tiny_onnx, tmp_path / "art", threads=2)
    assert Artifact.open(tmp_path / "art").runtime_options["threads"] == 2
    assert files_in(tmp_path) == ["art", "art/manifest.json", "art/model.onnx", "tiny.onnx"]


def test_verification_error_names_every_failing_output():
    from toolchain.verify import compare

    ref = [{"a": np.ones(4, np.float32), "b": np.zeros(3, np.float32)}]
    cand = [{"a": np.ones(4, np.float32) * 1.5, "b": np.ones(3, np.float32)}]
    report = compare(ref, cand, reference="r", candidate="c", inputs="test")
    with pytest.raises(VerificationError) as info:
        report.raise_if_failed()
    assert "a: max abs 0.5" in str(info.value) and "b: max abs 1" in str(info.value)


def test_run_with_npy_and_image_and_save(tiny_onnx, tmp_path):
    api.compile(tiny_onnx, tmp_path / "art")
    array = tmp_path / "x.npy"
    np.save(array, np.ones((1, 1, 8, 8), np.float32))
    _, outputs = api.run(tmp_path / "art", [str(array)])
    assert outputs["y"].shape == (1, 10)
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(image)
    _, from_image = api.run(tmp_path / "art", [f"x={image}"])
    np.testing.assert_allclose(from_image["y"], outputs["y"], rtol=1e-5)  # white pixels /255 == ones


def test_run_rejects_wrong_shape_and_pickled_arrays(tiny_onnx, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.ones((1, 3, 8, 8), np.float32))
    with pytest.raises(UsageError, match="rejected the inputs"):
        api.run(tiny_onnx, [str(wrong)])
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match="holds pickled data"):
        api.run(tiny_onnx, [str(pickled)])


def test_bench_reports_consistent_percentiles(tiny_onnx, tmp_path):
    result = api.bench(tiny_onnx, warmup=2, iterations=30, threads=1)
    assert 0 < result.min_ms <= result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.throughput_per_s == pytest.approx(1000.0 / result.mean_ms)
    assert result.peak_rss_mb > 0 and result.iterations == 30


def test_bench_batch_needs_dynamic_axis(tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="dynamic batch"):
        api.bench(tiny_onnx, batch=4, iterations=1)
    dynamic = tmp_path / "dyn.onnx"
    onnx.save(make_onnx_model(batch="N"), str(dynamic))
    assert api.bench(dynamic, batch=4, iterations=3, warmup=0).throughput_per_s > 0


def test_verify_on_real_images(tiny_onnx, tmp_path):
    images = write_images(tmp_path / "imgs", count=5, size=12)
    result = api.convert(tiny_onnx, tmp_path / "out.onnx", dynamic_batch=True, calib=images)
    assert any("images from imgs" in r.inputs for r in result.parity)


def test_eval_on_labelled_folder(tiny_onnx, tmp_path):
    for name in ("a", "b"):
        write_images(tmp_path / "labels" / name, count=3)
    api.compile(tiny_onnx, tmp_path / "art")
    result = api.evaluate(tmp_path / "art", tmp_path / "labels")
    assert result.images == 6 and result.classes == 2
    assert 0.0 <= result.top1 <= result.top5 <= 1.0
