"""Human-readable rendering of results for the CLI (rich tables, imported only when printing)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from toolchain.errors import printable
from toolchain.verify import ParityReport


def _console():
    from rich.console import Console

    import sys

    # Piped output (logs, CI) would otherwise be cut to 80 columns and wrap file names.
    width = None if sys.stdout.isatty() else 160
    return Console(highlight=False, soft_wrap=True, width=width)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # Cells are data: '[tensorrt]' is not markup, and a model's names may hold terminal escapes.
        table.add_row(*[escape(printable(str(v))) for v in row])
    _console().print(table)


def print_parity(reports: Sequence[ParityReport]) -> None:
    """One table per comparison (candidate vs reference), a row per output and input group."""
    groups: dict[tuple[str, str], list[ParityReport]] = {}
    for report in reports:
        groups.setdefault((report.candidate, report.reference), []).append(report)
    for (candidate, reference), members in groups.items():
        first = members[0]
        criterion = (f"cosine >= {first.min_cosine:g}" if first.min_cosine is not None
                     else f"atol {first.atol:g}, rtol {first.rtol:g}")
        rows = [(o.name, r.inputs, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", f"{o.cosine:.6f}",
                 "ok" if o.passed else "under" if r.advisory else "FAIL") for r in members for o in r.outputs]
        print_table(f"verify: {candidate} vs {reference} ({criterion})",
                    ["output", "inputs", "max abs", "max rel", "cosine", ""], rows)


def say(message: str) -> None:
    from rich.markup import escape

    _console().print(escape(message))


def stopped_note(quality: dict) -> str:
    """' (stopped after 3 of 32 samples: cannot pass)' for an attempt whose check stopped early, else ""."""
    if not quality.get("of_samples"):
        return ""
    return f" (stopped after {quality['samples']} of {quality['of_samples']} samples: cannot pass)"


def _diverged_note(quality: dict, budget: dict) -> str:
    """' (3 under 0.99)': how many samples the guard counted as diverged (none said for old records)."""
    cosines = quality.get("cosines")
    if not cosines:
        return ""
    return f" ({sum(c < budget['min_cosine'] for c in cosines)} under {budget['min_cosine']:g})"


def print_guard(guard: dict) -> None:
    """The accuracy guard's attempts: quality of each try and which layers stayed float."""
    budget = guard["budget"]
    rows = []
    for number, attempt in enumerate(guard["attempts"]):
        quality = attempt["quality"]
        drop, bound = quality.get("drop_points"), quality.get("drop_bound_points")
        detections = quality.get("detections")
        rows.append((number, len(attempt["kept_float"]), ", ".join(attempt["kept_float"][:4]) +
                     (" ..." if len(attempt["kept_float"]) > 4 else "") +
                     (" (bias-corrected weights)" if attempt.get("bias_corrected") else ""),
                     "-" if quality.get("top1_agreement") is None else f"{quality['top1_agreement']:.2%}",
                     "-" if quality.get("accuracy_candidate") is None else
                     f"{quality['accuracy_reference']:.2%} -> {quality['accuracy_candidate']:.2%}",
                     "-" if drop is None else f"{drop:.2f}" + ("" if bound is None else f" (>= {max(bound, 0):.2f})"),
                     "-" if not detections else f"{detections['matched']}/{detections['reference']}",
                     f"{quality['min_cosine']:.4f}{_diverged_note(quality, budget)}{stopped_note(quality)}"))
    task = guard["attempts"][-1]["quality"].get("task")
    declared = budget.get("task", "auto")
    if task:
        say(f"  accuracy guard metric: {task} ({'guessed from the output shapes' if declared == 'auto' else 'as declared'}"
            f"; --task to set it)")
    print_table(f"accuracy guard on {guard['attempts'][-1]['quality']['samples']} held-out samples "
                f"(budget: drop and samples under cosine {budget['min_cosine']:g} each <= {budget['max_drop']:g} "
                f"points): "
                f"{'passed' if guard['passed'] else 'FAILED'}",
                ["try", "float layers", "kept in float", "top-1 agreement", "accuracy fp32 -> int8",
                 "drop (95% bound)", "detections kept", "min cosine"], rows)
    if guard.get("sensitivity"):
        worst = ", ".join(f"{s['node']} ({s['score']:.3g})" for s in guard["sensitivity"][:5])
        metric = guard.get("sensitivity_metric", "1 - cosine of the outputs when only that layer is INT8")
        say(f"  most sensitive layers ({metric}): {worst}")
