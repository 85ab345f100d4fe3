"""TensorRT backend: device bundles checked for real here; engine build and run only where TensorRT and a GPU exist.

What runs in this file without TensorRT: ONNX preparation (opset down-conversion,
unparsable-op table) checked in ONNX Runtime, the guarded INT8 QDQ model in its
TensorRT form checked against TensorRT's quantization rules and run in ONNX
Runtime, the calibration cache text, build_engine.sh under ``bash -n`` with the
flags per target, verify_engine.py's bundle checks and comparison code (also
under a real Python 3.6 where one is installed), and the engine cache key.
What does not run here: anything that imports tensorrt (tests marked ``gpu``).
"""

from __future__ import annotations

import ast
import glob
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from backends.base import CompileOptions
from backends.tensorrt import TensorRTBackend
from backends.tensorrt import verify_engine as device_script
from backends.tensorrt.backend import usable_here
from backends.tensorrt.cache import EngineKey, cached_engine, engine_key
from backends.tensorrt.devices import DEVICES, cache_header_version, device_for, release_for
from backends.tensorrt.prepare import prepare_for_device, unparsable_ops
from backends.tensorrt.qdq import qdq_problems
from backends.tensorrt.settings import resolve_settings
from calibration.ranges import ActivationRanges, read_tensorrt_cache, symmetric_scale
from helpers import make_onnx_model, write_images
from toolchain.passes.calibrate import CalibrationOptions
from toolchain.errors import ConversionError, MissingDependencyError, UsageError
from toolchain.onnx_io import graph_inputs
from toolchain.precision import QuantOptions
from toolchain.stages import compile_artifact
from toolchain.verify import VerifyOptions

HERE_USABLE, WHY_NOT = usable_here()


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trt")
    onnx.save(make_onnx_model(), str(folder / "tiny.onnx"))
    onnx.save(make_onnx_model(batch="N"), str(folder / "tiny_dynamic.onnx"))
    write_images(folder / "images", count=16)
    return folder


def _quant(work: Path, **overrides) -> QuantOptions:
    return QuantOptions(CalibrationOptions(work / "images", count=10, holdout=4, cache_dir=None), overrides)


def _compile(work: Path, name: str, target: str, precision: str, model: str = "tiny.onnx", **extra):
    out = work / name
    return compile_artifact(work / model, out, "tensorrt", CompileOptions(precision, target, extra=extra),
                            VerifyOptions(calib=work / "images"), quant=_quant(work))


@pytest.fixture(scope="module")
def nano(work: Path):
    return _compile(work, "nano", "jetson-nano", "int8")


@pytest.fixture(scope="module")
def orin(work: Path):
    return _compile(work, "orin", "jetson-orin", "int8")


@pytest.fixture(scope="module")
def xavier_dla(work: Path):
    return _compile(work, "xavier", "jetson-xavier", "fp16", dla_core=1)


def _bundle(result) -> dict:
    return json.loads((result.artifact.path / "bundle.json").read_text())


def _script_flags(result) -> list[str]:
    """The flags of the trtexec command in build_engine.sh, as the shell will pass them."""
    lines = (result.artifact.path / "build_engine.sh").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == '"$TRTEXEC" \\')
    command = []
    for line in lines[start + 1:]:
        command += shlex.split(line.strip().rstrip("\\"))
        if not line.rstrip().endswith("\\"):
            break
    assert command[-1].startswith("--saveEngine=")
    return command[:-1]


def _run_device_script(folder: Path, *args: str, python: str = sys.executable, env: dict | None = None):
    return subprocess.run([python, str(folder / "verify_engine.py"), *args], capture_output=True, text=True,
                          timeout=120, env=env)


# ---- declared device rules ------------------------------------------------------------------

def test_device_rules_are_declared_per_target():
    nano, xavier, orin = DEVICES["jetson-nano"], DEVICES["jetson-xavier"], DEVICES["jetson-orin"]
    assert (nano.max_opset(), nano.fast_int8, nano.dla_cores, nano.python) == (13, False, 0, (3, 6))
    assert (xavier.max_opset(), xavier.fast_int8, xavier.dla_cores) == (17, True, 2)
    assert orin.max_opset() == 17  # JetPack 6.0's TensorRT 8.6 parses up to 17, though 10.x parses 20
    assert orin.max_opset("10.3.0") == 20
    assert release_for("8.2.1").workspace_flag == "--workspace={mb}"
    assert release_for("8.5.2").workspace_flag == "--memPoolSize=workspace:{mb}"
    assert release_for("10.3.0").build_only_flag == "--skipInference"
    assert {d.trtexec for d in DEVICES.values()} == {"/usr/src/tensorrt/bin/trtexec"}
    with pytest.raises(UsageError, match="not a TensorRT target"):
        device_for("rpi4")


def test_calibration_cache_header_versions_match_tensorrt_numbering():
    assert cache_header_version("8.2.1") == device_script.cache_header_version("8.2.1.8") == "8201"
    assert cache_header_version("8.6.1") == "8601"  # as in caches TensorRT 8.6.1 writes
    assert cache_header_version("10.3.0") == device_script.cache_header_version("10.3.0.30") == "100300"


def test_int8_on_nano_becomes_fp16_with_a_logged_note(caplog: pytest.LogCaptureFixture):
    inputs = graph_inputs(make_onnx_model())
    with caplog.at_level(logging.WARNING, logger="edgekiln"):
        settings = resolve_settings(DEVICES["jetson-nano"], "int8", {}, inputs)
    assert settings.precision == "fp16" and settings.requested_precision == "int8"
    assert "no fast INT8" in settings.notes[0] and "--strict" in settings.notes[0]
    assert any("no fast INT8" in r.getMessage() for r in caplog.records)


def test_int8_on_nano_with_strict_is_an_error():
    with pytest.raises(UsageError, match="no fast INT8"):
        resolve_settings(DEVICES["jetson-nano"], "int8", {"strict": True}, graph_inputs(make_onnx_model()))


@pytest.mark.parametrize("target, precision, extra, message", [
    ("jetson-nano", "fp16", {"dla_core": 0}, "no DLA cores"),
    ("jetson-xavier", "fp16", {"dla_core": 2}, "DLA cores 0-1"),
    ("jetson-xavier", "fp32", {"dla_core": 0}, "FP16 and INT8 layers only"),
    ("cuda", "fp16", {"workspace_mb": 0}, "workspace_mb"),
    ("cuda", "fp16", {"bogus": 1}, "unknown TensorRT option"),
    ("cuda", "dynamic", {}, "not 'dynamic'"),
    ("cuda", "int8", {"int8_mode": "magic"}, "int8_mode"),
    ("cuda", "fp16", {"tensorrt_version": "7.2.3"}, "older than 8.0"),
])
def test_options_that_break_the_device_rules_are_one_line_errors(target, precision, extra, message):
    with pytest.raises(UsageError, match=message):
        resolve_settings(DEVICES[target], precision, extra, graph_inputs(make_onnx_model()))


def test_unset_options_are_ignored():
    settings = resolve_settings(DEVICES["jetson-orin"], "fp16", {"workspace_mb": None, "dla_core": None,
                                                                 "strict": None}, graph_inputs(make_onnx_model()))
    assert settings.workspace_mb == 2048 and settings.dla_core is None


def test_symbolic_batch_gets_a_profile_and_other_symbolic_axes_are_refused():
    settings = resolve_settings(DEVICES["cuda"], "fp16", {"max_batch": 4},
                                graph_inputs(make_onnx_model(batch="N")))
    assert settings.profiles[0].min == (1, 1, 8, 8) and settings.profiles[0].max == (4, 1, 8, 8)
    model = make_onnx_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    with pytest.raises(UsageError, match="besides the batch"):
        resolve_settings(DEVICES["cuda"], "fp16", {}, graph_inputs(model))


# ---- bundles per target ---------------------------------------------------------------------

def test_nano_int8_request_gives_fp16_bundle_with_the_note(nano):
    details = nano.artifact.manifest["metrics"]["details"]
    assert details["precision"] == "fp16" and details["requested_precision"] == "int8"
    assert any("no fast INT8" in note for note in details["notes"])
    assert "not_verified_here" in details or HERE_USABLE
    folder = nano.artifact.path
    assert nano.artifact.manifest["model_file"] == ("model.onnx" if not HERE_USABLE else details["engine"]["file"])
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"model.onnx", "bundle.json", "build_engine.sh", "verify_engine.py", "README.txt", "preprocess.json",
            "manifest.json", "samples/0_0.npy", "reference/0_0.npy"} <= names
    assert not {"model.int8.onnx", "calibration.cache"} & names
    assert onnx.load(str(folder / "model.onnx")).opset_import[0].version == 13
    assert "no fast INT8" in (folder / "README.txt").read_text()


def test_nano_trtexec_flags_follow_tensorrt_8_2(nano):
    flags = _script_flags(nano)
    assert flags[:2] == ["--onnx=model.onnx", "--fp16"]
    assert "--workspace=512" in flags and "--buildOnly" in flags
    assert not any(f.startswith(("--int8", "--memPoolSize", "--skipInference", "--useDLACore")) for f in flags)
    assert _bundle(nano)["trtexec"][0] == "/usr/src/tensorrt/bin/trtexec"


def test_build_script_passes_bash_n(nano, orin, xavier_dla):
    bash = shutil.which("bash")
    assert bash, "bash is needed to check build_engine.sh"
    for result in (nano, orin, xavier_dla):
        script = result.artifact.path / "build_engine.sh"
        assert os.access(script, os.X_OK)
        done = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_orin_int8_is_a_qdq_model_that_follows_tensorrt_rules(orin):
    folder = orin.artifact.path
    assert orin.artifact.manifest["model_file"] == ("model.int8.onnx" if not HERE_USABLE else
                                                    orin.artifact.manifest["model_file"])
    model = onnx.load(str(folder / "model.int8.onnx"))
    assert qdq_problems(model) == []
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:  # symmetric int8: every zero point an int8 zero
        assert inits[node.input[2]].dtype == np.int8 and not inits[node.input[2]].any()
        assert node.op_type == "QuantizeLinear" or node.input[0] not in inits  # no pre-quantized/int32 initializer
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight_dq = next(n for n in qdq if n.output[0] == conv.input[1])
    axis = next(a.i for a in weight_dq.attribute if a.name == "axis")
    assert axis == 0 and inits[weight_dq.input[1]].shape == (4,)  # per output channel of the 4x1x3x3 weight
    assert inits[conv.input[2]].dtype == np.float32  # the bias stays float: TensorRT quantizes it itself
    details = orin.artifact.manifest["metrics"]["details"]["int8"]
    assert details["tensorrt_form"]["parity"]["outputs"][0]["passed"]
    form = details["tensorrt_form"]  # the guard may keep a layer in float; each quantized layer had weight + bias
    assert form["weights"] >= 1 and form["biases"] == form["weights"]


def test_orin_qdq_model_runs_in_onnx_runtime_like_its_references(orin):
    done = _run_device_script(orin.artifact.path, "--self-check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("PASSED")


def test_orin_trtexec_flags(orin):
    flags = _script_flags(orin)
    assert flags[:2] == ["--onnx=model.int8.onnx", "--int8"]
    assert "--memPoolSize=workspace:2048" in flags and "--skipInference" in flags
    assert not any(f.startswith(("--calib", "--workspace=", "--fp16", "--buildOnly")) for f in flags)


def test_xavier_dla_flags(xavier_dla):
    flags = _script_flags(xavier_dla)
    assert {"--fp16", "--useDLACore=1", "--allowGPUFallback", "--memPoolSize=workspace:2048",
            "--buildOnly"} <= set(flags)
    assert _bundle(xavier_dla)["build_options"]["dla_core"] == 1


def test_implicit_int8_writes_a_tensorrt_calibration_cache(work: Path):
    result = _compile(work, "xavier_cache", "jetson-xavier", "int8", int8_mode="cache")
    folder = result.artifact.path
    text = (folder / "calibration.cache").read_text()
    assert text.splitlines()[0] == "TRT-8502-EntropyCalibration2"
    scales = read_tensorrt_cache(text)
    ranges = ActivationRanges.load(folder / "ranges.json")
    assert set(scales) == set(ranges.ranges)
    for name, (low, high) in ranges.ranges.items():
        assert scales[name] == pytest.approx(symmetric_scale(low, high), rel=1e-6)
    assert "--calib=calibration.cache" in _script_flags(result)
    bundle = _bundle(result)
    assert bundle["engine_sources"] == ["model.onnx", "calibration.cache"]
    assert device_script.check_calibration_cache(str(folder), bundle, "8.5.2.2") == []
    assert "recompile" in device_script.check_calibration_cache(str(folder), bundle, "8.6.1")[0]


def test_dynamic_batch_model_gets_shape_flags(work: Path):
    result = _compile(work, "dynamic", "cuda", "fp16", model="tiny_dynamic.onnx", max_batch=4)
    flags = _script_flags(result)
    assert {"--minShapes=x:1x1x8x8", "--optShapes=x:1x1x8x8", "--maxShapes=x:4x1x8x8"} <= set(flags)


def test_int8_without_calibration_samples_is_a_usage_error(work: Path):
    with pytest.raises(UsageError, match="needs calibration samples"):
        compile_artifact(work / "tiny.onnx", work / "nocalib", "tensorrt", CompileOptions("int8", "jetson-orin"),
                         VerifyOptions())


# ---- verify_engine.py -----------------------------------------------------------------------

def test_device_script_is_python_3_6_source():
    source = Path(device_script.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 6))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # 3.6's standard library plus what a Jetson has; no dataclasses, no __future__ annotations.
    assert imported <= {"argparse", "ctypes", "hashlib", "json", "os", "sys", "numpy", "tensorrt", "pycuda",
                        "cuda", "onnxruntime"}
    # No f-strings at all: 3.6 has them but not their '=' form, and none is the simplest rule to check.
    assert not any(isinstance(n, ast.JoinedStr) for n in ast.walk(tree))
    assert not any(isinstance(n, (ast.NamedExpr, ast.AnnAssign)) for n in ast.walk(tree))


def test_bundle_self_check_and_file_hashes(nano, tmp_path: Path):
    folder = tmp_path / "copy"
    shutil.copytree(nano.artifact.path, folder)  # what the user copies to the device
    done = _run_device_script(folder, "--self-check")
    assert done.returncode == 0 and "PASSED" in done.stdout, done.stdout + done.stderr
    assert _run_device_script(folder, "--check-bundle").returncode == 0
    sample = folder / "samples" / "0_0.npy"
    np.save(sample, np.load(sample) + 1)  # a changed file is caught before any engine is built from it
    done = _run_device_script(folder, "--check-bundle")
    assert done.returncode == 2 and "changed samples/0_0.npy" in done.stderr


def test_device_script_without_tensorrt_says_what_to_install(nano):
    if HERE_USABLE:
        pytest.skip("tensorrt is installed here")
    done = _run_device_script(nano.artifact.path)
    assert done.returncode == 2
    assert "tensorrt Python module is not installed" in done.stderr


def test_comparison_catches_wrong_outputs(nano):
    bundle = device_script.load_bundle(str(nano.artifact.path))
    samples = device_script.load_samples(str(nano.artifact.path), bundle)
    same = lambda feed: next(refs for f, refs in samples if f is feed)  # noqa: E731 - the references themselves
    passed, lines = device_script.compare_all(samples, same, bundle["check"])
    assert passed and all(line.startswith("ok") for line in lines)
    flipped = lambda feed: {k: -v for k, v in same(feed).items()}  # noqa: E731
    passed, lines = device_script.compare_all(samples, flipped, bundle["check"])
    assert not passed and lines[0].startswith("FAIL")
    strict = {"mode": "allclose", "atol": 1e-3, "rtol": 1e-3}
    assert not device_script.compare(np.ones(3), np.ones(3) + 0.01, strict)["passed"]
    assert device_script.compare(np.ones(3), np.ones(3) + 1e-4, strict)["passed"]
    assert "shape" in device_script.compare(np.ones(3), np.ones(4), strict)["problem"]


def test_device_comparison_fails_nan_on_either_side():
    """NaN against NaN used to pass on the Jetson too (issue #17, defect 2)."""
    nan = np.array([1.0, np.nan, 2.0])
    for check in ({"mode": "allclose", "atol": 1e-3, "rtol": 1e-3}, {"mode": "cosine", "min_cosine": 0.99}):
        both = device_script.compare(nan, nan, check)
        assert not both["passed"] and "the reference has 1 NaN/Inf values (the source model is broken)" in both["problem"]
        engine = device_script.compare(np.ones(3), np.array([1.0, np.inf, 1.0]), check)
        assert not engine["passed"] and engine["problem"] == "has 1 NaN/Inf values"


def _python36() -> str | None:
    found = shutil.which("python3.6")
    candidates = ([found] if found else []) + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6*/bin/python3.6")))
    for candidate in candidates:
        done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                              text=True)
        if done.returncode == 0 and done.stdout.strip() == "(3, 6)":
            return candidate
    return None


def test_device_script_runs_under_a_real_python_3_6(nano, tmp_path: Path):
    python = _python36()
    if python is None:
        pytest.skip("no Python 3.6 interpreter here")
    folder = nano.artifact.path
    assert subprocess.run([python, "-m", "py_compile", str(folder / "verify_engine.py")]).returncode == 0
    assert _run_device_script(folder, "--check-bundle", python=python).returncode == 0
    # The key formula must give the same hex digest in Python 3.6 as here.
    components = {"source_sha256": "ab" * 32, "tensorrt_version": "8.2.1.8", "gpu": "NVIDIA Tegra X1 (sm_53)",
                  "build_options": _bundle(nano)["build_options"]}
    code = ("import json, sys; sys.path.insert(0, %r); import verify_engine as v; "
            "print(v.engine_key(**json.loads(sys.argv[1])))" % str(folder))
    done = subprocess.run([python, "-c", code, json.dumps(components)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == engine_key(**components)


def test_device_comparison_runs_under_python_3_6_with_old_numpy(nano):
    """JetPack 4.6 has Python 3.6 and numpy 1.13; set EDGEKILN_PY36_SITE to a folder holding such a numpy."""
    python = _python36()
    site = os.environ.get("EDGEKILN_PY36_SITE", "")
    env = {**os.environ, "PYTHONPATH": site}
    if python is None or subprocess.run([python, "-c", "import numpy"], env=env).returncode != 0:
        pytest.skip("no Python 3.6 with numpy here (EDGEKILN_PY36_SITE)")
    code = ("import sys; sys.path.insert(0, %r); import verify_engine as v; b = v.load_bundle(%r); "
            "s = v.load_samples(%r, b); refs = dict((id(f), r) for f, r in s); "
            "ok, lines = v.compare_all(s, lambda f: refs[id(f)], b['check']); "
            "bad, _ = v.compare_all(s, lambda f: dict((k, -x) for k, x in refs[id(f)].items()), b['check']); "
            "print(ok, bad)") % ((str(nano.artifact.path),) * 3)
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


# ---- engine cache key -----------------------------------------------------------------------

def test_engine_key_changes_with_every_component(tmp_path: Path):
    base = dict(source_sha256="a" * 64, tensorrt_version="8.2.1.8", gpu="NVIDIA Tegra X1 (sm_53)",
                build_options={"precision": "fp16", "workspace_mb": 512, "dla_core": None})
    key = engine_key(**base)
    assert key == engine_key(**{**base, "build_options": dict(reversed(list(base["build_options"].items())))})
    changed = [engine_key(**{**base, "source_sha256": "b" * 64}),
               engine_key(**{**base, "tensorrt_version": "8.2.3.0"}),
               engine_key(**{**base, "gpu": "Orin (sm_87)"}),
               *(engine_key(**{**base, "build_options": {**base["build_options"], name: value}})
                 for name, value in (("precision", "fp32"), ("workspace_mb", 1024), ("dla_core", 0)))]
    assert len({key, *changed}) == 1 + len(changed)
    # A stored engine is reused only when the key recorded beside it matches, not because the file exists.
    entry = EngineKey(**base)
    (tmp_path / entry.file_name).write_bytes(b"engine")
    assert cached_engine(tmp_path, entry) is None
    (tmp_path / entry.file_name).with_suffix(".json").write_text(json.dumps({"key": "0" * 64}))
    assert cached_engine(tmp_path, entry) is None
    (tmp_path / entry.file_name).with_suffix(".json").write_text(entry.to_json())
    assert cached_engine(tmp_path, entry) == tmp_path / entry.file_name


def test_bundle_key_uses_the_engine_source_files(orin):
    folder = orin.artifact.path
    bundle = _bundle(orin)
    components = device_script.key_components(str(folder), bundle, trt_version="10.3.0", gpu="Orin (sm_87)")
    assert components["source_sha256"] == device_script.sources_sha256(str(folder), ["model.int8.onnx"])
    assert components["build_options"]["precision"] == "int8"


# ---- ONNX preparation -----------------------------------------------------------------------

def _opset18_model() -> onnx.ModelProto:
    """Conv, BatchNormalization, Relu, Add, Reshape and ReduceMean (axes as an input: opset 18)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
             *(numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), n)
               for n in ("scale", "bias", "mean", "var")),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
             numpy_helper.from_array(np.full(4, 0.5, np.float32), "offset")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
             helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=1),
             helper.make_node("Reshape", ["m", "shape"], ["f"]),
             helper.make_node("Add", ["f", "offset"], ["y"])]
    graph = helper.make_graph(nodes, "opset18", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_opset_down_conversion_keeps_outputs_equal_in_onnx_runtime():
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    model = _opset18_model()
    prepared = prepare_for_device(model, (8, 2, 1), 13, "jetson-nano")
    assert (prepared.opset_from, prepared.opset_to) == (18, 13)
    assert prepared.model.opset_import[0].version == 13
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    before = OnnxRuntimeRunner.from_model(model).run({"x": x})["y"]
    after = OnnxRuntimeRunner.from_model(prepared.model).run({"x": x})["y"]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_down_conversion_that_would_change_meaning_is_refused():
    model = _opset18_model()
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    reshape.attribute.append(helper.make_attribute("allowzero", 1))  # opset 14 semantics that 13 cannot express
    with pytest.raises(ConversionError, match="allowzero"):
        prepare_for_device(model, (8, 2, 1), 13, "jetson-nano")


def test_ops_the_device_tensorrt_cannot_parse_are_named():
    model = make_onnx_model()
    model.graph.node.append(helper.make_node("LayerNormalization", ["y", "fc_b"], ["z"]))
    model.graph.node.append(helper.make_node("MatMulInteger", ["a", "b"], ["c"]))
    problems = unparsable_ops(model, (8, 2, 1))
    assert problems == ["LayerNormalization needs TensorRT 8.6 or newer",
                        "MatMulInteger is not supported by TensorRT's ONNX parser"]
    assert unparsable_ops(model, (8, 6, 2)) == ["MatMulInteger is not supported by TensorRT's ONNX parser"]
    with pytest.raises(ConversionError, match="jetson-nano .TensorRT 8.2.1. cannot parse"):
        prepare_for_device(model, (8, 2, 1), 13, "jetson-nano")


# ---- backend contract -----------------------------------------------------------------------

def test_backend_is_registered_and_always_available_for_bundles():
    from backends.registry import get_backend

    backend = get_backend("tensorrt")
    assert isinstance(backend, TensorRTBackend)
    available, reason = backend.is_available()
    assert available
    assert reason.startswith("ready" if HERE_USABLE else "device bundle only:")
    assert backend.can_run()[0] == HERE_USABLE
    caps = backend.capabilities
    assert caps.precisions == ("fp32", "fp16", "int8") and caps.needs_gpu and not caps.precision_via_onnx


def test_running_a_bundle_without_tensorrt_is_a_clear_error(nano):
    if HERE_USABLE:
        pytest.skip("tensorrt and a GPU are usable here")
    from toolchain.predict import run_artifact

    np.save(nano.artifact.path.parent / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        run_artifact(nano.artifact.path, [str(nano.artifact.path.parent / "x.npy")])


# ---- on a machine with TensorRT and a GPU ---------------------------------------------------

gpu = pytest.mark.skipif(not HERE_USABLE, reason=f"TensorRT engine tests need tensorrt and a GPU: {WHY_NOT}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_is_built_and_verified_here(work: Path, precision: str):
    result = _compile(work, f"gpu_{precision}", "cuda", precision)
    manifest = result.artifact.manifest
    assert manifest["model_file"].startswith("engines/model-") and manifest["model_file"].endswith(".engine")
    assert result.parity and all(report.passed for report in result.parity)
    done = _run_device_script(result.artifact.path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.gpu
@gpu
def test_bundle_only_artifact_builds_its_engine_on_first_run(work: Path, tmp_path: Path, monkeypatch):
    from backends.tensorrt.runner import TensorRTRunner

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = _compile(work, "gpu_bundle", "cuda", "fp16")
    folder = result.artifact.path
    with TensorRTRunner.open(folder / "model.onnx", {}) as runner:
        feed = {"x": np.load(folder / "samples" / "0_0.npy")}
        out = runner.run(feed)["y"]
    ref = np.load(folder / "reference" / "0_0.npy")
    assert device_script.compare(ref, out, {"mode": "cosine", "min_cosine": 0.99})["passed"]
