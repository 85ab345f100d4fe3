"""The "what this shows" sentences, derived from the measured numbers (so they cannot go stale).

Each function returns one sentence, or None when the run lacks what it talks about; wording
that depends on a result (faster or slower, met or not) is chosen from the numbers.
"""

from __future__ import annotations

from bench.record import ModelResult, RunRecord, VariantResult
from bench.variants import float_compute_ops

_SHORT = {"resnet18": "ResNet-18", "mobilenet_v2": "MobileNetV2", "fashion_mnist": "Fashion-MNIST"}


def first_sentence(text: str) -> str:
    """Up to the first ". " (decimals like 0.99 survive): e.g. a refusal's numbers without its hint."""
    return text.split(". ")[0].rstrip(".")


def _short(model: ModelResult) -> str:
    return _SHORT.get(model.name, model.title)


def _ratio(row: VariantResult | None) -> float | None:
    return row.latency.ratio_vs_reference if row and row.latency else None


def _timed_rows(record: RunRecord, variant: str) -> list[tuple[ModelResult, VariantResult]]:
    return [(m, v) for m in record.models.values() if _ratio(v := m.variant(variant)) is not None]


def _per_model(rows: list[tuple[ModelResult, VariantResult]]) -> str:
    return ", ".join(f"{_ratio(v):.2f}x on {_short(m)}" for m, v in rows)


def _counts(ops: dict[str, int]) -> str:
    return ", ".join(f"{op} ×{n}" for op, n in ops.items())


def _int8_vs_peer(model: ModelResult) -> str | None:
    ours, peer = model.variant("int8"), model.variant("int8-ort-default")
    if _ratio(ours) is None or _ratio(peer) is None or not ours.ops or not peer.ops:
        return None
    sentence = (f"{_short(model)}: edgekiln INT8 {_ratio(ours):.2f}x FP32, ORT's default static INT8 "
                f"{_ratio(peer):.2f}x.")
    peer_float, ours_float = float_compute_ops(peer.ops), float_compute_ops(ours.ops)
    if sum(peer_float.values()) > sum(ours_float.values()):
        sentence += (f" With int8 activations ORT finds no fused integer kernel for part of the graph: its optimised "
                     f"peer graph still runs {_counts(peer_float)} in float between Dequantize/Quantize pairs, with "
                     f"{peer.ops.get('Transpose', 0)} layout Transposes (edgekiln's uint8 graph: "
                     f"{sum(ours_float.values())} float compute ops, {ours.ops.get('Transpose', 0)} Transposes).")
    return sentence


def _accuracy(record: RunRecord) -> str | None:
    model = record.models.get("fashion_mnist")
    fp32 = model.variant("fp32") if model else None
    if not fp32 or "top1" not in fp32.quality:
        return None
    deltas = "; ".join(f"{v.label.split(' (')[0]} {100 * (v.quality['top1'] - fp32.quality['top1']):+.2f}"
                       for v in model.variants if v.name != "fp32" and "top1" in v.quality)
    return (f"Accuracy (trained Fashion-MNIST model, {fp32.quality['samples']:,} test images, "
            f"{100 * fp32.quality['top1']:.2f}% in FP32), points vs FP32: {deltas}.")


def _agreement(record: RunRecord) -> str | None:
    parts = []
    for model in record.models.values():
        ours, peer = model.variant("int8"), model.variant("int8-ort-default")
        if ours and peer and "cosine_mean" in ours.quality and "cosine_mean" in peer.quality:
            parts.append(f"{_short(model)} {ours.quality['cosine_mean']:.4f} (peer {peer.quality['cosine_mean']:.4f})")
    if not parts:
        return None
    return ("On the random-weight networks, mean logit cosine of edgekiln INT8 vs FP32: " + ", ".join(parts) + ". "
            "Their logits are nearly tied, so top-1 agreement in the tables is a harsh measure; the cosine is "
            "the better guide there.")


def _api_calibrate(record: RunRecord) -> str | None:
    parts = []
    for model in record.models.values():
        row = model.variant("int8-api")
        if row is None:
            continue
        if row.latency is not None:
            parts.append(f"{_short(model)}: wrote a model, {_ratio(row):.2f}x FP32 ({row.note})")
        elif row.error and "VerificationError" in row.error:
            parts.append(f"{_short(model)}: refused ({first_sentence(row.error).split(': ')[-1]})")
        elif row.error:
            parts.append(f"{_short(model)}: failed ({first_sentence(row.error)})")
    if not parts:
        return None
    return "`api.calibrate` with its default accuracy guard: " + "; ".join(parts) + "."


def _size(record: RunRecord) -> str | None:
    parts = []
    for model in record.models.values():
        ours, peer = model.variant("int8"), model.variant("int8-ort-default")
        if not ours or ours.size_ratio is None or ours.quant_param_bytes is None or not peer or not peer.size_ratio:
            continue
        fp32_bytes = ours.size_bytes / ours.size_ratio
        parts.append(f"{_short(model)} {ours.size_ratio:.1%} (per-tensor peer {peer.size_ratio:.1%}; scales and "
                     f"zero points {100 * ours.quant_param_bytes / fp32_bytes:.1f}% of FP32)")
    if not parts:
        return None
    return ("INT8 size vs FP32: " + "; ".join(parts) + ". Int8 weights are a quarter of float32 ones; per-channel "
            "quantization adds a scale and zero point per output channel (for weights and int32 biases), which "
            "weighs most in small and depthwise-heavy models.")


def _dynamic(record: RunRecord) -> str | None:
    rows = _timed_rows(record, "dynamic")
    if not rows:
        return None
    sentence = f"Dynamic INT8: {_per_model(rows)}."
    if any(_ratio(v) < 1 for _, v in rows) and any((v.ops or {}).get("ConvInteger") for _, v in rows):
        sentence += (" ORT has no fused dynamic convolution: each Conv runs as DynamicQuantizeLinear + ConvInteger + "
                     "a float rescale (see the op tables), so it suits MatMul-heavy models (transformers, RNNs), "
                     "not CNNs.")
    return sentence


def _extra_ops(reference: VariantResult | None, row: VariantResult) -> dict[str, int]:
    """Ops (Casts aside) that ``row``'s optimised graph runs more often than ``reference``'s."""
    before, after = (reference.ops if reference else None) or {}, row.ops or {}
    return {op: n - before.get(op, 0) for op, n in after.items() if op != "Cast" and n > before.get(op, 0)}


def _fp16(record: RunRecord) -> str | None:
    rows = _timed_rows(record, "fp16")
    if not rows:
        return None
    sentence = f"FP16: {_per_model(rows)}, at half the file size."
    as_float = sum((v.weight_types or {}).get("FLOAT", 0) for _, v in rows)
    as_half = sum((v.weight_types or {}).get("FLOAT16", 0) for _, v in rows)
    if as_float > as_half:
        sentence += (f" ORT's CPU provider does not compute in FP16 here: its optimised FP16 graphs hold {as_float} "
                     f"float32 and {as_half} float16 weight tensors, i.e. it inserts casts and runs float32 kernels.")
        extra = [f"{_short(m)} {_counts(ops)}" for m, v in rows if (ops := _extra_ops(m.variant("fp32"), v))]
        if extra:
            sentence += " Where the casts block fusions it also runs extra ops (" + "; ".join(extra) + ")."
        sentence += " FP16 pays off on GPUs (TensorRT) and NPUs, not here."
    return sentence


def _small_model(record: RunRecord) -> str | None:
    model = record.models.get("fashion_mnist")
    fp32, int8 = (model.variant("fp32"), model.variant("int8")) if model else (None, None)
    if not fp32 or not int8 or not fp32.latency or not int8.latency:
        return None
    sentence = (f"The Fashion-MNIST model takes {fp32.latency.median_ms * 1000:.0f} µs in FP32 and "
                f"{int8.latency.median_ms * 1000:.0f} µs in INT8 ({_ratio(int8):.2f}x).")
    if _ratio(int8) < 1:
        sentence += (" At this size per-call and per-op costs dominate, and INT8 adds ops of its own (quantizing the "
                     "input, layout Transposes, dequantizing the output): INT8 buys size, not speed, on tiny models.")
    return sentence


def findings(record: RunRecord) -> list[str]:
    sentences = [_int8_vs_peer(m) for m in record.models.values() if m.name != "fashion_mnist"]
    sentences += [_small_model(record), _accuracy(record), _agreement(record), _api_calibrate(record),
                  _size(record), _dynamic(record), _fp16(record)]
    return [s for s in sentences if s]
