"""The "what this shows" sentences, derived from the measured numbers (so they cannot go stale)."""

from __future__ import annotations

from bench.record import ModelResult, RunRecord, VariantResult
from bench.variants import float_compute_ops


def _ratio(row: VariantResult | None) -> float | None:
    return row.latency.ratio_vs_reference if row and row.latency else None


def _rows(record: RunRecord, variant: str) -> list[tuple[ModelResult, VariantResult]]:
    return [(m, v) for m in record.models.values() if (v := m.variant(variant)) is not None]


def _list(items: list[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def _int8_vs_peer(model: ModelResult) -> str | None:
    ours, peer = model.variant("int8"), model.variant("int8-ort-default")
    if _ratio(ours) is None or _ratio(peer) is None or not ours.ops or not peer.ops:
        return None
    ours_float, peer_float = float_compute_ops(ours.ops), float_compute_ops(peer.ops)
    sentence = (f"{model.title}: edgekiln INT8 runs at {_ratio(ours):.2f}x FP32, ORT's default static "
                f"quantization at {_ratio(peer):.2f}x.")
    if sum(peer_float.values()) > sum(ours_float.values()):
        sentence += (f" In ORT's optimised graph the peer model keeps {sum(peer_float.values())} compute ops in "
                     f"float ({', '.join(f'{op} ×{n}' for op, n in peer_float.items())}) and has "
                     f"{peer.ops.get('Transpose', 0)} Transposes, against {sum(ours_float.values())} and "
                     f"{ours.ops.get('Transpose', 0)} for edgekiln's uint8-activation model: with int8 "
                     "activations ORT leaves those ops as DequantizeLinear → float op → QuantizeLinear.")
    return sentence


def _dynamic(record: RunRecord) -> str | None:
    rows = [(m, v) for m, v in _rows(record, "dynamic") if _ratio(v) is not None]
    if not rows:
        return None
    ratios = _list([f"{_ratio(v):.2f}x on the {m.title}" for m, v in rows])
    slower = [m.title for m, v in rows if _ratio(v) < 1]
    sentence = f"Dynamic INT8 runs at {ratios}."
    if slower:
        convs = sum((v.ops or {}).get("ConvInteger", 0) for _, v in rows)
        sentence += (" Where it is slower than FP32, that is because ORT has no fused dynamic convolution: "
                     f"each Conv becomes DynamicQuantizeLinear + ConvInteger + a float rescale ({convs} "
                     "ConvInteger nodes over these models), and activations are re-quantized at run time. "
                     "Dynamic quantization suits MatMul-heavy models (transformers, RNNs), not CNNs.")
    return sentence


def _fp16(record: RunRecord) -> str | None:
    rows = [(m, v) for m, v in _rows(record, "fp16") if _ratio(v) is not None]
    if not rows:
        return None
    ratios = _list([f"{_ratio(v):.2f}x on the {m.title}" for m, v in rows])
    sizes = _list([f"{v.size_ratio:.0%}" for _, v in rows if v.size_ratio is not None])
    if all(_ratio(v) < 1.05 for _, v in rows):
        return (f"FP16 does not make this CPU faster ({ratios}); it only halves the file (to {sizes} of FP32). "
                "On ONNX Runtime's CPU provider FP16 is a size option, not a speed one; its speed case is GPUs "
                "(TensorRT) and NPUs.")
    return f"FP16 runs at {ratios}, with files at {sizes} of FP32."


def _size(record: RunRecord) -> str | None:
    parts = []
    for model, ours in _rows(record, "int8"):
        peer = model.variant("int8-ort-default")
        if ours.size_ratio is None or ours.quant_param_bytes is None or not peer or peer.quant_param_bytes is None:
            continue
        fp32_bytes = ours.size_bytes / ours.size_ratio
        parts.append(f"{model.title} {ours.size_ratio:.1%} (peer {peer.size_ratio:.1%}; scales and zero points "
                     f"{ours.quant_param_bytes / 1e3:.0f} kB = {ours.quant_param_bytes / fp32_bytes:.1%} of FP32, "
                     f"peer {peer.quant_param_bytes / 1e3:.1f} kB)")
    if not parts:
        return None
    return ("INT8 file size vs FP32: " + "; ".join(parts) + ". The int8 weights themselves are a quarter of the "
            "float ones; per-channel quantization adds a scale and zero point per output channel for each weight "
            "and each int32 bias, which is why edgekiln's files are a little larger than the per-tensor peer's, "
            "and why small or depthwise-heavy models land above 25%.")


def _small_model(record: RunRecord) -> str | None:
    model = record.models.get("fashion_mnist")
    fp32, int8 = (model.variant("fp32"), model.variant("int8")) if model else (None, None)
    if not fp32 or not int8 or not fp32.latency or not int8.latency:
        return None
    sentence = (f"The Fashion-MNIST model is tiny ({fp32.latency.median_ms * 1000:.0f} µs per image in FP32, "
                f"{int8.latency.median_ms * 1000:.0f} µs in INT8: {_ratio(int8):.2f}x).")
    if _ratio(int8) < 1:
        sentence += (" At this size fixed costs per call and per op dominate, and the INT8 graph adds ops of its "
                     "own (quantizing the input, layout Transposes, dequantizing the output; see its op table), "
                     "so INT8 buys size, not speed, on models this small.")
    return sentence


def _accuracy(record: RunRecord) -> str | None:
    model = record.models.get("fashion_mnist")
    fp32 = model.variant("fp32") if model else None
    if not fp32 or "top1" not in fp32.quality:
        return None
    parts = [f"{v.label.split(' (')[0]} {100 * (v.quality['top1'] - fp32.quality['top1']):+.2f}"
             for v in model.variants if v.name != "fp32" and "top1" in v.quality]
    return (f"Accuracy on Fashion-MNIST ({100 * fp32.quality['top1']:.2f}% in FP32), points vs FP32: "
            f"{'; '.join(parts)}.")


def _agreement(record: RunRecord) -> str | None:
    parts = []
    for model in record.models.values():
        for row in model.variants:
            if "cosine_mean" in row.quality and row.name in ("int8", "int8-ort-default"):
                parts.append(f"{row.label.split(' (')[0]} on the {model.title}: cosine {row.quality['cosine_mean']:.4f}, "
                             f"top-1 same {row.quality['top1_agreement']:.0%}")
    if not parts:
        return None
    return ("Closeness to FP32 on held-out images (random-weight networks, whose nearly tied logits make top-1 "
            "agreement a harsh test): " + "; ".join(parts) + ".")


def findings(record: RunRecord) -> list[str]:
    sentences = [_int8_vs_peer(m) for m in record.models.values()]
    sentences += [_accuracy(record), _agreement(record), _size(record), _dynamic(record), _fp16(record),
                  _small_model(record)]
    return [s for s in sentences if s]
