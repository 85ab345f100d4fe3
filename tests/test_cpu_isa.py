"""INT8 by instruction set: the host's ISA is read, the x86 targets pick their scheme by it, and an INT8
request never turns silently into FP32.

The ISA-dependent numbers are checked on both kinds of CPU from one machine: natively here, and under
QEMU's user-mode x86-64 emulation with a Haswell CPU model (AVX2, no AVX-512, no VNNI), whose CPUID is
what numpy and ONNX Runtime's MLAS see, so MLAS really takes its saturating u8s8 AVX2 path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import make_onnx_model, make_single_layer_model
from toolchain.errors import UsageError, VerificationError
from toolchain.hostcpu import HostCpu, host_cpu
from toolchain.passes.quantize import QuantizeConfig, compute_ranges, cpu_scheme, quantize_static, scheme_note
from toolchain.targets import get_target

QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-user (Debian qemu-user-static) is not installed")


def cpu(features: tuple[str, ...], machine: str = "x86_64") -> HostCpu:
    return HostCpu("test CPU", machine, features, 2)


def test_isa_classes_follow_the_features_mlas_dispatches_on():
    assert cpu(("avx2", "avx512_vnni", "avx512f")).int8_isa == "x86-vnni"
    assert cpu(("avx2", "avx_vnni")).int8_isa == "x86-vnni"  # Alder Lake: VEX-encoded VNNI, no AVX-512
    assert cpu(("avx2", "avx512bw", "avx512f")).int8_isa == "x86-avx2"  # Skylake-X: AVX-512 but no VNNI
    assert cpu(("avx2", "fma")).int8_isa == "x86-avx2"
    assert cpu(()).int8_isa == "x86-sse"
    assert cpu(("asimd", "asimddp"), "aarch64").int8_isa == "arm64"


def test_this_host_is_described_from_cpuid():
    here = host_cpu()
    assert here.logical_cpus >= 1 and here.model
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    if "avx512_vnni" in flags and "avx512_vnni" in here.features:
        assert here.int8_isa == "x86-vnni"
    data = here.to_dict()
    assert data["int8_isa"] == here.int8_isa and here.int8_isa in here.describe()


def test_cpu_targets_pick_their_int8_scheme_by_isa():
    for isa in ("x86-avx2", "x86-sse"):  # 7-bit weights where the GEMM kernels' int16 sums saturate
        scheme = cpu_scheme(isa)
        assert scheme["reduce_range"] and scheme["depthwise_full_range"] and scheme["guard_runtime"] == "host"
    assert cpu_scheme("x86-vnni")["reduce_range"] is False
    assert QuantizeConfig.for_target("x86-avx2").reduce_range
    assert not QuantizeConfig.for_target("x86-vnni").reduce_range
    # 'x86' (and no target at all) means this machine
    saturating = host_cpu().int8_isa in ("x86-avx2", "x86-sse")
    assert QuantizeConfig.for_target("x86").reduce_range == saturating
    assert QuantizeConfig.for_target(None) == QuantizeConfig.for_target("x86")
    # TensorRT is judged with exact integer arithmetic whatever this CPU's kernels do
    assert QuantizeConfig.for_target("jetson-orin").guard_runtime == "reference"
    assert get_target("x86").int8_isa() == host_cpu().int8_isa
    note = scheme_note("x86", QuantizeConfig.for_target("x86"))
    assert note and host_cpu().int8_isa in note and "this machine" in note
    assert scheme_note("rpi4", QuantizeConfig.for_target("rpi4")) is None
    with pytest.raises(UsageError, match="unknown target"):
        QuantizeConfig.for_target("x86-avx9")


def test_a_model_made_for_vnni_on_a_cpu_without_it_is_checked_with_exact_arithmetic():
    if host_cpu().int8_isa == "x86-vnni":
        assert QuantizeConfig.for_target("x86-vnni").guard_runtime == "host"
        assert QuantizeConfig.for_target("x86-avx2").guard_runtime == "host"  # 7-bit weights are exact anywhere
    else:
        assert QuantizeConfig.for_target("x86-vnni").guard_runtime == "reference"


def _feeds(count: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(count)]


def test_exact_integer_reference_equals_the_vnni_kernels_here():
    """Q/DQ evaluated in float is exact int32 accumulation: what VNNI (and TensorRT) compute."""
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    if host_cpu().int8_isa != "x86-vnni":
        pytest.skip("needs a CPU with VNNI to compare the exact reference with real integer kernels")
    model, feeds = make_onnx_model(), _feeds()
    config = QuantizeConfig.for_target("x86-vnni")
    quantized = quantize_static(model, compute_ranges(model, feeds, config), config)
    kernels = OnnxRuntimeRunner.from_model(quantized)
    exact = OnnxRuntimeRunner.from_model(quantized, integer_reference=True)
    for feed in feeds:
        np.testing.assert_allclose(kernels.run(feed)["y"], exact.run(feed)["y"], rtol=1e-4, atol=1e-4)


def test_the_guard_never_hands_over_an_int8_model_without_int8_layers(tmp_path):
    """A two-layer model whose budget holds only with every layer float is refused, not shipped as 'INT8'."""
    from toolchain.passes.calibrate import CalibrationOptions, calibrate
    from toolchain.quant_guard import Budget

    rng = np.random.default_rng(3)
    weight = rng.standard_normal((64, 10)).astype(np.float32)
    weight[0, 0] = 500.0  # one huge weight: per-tensor 8-bit leaves the rest of the layer at a few levels
    onnx.save(make_single_layer_model(weight), str(tmp_path / "m.onnx"))
    samples = tmp_path / "samples.npy"
    np.save(samples, rng.standard_normal((60, 64)).astype(np.float32))
    options = CalibrationOptions(samples, count=30, holdout=30)
    config = QuantizeConfig.for_target("x86", per_channel=False)
    with pytest.raises(VerificationError, match="(INT8 layer|misses the accuracy budget)"):
        calibrate(tmp_path / "m.onnx", tmp_path / "q.onnx", options, config, Budget(max_drop=0.0, min_cosine=0.99999))
    assert not (tmp_path / "q.onnx").exists()


def test_an_already_quantized_model_is_refused_in_one_line(tmp_path):
    from toolchain import api

    onnx.save(make_onnx_model(), str(tmp_path / "m.onnx"))
    samples = tmp_path / "s.npy"
    np.save(samples, np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32))
    # keep one layer float: the model still has a float weight, but it is quantized already
    model = onnx.load(str(tmp_path / "m.onnx"))
    config = QuantizeConfig.for_target("x86", nodes_to_exclude=("Gemm_3",))
    from toolchain.passes.quantize import named_copy

    named = named_copy(model)
    partly = quantize_static(named, compute_ranges(named, _feeds(), config), config)
    onnx.save(partly, str(tmp_path / "partly.onnx"))
    with pytest.raises(UsageError, match="already quantized"):
        api.calibrate(tmp_path / "partly.onnx", tmp_path / "q.onnx", calib=samples, calib_size=20, holdout=20,
                      no_cache=True)


_EMULATED_CHECK = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from helpers import make_onnx_model
from backends.onnxruntime.runner import OnnxRuntimeRunner
from toolchain.hostcpu import host_cpu
from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantize_static

rng = np.random.default_rng(0)
feeds = [{"x": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(8)]
model = make_onnx_model()
reference = np.concatenate([OnnxRuntimeRunner.from_model(model).run(f)["y"] for f in feeds]).ravel()

def cosine(config, exact=False):
    quantized = quantize_static(model, compute_ranges(model, feeds, config), config)
    runner = OnnxRuntimeRunner.from_model(quantized, integer_reference=exact)
    out = np.concatenate([runner.run(f)["y"] for f in feeds]).ravel()
    return float(out @ reference / np.linalg.norm(out) / np.linalg.norm(reference))

x86 = QuantizeConfig.for_target("x86")
vnni = QuantizeConfig.for_target("x86-vnni")
print(json.dumps({"isa": host_cpu().int8_isa, "x86_reduce_range": x86.reduce_range,
                  "x86": cosine(x86), "vnni_guard_runtime": vnni.guard_runtime,
                  "vnni_on_avx2_kernels": cosine(vnni), "vnni_exact": cosine(vnni, exact=True)}))
"""


@needs_qemu
@pytest.mark.skipif(host_cpu().int8_isa != "x86-vnni", reason="this CPU has no VNNI itself: the tests run natively here")
@pytest.mark.slow
def test_on_an_avx2_cpu_without_vnni_x86_int8_uses_7_bit_weights_and_keeps_its_accuracy(tmp_path):
    """Under QEMU's Haswell model, full 8-bit u8s8 saturates in MLAS; the x86 scheme chosen there does not."""
    script = tmp_path / "check.py"
    script.write_text(_EMULATED_CHECK)
    tests = Path(__file__).parent
    done = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, str(script), str(tests)],
                          capture_output=True, text=True, timeout=600, cwd=tests.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["isa"] == "x86-avx2"
    assert result["x86_reduce_range"] is True
    assert result["x86"] > 0.999  # what test_quantize asks of x86 INT8 on a VNNI CPU
    # A model made for VNNI, run on AVX2 kernels, is damaged by saturation; its exact check is not.
    assert result["vnni_guard_runtime"] == "reference"
    assert result["vnni_on_avx2_kernels"] < result["vnni_exact"]
    assert result["vnni_exact"] > 0.999


def test_an_opset_11_model_with_weights_in_constant_nodes_quantizes_to_a_model_ort_loads(tmp_path):
    """paddle2onnx-style: opset 11, weights in Constant nodes, an unfolded BatchNorm (PP-OCR models are so)."""
    from onnx import helper, numpy_helper

    from backends.onnxruntime.runner import OnnxRuntimeRunner
    from toolchain import api
    from toolchain.passes.quantize import int8_weighted_nodes

    rng = np.random.default_rng(5)
    constants = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
                 "scale": rng.uniform(0.5, 1.5, 8).astype(np.float32), "bias": rng.standard_normal(8).astype(np.float32),
                 "mean": rng.standard_normal(8).astype(np.float32), "var": rng.uniform(0.5, 2, 8).astype(np.float32)}
    nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k)) for k, v in constants.items()]
    nodes += [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
              helper.make_node("Relu", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "paddle-like", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                   [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 16, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.save(model, str(tmp_path / "m.onnx"))
    samples = tmp_path / "s.npy"
    np.save(samples, rng.standard_normal((40, 3, 16, 16)).astype(np.float32))
    result = api.calibrate(tmp_path / "m.onnx", tmp_path / "q.onnx", calib=samples, calib_size=20, holdout=20,
                           no_cache=True)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    assert max(o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert int8_weighted_nodes(quantized)
    assert any("opset upgraded from 11" in note for note in result.notes)
    runner = OnnxRuntimeRunner.from_path(tmp_path / "q.onnx")  # loads, and runs
    assert runner.run({"x": np.zeros((1, 3, 16, 16), np.float32)})["y"].shape == (1, 8, 16, 16)


def test_depthwise_convolutions_keep_8_bit_weights_in_the_avx2_scheme():
    from onnx import helper, numpy_helper

    from toolchain.passes.quantize import depthwise_weights

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "dw"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "pw")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "dw"], ["d"], group=8, pads=[1, 1, 1, 1], name="depthwise"),
         helper.make_node("Relu", ["d"], ["r"]),
         helper.make_node("Conv", ["r", "pw"], ["y"], name="pointwise")], "dwpw",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert depthwise_weights(model) == ["dw"]
    feeds = [{"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)} for _ in range(8)]
    config = QuantizeConfig.for_target("x86-avx2")
    quantized = quantize_static(model, compute_ranges(model, feeds, config), config)
    levels = {t.name: int(np.abs(onnx.numpy_helper.to_array(t)).max()) for t in quantized.graph.initializer
              if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4}
    assert levels == {"dw_quantized": 127, "pw_quantized": 64}
