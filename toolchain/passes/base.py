"""What a pass reports: graph statistics before and after, and what it did."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from toolchain.passes.config import PassConfig  # noqa: F401 - re-exported: every pass config's base


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    initializers: int
    parameters: int
    serialized_bytes: int
    op_counts: dict[str, int]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "GraphStats":
        params = sum(_elements(t) for t in model.graph.initializer)
        return cls(nodes=len(model.graph.node), initializers=len(model.graph.initializer), parameters=params,
                   serialized_bytes=model.ByteSize(), op_counts=dict(Counter(n.op_type for n in model.graph.node)))


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


@dataclass
class PassReport:
    name: str
    before: GraphStats
    after: GraphStats
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.name}: nodes {self.before.nodes} -> {self.after.nodes}, "
                f"initializers {self.before.initializers} -> {self.after.initializers}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
