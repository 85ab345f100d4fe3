"""Numerical parity between a reference and a candidate model.

Every transformation (ingest, simplify, compile) is followed by a comparison on
the same inputs. Metrics per output: max absolute error, max relative error
(|a-b| / (|a| + atol), so exact zeros in the reference do not make it infinite)
and cosine similarity. An output passes when every element satisfies
``|a-b| <= atol + rtol*|a|`` (numpy's ``allclose`` rule). All failing outputs
are collected into one ``VerificationError``.

NaN or Inf on either side fails on its own (NaN compared with NaN would otherwise "agree"): in the
candidate as its failure, in the reference as an error in the source model. On real samples (a
``--calib`` folder of distinct images) an output that is the same for every sample fails too: a
model that ignores its input verifies nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from toolchain.errors import VerificationError
from toolchain.frontends.base import Feed
from toolchain.quality import constant_outputs, describe_non_finite
from toolchain.settings import DEFAULT_ATOL, DEFAULT_MIN_COSINE, DEFAULT_RTOL  # noqa: F401 - re-exported



@dataclass(frozen=True)
class OutputParity:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool
    problem: str = ""
    kind: str = ""
    """Why it failed, where not by numbers: "non-finite" or "constant", in the candidate or (prefixed
    "source ") in the reference."""

    def describe(self) -> str:
        if self.kind:
            return f"output '{self.name}' {self.problem}"
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
    advisory: bool = False
    """Outputs beyond the tolerance are a warning, not a failure (``verify_callables``)."""

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def raise_if_broken(self) -> None:
        """Raise for outputs that are broken (non-finite, constant), whatever the tolerance."""
        failing = [o for o in self.outputs if not o.passed]
        for kind, message, hint in self._broken_messages():
            found = [o for o in failing if o.kind == kind]
            if found:
                # replace, not format: labels hold folder names, which may hold braces
                raise VerificationError(message.replace("{details}", "; ".join(o.describe() for o in found)),
                                        hint=hint)

    def raise_if_failed(self) -> None:
        self.raise_if_broken()
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

    def _broken_messages(self) -> list[tuple[str, str, str]]:
        """(kind, message with {details}, hint) for failures that are not a matter of tolerance, worst first."""
        check = "Check its weights (a NaN or Inf weight?) and layers that can overflow"
        return [
            ("source non-finite", f"{self.reference} itself gives non-finite outputs on {self.inputs}: {{details}}; "
                                  "the source model is broken, so nothing can be verified against it",
             f"{check}; if only random inputs do this, verify on real samples with --calib."),
            ("source constant", f"{self.reference} gives the same {{details}}: it ignores its "
                                "input (dead or zeroed weights, or preprocessing that blanks the images?), so these "
                                "samples verify nothing", "Check the source model and --preprocess."),
            ("non-finite", f"{self.candidate} gives non-finite outputs on {self.inputs}, {self.reference} does not: "
                           "{details}", f"{check}; skip with --no-verify only if this is expected."),
            ("constant", f"{self.candidate} gives the same {{details}}, where {self.reference}'s "
                         "outputs differ: it has stopped depending on its input", "Check the transformation's settings."),
        ]

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
    broken = _non_finite(name, shape, reference, candidate)
    if broken is not None:
        return broken
    ref = reference.astype(np.float64).ravel()
    cand = candidate.astype(np.float64).ravel()
    if ref.size == 0:
        return OutputParity(name, shape, 0.0, 0.0, 1.0, True)
    diff = np.abs(ref - cand)
    passed = bool(np.all(diff <= atol + rtol * np.abs(ref)))
    return OutputParity(name, shape, float(diff.max()), float((diff / (np.abs(ref) + atol)).max()),
                        _cosine(ref, cand), passed)


def compare(references: Sequence[Feed], candidates: Sequence[Feed], *, reference: str, candidate: str,
            inputs: str, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
            min_cosine: float | None = None, distinct_samples: bool = False) -> ParityReport:
    """Compare outputs feed by feed; metrics are taken over all feeds together.

    With ``min_cosine`` (lossy transformations) an output passes when its cosine reaches it. With
    ``distinct_samples`` (real samples that differ from one another) outputs that stay the same over
    every feed fail as well.
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
        report.outputs.append(replace(parity, shape=shape, passed=passed))
    if distinct_samples and len(references) >= 2:
        _fail_constant(report, references, candidates, inputs)
    return report


def _non_finite(name: str, shape: tuple[int, ...], reference: np.ndarray,
                candidate: np.ndarray) -> OutputParity | None:
    """A failed entry when either side holds NaN/Inf (the reference's is reported first: it is the cause)."""
    for values, kind in ((reference, "source non-finite"), (candidate, "non-finite")):
        found = describe_non_finite(values)
        if found:
            return OutputParity(name, shape, np.inf, np.inf, 0.0, False, f"has {found}", kind)
    return None


def _fail_constant(report: ParityReport, references: Sequence[Feed], candidates: Sequence[Feed], inputs: str) -> None:
    """Mark outputs identical for every real sample: all of the reference's (one constant output, such as
    a detector's anchors, is normal), or a candidate's where the reference's vary."""
    stack = lambda feeds, name: np.stack([np.asarray(f[name]) for f in feeds])  # noqa: E731
    passing = {o.name: i for i, o in enumerate(report.outputs) if o.passed}
    floating = [n for n in passing if np.issubdtype(np.asarray(references[0][n]).dtype, np.floating)]
    if not floating:
        return
    still_ref = constant_outputs({n: stack(references, n) for n in floating})
    if len(still_ref) == len(passing):  # an integer output that varies (a class id) shows the input matters
        flagged, kind = still_ref, "source constant"
    else:
        flagged = [n for n in constant_outputs({n: stack(candidates, n) for n in floating}) if n not in still_ref]
        kind = "constant"
    for name in flagged:
        old = report.outputs[passing[name]]
        report.outputs[passing[name]] = replace(old, passed=False, kind=kind, problem=f"for all {inputs}")


def run_and_compare(feeds: Sequence[Feed], reference_fn: Callable[[Feed], Feed],
                    candidate_fn: Callable[[Feed], Feed], **labels_and_tolerances) -> ParityReport:
    """Run both callables on every feed and compare (see ``compare`` for the keyword arguments)."""
    references = [reference_fn(feed) for feed in feeds]
    candidates = [candidate_fn(feed) for feed in feeds]
    return compare(references, candidates, **labels_and_tolerances)


def distinct_feeds(feeds: Sequence[Feed]) -> bool:
    """Whether at least two feeds differ (twenty copies of one image prove nothing about constant outputs)."""
    return any(any(not np.array_equal(np.asarray(feed[k]), np.asarray(feeds[0][k])) for k in feeds[0])
               for feed in feeds[1:])


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
    min_cosine: float = DEFAULT_MIN_COSINE
    """Pass criterion for lossy transformations (FP16, dynamic INT8), which cannot meet atol/rtol."""
    random_inputs: bool = True
    """False for statically quantized models: random data lies outside their calibrated ranges."""
    random_samples: int = 2
    image_samples: int = 8
    seed: int = 0


def verification_feeds(inputs: list, options: VerifyOptions) -> list[tuple[str, list[Feed], bool]]:
    """Named groups of feeds: seeded random inputs, a batch-2 run for dynamic batch, and real images
    (the flag: real samples, on which an output that never changes means a broken model)."""
    from calibration.dataset import is_array_source
    from toolchain.feeds import array_feeds, image_feeds, random_feeds

    groups = []
    if options.random_inputs:
        groups.append((f"{options.random_samples} random inputs",
                       random_feeds(inputs, count=options.random_samples, seed=options.seed), False))
    if options.random_inputs and inputs and all(i.shape and isinstance(i.shape[0], str) for i in inputs):
        groups.append(("random inputs at batch 2", random_feeds(inputs, count=1, seed=options.seed + 100, batch=2), False))
    if options.calib is not None and is_array_source(options.calib):
        feeds = array_feeds(inputs, options.calib, count=options.image_samples)
        groups.append((f"{len(feeds)} samples from {options.calib.name}", feeds, True))
    elif options.calib is not None:
        feeds = image_feeds(inputs, options.calib, count=options.image_samples, seed=options.seed,
                            preprocess=options.preprocess)
        groups.append((f"{len(feeds)} images from {options.calib.name}", feeds, True))
    return groups


def verify_callables(reference_fn: Callable[[Feed], Feed], candidate_fn: Callable[[Feed], Feed], inputs: list,
                     options: VerifyOptions, *, reference: str, candidate: str,
                     lossy: bool = False, advisory: bool = False) -> list[ParityReport]:
    """Compare two callables on every feed group; raise ``VerificationError`` if any output fails.

    ``advisory``: the verdict on fidelity belongs elsewhere (static INT8: the accuracy guard, or the user's
    ``--no-guard``), so outputs beyond the tolerance are returned, not raised; broken outputs still raise."""
    if not options.enabled:
        return []
    reports = [run_and_compare(feeds, reference_fn, candidate_fn, reference=reference, candidate=candidate,
                               inputs=label, atol=options.atol, rtol=options.rtol,
                               min_cosine=options.min_cosine if lossy else None,
                               distinct_samples=real and distinct_feeds(feeds))
               for label, feeds, real in verification_feeds(inputs, options)]
    for report in reports:
        report.advisory = advisory
        report.raise_if_broken() if advisory else report.raise_if_failed()
    return reports
