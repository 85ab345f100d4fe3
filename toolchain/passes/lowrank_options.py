"""The low-rank pass's settings, declared once (flags, recipe keys and API keywords come from these fields);
light to import (the pass itself is not)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, PositiveInt

from toolchain.errors import UsageError
from toolchain.options import Flag
from toolchain.passes.config import PassConfig
from toolchain.settings import DEFAULT_MIN_COSINE

OpType = Literal["Gemm", "MatMul", "Conv"]
SUPPORTED_OP_TYPES: tuple[OpType, ...] = ("Gemm", "MatMul", "Conv")


class LowRankConfig(PassConfig):
    """Low-rank (SVD) factorization of Gemm, MatMul and Conv weights."""

    prefix: ClassVar[str] = "lowrank"

    mode: Annotated[Literal["energy", "ratio", "budget"], Flag()] = Field(
        "energy", description="energy: keep --lowrank-energy of each layer's singular-value energy; ratio: the "
                              "whole model to --lowrank-ratio of its parameters; budget: most MACs removed while "
                              "outputs stay within --lowrank-min-cosine / --lowrank-max-error on --calib data.")
    energy: Annotated[float, Flag()] = Field(
        0.95, gt=0, lt=1, description="Mode energy: fraction of sum(s^2) each layer keeps, in (0, 1).")
    target_ratio: Annotated[float, Flag("ratio")] = Field(
        0.5, gt=0, lt=1, description="Mode ratio: whole-model parameters after/before, in (0, 1) (0.5 halves them).")
    min_cosine: Annotated[float | None, Flag()] = Field(
        None, gt=0, lt=1, description="Mode budget: lowest per-sample cosine of the outputs on held-out samples "
                                      f"(default {DEFAULT_MIN_COSINE} when neither budget is given).")
    max_relative_error: Annotated[float | None, Flag("max_error")] = Field(
        None, gt=0, lt=1, description="Mode budget: highest relative error ||y'-y||/||y|| of each output on "
                                      "held-out samples (both budgets are checked when both are given).")
    rank_multiple: Annotated[int, Flag()] = Field(
        8, ge=1, le=1024, description="Round ranks up to a multiple of this when that still saves parameters and "
                                      "MACs.")
    min_parameters: Annotated[int, Flag("min_params")] = Field(
        4096, ge=1, description="Leave layers with fewer weights alone.")
    op_types: Annotated[tuple[OpType, ...], Flag("ops", csv=True)] = Field(
        SUPPORTED_OP_TYPES, min_length=1, description="Operator types to factorize (comma-separated).")
    ranks: Annotated[dict[str, PositiveInt], Flag(flag="rank", pairs=True, metavar="NODE=RANK")] = Field(
        default_factory=dict, description="Fixed rank for one node (repeatable); used as given (not rounded) in "
                                          "every mode.")
    nodes_to_exclude: Annotated[tuple[str, ...], Flag("exclude", multiple=True, metavar="NODE")] = Field(
        (), description="Never factorize this node (repeatable).")
    bias_correction: Annotated[bool | None, Flag(off="no")] = Field(
        None, description="Correct each factorized layer's bias by its mean output shift on --calib data "
                          "(default: on when --calib is given; on without calibration data is an error).")
    search_feeds: int = Field(64, ge=1, description="Mode 'budget': calibration feeds that judge each candidate "
                                                    "during the search (the final check uses every held-out feed).")
    latency_rounds: int = Field(5, ge=0, description="Interleaved ONNX Runtime timing rounds for the report's "
                                                     "before/after latency (0: not measured).")

    @property
    def cosine_budget(self) -> float | None:
        """The cosine the budget mode enforces: the given one, else 0.99 unless only a relative error was given."""
        if self.min_cosine is not None:
            return self.min_cosine
        return DEFAULT_MIN_COSINE if self.max_relative_error is None else None

    def check_samples(self, given: bool) -> None:
        if self.mode == "budget" and not given:
            raise UsageError("--lowrank-mode budget needs calibration data to measure the error",
                             hint="Pass --calib with sample inputs, or use --lowrank-mode energy|ratio.")

    def describe(self) -> str:
        return f"SVD low-rank factorization (mode {self.mode}), checked on held-out data"
