"""The declared preprocessing that turns one image into one model input.

A ``PreprocessSpec`` is stored in every artifact manifest (``to_dict``) so a
device applies exactly the preprocessing the model was calibrated and verified
with. ``apply`` is the reference implementation; its steps, in order:

1. mode conversion to 8-bit ``RGB`` or ``L`` (see ``_to_8bit`` for the rules on
   alpha, palette, 16/32-bit and float images);
2. resize (``stretch``, ``shorter-crop`` or ``letterbox``) with Pillow's filters,
   which antialias when shrinking (as torchvision's PIL path does; OpenCV does not);
3. float: ``x * scale``, then ``(x - mean) / std`` per channel, mean/std listed in
   RGB order; uint8/int8: the raw pixels (int8 = pixel - 128), no scale/mean/std;
4. optional RGB -> BGR swap, layout (CHW or HWC), dtype cast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toolchain.errors import InputFileError, UsageError

ResizeMode = Literal["stretch", "shorter-crop", "letterbox"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRESETS: Mapping[str, str] = MappingProxyType(
    {
        "imagenet": "resize shorter side to size/0.875, centre crop, x/255, ImageNet mean/std, RGB (3 channels)",
        "yolo": "letterbox with grey padding 114, x/255, RGB",
        "raw01": "stretch to size, x/255 (0..1)",
        "raw255": "stretch to size, pixels as 0..255 floats",
        "gray01": "1 channel (luma), stretch to size, x/255 (0..1)",
    }
)


class PreprocessSpec(BaseModel):
    """How to turn a decoded image into one model input (without the batch dimension)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    height: int = Field(gt=0, description="Model input height in pixels.")
    width: int = Field(gt=0, description="Model input width in pixels.")
    channels: Literal[1, 3] = Field(description="1 for grayscale (ITU-R 601 luma), 3 for colour.")
    color_order: Literal["RGB", "BGR"] = Field(
        default="RGB", description="Channel order the model expects; ignored for 1 channel."
    )
    layout: Literal["NCHW", "NHWC"] = Field(
        default="NCHW", description="Tensor layout; apply() returns CHW or HWC (no batch dimension)."
    )
    resize: ResizeMode = Field(
        default="stretch",
        description=(
            "stretch: resize to height x width ignoring aspect ratio; shorter-crop: keep aspect, resize to "
            "cover height/crop_fraction x width/crop_fraction, centre crop; letterbox: keep aspect, fit inside "
            "and pad centred with pad_value."
        ),
    )
    crop_fraction: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="shorter-crop only: share of the resized image kept by the centre crop (0.875 = 256 -> 224).",
    )
    interpolation: Interpolation = Field(default="bilinear", description="Resampling filter used when resizing.")
    pad_value: int = Field(default=114, ge=0, le=255, description="letterbox only: 0..255 value of the padding.")
    scale: float = Field(
        default=1 / 255,
        gt=0.0,
        description="Multiplier applied to 0..255 pixels before mean/std: 1/255 gives 0..1, 1.0 keeps 0..255.",
    )
    mean: tuple[float, ...] = Field(
        default=(0.0,),
        description="Per-channel value subtracted after scale, in RGB order; 1 value or one per channel.",
    )
    std: tuple[float, ...] = Field(
        default=(1.0,),
        description="Per-channel divisor applied after the mean, in RGB order; 1 value or one per channel.",
    )
    dtype: Literal["float32", "float16", "uint8", "int8"] = Field(
        default="float32",
        description="Output type; uint8 = raw pixels and int8 = pixels - 128 (scale, mean and std not applied).",
    )

    def __init__(self, /, **data: Any) -> None:
        # Callers (CLI options, presets, overrides) get a UsageError in plain words,
        # not pydantic's multi-line report.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise UsageError(f"invalid preprocessing: {_explain(exc)}") from exc

    # ---- validation -------------------------------------------------------

    @field_validator("height", "width", "pad_value", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not true/false")
        return value

    @field_validator("scale", "crop_fraction")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("mean", "std")
    @classmethod
    def _finite_values(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(v) for v in values):
            raise ValueError("must contain finite numbers only")
        return values

    @field_validator("std")
    @classmethod
    def _positive_std(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not all(v > 0 for v in values):
            raise ValueError("must contain positive numbers only (it is a divisor)")
        return values

    @model_validator(mode="after")
    def _per_channel_lengths(self) -> PreprocessSpec:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"{name} has {len(values)} values but must have 1 or {self.channels} (one per channel)"
                )
        return self

    # ---- construction -----------------------------------------------------

    @classmethod
    def preset(cls, name: str, height: int, width: int, channels: int | None = None) -> PreprocessSpec:
        """A named preset (see ``PRESETS``) for a height x width input; ``channels`` defaults to the preset's."""
        builder = _PRESET_FIELDS.get(name)
        if builder is None:
            raise UsageError(
                f"unknown preprocessing preset '{name}'", hint=f"Use one of: {', '.join(PRESETS)}."
            )
        return cls(height=height, width=width, **builder(name, channels))

    @classmethod
    def from_input_shape(
        cls,
        shape: Sequence[int | str],
        *,
        preset: str | None = None,
        layout: Literal["NCHW", "NHWC"] | None = None,
    ) -> PreprocessSpec:
        """Infer layout, channels and size from a model input shape (4-D with batch, or 3-D without)."""
        dims = _shape_without_batch(shape)
        layout = layout or _guess_layout(shape, dims)
        channel_dim, h, w = (dims[0], dims[1], dims[2]) if layout == "NCHW" else (dims[2], dims[0], dims[1])
        if not (isinstance(channel_dim, int) and channel_dim in (1, 3)):
            raise UsageError(
                f"input shape {_shape_text(shape)} has {channel_dim} channels in {layout} layout; "
                "image calibration needs 1 or 3"
            )
        if not (_is_size(h) and _is_size(w)):
            raise UsageError(
                f"input shape {_shape_text(shape)} has a dynamic height or width",
                hint="Give a concrete size with --input NAME:SHAPE, e.g. --input images:1x3x640x640.",
            )
        channels = int(channel_dim)
        name = preset or ("gray01" if channels == 1 else "raw01")
        return cls.preset(name, int(h), int(w), channels=channels).with_overrides(layout=layout)

    def with_overrides(self, **fields: Any) -> PreprocessSpec:
        """A copy with some fields changed, validated again (``model_copy`` would not validate)."""
        return type(self)(**{**self.model_dump(), **fields})

    # ---- storage ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field (defaults included, so later default changes do not alter it)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        """Inverse of ``to_dict``; a malformed stored spec is an ``InputFileError``."""
        if not isinstance(data, Mapping):
            raise InputFileError(f"stored preprocessing spec must be a JSON object, got {type(data).__name__}")
        try:
            return cls(**dict(data))
        except UsageError as exc:
            cause = exc.__cause__
            reason = _explain(cause) if isinstance(cause, ValidationError) else exc.message
            raise InputFileError(f"stored preprocessing spec is invalid: {reason}") from exc

    def describe(self) -> str:
        """One line for logs and reports."""
        size = f"{self.height}x{self.width}x{self.channels}"
        colour = "gray" if self.channels == 1 else self.color_order
        resize = self.resize
        if self.resize == "shorter-crop":
            resize += f" {self.crop_fraction:g}"
        elif self.resize == "letterbox":
            resize += f" pad {self.pad_value}"
        if self.dtype == "uint8":
            values = "raw 0..255 pixels"
        elif self.dtype == "int8":
            values = "pixels - 128"
        else:
            values = f"x*{self.scale:.6g}, mean {_floats(self.mean)}, std {_floats(self.std)}"
        return f"{size} {colour} {self.layout} {self.dtype}; {resize} ({self.interpolation}); {values}"

    # ---- the transform ----------------------------------------------------

    def apply(self, image: Image.Image) -> np.ndarray:
        """Preprocess one image to (C, H, W) or (H, W, C) in ``dtype``."""
        pixels = np.asarray(self._resized(_to_8bit(image, self.channels)), dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        values = self._values(pixels)
        if self.channels == 3 and self.color_order == "BGR":
            values = values[..., ::-1]
        if self.layout == "NCHW":
            values = values.transpose(2, 0, 1)
        return np.ascontiguousarray(values)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of ``apply``'s result."""
        if self.layout == "NCHW":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)

    def _values(self, pixels: np.ndarray) -> np.ndarray:
        if self.dtype == "uint8":
            return pixels
        if self.dtype == "int8":
            return (pixels.astype(np.int16) - 128).astype(np.int8)
        # float64 arithmetic, one rounding at the final cast.
        x = pixels.astype(np.float64) * self.scale
        x = (x - np.asarray(self.mean, dtype=np.float64)) / np.asarray(self.std, dtype=np.float64)
        return x.astype(self.dtype)

    def _resized(self, image: Image.Image) -> Image.Image:
        if self.resize == "shorter-crop":
            return self._shorter_crop(image)
        if self.resize == "letterbox":
            return self._letterbox(image)
        return self._resize_to(image, self.width, self.height)

    def _resize_to(self, image: Image.Image, width: int, height: int) -> Image.Image:
        if image.size == (width, height):
            return image
        return image.resize((width, height), _RESAMPLE[self.interpolation])

    def _shorter_crop(self, image: Image.Image) -> Image.Image:
        # torchvision Resize(round(size/fraction)) + CenterCrop(size), generalised to
        # non-square targets: scale so the image covers the enlarged target box.
        src_w, src_h = image.size
        box_h = round(self.height / self.crop_fraction)
        box_w = round(self.width / self.crop_fraction)
        if box_h / src_h >= box_w / src_w:
            new_h, new_w = box_h, max(box_w, int(src_w * box_h / src_h))
        else:
            new_w, new_h = box_w, max(box_h, int(src_h * box_w / src_w))
        resized = self._resize_to(image, new_w, new_h)
        top = int(round((new_h - self.height) / 2.0))
        left = int(round((new_w - self.width) / 2.0))
        return resized.crop((left, top, left + self.width, top + self.height))

    def _letterbox(self, image: Image.Image) -> Image.Image:
        # Ultralytics-style: fit inside, centre, odd padding pixel goes right/bottom.
        src_w, src_h = image.size
        ratio = min(self.width / src_w, self.height / src_h)
        new_w = min(self.width, max(1, round(src_w * ratio)))
        new_h = min(self.height, max(1, round(src_h * ratio)))
        fill: int | tuple[int, int, int] = self.pad_value if image.mode == "L" else (self.pad_value,) * 3
        canvas = Image.new(image.mode, (self.width, self.height), fill)
        canvas.paste(self._resize_to(image, new_w, new_h), ((self.width - new_w) // 2, (self.height - new_h) // 2))
        return canvas


# ---- presets -----------------------------------------------------------------


def _any_channels(name: str, channels: int | None) -> dict[str, Any]:
    return {"channels": 3 if channels is None else channels}


def _fixed_channels(required: int) -> Any:
    def fields(name: str, channels: int | None) -> dict[str, Any]:
        if channels not in (None, required):
            raise UsageError(
                f"preset '{name}' is for {required}-channel inputs but the model input has {channels}",
                hint=f"Choose another preset ({', '.join(PRESETS)}).",
            )
        return {"channels": required}

    return fields


def _imagenet(name: str, channels: int | None) -> dict[str, Any]:
    return {
        **_fixed_channels(3)(name, channels),
        "resize": "shorter-crop",
        "crop_fraction": 0.875,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }


def _yolo(name: str, channels: int | None) -> dict[str, Any]:
    return {**_any_channels(name, channels), "resize": "letterbox", "pad_value": 114}


def _raw255(name: str, channels: int | None) -> dict[str, Any]:
    return {**_any_channels(name, channels), "scale": 1.0}


_PRESET_FIELDS = {
    "imagenet": _imagenet,
    "yolo": _yolo,
    "raw01": _any_channels,
    "raw255": _raw255,
    "gray01": _fixed_channels(1),
}


# ---- input shapes ------------------------------------------------------------


def _is_size(dim: int | str) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def _shape_text(shape: Sequence[int | str]) -> str:
    return "x".join(str(d) for d in shape)


def _shape_without_batch(shape: Sequence[int | str]) -> list[int | str]:
    dims: list[int | str] = [_as_dim(d) for d in shape]
    if len(dims) == 4:
        return dims[1:]
    if len(dims) == 3:
        return dims
    raise UsageError(
        f"input shape {_shape_text(shape)} has {len(dims)} dimensions; an image input needs 4 (with batch) or 3",
        hint="Give the image input's shape with --input NAME:SHAPE.",
    )


def _as_dim(dim: Any) -> int | str:
    # Shapes come from ONNX (ints, names, None) or --input (ints, names); numpy ints too.
    if isinstance(dim, str):
        return int(dim) if dim.isdigit() else dim
    if dim is None:
        return "?"
    return int(dim)


def _guess_layout(shape: Sequence[int | str], dims: list[int | str]) -> Literal["NCHW", "NHWC"]:
    if dims[0] in (1, 3):
        return "NCHW"
    if dims[-1] in (1, 3):
        return "NHWC"
    raise UsageError(
        f"cannot tell the layout of input shape {_shape_text(shape)}: neither the channel-first nor the last "
        "dimension is 1 or 3",
        hint="Pass the layout explicitly (NCHW or NHWC).",
    )


# ---- pixels ------------------------------------------------------------------

_ALPHA_MODES = {"LA": "LA", "La": "LA", "PA": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}


def _to_8bit(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to 8-bit ``L`` (1 channel) or ``RGB`` (3 channels).

    - alpha (LA, PA, RGBA, palette transparency) is composited on black, i.e.
      premultiplied: a fully transparent pixel becomes 0;
    - 16-bit (I;16*) maps 0..65535 to 0..255 by round(v / 257), the full range;
    - 32-bit ``I`` is read as 16-bit when every value fits 0..65535 (Pillow's usual
      decoding of 16-bit sources), else over the full non-negative 32-bit range;
      negative values are refused;
    - float ``F`` is taken to be on the 0..255 scale (Pillow's convention) and clipped;
    - ``1`` becomes 0/255; CMYK/YCbCr/... use Pillow's conversion to RGB.
    """
    base = _eight_bit_base(image)
    if channels == 1 and base.mode != "L":
        return base.convert("L")
    if channels == 3 and base.mode != "RGB":
        return base.convert("RGB")
    return base


def _eight_bit_base(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        return _eight_bit_base(image.convert("RGBA" if "transparency" in image.info else "RGB"))
    if mode in _ALPHA_MODES:
        return _on_black(image.convert(_ALPHA_MODES[mode]) if mode != _ALPHA_MODES[mode] else image)
    if mode.startswith("I;16"):
        return Image.fromarray(_from_16bit(np.asarray(image)), mode="L")
    if mode == "I":
        return Image.fromarray(_from_32bit(np.asarray(image)), mode="L")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8), mode="L")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise InputFileError(
            f"image mode '{mode}' cannot be converted to RGB", hint="Save the image as 8-bit RGB or grayscale."
        ) from exc


def _on_black(image: Image.Image) -> Image.Image:
    rgba = np.asarray(image, dtype=np.uint32)
    colour, alpha = rgba[..., :-1], rgba[..., -1:]
    mixed = ((colour * alpha + 127) // 255).astype(np.uint8)
    if mixed.shape[-1] == 1:
        return Image.fromarray(mixed[..., 0], mode="L")
    return Image.fromarray(mixed, mode="RGB")


def _from_16bit(values: np.ndarray) -> np.ndarray:
    # round(v * 255 / 65535) == round(v / 257); 257 is odd so there are no ties.
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _from_32bit(values: np.ndarray) -> np.ndarray:
    if values.size and int(values.min()) < 0:
        raise InputFileError(
            "32-bit image has negative pixel values, which have no 8-bit equivalent",
            hint="Save the image as 8- or 16-bit.",
        )
    if not values.size or int(values.max()) <= 0xFFFF:
        return _from_16bit(values)
    top = np.iinfo(np.int32).max
    return ((values.astype(np.int64) * 255 + top // 2) // top).astype(np.uint8)


# ---- messages ----------------------------------------------------------------


def _floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _explain(exc: ValidationError) -> str:
    """pydantic's errors as short sentences: 'channels should be 1 or 3 (got 4)'."""
    sentences = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            known = ", ".join(PreprocessSpec.model_fields)
            sentences.append(f"'{field}' is not a preprocessing setting (known: {known})")
            continue
        if kind == "missing":
            sentences.append(f"{field} is required")
            continue
        message = error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
        if error["msg"].startswith("Input should be"):
            message = "should be " + message
        got = f" (got {error['input']!r})" if "input" in error and field else ""
        sentences.append(f"{field} {message}{got}" if field else message)
    return "; ".join(sentences)
