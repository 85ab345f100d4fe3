"""BENCHMARKS.md from a RunRecord. Every number printed here comes from the record; nothing is typed in."""

from __future__ import annotations

from pathlib import Path

from bench.findings import findings, first_sentence
from bench.record import ModelResult, RunRecord, TargetCheck, VariantResult
from bench.variants import float_compute_ops, integer_ops

_MB = 1e6


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _ratio(row: VariantResult) -> str:
    latency = row.latency
    if latency is None or latency.ratio_vs_reference is None:
        return "—"
    if row.name == "fp32":
        return "1.00x"
    return f"**{latency.ratio_vs_reference:.2f}x** ({latency.ratio_low:.2f}–{latency.ratio_high:.2f})"


def _size(row: VariantResult) -> tuple[str, str]:
    if row.size_bytes is None or row.size_ratio is None:
        return "—", "—"
    megabytes = row.size_bytes / _MB
    return (f"{megabytes:.2f}" if megabytes >= 0.1 else f"{megabytes:.3f}"), f"{row.size_ratio:.1%}"


def _agreement(row: VariantResult) -> str:
    q = row.quality
    if row.name == "fp32":
        return "reference"
    if "cosine_mean" not in q:
        return "—"
    return f"{q['cosine_mean']:.4f} / {q['cosine_min']:.4f} / {q['top1_agreement']:.0%}"


def _ops(counts: dict[str, int] | None) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{op} ×{n}" for op, n in counts.items())


# --- sections -----------------------------------------------------------------------------------


def _load(value: tuple[float, float, float] | None) -> str:
    return "n/a" if value is None else " / ".join(f"{x:.2f}" for x in value)


def _header(record: RunRecord) -> list[str]:
    partial = [] if record.mode == "full" else [
        f"> **Partial run ({record.mode})**: not the committed record; run `python -m bench.run` for that.", ""]
    return partial + [
        "# Benchmarks: INT8, dynamic INT8 and FP16 on ONNX Runtime (CPU)",
        "",
        "How much faster and smaller do edgekiln's precision passes make a model on ONNX Runtime's CPU "
        "provider, and what do they cost in accuracy? This file is generated: every number below comes from "
        f"one run of `{record.command}` ({record.started_utc}, {record.seconds / 60:.1f} min); the same "
        "numbers, plus per-round timings and op counts, are in `bench/results.json`. To regenerate both:",
        "",
        "```bash",
        "python -m bench.run           # full run; rewrites this file and bench/results.json",
        "python -m bench.run --quick   # smoke check: fewer rounds and images; writes bench/.cache/ only",
        "```",
        "",
    ]


def _machine(record: RunRecord) -> list[str]:
    cpu = record.machine["cpu"]
    versions = ", ".join(f"{k} {v}" for k, v in record.machine["versions"].items())
    return [
        f"**Machine.** {cpu['model']}, {cpu['logical_cpus']} logical CPUs; flags: {', '.join(cpu['flags'])} "
        f"(VNNI {'present' if cpu.get('vnni') else 'absent'}). {record.machine['platform']}. {versions}. "
        "The machine is **shared with another engineer's test runs, so timings are noisy**: load average "
        f"(1/5/15 min) {_load(record.load_before)} at the start, {_load(record.load_after)} at the end. "
        "The interleaved method below is there to keep the *ratios* meaningful anyway; absolute milliseconds "
        "on an idle machine will be lower.",
        "",
    ]


def _method(record: RunRecord) -> list[str]:
    method, plan = record.method, record.method["timing"]
    gamma_low, gamma_high = method["batchnorm_gamma"]
    api_row = ("" if not method["api_calibrate"] else
               " **edgekiln calibrate** is `toolchain.api.calibrate(..., target=\"x86\")` with its default "
               "accuracy guard, given the calibration and held-out samples as one source that it splits itself.")
    return [
        "**Method.**",
        "",
        f"- Latency: ONNX Runtime CPU execution provider, batch 1, `intra_op_num_threads={method['threads']}`, "
        "graph optimisation level ALL, one session per variant (`OnnxRuntimeRunner.from_path`). After "
        f"{plan['warmup']} warm-up runs per variant, {plan['rounds']} rounds; each round times every variant for "
        f"{plan['runs_per_round']} runs, or fewer once {plan['max_block_seconds']:g} s have passed (at least "
        f"{plan['min_runs']}), after {plan['block_warmup']} untimed ones, in an order rotated each round. "
        "*ms* is the median of all of a variant's timed runs; *x vs FP32* is the median over rounds of "
        "(FP32's round median ÷ the variant's round median), with the interquartile range over rounds in "
        "brackets.",
        "- Size: the `.onnx` file; % of the FP32 file.",
        f"- Variants: **FP32** is the export by `toolchain.api.convert` (opset {method['opset']}, verified against "
        "PyTorch). **edgekiln INT8** is `compute_ranges` + `quantize_static` with "
        "`QuantizeConfig.for_target(\"x86\")`: QDQ, uint8 activations, int8 symmetric per-channel weights, MinMax "
        "ranges. The **peer** is `onnxruntime.quantization.quantize_static(model, out, reader)` with no options: "
        "QDQ, int8 activations and weights, per-tensor, MinMax, on the same calibration feeds. **Dynamic** is "
        "`quantize_dynamic` (int8 weights; activations quantized at run time). **FP16** is `convert_fp16` "
        "(float32 inputs and outputs kept)." + api_row,
        "- The two ImageNet-sized networks have random weights (seeded) with BatchNorm put in a trained-like "
        f"state: running statistics measured on {method['batchnorm_images']} images in train mode, per-channel "
        f"gamma ~ U({gamma_low}, {gamma_high}) and beta ~ N(0, {method['batchnorm_beta_std']}). They show speed and "
        "size, and how closely each variant tracks FP32; accuracy is measured on the bundled Fashion-MNIST model, "
        "which is trained.",
        "",
    ]


def _model_table(model: ModelResult) -> list[str]:
    lines = [f"## {model.title}", "", f"{model.summary}. Static INT8 calibration: {model.calibration}.", ""]
    with_agreement = any("cosine_mean" in v.quality for v in model.variants)
    header = "| variant | median ms | x vs FP32 (IQR) | size MB | size % of FP32 |"
    rule = "|---|---:|---:|---:|---:|"
    if with_agreement:
        header += " vs FP32: cosine mean / worst / top-1 same |"
        rule += "---:|"
    lines += [header, rule]
    for row in model.variants:
        size_mb, size_pct = _size(row)
        if row.latency is None:
            cells = [row.label, "—", "no model (below)" if row.error else "—", size_mb, size_pct]
        else:
            cells = [row.label, _ms(row.latency.median_ms), _ratio(row), size_mb, size_pct]
        if with_agreement:
            cells.append(_agreement(row))
        lines.append("| " + " | ".join(cells) + " |")
    if model.load_during_timing:
        lines += ["", "1-minute load average while timing: {:.2f} at the start, {:.2f} at the end.".format(
            *model.load_during_timing)]
    if with_agreement:
        lines += ["", f"Agreement: {model.quality_note}."]
    for row in model.variants:
        parts = [f"calibration data: {row.calibration_data}" if row.calibration_data else None, row.note,
                 f"no model: {first_sentence(row.error)}" if row.error and row.latency is None else None]
        if any(parts):
            lines += ["", f"{row.label}: {'; '.join(p for p in parts if p)}."]
    return lines + [""] + _ops_table(model) + [""]


def _ops_table(model: ModelResult) -> list[str]:
    """Which ops ORT really runs in integer arithmetic, and which stay float, per quantized variant."""
    lines = ["What ONNX Runtime runs after its graph optimisations (from the optimised model it saves):", "",
             "| variant | integer kernels | compute ops left in float | Transpose |", "|---|---|---|---:|"]
    for row in model.variants:
        if row.name == "fp32" or row.ops is None:
            continue
        floats = float_compute_ops(row.ops)
        lines.append(f"| {row.label} | {_ops(integer_ops(row.ops))} | {_ops(floats)} | "
                     f"{row.ops.get('Transpose', 0)} |")
    fp32 = model.variant("fp32")
    if fp32 and fp32.ops:
        lines += ["", f"FP32 for comparison: {_ops(fp32.ops)}."]
    return lines


def _accuracy_table(model: ModelResult) -> list[str]:
    fp32 = model.variant("fp32")
    if fp32 is None or "top1" not in fp32.quality:
        return []
    lines = [f"### Accuracy: {model.title}", "", f"{model.quality_note[0].upper()}{model.quality_note[1:]}; "
             f"static INT8 calibrated on {model.calibration}.", "",
             "| variant | top-1 | points vs FP32 |", "|---|---:|---:|"]
    for row in model.variants:
        if "top1" not in row.quality:
            lines.append(f"| {row.label} | — | — |")
            continue
        delta = 100 * (row.quality["top1"] - fp32.quality["top1"])
        lines.append(f"| {row.label} | {100 * row.quality['top1']:.2f}% | "
                     f"{'—' if row.name == 'fp32' else f'{delta:+.2f}'} |")
    return lines + [""]


def _targets(checks: list[TargetCheck]) -> list[str]:
    verdict = {True: "**met**", False: "**not met**", None: "not measured"}
    lines = ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {c.target} | {c.measured} | {verdict[c.met]}{' (borderline)' if c.borderline else ''} |"
              for c in checks]
    if any(c.borderline for c in checks):
        lines += ["", "*Borderline*: the target lies inside the interquartile range of the per-round ratios, so on "
                  "this noisy machine another run can land on the other side of it."]
    return lines + [""]


# The records other benchmark commands write, kept by hand in their own file so that a regenerated
# BENCHMARKS.md keeps pointing at them with their latest summaries.
OTHER_RECORDS = Path(__file__).resolve().parent / "other_records.md"


def render(record: RunRecord) -> str:
    lines = _header(record) + _machine(record) + _method(record)
    lines += _targets(record.targets)
    for model in record.models.values():
        lines += _model_table(model)
        lines += _accuracy_table(model)
    lines += ["## What this shows", ""] + [f"- {sentence}" for sentence in findings(record)] + [""]
    return "\n".join(lines) + "\n" + OTHER_RECORDS.read_text(encoding="utf-8")
