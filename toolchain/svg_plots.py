"""Small hand-written SVG charts for the HTML build report.

Written by hand on purpose: the report must be a single file that needs no JavaScript, and a
plotting library (matplotlib) would add a heavy dependency and about a second of import time to
every build, whose cached re-run must finish in under 3 s. Only the standard library is used.

Each chart function returns one ``<svg>`` element as a string, ready to be inlined in HTML. All
text passed in (labels, tooltips) is data and is escaped here. Marks that carry data have the
class ``mark`` so that tests and readers can tell them from frames and grid lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

# Okabe-Ito colours: distinguishable with the common forms of colour blindness and in greyscale
# print (the yellow of the original set is left out: it is unreadable on white).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000")
REFERENCE_COLOR = "#8C959F"
FONT_SIZE = 11
# Average advance of a sans-serif glyph relative to the font size. An estimate is enough: it only
# keeps labels from overlapping each other or running off the chart.
CHAR_WIDTH = 0.6 * FONT_SIZE
WIDTH = 640


@dataclass(frozen=True)
class ScatterPoint:
    """One labelled point; ``size`` (any unit, e.g. bytes) drives the marker area when given."""

    label: str
    x: float
    y: float
    size: float | None = None
    hollow: bool = False
    reference: bool = False
    tooltip: str = ""


@dataclass(frozen=True)
class Bar:
    """One horizontal bar; ``style`` is "" (plain), "reference" or "muted" (e.g. not run here)."""

    label: str
    value: float
    value_text: str = ""
    tooltip: str = ""
    style: str = ""


@dataclass(frozen=True)
class Scale:
    """Maps the data interval [lo, hi] onto the pixel interval [start, end], linearly or by log10."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        lo, hi, value = self.lo, self.hi, min(max(value, self.lo), self.hi)
        if self.log:
            lo, hi, value = math.log10(lo), math.log10(hi), math.log10(value)
        return self.start + (value - lo) / (hi - lo) * (self.end - self.start)

    def ticks(self, count: int = 5) -> list[float]:
        return log_ticks(self.lo, self.hi) if self.log else linear_ticks(self.lo, self.hi, count)


def wants_log(values: Sequence[float]) -> bool:
    """Log scale when the positive values span more than two decades (linear would hide the small ones)."""
    positive = [v for v in values if v > 0]
    return len(positive) >= 2 and max(positive) / min(positive) > 100


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    fraction = raw / 10 ** exponent
    nice = 1 if fraction <= 1 else 2 if fraction <= 2 else 5 if fraction <= 5 else 10
    return nice * 10 ** exponent


def linear_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round-numbered ticks (steps of 1, 2 or 5 times a power of ten) inside [lo, hi]."""
    if not hi > lo:
        return [lo]
    step = _nice_step((hi - lo) / count)
    first = math.ceil(lo / step - 1e-9) * step
    n = int(math.floor((hi - first) / step + 1e-9)) + 1
    return [round(first + i * step, 12) for i in range(n)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten inside [lo, hi]."""
    return [10.0 ** e for e in range(math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9) + 1)]


def format_tick(value: float, ticks: Sequence[float], log: bool) -> str:
    """As many decimals as the tick spacing needs, so 0.05 and 0.1 do not both print as 0.1."""
    if log:
        return f"{value:g}"
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(value) or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def decade_domain(values: Sequence[float]) -> tuple[float, float]:
    """Whole decades around the positive values, so a bar's log axis starts and ends on a tick."""
    positive = [v for v in values if v > 0]
    return 10.0 ** math.floor(math.log10(min(positive))), 10.0 ** math.ceil(math.log10(max(positive)))


def log_padded_domain(values: Sequence[float]) -> tuple[float, float]:
    """The positive values' range plus 5 % of it on each side, measured in decades."""
    positive = [v for v in values if v > 0]
    lo, hi = math.log10(min(positive)), math.log10(max(positive))
    pad = (hi - lo) * 0.05
    return 10.0 ** (lo - pad), 10.0 ** (hi + pad)


def padded_domain(values: Sequence[float], *, floor: float | None = None, ceil: float | None = None,
                  min_span: float = 0.0, from_zero: bool = False) -> tuple[float, float]:
    """The data range plus a margin so no mark sits on the frame.

    ``min_span`` keeps a one-image accuracy difference from filling the whole axis; one point or
    equal values get a range of +-10 % around them. A range that would cross ``floor`` or
    ``ceil`` slides instead of shrinking; only the margin may cross them (100 % stays inside).
    """
    lo, hi = min(values), max(values)
    if hi - lo < min_span:
        middle = (lo + hi) / 2
        lo, hi = middle - min_span / 2, middle + min_span / 2
    if hi == lo:
        width = abs(hi) * 0.2 or 1.0
        lo, hi = lo - width / 2, hi + width / 2
    if ceil is not None and hi > ceil:
        lo, hi = lo - (hi - ceil), ceil
    if floor is not None and lo < floor:
        lo, hi = floor, hi + (floor - lo)
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    if from_zero and min(values) >= 0:
        lo = 0.0
    return lo, hi


def text_width(text: str) -> float:
    return len(text) * CHAR_WIDTH


def truncate(text: str, max_chars: int) -> str:
    """Shorten long names in the middle; the full text goes in the tooltip.

    Layer names share long prefixes ("/model/backbone/stage3/..."), so the end is what tells them apart.
    """
    if len(text) <= max_chars:
        return text
    head = max_chars // 3
    return text[:head] + "\u2026" + text[len(text) - (max_chars - head - 1):]


def _num(value: float) -> str:
    return f"{value:.1f}"


def _svg_open(css_class: str, aria_label: str, height: float, width: float = WIDTH) -> str:
    # Fonts are set on the element too so a chart copied out of the page still renders the same.
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{escape(css_class)}" role="img" '
            f'aria-label="{escape(aria_label)}" width="{_num(width)}" height="{_num(height)}" '
            f'viewBox="0 0 {_num(width)} {_num(height)}" font-family="system-ui, sans-serif" '
            f'font-size="{FONT_SIZE}">')


def _x_axis(scale: Scale, top: float, bottom: float, label: str) -> list[str]:
    """Vertical grid lines with tick labels under the plot, and the axis title under those."""
    ticks = scale.ticks()
    parts = []
    for tick in ticks:
        x = _num(scale(tick))
        parts.append(f'<line class="grid" x1="{x}" y1="{_num(top)}" x2="{x}" y2="{_num(bottom)}" '
                     f'stroke="#E5E8EB"/>')
        parts.append(f'<text class="tick" x="{x}" y="{_num(bottom + 14)}" text-anchor="middle">'
                     f'{escape(format_tick(tick, ticks, scale.log))}</text>')
    middle = _num((scale.start + scale.end) / 2)
    parts.append(f'<text class="axis-label" x="{middle}" y="{_num(bottom + 32)}" text-anchor="middle">'
                 f'{escape(label)}</text>')
    return parts


def _y_axis(scale: Scale, left: float, right: float, label: str) -> list[str]:
    """Horizontal grid lines with tick labels left of the plot, and a rotated axis title."""
    ticks = scale.ticks()
    parts = []
    for tick in ticks:
        y = _num(scale(tick))
        parts.append(f'<line class="grid" x1="{_num(left)}" y1="{y}" x2="{_num(right)}" y2="{y}" '
                     f'stroke="#E5E8EB"/>')
        parts.append(f'<text class="tick" x="{_num(left - 6)}" y="{_num(scale(tick) + 4)}" text-anchor="end">'
                     f'{escape(format_tick(tick, ticks, scale.log))}</text>')
    middle = _num((scale.start + scale.end) / 2)
    parts.append(f'<text class="axis-label" transform="translate(14 {middle}) rotate(-90)" '
                 f'text-anchor="middle">{escape(label)}</text>')
    return parts


def _axis_scale(values: Sequence[float], start: float, end: float, *, allow_log: bool = True,
                **domain: Any) -> Scale:
    if allow_log and wants_log(values) and min(values) > 0:
        return Scale(*log_padded_domain(values), start, end, log=True)
    return Scale(*padded_domain(values, **domain), start, end)


def _radii(points: Sequence[ScatterPoint], largest: float = 14.0, smallest: float = 3.0) -> list[float]:
    """Marker radius with area proportional to size, so a 4x larger artifact looks 4x larger, not 16x."""
    sizes = [p.size for p in points if p.size is not None and p.size > 0]
    top = max(sizes, default=0.0)
    return [max(smallest, largest * math.sqrt(p.size / top)) if p.size and top else 5.0 for p in points]


Box = tuple[float, float, float, float]


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label_position(cx: float, cy: float, r: float, text: str, placed: list[Box],
                    bounds: tuple[float, float, float, float]) -> tuple[float, float, str] | None:
    """Right of the point if it fits, else left; moved up or down until it clears earlier labels and every
    marker; None when nowhere near the point is clear (the legend under the chart still names it).

    Variants often share an accuracy and a latency (every INT8 build of the example scores 95 %), so
    labels would otherwise be printed on top of each other.
    """
    width = text_width(text)
    candidates = []
    for dy in (0, -13, 13, -26, 26, -39, 39, -52, 52):
        candidates.append((cx + r + 3, cy + 4 + dy, "start"))
        candidates.append((cx - r - 3, cy + 4 + dy, "end"))
    for x, y, anchor in candidates:
        left = x if anchor == "start" else x - width
        box = (left, y - FONT_SIZE * 0.85, left + width, y + FONT_SIZE * 0.25)
        if left < bounds[0] or left + width > bounds[1] or box[1] < bounds[2] or box[3] > bounds[3]:
            continue
        if not any(_overlaps(box, other) for other in placed):
            placed.append(box)
            return x, y, anchor
    return None


def _point_mark(point: ScatterPoint, cx: float, cy: float, r: float, color: str,
                label_at: tuple[float, float, str] | None) -> str:
    fill = "#FFFFFF" if point.hollow else color
    tooltip = point.tooltip or point.label
    label = ""
    if label_at is not None:
        x, y, anchor = label_at
        label = (f'<text class="point-label" x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}">'
                 f'{escape(point.label)}</text>')
    return (f'<g class="point"><title>{escape(tooltip)}</title>'
            f'<circle class="mark" cx="{_num(cx)}" cy="{_num(cy)}" r="{_num(r)}" fill="{fill}" '
            f'fill-opacity="{"1" if point.hollow else "0.75"}" stroke="{color}" stroke-width="1.5"/>{label}</g>')


LEGEND_ROW = 16.0


def _legend_layout(labels: Sequence[str], left: float, right: float) -> list[tuple[float, int]]:
    """(x, row) of each legend entry: a swatch and its label, wrapped into rows within [left, right]."""
    x, row, placed = left, 0, []
    for label in labels:
        width = 14 + text_width(label) + 18
        if x + width > right and x > left:
            x, row = left, row + 1
        placed.append((x, row))
        x += width
    return placed


def _legend(points: Sequence[ScatterPoint], colors: dict[int, str], layout: list[tuple[float, int]],
            top: float) -> list[str]:
    """The key under the chart: every point, so one whose label found no room beside it is still named."""
    parts = []
    for i, (point, (x, row)) in enumerate(zip(points, layout)):
        y = top + row * LEGEND_ROW
        fill = "#FFFFFF" if point.hollow else colors[i]
        parts.append(f'<g class="legend-entry"><circle class="legend-swatch" cx="{_num(x + 5)}" cy="{_num(y - 4)}" '
                     f'r="5" fill="{fill}" stroke="{colors[i]}" stroke-width="1.5"/>'
                     f'<text class="legend-label" x="{_num(x + 14)}" y="{_num(y)}">{escape(point.label)}</text></g>')
    return parts


def scatter_svg(points: Sequence[ScatterPoint], *, x_label: str, y_label: str, aria_label: str,
                css_class: str = "chart chart-scatter", y_floor: float | None = None,
                y_ceil: float | None = None, y_min_span: float = 0.0) -> str:
    """A labelled scatter plot; x starts at zero, or is a log axis when it spans more than two decades."""
    left, right, top, bottom = 64.0, WIDTH - 16.0, 16.0, 328.0
    layout = _legend_layout([p.label for p in points], left, right)
    legend_top = bottom + 56  # under the x axis' ticks and title
    height = legend_top + LEGEND_ROW * max((row for _, row in layout), default=0) + 12
    # x from zero so that "twice as far right" reads as "twice as slow".
    x_scale = _axis_scale([p.x for p in points], left, right, floor=0.0, from_zero=True)
    y_scale = _axis_scale([p.y for p in points], bottom, top, allow_log=False, floor=y_floor, ceil=y_ceil,
                          min_span=y_min_span)
    parts = [_svg_open(css_class, aria_label, height),
             f'<rect class="frame" x="{_num(left)}" y="{_num(top)}" width="{_num(right - left)}" '
             f'height="{_num(bottom - top)}" fill="none" stroke="#D0D7DE"/>']
    x_label += " (log scale)" if x_scale.log else ""
    parts += _x_axis(x_scale, top, bottom, x_label) + _y_axis(y_scale, left, right, y_label)
    radii = _radii(points)
    centres = [(x_scale(p.x), y_scale(p.y)) for p in points]
    # Labels keep clear of every marker, not only of the labels placed before them.
    placed: list[Box] = [(cx - r, cy - r, cx + r, cy + r) for (cx, cy), r in zip(centres, radii)]
    # Largest first, so a small marker is never hidden under a big one.
    order = sorted(range(len(points)), key=lambda i: -radii[i])
    colors = {i: REFERENCE_COLOR if p.reference else PALETTE[i % len(PALETTE)] for i, p in enumerate(points)}
    for i in order:
        (cx, cy), r = centres[i], radii[i]
        label_at = _label_position(cx, cy, r, points[i].label, placed, (left + 2, right - 2, top, bottom))
        parts.append(_point_mark(points[i], cx, cy, r, colors[i], label_at))
    parts += _legend(points, colors, layout, legend_top)
    parts.append("</svg>")
    return "".join(parts)


_BAR_FILLS = {"": ("{color}", "1"), "reference": (REFERENCE_COLOR, "1"), "muted": ("{color}", "0.35")}


def _bar_row(bar: Bar, scale: Scale, y: float, height: float, label_right: float, label_chars: int,
             color: str) -> str:
    fill, opacity = _BAR_FILLS.get(bar.style, _BAR_FILLS[""])
    fill = fill.format(color=color)
    # A zero (or, on a log axis, below-range) value keeps a zero-width bar: its value text still shows.
    width = max(0.0, scale(bar.value) - scale.start) if bar.value > 0 else 0.0
    css = "mark" + (f" {bar.style}" if bar.style else "")
    return (f'<g class="bar"><title>{escape(bar.tooltip or bar.label)}</title>'
            f'<text class="bar-label" x="{_num(label_right)}" y="{_num(y + height / 2 + 4)}" '
            f'text-anchor="end">{escape(truncate(bar.label, label_chars))}</text>'
            f'<rect class="{css}" x="{_num(scale.start)}" y="{_num(y)}" width="{_num(width)}" '
            f'height="{_num(height)}" fill="{fill}" fill-opacity="{opacity}" stroke="{fill}"/>'
            f'<text class="bar-value" x="{_num(scale.start + width + 4)}" y="{_num(y + height / 2 + 4)}">'
            f'{escape(bar.value_text)}</text></g>')


def _bar_scale(values: Sequence[float], start: float, end: float, log: bool | None) -> Scale:
    """Bars start at zero on a linear axis; on a log axis they start at the decade below the smallest."""
    use_log = wants_log(values) if log is None else log and any(v > 0 for v in values)
    if use_log:
        return Scale(*decade_domain(values), start, end, log=True)
    top = max(values, default=0.0)
    if top <= 0:
        return Scale(0.0, 1.0, start, end)
    step = _nice_step(top / 5)
    return Scale(0.0, math.ceil(top / step - 1e-9) * step, start, end)


def hbar_svg(bars: Sequence[Bar], *, axis_label: str, aria_label: str, css_class: str,
             color: str = PALETTE[0], log: bool | None = None, label_chars: int = 36,
             width: float = WIDTH) -> str:
    """Horizontal bars in the given order, each labelled left and valued right; ``log=None`` picks the axis."""
    row, bar_height, top = 22.0, 15.0, 10.0
    longest = max((len(truncate(b.label, label_chars)) for b in bars), default=4)
    left = min(text_width("x" * longest) + 12.0, width * 0.45)
    right = width - 76.0  # room for the value printed after the longest bar
    bottom = top + row * len(bars)
    height = bottom + 44.0
    scale = _bar_scale([b.value for b in bars], left, right, log)
    parts = [_svg_open(css_class, aria_label, height, width)]
    parts += _x_axis(scale, top, bottom, axis_label)
    for index, bar in enumerate(bars):
        y = top + index * row + (row - bar_height) / 2
        parts.append(_bar_row(bar, scale, y, bar_height, left - 6, label_chars, color))
    parts.append(f'<line class="axis" x1="{_num(left)}" y1="{_num(top)}" x2="{_num(left)}" '
                 f'y2="{_num(bottom)}" stroke="#57606A"/></svg>')
    return "".join(parts)
