"""Post-training quantization benchmark (issue #14, item 1): what each PTQ pass buys, on real models.

    python -m bench.ptq                     # bench/ptq.md + bench/ptq.json
    python -m bench.ptq --only mobilenet    # some parts; writes to bench/.cache/ptq-some.{md,json}
    python -m bench.ptq --render bench/ptq.json

Parts (same run, same images):
- ``effnet``: EfficientNet-Lite0 (the zoo's wheel) on the zoo's photos (81 calibration images from 27 photos,
  39 held-out images from 13 other photos). Ablation, each step cumulative: plain MinMax, + cross-layer
  equalization, + per-tensor MSE range search, + bias correction (edgekiln's default), + learned rounding
  (opt-in), in two INT8 schemes: ``x86`` as this machine builds it (its CPU class decides: 7-bit weights
  without VNNI) run with this machine's ONNX Runtime kernels, and ``x86-vnni`` (8-bit weights) run with
  exact integer arithmetic. Then edgekiln's guarded ``api.calibrate(target='x86')`` (what a user gets),
  ONNX Runtime's ``quantize_static`` defaults, NNCF's ``nncf.quantize`` defaults (run from a separate
  virtual environment, ``--nncf-python``), all timed interleaved in ONNX Runtime.
- ``mobilenet``: the MobileNetV2-sized benchmark CNN (``bench.models``, random weights, BatchNorm settled
  on 64 images; 64 calibration and 32 held-out images, as ``bench/run.py``), same ablation.
- ``yolo``: YOLOv8n (nudenet) through the guarded ``api.calibrate(target='x86')``: detections kept on every
  photo, or the refusal with its figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine, timing

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache" / "ptq"
sys.path.insert(0, str(REPO_DIR / "tests"))

from bench import zoo  # noqa: E402  (the zoo benchmark's FP32 export, photos and ORT-defaults helper)
from zoo import metrics, models  # noqa: E402
from zoo.photos import build_photo_set, subset  # noqa: E402

PARTS = ("effnet", "mobilenet", "yolo", "effnet-learned-guard")
DEFAULT_NNCF_PYTHON = Path("/work/venv-nncf/bin/python")
TARGETS = {"effnet_agreement": 0.85, "effnet_cosine": 0.98, "effnet_speed": 1.4, "mobilenet_cosine": 0.99,
           "yolo_kept": 0.90}
STEPS = ("none", "+ equalization", "+ range search", "+ bias correction (default)", "+ learned rounding (opt-in)")


def _log(message: str) -> None:
    print(f"[ptq {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- models and data -------------------------------------------------------------------------------


def _zoo_data(key: str) -> tuple[Path, np.ndarray, np.ndarray, Path, dict]:
    """(FP32 ONNX, calibration batch, held-out batch, calibration folder, preprocessing) of a zoo model."""
    model = models.BY_KEY[key]
    missing = model.missing()
    if missing:
        raise RuntimeError(missing)
    photos = build_photo_set(zoo.CACHE_DIR)
    calib_names, held_names = photos.split()
    calib = subset(photos, calib_names, zoo.CACHE_DIR / "calib")
    held = subset(photos, held_names, zoo.CACHE_DIR / "heldout")
    spec = models.spec_for(model)
    work = zoo.CACHE_DIR / key
    work.mkdir(parents=True, exist_ok=True)
    fp32 = zoo._fp32(model, work)
    return (fp32, metrics.preprocess(spec, sorted(calib.iterdir())), metrics.preprocess(spec, sorted(held.iterdir())),
            calib, spec)


def _prepared(path: Path):
    import onnx

    from toolchain.passes.quantize import named_copy, prepare_for_quantization

    model, _ = prepare_for_quantization(named_copy(onnx.load(str(path))))
    return named_copy(model)


def _outputs(model_or_path, batch: np.ndarray, exact: bool = False) -> np.ndarray:
    from toolchain.runtime import OnnxRuntimeRunner

    runner = (OnnxRuntimeRunner.from_path(model_or_path, threads=2, integer_reference=exact)
              if isinstance(model_or_path, Path) else
              OnnxRuntimeRunner.from_model(model_or_path, threads=2, integer_reference=exact))
    name = runner.inputs[0].name
    return np.concatenate([next(iter(runner.run({name: x[None]}).values())) for x in batch])


def _classify_quality(reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    agreement = metrics.class_agreement(reference, got)
    diff = metrics.compare_output("output", reference, got)
    return {"agreement": agreement.agreement, "decisive": agreement.decisive, "cosine_mean": diff.cosine_mean,
            "cosine_min": diff.cosine_min}


# --- the ablation ----------------------------------------------------------------------------------


def ablation(fp32, calib: np.ndarray, held: np.ndarray, reference: np.ndarray, target: str,
             exact: bool, save_default: Path | None = None) -> list[dict[str, Any]]:
    """Each pass added in turn (cumulative), measured on the held-out images; the default's model is saved."""
    import onnx

    from toolchain.passes.bias_correction import correct_biases
    from toolchain.passes.equalize import equalize
    from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantize_static
    from toolchain.passes.range_search import search_ranges
    from toolchain.passes.weight_rounding import round_weights

    config = QuantizeConfig.for_target(target, equalize=True, range_search="mse", bias_correction=True)
    name = fp32.graph.input[0].name
    feeds = [{name: x[None]} for x in calib]
    rows: list[dict[str, Any]] = []

    def record(step: str, model, ranges, note: str, started: float) -> Any:
        quantized = quantize_static(model, ranges, config)
        rows.append({"step": step, "note": note, "seconds": round(time.monotonic() - started, 1),
                     "quality": _classify_quality(reference, _outputs(quantized, held, exact))})
        _log(f"{target}: {step}: {rows[-1]['quality']}")
        return quantized

    started = time.monotonic()
    plain = compute_ranges(fp32, feeds, config)
    record(STEPS[0], fp32, plain, "MinMax ranges, nearest rounding", started)
    started = time.monotonic()
    equalized, eq_report = equalize(fp32, feeds)
    ranges = compute_ranges(equalized, feeds, config)
    record(STEPS[1], equalized, ranges, eq_report.summary(), started)
    started = time.monotonic()
    searched, search_report = search_ranges(equalized, feeds, ranges, config.activation_type,
                                            config.activation_symmetric)
    quantized = record(STEPS[2], equalized, searched, search_report.summary(), started)
    started = time.monotonic()
    corrected, bc_report = correct_biases(equalized, quantized, feeds)
    final = record(STEPS[3], corrected, searched, bc_report.summary(), started)
    if save_default is not None:
        onnx.save(final, str(save_default))
    started = time.monotonic()
    rounded, rounding_report = round_weights(equalized, feeds, reduce_range=config.reduce_range,
                                             depthwise_full_range=config.depthwise_full_range, per_channel=True)
    rounded_corrected, _ = correct_biases(rounded, quantize_static(rounded, searched, config), feeds)
    learned = record(STEPS[4], rounded_corrected, searched, rounding_report.summary() + "; then bias correction",
                     started)
    if save_default is not None:
        onnx.save(learned, str(save_default.with_name(save_default.stem + ".learned.onnx")))
    return rows


# --- peers -----------------------------------------------------------------------------------------

_NNCF_SCRIPT = """
import sys, numpy as np, onnx, nncf
model = onnx.load(sys.argv[1]); batch = np.load(sys.argv[3]); name = model.graph.input[0].name
onnx.save(nncf.quantize(model, nncf.Dataset([{name: row[None]} for row in batch])), sys.argv[2])
"""


def _nncf(fp32: Path, out: Path, calib: np.ndarray, python: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="ptq-nncf-") as tmp:
        batch = Path(tmp) / "calib.npy"
        np.save(batch, calib)
        done = subprocess.run([str(python), "-c", _NNCF_SCRIPT, str(fp32), str(out), str(batch)],
                              capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"nncf failed: {done.stderr.strip().splitlines()[-1:]}")
    return out


def _version(python: Path) -> str:
    done = subprocess.run([str(python), "-c", "import nncf; print(nncf.__version__)"], capture_output=True,
                          text=True)
    return done.stdout.strip() or "not available"


# --- parts -----------------------------------------------------------------------------------------


def run_effnet(args: argparse.Namespace) -> dict[str, Any]:
    from toolchain import api

    path, calib, held, calib_folder, spec = _zoo_data("effnet-lite0")
    work = CACHE_DIR / "effnet"
    work.mkdir(parents=True, exist_ok=True)
    fp32 = _prepared(path)
    reference = _outputs(path, held)
    part: dict[str, Any] = {"calibration_images": len(calib), "heldout_images": len(held), "ablation": {}}
    for target, exact in (("x86", False), ("x86-vnni", True)):
        part["ablation"][target] = ablation(fp32, calib, held, reference, target, exact,
                                            save_default=work / f"edgekiln-{target}.onnx")
    variants: dict[str, Path] = {"fp32": path, "edgekiln default (no guard)": work / "edgekiln-x86.onnx",
                                 "edgekiln + learned rounding (no guard)": work / "edgekiln-x86.learned.onnx"}
    entries: dict[str, dict[str, Any]] = {name: {} for name in variants}
    started = time.monotonic()
    guarded = work / "edgekiln-guarded.onnx"
    try:
        result = api.calibrate(path, guarded, calib=calib_folder, target="x86", preprocess=spec,
                               calib_size=zoo.CALIB_SIZE, holdout=zoo.HOLDOUT, cache_dir=CACHE_DIR / "edgekiln-cache",
                               equalize=True, range_search="mse", bias_correction=True)
        variants["edgekiln guarded (api.calibrate)"] = guarded
        entries["edgekiln guarded (api.calibrate)"] = {
            "kept_float": result.guard.final.kept_float if result.guard else [], "notes": result.notes,
            "guard_first": result.guard.attempts[0].quality.to_dict() if result.guard else None}
    except Exception as exc:  # a refusal is a result
        entries["edgekiln guarded (api.calibrate)"] = {"refused": getattr(exc, "message", repr(exc))}
    entries["edgekiln guarded (api.calibrate)"]["seconds"] = round(time.monotonic() - started, 1)
    _log(f"effnet: guarded: {entries['edgekiln guarded (api.calibrate)']}")
    input_name = fp32.graph.input[0].name
    variants["ORT quantize_static defaults"] = zoo._ort_defaults(path, work / "ort.onnx", calib, input_name)
    entries["ORT quantize_static defaults"] = {}
    if args.nncf_python.is_file():
        try:
            variants["NNCF defaults"] = _nncf(path, work / "nncf.onnx", calib, args.nncf_python)
            entries["NNCF defaults"] = {}
        except Exception as exc:
            entries["NNCF defaults"] = {"refused": str(exc)}
    for name, variant in variants.items():
        entries[name]["quality"] = _classify_quality(reference, _outputs(variant, held))
        entries[name]["float_layers"], entries[name]["weighted_layers"] = zoo._float_layers(variant)
        entries[name]["size_bytes"] = variant.stat().st_size
    plan = timing.TimingPlan(rounds=args.rounds, runs_per_round=10, warmup=5)
    feed = {input_name: held[:1]}
    calls = {name: zoo._session_call(variant, feed) for name, variant in variants.items()}
    _log(f"effnet: timing {', '.join(calls)}")
    for name, summary in timing.summarize(timing.interleaved(calls, plan), "fp32").items():
        entries[name]["latency"] = {"median_ms": summary.median_ms, "speedup": summary.ratio_vs_reference,
                                    "iqr": (summary.ratio_low, summary.ratio_high)}
    part["variants"] = entries
    part["plan"] = {"rounds": plan.rounds, "runs_per_round": plan.runs_per_round, "warmup": plan.warmup}
    return part


def run_effnet_learned_guard(args: argparse.Namespace) -> dict[str, Any]:
    """The guarded ``api.calibrate(target='x86', weight_rounding='learned')``: does the guard keep every layer?"""
    from toolchain import api

    path, calib, held, calib_folder, spec = _zoo_data("effnet-lite0")
    out = CACHE_DIR / "effnet" / "edgekiln-guarded-learned.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    entry: dict[str, Any] = {}
    try:
        result = api.calibrate(path, out, calib=calib_folder, target="x86", preprocess=spec,
                               calib_size=zoo.CALIB_SIZE, holdout=zoo.HOLDOUT, weight_rounding="learned",
                               equalize=True, range_search="mse", bias_correction=True,
                               cache_dir=CACHE_DIR / "edgekiln-cache")
        entry.update(kept_float=result.guard.final.kept_float if result.guard else [], notes=result.notes,
                     guard_final=result.guard.final.quality.to_dict() if result.guard else None,
                     quality=_classify_quality(_outputs(path, held), _outputs(out, held)))
        entry["float_layers"], entry["weighted_layers"] = zoo._float_layers(out)
    except Exception as exc:
        entry["refused"] = getattr(exc, "message", repr(exc))
    entry["seconds"] = round(time.monotonic() - started, 1)
    _log(f"effnet learned guard: {entry}")
    return entry


def run_mobilenet(args: argparse.Namespace) -> dict[str, Any]:
    from bench import data
    from bench import run as bench_run

    path = bench_run.cnn_fp32("mobilenet_v2", "fashion")
    calib = data.cnn_images("fashion", 64, "calibration", bench_run.SEED)
    held = data.cnn_images("fashion", 32, "holdout", bench_run.SEED)
    fp32 = _prepared(path)
    reference = _outputs(path, held)
    part: dict[str, Any] = {"calibration_images": len(calib), "heldout_images": len(held), "ablation": {}}
    for target, exact in (("x86", False), ("x86-vnni", True)):
        part["ablation"][target] = ablation(fp32, calib, held, reference, target, exact)
    ort = zoo._ort_defaults(path, CACHE_DIR / "mobilenet-ort.onnx", calib, fp32.graph.input[0].name)
    part["ort_defaults"] = _classify_quality(reference, _outputs(ort, held))
    return part


def run_yolo(args: argparse.Namespace) -> dict[str, Any]:
    from toolchain import api

    path, calib, held, calib_folder, spec = _zoo_data("yolov8n-320")
    photos = build_photo_set(zoo.CACHE_DIR)
    every = metrics.preprocess(spec, photos.files)
    reference = _outputs(path, every)
    part: dict[str, Any] = {}
    work = CACHE_DIR / "yolo"
    work.mkdir(parents=True, exist_ok=True)
    for name, guard in (("edgekiln guarded (api.calibrate)", True), ("edgekiln default (no guard)", False)):
        started = time.monotonic()
        out = work / f"{'guarded' if guard else 'noguard'}.onnx"
        counts = dict(calib_size=zoo.CALIB_SIZE, holdout=zoo.HOLDOUT) if guard else dict(calib_size=81, holdout=0)
        entry: dict[str, Any] = {}
        try:
            result = api.calibrate(path, out, calib=calib_folder, target="x86", preprocess=spec, guard=guard,
                                   cache_dir=CACHE_DIR / "edgekiln-cache", **counts)
            got = _outputs(out, every)
            match = metrics.match_detections(metrics.yolo_detections(reference),
                                             metrics.yolo_detections(got.reshape(reference.shape)))
            entry.update(kept=match.kept, fp32_detections=match.reference, detections=match.other,
                         kept_float=result.guard.final.kept_float if result.guard else [], notes=result.notes)
        except Exception as exc:
            entry["refused"] = getattr(exc, "message", repr(exc))
        entry["seconds"] = round(time.monotonic() - started, 1)
        part[name] = entry
        _log(f"yolo: {name}: {entry.get('refused') or entry.get('kept')}")
    return part


# --- rendering -------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ablation_table(rows_by_target: dict[str, list[dict]]) -> list[str]:
    lines = ["| scheme | step (cumulative) | top-1 agreement (of decisive) | cosine mean / worst | what the pass did |",
             "|---|---|---:|---:|---|"]
    for target, rows in rows_by_target.items():
        scheme = ("x86 as built on this machine (7-bit weights: no VNNI), this machine's kernels" if target == "x86"
                  else "x86-vnni (8-bit weights), exact integer arithmetic")
        for row in rows:
            q = row["quality"]
            lines.append(f"| {scheme} | {row['step']} | {_pct(q['agreement'])} of {q['decisive']} | "
                         f"{_num(q['cosine_mean'])} / {_num(q['cosine_min'])} | {row['note'].replace('|', '/')} |")
    return lines + [""]


def render(record: dict[str, Any]) -> str:
    cpu = record["machine"]["cpu"]
    lines = ["# Post-training quantization: what each pass buys (issue #14, item 1)", "",
             f"Generated by `{record['command']}` ({record['started']}, {record['minutes']:.1f} min) at commit "
             f"`{record['commit']}`; raw numbers in `bench/ptq.json`. Machine: {cpu['model']}, "
             f"{cpu['logical_cpus']} logical CPUs, flags {', '.join(cpu['flags'])} (no VNNI, so edgekiln's `x86` "
             f"INT8 here has 7-bit weights); shared with other jobs (load average {record.get('load')}), so "
             f"timings are noisy. NNCF {record.get('nncf_version')}.", "",
             "Quality is always against the untouched FP32 model on held-out images never used for calibration: "
             "top-1 agreement over *decisive* images (FP32's top-1 leads its runner-up by >= 0.1% of the largest "
             "logit), per-image cosine of the logits.", ""]
    lines += _targets(record)
    eff = record["parts"].get("effnet")
    if eff and "ablation" in eff:
        lines += ["## EfficientNet-Lite0 (ImageNet; zoo wheel), real photos", "",
                  f"{eff['calibration_images']} calibration images, {eff['heldout_images']} held-out images "
                  "(other photos).", "", "### Ablation", ""] + _ablation_table(eff["ablation"])
        lines += ["### Side by side (ONNX Runtime, this machine's kernels, batch 1, 2 threads)", "",
                  f"Latency: {eff['plan']['warmup']} warm-up runs, then {eff['plan']['rounds']} rounds timing every "
                  f"variant for {eff['plan']['runs_per_round']} runs in rotating order; x vs FP32 is the median of "
                  "per-round ratios (IQR).", "",
                  "| variant | layers in float | size MB | ms | x vs FP32 (IQR) | top-1 agreement | cosine mean / worst "
                  "| note |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for name, entry in eff["variants"].items():
            q, lat = entry.get("quality") or {}, entry.get("latency") or {}
            iqr = lat.get("iqr") or (None, None)
            note = entry.get("refused") or ("kept in float: " + ", ".join(entry["kept_float"])
                                            if entry.get("kept_float") else "")
            lines.append(
                f"| {name} | {entry.get('float_layers', '—')} of {entry.get('weighted_layers', '—')} | "
                f"{entry['size_bytes'] / 1e6:.2f} | {_num(lat.get('median_ms'), 2)} | "
                f"{_num(lat.get('speedup'), 2)}x ({_num(iqr[0], 2)}–{_num(iqr[1], 2)}) | "
                f"{_pct(q.get('agreement'))} | {_num(q.get('cosine_mean'))} / {_num(q.get('cosine_min'))} | "
                f"{note.replace('|', '/')[:400]} |" if entry.get("size_bytes") else
                f"| {name} | — | — | — | — | — | — | {note.replace('|', '/')[:400]} |")
        lines.append("")
    mob = record["parts"].get("mobilenet")
    if mob and "ablation" in mob:
        ort = mob["ort_defaults"]
        lines += ["## MobileNetV2-sized benchmark CNN (random weights, BatchNorm settled)", "",
                  f"{mob['calibration_images']} calibration and {mob['heldout_images']} held-out images "
                  "(Fashion-MNIST upsampled to 224x224, as `bench/run.py`). ONNX Runtime `quantize_static` defaults: "
                  f"{_pct(ort['agreement'])} agreement, cosine {_num(ort['cosine_mean'])} / {_num(ort['cosine_min'])}.",
                  ""] + _ablation_table(mob["ablation"])
    yolo = record["parts"].get("yolo")
    if yolo and "error" not in yolo:
        lines += ["## YOLOv8n detector (nudenet, 320x320)", "", "| variant | FP32 detections kept on all 120 images "
                  "(IoU 0.5, score >= 0.25) | layers kept in float | note |", "|---|---:|---|---|"]
        for name, entry in yolo.items():
            kept = (f"{_pct(entry['kept'])} of {entry['fp32_detections']}" if entry.get("kept") is not None else "—")
            lines.append(f"| {name} | {kept} | {len(entry.get('kept_float', []))} | "
                         f"{(entry.get('refused') or '').replace('|', '/')[:500]} |")
        lines.append("")
    learned = record["parts"].get("effnet-learned-guard")
    if learned and "error" not in learned:
        q = learned.get("quality") or {}
        lines += ["## EfficientNet-Lite0 x86, guarded, with learned rounding (`api.calibrate(target='x86', "
                  "weight_rounding='learned')`)", "",
                  (f"refused: {learned['refused']}" if learned.get("refused") else
                   f"accepted with {learned.get('float_layers')} of {learned.get('weighted_layers')} weighted layers "
                   f"in float ({', '.join(learned.get('kept_float') or []) or 'none'}); on the 39 held-out images: "
                   f"{_pct(q.get('agreement'))} agreement, cosine {_num(q.get('cosine_mean'))} / "
                   f"{_num(q.get('cosine_min'))}") + f" ({learned.get('seconds')} s).", ""]
        lines += [f"- {note}" for note in learned.get("notes", [])] + [""]
    for update in record.get("updates", []):
        lines += [f"Added later by `{update['command']}` ({update['started']}, commit `{update['commit']}`).", ""]
    for name, part in record["parts"].items():
        if "error" in part:
            lines += [f"## {name}", "", f"failed: {part['error']}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _targets(record: dict[str, Any]) -> list[str]:
    lines = ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    eff = record["parts"].get("effnet") or {}
    for target in ("x86", "x86-vnni"):
        rows = (eff.get("ablation") or {}).get(target)
        if rows:
            q = rows[3]["quality"]
            ok = q["agreement"] >= TARGETS["effnet_agreement"] and q["cosine_mean"] >= TARGETS["effnet_cosine"]
            lines.append(f"| EfficientNet-Lite0 {target} INT8, no layer in float, edgekiln default passes: agreement "
                         f">= 85%, mean cosine >= 0.98 | {_pct(q['agreement'])}, {_num(q['cosine_mean'])} (worst "
                         f"{_num(q['cosine_min'])}) | {'**met**' if ok else '**missed**'} |")
    default = (eff.get("variants") or {}).get("edgekiln default (no guard)", {})
    speed = (default.get("latency") or {}).get("speedup")
    if speed is not None:
        lines.append(f"| EfficientNet-Lite0 x86 INT8 >= 1.4x FP32 in ONNX Runtime | {speed:.2f}x | "
                     f"{'**met**' if speed >= TARGETS['effnet_speed'] else '**missed**'} |")
    guarded = (eff.get("variants") or {}).get("edgekiln guarded (api.calibrate)")
    if guarded:
        floats = guarded.get("float_layers")
        lines.append(f"| EfficientNet-Lite0: the guard (default budget) accepts it with no layer in float | "
                     f"{'refused: ' + guarded['refused'][:300] if guarded.get('refused') else f'{floats} layer(s) in float'}"
                     f" | {'**met**' if floats == 0 else '**missed**'} |")
    mob = record["parts"].get("mobilenet") or {}
    for target, rows in (mob.get("ablation") or {}).items():
        best = max(rows, key=lambda r: r["quality"]["cosine_mean"])
        default_q = rows[3]["quality"]
        lines.append(f"| MobileNetV2-sized CNN {target}: mean cosine >= 0.99 | default {_num(default_q['cosine_mean'])}"
                     f"; best step ({best['step']}) {_num(best['quality']['cosine_mean'])} | "
                     f"{'**met**' if best['quality']['cosine_mean'] >= TARGETS['mobilenet_cosine'] else '**missed**'} |")
    yolo = record["parts"].get("yolo") or {}
    guarded = yolo.get("edgekiln guarded (api.calibrate)")
    if guarded:
        kept = guarded.get("kept")
        verdict = ("**met** (refused)" if guarded.get("refused") and "detections" in guarded["refused"]
                   else "**met**" if kept is not None and kept >= TARGETS["yolo_kept"] else "**missed**")
        lines.append(f"| YOLOv8n keeps >= 90% of FP32 detections or is refused with that figure | "
                     f"{'refused: ' + guarded['refused'][:300] if guarded.get('refused') else _pct(kept) + ' kept'} | "
                     f"{verdict} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ptq", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts")
    parser.add_argument("--render", type=Path, help="rewrite the Markdown of a saved JSON record and exit")
    parser.add_argument("--nncf-python", type=Path, default=DEFAULT_NNCF_PYTHON,
                        help="an interpreter with nncf installed (kept out of the project's environment)")
    parser.add_argument("--rounds", type=int, default=9, help="timing rounds")
    parser.add_argument("--update", type=Path, help="after the run, add its parts to this saved record")
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return 0
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    commit = machine.commit()
    record: dict[str, Any] = {"command": "python -m bench.ptq" + "".join(f" --only {p}" for p in args.only or []),
                              "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "commit": commit, "machine": machine.describe(), "load": machine.load_average(),
                              "nncf_version": _version(args.nncf_python) if args.nncf_python.is_file() else "—",
                              "parts": {}}
    runners = {"effnet": run_effnet, "mobilenet": run_mobilenet, "yolo": run_yolo,
               "effnet-learned-guard": run_effnet_learned_guard}
    out = BENCH_DIR / "ptq.json" if not args.only else CACHE_DIR.parent / "ptq-some.json"
    for name in args.only or PARTS:
        _log(f"{name}: start")
        try:
            record["parts"][name] = runners[name](args)
        except Exception as exc:
            record["parts"][name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            _log(traceback.format_exc())
        record["minutes"] = (time.monotonic() - started) / 60
        out.write_text(json.dumps(record, indent=1, default=str))
        out.with_suffix(".md").write_text(render(record))
    if args.update:  # fold these parts into a saved record (the record says which were added later)
        saved = json.loads(args.update.read_text())
        saved["parts"].update(record["parts"])
        saved.setdefault("updates", []).append({k: record[k] for k in ("command", "started", "commit")})
        args.update.write_text(json.dumps(saved, indent=1, default=str))
        args.update.with_suffix(".md").write_text(render(saved))
        out = args.update
    _log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
