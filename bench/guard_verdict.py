"""The accuracy guard's verdict against the delivered model on photos it never saw (issue #42).

    python -m bench.guard_verdict      # bench/guard_verdict.md + .json (about 30 minutes on 2 cores)

EfficientNet-Lite0 (the zoo's), target x86, calibrated from the zoo's 81 calibration images (27 photos) with
the default split of that folder, as a user passing ``--calib`` gets it; the split is drawn with three seeds,
so each guarded build is judged on three different held-out sets. Every delivered model is then measured on
143 images of 13 other photos (the zoo's held-out photos and 8 more crops of each), which no calibration, pass
or guard decision saw: with the guard's own metrics (top-1 changes, expected top-1 loss by FP32's
probabilities, per-sample cosines) and the zoo's decisive-image agreement. For each guarded build the guard's
first attempt (every layer INT8) is also judged by the rule before this change (every top-1 change a point
lost), to show how often that rule's verdict on 30-50 samples depended on the draw. ONNX Runtime's and NNCF's
defaults are measured beside, from the same 81 images.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache" / "guard_verdict"
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # the zoo's models, photos and metrics

from zoo import metrics, models  # noqa: E402
from zoo.photos import build_photo_set, more_crops, subset  # noqa: E402

SEEDS = (0, 1, 2)
EXTRA_CROPS = 8
PASSES = {"equalize": True, "range_search": "mse", "bias_correction": True, "weight_rounding": "learned"}
VARIANTS = {"defaults": {}, "passes": PASSES}


def _calibrate(fp32: Path, out: Path, calib: Path, spec: dict, passes: dict, seed: int, guard: bool) -> dict:
    """One INT8 build through the product's calibrate pass; the guard's attempts or its refusal."""
    from toolchain.errors import VerificationError
    from toolchain.passes.calibrate import CalibrationOptions, calibrate
    from toolchain.passes.quantize import QuantizeConfig
    from toolchain.quant_guard import Budget

    config = QuantizeConfig.for_target("x86", **passes)
    options = CalibrationOptions(calib, seed=seed, preprocess=spec, cache_dir=CACHE_DIR / "calibration")
    started = time.perf_counter()
    try:
        result = calibrate(fp32, out, options, config, Budget() if guard else None)
    except VerificationError as exc:
        return {"refused": exc.message, "seconds": time.perf_counter() - started,
                "guard": getattr(exc, "report", None)}
    return {"model": str(out), "seconds": time.perf_counter() - started,
            "guard": result.guard.to_dict() if result.guard else None}


def _old_rule_refuses(quality: dict) -> bool:
    """The top-1 rule before issue #42: every change a point lost, by the Wilson bound of the count."""
    from toolchain.quality import rate_lower_bound

    return 100.0 * rate_lower_bound(quality["lost"], quality["samples"]) > 1.0


def _first_attempt(guard: dict | None) -> dict[str, Any]:
    if not guard:
        return {}
    from toolchain.quant_guard import Budget, Quality

    quality = Quality.from_dict(guard["attempts"][0]["quality"])
    budget = Budget(**guard["budget"])
    return {"samples": quality.samples, "top1_changes": quality.lost, "expected_loss": quality.drop_points,
            "diverged": quality.diverged_under(budget.min_cosine), "passes_now": not quality.misses(budget),
            "old_top1_rule_refuses": _old_rule_refuses(guard["attempts"][0]["quality"]),
            "kept_float_final": len(guard["attempts"][-1]["kept_float"]), "attempts": len(guard["attempts"])}


def _unseen_quality(expected: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    from toolchain.quant_guard import Budget, compare_quality

    quality = compare_quality({"logits": expected}, {"logits": got.reshape(expected.shape)}, task="classify")
    decisive = metrics.class_agreement(expected, got.reshape(expected.shape))
    return {"images": quality.samples, "top1_changes": quality.lost, "agreement": quality.top1_agreement,
            "decisive_agreement": decisive.agreement, "expected_loss_points": quality.drop_points,
            "expected_loss_bound": quality.drop_bound_points, "cosine_mean": quality.mean_cosine,
            "cosine_min": quality.min_cosine, "diverged": quality.diverged_under(0.99),
            "guard_budget_met": not quality.misses(Budget(task="classify"))}


def run() -> dict[str, Any]:
    from bench.zoo import _fp32, _nncf_defaults, _ort_defaults

    started = time.perf_counter()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    photos = build_photo_set(CACHE_DIR)
    calib_names, held_names = photos.split()
    calib = subset(photos, calib_names, CACHE_DIR / "calib")
    unseen = sorted(subset(photos, held_names, CACHE_DIR / "heldout").iterdir())
    unseen += sorted(more_crops(CACHE_DIR, held_names, EXTRA_CROPS, 7).folder.iterdir())
    model = models.EFFNET
    spec = models.spec_for(model)
    fp32 = _fp32(model, CACHE_DIR)
    batch = metrics.preprocess(spec, unseen)
    reference = metrics.OnnxModel(fp32)
    expected = reference(batch)[0]
    builds: list[dict[str, Any]] = []
    for variant, passes in VARIANTS.items():
        for guard in (True, False):
            for seed in SEEDS if guard else SEEDS[:1]:
                name = f"{variant}-{'guarded' if guard else 'unguarded'}-{seed}"
                print(f"[guard_verdict] {name}", file=sys.stderr, flush=True)
                built = _calibrate(fp32, CACHE_DIR / f"{name}.onnx", calib, spec, passes, seed, guard)
                entry = {"variant": variant, "guard": guard, "seed": seed, "seconds": built["seconds"],
                         "refused": built.get("refused"), "first_attempt": _first_attempt(built.get("guard"))}
                if built.get("model"):
                    entry["unseen"] = _unseen_quality(expected, metrics.OnnxModel(Path(built["model"]))(batch)[0])
                    entry["size_bytes"] = Path(built["model"]).stat().st_size
                builds.append(entry)
    calib_batch = metrics.preprocess(spec, sorted(calib.iterdir()))
    peers = {}
    for name, make in (("ONNX Runtime quantize_static defaults", _ort_defaults), ("NNCF defaults", _nncf_defaults)):
        try:
            path = make(fp32, CACHE_DIR / f"{name.split()[0].lower()}.onnx", calib_batch, reference.input_names[0])
            peers[name] = _unseen_quality(expected, metrics.OnnxModel(path)(batch)[0])
        except Exception as exc:  # a peer's failure is recorded, not fatal
            peers[name] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": machine.commit(),
            "machine": machine.describe(), "minutes": (time.perf_counter() - started) / 60,
            "calibration_images": len(calib_batch), "unseen_images": len(unseen), "unseen_photos": len(held_names),
            "builds": builds, "peers": peers}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _row(label: str, unseen: dict | None, extra: str) -> str:
    if not unseen or "failed" in unseen:
        return f"| {label} | — | — | — | — | — | {(unseen or {}).get('failed', extra)} |"
    return (f"| {label} | {_pct(unseen['agreement'])} ({unseen['top1_changes']} changes) | "
            f"{_pct(unseen['decisive_agreement'])} | {unseen['expected_loss_points']:.2f} | "
            f"{unseen['cosine_mean']:.4f} / {unseen['cosine_min']:.4f} | {unseen['diverged']} | {extra} |")


def render(record: dict[str, Any]) -> str:
    lines = ["# The guard's verdict against the delivered model (issue #42)", "",
             f"Generated by `python -m bench.guard_verdict` ({record['generated']}, {record['minutes']:.1f} min) at "
             f"commit `{record['commit']}`; raw numbers in `bench/guard_verdict.json`. Machine: "
             f"{machine.summary(record['machine'])}.", "", (__doc__ or "").split("\n\n")[2].strip(), "",
             f"Unseen: {record['unseen_images']} images of {record['unseen_photos']} photos. Columns: top-1 agreement "
             "with FP32 (the guard's tie rule) and top-1 changes; the zoo's agreement over decisive images; the top-1 "
             "accuracy expected lost by FP32's own probabilities, in points (the guard's budget: 1); cosine of the "
             "logits mean / worst; images under cosine 0.99 (the guard's share rule).", "",
             "| build | agreement | decisive | expected loss (pts) | cosine mean / worst | under 0.99 | result |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for build in record["builds"]:
        label = f"{build['variant']}, {'guard on, split seed ' + str(build['seed']) if build['guard'] else 'no guard'}"
        first = build["first_attempt"]
        if build.get("refused"):
            extra = f"**refused** ({build['seconds']:.0f} s): {build['refused'].split(' (first attempt')[0][:220]}"
        else:
            kept = f"{first['kept_float_final']} layers in float" if first else "every layer INT8"
            extra = f"built, {kept}, {build['size_bytes'] / 2**20:.2f} MiB, {build['seconds']:.0f} s"
        lines.append(_row(label, build.get("unseen"), extra))
    for name, unseen in record["peers"].items():
        lines.append(_row(name, unseen, "every layer INT8"))
    lines += ["", "## The guard's first attempt (every layer INT8) on its own held-out samples", "",
              "| build | held-out samples | top-1 changes | expected loss (pts) | under 0.99 | passes now | "
              "refused by the old top-1 rule |", "|---|---:|---:|---:|---:|---|---|"]
    for build in record["builds"]:
        first = build["first_attempt"]
        if first:
            lines.append(f"| {build['variant']}, seed {build['seed']} | {first['samples']} | {first['top1_changes']} | "
                         f"{first['expected_loss']:.2f} | {first['diverged']} | {'yes' if first['passes_now'] else 'no'} | "
                         f"{'yes' if first['old_top1_rule_refuses'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    record = run()
    (BENCH_DIR / "guard_verdict.json").write_text(json.dumps(record, indent=1, default=str))
    (BENCH_DIR / "guard_verdict.md").write_text(render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
