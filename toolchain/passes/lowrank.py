"""Low-rank factorization: replace big Gemm/MatMul/Conv weights by two thinner products (SVD).

A weight ``W`` (m x n, a Conv seen as C_in*k*k x C_out) becomes ``A @ B`` through rank ``r``
with ``A = U_r sqrt(S_r)`` and ``B = sqrt(S_r) Vt_r``: a Gemm/MatMul becomes two products, a
k x k Conv becomes a k x k Conv to ``r`` channels followed by a 1 x 1 Conv. A layer is only
factorized when that saves parameters and MACs (``r < m*n / (m+n)``), and ranks sit on a
hardware-friendly grid (``rank_multiple``) whenever the grid does not cost the saving.

Modes (how ranks are chosen):

* ``energy``: each layer keeps the smallest rank holding ``energy`` of its sum(s^2).
* ``ratio``: one energy fraction for all layers, the largest that brings the whole model to
  ``target_ratio`` of its parameters.
* ``budget`` (needs calibration data): per-layer ranks that remove the most MACs while the final
  outputs keep ``min_cosine`` (and ``max_relative_error``) on the calibration set; the chosen model is
  then checked as a whole on the held-out set and backed off until it holds there too.

With calibration data each factorized layer's bias is corrected by the mean output shift its
factorization introduces (measured on the original inputs), and every layer's own output error is
reported. Rules (pattern -> check -> rewrite) are in ``lowrank_rules``, rank choice in ``lowrank_select``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from toolchain.errors import UsageError, VerificationError
from toolchain.frontends.base import Feed
from toolchain.onnx_io import check_model, graph_inputs
from toolchain.passes.base import GraphStats, PassReport
from toolchain.passes.config import NothingToDoError
from toolchain.passes.lowrank_options import DEFAULT_MIN_COSINE, LowRankConfig  # noqa: F401 - re-exported
from toolchain.passes.lowrank_rules import RULES, Layer, Names, Skipped, apply, match
from toolchain.passes.lowrank_select import (LayerStats, Spectrum, Step, candidate_ranks, damage_path, energy_ranks,
                                             parameters_after, ranks_at, ratio_fraction)
from toolchain.passes.quantize import named_copy

# Feeds used to estimate how much of each layer's own error reaches the outputs (budget mode).
_GAIN_FEEDS = 16
_LATENCY_RUNS_PER_ROUND = 10
_RANDOM_CHECK_FEEDS = 4


class NothingToFactorizeError(NothingToDoError):
    """No layer of the model can be, or was chosen to be, factorized: the model is left as it was."""


@dataclass(frozen=True)
class OutputError:
    """How far the factorized model's outputs are from the original's on one set of samples."""

    basis: str  # "holdout", "calibration" or "random inputs"
    samples: int
    min_cosine: float
    relative_error: float
    top1_agreement: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None

    def misses(self, config: LowRankConfig) -> list[str]:
        reasons = []
        cosine = config.cosine_budget
        if cosine is not None and self.min_cosine < cosine:
            reasons.append(f"cosine {self.min_cosine:.5f} < {cosine:g}")
        if config.max_relative_error is not None and self.relative_error > config.max_relative_error:
            reasons.append(f"relative error {self.relative_error:.4f} > {config.max_relative_error:g}")
        return reasons


@dataclass
class _Context:
    """Everything rank selection and the rewrite need, gathered once."""

    source: onnx.ModelProto
    config: LowRankConfig
    layers: dict[str, Layer]
    skipped: list[Skipped]
    fixed: dict[str, int]
    spectra: dict[str, Spectrum]
    calibration: list[Feed]
    holdout: list[Feed]
    stats: dict[str, LayerStats] = field(default_factory=dict)
    calibration_reference: list[Feed] = field(default_factory=list)

    @property
    def correct_bias(self) -> bool:
        return bool(self.stats) and self.config.bias_correction is not False

    @property
    def free(self) -> dict[str, Layer]:
        return {name: layer for name, layer in self.layers.items() if name not in self.fixed}


# --------------------------------------------------------------------------- candidates


def _check_data(config: LowRankConfig, calibration: Sequence[Feed]) -> None:
    if config.mode == "budget" and not calibration:
        raise UsageError("--lowrank with an error budget needs calibration data to measure the error",
                         hint="Pass --calib with sample inputs, or use --lowrank-mode energy|ratio.")
    if config.bias_correction and not calibration:
        raise UsageError("bias correction measures each layer's output shift and needs calibration data",
                         hint="Pass --calib, or turn bias correction off.")


def _rank_too_large(layer: Layer, rank: int) -> UsageError:
    return UsageError(f"rank {rank} for '{layer.name}' is larger than the layer allows: its {layer.n_in}x{layer.n_out} "
                      f"weight saves parameters and MACs only up to rank {layer.max_rank}")


def _validate_overrides(config: LowRankConfig, found: dict[str, Layer | Skipped]) -> None:
    for name, rank in config.ranks.items():
        item = found.get(name)
        if item is None:
            raise UsageError(f"ranks names '{name}', which is not a {'/'.join(config.op_types)} node of the model")
        if isinstance(item, Skipped):
            raise UsageError(f"'{name}' cannot be given a rank: {item.reason}")
        if name in config.nodes_to_exclude:
            raise UsageError(f"'{name}' is both given a rank and excluded; choose one")
        if rank > item.max_rank:
            raise _rank_too_large(item, rank)


def _accept(layer: Layer, config: LowRankConfig) -> str | None:
    """Why an otherwise valid layer is left alone by configuration or size (None: it is a candidate)."""
    if layer.name in config.ranks:
        return None
    if layer.name in config.nodes_to_exclude:
        return "excluded by nodes_to_exclude"
    if layer.parameters < config.min_parameters:
        return f"{layer.parameters} weights, fewer than min_parameters={config.min_parameters}"
    if layer.max_rank < 1:
        return f"a {layer.n_in}x{layer.n_out} weight is too thin for any rank to save parameters"
    return None


def _candidates(model: onnx.ModelProto, config: LowRankConfig) -> tuple[dict[str, Layer], list[Skipped]]:
    found = {item.name: item for item in match(model, config.op_types)}
    _validate_overrides(config, found)
    layers, skipped = {}, []
    for item in found.values():
        reason = item.reason if isinstance(item, Skipped) else _accept(item, config)
        if reason is None:
            layers[item.name] = item
        else:
            skipped.append(item if isinstance(item, Skipped) else Skipped(item.name, item.op_type, reason))
    return layers, skipped


def _nothing_error(skipped: Sequence[Skipped], what: str) -> NothingToFactorizeError:
    reasons = "; ".join(f"'{s.name}' ({s.op_type}): {s.reason}" for s in skipped[:6])
    more = f"; and {len(skipped) - 6} more" if len(skipped) > 6 else ""
    detail = f": {reasons}{more}" if skipped else ": it has no Gemm, MatMul or Conv node"
    return NothingToFactorizeError(f"{what}{detail}", hint="The model was left unchanged and nothing was written.")


# --------------------------------------------------------------------------- running models


def _runner(model: onnx.ModelProto):
    from toolchain.runtime import OnnxRuntimeRunner

    return OnnxRuntimeRunner.from_model(model)


def _outputs(model: onnx.ModelProto, feeds: Sequence[Feed]) -> list[Feed]:
    runner = _runner(model)
    return [runner.run(feed) for feed in feeds]


def _stack(outputs: Sequence[Feed]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([np.atleast_1d(o[name]) for o in outputs]) for name in outputs[0]}


def _relative_error(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    errors = []
    for name, ref in reference.items():
        ref64 = ref.astype(np.float64)
        norm = float(np.linalg.norm(ref64))
        diff = float(np.linalg.norm(candidate[name].astype(np.float64) - ref64))
        errors.append(diff / norm if norm else diff)
    return max(errors)


def _output_error(basis: str, reference: Sequence[Feed], candidate: Sequence[Feed],
                  labels: np.ndarray | None = None) -> OutputError:
    from toolchain.quant_guard import compare_quality

    ref, cand = _stack(reference), _stack(candidate)
    quality = compare_quality(ref, cand, labels)
    return OutputError(basis, quality.samples, quality.min_cosine, _relative_error(ref, cand), quality.top1_agreement,
                       quality.accuracy_reference, quality.accuracy_candidate)


# --------------------------------------------------------------------------- calibration statistics


def _reduce_rows(op: str, source: str, output: str, opset: int, names: Names) -> onnx.NodeProto:
    """``op`` over axis 0 of a 2-D tensor, keepdims=0, in the axes form the opset wants."""
    axes_as_input = opset >= (18 if op == "ReduceSumSquare" else 13)
    if axes_as_input:
        axes = names.constant(f"{output}_axes", np.array([0], np.int64))
        return helper.make_node(op, [source, axes], [output], keepdims=0)
    return helper.make_node(op, [source], [output], axes=[0], keepdims=0)


def _probe_nodes(layer: Layer, spectrum: Spectrum, names: Names, opset: int) -> tuple[list[onnx.NodeProto], list[str]]:
    """Nodes computing sum(z^2), sum(z) and the row count of z = x @ U over all positions, plus sum(y^2)."""
    nodes, z, channel_axis = RULES[layer.op_type].probe(layer, spectrum.u, names)
    k = spectrum.u.shape[1]
    if channel_axis != -1:  # channels-first Conv output: move channels last before flattening positions
        rank = len(layer.kernel) + 2
        moved = names.fresh(f"{z}_last")
        nodes.append(helper.make_node("Transpose", [z], [moved], perm=[0, *range(2, rank), 1]))
        z = moved
    flat = names.fresh(f"{z}_rows")
    nodes.append(helper.make_node("Reshape", [z, names.constant(f"{flat}_shape", np.array([-1, k], np.int64))], [flat]))
    outputs = [names.fresh(f"{layer.name}_zsq"), names.fresh(f"{layer.name}_zsum"), names.fresh(f"{layer.name}_zrows"),
               names.fresh(f"{layer.name}_ysq")]
    nodes += [_reduce_rows("ReduceSumSquare", flat, outputs[0], opset, names),
              _reduce_rows("ReduceSum", flat, outputs[1], opset, names),
              helper.make_node("Shape", [flat], [outputs[2]]),
              helper.make_node("ReduceSumSquare", [layer.output], [outputs[3]], keepdims=0)]
    return nodes, outputs


def _probe_model(ctx: _Context) -> tuple[onnx.ModelProto, dict[str, list[str]]]:
    from toolchain.onnx_io import opset_version

    probe = onnx.ModelProto()
    probe.CopyFrom(ctx.source)
    names, opset = Names(probe), opset_version(probe)
    probes: dict[str, list[str]] = {}
    for name, layer in ctx.layers.items():
        nodes, outputs = _probe_nodes(layer, ctx.spectra[name], names, opset)
        probe.graph.node.extend(nodes)
        probes[name] = outputs
        probe.graph.output.extend([helper.make_tensor_value_info(outputs[0], onnx.TensorProto.FLOAT, None),
                                   helper.make_tensor_value_info(outputs[1], onnx.TensorProto.FLOAT, None),
                                   helper.make_tensor_value_info(outputs[2], onnx.TensorProto.INT64, None),
                                   helper.make_tensor_value_info(outputs[3], onnx.TensorProto.FLOAT, None)])
    probe.graph.initializer.extend(names.initializers)
    return probe, probes


class _Sums:
    """Running sums of one layer's probe outputs over the calibration feeds."""

    def __init__(self) -> None:
        self.z_sumsq: np.ndarray | float = 0.0
        self.z_sum: np.ndarray | float = 0.0
        self.rows = 0
        self.y_sumsq = 0.0

    def add(self, zsq: np.ndarray, zsum: np.ndarray, rows: np.ndarray, ysq: np.ndarray) -> None:
        self.z_sumsq = self.z_sumsq + zsq.astype(np.float64)
        self.z_sum = self.z_sum + zsum.astype(np.float64)
        self.rows += int(rows[0])
        self.y_sumsq += float(ysq)

    def stats(self) -> LayerStats:
        return LayerStats(np.asarray(self.z_sumsq), np.asarray(self.z_sum) / max(self.rows, 1), self.rows,
                          self.y_sumsq)


def _collect_stats(ctx: _Context) -> None:
    """One pass over the calibration feeds: every layer's projections, and the original outputs."""
    probe, probes = _probe_model(ctx)
    runner = _runner(probe)
    original = [o.name for o in ctx.source.graph.output]
    sums = {name: _Sums() for name in probes}
    for feed in ctx.calibration:
        values = runner.run(feed)
        ctx.calibration_reference.append({name: values[name] for name in original})
        for name, outputs in probes.items():
            sums[name].add(*(values[output] for output in outputs))
    ctx.stats = {name: total.stats() for name, total in sums.items()}


# --------------------------------------------------------------------------- building candidates


def _factorized(ctx: _Context, ranks: dict[str, int]) -> onnx.ModelProto:
    rewrites = {}
    for name, rank in ranks.items():
        layer, spectrum = ctx.layers[name], ctx.spectra[name]
        bias = layer.bias
        if ctx.correct_bias:
            shift = ctx.stats[name].shift(spectrum, rank)
            bias = shift if bias is None else (bias + shift).astype(np.float32)
        rewrites[name] = (layer, spectrum.factors(rank, bias))
    return apply(ctx.source, rewrites)


def _layer_error(ctx: _Context, name: str, rank: int) -> float | None:
    if name not in ctx.stats:
        return None
    return ctx.stats[name].relative_error(ctx.spectra[name].s, rank, ctx.correct_bias)


# --------------------------------------------------------------------------- the three modes


def _choose_energy(ctx: _Context) -> tuple[dict[str, int], dict[str, Any]]:
    fraction = ctx.config.energy
    chosen = energy_ranks(ctx.free, ctx.spectra, fraction, ctx.config.rank_multiple)
    for name, rank in chosen.items():
        if rank is None:
            needed = ctx.spectra[name].energy_rank(fraction)
            ctx.skipped.append(Skipped(name, ctx.layers[name].op_type,
                                       f"keeping {fraction:.4g} of its energy needs rank {needed}, but only ranks up "
                                       f"to {ctx.layers[name].max_rank} save parameters and MACs"))
    return {name: rank for name, rank in chosen.items() if rank is not None}, {"energy": fraction}


def _choose_ratio(ctx: _Context, model_parameters: int) -> tuple[dict[str, int], dict[str, Any]]:
    free, config = ctx.free, ctx.config
    fixed_after = sum(ctx.layers[n].parameters_at(r) for n, r in ctx.fixed.items())
    others = model_parameters - sum(layer.parameters for layer in ctx.layers.values())
    # A layer without a bias gains one when its bias is corrected: keep room for it.
    reserve = sum(layer.n_out for layer in free.values() if layer.bias is None) if ctx.correct_bias else 0
    allowed = int(config.target_ratio * model_parameters) - others - fixed_after - reserve
    fraction = ratio_fraction(free, ctx.spectra, config.rank_multiple, allowed)
    if fraction is None:
        lowest = energy_ranks(free, ctx.spectra, 1e-9, config.rank_multiple)
        best = (others + fixed_after + reserve + parameters_after(free, lowest)) / model_parameters
        raise UsageError(f"target_ratio {config.target_ratio:g} cannot be reached: even the smallest ranks leave "
                         f"{best:.3f} of the model's parameters", hint="Raise the target ratio or lower rank_multiple.")
    result = _choose_energy_at(ctx, fraction)
    return result, {"energy": fraction, "target_ratio": config.target_ratio}


def _choose_energy_at(ctx: _Context, fraction: float) -> dict[str, int]:
    chosen = energy_ranks(ctx.free, ctx.spectra, fraction, ctx.config.rank_multiple)
    for name, rank in chosen.items():
        if rank is None:
            ctx.skipped.append(Skipped(name, ctx.layers[name].op_type,
                                       f"at the energy fraction the ratio needs ({fraction:.4g}) it saves nothing"))
    return {name: rank for name, rank in chosen.items() if rank is not None}


class _Judge:
    """Builds the model at a point of the path, runs it on one sample set and checks the budget (memoized)."""

    def __init__(self, ctx: _Context, path: list[Step], basis: str, feeds: Sequence[Feed],
                 reference: Sequence[Feed]) -> None:
        self.ctx, self.path, self.basis, self.feeds, self.reference = ctx, path, basis, feeds, reference
        self.results: dict[int, OutputError] = {}

    def ranks(self, length: int) -> dict[str, int]:
        return {**self.ctx.fixed, **ranks_at(self.path, length)}

    def error(self, length: int) -> OutputError:
        if length not in self.results:
            model = _factorized(self.ctx, self.ranks(length))
            self.results[length] = _output_error(self.basis, self.reference, _outputs(model, self.feeds))
        return self.results[length]

    def holds(self, length: int) -> bool:
        if length == 0 and not self.ctx.fixed:
            return True  # nothing factorized: the original model
        return not self.error(length).misses(self.ctx.config)


def _largest_holding(judge: _Judge, high: int) -> int:
    """The longest path prefix in [0, high] within budget, by bisection (the error grows along the path)."""
    low = 0
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if judge.holds(middle) else (low, middle - 1)
    return low


def _gains(ctx: _Context, curves: dict[str, dict[int, float]]) -> dict[str, float]:
    """Per layer: squared output error of the model / the layer's own squared error, at a mid rank."""
    feeds, reference = ctx.calibration[:_GAIN_FEEDS], ctx.calibration_reference[:_GAIN_FEEDS]
    gains = {}
    for name, layer in ctx.free.items():
        ranks = candidate_ranks(layer, ctx.config.rank_multiple)
        rank = ranks[len(ranks) // 2]
        own = curves[name][rank]
        if own <= 0:
            gains[name] = 1.0  # exact at this rank: any gain predicts no damage
            continue
        error = _output_error("calibration", reference, _outputs(_factorized(ctx, {name: rank}), feeds))
        gains[name] = error.relative_error ** 2 / own
    return gains


def _nothing_within_budget(judge: _Judge) -> VerificationError:
    misses = judge.error(1).misses(judge.ctx.config) if judge.path else []
    first = judge.path[0] if judge.path else None
    detail = f": the first step ({first.layer} at rank {first.rank}) gives {'; '.join(misses)} on {judge.basis} data" \
        if first and misses else ""
    return VerificationError(f"no layer can be factorized within the error budget{detail}",
                             hint="Loosen the budget (min_cosine / max_relative_error). Nothing was written.")


def _walk(ctx: _Context, path: list[Step]) -> tuple[int, dict[str, Any]]:
    """How far along ``path`` the budget holds: bisection on calibration feeds, then confirmed on held-out feeds.

    The held-out check is on the whole model; when it fails, the walk backs off (bisecting again, judged
    on the held-out feeds) so the returned model is within budget on data the search never saw.
    """
    config = ctx.config
    search = _Judge(ctx, path, "calibration", ctx.calibration[:config.search_feeds],
                    ctx.calibration_reference[:config.search_feeds])
    if ctx.fixed and not search.holds(0):
        raise VerificationError(f"the fixed ranks alone miss the error budget on calibration data: "
                                f"{'; '.join(search.error(0).misses(config))}", hint="Raise the fixed ranks.")
    length, judge = _largest_holding(search, len(path)), search
    evaluations, stepped_back = len(search.results), False
    if ctx.holdout and length > 0:
        judge = _Judge(ctx, path, "holdout", ctx.holdout, _outputs(ctx.source, ctx.holdout))
        if not judge.holds(length):
            length, stepped_back = _largest_holding(judge, length - 1), True
        evaluations += len(judge.results)
    if length == 0 and not ctx.fixed:
        raise _nothing_within_budget(judge)
    return length, {"path_steps": len(path), "chosen_steps": length, "evaluations": evaluations,
                    "stepped_back_on_holdout": stepped_back}


def _choose_budget(ctx: _Context) -> tuple[dict[str, int], dict[str, Any]]:
    config = ctx.config
    curves = {name: {r: _layer_error(ctx, name, r) ** 2 for r in candidate_ranks(layer, config.rank_multiple)}
              for name, layer in ctx.free.items()}
    gains = _gains(ctx, curves)
    path = damage_path(ctx.free, curves, gains, config.rank_multiple)
    length, details = _walk(ctx, path)
    ranks = ranks_at(path, length)
    for name, layer in ctx.free.items():
        if name not in ranks:
            ctx.skipped.append(Skipped(name, layer.op_type, "the budget search left it whole: lowering its rank "
                                                            "cost more output error per MAC than the budget allowed"))
    return ranks, {**details, "gains": gains, "min_cosine": config.cosine_budget,
                   "max_relative_error": config.max_relative_error}


# --------------------------------------------------------------------------- report


def _latency_ms(models: Sequence[onnx.ModelProto], rounds: int) -> list[float] | None:
    """Median batch-1 latency of each model on ONNX Runtime CPU, timed in interleaved rounds."""
    from toolchain.feeds import random_feed

    if rounds == 0:
        return None
    try:
        feed = random_feed(graph_inputs(models[0]), batch=1)
    except UsageError:  # symbolic non-batch dims: no concrete input to time with
        return None
    runners = [_runner(model) for model in models]
    medians: list[list[float]] = [[] for _ in runners]
    for runner in runners:
        for _ in range(3):
            runner.run(feed)
    for round_index in range(rounds):
        order = range(len(runners)) if round_index % 2 == 0 else reversed(range(len(runners)))
        for index in order:  # alternate the order so a burst of load does not always hit the same model
            times = []
            for _ in range(_LATENCY_RUNS_PER_ROUND):
                started = time.perf_counter()
                runners[index].run(feed)
                times.append((time.perf_counter() - started) * 1e3)
            medians[index].append(statistics.median(times))
    return [statistics.median(m) for m in medians]


def _layer_row(ctx: _Context, name: str, rank: int) -> dict[str, Any]:
    layer = ctx.layers[name]
    return {"layer": name, "op_type": layer.op_type, "shape": layer.weight_shape,
            "full_rank": layer.full_rank, "max_rank": layer.max_rank, "rank": rank,
            "rank_source": "fixed" if name in ctx.fixed else ctx.config.mode,
            "parameters_before": layer.parameters, "parameters_after": layer.parameters_at(rank),
            "macs_before": layer.macs, "macs_after": layer.macs_at(rank),
            "weight_error": ctx.spectra[name].weight_error(rank), "output_error": _layer_error(ctx, name, rank),
            "bias_corrected": ctx.correct_bias}


def _final_check(ctx: _Context, model: onnx.ModelProto, labels: np.ndarray | None) -> OutputError | None:
    from toolchain.feeds import random_feeds

    if ctx.holdout:
        basis, feeds = "holdout", ctx.holdout
    elif ctx.calibration:
        basis, feeds, labels = "calibration", ctx.calibration, None
    else:
        try:
            basis, feeds, labels = "random inputs", random_feeds(graph_inputs(model), count=_RANDOM_CHECK_FEEDS), None
        except UsageError:
            return None
    return _output_error(basis, _outputs(ctx.source, feeds), _outputs(model, feeds), labels)


def _model_summary(before: onnx.ModelProto, after: onnx.ModelProto, rounds: int) -> dict[str, Any]:
    from toolchain.model_info import summarize

    first, second = summarize(before), summarize(after)
    latency = _latency_ms([before, after], rounds)
    return {"parameters_before": first.parameter_count, "parameters_after": second.parameter_count,
            "macs_before": first.macs, "macs_after": second.macs,
            "bytes_before": before.ByteSize(), "bytes_after": after.ByteSize(),
            "latency_ms_before": latency[0] if latency else None, "latency_ms_after": latency[1] if latency else None}


# --------------------------------------------------------------------------- the pass


def _context(model: onnx.ModelProto, config: LowRankConfig, calibration: Sequence[Feed],
             holdout: Sequence[Feed]) -> _Context:
    source = named_copy(model)
    layers, skipped = _candidates(source, config)
    if not layers:
        raise _nothing_error(skipped, "no layer of the model can be factorized")
    spectra = {name: Spectrum.of(layer) for name, layer in layers.items()}
    ctx = _Context(source, config, layers, skipped, dict(config.ranks), spectra, list(calibration), list(holdout))
    if ctx.calibration:
        _collect_stats(ctx)
    return ctx


def _choose(ctx: _Context) -> tuple[dict[str, int], dict[str, Any]]:
    from toolchain.model_info import summarize

    if not ctx.free:
        return dict(ctx.fixed), {}
    if ctx.config.mode == "energy":
        ranks, details = _choose_energy(ctx)
    elif ctx.config.mode == "ratio":
        ranks, details = _choose_ratio(ctx, summarize(ctx.source).parameter_count)
    else:
        ranks, details = _choose_budget(ctx)
    return {**ctx.fixed, **ranks}, details


def run(model: onnx.ModelProto, config: LowRankConfig | None = None, calibration: Sequence[Feed] | None = None,
        holdout: Sequence[Feed] | None = None, *,
        holdout_labels: np.ndarray | None = None) -> tuple[onnx.ModelProto, PassReport]:
    """Factorize ``model``'s large weights; returns a new model and a report (``model`` is not modified).

    ``calibration`` and ``holdout`` are lists of feeds (input name -> array). Calibration data
    enables bias correction, per-layer output errors and the 'budget' mode; the held-out feeds
    (and their labels, for top-1 accuracy) judge the final model. Raises ``NothingToFactorizeError``
    when no layer is factorized, so a caller never writes an unchanged model as if it were new.
    """
    config = config or LowRankConfig()
    calibration, holdout = list(calibration or []), list(holdout or [])
    _check_data(config, calibration)
    started = time.perf_counter()
    ctx = _context(model, config, calibration, holdout)
    ranks, selection = _choose(ctx)
    if not ranks:
        raise _nothing_error(ctx.skipped, "no layer was factorized")
    result = _factorized(ctx, ranks)
    check_model(result)
    quality = _final_check(ctx, result, holdout_labels)
    details = {"mode": config.mode, "config": json.loads(config.model_dump_json()), "selection": selection,
               "bias_correction": ctx.correct_bias,
               "layers": [_layer_row(ctx, name, ranks[name]) for name in ctx.layers if name in ranks],
               "skipped": [asdict(s) for s in ctx.skipped],
               "model": _model_summary(ctx.source, result, config.latency_rounds),
               "output_error": asdict(quality) if quality else None,
               "seconds": time.perf_counter() - started}
    notes = [] if ctx.calibration else ["no calibration data: no bias correction, layer errors are weight-space only"]
    if ctx.calibration and not ctx.holdout:
        notes.append("no held-out data: the output error was measured on the calibration samples themselves")
    return result, PassReport("lowrank", GraphStats.of(model), GraphStats.of(result), details, notes)


# --------------------------------------------------------------------------- presenting the report


def layer_rows(report: PassReport) -> list[dict[str, Any]]:
    """The per-layer table: one dict per factorized layer, then one per skipped layer (with its reason)."""
    rows = [dict(row, status="factorized") for row in report.details["layers"]]
    rows += [{"layer": s["name"], "op_type": s["op_type"], "status": "skipped", "reason": s["reason"]}
             for s in report.details["skipped"]]
    return rows


def _count(value: int | None) -> str:
    from toolchain.model_info import human_count

    return "?" if value is None else human_count(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _model_line(model: dict[str, Any]) -> str:
    from toolchain.model_info import human_bytes

    line = (f"model: parameters {_count(model['parameters_before'])} -> {_count(model['parameters_after'])}, "
            f"MACs {_count(model['macs_before'])} -> {_count(model['macs_after'])}, "
            f"size {human_bytes(model['bytes_before'])} -> {human_bytes(model['bytes_after'])}")
    if model["latency_ms_before"] is not None:
        line += f", ORT latency {model['latency_ms_before']:.3f} -> {model['latency_ms_after']:.3f} ms"
    return line


def _error_line(error: dict[str, Any] | None) -> str:
    if error is None:
        return "output error: not measured"
    line = (f"output error on {error['samples']} {error['basis']} samples: min cosine {error['min_cosine']:.5f}, "
            f"relative error {error['relative_error']:.4f}")
    if error["top1_agreement"] is not None:
        line += f", top-1 agreement {_percent(error['top1_agreement'])}"
    if error["accuracy_before"] is not None:
        line += f", accuracy {_percent(error['accuracy_before'])} -> {_percent(error['accuracy_after'])}"
    return line


def _mode_text(details: dict[str, Any]) -> str:
    selection = details["selection"]
    if details["mode"] == "budget" and "path_steps" in selection:
        limits = [f"cosine >= {selection['min_cosine']:g}"] if selection["min_cosine"] is not None else []
        if selection["max_relative_error"] is not None:
            limits.append(f"relative error <= {selection['max_relative_error']:g}")
        return f"budget {', '.join(limits)}"
    if details["mode"] == "ratio" and "target_ratio" in selection:
        return f"ratio {selection['target_ratio']:g}, at energy {selection['energy']:.4g}"
    if "energy" in selection:
        return f"energy {selection['energy']:g}"
    return "fixed ranks"


def format_report(report: PassReport) -> str:
    """Plain-text table for the terminal: every layer, why skipped ones were, and the model's totals."""
    header = ("layer", "op", "weight", "rank/full", "params", "MACs", "layer err")
    table = [header]
    for row in report.details["layers"]:
        error = row["output_error"] if row["output_error"] is not None else row["weight_error"]
        table.append((row["layer"], row["op_type"], row["shape"], f"{row['rank']}/{row['full_rank']}",
                      f"{_count(row['parameters_before'])} -> {_count(row['parameters_after'])}",
                      f"{_count(row['macs_before'])} -> {_count(row['macs_after'])}",
                      f"{error:.4f}" + ("" if row["output_error"] is not None else " (weights)")))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [f"lowrank ({_mode_text(report.details)}): {len(report.details['layers'])} layer(s) factorized"
             + (", bias corrected" if report.details["bias_correction"] else "")]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    lines += [f"  skipped {s['name']} ({s['op_type']}): {s['reason']}" for s in report.details["skipped"]]
    lines += [_model_line(report.details["model"]), _error_line(report.details["output_error"])]
    return "\n".join(lines + report.notes)


def run_pass(model: onnx.ModelProto, config: LowRankConfig | None, context: Any) -> tuple[onnx.ModelProto, PassReport]:
    """The pass protocol (``toolchain.passes.registry``): factorize, judged on the context's samples if any."""
    samples = context.samples(model) if context is not None else None
    if samples is None:
        return run(model, config)
    calibration, holdout, labels = samples
    return run(model, config, calibration, holdout, holdout_labels=labels)
