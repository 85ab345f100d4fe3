"""What a pass reports: graph statistics before and after, and what it did."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from pydantic import BaseModel, ConfigDict, ValidationError

from toolchain.errors import UsageError


class PassConfig(BaseModel):
    """Base of pass configs: typed, every field described, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_options(cls, **options: Any) -> "PassConfig":
        """Validate user options, turning pydantic's report into one plain sentence."""
        try:
            return cls(**options)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise UsageError(f"invalid options for {cls.__name__}: {problems}") from exc


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
