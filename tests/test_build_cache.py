"""The build's content-addressed stage cache, its plan (--dry-run) and its reports, on the bundled
example built for x86 at FP32 and INT8 (real PyTorch export, ONNX Runtime, calibration)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolchain import api
from toolchain.build_plan import AGREEMENT_SAMPLES
from toolchain.examples import fashion_mnist as example

pytest.importorskip("torch")

TARGETS = ["x86", "x86:int8"]


def _build(out: Path, cache: Path, **options):
    return api.build(None, out, targets=TARGETS, cache_dir=cache, **{"bench_iterations": 3, **options})


def _hashes(folder: Path) -> dict[str, str]:
    """Content of every produced file except the reports (they hold timings and cache counts)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in ("report.json", "report.html")
            and p.name != "manifest.json"}


def _cached(stages) -> dict[str, bool]:
    return {s.name: s.cached for s in stages}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A private copy of the example's labelled samples, so a test may edit one image."""
    folder = tmp_path_factory.mktemp("samples") / "samples"
    shutil.copytree(example.samples_dir(), folder)
    return folder


@pytest.fixture(scope="module")
def first_build(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("build")
    result = _build(root / "out", root / "cache", calib=images, labels=images)
    return root, result


def test_first_build_misses_then_an_identical_rerun_is_all_hits(first_build, images, tmp_path):
    root, first = first_build
    assert first.cache == {"dir": str(root / "cache"), "enabled": True, "hits": 0, "misses": len(first.stages)}
    again = _build(tmp_path / "again", root / "cache", calib=images, labels=images)
    assert again.cache["misses"] == 0 and again.cache["hits"] == len(first.stages)
    assert all(stage["cached"] for stage in again.stages)
    assert _hashes(tmp_path / "again") == _hashes(root / "out")
    report = json.loads((tmp_path / "again" / "report.json").read_text())
    assert [t["accuracy"] for t in report["targets"]] == [t["accuracy"] for t in first.targets]
    assert (tmp_path / "again" / "report.html").stat().st_size > 1000


def test_report_has_variants_agreement_and_per_layer_error(first_build):
    root, _ = first_build
    report = json.loads((root / "out" / "report.json").read_text())
    assert report["schema_version"] == 3 and report["failed"] == []
    assert all(t["status"] == "ok" for t in report["targets"])
    by_artifact = {t["artifact"]: t for t in report["targets"]}
    assert set(by_artifact) == {"x86", "x86-int8"}
    assert by_artifact["x86-int8"]["precision"] == "int8"
    assert by_artifact["x86-int8"]["size_bytes"] < 0.5 * by_artifact["x86"]["size_bytes"]
    assert by_artifact["x86"]["agreement"]["top1_agreement"] == 1.0
    assert by_artifact["x86-int8"]["agreement"]["samples"] == AGREEMENT_SAMPLES
    layers = by_artifact["x86-int8"]["per_layer"]
    assert layers and all(row["relative_error"] >= 0 for row in layers)
    assert by_artifact["x86"]["per_layer"] is None  # FP32 of the same model: nothing to locate
    assert report["reference"]["accuracy"]["images"] == 300


def _untouched_image(images: Path) -> Path:
    """An image that neither verification nor the agreement check reads (so only calibration sees it)."""
    from calibration.folder import list_images, sample_files

    files = list_images(images).files
    read = set(sample_files(files, 8, seed=0)) | set(sample_files(files, AGREEMENT_SAMPLES, seed=0))
    return next(Path(f) for f in files if f not in read)


def test_editing_one_calibration_image_recalibrates_only_what_depends_on_it(first_build, images, tmp_path):
    root, first = first_build
    labels = tmp_path / "labels"
    shutil.copytree(images, labels)  # labels apart from calibration images, so accuracy stays cached
    warm = _build(tmp_path / "warm", root / "cache", calib=images, labels=labels)
    assert warm.cache["hits"] > 0
    victim = _untouched_image(images)
    pixels = np.asarray(Image.open(victim))
    Image.fromarray((255 - pixels).astype(np.uint8)).save(victim)
    plan = api.build(None, tmp_path / "edited", targets=TARGETS, bench_iterations=3, cache_dir=root / "cache",
                     calib=images, labels=labels, dry_run=True)
    assert _cached(plan) == {"convert": True, "simplify": True, "measure reference": True, "compile x86": True,
                             "measure x86": True, "compile x86-int8": False, "measure x86-int8": False}
    result = _build(tmp_path / "edited", root / "cache", calib=images, labels=labels)
    assert result.cache["misses"] == 2
    assert [s["stage"] for s in result.stages if not s["cached"]] == ["compile x86-int8", "measure x86-int8"]


def test_dry_run_writes_nothing(tmp_path):
    plan = api.build(None, tmp_path / "out", targets=TARGETS, cache_dir=tmp_path / "cache", dry_run=True)
    assert [s.name for s in plan] == ["convert", "simplify", "measure reference", "compile x86", "measure x86",
                                      "compile x86-int8", "measure x86-int8"]
    assert not any(s.cached for s in plan)
    assert len({s.key for s in plan}) == len(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_no_cache_reads_and_writes_nothing(first_build, images, tmp_path):
    root, first = first_build
    result = _build(tmp_path / "out", root / "cache", calib=images, labels=images, no_cache=True)
    assert result.cache["hits"] == 0 and result.cache["enabled"] is False
    empty = tmp_path / "empty-cache"
    _build(tmp_path / "out2", empty, no_cache=True, bench_iterations=0)
    assert not empty.exists()


def test_a_damaged_entry_is_rebuilt_not_trusted(first_build, images, tmp_path):
    root, _ = first_build
    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache)
    _build(tmp_path / "warm", cache, calib=images, labels=images)  # whatever earlier tests changed is cached now
    damaged = next(p for p in (cache / "stages").rglob("files/x86/*.onnx"))
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    result = _build(tmp_path / "out", cache, calib=images, labels=images)
    assert result.cache["misses"] == 1
    assert [s["stage"] for s in result.stages if not s["cached"]] == ["compile x86"]
    assert any("ignored" in note and "hash" in note for note in result.notes)
    assert _hashes(tmp_path / "out") == _hashes(tmp_path / "warm")


def test_keys_follow_tool_versions_and_options(monkeypatch, tmp_path):
    from toolchain import digests

    def plan(**options):
        return {s.name: s.key for s in api.build(None, tmp_path / "out", targets=TARGETS, cache_dir=tmp_path / "c",
                                                 dry_run=True, **options)}

    base = plan()
    assert plan() == base
    assert plan(method="minmax") == base  # the default spelled out is the same build
    changed = plan(max_drop=0.5)
    assert changed["convert"] == base["convert"] and changed["compile x86-int8"] != base["compile x86-int8"]
    real_version = digests._version
    monkeypatch.setattr(digests, "_version", lambda name: "9.9" if name == "onnxsim" else real_version(name))
    bumped = plan()
    assert bumped["convert"] == base["convert"]
    assert bumped["simplify"] != base["simplify"] and bumped["compile x86"] != base["compile x86"]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_concurrent_builds_share_one_cache(tmp_path):
    cache = tmp_path / "cache"
    command = ["build", "--target", "x86", "--target", "x86:int8", "--bench-iterations", "0", "--cache-dir",
               str(cache), "-q"]
    processes = [subprocess.Popen([sys.executable, "-m", "toolchain", *command, "-o", str(tmp_path / name)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in processes]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    third = _cli(*command, "-o", str(tmp_path / "c"), "--json")
    assert third.returncode == 0, third.stderr
    report = json.loads(third.stdout)
    assert report["cache"]["misses"] == 0
    assert not list(cache.rglob("*.tmp")), "no staging folders left in the cache"


def test_quiet_prints_nothing_and_json_prints_only_the_report(tmp_path):
    command = ["build", "--target", "x86", "--bench-iterations", "0", "--cache-dir", str(tmp_path / "cache")]
    quiet = _cli(*command, "-o", str(tmp_path / "q"), "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    dry = _cli(*command, "-o", str(tmp_path / "q"), "--dry-run", "--json")
    assert dry.returncode == 0 and all(stage["cached"] for stage in json.loads(dry.stdout))
    logged = _cli(*command, "-o", str(tmp_path / "q"))
    assert "[1/5] convert: cached" in logged.stderr  # not a terminal: one plain line per stage


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Chromium is not installed (apt-get install chromium)")
def test_a_real_build_report_renders_in_chromium(first_build, tmp_path):
    from test_report_html import _chromium, census

    root, first = first_build
    dom = _chromium(tmp_path, "--dump-dom", (root / "out" / "report.html").as_uri()).stdout
    found = census(dom)
    assert found.row_targets == ["x86", "x86-int8"]  # the reference row carries no data-target
    assert found.charts["chart-scatter"] == 1 and found.charts["chart-size"] == 1
    assert found.charts["chart-layers"] == 1  # the INT8 variant's per-layer error
    assert found.marks["chart-scatter circle"] == 3  # reference + two variants
    assert found.rows["stages"] == len(first.stages)


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux 'script' for a pseudo-terminal")
def test_a_terminal_gets_a_progress_bar(tmp_path):
    """On a terminal the running stage is shown in a live bar (redrawn lines), not only in log lines."""
    command = (f"{sys.executable} -m toolchain build --target x86 --bench-iterations 0 "
               f"--cache-dir {tmp_path / 'cache'} -o {tmp_path / 'out'}")
    log = tmp_path / "tty.log"
    done = subprocess.run(["script", "-qec", command, str(log)], capture_output=True, timeout=600,
                          env={**os.environ, "COLUMNS": "160"})
    assert done.returncode == 0, done.stdout[-2000:]
    text = log.read_bytes().decode("utf-8", "replace")
    assert "[1/5] convert: ingest the bundled" in text  # the bar's description of the running stage
    assert "\x1b[" in text and "━" in text  # drawn with terminal control sequences
    assert "[5/5] measure x86:" in text and (tmp_path / "out" / "report.html").exists()
