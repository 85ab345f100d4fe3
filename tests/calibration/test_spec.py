"""PreprocessSpec: validation, presets, shapes, storage and exact pixel values."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from calibration.spec import PRESETS, PreprocessSpec
from toolchain.errors import InputFileError, UsageError

# 2x2 RGB test card: black, white / red, (0,128,255).
CARD = np.array(
    [[[0, 0, 0], [255, 255, 255]], [[255, 0, 0], [0, 128, 255]]],
    dtype=np.uint8,
)


def card() -> Image.Image:
    return Image.fromarray(CARD, mode="RGB")


def columns(width: int, height: int) -> Image.Image:
    """Grayscale image whose column x has value 10*x (row-independent)."""
    row = np.arange(width, dtype=np.uint8) * 10
    return Image.fromarray(np.tile(row, (height, 1)), mode="L")


def spec(**fields: object) -> PreprocessSpec:
    return PreprocessSpec(**{"height": 2, "width": 2, "channels": 3, **fields})


# ---- exact values --------------------------------------------------------------


def test_raw01_is_pixels_over_255_in_chw() -> None:
    out = PreprocessSpec.preset("raw01", 2, 2).apply(card())
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, (CARD.transpose(2, 0, 1) / 255).astype(np.float32))
    assert out[2, 1, 1] == np.float32(1.0) and out[1, 1, 1] == np.float32(128 / 255)


def test_raw255_keeps_0_to_255() -> None:
    out = PreprocessSpec.preset("raw255", 2, 2).apply(card())
    np.testing.assert_array_equal(out, CARD.transpose(2, 0, 1).astype(np.float32))


def test_imagenet_known_numbers() -> None:
    # A 2x2 target: shorter side round(2/0.875) = 2, so no resize and no crop.
    out = PreprocessSpec.preset("imagenet", 2, 2).apply(card())
    red = out[0]
    np.testing.assert_allclose(red[0, 0], -0.485 / 0.229, rtol=1e-6)  # black
    np.testing.assert_allclose(red[1, 0], (1 - 0.485) / 0.229, rtol=1e-6)  # red pixel
    np.testing.assert_allclose(out[:, 0, 1], [2.2489083, 2.4285715, 2.64], rtol=1e-6)  # white
    np.testing.assert_allclose(out[1, 1, 1], (128 / 255 - 0.456) / 0.224, rtol=1e-6)


def test_gray01_uses_luma() -> None:
    out = PreprocessSpec.preset("gray01", 2, 2).apply(card())
    assert out.shape == (1, 2, 2)
    # ITU-R 601-2 luma as Pillow computes it: red -> 76, (0,128,255) -> 104.
    np.testing.assert_array_equal(np.rint(out[0] * 255), [[0, 255], [76, 104]])


def test_bgr_swaps_channels_after_normalising_in_rgb_order() -> None:
    rgb = spec(mean=(0.1, 0.2, 0.3)).apply(card())
    bgr = spec(mean=(0.1, 0.2, 0.3), color_order="BGR").apply(card())
    np.testing.assert_array_equal(bgr, rgb[::-1])
    np.testing.assert_allclose(bgr[0, 1, 1], 1.0 - 0.3, rtol=1e-6)  # blue 255, blue's mean


def test_nhwc_vs_nchw() -> None:
    nchw = spec().apply(card())
    nhwc = spec(layout="NHWC").apply(card())
    assert nhwc.shape == (2, 2, 3)
    np.testing.assert_array_equal(nhwc, nchw.transpose(1, 2, 0))
    assert spec(layout="NHWC").output_shape == (2, 2, 3)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("uint8", CARD), ("int8", CARD.astype(np.int16) - 128)],
)
def test_integer_dtypes_are_raw_pixels(dtype: str, expected: np.ndarray) -> None:
    out = PreprocessSpec.preset("imagenet", 2, 2).with_overrides(dtype=dtype, layout="NHWC").apply(card())
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, expected)


def test_float16() -> None:
    out = spec(dtype="float16").apply(card())
    assert out.dtype == np.float16
    np.testing.assert_allclose(out, CARD.transpose(2, 0, 1) / 255, atol=1e-3)


# ---- geometry ------------------------------------------------------------------


def test_stretch_nearest_duplicates_pixels() -> None:
    out = spec(height=4, width=4, interpolation="nearest", scale=1.0).apply(card())
    np.testing.assert_array_equal(out[0], [[0, 0, 255, 255]] * 2 + [[255, 255, 0, 0]] * 2)


def test_letterbox_pads_top_and_bottom_centred() -> None:
    s = PreprocessSpec.preset("yolo", 4, 4, channels=1).with_overrides(scale=1.0, interpolation="nearest")
    out = s.apply(columns(4, 2))[0]
    np.testing.assert_array_equal(out[[0, 3]], np.full((2, 4), 114))
    np.testing.assert_array_equal(out[1:3], [[0, 10, 20, 30]] * 2)


def test_letterbox_odd_padding_goes_bottom_and_right() -> None:
    s = spec(height=4, width=4, channels=1, resize="letterbox", pad_value=7, scale=1.0, interpolation="nearest")
    tall = s.apply(columns(4, 1))[0]
    np.testing.assert_array_equal(tall[:, 0], [7, 0, 7, 7])
    wide = s.apply(columns(1, 4))[0]
    np.testing.assert_array_equal(wide[0], [7, 0, 7, 7])


def test_letterbox_rgb_pad_is_grey_and_scaled() -> None:
    out = PreprocessSpec.preset("yolo", 4, 4).apply(Image.new("RGB", (4, 2), (255, 0, 0)))
    np.testing.assert_allclose(out[:, 0, 0], [114 / 255] * 3, rtol=1e-6)
    np.testing.assert_allclose(out[:, 1, 0], [1.0, 0.0, 0.0], rtol=1e-6)


def test_shorter_crop_takes_the_centre() -> None:
    s = spec(channels=1, resize="shorter-crop", scale=1.0, interpolation="nearest")
    np.testing.assert_array_equal(s.apply(columns(6, 2))[0], [[20, 30]] * 2)
    tall = np.arange(6, dtype=np.uint8)[:, None].repeat(2, axis=1) * 10
    np.testing.assert_array_equal(s.apply(Image.fromarray(tall, mode="L"))[0], [[20, 20], [30, 30]])


def test_imagenet_geometry_matches_torchvision_rule() -> None:
    # 300x200: shorter side 200 -> 256, longer int(300*256/200) = 384; crop 224 at (80, 16).
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8), mode="RGB")
    out = PreprocessSpec.preset("imagenet", 224, 224).with_overrides(dtype="uint8", layout="NHWC").apply(image)
    expected = np.asarray(image.resize((384, 256), Image.Resampling.BILINEAR).crop((80, 16, 304, 240)))
    np.testing.assert_array_equal(out, expected)


# ---- modes ---------------------------------------------------------------------


def raw255(channels: int = 1) -> PreprocessSpec:
    return PreprocessSpec.preset("raw255", 1, 4, channels=channels)


def test_mode_1_becomes_0_and_255() -> None:
    image = Image.fromarray(np.array([[0, 1, 1, 0]], dtype=bool))
    assert image.mode == "1"
    np.testing.assert_array_equal(raw255().apply(image)[0, 0], [0, 255, 255, 0])


def test_alpha_is_composited_on_black() -> None:
    rgba = np.array([[[255, 255, 255, 0], [255, 255, 255, 128], [200, 100, 50, 255], [10, 20, 30, 51]]])
    out = raw255(3).apply(Image.fromarray(rgba.astype(np.uint8), mode="RGBA"))
    np.testing.assert_array_equal(out[:, 0].T, [[0, 0, 0], [128, 128, 128], [200, 100, 50], [2, 4, 6]])
    la = Image.fromarray(np.array([[[200, 0], [200, 255], [100, 128], [255, 255]]], dtype=np.uint8), mode="LA")
    np.testing.assert_array_equal(raw255().apply(la)[0, 0], [0, 200, 50, 255])


def test_palette_with_transparency() -> None:
    image = Image.new("P", (4, 1))
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putdata([0, 1, 0, 1])
    image.info["transparency"] = 1
    out = raw255(3).apply(image)
    np.testing.assert_array_equal(out[:, 0].T, [[255, 0, 0], [0, 0, 0]] * 2)
    del image.info["transparency"]
    np.testing.assert_array_equal(raw255(3).apply(image)[:, 0, 1], [0, 255, 0])


def test_cmyk_converts_to_rgb() -> None:
    image = Image.new("CMYK", (4, 1), (0, 255, 255, 0))
    np.testing.assert_array_equal(raw255(3).apply(image)[:, 0, 0], [255, 0, 0])


def test_16bit_full_range_is_scaled_not_clipped() -> None:
    image = Image.fromarray(np.array([[0, 257, 65535, 32896]], dtype=np.uint16))
    assert image.mode == "I;16"
    np.testing.assert_array_equal(raw255().apply(image)[0, 0], [0, 1, 255, 128])


def test_32bit_integer_images() -> None:
    as16 = Image.fromarray(np.array([[0, 257, 65535, 32896]], dtype=np.int32))
    assert as16.mode == "I"
    np.testing.assert_array_equal(raw255().apply(as16)[0, 0], [0, 1, 255, 128])
    top = np.iinfo(np.int32).max
    full = Image.fromarray(np.array([[0, 70000, top // 2, top]], dtype=np.int32))
    np.testing.assert_array_equal(raw255().apply(full)[0, 0], [0, 0, 127, 255])
    negative = Image.fromarray(np.array([[-1, 0, 0, 0]], dtype=np.int32))
    with pytest.raises(InputFileError, match="negative"):
        raw255().apply(negative)


def test_float_images_are_0_to_255_and_clipped() -> None:
    image = Image.fromarray(np.array([[-5.0, 0.4, 127.6, 300.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(raw255().apply(image)[0, 0], [0, 0, 128, 255])


def test_gray_input_for_colour_model_is_replicated() -> None:
    out = raw255(3).apply(columns(4, 1))
    np.testing.assert_array_equal(out[:, 0], [[0, 10, 20, 30]] * 3)


# ---- input shapes --------------------------------------------------------------


def test_from_input_shape_nchw() -> None:
    s = PreprocessSpec.from_input_shape((1, 3, 224, 224))
    assert (s.layout, s.channels, s.height, s.width) == ("NCHW", 3, 224, 224)
    assert s == PreprocessSpec.preset("raw01", 224, 224)


def test_from_input_shape_nhwc_and_batch_name() -> None:
    s = PreprocessSpec.from_input_shape(("N", 224, 320, 3), preset="imagenet")
    assert (s.layout, s.channels, s.height, s.width, s.resize) == ("NHWC", 3, 224, 320, "shorter-crop")


def test_from_input_shape_gray_defaults_to_gray01() -> None:
    s = PreprocessSpec.from_input_shape((1, 1, 28, 28))
    assert s == PreprocessSpec.preset("gray01", 28, 28)


def test_from_input_shape_three_dims() -> None:
    assert PreprocessSpec.from_input_shape((3, 32, 32)).layout == "NCHW"
    assert PreprocessSpec.from_input_shape((32, 32, 3)).layout == "NHWC"


def test_from_input_shape_explicit_layout() -> None:
    s = PreprocessSpec.from_input_shape((1, 3, 3, 3), layout="NHWC")
    assert (s.layout, s.height, s.width) == ("NHWC", 3, 3)


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((1, 4, 224, 224), "layout"),
        ((1, 224, 224, 5), "NCHW or NHWC"),
        ((1, 3, "height", "width"), "--input NAME:SHAPE"),
        (("N", 3, -1, 224), "dynamic"),
        ((3, 224), "dimensions"),
    ],
)
def test_from_input_shape_bad(shape: tuple, words: str) -> None:
    with pytest.raises(UsageError) as caught:
        PreprocessSpec.from_input_shape(shape)
    assert words in caught.value.one_line()


def test_from_input_shape_explicit_layout_needs_1_or_3_channels() -> None:
    with pytest.raises(UsageError, match="has 4 channels in NCHW layout"):
        PreprocessSpec.from_input_shape((1, 4, 28, 28), layout="NCHW")


def test_from_input_shape_preset_channel_mismatch() -> None:
    with pytest.raises(UsageError, match="3-channel"):
        PreprocessSpec.from_input_shape((1, 1, 28, 28), preset="imagenet")


# ---- presets, validation, storage ------------------------------------------------


def test_presets_listed_and_unknown_rejected() -> None:
    assert set(PRESETS) == {"imagenet", "yolo", "raw01", "raw255", "gray01"}
    for name in PRESETS:
        PreprocessSpec.preset(name, 8, 8)
    with pytest.raises(UsageError) as caught:
        PreprocessSpec.preset("resnet", 8, 8)
    assert "imagenet, yolo, raw01, raw255, gray01" in caught.value.one_line()


def test_preset_details() -> None:
    yolo = PreprocessSpec.preset("yolo", 640, 640)
    assert (yolo.resize, yolo.pad_value, yolo.scale, yolo.color_order) == ("letterbox", 114, 1 / 255, "RGB")
    imagenet = PreprocessSpec.preset("imagenet", 224, 224)
    assert imagenet.crop_fraction == 0.875 and round(224 / imagenet.crop_fraction) == 256
    assert PreprocessSpec.preset("gray01", 28, 28).channels == 1
    assert PreprocessSpec.preset("raw01", 28, 28, channels=1).channels == 1


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"height": 0}, "height should be greater than 0"),
        ({"width": "wide"}, "width should be a valid integer"),
        ({"channels": 4}, "channels should be 1 or 3"),
        ({"color_order": "RBG"}, "color_order should be 'RGB' or 'BGR'"),
        ({"layout": "CHW"}, "layout should be 'NCHW' or 'NHWC'"),
        ({"resize": "crop"}, "resize should be"),
        ({"pad_value": 256}, "pad_value should be less than or equal to 255"),
        ({"scale": 0}, "scale should be greater than 0"),
        ({"mean": (0.1, 0.2)}, "mean has 2 values but must have 1 or 3"),
        ({"std": (1.0, 0.0, 1.0)}, "std must contain positive numbers"),
        ({"dtype": "int4"}, "dtype should be"),
        ({"heigth": 3}, "'heigth' is not a preprocessing setting"),
        ({"height": True}, "whole number"),
    ],
)
def test_invalid_fields_have_readable_errors(fields: dict, words: str) -> None:
    with pytest.raises(UsageError) as caught:
        spec(**fields)
    line = caught.value.one_line()
    assert words in line and "\n" not in line and "pydantic" not in line


def test_with_overrides_revalidates() -> None:
    imagenet = PreprocessSpec.preset("imagenet", 224, 224)
    assert imagenet.with_overrides(color_order="BGR").color_order == "BGR"
    with pytest.raises(UsageError, match="mean has 3 values"):
        imagenet.with_overrides(channels=1)


def test_frozen() -> None:
    with pytest.raises(ValidationError):
        spec().height = 3  # type: ignore[misc]


def test_every_field_is_described() -> None:
    assert all(info.description for info in PreprocessSpec.model_fields.values())


@pytest.mark.parametrize("name", list(PRESETS))
def test_dict_round_trip_through_json(name: str) -> None:
    original = PreprocessSpec.preset(name, 17, 33).with_overrides(layout="NHWC", dtype="float16")
    stored = json.loads(json.dumps(original.to_dict()))
    assert PreprocessSpec.from_dict(stored) == original
    assert PreprocessSpec.from_dict(stored).to_dict() == stored


def test_from_dict_bad_data_is_an_input_file_error() -> None:
    stored = spec().to_dict() | {"channels": 2}
    with pytest.raises(InputFileError, match="stored preprocessing spec is invalid: channels"):
        PreprocessSpec.from_dict(stored)
    with pytest.raises(InputFileError, match="JSON object"):
        PreprocessSpec.from_dict([1, 2])  # type: ignore[arg-type]


def test_describe_is_one_line() -> None:
    text = PreprocessSpec.preset("imagenet", 224, 224).describe()
    assert "\n" not in text and "224x224x3" in text and "shorter-crop 0.875" in text
    assert "pixels - 128" in spec(dtype="int8").describe()


def test_import_pulls_in_no_framework() -> None:
    code = (
        "import sys, calibration, calibration.folder, calibration.spec\n"
        "from PIL import Image\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'onnxruntime', 'onnx') if m in sys.modules]\n"
        "print(heavy, Image.MAX_IMAGE_PIXELS)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.split() == ["[]", str(Image.MAX_IMAGE_PIXELS)]
