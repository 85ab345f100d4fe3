"""MCU artifacts on their own instruction set: TFLM's host interpreter, and real TFLM on a Cortex-M4 under QEMU.

No mocks: the bundled Fashion-MNIST model and a MobileNetV2-sized ImageNet CNN at
96x96 are built for ``--target mcu``, their firmware compiled with
arm-none-eabi-gcc against the TFLM snapshot in ``shared/third_party/tflite-micro``
and run on ``qemu-system-arm -M mps2-an386``; outputs are compared with x86 LiteRT.
Compiled TFLM objects go to ``$EDGEKILN_TOOLS_CACHE`` (CI keeps it between runs)
or one folder per test session.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from backends.tflite import TFLiteBackend
from backends.tflite.firmware import check, cortex_m, host, qemu
from backends.tflite.firmware.tflm import TFLMTree
from backends.tflite.tool_cache import TOOLS_ENV
from helpers import files_in, run_main
from toolchain import api
from toolchain.errors import ConversionError, UsageError, VerificationError
from toolchain.examples import fashion_mnist

_AVAILABLE, _WHY = TFLiteBackend().is_available()
if not _AVAILABLE:
    pytest.skip(f"tflite backend not usable here: {_WHY}", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
TFLM_SNAPSHOT = REPO.parent / "shared" / "third_party" / "tflite-micro"
CALIB = {"calib_size": 48, "holdout": 16, "no_cache": True}


def _tflm_root() -> Path | None:
    return TFLM_SNAPSHOT if (TFLM_SNAPSHOT / "SOURCES.md").is_file() else None


def _cortex_m4_missing() -> str | None:
    root = _tflm_root()
    if root is None:
        return f"no TFLM snapshot at {TFLM_SNAPSHOT}"
    return check.cortex_m4_missing(TFLMTree(root))


needs_cortex_m4 = pytest.mark.skipif(_cortex_m4_missing() is not None, reason=f"{_cortex_m4_missing()}")


@pytest.fixture(scope="session")
def tools_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    explicit = os.environ.get(TOOLS_ENV)
    return Path(explicit) if explicit else tmp_path_factory.mktemp("edgekiln-tools")


@pytest.fixture
def with_tflm(monkeypatch: pytest.MonkeyPatch, tools_cache: Path) -> Path:
    root = _tflm_root()
    assert root is not None
    monkeypatch.setenv("EDGEKILN_TFLM_ROOT", str(root))
    monkeypatch.setenv(TOOLS_ENV, str(tools_cache))
    return root


@pytest.fixture(scope="module")
def example_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("mcu_example")
    result = api.convert(fashion_mnist.weights_path(), folder / "model.onnx", model_class=fashion_mnist.MODEL_CLASS,
                         inputs=[f"{fashion_mnist.INPUT_NAME}:1x1x28x28"])
    return result.output


def _compile_example(onnx_path: Path, out: Path, **extra):
    return api.compile(onnx_path, out, target="mcu", calib=fashion_mnist.samples_dir(), **CALIB, **extra)


@pytest.fixture(scope="module")
def example_mcu(example_onnx: Path, tools_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """The bundled example built for mcu with TFLM, the toolchain and QEMU present (module-scoped: slow)."""
    if _cortex_m4_missing():
        pytest.skip(_cortex_m4_missing())
    import os

    tools = str(tools_cache)
    saved = {k: os.environ.get(k) for k in ("EDGEKILN_TFLM_ROOT", TOOLS_ENV)}
    os.environ["EDGEKILN_TFLM_ROOT"], os.environ[TOOLS_ENV] = str(_tflm_root()), tools
    try:
        yield _compile_example(example_onnx, tmp_path_factory.mktemp("mcu_built") / "mcu")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _details(result) -> dict:
    return result.artifact.manifest["metrics"]["details"]


def _where(details: dict, where: str) -> dict:
    (entry,) = [e for e in details["executed_on"] if e["where"] == where]
    return entry


# ---- the bundled example on the Cortex-M4 ------------------------------------------------------------

@needs_cortex_m4
def test_bundled_example_runs_on_cortex_m4_within_one_lsb_with_measured_arena_flash_and_ram(example_mcu):
    details = _details(example_mcu)
    run = _where(details, check.CORTEX_M4)
    assert run["max_diff_lsb"] <= 1 and run["tflm_revision"] == TFLMTree(_tflm_root()).revision
    arena = details["mcu"]["arena"]
    # Measured, not estimated: at least the activations TFLM must hold at once, and what sizes the config.
    assert arena["activations"] <= run["arena_used_bytes"] < arena["estimate"] * 2
    assert arena["measured_on"] == check.CORTEX_M4 and arena["measured_bytes"] == run["arena_used_bytes"]
    assert arena["total"] == check.align16(run["arena_used_bytes"] * check.SCRATCH_MARGIN) == run["arena_bytes"]
    config = (example_mcu.artifact.path / "model_config.h").read_text()
    assert f"kTensorArenaSize = {arena['total']};" in config and "arena_used_bytes()" in config
    sizes = run["sizes"]
    model_bytes = (example_mcu.artifact.path / "model.tflite").stat().st_size
    assert sizes["model_bytes"] == model_bytes  # the map's g_model_data section is the model
    assert run["flash_bytes"] == sizes["text"] + sizes["rodata"] + sizes["data"] > model_bytes
    assert run["ram_bytes"] == sizes["data"] + sizes["bss"] >= sizes["arena_bytes"] == arena["total"]
    host_run = _where(details, check.HOST_TFLM)
    assert host_run["max_diff_lsb"] <= 1 and host_run["arena_bytes"] >= run["arena_used_bytes"]  # 64-bit host
    assert details["not_executed_on"] == []
    assert any(n.startswith("Cortex-M4 under QEMU") for n in details["notes"])
    readme = (example_mcu.artifact.path / "README.md").read_text()
    assert run["tflm_revision"] in readme and f"{run['arena_used_bytes']} bytes" in readme


@needs_cortex_m4
def test_firmware_prints_the_outputs_litert_gives_for_the_bundled_test_vector(example_mcu, tmp_path, with_tflm):
    folder = example_mcu.artifact.path
    tree = TFLMTree(with_tflm)
    vector = check.TestVector.load(folder / "test_vector.npz")
    assert vector.inputs[0].dtype == np.int8 and vector.inputs[0].shape == (1, 28, 28, 1)
    assert vector.inputs[0].std() > 10  # a real garment image, not a constant
    firmware = cortex_m.build(folder, tree, cortex_m.cache_root_default(), tmp_path,
                              kernels=tree.kernel_sources(_details(example_mcu)["mcu"]["resolver_calls"]))
    assert firmware.compiled == 0  # every TFLM object came from the cache the build filled
    ran = qemu.run(firmware.elf)
    got = qemu.as_arrays(ran, vector.expected)[0]
    fresh = check.litert_outputs((folder / "model.tflite").read_bytes(), [vector.inputs])[0][0]
    assert np.abs(got.astype(int) - fresh.astype(int)).max() <= 1
    assert int(np.argmax(got)) == int(np.argmax(fresh)) and len(set(got.ravel().tolist())) > 3
    assert ran.max_diff_lsb <= 1


@needs_cortex_m4
def test_makefile_names_the_same_flags_and_sources_as_the_checked_build(example_mcu, with_tflm):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    folder = example_mcu.artifact.path
    dry = subprocess.run([make, "-n", "-C", str(folder), f"TFLM_ROOT={with_tflm}"], capture_output=True,
                         text=True, check=True).stdout
    assert "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16" in dry and "-DTF_LITE_STATIC_MEMORY" in dry
    for source in ("tensorflow/lite/micro/kernels/conv.cc", "tensorflow/lite/micro/micro_interpreter.cc",
                   "main.cc", "board/mps2-an386/startup.c"):
        assert source in dry
    assert "kernels/depthwise_conv.cc" not in dry  # only the kernels this model's ops need
    assert "linker.ld" in dry and "firmware.elf" in dry


@needs_cortex_m4
def test_verify_command_rebuilds_runs_and_records_in_the_manifest(example_mcu, tmp_path, with_tflm, capsys):
    copy = tmp_path / "mcu"
    shutil.copytree(example_mcu.artifact.path, copy)
    code, out, err = run_main(["verify", str(copy), "--on", "qemu-cortex-m4", "--tflm-root", str(with_tflm)], capsys)
    assert code == 0, err
    assert "Cortex-M4 under QEMU mps2-an386: " in out and "x86 LiteRT" in out and "recorded in" in out
    manifest = json.loads((copy / "manifest.json").read_text())
    entries = [e for e in manifest["metrics"]["details"]["executed_on"] if e["where"] == check.CORTEX_M4]
    assert len(entries) == 1 and entries[0]["arena_used_bytes"] == _where(_details(example_mcu),
                                                                          check.CORTEX_M4)["arena_used_bytes"]


# ---- an ImageNet-sized model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mobilenet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MobileNetV2 (width 0.35, 1000 classes) at 96x96, as MCU users run it; BatchNorm settled on real images."""
    torch = pytest.importorskip("torch")
    from PIL import Image

    from bench.models import MobileNetV2, settle_batchnorm

    folder = tmp_path_factory.mktemp("mobilenet")
    files = sorted(fashion_mnist.samples_dir().rglob("*.png"))[::5][:48]
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    images = np.stack([(np.asarray(Image.open(p).convert("RGB").resize((96, 96), Image.BILINEAR), np.float32)
                        .transpose(2, 0, 1) / 255 - mean) / std for p in files])
    torch.manual_seed(0)
    network = MobileNetV2(num_classes=1000, width=0.35)
    settle_batchnorm(network, torch.from_numpy(images).split(16), 0)
    network.eval()
    traced = folder / "mobilenet.pt"
    torch.jit.save(torch.jit.trace(network, torch.zeros(1, 3, 96, 96)), traced)
    return api.convert(traced, folder / "mobilenet.onnx", inputs=["input:1x3x96x96"]).output


@needs_cortex_m4
def test_mobilenet_v2_at_96x96_runs_on_cortex_m4_within_one_lsb(mobilenet_onnx, tmp_path, with_tflm):
    # Random weights lose more to INT8 than a trained network (cosine 0.8-0.9 against FP32): the accuracy guard
    # and FP32 parity are tested elsewhere; checked here is TFLM on the Cortex-M4 against LiteRT, same int8 model.
    result = api.compile(mobilenet_onnx, tmp_path / "mcu", target="mcu", calib=fashion_mnist.samples_dir(),
                         preprocess="imagenet", guard=False, min_cosine=0.75, **CALIB)
    details = _details(result)
    run = _where(details, check.CORTEX_M4)
    assert run["max_diff_lsb"] <= 1
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"} <= set(details["mcu"]["ops"])
    assert run["sizes"]["model_bytes"] > 1_000_000 and run["flash_bytes"] > run["sizes"]["model_bytes"]
    assert run["arena_used_bytes"] >= details["mcu"]["arena"]["activations"]
    assert _where(details, check.HOST_TFLM)["max_diff_lsb"] <= 1
    vector = check.TestVector.load(result.artifact.path / "test_vector.npz")
    assert vector.inputs[0].shape == (1, 96, 96, 3) and vector.expected[0].shape == (1, 1000)


# ---- without the Cortex-M4 tools: the host interpreter still runs ---------------------------------------

def test_without_tflm_the_host_interpreter_checks_and_the_build_says_what_did_not_run(example_onnx, tmp_path,
                                                                                       monkeypatch):
    if host.missing():
        pytest.skip(host.missing())
    monkeypatch.delenv("EDGEKILN_TFLM_ROOT", raising=False)
    result = _compile_example(example_onnx, tmp_path / "mcu")
    details = _details(result)
    host_run = _where(details, check.HOST_TFLM)
    assert host_run["inputs"] == check.HOST_SAMPLES and host_run["max_diff_lsb"] <= 1
    assert host_run["arena_bytes"] >= details["mcu"]["arena"]["activations"]
    (missing,) = details["not_executed_on"]
    assert missing["where"] == check.CORTEX_M4 and "EDGEKILN_TFLM_ROOT" in missing["why"]
    assert any(n.startswith("not run on a Cortex-M4: no TFLM source tree") for n in details["notes"])
    folder = result.artifact.path
    assert "Not checked on a Cortex-M build" in (folder / "README.md").read_text()
    # Without a tree the Makefile compiles every kernel (the linker keeps what the model uses).
    assert "$(wildcard $(TFLM_ROOT)/tensorflow/lite/micro/kernels/*.cc)" in (folder / "Makefile").read_text()
    assert {"main.cc", "test_vector.cc", "board/mps2-an386/linker.ld"} <= set(files_in(folder))


def test_host_arena_bisection_finds_the_smallest_arena_tflm_accepts(example_onnx, tmp_path, monkeypatch):
    if host.missing():
        pytest.skip(host.missing())
    monkeypatch.delenv("EDGEKILN_TFLM_ROOT", raising=False)
    model = (_compile_example(example_onnx, tmp_path / "mcu").artifact.path / "model.tflite").read_bytes()
    smallest = host.smallest_arena(model, 1 << 20)
    assert host._fits(model, smallest) and not host._fits(model, smallest - 16)


# ---- bad input: one line, nothing written ----------------------------------------------------------------

def _one_error_line(code: int, err: str, *fragments: str) -> None:
    assert code != 0 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    others = [line for line in err.splitlines() if line.strip() and not line.startswith(("error:", "  "))]
    assert others == [], err  # everything else is an indented progress line
    for fragment in fragments:
        assert fragment in errors[0]


def test_a_broken_tflm_root_is_one_line_for_verify_and_for_compile(example_onnx, tmp_path, capsys, monkeypatch):
    broken = tmp_path / "tflm"
    (broken / "tensorflow/lite/micro").mkdir(parents=True)
    (broken / "tensorflow/lite/micro/micro_interpreter.cc").write_text("// no headers, no third_party\n")
    mcu = tmp_path / "mcu"
    monkeypatch.delenv("EDGEKILN_TFLM_ROOT", raising=False)
    _compile_example(example_onnx, mcu)
    code, _, err = run_main(["verify", str(mcu), "--on", "qemu-cortex-m4", "--tflm-root", str(broken)], capsys)
    _one_error_line(code, err, "is not a usable TensorFlow Lite Micro tree", "flatbuffers headers")
    assert code == UsageError.exit_code
    monkeypatch.setenv("EDGEKILN_TFLM_ROOT", str(broken))
    with pytest.raises(UsageError, match="not a usable TensorFlow Lite Micro tree"):
        _compile_example(example_onnx, tmp_path / "mcu2")
    assert not (tmp_path / "mcu2").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".mcu2")]
    code, _, err = run_main(["verify", str(mcu), "--on", "qemu-cortex-m4"], capsys)  # env root is broken too
    _one_error_line(code, err, "not a usable TensorFlow Lite Micro tree")


@needs_cortex_m4
def test_flash_and_ram_budgets_are_checked_on_the_measured_firmware(example_onnx, example_mcu, tmp_path, with_tflm):
    run = _where(_details(example_mcu), check.CORTEX_M4)
    model_kib = run["sizes"]["model_bytes"] / 1024
    # The model alone fits, the firmware (TFLM runtime + model) does not: only the linker map can tell.
    flash_kb = round((model_kib + run["flash_bytes"] / 1024) / 2)
    with pytest.raises(VerificationError, match=rf"firmware needs {run['flash_bytes'] / 1024:.1f} KiB of flash .*"
                                                rf"> --flash-kb {flash_kb}"):
        _compile_example(example_onnx, tmp_path / "flash", backend_options={"flash_kb": flash_kb})
    assert [p.name for p in tmp_path.iterdir()] == []  # neither the folder nor its staging copy
    # RAM: the same check on the same measured record (data + bss, the arena included); the budget must hold
    # the arena, which the model-only estimate check before the build could not know.
    ram_kb = round(run["arena_used_bytes"] / 1024 / 2)
    with pytest.raises(VerificationError, match=rf"{run['ram_bytes'] / 1024:.1f} KiB of RAM \(data \+ bss, "
                                                rf"tensor arena .*> --ram-kb {ram_kb}"):
        check.check_budgets(run, None, ram_kb)
    check.check_budgets(run, run["flash_bytes"] / 1024, run["ram_bytes"] / 1024)  # exactly enough passes


@needs_cortex_m4
def test_an_arena_smaller_than_tflm_needs_is_reported_with_the_measured_need(example_mcu, tmp_path, with_tflm,
                                                                             capsys):
    copy = tmp_path / "mcu"
    shutil.copytree(example_mcu.artifact.path, copy)
    config = copy / "model_config.h"
    config.write_text(re.sub(r"kTensorArenaSize = \d+;", "kTensorArenaSize = 4096;", config.read_text()))
    before = (copy / "manifest.json").read_bytes()
    code, _, err = run_main(["verify", str(copy), "--on", "qemu-cortex-m4"], capsys)
    used = _where(_details(example_mcu), check.CORTEX_M4)["arena_used_bytes"]
    _one_error_line(code, err, "kTensorArenaSize in model_config.h (4096 B) is too small", f"needs {used} B")
    assert code == VerificationError.exit_code and (copy / "manifest.json").read_bytes() == before


@needs_cortex_m4
def test_an_op_the_tflm_tree_lacks_is_one_line(example_mcu, tmp_path, with_tflm, capsys):
    # An older TFLM without MAX_POOL_2D: a copy of the snapshot whose resolver lacks AddMaxPool2D.
    old = tmp_path / "tflm-old"
    shutil.copytree(with_tflm, old, ignore=shutil.ignore_patterns("signal"))
    resolver = old / "tensorflow/lite/micro/micro_mutable_op_resolver.h"
    text = resolver.read_text()
    start = text.index("  TfLiteStatus AddMaxPool2D(")
    resolver.write_text(text[:start] + text[text.index("\n  }\n", start) + 5:])
    code, _, err = run_main(["verify", str(example_mcu.artifact.path), "--on", "qemu-cortex-m4", "--tflm-root",
                             str(old)], capsys)
    _one_error_line(code, err, "has no AddMaxPool2D (ops this model uses)")
    assert code == ConversionError.exit_code


def test_an_op_tflite_micro_lacks_fails_the_mcu_build_before_anything_is_written(tmp_path):
    model = _gelu_model()
    import onnx

    onnx.save(model, tmp_path / "gelu.onnx")
    images = tmp_path / "images"
    from helpers import write_images

    write_images(images, count=24, size=8)
    with pytest.raises(ConversionError, match="TensorFlow Lite Micro has no kernel for GELU"):
        api.compile(tmp_path / "gelu.onnx", tmp_path / "mcu", target="mcu", calib=images, calib_size=16, holdout=8,
                    no_cache=True)
    assert not (tmp_path / "mcu").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".mcu")]


def _gelu_model():
    """Conv -> Gelu (opset 20) -> flatten -> Gemm: TFLite has an int8 GELU kernel, TFLite Micro has none."""
    import onnx
    from onnx import helper

    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "w"),
             onnx.numpy_helper.from_array((rng.standard_normal((3, 256)) * 0.1).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Gelu", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model
