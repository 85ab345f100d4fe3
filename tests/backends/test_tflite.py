"""The TFLite backend end to end: real onnx2tf, TensorFlow's converter and the LiteRT interpreter, no mocks.

Conversions are the slow part (onnx2tf runs in a child process), so artifacts are
module-scoped and the models tiny; one process converts each distinct model once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from backends.base import CompileOptions
from backends.tflite import TFLiteBackend
from backends.tflite.inspect import format_tflite_summary, summarize_tflite
from helpers import files_in, make_onnx_model, make_outlier_cnn, write_images
from toolchain import api
from toolchain.passes.calibrate import CalibrationOptions
from toolchain.errors import ConversionError, UsageError, VerificationError
from toolchain.precision import QuantOptions
from toolchain.stages import compile_artifact
from toolchain.verify import VerifyOptions

# Checked without importing onnx2tf: its import sets TF_USE_LEGACY_KERAS, the recursion limit and every
# RNG seed in the importing process, which would leak into the rest of the test session.
_AVAILABLE, _WHY = TFLiteBackend().is_available()
if not _AVAILABLE:
    pytest.skip(f"tflite backend not usable here: {_WHY}", allow_module_level=True)

CALIB = {"calib_size": 24, "holdout": 16, "no_cache": True}


def make_rgb_model() -> onnx.ModelProto:
    """3-channel CNN with two outputs: class scores and an NCHW feature map whose C == H == W (8x8x8),
    so only a numeric probe can tell onnx2tf's NHWC output from an NCHW one."""
    rng = np.random.default_rng(0)

    def tensor(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [tensor("w1", (8, 3, 3, 3)), tensor("b1", (8,), 0.1), tensor("w2", (8, 8, 3, 3)), tensor("b2", (8,), 0.1),
             tensor("fc_w", (5, 8)), tensor("fc_b", (5,), 0.1)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["a2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["a2"], ["features"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["features"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
             helper.make_node("Softmax", ["logits"], ["scores"], axis=1, name="softmax")]
    graph = helper.make_graph(nodes, "rgb", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [1, 5]),
                               helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [1, 8, 8, 8])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_dft_model() -> onnx.ModelProto:
    """A valid ONNX model with DFT, which onnx2tf 1.28 has no converter for."""
    node = helper.make_node("DFT", ["x"], ["y"], axis=1)
    graph = helper.make_graph([node], "dft", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tflite")
    onnx.save(make_onnx_model(), str(folder / "tiny.onnx"))
    onnx.save(make_rgb_model(), str(folder / "rgb.onnx"))
    onnx.save(make_outlier_cnn(), str(folder / "outlier.onnx"))
    onnx.save(make_dft_model(), str(folder / "dft.onnx"))
    write_images(folder / "gray", count=40, size=8)
    write_images(folder / "rgb_images", count=40, size=16, mode="RGB")
    return folder


@pytest.fixture(scope="module")
def fp32(work: Path):
    return api.compile(work / "tiny.onnx", work / "fp32", backend="tflite", precision="fp32")


@pytest.fixture(scope="module")
def int8_rpi(work: Path):
    return api.compile(work / "tiny.onnx", work / "int8_rpi4", backend="tflite", target="rpi4",
                       calib=work / "gray", **CALIB)


@pytest.fixture(scope="module")
def mcu(work: Path):
    return api.compile(work / "tiny.onnx", work / "mcu", target="mcu", calib=work / "gray", **CALIB)


def _details(result) -> dict:
    return result.artifact.manifest["metrics"]["details"]


# ---- FP32, FP16, dynamic --------------------------------------------------------------------------

def test_fp32_matches_onnx_runtime_tightly(fp32):
    folder = fp32.artifact.path
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.tflite", "onnx2tf.log"]
    (report,) = fp32.parity
    assert report.passed and report.min_cosine is None  # allclose at atol 1e-4 / rtol 1e-3, not cosine
    assert report.outputs[0].max_abs < 1e-5
    io = fp32.artifact.manifest["runtime_options"]["io"]
    assert io["inputs"][0]["perm"] == [0, 2, 3, 1]  # the runner owns the NCHW -> NHWC translation
    assert "Model conversion started" in (folder / "onnx2tf.log").read_text()


# dynamic: bound from the SavedModel's signature, the float TFLite model lowered only for the probe.
@pytest.mark.parametrize("precision", ["fp32", "dynamic"])
def test_two_outputs_and_an_nchw_feature_map_come_back_in_onnx_layout(work, precision):
    result = api.compile(work / "rgb.onnx", work / f"rgb_{precision}", backend="tflite", precision=precision,
                         calib=work / "rgb_images")
    assert all(r.passed for r in result.parity)
    assert {o.name for r in result.parity for o in r.outputs} == {"scores", "features"}
    outputs = {b["name"]: b for b in result.artifact.manifest["runtime_options"]["io"]["outputs"]}
    assert outputs["features"]["perm"] == [0, 3, 1, 2]  # settled by the probe: the shape alone is ambiguous
    feed, values = api.run(result.artifact.path, [str(_npy(work, "rgb_x.npy", (1, 3, 16, 16)))])
    assert values["features"].shape == (1, 8, 8, 8) and values["scores"].shape == (1, 5)


def _npy(folder: Path, name: str, shape: tuple[int, ...]) -> Path:
    path = folder / name
    np.save(path, np.random.default_rng(5).random(shape, dtype=np.float32))
    return path


@pytest.mark.parametrize("precision, weight_type", [("fp16", "float16"), ("dynamic", "int8")])
def test_fp16_and_dynamic_store_smaller_weights_and_verify_by_cosine(work, fp32, precision, weight_type):
    result = api.compile(work / "tiny.onnx", work / precision, backend="tflite", precision=precision)
    assert all(r.passed and r.min_cosine == 0.99 for r in result.parity)
    summary = summarize_tflite(result.artifact.path / "model.tflite")
    assert weight_type in summary["constant_types"]
    assert summary["size_bytes"] < _details(fp32)["size_bytes"]
    # Same ONNX as the fp32 build: onnx2tf ran once in this process, its log is carried over.
    assert (result.artifact.path / "onnx2tf.log").read_text().startswith("[edgekiln] identical model")


def test_same_inputs_give_byte_identical_tflite(work, fp32):
    again = api.compile(work / "tiny.onnx", work / "fp32_again", backend="tflite", precision="fp32")
    assert (again.artifact.path / "model.tflite").read_bytes() == (fp32.artifact.path / "model.tflite").read_bytes()


# ---- INT8 ---------------------------------------------------------------------------------------

def test_rpi4_target_defaults_int8_with_float_io_and_four_threads(int8_rpi):
    manifest = int8_rpi.artifact.manifest
    assert manifest["options"]["precision"] == "int8"
    assert manifest["runtime_options"]["threads"] == 4 and manifest["runtime_options"]["xnnpack"] is True
    summary = summarize_tflite(int8_rpi.artifact.path / "model.tflite")
    assert summary["inputs"][0]["dtype"] == "float32" and summary["ops"]["QUANTIZE"] == 1
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(summary["ops"]) and summary["constant_types"]["int8"] >= 2
    guard = _details(int8_rpi)["int8"]["guard"]
    assert guard["passed"] and guard["attempts"][0]["quality"]["top1_agreement"] >= 0.99
    assert all(r.passed and r.min_cosine is not None for r in int8_rpi.parity)


def test_int8_uses_the_same_calibration_set_as_onnx_runtime(work, int8_rpi):
    ort = api.compile(work / "tiny.onnx", work / "ort_int8", backend="onnxruntime", precision="int8",
                      calib=work / "gray", **CALIB)
    ort_summary = ort.artifact.manifest["metrics"]["precision"]["calibration"]
    tflite_summary = _details(int8_rpi)["int8"]["calibration"]
    # Identical choice, split and preprocessing; only the cache outcome may differ.
    assert ort_summary.rsplit(";", 1)[0] == tflite_summary.rsplit(";", 1)[0]
    assert ort.artifact.manifest["preprocess"] == int8_rpi.artifact.manifest["preprocess"]


def test_three_channel_int8_converts_offline(work):
    # onnx2tf would download sample images for a 3-channel, small-batch model; it must not need to.
    result = api.compile(work / "rgb.onnx", work / "rgb_int8", backend="tflite", precision="int8",
                         calib=work / "rgb_images", **CALIB)
    assert _details(result)["int8"]["guard"]["passed"]
    assert all(r.passed for r in result.parity)


def test_guard_keeps_the_layers_around_an_outlier_in_float(work):
    result = api.compile(work / "outlier.onnx", work / "outlier_rpi", target="rpi4", calib=work / "gray", **CALIB)
    guard = _details(result)["int8"]["guard"]
    assert guard["passed"] and len(guard["attempts"]) > 1
    assert guard["attempts"][0]["quality"]["top1_agreement"] < 0.5  # plain INT8 is broken by the outlier
    assert {"conv1", "conv2"} <= set(guard["attempts"][-1]["kept_float"])
    assert guard["sensitivity"][0]["node"] in ("conv1", "conv2")


def test_no_verify_skips_the_emulated_device_check_and_says_so(work):
    """--no-verify turns the rpi4 build's aarch64 run off too (it is a check, not part of the artifact),
    and the manifest does not claim any check ran."""
    from backends.tflite.emulate import AARCH64

    result = api.compile(work / "tiny.onnx", work / "fp32_rpi4_unverified", backend="tflite", target="rpi4",
                         precision="fp32", verify=False)
    details = _details(result)
    assert details["executed_on"] == [] and details["not_executed_on"] == [{"where": AARCH64, "why": "--no-verify"}]
    assert result.parity == []


def test_bias_correction_runs_on_the_onnx_model_before_conversion(work, int8_rpi):
    """TFLite's converter quantizes the corrected float weights itself; the guard still judges the result
    against the untouched FP32 model, on the same held-out samples."""
    from toolchain.onnx_io import load_onnx

    result = api.compile(work / "tiny.onnx", work / "int8_rpi4_bc", backend="tflite", target="rpi4",
                         calib=work / "gray", bias_correction=True, **CALIB)
    details = _details(result)["int8"]
    assert any(note.startswith("bias correction:") and "biases shifted" in note for note in details["ptq"])
    assert any("+ bias correction" in note for note in details["ptq"])  # measured, not just applied
    plain = _details(int8_rpi)["int8"]
    assert "ptq" not in plain
    assert details["calibration"].rsplit(";", 1)[0] == plain["calibration"].rsplit(";", 1)[0]
    assert details["guard"]["passed"] and details["quality"]["samples"] == plain["quality"]["samples"]
    assert (result.artifact.path / "model.tflite").read_bytes() != (int8_rpi.artifact.path / "model.tflite").read_bytes()
    assert load_onnx(work / "tiny.onnx")  # the source model is untouched


def _chain_cnn(convs: int = 6) -> onnx.ModelProto:
    """``convs`` 3x3 convolutions with ReLU, then a Gemm: enough layers that the fallback has steps to skip."""
    rng = np.random.default_rng(7)
    nodes, inits, last = [], [], "x"
    for i in range(convs):
        inits += [numpy_helper.from_array((rng.standard_normal((4, 1 if i == 0 else 4, 3, 3)) * 0.5).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(4, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [last, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        last = f"r{i}"
    inits += [numpy_helper.from_array((rng.standard_normal((10, 256)) * 0.1).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes += [helper.make_node("Flatten", [last], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_model_that_misses_by_far_is_refused_without_walking_every_fallback_step(work):
    """Enough layers for steps 1 to 3 or more. A budget no INT8 model meets is missed by far with the most
    layers in float the schedule allows, so the steps between are never converted: plain INT8, one layer,
    the largest step."""
    onnx.save(_chain_cnn(), str(work / "chain.onnx"))
    with pytest.raises(VerificationError) as error:
        api.compile(work / "chain.onnx", work / "chain_rpi", target="rpi4", calib=work / "gray", min_cosine=0.99999,
                    **CALIB)
    attempts = error.value.report["attempts"]
    assert [a.get("bias_corrected", False) for a in attempts][:2] == [False, True]  # the guard's second start
    kept = [len(a["kept_float"]) for a in attempts if not a.get("bias_corrected")]
    assert kept[:2] == [0, 1] and len(kept) == 3 and kept[2] >= 3
    assert f"even with {kept[2]} layer(s) kept in float (missed by far, so fewer were not tried)" in str(error.value)
    assert not (work / "chain_rpi").exists()


def test_full_integer_mcu_target_names_the_responsible_layers_and_writes_nothing(work):
    with pytest.raises(VerificationError) as error:
        api.compile(work / "outlier.onnx", work / "outlier_mcu", target="mcu", calib=work / "gray", **CALIB)
    message = str(error.value)
    assert "no float fallback" in message and "top-1 accuracy lost by FP32's own probabilities" in message
    assert "ONNX node 'conv2'" in message
    assert not (work / "outlier_mcu").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".outlier_mcu")]


# ---- TFLite Micro ---------------------------------------------------------------------------------

def test_mcu_bundle_has_int8_io_ops_and_an_arena_estimate(mcu):
    folder = mcu.artifact.path
    assert {"model_data.cc", "model_data.h", "model_config.h", "model_ops.h"} <= {p.name for p in folder.iterdir()}
    summary = summarize_tflite(folder / "model.tflite")
    assert summary["inputs"][0]["dtype"] == "int8" and summary["outputs"][0]["dtype"] == "int8"
    assert "QUANTIZE" not in summary["ops"] and "DEQUANTIZE" not in summary["ops"]
    details = _details(mcu)["mcu"]
    assert details["flash_bytes"] == summary["size_bytes"]
    # Input 64 B + conv output 256 B live together; then conv output + transpose output (512 B).
    assert details["arena"]["activations"] == 512
    config = (folder / "model_config.h").read_text()
    assert f"kTensorArenaSize = {details['arena']['total']};" in config
    assert "kInput0Dims[] = {1, 8, 8, 1};" in config and "kInput0ZeroPoint = -128;" in config
    # The runner still speaks float NCHW: it quantizes and transposes on the way in and out.
    _, values = api.run(folder, [str(_npy(folder.parent, "x.npy", (1, 1, 8, 8)))])
    assert values["y"].dtype == np.float32 and values["y"].shape == (1, 10)


STUB_RESOLVER = """
#pragma once
typedef enum {{ kTfLiteOk = 0, kTfLiteError = 1 }} TfLiteStatus;
namespace tflite {{
template <unsigned int N> class MicroMutableOpResolver {{
 public:
{methods}
  unsigned int count = 0;
}};
}}
"""

TEST_MAIN = """
#include <cstdint>
#include <cstring>
#include "model_config.h"
#include "model_data.h"
#include "model_ops.h"

static_assert(edgekiln_model::kTensorArenaSize % 16 == 0, "arena size is 16-byte aligned");
alignas(16) static uint8_t arena[edgekiln_model::kTensorArenaSize];

int main() {
  edgekiln_model::OpResolver resolver;
  if (edgekiln_model::RegisterOps(resolver) != kTfLiteOk) return 1;
  if (resolver.count != edgekiln_model::kOpCount) return 2;
  if (reinterpret_cast<uintptr_t>(g_model_data) % 16 != 0) return 3;
  if (std::memcmp(g_model_data + 4, "TFL3", 4) != 0) return 4;
  if (edgekiln_model::kInput0Elements != 64 || sizeof(arena) < 512) return 5;
  return 0;
}
"""


def test_mcu_bundle_compiles_and_links_with_gpp(mcu, tmp_path):
    gpp = shutil.which("g++")
    if gpp is None:
        pytest.skip("g++ is not installed")
    folder = mcu.artifact.path
    methods = "\n".join(f"  TfLiteStatus {m}() {{ ++count; return kTfLiteOk; }}"
                        for m in _details(mcu)["mcu"]["resolver_calls"])
    stub = tmp_path / "stub" / "tensorflow" / "lite" / "micro"
    stub.mkdir(parents=True)
    (stub / "micro_mutable_op_resolver.h").write_text(STUB_RESOLVER.format(methods=methods))
    (tmp_path / "main.cc").write_text(TEST_MAIN)
    binary = tmp_path / "bundle_test"
    subprocess.run([gpp, "-std=c++17", "-Wall", "-Werror", "-I", str(folder), "-I", str(tmp_path / "stub"),
                    str(folder / "model_data.cc"), str(tmp_path / "main.cc"), "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    assert subprocess.run([str(binary)]).returncode == 0


def _compile_with_extra(work: Path, name: str, target: str | None, precision: str, **extra):
    quant = QuantOptions(CalibrationOptions(work / "gray", count=24, holdout=16))
    return compile_artifact(work / "tiny.onnx", work / name, "tflite",
                            CompileOptions(precision=precision, target=target, extra=extra),
                            VerifyOptions(calib=work / "gray"), quant=quant)


def test_flash_and_ram_budgets_fail_the_build_with_the_measured_numbers(work, mcu):
    with pytest.raises(VerificationError) as error:
        _compile_with_extra(work, "mcu_small", "mcu", "int8", flash_kb=2, ram_kb=0.5)
    message = str(error.value)
    flash_kib = _details(mcu)["mcu"]["flash_bytes"] / 1024
    assert f"model needs {flash_kib:.1f} KiB of flash > --flash-kb 2" in message
    assert "tensor arena needs about" in message and "> --ram-kb 0.5" in message
    assert not (work / "mcu_small").exists()
    roomy = _compile_with_extra(work, "mcu_roomy", "mcu", "int8", flash_kb=64, ram_kb=64)
    assert roomy.artifact.manifest["options"]["flash_kb"] == 64


# ---- bad input ----------------------------------------------------------------------------------

def test_an_op_onnx2tf_lacks_is_one_conversion_error_pointing_at_the_log(work):
    before = files_in(work)
    with pytest.raises(ConversionError) as error:
        api.compile(work / "dft.onnx", work / "dft_out", backend="tflite", precision="fp32")
    message = str(error.value)
    assert "no converter for op DFT (node 'DFT_0')" in message and "\n" not in message
    log = Path(message.split("log is in ", 1)[1].rstrip("."))
    assert log.is_file() and "DFT" in log.read_text()
    log.unlink()
    assert files_in(work) == before  # nothing left behind, not even a staging folder


@pytest.mark.parametrize("kwargs, fragment", [
    ({"target": "mcu", "precision": "fp32"}, "needs --precision int8"),
    ({"backend": "tflite", "precision": "int8"}, "needs calibration samples"),
    ({"backend": "tflite", "precision": "int8", "method": "entropy"}, "cannot apply method=entropy"),
    ({"backend": "tflite", "precision": "int8", "range_search": "mse"}, "--range-search is a pass of edgekiln's ONNX"),
    ({"backend": "tflite", "precision": "int4"}, "does not support precision 'int4'"),
])
def test_impossible_requests_fail_before_converting(work, kwargs, fragment):
    calib = {"calib": work / "gray"} if "method" in kwargs or "range_search" in kwargs else {}
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        api.compile(work / "tiny.onnx", work / "refused", **kwargs, **calib)
    assert not (work / "refused").exists()


# ---- run, bench, inspect -------------------------------------------------------------------------

def test_run_and_bench_commands_work_on_a_tflite_artifact(fp32, work):
    from toolchain.cli import cli

    x = _npy(work, "tiny_x.npy", (1, 1, 8, 8))
    runner = CliRunner()
    ran = runner.invoke(cli, ["run", str(fp32.artifact.path), "--input", str(x), "--json"])
    assert ran.exit_code == 0, ran.output
    expected = api.run(work / "tiny.onnx", [str(x)])[1]["y"]
    np.testing.assert_allclose(np.array(json.loads(ran.output)["y"]), expected, atol=1e-5)
    bench = runner.invoke(cli, ["bench", str(fp32.artifact.path), "--warmup", "1", "--iterations", "5", "--json"])
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.output)["backend"] == "tflite"


def test_inspect_shows_ops_types_quantization_and_size(int8_rpi):
    path = int8_rpi.artifact.path / "model.tflite"
    summary = summarize_tflite(path)
    assert summary["size_bytes"] == path.stat().st_size
    assert summary["quantized_tensors"]["per_channel"] >= 1 and summary["tflm_unsupported_ops"] == []
    text = format_tflite_summary(summary)
    assert "TFLite model" in text and "CONV_2D x1" in text and "per-channel" in text and "zero point" in text
    json.dumps(summary)  # JSON-ready



def test_padded_maxpool_after_relu_quantizes_and_loads(tmp_path):
    """ResNet's stem (Conv -> Relu -> padded MaxPool): onnx2tf's -inf PADV2 broke full-integer TFLite."""
    from onnx import helper, numpy_helper

    from backends.tflite.prepare import zero_pad_maxpools
    from helpers import write_images

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="pool"),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc")],
        "stem", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array((rng.standard_normal((10, 8 * 8 * 8)) * 0.1).astype(np.float32), "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rewritten, count = zero_pad_maxpools(model)
    assert count == 1
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    feed = {"x": rng.random((1, 3, 16, 16), dtype=np.float32)}
    np.testing.assert_array_equal(OnnxRuntimeRunner.from_model(model).run(feed)["y"],
                                  OnnxRuntimeRunner.from_model(rewritten).run(feed)["y"])
    onnx.save(model, str(tmp_path / "stem.onnx"))
    images = write_images(tmp_path / "imgs", count=60, size=16, mode="RGB")
    result = api.compile(tmp_path / "stem.onnx", tmp_path / "art", backend="tflite", precision="int8", calib=images,
                         calib_size=40, holdout=20, no_cache=True, guard=False, min_cosine=0.95)
    assert result.artifact.model_path.is_file()


def _boxes_and_scores_model() -> onnx.ModelProto:
    """YOLO's output in small: boxes in pixels (0..320) and scores (0..1) joined in one tensor."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 1, 3, 3)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 6, 64], np.int64), "shape"),
             numpy_helper.from_array(np.array([2, 4], np.int64), "split"),
             numpy_helper.from_array(np.array(160.0, np.float32), "pixels")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
             helper.make_node("Split", ["r", "split"], ["raw_boxes", "logits"], axis=1, name="split"),
             helper.make_node("Sigmoid", ["raw_boxes"], ["unit_boxes"], name="box_sigmoid"),
             helper.make_node("Mul", ["unit_boxes", "pixels"], ["boxes"], name="to_pixels"),
             helper.make_node("Sigmoid", ["logits"], ["scores"], name="score_sigmoid"),
             helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1, name="join")]
    graph = helper.make_graph(nodes, "boxes_scores",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, [1, 6, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_join_of_pixels_and_scores_stays_float_and_the_console_says_so(work):
    from backends.onnxruntime.runner import OnnxRuntimeRunner
    from backends.tflite.runner import TFLiteRunner

    model = _boxes_and_scores_model()
    onnx.save(model, str(work / "boxes_scores.onnx"))
    result = api.compile(work / "boxes_scores.onnx", work / "boxes_scores_rpi4", target="rpi4", calib=work / "gray",
                         guard=False, verify=False, **CALIB)
    details = _details(result)
    (join,) = details["int8"]["mixed_range_joins"]
    assert "CONCATENATION" in join and "of 256 levels" in join
    assert any(note.startswith("1 layer(s) kept in float to meet the accuracy budget") for note in details["notes"])
    runner = TFLiteRunner.from_path(result.artifact.model_path, **result.artifact.manifest["runtime_options"])
    feed = {"x": np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)}
    scores = runner.run(feed)["output0"][:, 2:]
    expected = OnnxRuntimeRunner.from_model(model).run(feed)["output0"][:, 2:]
    assert np.abs(scores - expected).max() < 0.02  # at the joined scale (160/255) every score was 0 or 0.63
