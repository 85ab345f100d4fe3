"""``edgekiln inspect model.tflite``: ops, tensor types, quantization parameters and size.

Reads the flatbuffer directly (``flatbuffer.read_tflite``), so it works on any
``.tflite`` file, including ones whose ops the host interpreter lacks.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from backends.tflite.flatbuffer import TFLiteTensor, TFLiteGraph, read_tflite
from toolchain.errors import printable
from toolchain.fileio import require_file

_SHOWN_SCALES = 4
_SHOWN_TENSORS = 25
_NAME_WIDTH = 60


def _quantization(tensor: TFLiteTensor) -> dict[str, Any] | None:
    if not tensor.scales:
        return None
    per_channel = len(tensor.scales) > 1
    return {"scheme": "per-channel" if per_channel else "per-tensor", "axis": tensor.quantized_dimension,
            "scales": list(tensor.scales), "zero_points": list(tensor.zero_points)}


def _tensor_dict(tensor: TFLiteTensor) -> dict[str, Any]:
    return {"index": tensor.index, "name": tensor.name, "shape": list(tensor.shape_signature), "dtype": tensor.dtype,
            "constant": tensor.is_constant, "bytes": tensor.constant_bytes or tensor.nbytes,
            "quantization": _quantization(tensor)}


def _io(graph: TFLiteGraph, indices: list[int], names: dict[int, str]) -> list[dict[str, Any]]:
    rows = []
    for index in indices:
        row = _tensor_dict(graph.tensors[index])
        row["signature_name"] = names.get(index)
        rows.append(row)
    return rows


def summarize_tflite(path: Path) -> dict[str, Any]:
    """Everything ``inspect`` shows, as JSON-ready data."""
    from backends.tflite.mcu import micro_ops

    path = require_file(Path(path), "TFLite model")
    graph = read_tflite(path)
    signature = next(iter(graph.signatures.values()), {"inputs": {}, "outputs": {}})
    in_names = {i: k for k, i in signature["inputs"].items()}
    out_names = {i: k for k, i in signature["outputs"].items()}
    quantized = [t for t in graph.tensors if t.scales]
    constants = [t for t in graph.tensors if t.is_constant]
    return {
        "file": str(path), "format": "tflite", "size_bytes": graph.size_bytes, "schema_version": graph.version,
        "description": graph.description, "subgraphs": graph.subgraphs, "signatures": list(graph.signatures),
        "inputs": _io(graph, graph.inputs, in_names), "outputs": _io(graph, graph.outputs, out_names),
        "operators": len(graph.operators), "ops": dict(Counter(op.op for op in graph.operators)),
        "tensor_types": dict(Counter(t.dtype for t in graph.tensors)),
        "constant_bytes": sum(t.constant_bytes for t in constants),
        "constant_types": dict(Counter(t.dtype for t in constants)),
        "quantized_tensors": {"total": len(quantized),
                              "per_channel": sum(1 for t in quantized if len(t.scales) > 1),
                              "per_tensor": sum(1 for t in quantized if len(t.scales) == 1)},
        "tflm_unsupported_ops": micro_ops(graph).unsupported,
        "tensors": [_tensor_dict(t) for t in graph.tensors],
    }


def _quant_text(quant: dict[str, Any] | None) -> str:
    if not quant:
        return ""
    scales = quant["scales"]
    if quant["scheme"] == "per-tensor":
        return f"scale {scales[0]:.6g}, zero point {quant['zero_points'][0]}"
    shown = ", ".join(f"{s:.3g}" for s in scales[:_SHOWN_SCALES])
    more = ", ..." if len(scales) > _SHOWN_SCALES else ""
    return f"per-channel (axis {quant['axis']}, {len(scales)} scales: {shown}{more})"


def _tensor_line(row: dict[str, Any]) -> str:
    shape = "x".join(str(d) for d in row["shape"]) or "scalar"
    name = row.get("signature_name") or row["name"]
    name = name if len(name) <= _NAME_WIDTH else "..." + name[-(_NAME_WIDTH - 3):]
    quant = _quant_text(row["quantization"])
    return f"  {name}: {shape} {row['dtype']}" + (f"  [{quant}]" if quant else "")


def format_tflite_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of ``summarize_tflite``'s result."""
    size = summary["size_bytes"]
    lines = [f"{summary['file']}: TFLite model, {size:,} bytes ({size / 1024:.1f} KiB), "
             f"{summary['operators']} ops in {summary['subgraphs']} subgraph(s)"]
    if summary["description"]:
        lines.append(f"description: {summary['description']}")
    lines.append("inputs:")
    lines += [_tensor_line(r) for r in summary["inputs"]]
    lines.append("outputs:")
    lines += [_tensor_line(r) for r in summary["outputs"]]
    lines.append("ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(summary["ops"].items(), key=lambda i: -i[1])))
    lines.append("tensor types: " + ", ".join(f"{t} {n}" for t, n in sorted(summary["tensor_types"].items())))
    lines.append(f"weights/constants: {summary['constant_bytes']:,} bytes ("
                 + ", ".join(f"{t} {n}" for t, n in sorted(summary["constant_types"].items())) + ")")
    quant = summary["quantized_tensors"]
    lines.append(f"quantized tensors: {quant['total']} ({quant['per_channel']} per-channel, "
                 f"{quant['per_tensor']} per-tensor)")
    if summary["tflm_unsupported_ops"]:
        lines.append("not in TensorFlow Lite Micro: " + ", ".join(summary["tflm_unsupported_ops"]))
    quantized = [t for t in summary["tensors"] if t["quantization"] and not t["constant"]]
    if quantized:
        lines.append("activation quantization:")
        lines += [_tensor_line(t) for t in quantized[:_SHOWN_TENSORS]]
        if len(quantized) > _SHOWN_TENSORS:
            lines.append(f"  ... {len(quantized) - _SHOWN_TENSORS} more (--json shows all)")
    return "\n".join(printable(line) for line in lines)  # tensor names come from the file
