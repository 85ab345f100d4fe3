"""The image-folder reader, on real files written with Pillow into tmp_path."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from calibration.folder import (
    IMAGE_SUFFIXES,
    ImageListing,
    labelled_folder,
    list_images,
    listings_reused,
    load_images,
    open_image,
    sample_files,
)
from calibration.spec import PreprocessSpec
from toolchain.errors import InputFileError, UsageError

RED = (255, 0, 0)


def solid(path: Path, colour: tuple[int, int, int] = RED, size: tuple[int, int] = (8, 8), **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, **save)
    return path


def raw255(height: int = 8, width: int = 8, channels: int = 3) -> PreprocessSpec:
    return PreprocessSpec.preset("raw255", height, width, channels=channels).with_overrides(layout="NHWC")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(path: Path, width: int, height: int, idat: bytes, *, bit_depth: int = 1, colour_type: int = 0) -> Path:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def black_1bit_png(path: Path, side: int) -> Path:
    """A valid all-black 1-bit PNG of side x side pixels: tiny on disk, huge decoded."""
    compressor = zlib.compressobj(9)
    rows = bytes((1 + (side + 7) // 8) * 1000)
    data = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()
    return png_file(path, side, side, data)


# ---- formats -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "save", "exact"),
    [
        ("a.jpg", {"quality": 95}, False),
        ("a.jpeg", {}, False),
        ("a.png", {}, True),
        ("a.bmp", {}, True),
        ("a.webp", {"lossless": True}, True),
        ("a.tif", {}, True),
        ("a.tiff", {"compression": "tiff_lzw"}, True),
        ("a.gif", {}, True),
    ],
)
def test_every_format(tmp_path: Path, name: str, save: dict, exact: bool) -> None:
    if name.endswith(".webp") and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    solid(tmp_path / name, (250, 10, 20), **save)
    listing = list_images(tmp_path)
    assert listing.files == [tmp_path / name] and not listing.skipped
    batch, skipped = load_images(listing.files, raw255())
    assert batch.shape == (1, 8, 8, 3) and not skipped
    expected = np.broadcast_to(np.array([250, 10, 20], dtype=np.float32), (8, 8, 3))
    np.testing.assert_allclose(batch[0], expected, atol=0 if exact else 4)


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(tmp_path / "anim.gif") as anim:
        assert anim.n_frames == 3
    image = open_image(tmp_path / "anim.gif")
    np.testing.assert_array_equal(raw255().apply(image)[0, 0], RED)


def mode_of(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def write_mode(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_modes_from_files(tmp_path: Path) -> None:
    gray = raw255(1, 4, channels=1)
    colour = raw255(1, 4)
    one = write_mode(tmp_path / "one.png", np.array([[0, 1, 1, 0]], dtype=bool))
    assert mode_of(one) == "1"
    np.testing.assert_array_equal(gray.apply(open_image(one))[0, :, 0], [0, 255, 255, 0])

    grey = write_mode(tmp_path / "grey.png", np.array([[0, 50, 100, 255]], dtype=np.uint8))
    assert mode_of(grey) == "L"
    np.testing.assert_array_equal(colour.apply(open_image(grey))[0, 1], [50, 50, 50])

    la = write_mode(tmp_path / "la.png", np.array([[[200, 0], [200, 255], [100, 128], [9, 255]]], np.uint8), "LA")
    assert mode_of(la) == "LA"
    np.testing.assert_array_equal(gray.apply(open_image(la))[0, :, 0], [0, 200, 50, 9])

    rgba_pixels = np.array([[[255, 255, 255, 0], [10, 20, 30, 255], [200, 100, 50, 255], [0, 0, 0, 0]]], np.uint8)
    rgba = write_mode(tmp_path / "rgba.png", rgba_pixels, "RGBA")
    np.testing.assert_array_equal(colour.apply(open_image(rgba))[0, :2], [[0, 0, 0], [10, 20, 30]])

    palette = Image.new("P", (4, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.putdata([0, 1, 1, 0])
    palette.save(tmp_path / "p.png", transparency=1)
    assert mode_of(tmp_path / "p.png") == "P"
    np.testing.assert_array_equal(colour.apply(open_image(tmp_path / "p.png"))[0, :2], [RED, (0, 0, 0)])

    Image.new("CMYK", (4, 1), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    assert mode_of(tmp_path / "cmyk.tif") == "CMYK"
    np.testing.assert_array_equal(colour.apply(open_image(tmp_path / "cmyk.tif"))[0, 0], RED)
    Image.new("CMYK", (4, 1), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    np.testing.assert_allclose(colour.apply(open_image(tmp_path / "cmyk.jpg"))[0, 0], RED, atol=4)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_full_range(tmp_path: Path, suffix: str) -> None:
    path = write_mode(tmp_path / f"deep{suffix}", np.array([[0, 257, 65535, 32896]], dtype=np.uint16))
    assert mode_of(path).startswith("I;16")
    np.testing.assert_array_equal(raw255(1, 4, 1).apply(open_image(path))[0, :, 0], [0, 1, 255, 128])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 32 wide x 16 high, left half red, right half blue; orientation 6 means
    # "rotate 90 degrees clockwise to display", giving 16 wide x 32 high, red on top.
    stored = Image.new("RGB", (32, 16), (0, 0, 255))
    stored.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)

    image = open_image(tmp_path / "rotated.jpg")
    assert image.size == (16, 32)
    pixels = np.asarray(image, dtype=np.int16)
    np.testing.assert_allclose(pixels[4, 8], RED, atol=8)
    np.testing.assert_allclose(pixels[28, 8], (0, 0, 255), atol=8)


# ---- bad files -----------------------------------------------------------------


def test_empty_truncated_and_non_image_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    solid(tmp_path / "good.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.jpg").write_text("not a jpeg either")

    listing = list_images(tmp_path)
    assert listing.files == [tmp_path / "cut.png", tmp_path / "fake.jpg", tmp_path / "good.png"]
    assert dict(listing.skipped) == {
        tmp_path / "empty.jpg": "empty file (0 bytes)",
        tmp_path / "notes.txt": "not an image file (suffix '.txt')",
    }
    assert "3 images" in listing.summary() and "empty.jpg (empty file (0 bytes))" in listing.summary()

    batch, skipped = load_images(listing.files, raw255())
    assert batch.shape == (1, 8, 8, 3)
    reasons = dict(skipped)
    assert set(reasons) == {tmp_path / "cut.png", tmp_path / "fake.jpg"}
    assert "truncated" in reasons[tmp_path / "cut.png"]
    assert "not a JPEG, PNG" in reasons[tmp_path / "fake.jpg"]

    with pytest.raises(InputFileError, match="cut.png' is corrupt or truncated"):
        load_images(listing.files, raw255(), skip_bad=False)


def test_open_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputFileError, match=r"is empty \(0 bytes\)"):
        open_image(tmp_path / "empty.jpg")
    with pytest.raises(InputFileError, match="does not exist"):
        open_image(tmp_path / "missing.jpg")


def test_nothing_usable(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_text("text")
    with pytest.raises(InputFileError, match="none of the 1 images could be used; first problem"):
        load_images([tmp_path / "fake.png"], raw255())


@pytest.mark.parametrize("content", [[], ["a.txt", "b.csv", "README"]])
def test_folder_without_images(tmp_path: Path, content: list[str]) -> None:
    for name in content:
        (tmp_path / name).write_text("x")
    with pytest.raises(InputFileError) as caught:
        list_images(tmp_path)
    message = caught.value.one_line()
    assert f"no images found in '{tmp_path}' (saw {len(content)} files, skipped {len(content)}" in message
    assert ".jpg" in message


def test_missing_folder_and_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(InputFileError, match="expected a folder"):
        list_images(tmp_path / "file.png")


# ---- decompression bombs ---------------------------------------------------------


def test_declared_20000_square_png_is_refused_without_decoding(tmp_path: Path) -> None:
    bomb = black_1bit_png(tmp_path / "bomb.png", 20_000)
    assert bomb.stat().st_size < 200_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    with pytest.raises(InputFileError) as caught:
        open_image(bomb)
    assert time.perf_counter() - started < 2
    # Decoding would need 400 MB (Pillow keeps 1-bit images at a byte per pixel).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100_000
    # Over twice Pillow's own limit, so Pillow's header check refuses it first.
    assert "bomb.png' is too large to decode safely (Image size (400000000 pixels)" in caught.value.one_line()


def test_pixel_limit_is_checked_before_any_decoding(tmp_path: Path) -> None:
    # Header declares 9000x9000 but the pixel data is garbage: a decoder would
    # complain about the data, so the size message proves nothing was decoded.
    fake = png_file(tmp_path / "header-only.png", 9_000, 9_000, b"garbage", bit_depth=8)
    with pytest.raises(InputFileError, match=r"9000x9000 = 81,000,000 pixels, over the limit of 64,000,000"):
        open_image(fake)


def test_local_pixel_limit(tmp_path: Path) -> None:
    path = solid(tmp_path / "a.png", size=(100, 100))
    with pytest.raises(InputFileError, match="over the limit of 5,000"):
        open_image(path, max_pixels=5_000)
    assert open_image(path).size == (100, 100)
    _, skipped = load_images([path, solid(tmp_path / "b.png")], raw255(), max_pixels=5_000)
    assert [p.name for p, _ in skipped] == ["a.png"]


def test_pillow_warning_zone_is_an_error_and_globals_untouched(tmp_path: Path) -> None:
    # 10000x10000 is between Pillow's warning (89M) and error (179M) thresholds.
    bomb = black_1bit_png(tmp_path / "warn.png", 10_000)
    limit_before, filters_before = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with pytest.raises(InputFileError, match="too large to decode safely"):
        open_image(bomb, max_pixels=10**9)
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert list(warnings.filters) == filters_before


# ---- walking -------------------------------------------------------------------


def test_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    solid(tmp_path / "a" / "x.png")
    solid(tmp_path / "b.png")
    (tmp_path / "a" / "up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a", target_is_directory=True)
    listing = list_images(tmp_path)
    assert listing.files == [tmp_path / "a" / "x.png", tmp_path / "b.png"]
    assert {p.name for p, _ in listing.skipped} == {"up", "self"}
    assert all("already searched" in reason for _, reason in listing.skipped)


def test_linked_folder_outside_is_followed_with_opt_in_and_broken_link_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEKILN_CALIB_FOLLOW_LINKS", "1")
    outside = tmp_path / "outside"
    solid(outside / "o.png")
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "dangling.png").symlink_to(tmp_path / "gone.png")
    listing = list_images(root)
    assert listing.files == [root / "linked" / "o.png"]
    assert listing.skipped == [(root / "dangling.png", "broken symbolic link")]


def test_folder_link_outside_is_refused_naming_link_and_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEKILN_CALIB_FOLLOW_LINKS", raising=False)
    solid(tmp_path / "outside" / "o.png")
    root = tmp_path / "root"
    solid(root / "a.png")
    (root / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(InputFileError) as caught:
        list_images(root)
    line = caught.value.one_line()
    assert "\n" not in line
    assert f"'{root / 'linked'}'" in line and f"'{tmp_path / 'outside'}'" in line
    assert "outside the calibration folder" in line and "EDGEKILN_CALIB_FOLLOW_LINKS=1" in line


def test_file_link_outside_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEKILN_CALIB_FOLLOW_LINKS", raising=False)
    secret = solid(tmp_path / "elsewhere.png")
    root = tmp_path / "root"
    solid(root / "a.png")
    (root / "b.png").symlink_to(secret)
    with pytest.raises(InputFileError, match="outside the calibration folder"):
        list_images(root)


def test_link_to_filesystem_root_is_refused_without_walking_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue #17: a link to / walked 671,784 files for 85 s and calibrated on them.
    monkeypatch.delenv("EDGEKILN_CALIB_FOLLOW_LINKS", raising=False)
    solid(tmp_path / "a.png")
    (tmp_path / "everything").symlink_to("/", target_is_directory=True)
    started = time.perf_counter()
    with pytest.raises(InputFileError, match="points to '/'"):
        list_images(tmp_path)
    assert time.perf_counter() - started < 5


def test_links_inside_the_folder_keep_working(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEKILN_CALIB_FOLLOW_LINKS", raising=False)
    solid(tmp_path / "real" / "x.png")
    (tmp_path / "alias.png").symlink_to(tmp_path / "real" / "x.png")
    (tmp_path / "more").symlink_to("real", target_is_directory=True)  # relative link, inside
    listing = list_images(tmp_path)
    # 'more' comes first in name order, so the real folder is the one passed over as already searched.
    assert listing.files == [tmp_path / "alias.png", tmp_path / "more" / "x.png"]
    assert [p.name for p, _ in listing.skipped] == ["real"]


def test_linked_calibration_folder_itself_is_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --calib may itself be a link; the boundary is where it resolves to.
    monkeypatch.delenv("EDGEKILN_CALIB_FOLLOW_LINKS", raising=False)
    solid(tmp_path / "real" / "x.png")
    (tmp_path / "calib").symlink_to(tmp_path / "real", target_is_directory=True)
    assert list_images(tmp_path / "calib").files == [tmp_path / "calib" / "x.png"]


def test_labelled_class_folder_linked_outside_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEKILN_CALIB_FOLLOW_LINKS", raising=False)
    solid(tmp_path / "elsewhere" / "c.png")
    root = tmp_path / "labels"
    solid(root / "cat" / "a.png")
    (root / "dog").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(InputFileError, match="outside the calibration folder"):
        labelled_folder(root)


def test_walk_stops_at_the_entry_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import calibration.folder as folder_module

    monkeypatch.setattr(folder_module, "MAX_WALK_ENTRIES", 5)
    for index in range(6):
        solid(tmp_path / f"{index}.png")
    with pytest.raises(InputFileError, match="more than 5 entries"):
        list_images(tmp_path)
    monkeypatch.setattr(folder_module, "MAX_WALK_ENTRIES", 6)
    assert len(list_images(tmp_path).files) == 6


def test_walk_stops_at_the_depth_limit(tmp_path: Path) -> None:
    from calibration.folder import MAX_WALK_DEPTH

    solid(tmp_path / "top.png")
    deep = tmp_path.joinpath(*["d"] * MAX_WALK_DEPTH)
    solid(deep / "ok.png")
    assert len(list_images(tmp_path).files) == 2  # exactly at the limit is fine
    solid(deep / "d" / "too.png")
    with pytest.raises(InputFileError, match=f"more than {MAX_WALK_DEPTH} folders deep"):
        list_images(tmp_path)


def test_fifo_is_skipped_not_opened(tmp_path: Path) -> None:
    solid(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.jpg")
    listing = list_images(tmp_path)
    assert listing.skipped == [(tmp_path / "pipe.jpg", "not a regular file")]


def test_hidden_entries_and_non_recursive(tmp_path: Path) -> None:
    solid(tmp_path / "top.png")
    solid(tmp_path / "sub" / "deep.png")
    solid(tmp_path / "._top.png")  # macOS resource-fork litter
    solid(tmp_path / ".ipynb_checkpoints" / "copy.png")
    assert list_images(tmp_path).files == [tmp_path / "sub" / "deep.png", tmp_path / "top.png"]
    flat = list_images(tmp_path, recursive=False)
    assert flat.files == [tmp_path / "top.png"]
    assert dict(flat.skipped)[tmp_path / "sub"] == "sub-folder not searched (not recursive)"
    assert dict(flat.skipped)[tmp_path / "._top.png"] == "hidden file"


def test_names_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    names = ["my photo.png", "kätzchen 猫.jpg", "Ünïcödé folder/ü.webp" if features.check("webp") else "x/ü.bmp"]
    for name in names:
        solid(tmp_path / name)
    listing = list_images(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in listing.files) == sorted(names)
    batch, skipped = load_images(listing.files, raw255())
    assert batch.shape[0] == 3 and not skipped


def test_order_is_sorted_whatever_the_creation_order(tmp_path: Path) -> None:
    names = ["c.png", "a/z.png", "b.png", "a/b/y.png", "A.png", "a.png", "10.png", "9.png"]
    for name in names:
        solid(tmp_path / name, size=(2, 2))
    first = list_images(tmp_path).files
    assert first == sorted(tmp_path / n for n in names)
    shutil.rmtree(tmp_path / "a")
    for name in reversed(names):
        if name.startswith("a/"):
            solid(tmp_path / name, size=(2, 2))
    assert list_images(tmp_path).files == first


def test_summary_lists_first_three_skipped(tmp_path: Path) -> None:
    solid(tmp_path / "img.png")
    for name in ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"]:
        (tmp_path / name).write_text("x")
    summary = list_images(tmp_path).summary()
    assert summary.startswith(f"1 image in '{tmp_path}'; skipped 5: a.txt (not an image file")
    assert "c.txt" in summary and "d.txt" not in summary and summary.endswith("and 2 more")
    assert ImageListing(files=[Path("x.png")]).summary() == "1 image"


def _skipped_as_nobody(folder: Path) -> list[list[str]]:
    """list_images(folder).skipped, computed in a forked child that dropped root to uid 65534."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no exec needed, the modules are already imported
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            payload = json.dumps([[str(p), r] for p, r in list_images(folder).skipped])
            code = 0
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            payload, code = json.dumps(repr(exc)), 1
        os.write(write_end, payload.encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        pytest.fail(f"child failed: {json.loads(payload)}")
    return json.loads(payload)


def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        solid(tmp_path / "ok.png")
        locked = solid(tmp_path / "locked.png")
        locked.chmod(0)
        try:
            assert list_images(tmp_path).skipped == [(locked, "not readable (permission denied)")]
        finally:
            locked.chmod(0o644)
        return
    # Root reads everything (chmod 000 included), so check as an unprivileged user,
    # in a folder under /tmp that user can enter (pytest's tmp_path is root-only).
    folder = Path(tempfile.mkdtemp(prefix="edgekiln-perm-"))
    try:
        folder.chmod(0o755)
        solid(folder / "ok.png").chmod(0o644)
        solid(folder / "locked.png").chmod(0)
        assert list_images(folder).skipped == []  # root: readable after all
        assert _skipped_as_nobody(folder) == [[str(folder / "locked.png"), "not readable (permission denied)"]]
    finally:
        shutil.rmtree(folder)


# ---- loading, sampling, labels ---------------------------------------------------


def test_load_images_stacks_in_spec_dtype(tmp_path: Path) -> None:
    files = [solid(tmp_path / f"{i}.png", (i * 40, 0, 0), size=(20, 10)) for i in range(3)]
    spec = PreprocessSpec.preset("imagenet", 8, 8).with_overrides(dtype="float16")
    batch, skipped = load_images(files, spec)
    assert batch.shape == (3, 3, 8, 8) and batch.dtype == np.float16 and not skipped
    np.testing.assert_allclose(batch[2, 0, 0, 0], (80 / 255 - 0.485) / 0.229, atol=2e-3)


def test_sample_files_is_deterministic_and_sorted(tmp_path: Path) -> None:
    files = [tmp_path / f"{i:03}.png" for i in range(50)]
    chosen = sample_files(files, 10, seed=3)
    assert chosen == sorted(chosen) and len(set(chosen)) == 10
    assert sample_files(list(reversed(files)), 10, seed=3) == chosen
    assert sample_files(files + files[:5], 10, seed=3) == chosen  # duplicates ignored
    assert sample_files(files, 10, seed=4) != chosen
    assert sample_files(files, 50) == files


def test_sample_files_too_many(tmp_path: Path) -> None:
    files = [tmp_path / f"{i}.png" for i in range(5)]
    with pytest.raises(InputFileError) as caught:
        sample_files(files, 6)
    assert "asked for 6 calibration images but only 5 are available" in caught.value.one_line()
    assert "--calib-size" in caught.value.one_line()
    with pytest.raises(UsageError, match="at least 1"):
        sample_files(files, 0)


def test_labelled_folder(tmp_path: Path) -> None:
    for name in ["dog/1.png", "cat/b.png", "cat/a.png", "bird/nested/x.jpg", "dog/notes.txt"]:
        if name.endswith(".txt"):
            (tmp_path / name).write_text("x")
        else:
            solid(tmp_path / name)
    (tmp_path / "empty").mkdir()
    solid(tmp_path / ".ipynb_checkpoints" / "z.png")
    solid(tmp_path / "loose.png")
    samples, classes = labelled_folder(tmp_path)
    assert classes == ["bird", "cat", "dog", "empty"]
    assert samples == [
        (tmp_path / "bird" / "nested" / "x.jpg", 0),
        (tmp_path / "cat" / "a.png", 1),
        (tmp_path / "cat" / "b.png", 1),
        (tmp_path / "dog" / "1.png", 2),
    ]


def test_labelled_folder_without_classes(tmp_path: Path) -> None:
    solid(tmp_path / "a.png")
    with pytest.raises(InputFileError, match="has no class sub-folders"):
        labelled_folder(tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(InputFileError, match="contain no images"):
        labelled_folder(tmp_path)


def test_listing_is_reused_inside_the_block_and_walked_afresh_outside(tmp_path: Path) -> None:
    solid(tmp_path / "a.png")
    with listings_reused():
        first = list_images(tmp_path)
        solid(tmp_path / "b.png")  # a change the memo hides, inside the block only
        again = list_images(tmp_path)
        assert again.files == first.files == [tmp_path / "a.png"]
        again.files.append(tmp_path / "mine.png")  # a caller's copy: the memo is not edited through it
        assert list_images(tmp_path).files == [tmp_path / "a.png"]
    assert list_images(tmp_path).files == [tmp_path / "a.png", tmp_path / "b.png"]
    with listings_reused():  # a new block starts with an empty memo
        assert list_images(tmp_path).files == [tmp_path / "a.png", tmp_path / "b.png"]
    solid(tmp_path / "c.png")
    assert len(list_images(tmp_path).files) == 3  # no memo survives the block


def test_distinct_folders_and_options_are_distinct_listings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import calibration.folder as folder_module

    solid(tmp_path / "top.png")
    solid(tmp_path / "sub" / "deep.png")
    with listings_reused():
        assert len(list_images(tmp_path).files) == 2
        assert list_images(tmp_path, recursive=False).files == [tmp_path / "top.png"]
        assert list_images(tmp_path / "sub").files == [tmp_path / "sub" / "deep.png"]
        monkeypatch.chdir(tmp_path)
        assert list_images(Path("sub")).files == [Path("sub") / "deep.png"]  # spelled as the caller spelled it
        monkeypatch.setattr(folder_module, "MAX_WALK_ENTRIES", 1)
        with pytest.raises(InputFileError, match="more than 1 entries"):
            list_images(tmp_path)  # a limit is part of the key: not answered from the memo


def test_a_failed_listing_is_not_kept_and_other_threads_walk_the_disk(tmp_path: Path) -> None:
    import threading

    with listings_reused():
        with pytest.raises(InputFileError, match="no images found"):
            list_images(tmp_path)
        solid(tmp_path / "a.png")
        assert list_images(tmp_path).files == [tmp_path / "a.png"]
        solid(tmp_path / "b.png")
        seen: list[int] = []
        thread = threading.Thread(target=lambda: seen.append(len(list_images(tmp_path).files)))
        thread.start()
        thread.join()
        assert seen == [2]  # the memo is this context's, not the process's
        assert len(list_images(tmp_path).files) == 1


def test_suffix_list() -> None:
    assert set(IMAGE_SUFFIXES) == {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
