"""Human-readable rendering of results for the CLI (rich tables, imported only when printing)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from toolchain.verify import ParityReport


def _console():
    from rich.console import Console

    import sys

    # Piped output (logs, CI) would otherwise be cut to 80 columns and wrap file names.
    width = None if sys.stdout.isatty() else 160
    return Console(highlight=False, soft_wrap=True, width=width)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    _console().print(table)


def print_parity(reports: Sequence[ParityReport]) -> None:
    if not reports:
        return
    rows = [(o.name, report.inputs, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", f"{o.cosine:.6f}",
             "ok" if o.passed else "FAIL") for report in reports for o in report.outputs]
    first = reports[0]
    print_table(f"verify: {first.candidate} vs {first.reference} (atol {first.atol:g}, rtol {first.rtol:g})",
                ["output", "inputs", "max abs", "max rel", "cosine", ""], rows)


def say(message: str) -> None:
    _console().print(message)
