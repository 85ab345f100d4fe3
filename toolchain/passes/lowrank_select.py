"""Rank selection for the low-rank pass: spectra, per-layer error curves, and the three modes' choices.

Pure numpy; everything that runs a model lives in ``lowrank.py``.

Error algebra used throughout (``W = U S Vt``, ``z_i = x @ u_i`` at each output position):
the output error of keeping rank ``r`` is ``sum_{i>=r} s_i z_i vt_i``, whose energy is
``sum_{i>=r} s_i^2 * sum(z_i^2)`` because the output directions ``vt_i`` are orthonormal;
subtracting its per-channel mean (bias correction) removes ``count * sum_{i>=r} s_i^2 * mean(z_i)^2``.
So two reductions of ``x @ U`` over the calibration set give every rank's error, with and without
bias correction, exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from toolchain.passes.lowrank_rules import Factors, Layer


@dataclass(frozen=True)
class Spectrum:
    """The thin SVD ``matrix = u @ diag(s) @ vt`` of one layer."""

    u: np.ndarray  # (n_in, k)
    s: np.ndarray  # (k,)
    vt: np.ndarray  # (k, n_out)

    @classmethod
    def of(cls, layer: Layer) -> "Spectrum":
        u, s, vt = np.linalg.svd(layer.matrix, full_matrices=False)
        return cls(u, s, vt)

    def energy_rank(self, fraction: float) -> int:
        """The smallest rank whose singular values hold ``fraction`` of sum(s^2)."""
        cumulative = np.cumsum(self.s.astype(np.float64) ** 2)
        rank = int(np.searchsorted(cumulative, fraction * cumulative[-1], side="left")) + 1
        return min(rank, len(self.s))

    def weight_error(self, rank: int) -> float:
        """||W - W_r||_F / ||W||_F."""
        energy = self.s.astype(np.float64) ** 2
        total = float(energy.sum())
        return 0.0 if total == 0 else math.sqrt(float(energy[rank:].sum()) / total)

    def factors(self, rank: int, bias: np.ndarray | None) -> Factors:
        """A = U_r sqrt(S_r), B = sqrt(S_r) Vt_r: both factors get the same scale, which suits INT8 later."""
        root = np.sqrt(self.s[:rank])
        first = (self.u[:, :rank] * root).astype(np.float32)
        second = (root[:, None] * self.vt[:rank]).astype(np.float32)
        return Factors(first, second, bias)


@dataclass(frozen=True)
class LayerStats:
    """How the calibration inputs project onto a layer's input singular directions."""

    z_sumsq: np.ndarray  # (k,) sum over samples and positions of (x @ u_i)^2
    z_mean: np.ndarray  # (k,) mean over samples and positions of x @ u_i
    count: int  # samples x positions
    y_sumsq: float  # sum of the original output squared (bias included)

    def error_energy(self, s: np.ndarray, rank: int, corrected: bool) -> float:
        tail = self.z_sumsq[rank:].astype(np.float64)
        if corrected:
            tail = tail - self.count * self.z_mean[rank:].astype(np.float64) ** 2
        return float(np.maximum(s[rank:].astype(np.float64) ** 2 * tail, 0.0).sum())

    def relative_error(self, s: np.ndarray, rank: int, corrected: bool) -> float:
        """||y_r - y|| / ||y|| for this layer alone, on the original inputs."""
        return 0.0 if self.y_sumsq == 0 else math.sqrt(self.error_energy(s, rank, corrected) / self.y_sumsq)

    def shift(self, spectrum: Spectrum, rank: int) -> np.ndarray:
        """The mean output change (n_out,) that dropping directions rank.. introduces: what bias correction adds."""
        weights = spectrum.s[rank:].astype(np.float64) * self.z_mean[rank:]
        return (weights @ spectrum.vt[rank:].astype(np.float64)).astype(np.float32)


def round_rank(rank: int, multiple: int, max_rank: int) -> int | None:
    """``rank`` rounded up to a multiple of ``multiple`` if that still saves, else ``rank`` if it saves, else None."""
    rounded = -(-rank // multiple) * multiple
    if rounded <= max_rank:
        return rounded
    return rank if rank <= max_rank else None


def energy_ranks(layers: dict[str, Layer], spectra: dict[str, Spectrum], fraction: float,
                 multiple: int) -> dict[str, int | None]:
    """Per layer, the energy rank rounded to ``multiple`` (None when that rank saves nothing)."""
    return {name: round_rank(spectra[name].energy_rank(fraction), multiple, layer.max_rank)
            for name, layer in layers.items()}


def parameters_after(layers: dict[str, Layer], ranks: dict[str, int | None]) -> int:
    """Parameters of the given layers once factorized at ``ranks`` (None: left whole)."""
    total = 0
    for name, layer in layers.items():
        rank = ranks.get(name)
        total += layer.parameters if rank is None else layer.parameters_at(rank)
    return total


def ratio_fraction(layers: dict[str, Layer], spectra: dict[str, Spectrum], multiple: int,
                   allowed: int) -> float | None:
    """The largest energy fraction whose ranks keep these layers within ``allowed`` parameters; None if none does.

    Parameters fall monotonically as the fraction falls (a lower fraction never raises a rank, and a
    layer left whole holds more than any saving rank), so bisection finds it.
    """
    def fits(fraction: float) -> bool:
        return parameters_after(layers, energy_ranks(layers, spectra, fraction, multiple)) <= allowed

    low, high = 1e-9, 1.0
    if not fits(low):
        return None
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


# --------------------------------------------------------------------------- budget mode: the MAC/error path


def candidate_ranks(layer: Layer, multiple: int) -> list[int]:
    """Saving ranks on the hardware-friendly grid, largest first (every saving rank for very thin layers)."""
    step = multiple if layer.max_rank >= multiple else 1
    return list(range(layer.max_rank // step * step, 0, -step))


def _cost(layer: Layer, rank: int | None) -> int:
    # MACs when shapes are known; parameters otherwise (the two are proportional within a layer).
    if rank is None:
        return layer.macs if layer.macs is not None else layer.parameters
    macs = layer.macs_at(rank)
    return macs if macs is not None else layer.parameters_at(rank)


def _lower_hull(points: list[tuple[int, float]]) -> list[int]:
    """Indices of the lower convex hull of (saved, damage) points given in increasing ``saved`` order."""
    hull: list[int] = []
    for index, (x, y) in enumerate(points):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = points[hull[-2]], points[hull[-1]]
            # Drop the middle point when it lies on or above the segment from hull[-2] to the new point.
            if (y2 - y1) * (x - x1) >= (y - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(index)
    return hull


@dataclass(frozen=True)
class Step:
    layer: str
    rank: int
    slope: float
    """Predicted output damage per MAC saved on the hull segment this step belongs to."""


def damage_path(layers: dict[str, Layer], curves: dict[str, dict[int, float]], gains: dict[str, float],
                multiple: int) -> list[Step]:
    """Steps that lower one layer's rank at a time, cheapest predicted damage per MAC saved first.

    ``curves[name][rank]`` is the layer's own squared relative output error at that rank and
    ``gains[name]`` how much of it reaches the model's outputs. Segments of each layer's lower
    convex hull are merged by slope, the Lagrangian-optimal order for the additive damage model.
    Every candidate rank inside a segment is kept as its own step (the damage never falls as the rank
    falls), so the whole-model search can stop part-way through a long segment under a tight budget.
    """
    steps: list[tuple[float, int, int, Step]] = []
    for order, (name, layer) in enumerate(layers.items()):
        full = _cost(layer, None)
        ranks = candidate_ranks(layer, multiple)  # largest first: saved grows along the list
        points = [(0, 0.0)] + [(full - _cost(layer, r), gains[name] * curves[name][r]) for r in ranks]
        hull = _lower_hull(points)
        for start, end in zip(hull, hull[1:]):
            slope = (points[end][1] - points[start][1]) / max(points[end][0] - points[start][0], 1)
            steps += [(slope, order, index, Step(name, ranks[index - 1], slope)) for index in range(start + 1, end + 1)]
    return [step for *_, step in sorted(steps, key=lambda item: item[:3])]


def ranks_at(path: Iterable[Step], length: int) -> dict[str, int]:
    """The rank assignment after the first ``length`` steps of ``path``."""
    ranks: dict[str, int] = {}
    for step in list(path)[:length]:
        ranks[step.layer] = step.rank
    return ranks
