"""The HTML build report: escaping, tolerance of old or partial reports, and a real render in Chromium."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from toolchain import svg_plots
from toolchain.report_html import render_report_html, write_report_html

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<script>alert(1)</script>"
WINDOW = (1200, 2400)
PER_LAYER = [
    {"tensor": "conv1_out", "node": "/conv1/Conv", "op": "Conv", "relative_error": 0.0021, "cosine": 0.99999},
    {"tensor": "relu1_out", "node": "/relu1/Relu", "op": "Relu", "relative_error": 0.0034, "cosine": 0.99998},
    {"tensor": "pool1_out", "node": "/pool1/MaxPool", "op": "MaxPool", "relative_error": 0.0036, "cosine": 0.99998},
    {"tensor": "conv2_out", "node": "/conv2/Conv", "op": "Conv", "relative_error": 0.0121, "cosine": 0.9999},
    {"tensor": "relu2_out", "node": "/relu2/Relu", "op": "Relu", "relative_error": 0.0118, "cosine": 0.9999},
    {"tensor": "fc1_out", "node": "/fc1/Gemm", "op": "Gemm", "relative_error": 0.0309, "cosine": 0.9995},
    {"tensor": "logits", "node": "/fc2/Gemm", "op": "Gemm", "relative_error": 0.0412, "cosine": 0.9991},
    {"tensor": "flatten_out", "node": "/Flatten", "op": "Flatten", "relative_error": 0.0, "cosine": 1.0},
]


def realistic_report() -> dict[str, Any]:
    """What ``edgekiln build`` writes for the bundled example (schema 2), with a hostile note in it."""
    def target(name: str, backend: str, precision: str, size: int, **extra: Any) -> dict[str, Any]:
        return {"target": name, "backend": backend, "artifact": name, "precision": precision, "size_bytes": size,
                "accuracy": None, "agreement": None, "latency": None, "per_layer": None, "notes": [], **extra}

    return {
        "schema_version": 2, "edgekiln_version": "0.1.0", "source": "bundled Fashion-MNIST example",
        "seconds": 41.2, "cache": {"dir": "/root/.cache/edgekiln", "hits": 3, "misses": 4, "enabled": True},
        "stages": [
            {"stage": "convert", "output": "model.onnx", "seconds": 1.2, "size_bytes": 247461,
             "worst_max_abs": 8.6e-06, "worst_cosine": 1.0, "notes": ["exported with the torchscript exporter"],
             "cached": False},
            {"stage": "simplify", "output": "model.simplified.onnx", "seconds": 0.63, "size_bytes": 248123,
             "worst_max_abs": 0.0, "worst_cosine": 1.0, "notes": [], "cached": True},
            {"stage": "lowrank", "output": "-", "seconds": 0.0, "size_bytes": 0, "worst_max_abs": None,
             "worst_cosine": None, "notes": ["skipped: nothing to factorize"], "cached": False},
            {"stage": "compile x86", "output": "x86", "seconds": 0.05, "size_bytes": 251101, "worst_max_abs": 0.0,
             "worst_cosine": 1.0, "notes": [], "cached": True},
            {"stage": "compile rpi4", "output": "rpi4", "seconds": 12.4, "size_bytes": 81234,
             "worst_max_abs": 0.031, "worst_cosine": 0.9991, "notes": [HOSTILE], "cached": False},
        ],
        "targets": [
            target("x86", "onnxruntime", "fp32", 251101, accuracy={"top1": 0.95, "top5": 1.0, "images": 300},
                   agreement={"top1_agreement": 1.0, "min_cosine": 1.0, "samples": 128},
                   latency={"p50_ms": 0.0563, "p90_ms": 0.0586, "iterations": 50}),
            target("rpi4", "tflite", "int8", 81234, accuracy={"top1": 0.95, "top5": 0.997, "images": 300},
                   agreement={"top1_agreement": 0.99, "min_cosine": 0.998, "samples": 128},
                   latency={"p50_ms": 0.412, "p90_ms": 0.47, "iterations": 50}, per_layer=PER_LAYER,
                   notes=[HOSTILE, "calibrated on 172 images"]),
            target("mcu", "tflite", "int8", 79800, accuracy={"top1": 0.9467, "top5": 0.997, "images": 300},
                   agreement={"top1_agreement": 0.984, "min_cosine": 0.997, "samples": 128},
                   latency={"p50_ms": 0.398, "p90_ms": 0.52, "iterations": 50}, per_layer=PER_LAYER[:5]),
            target("jetson-nano", "tensorrt", "fp16", 262144,
                   notes=["not run here: TensorRT is not installed"]),
        ],
        "reference": {"accuracy": {"top1": 0.95, "top5": 1.0, "images": 300},
                      "latency": {"p50_ms": 0.061, "p90_ms": 0.066, "iterations": 50}, "size_bytes": 248123},
    }


class DomCensus(HTMLParser):
    """Counts what a test needs from a document: table rows, chart marks, and any script or img elements."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.table: str | None = None
        self.chart: str | None = None
        self.rows: dict[str, int] = {}
        self.row_targets: list[str] = []
        self.charts: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self.forbidden: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag in ("script", "img", "iframe", "link"):
            self.forbidden.append(tag)
        if tag == "table":
            self.table = classes[0] if classes else ""
        elif tag == "tr" and self.table and "tbody" in self.stack:
            self.rows[self.table] = self.rows.get(self.table, 0) + 1
            if attributes.get("data-target") is not None and self.table == "variants":
                self.row_targets.append(attributes["data-target"] or "")
        elif tag == "svg":
            self.chart = next((c for c in classes if c.startswith("chart-")), "")
            self.charts[self.chart] = self.charts.get(self.chart, 0) + 1
        elif self.chart is not None and "mark" in classes:
            self.marks[f"{self.chart} {tag}"] = self.marks.get(f"{self.chart} {tag}", 0) + 1
        self.stack.append(tag)  # void elements are never closed: handle_endtag pops past them

    def handle_endtag(self, tag: str) -> None:
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass
        if tag == "table":
            self.table = None
        elif tag == "svg":
            self.chart = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def census(document: str) -> DomCensus:
    parser = DomCensus()
    parser.feed(document)
    parser.close()
    return parser


# --- pure Python ------------------------------------------------------------------------------

def test_hostile_text_is_escaped_everywhere() -> None:
    report = realistic_report()
    report["source"] = "models/<b>evil</b>.pt"
    report["targets"][0]["target"] = 'x86"><img src=x onerror=alert(1)>'
    report["targets"][1]["per_layer"] = [{**PER_LAYER[0], "node": HOSTILE}]
    html = render_report_html(report)
    assert HOSTILE not in html and "<img" not in html and "<b>evil" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    found = census(html)
    assert found.forbidden == []
    assert HOSTILE in "".join(found.text)  # shown to the reader as text, not run


def test_realistic_report_has_tables_and_all_three_charts() -> None:
    report = realistic_report()
    html = render_report_html(report)
    assert "src=" not in html and "href=" not in html and "url(" not in html  # self-contained
    found = census(html)
    assert found.row_targets == ["x86", "rpi4", "mcu", "jetson-nano"]
    assert found.rows == {"variants": 5, "stages": 5}  # four targets plus the FP32 reference row
    assert found.charts == {"chart-scatter": 1, "chart-size": 1, "chart-layers": 2}
    assert found.marks["chart-scatter circle"] == 4  # reference, x86, rpi4, mcu; jetson-nano has no latency
    assert found.marks["chart-size rect"] == 5  # the jetson bundle has a size though it was not run
    assert found.marks["chart-layers rect"] == len(PER_LAYER) + 5
    text = "".join(found.text)
    assert "95.00%" in text and "94.67%" in text and "0.0563" in text and "0.412" in text
    assert "jetson-nano (no latency and accuracy)" in text


def test_layers_are_worst_first_and_log_scaled_when_spanning_decades() -> None:
    report = realistic_report()
    rows = [{"node": f"/layer{i}", "op": "Conv", "relative_error": 10.0 ** -i} for i in range(1, 6)]
    report["targets"] = [{"target": "rpi4", "per_layer": list(reversed(rows))}]
    html = render_report_html(report)
    layers_svg = html[html.index('class="chart chart-layers"'):]
    positions = [layers_svg.index(f"/layer{i} (Conv)") for i in range(1, 6)]
    assert positions == sorted(positions)
    assert "relative error (log scale)" in layers_svg


def test_old_and_partial_reports_render() -> None:
    """A schema-1 report (no precision, size, agreement, cache, reference) and one full of nulls."""
    old = {"source": "bundled Fashion-MNIST example", "seconds": 2.21,
           "stages": [{"stage": "compile x86", "output": "x86", "seconds": 0.047, "size_bytes": 251101,
                       "worst_max_abs": 0.0, "worst_cosine": 1.0, "notes": []}],
           "targets": [{"target": "x86", "backend": "onnxruntime", "artifact": "x86",
                        "accuracy": {"images": 300, "top1": 0.95, "top5": 1.0},
                        "latency": {"p50_ms": 0.0563, "p90_ms": 0.0586, "iterations": 50}}]}
    found = census(render_report_html(old))
    assert found.row_targets == ["x86"]
    assert found.marks["chart-scatter circle"] == 1  # a single point still gets axes around it
    assert found.marks["chart-size rect"] == 1  # size taken from the "compile x86" stage
    nulls = {"source": None, "seconds": None, "cache": None, "stages": None, "reference": None,
             "targets": [{"target": "x86", "accuracy": {"top1": None}, "latency": {"p50_ms": None},
                          "per_layer": [{"node": "a", "relative_error": None}], "notes": None},
                         "not a dict"]}
    found = census(render_report_html(nulls))
    assert found.row_targets == ["x86"] and "chart-scatter" not in found.charts


def test_report_with_no_runnable_targets_renders() -> None:
    report = realistic_report()
    report["targets"] = [report["targets"][3]]  # only the Jetson bundle, built but not run here
    del report["reference"]
    found = census(render_report_html(report))
    assert found.row_targets == ["jetson-nano"] and found.rows["variants"] == 1
    assert "chart-scatter" not in found.charts and found.marks["chart-size rect"] == 1
    assert "No variant has both latency and accuracy" in "".join(found.text)
    assert census(render_report_html({})).forbidden == []  # even an empty dict gives a page


def test_scatter_handles_equal_values_and_agreement_only_points() -> None:
    points = [svg_plots.ScatterPoint("a", 0.5, 95.0, 1000), svg_plots.ScatterPoint("b", 0.5, 95.0, 4000, hollow=True)]
    svg = svg_plots.scatter_svg(points, x_label="ms", y_label="%", aria_label="test")
    assert census(svg).marks == {"chart-scatter circle": 2}
    assert "nan" not in svg.lower() and 'fill="#FFFFFF"' in svg  # the agreement-only point is hollow
    # Both points sit on the same spot: their labels must still not be printed on top of each other.
    labels = re.findall(r'class="point-label" x="([^"]+)" y="([^"]+)" text-anchor="(\w+)"', svg)
    assert len(labels) == 2 and len(set(labels)) == 2


def test_write_report_html(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_report_html(realistic_report(), path)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    json.dumps(realistic_report())  # the fixture is a real report.json: it must stay JSON-serializable


# --- real browser -----------------------------------------------------------------------------

def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    # stderr carries harmless dbus noise in containers; only the exit code and outputs are checked.
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium "
                    "(apt-get install chromium)")
def test_chromium_renders_tables_charts_and_pixels(tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    write_report_html(realistic_report(), page)
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    found = census(dom)
    assert found.forbidden == [], "the hostile note became an element"
    assert found.row_targets == ["x86", "rpi4", "mcu", "jetson-nano"] and found.rows["stages"] == 5
    assert found.charts == {"chart-scatter": 1, "chart-size": 1, "chart-layers": 2}
    assert found.marks["chart-scatter circle"] == 4 and found.marks["chart-size rect"] == 5
    assert found.marks["chart-layers rect"] == len(PER_LAYER) + 5
    assert HOSTILE in "".join(found.text)

    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", page.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == WINDOW
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, "the page rendered as a blank or flat image"
    white = sum(count for count, rgb in colours if rgb == (255, 255, 255))
    assert white < 0.97 * WINDOW[0] * WINDOW[1]
    # The size bars' solid fill: proves the inline SVG was painted, not only parsed.
    bar_blue = tuple(int(svg_plots.PALETTE[0][i:i + 2], 16) for i in (1, 3, 5))
    assert sum(count for count, rgb in colours if rgb == bar_blue) > 1000


def test_realistic_report_is_not_mutated() -> None:
    report = realistic_report()
    before = copy.deepcopy(report)
    render_report_html(report)
    assert report == before


def test_where_each_latency_was_timed_the_agreement_counts_and_the_mcu_budget() -> None:
    """Issue #17: rpi4 and mcu latencies are this host's LiteRT; agreement shows its counts; MCU flash and arena."""
    report = realistic_report()
    report["host"] = {"model": "AMD EPYC", "int8_isa": "x86-avx2", "features": ["avx2", "fma"], "logical_cpus": 2}
    x86, rpi4, mcu = report["targets"][:3]
    rpi4["latency"]["threads"] = 4
    mcu["mcu"] = {"model_flash_bytes": 71080, "arena_bytes": 20112, "arena_measured_on": None,
                  "firmware_flash_bytes": None, "firmware_ram_bytes": None}
    rpi4["held_out"] = {"samples": 128, "top1_agreement": 0.984375, "accuracy_fp32": 0.9375, "accuracy": 0.9296875,
                        "min_cosine": 0.9988, "passed": True}
    found = census(render_report_html(report))
    text = " ".join("".join(found.text).split())
    assert "Measured on this host: AMD EPYC (x86-avx2, avx2 fma), 2 logical CPUs." in text
    assert "Threads: x86 default, rpi4 4, mcu default" in text
    assert "100.00% (128/128)" in text and "99.00% (127/128)" in text  # share and the counts behind it
    page = render_report_html(report)
    rows = {name: page[page.index(f'data-target="{name}"'):].split("</tr>")[0] for name in ("x86", "rpi4", "mcu")}
    assert "<td>host</td>" in rows["x86"] and "<td>host LiteRT</td>" in rows["rpi4"] + rows["mcu"]
    assert found.rows["mcu"] == 1 and "69.4" in text and "19.6" in text and "edgekiln's estimate" in text
    assert found.rows["held-out"] == 1 and "98.44% (126/128)" in text and "93.75% \u2192 92.97%" in text


def test_crowded_scatter_labels_never_overlap_and_the_key_names_every_point() -> None:
    """Variants with the same latency and accuracy: labels go where they fit, never on top of another."""
    points = [svg_plots.ScatterPoint(f"variant-{i} · 69.4 KiB", 0.1, 95.0, 70000) for i in range(12)]
    svg = svg_plots.scatter_svg(points, x_label="ms", y_label="%", aria_label="crowded")
    boxes = []
    for x, y, anchor, label in re.findall(r'class="point-label" x="([^"]+)" y="([^"]+)" text-anchor="(\w+)">'
                                          r"([^<]+)<", svg):
        width = svg_plots.text_width(label)
        left = float(x) if anchor == "start" else float(x) - width
        boxes.append((left, float(y) - 10, left + width, float(y) + 3))
    assert 2 <= len(boxes) < len(points)  # as many as fit; the rest are named by the key only
    assert not any(svg_plots._overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert svg.count('class="legend-label"') == len(points)
    assert census(svg).marks == {"chart-scatter circle": len(points)}  # key swatches are not data marks
