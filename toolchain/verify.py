"""Numerical parity between a reference and a candidate model.

Every transformation (ingest, simplify, compile) is followed by a comparison on
the same inputs. Metrics per output: max absolute error, max relative error
(|a-b| / (|a| + atol), so exact zeros in the reference do not make it infinite)
and cosine similarity. An output passes when every element satisfies
``|a-b| <= atol + rtol*|a|`` (numpy's ``allclose`` rule). All failing outputs
are collected into one ``VerificationError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from dataclasses import asdict, dataclass, field

import numpy as np

from toolchain.errors import VerificationError
from toolchain.frontends.base import Feed

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


@dataclass(frozen=True)
class OutputParity:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool
    problem: str = ""

    def describe(self) -> str:
        if self.problem:
            return f"{self.name}: {self.problem}"
        return f"{self.name}: max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}, cosine {self.cosine:.6f}"


@dataclass
class ParityReport:
    """Result of comparing a candidate to a reference on the same feeds."""

    reference: str
    candidate: str
    inputs: str
    atol: float
    rtol: float
    outputs: list[OutputParity] = field(default_factory=list)
    min_cosine: float | None = None
    """Set for lossy transformations (FP16, INT8): outputs pass on cosine instead of allclose."""

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def raise_if_failed(self) -> None:
        failing = [o for o in self.outputs if not o.passed]
        if failing:
            details = "; ".join(o.describe() for o in failing)
            criterion = (f"cosine >= {self.min_cosine:g}" if self.min_cosine is not None
                         else f"atol={self.atol:g}, rtol={self.rtol:g}")
            loosen = "--min-cosine" if self.min_cosine is not None else "--atol/--rtol"
            raise VerificationError(
                f"{self.candidate} differs from {self.reference} beyond {criterion} on {self.inputs}: {details}",
                hint=f"Loosen with {loosen} if this is expected, or skip with --no-verify.",
            )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norm)


def compare_output(name: str, reference: np.ndarray, candidate: np.ndarray, *, atol: float, rtol: float) -> OutputParity:
    shape = tuple(reference.shape)
    if reference.shape != candidate.shape:
        return OutputParity(name, shape, np.inf, np.inf, 0.0, False,
                            f"shape {tuple(candidate.shape)} differs from reference {shape}")
    ref = reference.astype(np.float64).ravel()
    cand = candidate.astype(np.float64).ravel()
    nan_mismatch = np.isnan(ref) != np.isnan(cand)
    if nan_mismatch.any():
        return OutputParity(name, shape, np.inf, np.inf, 0.0, False,
                            f"{int(nan_mismatch.sum())} values are NaN in one model but not the other")
    finite = ~np.isnan(ref)
    ref, cand = ref[finite], cand[finite]
    if ref.size == 0:
        return OutputParity(name, shape, 0.0, 0.0, 1.0, True)
    diff = np.abs(ref - cand)
    passed = bool(np.all(diff <= atol + rtol * np.abs(ref)))
    return OutputParity(name, shape, float(diff.max()), float((diff / (np.abs(ref) + atol)).max()),
                        _cosine(ref, cand), passed)


def compare(references: Sequence[Feed], candidates: Sequence[Feed], *, reference: str, candidate: str,
            inputs: str, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
            min_cosine: float | None = None) -> ParityReport:
    """Compare outputs feed by feed; metrics are taken over all feeds together.

    With ``min_cosine`` (lossy transformations) an output passes when its cosine reaches it.
    """
    report = ParityReport(reference, candidate, inputs, atol, rtol, min_cosine=min_cosine)
    if not references:
        return report
    for name in references[0]:
        missing = [i for i, c in enumerate(candidates) if name not in c]
        if missing:
            report.outputs.append(OutputParity(name, (), np.inf, np.inf, 0.0, False, "missing from the candidate's outputs"))
            continue
        ref = np.concatenate([np.asarray(r[name]).reshape(-1) for r in references])
        cand = np.concatenate([np.asarray(c[name]).reshape(-1) for c in candidates])
        shape = tuple(np.asarray(references[0][name]).shape)
        if any(np.asarray(r[name]).shape != np.asarray(c[name]).shape for r, c in zip(references, candidates)):
            bad = next(np.asarray(c[name]).shape for r, c in zip(references, candidates)
                       if np.asarray(r[name]).shape != np.asarray(c[name]).shape)
            report.outputs.append(OutputParity(name, shape, np.inf, np.inf, 0.0, False,
                                               f"shape {tuple(bad)} differs from reference {shape}"))
            continue
        parity = compare_output(name, ref, cand, atol=atol, rtol=rtol)
        passed = parity.passed if min_cosine is None else (not parity.problem and parity.cosine >= min_cosine)
        report.outputs.append(OutputParity(name, shape, parity.max_abs, parity.max_rel, parity.cosine,
                                           passed, parity.problem))
    return report


def run_and_compare(feeds: Sequence[Feed], reference_fn: Callable[[Feed], Feed],
                    candidate_fn: Callable[[Feed], Feed], **labels_and_tolerances) -> ParityReport:
    """Run both callables on every feed and compare (see ``compare`` for the keyword arguments)."""
    references = [reference_fn(feed) for feed in feeds]
    candidates = [candidate_fn(feed) for feed in feeds]
    return compare(references, candidates, **labels_and_tolerances)


@dataclass(frozen=True)
class VerifyOptions:
    """How conversions and compilations check themselves (``--no-verify``, ``--atol``, ``--rtol``, ``--calib``)."""

    enabled: bool = True
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    calib: Path | None = None
    """Folder of real images to verify on, besides random inputs."""
    preprocess: str | dict | None = None
    """Preset name or stored ``PreprocessSpec`` dict for the images; inferred from the input shape if None."""
    min_cosine: float = 0.99
    """Pass criterion for lossy transformations (FP16, dynamic INT8), which cannot meet atol/rtol."""
    random_inputs: bool = True
    """False for statically quantized models: random data lies outside their calibrated ranges."""
    random_samples: int = 2
    image_samples: int = 8
    seed: int = 0


def verification_feeds(inputs: list, options: VerifyOptions) -> list[tuple[str, list[Feed]]]:
    """Named groups of feeds: seeded random inputs, a batch-2 run for dynamic batch, and real images."""
    from calibration.dataset import is_array_source
    from toolchain.feeds import array_feeds, image_feeds, random_feeds

    groups = []
    if options.random_inputs:
        groups.append((f"{options.random_samples} random inputs",
                       random_feeds(inputs, count=options.random_samples, seed=options.seed)))
    if options.random_inputs and inputs and all(i.shape and isinstance(i.shape[0], str) for i in inputs):
        groups.append(("random inputs at batch 2", random_feeds(inputs, count=1, seed=options.seed + 100, batch=2)))
    if options.calib is not None and is_array_source(options.calib):
        feeds = array_feeds(inputs, options.calib, count=options.image_samples)
        groups.append((f"{len(feeds)} samples from {options.calib.name}", feeds))
    elif options.calib is not None:
        feeds = image_feeds(inputs, options.calib, count=options.image_samples, seed=options.seed,
                            preprocess=options.preprocess)
        groups.append((f"{len(feeds)} images from {options.calib.name}", feeds))
    return groups


def verify_callables(reference_fn: Callable[[Feed], Feed], candidate_fn: Callable[[Feed], Feed], inputs: list,
                     options: VerifyOptions, *, reference: str, candidate: str,
                     lossy: bool = False) -> list[ParityReport]:
    """Compare two callables on every feed group; raise ``VerificationError`` if any output fails."""
    if not options.enabled:
        return []
    reports = [run_and_compare(feeds, reference_fn, candidate_fn, reference=reference, candidate=candidate,
                               inputs=label, atol=options.atol, rtol=options.rtol,
                               min_cosine=options.min_cosine if lossy else None)
               for label, feeds in verification_feeds(inputs, options)]
    for report in reports:
        report.raise_if_failed()
    return reports
