"""The results of one benchmark run, and the project's targets checked against them."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.timing import LatencySummary


@dataclass
class VariantResult:
    name: str
    label: str
    size_bytes: int | None = None
    size_ratio: float | None = None
    """File size as a fraction of the FP32 file."""
    quant_param_bytes: int | None = None
    """Of ``size_bytes``: scales and zero points."""
    build_seconds: float = 0.0
    error: str | None = None
    note: str | None = None
    calibration_data: str | None = None
    latency: LatencySummary | None = None
    ops: dict[str, int] | None = None
    """Op types of the graph ONNX Runtime runs after its optimisations."""
    weight_types: dict[str, int] | None = None
    """Element types of that graph's initializers (shows an FP16 file being run in float32)."""
    quality: dict[str, float] = field(default_factory=dict)
    """``top1`` (labelled data) or ``cosine_mean``/``cosine_min``/``top1_agreement`` against FP32."""


@dataclass
class ModelResult:
    name: str
    title: str
    summary: str
    """Architecture, parameter count, input shape."""
    calibration: str
    """What the static INT8 variants were calibrated on."""
    quality_note: str
    variants: list[VariantResult]
    load_during_timing: tuple[float, float] | None = None
    """1-minute load average when timing started and when it ended."""

    def variant(self, name: str) -> VariantResult | None:
        return next((v for v in self.variants if v.name == name), None)


@dataclass(frozen=True)
class TargetCheck:
    target: str
    measured: str
    met: bool | None
    """None when the number could not be measured."""
    borderline: bool = False
    """The threshold lies inside the spread of the measurement (the rounds' IQR): another run may differ."""


@dataclass
class RunRecord:
    command: str
    mode: str
    """"full", or what was left out ("quick", "only resnet18")."""
    started_utc: str
    seconds: float
    machine: dict[str, object]
    load_before: tuple[float, float, float] | None
    load_after: tuple[float, float, float] | None
    method: dict[str, object]
    """Timing plan, thread count, image counts and the calibration data, as run."""
    models: dict[str, ModelResult]
    targets: list[TargetCheck]


def _ratio_check(model: ModelResult, minimum: float) -> TargetCheck:
    target = f"{model.title}: edgekiln INT8 ≥ {minimum:.1f}x faster than FP32 (ORT CPU, batch 1, 2 threads)"
    int8 = model.variant("int8")
    if not int8 or not int8.latency or int8.latency.ratio_vs_reference is None:
        return TargetCheck(target, "not measured", None)
    ratio = int8.latency.ratio_vs_reference
    low, high = int8.latency.ratio_low, int8.latency.ratio_high
    return TargetCheck(target, f"{ratio:.2f}x (rounds' IQR {low:.2f}-{high:.2f}x)", ratio >= minimum,
                       borderline=low <= minimum <= high)


def _size_check(model: ModelResult, maximum: float) -> TargetCheck:
    target = f"{model.title}: edgekiln INT8 file ≤ {maximum:.0%} of FP32"
    int8 = model.variant("int8")
    if not int8 or int8.size_ratio is None:
        return TargetCheck(target, "not measured", None)
    return TargetCheck(target, f"{int8.size_ratio:.1%}", int8.size_ratio <= maximum)


def _accuracy_check(model: ModelResult, max_points: float) -> TargetCheck:
    target = f"{model.title}: edgekiln INT8 loses ≤ {max_points:.1f} points top-1"
    fp32, int8 = model.variant("fp32"), model.variant("int8")
    if not fp32 or not int8 or "top1" not in fp32.quality or "top1" not in int8.quality:
        return TargetCheck(target, "not measured", None)
    lost = 100 * (fp32.quality["top1"] - int8.quality["top1"])
    return TargetCheck(target, f"{lost:+.2f} points lost ({100 * fp32.quality['top1']:.2f}% -> "
                               f"{100 * int8.quality['top1']:.2f}%)", lost <= max_points + 1e-9)


def check_targets(models: dict[str, ModelResult]) -> list[TargetCheck]:
    """The targets the project set for ORT INT8 (see the issue that asked for this benchmark)."""
    checks = [_ratio_check(models[name], minimum)
              for name, minimum in (("resnet18", 2.8), ("mobilenet_v2", 2.0)) if name in models]
    checks += [_size_check(model, 0.27) for model in models.values()]
    if "fashion_mnist" in models:
        checks.append(_accuracy_check(models["fashion_mnist"], 0.3))
    return checks
