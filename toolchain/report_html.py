"""``report.html``: the build report (``report.json``) as one self-contained page.

The page has no scripts and loads nothing (styles inline, charts as inline SVG), so it can be
attached to a ticket, opened offline or printed. Only the standard library is imported: this
module sits on the CLI path of every build. Fields added in later schema versions may be
missing or null in older reports; every one of them is optional here.

Everything taken from the report (source path, target names, notes, layer names) is data and
is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from toolchain import svg_plots
from toolchain.svg_plots import Bar, ScatterPoint

MISSING = "\u2014"  # em dash: a measurement that was not taken, distinct from a zero
REFERENCE_LABEL = "reference (FP32 ONNX)"
# Enough to find the layers that matter (the worst come first); a large model has hundreds, and
# a bar for each would bury them.
MAX_LAYERS = 30

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1B1F24;
       background: #FFFFFF; margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
h2 { font-size: 1.2em; margin: 1.6em 0 .4em; border-bottom: 1px solid #D0D7DE; padding-bottom: .2em; }
h3 { font-size: 1em; margin: 1.2em 0 .3em; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .92em; }
.summary { color: #57606A; margin: 0 0 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .4em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #D0D7DE; padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: #F6F8FA; border-bottom: 2px solid #8C959F; white-space: nowrap; }
.num { text-align: right; white-space: nowrap; }
td:first-child { white-space: nowrap; }
.missing { color: #8C959F; }
tr.reference td { background: #F6F8FA; font-style: italic; }
tr.failed td { background: #FFF5F5; }
td.why { color: #82071E; max-width: 48em; overflow-wrap: anywhere; }
td.why ul { margin: .2em 0 0; padding-left: 1.1em; color: #3D444D; }
ul.variant-notes { max-width: 60em; color: #3D444D; }
ul.notes { margin: 0; padding-left: 1.1em; min-width: 16em; max-width: 30em; overflow-wrap: anywhere; }
figure { margin: 0 0 1.6em; break-inside: avoid; }
figcaption { color: #57606A; font-size: .9em; max-width: 640px; margin-top: .3em; }
svg.chart { display: block; max-width: 100%; height: auto; }
svg.chart text { fill: #1B1F24; }
svg.chart .tick, svg.chart .bar-value { fill: #57606A; }
footer { color: #8C959F; font-size: .85em; margin-top: 2em; }
@media print {
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  body { font-size: 10.5px; }
  main { max-width: none; padding: 0; }
  .scroll { overflow: visible; }
  thead { display: table-header-group; }
  tr { break-inside: avoid; }
  h2 { break-after: avoid; }
}
"""


# --- reading the report: tolerant of missing, null or mistyped fields ---------------------------

def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    """A finite number, or None (bool is an int in Python but never a measurement)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _notes(record: dict[str, Any]) -> list[str]:
    notes = record.get("notes")
    return [str(n) for n in notes] if isinstance(notes, list) else []


def _variant_name(target: dict[str, Any]) -> str:
    """The artifact folder's name (``x86-int8``) tells two variants of one target apart; else the target."""
    return _text(target.get("artifact") or target.get("target"))


def _target_size(target: dict[str, Any], stages: Sequence[dict[str, Any]]) -> float | None:
    """The model file's size (what the device loads), else the artifact folder's; reports older than
    schema 2 only have the folder size, on the "compile <target>" stage."""
    size = _number(target.get("model_bytes"))
    if size is not None:
        return size
    size = _number(target.get("size_bytes"))
    if size is not None:
        return size
    stage = f"compile {target.get('target')}"
    return next((_number(s.get("size_bytes")) for s in stages if s.get("stage") == stage), None)


def _quality(record: dict[str, Any]) -> tuple[float, str] | None:
    """(fraction, kind) for the scatter's y: labelled top-1 when measured, else top-1 agreement with FP32."""
    top1 = _number(_dict(record.get("accuracy")).get("top1"))
    if top1 is not None:
        return top1, "top-1"
    agreement = _number(_dict(record.get("agreement")).get("top1_agreement"))
    return (agreement, "agreement") if agreement is not None else None


def _status(target: dict[str, Any]) -> str:
    """ok, refused (the accuracy guard or verification said no) or failed; reports before schema 3 are all ok."""
    status = target.get("status")
    return status if isinstance(status, str) and status else "ok"


def _was_run(target: dict[str, Any]) -> bool:
    return bool(_dict(target.get("accuracy")) or _dict(target.get("latency")) or _dict(target.get("agreement")))


# --- formatting -------------------------------------------------------------------------------

def _percent(value: Any) -> str:
    number = _number(value)
    return MISSING if number is None else f"{number:.2%}"


def _ms(value: Any) -> str:
    """Three significant digits; no exponent for slow models (1234 ms, not 1.23e+03)."""
    number = _number(value)
    if number is None:
        return MISSING
    return f"{number:.0f}" if abs(number) >= 100 else f"{number:.3g}"


def _kib(value: Any) -> str:
    number = _number(value)
    return MISSING if number is None else f"{number / 1024:,.1f}"


def _general(value: Any, spec: str) -> str:
    number = _number(value)
    return MISSING if number is None else format(number, spec)


def _text(value: Any) -> str:
    return MISSING if value is None or value == "" else str(value)


# --- HTML building blocks ---------------------------------------------------------------------

def _cell(text: str, *, numeric: bool = False) -> str:
    classes = (["num"] if numeric else []) + (["missing"] if text == MISSING else [])
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attr}>{escape(text)}</td>"


def _notes_cell(notes: Sequence[str]) -> str:
    if not notes:
        return '<td class="missing"></td>'
    return '<td><ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul></td>"


def _table(css_class: str, columns: Sequence[tuple[str, bool]], rows: Iterable[str]) -> str:
    """A table from (heading, numeric) columns and ready-made ``<tr>`` rows, scrollable when wide."""
    numeric_class = ' class="num"'
    head = "".join(f'<th scope="col"{numeric_class if numeric else ""}>{escape(name)}</th>'
                   for name, numeric in columns)
    return (f'<div class="scroll"><table class="{css_class}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


# --- page sections ----------------------------------------------------------------------------

def _summary(report: dict[str, Any], targets: Sequence[dict[str, Any]]) -> str:
    parts = []
    seconds = _number(report.get("seconds"))
    if seconds is not None:
        parts.append(f"built in {seconds:.1f} s")
    cache = report.get("cache")
    if isinstance(cache, dict):
        if cache.get("enabled") is False:
            parts.append("cache off")
        else:
            parts.append(f"cache: {_text(cache.get('hits'))} hits, {_text(cache.get('misses'))} misses")
    run_here = sum(_was_run(t) for t in targets)
    parts.append(f"{len(targets)} target{'s' if len(targets) != 1 else ''}, {run_here} measured on this machine")
    not_delivered = [t for t in targets if _status(t) != "ok"]
    if not_delivered:
        parts.append(f"{len(not_delivered)} not delivered ({', '.join(_variant_name(t) for t in not_delivered)})")
    if report.get("edgekiln_version"):
        parts.append(f"edgekiln {report['edgekiln_version']}")
    line = " · ".join(parts)
    return f'<p class="summary">{escape(line[:1].upper() + line[1:])}</p>' + _host(report, targets)


def _host(report: dict[str, Any], targets: Sequence[dict[str, Any]]) -> str:
    """The machine every latency (and every accuracy of an artifact for another device) was measured on."""
    host = _dict(report.get("host"))
    if not host:
        return ""
    features = host.get("features") if isinstance(host.get("features"), list) else []
    isa = ", ".join(str(v) for v in (host.get("int8_isa"), " ".join(map(str, features))) if v)
    cpus = _number(host.get("logical_cpus"))
    line = (f"Measured on this host: {_text(host.get('model'))}{f' ({isa})' if isa else ''}"
            f"{f', {cpus:.0f} logical CPUs' if cpus is not None else ''}. Artifacts for other devices (Raspberry "
            "Pi, microcontroller) ran in this host's LiteRT: their latencies are not the device's."
            + _threads(targets))
    return f'<p class="summary host">{escape(line)}</p>'


_VARIANT_COLUMNS = [("variant", False), ("backend", False), ("precision", False), ("model KiB", True),
                    ("top-1", True), ("top-5", True), ("top-1 agreement", True), ("min cosine", True),
                    ("p50 ms", True), ("p90 ms", True), ("timed on", False)]


def _agreement(agreement: dict[str, Any]) -> str:
    """The share and the counts behind it: 96.88% (31/32) says how much one flipped sample weighs."""
    share, samples = _number(agreement.get("top1_agreement")), _number(agreement.get("samples"))
    if share is None or samples is None:
        return _percent(share)
    return f"{share:.2%} ({round(share * samples):.0f}/{samples:.0f})"


def _timed_on(record: dict[str, Any], *, reference: bool) -> str:
    """Where the latency comes from: this host runs x86 artifacts natively, the others in its LiteRT."""
    latency = _dict(record.get("latency"))
    if not latency:
        return MISSING
    backend = record.get("backend") or latency.get("runtime")
    if reference or backend == "onnxruntime":
        return "host"
    return f"host {'LiteRT' if backend == 'tflite' else _text(backend)}"


def _threads(targets: Sequence[dict[str, Any]]) -> str:
    """'x86 default, rpi4 4': the intra-op threads each timed variant ran with (its artifact's setting)."""
    parts = []
    for target in targets:
        latency = _dict(target.get("latency"))
        if latency:
            threads = _number(latency.get("threads"))
            parts.append(f"{_variant_name(target)} {'default' if threads is None else f'{threads:.0f}'}")
    return f" Threads: {', '.join(parts)} (default: the runtime's choice)." if parts else ""


def _variant_row(name: str, record: dict[str, Any], size: float | None, *, reference: bool) -> str:
    accuracy, agreement = _dict(record.get("accuracy")), _dict(record.get("agreement"))
    latency = _dict(record.get("latency"))
    cells = [_cell(name), _cell(_text(record.get("backend"))), _cell(_text(record.get("precision"))),
             _cell(_kib(size), numeric=True), _cell(_percent(accuracy.get("top1")), numeric=True),
             _cell(_percent(accuracy.get("top5")), numeric=True),
             _cell(_agreement(agreement), numeric=True),
             _cell(_general(agreement.get("min_cosine"), ".4f"), numeric=True),
             _cell(_ms(latency.get("p50_ms")), numeric=True), _cell(_ms(latency.get("p90_ms")), numeric=True),
             _cell(_timed_on(record, reference=reference))]
    attr = ' class="reference"' if reference else f' data-target="{escape(name)}"'
    return f"<tr{attr}>{''.join(cells)}</tr>"


def _failed_row(target: dict[str, Any]) -> str:
    """A target that was not delivered: what it is, then why (the error, its hint, what was tried)."""
    name = _variant_name(target)
    error = _dict(target.get("error"))
    message = str(error.get("message") or "no reason recorded").rstrip(".") + "."
    hint = f" {error['hint']}" if error.get("hint") else ""
    stage = f" (in {error['stage']})" if error.get("stage") else ""
    tried = [str(t) for t in target.get("tried") or []] if isinstance(target.get("tried"), list) else []
    tried_html = ("<ul>" + "".join(f"<li>tried: {escape(t)}</li>" for t in tried) + "</ul>") if tried else ""
    cells = [_cell(name), _cell(_text(target.get("backend"))), _cell(_text(target.get("precision"))),
             f'<td class="why" colspan="{len(_VARIANT_COLUMNS) - 3}"><b>{escape(_status(target))}</b>{escape(stage)}: '
             f"{escape(message + hint)}{tried_html}</td>"]
    return f'<tr class="failed" data-target="{escape(name)}" data-status="{escape(_status(target))}">{"".join(cells)}</tr>'


def _variants_section(targets: Sequence[dict[str, Any]], reference: dict[str, Any] | None,
                      stages: Sequence[dict[str, Any]]) -> str:
    rows = [_variant_row(_variant_name(t), t, _target_size(t, stages), reference=False) if _status(t) == "ok"
            else _failed_row(t) for t in targets]
    if reference is not None:
        # The FP32 model every variant is compared with: the baseline for size, accuracy and speed.
        ref = {"precision": "fp32", **reference}
        rows.insert(0, _variant_row(REFERENCE_LABEL, ref, _number(reference.get("size_bytes")), reference=True))
    if not rows:
        return '<h2 id="variants">Variants</h2><p class="missing">No targets in this report.</p>'
    return ('<h2 id="variants">Variants</h2>' + _table("variants", _VARIANT_COLUMNS, rows) + _VARIANTS_KEY
            + _variant_notes(targets) + _held_out_section(targets) + _mcu_section(targets))


_HELD_OUT_COLUMNS = [("variant", False), ("held-out samples", True), ("top-1 agreement", True),
                     ("accuracy FP32 \u2192 variant", True), ("min cosine", True), ("guard", False)]


def _per_target_table(targets: Sequence[dict[str, Any]], key: str, css_class: str, title: str,
                      columns: Sequence[tuple[str, bool]], cells: Any) -> str:
    """A table of the variants whose record has ``key``, a row each from ``cells(target, record)``; else nothing."""
    rows = [f"<tr>{''.join(cells(t, _dict(t.get(key))))}</tr>" for t in targets if _dict(t.get(key))]
    return (f'<h3 id="{css_class}">{escape(title)}</h3>' + _table(css_class, columns, rows)) if rows else ""


def _held_out_cells(target: dict[str, Any], held: dict[str, Any]) -> list[str]:
    samples = _number(held.get("samples"))
    accuracy = (MISSING if _number(held.get("accuracy")) is None else
                f"{_percent(held.get('accuracy_fp32'))} \u2192 {_percent(held.get('accuracy'))}")
    return [_cell(_variant_name(target)), _cell(_general(samples, ".0f"), numeric=True),
            _cell(_agreement(held), numeric=True), _cell(accuracy, numeric=True),
            _cell(_general(held.get("min_cosine"), ".4f"), numeric=True),
            _cell({True: "passed", False: "failed"}.get(held.get("passed"), MISSING))]


def _held_out_section(targets: Sequence[dict[str, Any]]) -> str:
    """The accuracy guard's check of each lossy variant on samples never used to calibrate it."""
    return _per_target_table(targets, "held_out", "held-out", "Accuracy guard on held-out samples",
                             _HELD_OUT_COLUMNS, _held_out_cells)


_VARIANTS_KEY = ('<p class="summary key">Top-1 agreement: share of images on which the variant\'s top class is the '
                 "FP32 model's, with the counts (a seeded choice from the calibration folder, which may include "
                 "calibration images; the accuracy guard's check on held-out samples only is below). Timed on: "
                 "<i>host</i> is this machine, natively; <i>host LiteRT</i> is this machine running a Raspberry Pi "
                 "or microcontroller artifact, not that device's latency.</p>")


_MCU_COLUMNS = [("variant", False), ("model in flash KiB", True), ("tensor arena KiB", True), ("arena from", False),
                ("firmware flash KiB", True), ("firmware RAM KiB", True)]


def _mcu_cells(target: dict[str, Any], mcu: dict[str, Any]) -> list[str]:
    where = mcu.get("arena_measured_on")
    source = f"measured on the {where}, plus 10%" if where else "edgekiln's estimate (not run on a Cortex-M4)"
    return [_cell(_variant_name(target)), _cell(_kib(mcu.get("model_flash_bytes")), numeric=True),
            _cell(_kib(mcu.get("arena_bytes")), numeric=True), _cell(source),
            _cell(_kib(mcu.get("firmware_flash_bytes")), numeric=True),
            _cell(_kib(mcu.get("firmware_ram_bytes")), numeric=True)]


def _mcu_section(targets: Sequence[dict[str, Any]]) -> str:
    """Flash and RAM a microcontroller variant needs; the firmware's own only where it ran on a Cortex-M4."""
    return _per_target_table(targets, "mcu", "mcu", "Microcontroller budget", _MCU_COLUMNS, _mcu_cells)


def _variant_notes(targets: Sequence[dict[str, Any]]) -> str:
    """Notes go below the table, not in a column: they are sentences and would squeeze the numbers."""
    items = [f"<li><b>{escape(_variant_name(t))}</b>: {escape(note)}</li>" for t in targets for note in _notes(t)]
    return f'<ul class="variant-notes">{"".join(items)}</ul>' if items else ""


def _scatter_point(name: str, record: dict[str, Any], size: float | None, *,
                   reference: bool) -> ScatterPoint | str:
    """The variant's point, or why it cannot be plotted."""
    if _status(record) != "ok":
        return f"{name} ({_status(record)})"
    latency = _number(_dict(record.get("latency")).get("p50_ms"))
    quality = _quality(record)
    if latency is None or quality is None:
        missing = " and ".join(w for w, absent in (("latency", latency is None), ("accuracy", quality is None))
                               if absent)
        return f"{name} (no {missing})"
    value, kind = quality
    size_text = f", {_kib(size)} KiB" if size is not None else ""
    tooltip = f"{name}: p50 {_ms(latency)} ms, {kind} {value:.2%}{size_text}"
    label = f"{name} · {_kib(size)} KiB" if size is not None else name
    return ScatterPoint(label, latency, value * 100, size, hollow=kind == "agreement", reference=reference,
                        tooltip=tooltip)


def _scatter_figure(targets: Sequence[dict[str, Any]], reference: dict[str, Any] | None,
                    stages: Sequence[dict[str, Any]]) -> str:
    candidates = [_scatter_point(_variant_name(t), t, _target_size(t, stages), reference=False)
                  for t in targets]
    if reference is not None:
        candidates.insert(0, _scatter_point(REFERENCE_LABEL, reference, _number(reference.get("size_bytes")),
                                            reference=True))
    points = [c for c in candidates if isinstance(c, ScatterPoint)]
    skipped = [c for c in candidates if isinstance(c, str)]
    not_plotted = f" Not plotted: {', '.join(skipped)}." if skipped else ""
    if not points:
        return ('<h3>Latency vs accuracy</h3><p class="missing">'
                f"No variant has both latency and accuracy.{escape(not_plotted)}</p>")
    any_hollow = any(p.hollow for p in points)
    hollow = " Hollow markers: top-1 agreement with the FP32 model (no labelled images)." if any_hollow else ""
    y_label = "top-1 or top-1 agreement (%)" if any_hollow else "top-1 (%)"
    svg = svg_plots.scatter_svg(points, x_label="latency p50 (ms, on this host)", y_label=y_label,
                                aria_label=f"Latency against accuracy for {len(points)} variants", y_floor=0.0,
                                # 2 points at least: one image in 300 must not fill the whole axis.
                                y_ceil=100.0, y_min_span=2.0)
    caption = ("One point per variant: median latency on this host (Raspberry Pi and microcontroller variants in "
               "its LiteRT, not on the device) against top-1 accuracy on the labelled images; marker area is "
               f"proportional to artifact size; the key under the chart names every point.{hollow}{not_plotted}")
    return "<h3>Latency vs accuracy</h3>" + _figure(svg, caption)


def _size_bar(name: str, record: dict[str, Any], size: float, *, reference: bool) -> Bar:
    precision = record.get("precision") or ("fp32" if reference else "")
    label = f"{name} ({precision})" if precision and not reference else name
    style = "reference" if reference else ("" if _was_run(record) else "muted")
    note = "" if style != "muted" else " (built, not run here)"
    return Bar(label, size / 1024, f"{_kib(size)} KiB", f"{label}: {size:,.0f} bytes{note}", style)


def _size_figure(targets: Sequence[dict[str, Any]], reference: dict[str, Any] | None,
                 stages: Sequence[dict[str, Any]]) -> str:
    bars = []
    ref_size = _number(_dict(reference).get("size_bytes"))
    if reference is not None and ref_size is not None:
        bars.append(_size_bar(REFERENCE_LABEL, reference, ref_size, reference=True))
    for target in targets:
        size = _target_size(target, stages)
        if size is not None:
            bars.append(_size_bar(_variant_name(target), target, size, reference=False))
    if not bars:
        return '<h3>Artifact size</h3><p class="missing">No sizes in this report.</p>'
    svg = svg_plots.hbar_svg(bars, axis_label="size (KiB)", aria_label=f"Artifact size of {len(bars)} variants",
                             css_class="chart chart-size", log=False)
    caption = ("Size of each variant's model file, what the device loads (the whole artifact folder, with its "
               "manifest and any device bundle, is in the stages table). "
               "Pale bars: built but not run on this machine.")
    return "<h3>Artifact size</h3>" + _figure(svg, caption)


def _layer_bar(row: dict[str, Any], error: float) -> Bar:
    name = _text(row.get("node") or row.get("tensor"))
    op = row.get("op")
    # Shorten the name, not the op: "(Conv)" must stay readable however long the name.
    label = f"{svg_plots.truncate(name, 32)} ({op})" if op else name
    cosine = _number(row.get("cosine"))
    tooltip = (f"{name}{f' ({op})' if op else ''} -> {_text(row.get('tensor'))}: relative error {error:.3g}"
               + (f", cosine {cosine:.6f}" if cosine is not None else ""))
    return Bar(label, error, f"{error:.3g}", tooltip)


def _layers_figure(target: dict[str, Any]) -> str:
    """Worst layers first: the question the chart answers is which layer to keep in float."""
    rows = [(r, _number(r.get("relative_error"))) for r in _dicts(target.get("per_layer"))]
    measured = sorted(((r, e) for r, e in rows if e is not None), key=lambda pair: -pair[1])
    name = _variant_name(target)
    if not measured:
        return ""
    shown = measured[:MAX_LAYERS]
    bars = [_layer_bar(row, error) for row, error in shown]
    log = svg_plots.wants_log([b.value for b in bars])
    svg = svg_plots.hbar_svg(bars, axis_label="relative error" + (" (log scale)" if log else ""),
                             aria_label=f"Per-layer relative error of {name}", css_class="chart chart-layers",
                             color=svg_plots.PALETTE[4], log=log, label_chars=56, width=760)
    more = f" Showing the worst {len(shown)} of {len(measured)} layers." if len(measured) > len(shown) else ""
    caption = (f"Relative error of each layer's output in {name} against the FP32 model, worst first. "
               f"Hover a bar for the tensor and its cosine similarity.{more}")
    return f"<h3>Per-layer error: {escape(name)}</h3>" + _figure(svg, caption)


def _charts_section(targets: Sequence[dict[str, Any]], reference: dict[str, Any] | None,
                    stages: Sequence[dict[str, Any]]) -> str:
    layers = [_layers_figure(t) for t in targets]
    layers_html = "".join(layers) or '<p class="missing">No per-layer error rows in this report.</p>'
    return ('<h2 id="charts">Charts</h2>' + _scatter_figure(targets, reference, stages)
            + _size_figure(targets, reference, stages) + layers_html)


_STAGE_COLUMNS = [("stage", False), ("output", False), ("KiB", True), ("seconds", True),
                  ("worst max abs", True), ("worst cosine", True), ("cached", False), ("notes", False)]


def _stage_row(stage: dict[str, Any]) -> str:
    cached = stage.get("cached")
    cells = [_cell(_text(stage.get("stage"))), _cell(_text(stage.get("output"))),
             _cell(_kib(stage.get("size_bytes")), numeric=True),
             _cell(_general(stage.get("seconds"), ".3g"), numeric=True),
             _cell(_general(stage.get("worst_max_abs"), ".3g"), numeric=True),
             _cell(_general(stage.get("worst_cosine"), ".6f"), numeric=True),
             _cell(MISSING if cached is None else ("yes" if cached else "no")), _notes_cell(_notes(stage))]
    return f"<tr>{''.join(cells)}</tr>"


def _stages_section(stages: Sequence[dict[str, Any]]) -> str:
    if not stages:
        return '<h2 id="stages">Stages</h2><p class="missing">No stages in this report.</p>'
    return '<h2 id="stages">Stages</h2>' + _table("stages", _STAGE_COLUMNS, [_stage_row(s) for s in stages])


def _decisions(report: dict[str, Any]) -> str:
    """What the build chose or warned about before it ran (sample split, inferred preprocessing)."""
    lines = report.get("decisions")
    if not isinstance(lines, list) or not lines:
        return ""
    return '<ul class="variant-notes decisions">' + "".join(f"<li>{escape(str(line))}</li>" for line in lines) + "</ul>"


def _footer(report: dict[str, Any]) -> str:
    version = report.get("schema_version")
    schema = f" (schema version {escape(str(version))})" if version is not None else ""
    return (f"<footer>Generated by edgekiln from report.json{schema}. "
            "Self-contained: no scripts, no external resources.</footer>")


# --- public API -------------------------------------------------------------------------------

def render_report_html(report: dict[str, Any]) -> str:
    """The whole page for a ``report.json`` dict; missing or null fields are shown as a dash."""
    report = _dict(report)
    targets, stages = _dicts(report.get("targets")), _dicts(report.get("stages"))
    reference = report.get("reference") if isinstance(report.get("reference"), dict) else None
    source = _text(report.get("source"))
    body = (f"<h1>edgekiln build report</h1><p>Source: <code>{escape(source)}</code></p>"
            + _summary(report, targets) + _decisions(report) + _variants_section(targets, reference, stages)
            + _charts_section(targets, reference, stages) + _stages_section(stages) + _footer(report))
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>edgekiln build report: {escape(source)}</title><style>{_CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def write_report_html(report: dict[str, Any], path: Path) -> None:
    """Write the page as UTF-8 (a plain write: the build publishes its staging folder atomically)."""
    Path(path).write_text(render_report_html(report), encoding="utf-8")
