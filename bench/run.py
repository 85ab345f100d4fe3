"""Regenerate BENCHMARKS.md: FP32 vs INT8 (edgekiln and ORT's defaults) vs dynamic INT8 vs FP16 on ORT CPU.

    python -m bench.run                    # full run (~10 min on 2 cores): BENCHMARKS.md + bench/results.json
    python -m bench.run --quick            # smoke check (~1 min once the FP32 exports are cached)
    python -m bench.run --only resnet18    # one model (resnet18, mobilenet_v2, fashion_mnist)

Quick and partial runs write to bench/.cache/ so they never replace the full record
(pass --md/--json to choose). FP32 exports are cached in bench/.cache/ (keyed by
everything that determines them); the INT8/FP16 variants are rebuilt every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench import data, machine, models, quality, report, timing, variants
from bench.record import ModelResult, RunRecord, VariantResult, check_targets

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
MODEL_NAMES = ("resnet18", "mobilenet_v2", "fashion_mnist")
THREADS = 2
SEED = 0
BATCHNORM_IMAGES = 64  # same in quick and full runs, so both share one cached FP32 export
FASHION_CALIBRATION = 300  # training images; as many as the bundled example ships for calibration
FASHION_API_HOLDOUT = 200  # extra labelled training images api.calibrate's guard checks accuracy on
TITLES = {"resnet18": "ResNet-18-sized CNN", "mobilenet_v2": "MobileNetV2-sized CNN",
          "fashion_mnist": "Fashion-MNIST CNN (bundled example)"}


@dataclasses.dataclass(frozen=True)
class Settings:
    plan: timing.TimingPlan
    cnn_calibration: int
    cnn_holdout: int
    test_images: int | None
    """Fashion-MNIST test images for accuracy; None for all 10,000."""
    cnn_data: data.CnnSource
    api_on_cnns: bool
    """Whether the ImageNet-sized models get an ``api.calibrate`` row (its guard takes about a minute each)."""


FULL = Settings(timing.TimingPlan(rounds=15, runs_per_round=20, warmup=10), cnn_calibration=64, cnn_holdout=32,
                test_images=None, cnn_data="fashion", api_on_cnns=True)
QUICK = Settings(timing.TimingPlan(rounds=3, runs_per_round=5, warmup=2), cnn_calibration=16, cnn_holdout=8,
                 test_images=1000, cnn_data="fashion", api_on_cnns=False)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- FP32 models ------------------------------------------------------------------------------


def _file_digest(*paths: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()[:12]


def _convert_cached(path: Path, convert: Callable[[Path], object]) -> Path:
    """Export once: convert to a temporary name and rename, so an interrupted run leaves no half file."""
    if path.is_file():
        return path
    partial = path.with_name(path.stem + ".partial.onnx")
    partial.unlink(missing_ok=True)
    convert(partial)
    partial.replace(path)
    return path


def cnn_fp32(name: str, source: data.CnnSource) -> Path:
    """The verified FP32 ONNX of a random-weight CNN with settled BatchNorm (cached)."""
    import torch

    from toolchain import __version__ as edgekiln_version

    key = variants.cache_key(name, SEED, BATCHNORM_IMAGES, source, torch.__version__, edgekiln_version,
                             _file_digest(BENCH_DIR / "models.py", BENCH_DIR / "data.py"))
    path = CACHE_DIR / f"{name}-{key}.onnx"
    if path.is_file():
        return path
    _log(f"{name}: building the network and settling BatchNorm on {BATCHNORM_IMAGES} images")
    network = models.build(name, SEED)
    images = torch.from_numpy(data.cnn_images(source, BATCHNORM_IMAGES, "batchnorm", SEED))
    models.settle_batchnorm(network, images.split(16), SEED)
    weights = path.with_suffix(".pth")
    weights.parent.mkdir(parents=True, exist_ok=True)  # a fresh checkout has no cache folder yet
    torch.save(network.state_dict(), weights)
    _log(f"{name}: exporting with toolchain.api.convert (opset 17, batch 1, verified against PyTorch)")
    model_class = f"bench.models:{models.ARCHITECTURES[name].__name__}"
    spec = "input:" + "x".join(map(str, models.INPUT_SHAPE))
    return _convert_cached(path, lambda out: variants.convert_state_dict(weights, model_class, spec, out))


def fashion_fp32() -> Path:
    """The bundled example exported with a dynamic batch axis (batched accuracy, batch-1 latency)."""
    from toolchain import __version__ as edgekiln_version
    from toolchain.examples.fashion_mnist import MODEL_CLASS, weights_path
    from toolchain.examples.fashion_mnist.train import MODEL_KWARGS

    key = variants.cache_key("fashion_mnist", edgekiln_version, _file_digest(weights_path()))
    path = CACHE_DIR / f"fashion_mnist-{key}.onnx"
    return _convert_cached(path, lambda out: variants.convert_state_dict(
        weights_path(), MODEL_CLASS, "image:Nx1x28x28", out, model_kwargs=MODEL_KWARGS, dynamic_batch=True))


# --- measuring one model ----------------------------------------------------------------------

Feed = dict[str, np.ndarray]
QualityFn = Callable[[dict[str, quality.Predict]], dict[str, dict[str, float]]]


@dataclasses.dataclass
class Workload:
    """One model to benchmark: its FP32 file, the data for each step, and how its outputs are judged."""

    name: str
    summary: str
    calibration: str
    quality_note: str
    fp32: Path
    calib_feeds: list[Feed]
    latency_feed: Feed
    quality_fn: QualityFn
    api_calibration: variants.ApiCalibration | None = None


def _open(path: Path):
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner.from_path(path, threads=THREADS)


def _predict(runner) -> quality.Predict:
    return lambda feed: next(iter(runner.run(feed).values()))


def _variant_results(built: dict[str, variants.Variant]) -> tuple[dict[str, VariantResult], dict[str, object]]:
    """A result row per variant, and an ORT session for each variant that loads."""
    fp32_size = built["fp32"].path.stat().st_size
    rows: dict[str, VariantResult] = {}
    runners: dict[str, object] = {}
    for name, variant in built.items():
        row = VariantResult(name, variants.LABELS[name], build_seconds=variant.build_seconds, error=variant.error,
                            note=variant.note, calibration_data=variant.calibration_data)
        rows[name] = row
        if variant.path is None:
            continue
        row.size_bytes = variant.path.stat().st_size
        row.size_ratio = row.size_bytes / fp32_size
        row.quant_param_bytes = variants.quant_param_bytes(variant.path)
        try:
            runners[name] = _open(variant.path)
            graph = variants.optimized_graph(variant.path, THREADS)
            row.ops, row.weight_types = graph.ops, graph.weight_types
        except Exception as exc:  # e.g. no CPU kernel for an op in this precision: report it
            row.error = f"ONNX Runtime cannot run it: {exc}".splitlines()[0]
            runners.pop(name, None)
    return rows, runners


def measure(work: Workload, plan: timing.TimingPlan) -> ModelResult:
    """Build every variant of the FP32 model, check its outputs, and time all of them interleaved."""
    _log(f"{work.name}: building variants (calibrating on {len(work.calib_feeds)} samples)")
    built = variants.make_variants(work.fp32, work.calib_feeds, CACHE_DIR / "variants" / work.name,
                                   work.api_calibration)
    rows, runners = _variant_results(built)
    _log(f"{work.name}: checking outputs of {', '.join(runners)}")
    for variant, scores in work.quality_fn({v: _predict(r) for v, r in runners.items()}).items():
        rows[variant].quality = scores
    _log(f"{work.name}: timing, {plan.rounds} rounds x {plan.runs_per_round} runs per variant, interleaved")
    feed = work.latency_feed
    load_before = machine.load_average()
    samples = timing.interleaved({v: (lambda r=r: r.run(feed)) for v, r in runners.items()}, plan)
    load_after = machine.load_average()
    for variant, latency in timing.summarize(samples, reference="fp32").items():
        rows[variant].latency = latency
    load = (load_before[0], load_after[0]) if load_before and load_after else None
    return ModelResult(work.name, TITLES[work.name], work.summary, work.calibration, work.quality_note,
                       list(rows.values()), load)


# --- the three models -------------------------------------------------------------------------


def _feeds(input_name: str, batch: np.ndarray) -> list[Feed]:
    return [{input_name: batch[i: i + 1]} for i in range(len(batch))]


def _agreement_with_fp32(feeds: Sequence[Feed]) -> QualityFn:
    def score(predictors: dict[str, quality.Predict]) -> dict[str, dict[str, float]]:
        reference = quality.outputs(predictors["fp32"], feeds)
        return {name: quality.agreement(reference, quality.outputs(predict, feeds))
                for name, predict in predictors.items() if name != "fp32"}
    return score


def _api_arrays(name: str, calib: np.ndarray, held_out: np.ndarray) -> variants.ApiCalibration:
    """The CNN samples as one .npy file, the array source ``api.calibrate`` accepts (it splits it itself)."""
    path = CACHE_DIR / "api-calibration" / f"{name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.concatenate([calib, held_out]))
    return variants.ApiCalibration(path, len(calib), len(held_out),
                                   f"the same {len(calib)} + {len(held_out)} images as one .npy file, split by the "
                                   "command (seed 0), so its calibration images differ from the other rows'")


def run_cnn(name: str, settings: Settings) -> ModelResult:
    fp32 = cnn_fp32(name, settings.cnn_data)
    calib = data.cnn_images(settings.cnn_data, settings.cnn_calibration, "calibration", SEED)
    held_out = data.cnn_images(settings.cnn_data, settings.cnn_holdout, "holdout", SEED)
    holdout = _feeds("input", held_out)
    parameters = models.parameter_count(models.build(name, SEED))
    summary = (f"`bench.models.{models.ARCHITECTURES[name].__name__}`, {parameters / 1e6:.2f} M parameters, "
               f"input {'x'.join(map(str, models.INPUT_SHAPE))}, {models.NUM_CLASSES} classes, "
               f"random weights (seed {SEED})")
    calibration = (f"{settings.cnn_calibration} images: {data.describe_cnn_source(settings.cnn_data)}; "
                   f"disjoint from the {BATCHNORM_IMAGES} that set BatchNorm and the {settings.cnn_holdout} "
                   f"held out for agreement")
    note = (f"agreement with FP32 on {settings.cnn_holdout} held-out images (random weights, so there is no "
            f"accuracy to measure): mean / worst logit cosine similarity, and how often the top-1 class matches")
    api = _api_arrays(name, calib, held_out) if settings.api_on_cnns else None
    return measure(Workload(name, summary, calibration, note, fp32, _feeds("input", calib), holdout[0],
                            _agreement_with_fp32(holdout), api), settings.plan)


def _labelled_png_folder(images: data.LabelledImages, folder: Path) -> Path:
    """Training images as ``folder/<label>_<class>/<index>.png``: the labelled layout ``api.calibrate`` reads."""
    import shutil

    from PIL import Image

    from toolchain.examples.fashion_mnist import SAMPLE_FOLDERS

    shutil.rmtree(folder, ignore_errors=True)
    raw = np.rint(images.images[:, 0] * 255).astype(np.uint8)  # exact: the images were pixel / 255
    for pixels, label, index in zip(raw, images.labels, images.indices):
        (folder / SAMPLE_FOLDERS[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / SAMPLE_FOLDERS[label] / f"{index:05d}.png")
    return folder


def run_fashion(settings: Settings) -> ModelResult:
    fp32 = fashion_fp32()
    calib = data.fashion_subset("train", FASHION_CALIBRATION, seed=SEED)
    test = data.fashion_subset("t10k", settings.test_images, seed=None)
    api_images = data.fashion_subset("train", FASHION_CALIBRATION + FASHION_API_HOLDOUT, seed=SEED + 1)
    folder = _labelled_png_folder(api_images, CACHE_DIR / "api-calibration" / "fashion_mnist")
    api_calibration = variants.ApiCalibration(
        folder, FASHION_CALIBRATION, FASHION_API_HOLDOUT,
        f"{len(api_images.labels)} labelled training images (seeded choice, seed {SEED + 1}) as a PNG folder, "
        f"split by the command into {FASHION_CALIBRATION} calibration and {FASHION_API_HOLDOUT} held-out images",
        preprocess="gray01")

    def accuracy(predictors: dict[str, quality.Predict]) -> dict[str, dict[str, float]]:
        return {name: {"top1": quality.top1_accuracy(predict, "image", test.images, test.labels),
                       "samples": len(test.labels)} for name, predict in predictors.items()}

    summary = ("`toolchain.examples.fashion_mnist` FashionCNN with its trained weights, input Nx1x28x28 "
               "(exported with a dynamic batch; timed at batch 1)")
    calibration = (f"{FASHION_CALIBRATION} Fashion-MNIST training images (seeded choice, seed {SEED}), "
                   f"`gray01` preprocessing (pixel/255)")
    note = f"top-1 on {'all ' if settings.test_images is None else 'the first '}{len(test.labels):,} test images"
    return measure(Workload("fashion_mnist", summary, calibration, note, fp32, _feeds("image", calib.images),
                            {"image": test.images[:1]}, accuracy, api_calibration), settings.plan)


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and images (smoke check)")
    parser.add_argument("--only", choices=MODEL_NAMES, action="append", help="benchmark only this model (repeatable)")
    parser.add_argument("--cnn-data", choices=("fashion", "photos"), default="fashion",
                        help="calibration images for the 224x224 CNNs: Fashion-MNIST (default) or "
                             "scikit-image's bundled photos (needs scikit-image)")
    parser.add_argument("--md", type=Path, help="markdown output (default: BENCHMARKS.md for a full run)")
    parser.add_argument("--json", type=Path, help="JSON output (default: bench/results.json for a full run)")
    return parser.parse_args(argv)


def _mode(args: argparse.Namespace) -> str:
    parts = (["quick"] if args.quick else []) + ([f"only {', '.join(args.only)}"] if args.only else [])
    parts += [f"cnn-data {args.cnn_data}"] if args.cnn_data != "fashion" else []
    return "; ".join(parts) or "full"


def _outputs(args: argparse.Namespace, mode: str) -> tuple[Path, Path]:
    # Only a full run replaces the committed record; anything else goes to the cache folder.
    if mode == "full":
        return args.md or REPO_DIR / "BENCHMARKS.md", args.json or BENCH_DIR / "results.json"
    return args.md or CACHE_DIR / "BENCHMARKS.partial.md", args.json or CACHE_DIR / "results.partial.json"


def _method(settings: Settings) -> dict[str, object]:
    return {"threads": THREADS, "timing": dataclasses.asdict(settings.plan), "seed": SEED, "opset": variants.OPSET,
            "batchnorm_gamma": models.GAMMA_RANGE, "batchnorm_beta_std": models.BETA_STD,
            "api_calibrate": variants.has_api_calibrate(), "fashion_api_holdout_images": FASHION_API_HOLDOUT,
            "cnn_calibration_images": settings.cnn_calibration, "cnn_holdout_images": settings.cnn_holdout,
            "batchnorm_images": BATCHNORM_IMAGES, "fashion_calibration_images": FASHION_CALIBRATION,
            "fashion_test_images": settings.test_images or 10_000, "cnn_data": settings.cnn_data}


def _write(record: RunRecord, md_path: Path, json_path: Path) -> None:
    for path in (md_path, json_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(dataclasses.asdict(record), indent=1) + "\n", encoding="utf-8")
    md_path.write_text(report.render(record), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = dataclasses.replace(QUICK if args.quick else FULL, cnn_data=args.cnn_data)
    mode = _mode(args)
    names = [n for n in MODEL_NAMES if not args.only or n in args.only]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    started, started_utc = time.perf_counter(), datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = machine.load_average()
    results = {name: run_fashion(settings) if name == "fashion_mnist" else run_cnn(name, settings) for name in names}
    command = shlex.join(["python", "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)])
    record = RunRecord(command, mode, started_utc, time.perf_counter() - started, machine.describe(), load_before,
                       machine.load_average(), _method(settings), results, check_targets(results))
    md_path, json_path = _outputs(args, mode)
    _write(record, md_path, json_path)
    _log(f"done in {record.seconds / 60:.1f} min: wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
