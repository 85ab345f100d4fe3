"""The low-rank pass's config from the command's ``lowrank_*`` options; light to import (the pass is not)."""

from __future__ import annotations

from typing import Sequence

from toolchain.errors import UsageError


def lowrank_config(mode: str = "energy", energy: float = 0.95, ratio: float = 0.5, min_cosine: float | None = None,
                   max_error: float | None = None, rank_multiple: int = 8, min_params: int = 4096,
                   ops: str | Sequence[str] = "Gemm,MatMul,Conv", ranks: Sequence[str] | dict = (),
                   exclude: Sequence[str] = (), bias_correction: bool | None = None):
    """The low-rank pass's config from ``optimize``'s ``lowrank_*`` arguments (prefix dropped), validated."""
    from toolchain.passes.lowrank import LowRankConfig

    if isinstance(ranks, dict):
        fixed = dict(ranks)
    else:
        fixed = {}
        for item in ranks:
            node, sep, rank = item.rpartition("=")
            if not sep or not node or not rank.isdigit():
                raise UsageError(f"--lowrank-rank expects NODE=RANK, got '{item}'")
            fixed[node] = int(rank)
    op_types = tuple(o.strip() for o in ops.split(",") if o.strip()) if isinstance(ops, str) else tuple(ops)
    return LowRankConfig.from_options(mode=mode, energy=energy, target_ratio=ratio, min_cosine=min_cosine,
                                      max_relative_error=max_error, rank_multiple=rank_multiple,
                                      min_parameters=min_params, op_types=op_types, ranks=fixed,
                                      nodes_to_exclude=tuple(exclude), bias_correction=bias_correction)
