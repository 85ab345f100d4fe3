"""The settings the commands share, declared once each: name, type, default, bounds and help.

The command line (``toolchain.cli_options``), the recipe schema (``toolchain.recipe``) and the Python API
(``toolchain.api``) are generated from these groups, and the pipeline receives them typed. A pass's own
settings live in its config (``LowRankConfig``), a backend's in its options group (``Backend.options``);
``build_settings`` lists every group ``edgekiln build`` takes. Light to import: pydantic only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from toolchain.options import Flag, OptionGroup

TaskChoice = Literal["auto", "classify", "detect", "generic"]
"""What a model's outputs are, for the accuracy guard's metric (``toolchain.quality``); auto: guessed."""
Exporter = Literal["auto", "dynamo", "torchscript"]
RangeMethod = Literal["minmax", "entropy", "percentile"]
ActivationType = Literal["uint8", "int8"]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
DEFAULT_MIN_COSINE = 0.99
PRESET_HELP = "imagenet, yolo, raw01, raw255, gray01"

_Number = Annotated[float, Field(allow_inf_nan=False)]


class SourceSettings(OptionGroup):
    """How to load and export a source model (convert, build)."""

    inputs: Annotated[tuple[str, ...], Flag(flag="input", multiple=True, metavar="NAME:SHAPE[:DTYPE]")] = Field(
        (), description="Input name/shape/dtype, e.g. input:1x3x224x224 (repeat per input).")
    dynamic_batch: bool = Field(False, description="Make axis 0 of inputs and outputs dynamic.")
    opset: int | None = Field(None, ge=7, le=23, description="ONNX opset (default: the target's, else 17).")
    model_class: Annotated[str | None, Flag(metavar="MODULE:CLASS")] = Field(
        None, min_length=1,
        description="Architecture for a state dict: package.module:Class or path/to/file.py:Class.")
    weights: Path | None = Field(None, description="State-dict file for --model-class.")
    model_kwargs: Annotated[str | dict[str, Any] | None, Flag(metavar="JSON")] = Field(
        None, description="Constructor keyword arguments for --model-class.")
    trust_pickle: bool = Field(False, description="Allow unpickling a whole model object (runs code from the file).")
    trust_savedmodel: bool = Field(False, description="Allow a SavedModel whose graph reads or writes files, runs "
                                                      "Python or reaches the network (converting it runs them).")
    exporter: Exporter = Field("auto", description="PyTorch ONNX exporter.")
    keras_safe_mode: Annotated[bool, Flag(negate=True, help="Allow Keras Lambda layers (deserializes code from "
                                                           "the file).")] = Field(
        True, description="Keep Keras safe mode (refuses Lambda layers' pickled code).")


class VerifySettings(OptionGroup):
    """The numerical checks of every model-producing command."""

    verify: Annotated[bool, Flag(negate=True, help="Skip the numerical check against the reference.")] = Field(
        True, description="Check each result numerically against its reference.")
    atol: _Number = Field(DEFAULT_ATOL, ge=0, description="Absolute tolerance of the check.")
    rtol: _Number = Field(DEFAULT_RTOL, ge=0, description="Relative tolerance of the check.")
    calib: Path | None = Field(
        None, description="Folder of sample images (or .npy/.npz samples): verification inputs besides random "
                          "ones, and the calibration set of INT8 and low-rank.")
    seed: int = Field(0, ge=0, description="Seed of the random verification inputs and of the sample selection.")
    preprocess: Annotated[str | dict[str, Any] | None, Flag(metavar="PRESET")] = Field(
        None, description=f"Image preprocessing preset ({PRESET_HELP}); default: inferred from the input shape.")


class SampleSettings(OptionGroup):
    """How many calibration and held-out samples are drawn from --calib, and where they are cached."""

    calib_size: int | None = Field(
        None, ge=1, description="Samples used to measure activation ranges (or to choose low-rank ranks); "
                                "default: the samples not held out, up to 256.")
    holdout: int | None = Field(
        None, ge=0, description="Further samples, never used for calibration, for the accuracy check; "
                                "default: 40% of the samples, 16 to 128 (at most half).")
    cache_dir: Path | None = Field(
        None, description="edgekiln's cache folder: preprocessed calibration sets and build stages "
                          "(default $EDGEKILN_CACHE_DIR, else ~/.cache/edgekiln).")
    no_cache: bool = Field(False, description="Do not read or write the cache (calibration sets, build stages).")


class QuantSettings(OptionGroup):
    """INT8 calibration and the accuracy guard (calibrate, compile, build)."""

    method: RangeMethod | None = Field(None, description="Range measurement (default minmax).")
    per_channel: Annotated[bool | None, Flag(off="per-tensor")] = Field(
        None, description="Weight scales per output channel (default) or per tensor.")
    activation_type: ActivationType | None = Field(
        None, description="Default from the target: uint8 for ONNX Runtime on x86, int8 for TensorRT/TFLite.")
    symmetric: Annotated[bool | None, Flag(off="asymmetric")] = Field(
        None, description="Symmetric activation ranges (default from the target; TensorRT needs symmetric).")
    # Post-training passes (toolchain.passes.ptq), measured in bench/ptq.md. Unset: off, plain MinMax ranges and
    # nearest rounding, until they beat it on every measured model and backend.
    equalize: Annotated[bool | None, Flag(off="no")] = Field(
        None, description="Cross-layer equalization of Conv pairs before calibration (exact in FP32).")
    range_search: Literal["mse", "off"] | None = Field(
        None, description="mse: narrow each activation range to its lowest-error quantization range (default off).")
    bias_correction: Annotated[bool | None, Flag(off="no")] = Field(
        None, description="Shift each INT8 layer's bias by its mean output error on the calibration samples.")
    weight_rounding: Literal["nearest", "learned"] | None = Field(
        None, description="learned: round each weight up or down to minimise its layer's output error on the "
                          "calibration samples (AdaRound's objective; seconds per layer; default nearest).")
    max_drop: _Number = Field(
        1.0, ge=0, description="Top-1 accuracy points INT8 may lose on the held-out samples (measured with "
                               "labels, else expected by the FP32 model's own class probabilities: a top-1 change "
                               "costs what FP32 was sure of), judged by a 95% lower bound of the observed drop.")
    min_cosine: _Number = Field(DEFAULT_MIN_COSINE, gt=0, le=1,
                                description="Cosine between FP32 and the lossy model's outputs. The guard counts held-out "
                                            "samples under it as diverged (their share is held to --max-drop by "
                                            "the same bound; one under 1 - 10 x (1 - this) fails outright); "
                                            "compile/optimize verification holds each output to it.")
    task: TaskChoice = Field(
        "auto", description="What the outputs are, for the guard's metric: classify (top-1 agreement), detect "
                            "(YOLO-style head: detections kept), generic (cosines only: embeddings and the like); "
                            "auto guesses from the output shapes and says what it guessed.")
    guard: Annotated[bool, Flag(negate=True, help="Skip the accuracy guard (not recommended).")] = Field(
        True, description="Check INT8 against FP32 on held-out samples and keep layers in float where needed.")

    PER_TARGET: ClassVar[tuple[str, ...]] = ("per_channel", "activation_type", "symmetric")
    """Chosen per target by ``edgekiln build`` (``compile`` and ``calibrate`` take them)."""


class BuildSettings(OptionGroup):
    """What only ``edgekiln build`` takes."""

    targets: Annotated[tuple[str, ...], Flag(flag="target", multiple=True, metavar="TARGET[:PRECISION]")] = Field(
        (), description="Device profile to build for, e.g. rpi4 or x86:int8 (repeatable; see 'edgekiln targets'; "
                        "default x86, or for the bundled example x86, x86:int8, rpi4, mcu and jetson-nano).")
    labels: Path | None = Field(None, description="Labelled image folder (one sub-folder per class) for accuracy.")
    simplify: Annotated[bool, Flag(negate=True, help="Skip the simplify pass.")] = Field(
        True, description="Run the simplify pass (constant folding, redundant-node removal).")
    bench_iterations: int = Field(50, ge=0, description="Timed runs per artifact (0 skips timing).")
    fail_fast: bool = Field(
        False, description="Stop at the first target that fails and write nothing (default: deliver the targets "
                           "that pass, report the others, exit 8).")
