"""A build delivers every target that passes, checks everything it can before the first stage, and
adapts its sample split to the folder (issue 14). Real parts only: the bundled PyTorch example and
small ONNX models, real Fashion-MNIST images, ONNX Runtime, onnx2tf/LiteRT and the accuracy guard."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from helpers import assert_one_line_error, files_in, make_onnx_model, run_main
from toolchain import api
from toolchain.errors import InputFileError, UsageError, VerificationError, clip, first_line
from toolchain.examples import fashion_mnist as example

pytest.importorskip("torch")

SAMPLES = example.samples_dir()
# An INT8 model cannot reach this cosine: the guard refuses it after trying layers in float.
UNREACHABLE_COSINE = 0.9999999


def _photos(folder: Path, count: int, start: int = 0) -> Path:
    """``count`` real Fashion-MNIST images from the bundled samples, copied flat (no class folders)."""
    folder.mkdir(parents=True)
    for path in sorted(SAMPLES.rglob("*.png"))[start:start + count]:
        shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
    return folder


def _onnx(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _lines(calls: list[str], fragment: str) -> list[str]:
    return [line for line in calls if fragment in line]


# ---- a failing target does not take the others down ------------------------------------------


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """The bundled example for x86 and x86:int8 with a cosine budget no INT8 model meets."""
    root = tmp_path_factory.mktemp("partial")
    states: list[tuple[str, str]] = []
    result = api.build(None, root / "out", targets=["x86", "x86:int8"], bench_iterations=2, cache_dir=root / "cache",
                       min_cosine=UNREACHABLE_COSINE,
                       progress=lambda stage, i, n, state, s: states.append((stage.name, state)))
    return root, result, states


def test_a_refused_int8_target_leaves_the_others_and_the_report(partial):
    root, result, states = partial
    out = root / "out"
    assert [t["artifact"] for t in result.failed] == ["x86-int8"] and not result.ok
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.simplified.onnx", "report.html",
                                                      "report.json", "x86"]
    assert (out / "x86" / "manifest.json").is_file()
    assert not list(out.rglob("*.tmp")) and not list(root.glob(".*.tmp"))
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 3 and report["failed"] == ["x86-int8"]
    by_name = {t["artifact"]: t for t in report["targets"]}
    assert by_name["x86"]["status"] == "ok" and by_name["x86"]["agreement"]["top1_agreement"] == 1.0
    refused = by_name["x86-int8"]
    assert refused["status"] == "refused" and refused["size_bytes"] is None
    assert refused["error"]["kind"] == "VerificationError" and refused["error"]["stage"] == "compile x86-int8"
    assert "INT8 misses the accuracy budget" in refused["error"]["message"]
    # What the guard tried travels with the error: plain INT8 first, then layers kept in float.
    assert refused["tried"][0].startswith("all layers INT8") and len(refused["tried"]) >= 2
    assert "layer(s) in float" in refused["tried"][-1]
    assert refused["guard"]["attempts"] and refused["guard"]["passed"] is False
    assert ("compile x86-int8", "failed") in states and ("measure x86-int8", "skipped") in states
    rows = {s["stage"]: s for s in report["stages"]}
    assert rows["compile x86-int8"]["status"] == "refused" and rows["measure x86-int8"]["status"] == "skipped"


def test_the_html_report_says_refused_and_why(partial):
    root, _, _ = partial
    html = (root / "out" / "report.html").read_text()
    row = html[html.index('data-target="x86-int8"'):]
    row = row[:row.index("</tr>")]
    assert 'data-status="refused"' in row and "<b>refused</b>" in row
    assert "INT8 misses the accuracy budget" in row and "tried: all layers INT8" in row
    assert "1 not delivered (x86-int8)" in html
    assert "Not plotted: x86-int8 (refused)" in html


def test_a_failed_target_is_not_cached_and_a_rerun_retries_it(partial, tmp_path):
    root, first, _ = partial
    plan = api.build(None, tmp_path / "again", targets=["x86", "x86:int8"], bench_iterations=2,
                     cache_dir=root / "cache", min_cosine=UNREACHABLE_COSINE, dry_run=True)
    cached = {s.name: s.cached for s in plan}
    assert cached["compile x86"] and cached["measure x86"] and not cached["compile x86-int8"]
    again = api.build(None, tmp_path / "again", targets=["x86", "x86:int8"], bench_iterations=2,
                      cache_dir=root / "cache", min_cosine=UNREACHABLE_COSINE)
    rows = {s["stage"]: s for s in again.stages}
    assert rows["compile x86"]["cached"] and rows["compile x86-int8"]["status"] == "refused"
    assert not rows["compile x86-int8"]["cached"]  # run again, refused again
    assert [t["artifact"] for t in again.failed] == ["x86-int8"]


def test_cli_exits_8_naming_the_target_and_fail_fast_writes_nothing(partial, tmp_path, capsys):
    root, _, _ = partial
    base = ["build", "--target", "x86", "--target", "x86:int8", "--bench-iterations", "0", "--cache-dir",
            str(root / "cache"), "--min-cosine", str(UNREACHABLE_COSINE)]
    code, out, err = run_main([*base, "-o", str(tmp_path / "b"), "-q"], capsys)
    assert code == 8 and out == ""
    assert_one_line_error(code, err, "1 of 2 targets failed: x86-int8 refused (INT8 misses the accuracy budget",
                          f"The other 1 target and the report were written to {tmp_path / 'b'}/")
    code, out, err = run_main([*base, "-o", str(tmp_path / "logged")], capsys)
    assert code == 8 and "compile x86-int8: FAILED after" in err and "measure x86-int8: skipped" in err
    assert "x86-int8 refused: INT8 misses" in out and "tried: all layers INT8" in out and "│ refused" in out
    code, out, err = run_main([*base, "-o", str(tmp_path / "ff"), "-q", "--fail-fast"], capsys)
    assert_one_line_error(code, err, "target 'x86:int8': INT8 misses the accuracy budget")
    assert code == VerificationError.exit_code and not (tmp_path / "ff").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "logged"]  # no staging folder left behind


def test_fail_fast_from_the_api_and_a_recipe(tmp_path):
    with pytest.raises(VerificationError, match="^target 'x86:int8': INT8 misses"):
        api.build(None, tmp_path / "out", targets=["x86", "x86:int8"], bench_iterations=0, fail_fast=True,
                  min_cosine=UNREACHABLE_COSINE, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()
    from toolchain.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("targets: [x86]\nfail-fast: true\n")
    assert load_recipe(recipe).values == {"targets": ["x86"], "fail_fast": True}


# ---- checked before the first stage ------------------------------------------------------------


def _refused_before_any_stage(tmp_path: Path, error: type, match: str, **options) -> None:
    """The build fails in planning: no stage starts, nothing is written or cached, also with dry_run."""
    started: list[str] = []
    for dry_run in (True, False):
        began = time.perf_counter()
        with pytest.raises(error, match=match):
            api.build(output=tmp_path / "out", cache_dir=tmp_path / "cache", bench_iterations=0, dry_run=dry_run,
                      progress=lambda stage, *_: started.append(stage.name), **options)
        assert time.perf_counter() - began < 20
    assert started == [] and not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_an_int8_target_without_calib_names_the_target(tmp_path):
    source = _onnx(tmp_path, make_onnx_model())
    _refused_before_any_stage(tmp_path, UsageError, r"^target 'rpi4' builds INT8 \(its default precision\), which "
                                                    "needs calibration samples", source=source, targets=["rpi4"])
    _refused_before_any_stage(tmp_path, UsageError, "^targets 'x86:int8', 'mcu' build INT8",
                              source=source, targets=["x86", "x86:int8", "mcu"])


def test_three_images_with_default_sizes_are_too_few(tmp_path):
    _refused_before_any_stage(tmp_path, InputFileError, "has only 3 images; calibration needs at least 16",
                              source=_onnx(tmp_path, make_onnx_model()), targets=["x86:int8"],
                              calib=_photos(tmp_path / "three", 3))


def test_explicit_sizes_that_do_not_fit_are_refused_with_a_split_that_does(tmp_path):
    _refused_before_any_stage(tmp_path, InputFileError,
                              r"only 91 images for --calib-size 80 plus --holdout 40.*--calib-size 55 --holdout 36",
                              source=_onnx(tmp_path, make_onnx_model()), targets=["x86:int8"],
                              calib=_photos(tmp_path / "p", 91), calib_size=80, holdout=40)
    _refused_before_any_stage(tmp_path, UsageError, "accuracy guard of 'x86:int8' needs held-out samples",
                              source=tmp_path / "m.onnx", targets=["x86:int8"], calib=tmp_path / "p", calib_size=91)


def test_identical_images_are_refused(tmp_path):
    folder = tmp_path / "same"
    folder.mkdir()
    first = sorted(SAMPLES.rglob("*.png"))[0]
    for i in range(20):
        shutil.copy(first, folder / f"copy_{i:02d}.png")
    _refused_before_any_stage(tmp_path, InputFileError, "all 20 images in .* are identical files",
                              source=_onnx(tmp_path, make_onnx_model()), targets=["x86:int8"], calib=folder)


def test_a_fixed_batch_of_10_is_refused_for_calibration(tmp_path, torch_models):
    """The CenterFace case: a model exported with batch 10, while calibration feeds one sample at a time."""
    photos = _photos(tmp_path / "p", 40)
    _refused_before_any_stage(tmp_path, UsageError, r"input 'x' has a fixed batch of 10 \(10x1x8x8\).*'x86:int8'.*"
                                                    "Re-export the model with batch 1",
                              source=_onnx(tmp_path, make_onnx_model(batch=10)), targets=["x86:int8"], calib=photos)
    tiny = {"model_class": f"{torch_models['class_file']}:TinyNet", "weights": torch_models["state_dict"]}
    _refused_before_any_stage(tmp_path, UsageError, "fixed batch of 10.*Give --input with batch 1, or pass "
                                                    "--dynamic-batch", targets=["x86:int8"], calib=photos,
                              inputs=["x:10x1x8x8"], **tiny)
    result = api.build(output=tmp_path / "out", targets=["x86", "x86:int8"], calib=photos, inputs=["x:10x1x8x8"],
                       dynamic_batch=True, cache_dir=tmp_path / "cache", bench_iterations=0, **tiny)
    assert result.ok and [t["status"] for t in result.targets] == ["ok", "ok"]
    assert result.split == {"available": 40, "calibration": 24, "holdout": 16, "chosen": True}


def test_inputs_the_samples_cannot_feed_are_refused(tmp_path):
    photos = _photos(tmp_path / "p", 20)
    plain = _onnx(tmp_path, make_onnx_model())
    two = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two",
                            [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 1, 8, 8]) for n in "ab"],
                            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 8, 8])])
    model = helper.make_model(two, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    _refused_before_any_stage(tmp_path, UsageError, r"calibration feeds one input, and this model has 2 \('a', 'b'\)",
                              source=_onnx(tmp_path, model, "two.onnx"), targets=["x86:int8"], calib=photos)
    dynamic = make_onnx_model()
    for axis, name in ((2, "h"), (3, "w")):
        dynamic.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    _refused_before_any_stage(tmp_path, UsageError, r"input 'x' has unknown size at axis 2 \('h'\)",
                              source=_onnx(tmp_path, dynamic, "hw.onnx"), targets=["x86:int8"], calib=photos)
    np.save(tmp_path / "wrong.npy", np.random.default_rng(0).random((40, 1, 4, 4), dtype=np.float32))
    _refused_before_any_stage(tmp_path, UsageError, r"have shape 1x4x4 but input 'x' expects 1x8x8",
                              source=plain, targets=["x86:int8"], calib=tmp_path / "wrong.npy")


def test_bad_targets_in_the_cli_are_one_line_before_anything_runs(tmp_path, capsys):
    source = _onnx(tmp_path, make_onnx_model())
    code, _, err = run_main(["build", str(source), "--target", "rpi4", "-o", str(tmp_path / "out"), "--cache-dir",
                             str(tmp_path / "cache")], capsys)
    assert_one_line_error(code, err, "target 'rpi4' builds INT8", "--calib DIR")
    assert code == UsageError.exit_code and "--precision" not in err
    assert files_in(tmp_path) == ["m.onnx"]


# ---- a folder of any size ----------------------------------------------------------------------


def test_a_91_image_folder_with_default_options_builds_every_target(tmp_path):
    """The bundled example on 91 real images: the split adapts (55 + 36) and every target is written."""
    photos = _photos(tmp_path / "photos", 91, start=100)
    said: list[str] = []
    result = api.build(None, tmp_path / "out", targets=["x86", "x86:int8", "rpi4", "mcu", "jetson-nano"],
                       calib=photos, cache_dir=tmp_path / "cache", bench_iterations=2, announce=said.append)
    assert result.ok, [t.get("error") for t in result.failed]
    assert [t["artifact"] for t in result.targets] == ["x86", "x86-int8", "rpi4", "mcu", "jetson-nano"]
    assert all((tmp_path / "out" / t["artifact"] / "manifest.json").is_file() for t in result.targets)
    assert _lines(said, "calibrating on 55 of 91 images in photos/, 36 held out (the default for 91 images")
    assert result.split == {"available": 91, "calibration": 55, "holdout": 36, "chosen": True}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["decisions"] == said
    int8 = next(t for t in result.targets if t["artifact"] == "x86-int8")
    assert int8["accuracy"]["images"] == 300  # the bundled labels, measured on every variant


def test_inferred_preprocessing_is_announced_once(tmp_path, capsys):
    source = _onnx(tmp_path, make_onnx_model())
    photos = _photos(tmp_path / "p", 20)
    code, _, err = run_main(["build", str(source), "--target", "x86", "--target", "x86:int8", "--calib", str(photos),
                             "--bench-iterations", "0", "--cache-dir", str(tmp_path / "cache"), "-o",
                             str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert len(_lines(err.splitlines(), "preprocessing inferred from input 'x' (1x1x8x8): 8x8x1 gray")) == 1
    assert len(_lines(err.splitlines(), "calibrating on 10 of 20 images in p/, 10 held out")) == 1
    code, _, err = run_main(["build", str(source), "--target", "x86", "--calib", str(photos), "--preprocess",
                             "raw255", "--bench-iterations", "0", "--cache-dir", str(tmp_path / "cache"), "-o",
                             str(tmp_path / "out2"), "--dry-run"], capsys)
    assert code == 0 and "inferred" not in err  # chosen, so nothing to announce


def test_calibrate_says_the_split_it_chose(tmp_path, capsys):
    source = _onnx(tmp_path, make_onnx_model())
    photos = _photos(tmp_path / "p", 91)
    code, out, err = run_main(["calibrate", str(source), "--calib", str(photos), "-o", str(tmp_path / "q.onnx"),
                               "--no-cache", "--no-guard"], capsys)
    assert code == 0, err
    assert "55 calibration + 36 holdout samples" in out and "the default for 91 images" in out


def test_prune_and_distill_holdout_adapts_to_the_folder(tmp_path):
    from toolchain.compress.data import load_images

    split = load_images(_photos(tmp_path / "p", 91), example.INPUT_SHAPE, holdout=None, count=None, seed=0,
                        preprocess=None, labels=False)
    assert (len(split.train), len(split.held_out)) == (55, 36)
    assert "held out: the default for this folder" in split.summary
    with pytest.raises(UsageError, match="has 12 images, too few"):
        load_images(_photos(tmp_path / "small", 12), example.INPUT_SHAPE, holdout=None, count=None, seed=0,
                    preprocess=None, labels=False)


# ---- smaller items -----------------------------------------------------------------------------


def test_a_model_far_too_large_for_an_mcu_is_warned_about_or_refused(tmp_path):
    rng = np.random.default_rng(0)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1500])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1500])],
                              [numpy_helper.from_array(rng.standard_normal((1500, 1500)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = _onnx(tmp_path, model, "big.onnx")  # 2.25 M weights: 9 MB as FP32, at least 2.15 MiB as INT8
    np.save(tmp_path / "x.npy", rng.standard_normal((40, 1500)).astype(np.float32))
    said: list[str] = []
    api.build(source, tmp_path / "out", targets=["mcu"], calib=tmp_path / "x.npy", cache_dir=tmp_path / "cache",
              dry_run=True, announce=said.append)
    warning = _lines(said, "warning: target 'mcu': the model has 2.25 M weights, at least 2.15 MiB as INT8")
    assert warning and "2 MiB of flash" in warning[0]
    began = time.perf_counter()
    with pytest.raises(UsageError, match="target 'mcu': the model has 2.25 M weights.*more than --flash-kb 512"):
        api.compile(source, tmp_path / "art", target="mcu", calib=tmp_path / "x.npy",
                    backend_options={"flash_kb": 512})
    assert time.perf_counter() - began < 10 and not (tmp_path / "art").exists()  # refused before converting


def test_inspect_on_a_pytorch_file_says_what_it_is(torch_models, capsys):
    code, _, err = run_main(["inspect", str(torch_models["torchscript"])], capsys)
    assert_one_line_error(code, err, "'tiny.pt' is a PyTorch file", "not an ONNX or TFLite model",
                          "edgekiln convert", "--input NAME:SHAPE")
    assert code == InputFileError.exit_code and "not a valid ONNX model" not in err


def test_compare_takes_preprocess(tmp_path, capsys):
    from toolchain.artifact import Artifact
    from toolchain.compare import comparison_feeds

    source = _onnx(tmp_path, make_onnx_model())
    photos = _photos(tmp_path / "p", 8)
    default = comparison_feeds(Artifact.open(source), photos, 4, 0)
    raw = comparison_feeds(Artifact.open(source), photos, 4, 0, "raw255")
    assert max(float(f["x"].max()) for f in default) <= 1.0  # inferred for a gray input: gray01, 0..1
    assert max(float(f["x"].max()) for f in raw) > 1.0  # as asked: 0..255
    code, out, err = run_main(["compare", str(source), str(source), "--calib", str(photos), "--preprocess",
                               "raw255", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["comparisons"][0]["outputs"][0]["cosine"] == pytest.approx(1.0)
    code, _, err = run_main(["compare", str(source), str(source), "--calib", str(photos), "--preprocess", "sepia"],
                            capsys)
    assert_one_line_error(code, err, "unknown preprocessing preset 'sepia'")


def test_error_first_lines_come_through_whole():
    """ONNX Runtime's refusal of a per-channel DequantizeLinear at opset 12: once cut to 'Unrecognized attribu.'"""
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    node = "backbone.stage4.block3.depthwise_separable_convolution.pointwise_projection.weight_dequantize"
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["w"], axis=0, name=node),
                               helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.arange(4, dtype=np.int8), "w_q"),
                               numpy_helper.from_array(np.ones(4, np.float32), "s"),
                               numpy_helper.from_array(np.zeros(4, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    with pytest.raises(InputFileError) as caught:
        OnnxRuntimeRunner.from_model(model)
    message = caught.value.one_line()
    assert len(message) > 300 and message.endswith("Unrecognized attribute: axis for operator DequantizeLinear.")
    long = "word " * 600
    assert first_line(RuntimeError(long + "\nsecond line")) == clip(long.strip())
    assert clip(long.strip()).endswith("word ...") and len(clip(long.strip())) <= 2004
    assert clip("short message") == "short message"


def test_inputs_known_only_after_conversion_are_checked_before_any_target(tmp_path, torch_models):
    """A torch.export program carries its own input shape: the checks run right after the convert stage."""
    import sys

    import torch

    photos = _photos(tmp_path / "p", 20)
    said: list[str] = []
    stages: list[str] = []
    result = api.build(torch_models["export"], tmp_path / "out", targets=["x86:int8"], calib=photos,
                       cache_dir=tmp_path / "cache", bench_iterations=0, announce=said.append,
                       progress=lambda stage, i, n, state, s: stages.append(f"{stage.name}:{state}"))
    assert result.ok
    assert said[0].startswith("calibrating on 10 of 20 images") and "preprocessing inferred from input" in said[1]
    assert stages[:2] == ["convert:start", "convert:done"]
    torch.manual_seed(0)
    batch10 = tmp_path / "batch10.pt2"
    module = sys.modules["tiny_net"].TinyNet().eval()
    torch.export.save(torch.export.export(module, (torch.randn(10, 1, 8, 8),)), str(batch10))
    stages.clear()
    with pytest.raises(UsageError, match="fixed batch of 10"):
        api.build(batch10, tmp_path / "out10", targets=["x86:int8"], calib=photos, cache_dir=tmp_path / "cache",
                  bench_iterations=0, progress=lambda stage, i, n, state, s: stages.append(f"{stage.name}:{state}"))
    assert stages == ["convert:start", "convert:done"] and not (tmp_path / "out10").exists()


def test_compile_checks_the_split_before_converting(tmp_path):
    """compile --target rpi4 would run onnx2tf for many seconds before calibrating: the sizes fail first."""
    source = _onnx(tmp_path, make_onnx_model())
    photos = _photos(tmp_path / "p", 30)
    began = time.perf_counter()
    with pytest.raises(InputFileError, match="only 30 images for --calib-size 40"):
        api.compile(source, tmp_path / "rpi4", target="rpi4", calib=photos, calib_size=40)
    with pytest.raises(UsageError, match="guard needs held-out samples, but --calib-size 30 uses all 30 images"):
        api.calibrate(source, tmp_path / "q.onnx", calib=photos, calib_size=30)
    assert time.perf_counter() - began < 5 and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "p"]
