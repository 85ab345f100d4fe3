"""CalibrationSet: seeded split, labels, array sources and the disk cache, on real PNG files."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calibration.dataset import (CalibrationSet, available_samples, build_calibration_set, check_varied,
                                 choose_split, is_array_source)
from calibration.spec import PreprocessSpec
from toolchain.errors import InputFileError, UsageError

SIDE = 4


def spec(**overrides: object) -> PreprocessSpec:
    """Raw 0..255 pixels, HWC: pixel [0, 0, 0] of a sample is the value written into its file."""
    return PreprocessSpec.preset("raw255", SIDE, SIDE).with_overrides(layout="NHWC", **overrides)


def png(path: Path, value: int, size: int = SIDE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return path


def image_folder(root: Path, n: int) -> Path:
    """img_000.png .. with pixel value = its number, so every row can be traced to its file."""
    for i in range(n):
        png(root / f"img_{i:03d}.png", i)
    return root


def number(name: str) -> int:
    return int(re.search(r"(\d+)", Path(name).name).group(1))  # type: ignore[union-attr]


def assert_rows_match_files(cs: CalibrationSet) -> None:
    for array, files in ((cs.calibration, cs.calibration_files), (cs.holdout, cs.holdout_files)):
        assert len(array) == len(files)
        assert [int(v) for v in array[:, 0, 0, 0]] == [number(f) for f in files]


# ---- choosing and splitting -----------------------------------------------------------


def test_split_is_seeded_disjoint_sorted_and_traceable(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", 20)
    first = build_calibration_set(folder, spec(), count=8, holdout=4, seed=0)
    again = build_calibration_set(folder, spec(), count=8, holdout=4, seed=0)
    other = build_calibration_set(folder, spec(), count=8, holdout=4, seed=1)

    assert first.calibration.shape == (8, SIDE, SIDE, 3) and first.holdout.shape == (4, SIDE, SIDE, 3)
    assert first.calibration.dtype == np.float32
    assert (first.calibration_files, first.holdout_files) == (again.calibration_files, again.holdout_files)
    np.testing.assert_array_equal(first.calibration, again.calibration)
    assert first.key == again.key
    assert not set(first.calibration_files) & set(first.holdout_files)
    assert list(first.calibration_files) == sorted(first.calibration_files)
    assert list(first.holdout_files) == sorted(first.holdout_files)
    assert (first.calibration_files, first.holdout_files) != (other.calibration_files, other.holdout_files)
    assert first.key != other.key
    assert_rows_match_files(first)
    assert first.holdout_labels is None and first.class_names is None
    assert first.spec == spec().to_dict() and first.skipped == ()
    assert "8 calibration + 4 holdout" in first.summary() and "not cached" in first.summary()


def test_arrays_are_read_only(tmp_path: Path) -> None:
    cs = build_calibration_set(image_folder(tmp_path, 5), spec(), count=3, holdout=2)
    with pytest.raises(ValueError):
        cs.calibration[0, 0, 0, 0] = 1.0


def test_explicit_sizes_that_do_not_fit_are_refused_not_shrunk(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="only 10 images for --calib-size 8 plus --holdout 4") as err:
        build_calibration_set(image_folder(tmp_path, 10), spec(), count=8, holdout=4)
    assert "--calib-size 7 --holdout 3" in str(err.value)  # a split that fits, in the hint


@pytest.mark.parametrize(("images", "count", "holdout"), [(6, 8, 4), (8, 8, 4), (1, 1, 1)])
def test_too_few_images_is_an_input_error_naming_calib_size(
    tmp_path: Path, images: int, count: int, holdout: int
) -> None:
    with pytest.raises(InputFileError, match=f"only {images} images") as err:
        build_calibration_set(image_folder(tmp_path, images), spec(), count=count, holdout=holdout)
    if images > 1:
        assert "--calib-size" in str(err.value)


@pytest.mark.parametrize(("available", "calibration", "held_out"),
                         [(16, 8, 8), (30, 15, 15), (40, 24, 16), (91, 55, 36), (120, 72, 48), (300, 180, 120),
                          (400, 256, 128), (1000, 256, 128)])
def test_the_default_split_adapts_to_the_folder(available: int, calibration: int, held_out: int) -> None:
    split = choose_split(available)
    assert (split.count, split.holdout, split.chosen) == (calibration, held_out, True)
    assert split.describe().startswith(f"calibrating on {calibration} of {available} samples, {held_out} held out")


def test_one_explicit_size_is_respected_and_the_other_takes_the_rest() -> None:
    assert (choose_split(300, count=172).count, choose_split(300, count=172).holdout) == (172, 128)
    assert (choose_split(91, holdout=40).count, choose_split(91, holdout=40).holdout) == (51, 40)
    assert (choose_split(1000, holdout=10).count, choose_split(6, count=4, holdout=2).chosen) == (256, False)
    with pytest.raises(InputFileError, match="--holdout 91 leaves none"):
        choose_split(91, holdout=91)


def test_a_folder_under_16_images_needs_explicit_sizes(tmp_path: Path) -> None:
    folder = image_folder(tmp_path, 12)
    with pytest.raises(InputFileError, match="has only 12 images; calibration needs at least 16"):
        build_calibration_set(folder, spec())
    small = build_calibration_set(folder, spec(), count=8, holdout=4)  # asked for: respected
    assert (len(small.calibration), len(small.holdout)) == (8, 4)


def test_a_default_split_is_said_in_the_summary(tmp_path: Path) -> None:
    cs = build_calibration_set(image_folder(tmp_path, 20), spec())
    assert (len(cs.calibration), len(cs.holdout)) == (10, 10)
    assert "calibrating on 10 of 20 images, 10 held out (the default for 20 images" in cs.summary()
    assert available_samples(tmp_path) == (20, "images")


def test_identical_samples_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "same"
    for i in range(20):
        png(folder / f"copy_{i:02d}.png", 77)
    cs = build_calibration_set(folder, spec())
    with pytest.raises(InputFileError, match="all 20 images chosen from .* are identical"):
        check_varied(cs, folder)
    check_varied(build_calibration_set(image_folder(tmp_path / "varied", 20), spec()), folder)  # varied: fine


def test_exactly_count_images_without_holdout_is_fine(tmp_path: Path) -> None:
    cs = build_calibration_set(image_folder(tmp_path, 5), spec(), count=5, holdout=0)
    assert len(cs.calibration) == 5 and cs.holdout.shape == (0, SIDE, SIDE, 3)
    assert list(cs.feeds("x", "holdout")) == []


@pytest.mark.parametrize(("count", "holdout"), [(0, 4), (-1, 0), (4, -1), (True, 0)])
def test_bad_sizes_are_usage_errors(tmp_path: Path, count: int, holdout: int) -> None:
    with pytest.raises(UsageError):
        build_calibration_set(image_folder(tmp_path, 5), spec(), count=count, holdout=holdout)


def test_images_need_a_spec(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="preprocessing spec"):
        build_calibration_set(image_folder(tmp_path, 5), None, count=2, holdout=1)


def test_undecodable_chosen_file_is_skipped_not_replaced(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", 6)
    (folder / "img_099.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("hello")
    cs = build_calibration_set(folder, spec(), count=5, holdout=2)  # all 7 listed files are chosen
    assert len(cs.calibration) + len(cs.holdout) == 6
    skipped = dict(cs.skipped)
    assert "img_099.png" in skipped and "notes.txt" in skipped
    assert "img_099.png" not in cs.calibration_files + cs.holdout_files
    assert_rows_match_files(cs)
    assert "not replaced" in cs.summary() and "img_099.png" in cs.summary()


# ---- labels -----------------------------------------------------------------------------


def labelled_tree(root: Path, per_class: int = 4) -> Path:
    for label, name in enumerate(("bird", "cat", "dog")):
        for i in range(per_class):
            png(root / name / f"{name}_{i}.png", 100 + label)  # pixel value encodes the class
    return root


def test_labelled_folder_gives_holdout_labels_and_class_names(tmp_path: Path) -> None:
    cs = build_calibration_set(labelled_tree(tmp_path / "data"), spec(), count=6, holdout=6)
    assert cs.class_names == ("bird", "cat", "dog")
    assert cs.holdout_labels is not None and cs.holdout_labels.dtype == np.int64
    assert [cs.class_names[i] for i in cs.holdout_labels] == [f.split("/")[0] for f in cs.holdout_files]
    np.testing.assert_array_equal(cs.holdout[:, 0, 0, 0], 100 + cs.holdout_labels)
    assert all("/" in f for f in cs.calibration_files)
    assert "3 classes" in cs.summary()


def test_labels_can_be_refused_or_required(tmp_path: Path) -> None:
    tree = labelled_tree(tmp_path / "data")
    assert build_calibration_set(tree, spec(), count=6, holdout=6, labelled=False).holdout_labels is None
    flat = image_folder(tmp_path / "flat", 8)
    assert build_calibration_set(flat, spec(), count=4, holdout=4).holdout_labels is None
    with pytest.raises(InputFileError, match="outside class sub-folders"):
        build_calibration_set(flat, spec(), count=4, holdout=4, labelled=True)


def test_single_sub_folder_is_not_auto_labelled(tmp_path: Path) -> None:
    image_folder(tmp_path / "data" / "images", 6)
    cs = build_calibration_set(tmp_path / "data", spec(), count=3, holdout=3)
    assert cs.class_names is None and cs.holdout_labels is None


# ---- array sources ----------------------------------------------------------------------


def rows(n: int) -> np.ndarray:
    """(n, 2, 3) float32 with every value of row i equal to i."""
    return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 2, 3)).copy()


def assert_array_rows_match(cs: CalibrationSet) -> None:
    for array, files in ((cs.calibration, cs.calibration_files), (cs.holdout, cs.holdout_files)):
        indices = [int(re.search(r"\[(\d+)\]$", f).group(1)) for f in files]  # type: ignore[union-attr]
        np.testing.assert_array_equal(array[:, 0, 0], indices)


def test_npy_file_source(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, rows(30))
    cs = build_calibration_set(path, spec(), count=10, holdout=5, cache_dir=tmp_path / "cache")
    assert cs.calibration.shape == (10, 2, 3) and cs.holdout.shape == (5, 2, 3)
    assert cs.spec == {"source": "arrays"} and cs.holdout_labels is None
    assert not set(cs.calibration_files) & set(cs.holdout_files)
    assert_array_rows_match(cs)
    assert "arrays" in cs.summary() and not (tmp_path / "cache").exists()  # arrays are not copied to a cache
    same = build_calibration_set(path, None, count=10, holdout=5)
    assert same.calibration_files == cs.calibration_files and same.key == cs.key


def test_npz_source_single_and_several_keys(tmp_path: Path) -> None:
    one = tmp_path / "one.npz"
    np.savez(one, samples=rows(12))
    cs = build_calibration_set(one, None, count=8, holdout=4)
    assert len(cs.calibration) == 8 and len(cs.holdout) == 4
    assert_array_rows_match(cs)

    several = tmp_path / "several.npz"
    np.savez(several, images=rows(12), masks=rows(12))
    with pytest.raises(UsageError, match="images, masks"):
        build_calibration_set(several, None, count=4, holdout=0)


class _Trap:
    """Unpickling this creates a marker file: proof the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def test_pickled_arrays_are_refused_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "pickle_ran"
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([_Trap(marker), _Trap(marker)], dtype=object), allow_pickle=True)
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps(_Trap(marker)))
    for path in (objects, raw):
        with pytest.raises(InputFileError, match="pickled data"):
            build_calibration_set(path, None, count=1, holdout=0)
    assert not marker.exists()


def test_folder_of_npy_files_is_one_sample_per_file(tmp_path: Path) -> None:
    folder = tmp_path / "arrays"
    folder.mkdir()
    for i in range(9):
        np.save(folder / f"s_{i:02d}.npy", np.full((2, 3), i, dtype=np.float32))
    assert is_array_source(folder) and not is_array_source(image_folder(tmp_path / "imgs", 1))
    cs = build_calibration_set(folder, None, count=6, holdout=3)
    assert cs.calibration.shape == (6, 2, 3) and cs.holdout.shape == (3, 2, 3)
    np.testing.assert_array_equal(cs.calibration[:, 0, 0], [number(f) for f in cs.calibration_files])



def test_npy_file_linked_from_outside_the_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEKILN_CALIB_FOLLOW_LINKS", raising=False)
    folder = tmp_path / "arrays"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"s_{i:02d}.npy", np.full((2, 3), i, dtype=np.float32))
    np.save(tmp_path / "elsewhere.npy", np.zeros((2, 3), dtype=np.float32))
    (folder / "s_09.npy").symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(InputFileError, match="outside the calibration folder"):
        build_calibration_set(folder, None, count=2, holdout=1)
    monkeypatch.setenv("EDGEKILN_CALIB_FOLLOW_LINKS", "1")
    assert build_calibration_set(folder, None, count=2, holdout=2).calibration.shape == (2, 2, 3)

# ---- the disk cache --------------------------------------------------------------------


def build(
    folder: Path, cache: Path, preprocess: PreprocessSpec | None = None, labelled: bool | None = None
) -> CalibrationSet:
    """Five calibration + three holdout samples, cached in ``cache``."""
    return build_calibration_set(
        folder, preprocess or spec(), count=5, holdout=3, cache_dir=cache, labelled=labelled
    )


def cache_files(cache: Path, cs: CalibrationSet) -> tuple[Path, Path]:
    return cache / f"{cs.key[:16]}.npz", cache / f"{cs.key[:16]}.json"


def assert_same_set(a: CalibrationSet, b: CalibrationSet) -> None:
    np.testing.assert_array_equal(a.calibration, b.calibration)
    np.testing.assert_array_equal(a.holdout, b.holdout)
    assert a.calibration.dtype == b.calibration.dtype
    assert (a.calibration_files, a.holdout_files) == (b.calibration_files, b.holdout_files)
    assert (a.key, a.spec, a.skipped) == (b.key, b.spec, b.skipped)


def test_second_call_is_a_cache_hit_with_identical_arrays(tmp_path: Path) -> None:
    folder, cache = image_folder(tmp_path / "imgs", 8), tmp_path / "cache"
    first = build(folder, cache)
    assert first.cache == "miss" and "cache miss" in first.summary()
    npz, sidecar = cache_files(cache, first)
    assert npz.is_file() and sidecar.is_file()
    assert json.loads(sidecar.read_text())["key"] == first.key
    second = build(folder, cache)
    assert second.cache_hit and "cache hit" in second.summary()
    assert_same_set(first, second)
    assert_rows_match_files(second)


def test_labelled_cache_entry_keeps_labels_and_is_not_shared_with_unlabelled(tmp_path: Path) -> None:
    tree, cache = labelled_tree(tmp_path / "data", per_class=3), tmp_path / "cache"
    unlabelled = build(tree, cache, labelled=False)
    labelled = build(tree, cache)
    assert unlabelled.key != labelled.key and labelled.cache == "miss"
    hit = build(tree, cache)
    assert hit.cache_hit and hit.class_names == labelled.class_names
    np.testing.assert_array_equal(hit.holdout_labels, labelled.holdout_labels)  # type: ignore[arg-type]


def test_changed_image_content_misses_and_rebuilds(tmp_path: Path) -> None:
    folder, cache = image_folder(tmp_path / "imgs", 8), tmp_path / "cache"  # 5 + 3 = every image chosen
    first = build(folder, cache)
    png(folder / "img_003.png", 200)
    second = build(folder, cache)
    assert second.cache == "miss" and second.key != first.key
    both = dict(zip(second.calibration_files + second.holdout_files, [*second.calibration, *second.holdout]))
    assert both["img_003.png"][0, 0, 0] == 200
    assert build(folder, cache).cache_hit


def test_changed_spec_misses(tmp_path: Path) -> None:
    folder, cache = tmp_path / "imgs", tmp_path / "cache"
    for i in range(8):
        png(folder / f"img_{i:03d}.png", i, size=8)  # resized, so the resize mode matters
    first = build(folder, cache)
    letterbox = build(folder, cache, spec(resize="letterbox"))
    assert letterbox.cache == "miss" and letterbox.key != first.key
    assert letterbox.spec["resize"] == "letterbox"
    assert build(folder, cache).cache_hit


def test_truncated_npz_is_detected_and_rebuilt(tmp_path: Path) -> None:
    folder, cache = image_folder(tmp_path / "imgs", 8), tmp_path / "cache"
    first = build(folder, cache)
    npz, _ = cache_files(cache, first)
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2])
    rebuilt = build(folder, cache)
    assert rebuilt.cache == "miss" and "checksum" in rebuilt.summary()
    assert_same_set(first, rebuilt)
    assert npz.stat().st_size == len(data)  # the entry was overwritten
    assert build(folder, cache).cache_hit


@pytest.mark.parametrize("damage", ["garbage", "truncate", "other-files"])
def test_corrupt_or_edited_json_is_rebuilt(tmp_path: Path, damage: str) -> None:
    folder, cache = image_folder(tmp_path / "imgs", 8), tmp_path / "cache"
    first = build(folder, cache)
    _, sidecar = cache_files(cache, first)
    text = sidecar.read_text()
    if damage == "garbage":
        sidecar.write_bytes(b"\xff\x00{not json")
    elif damage == "truncate":
        sidecar.write_text(text[: len(text) // 2])
    else:
        meta = json.loads(text)
        meta["calibration_files"], meta["holdout_files"] = meta["holdout_files"], meta["calibration_files"]
        sidecar.write_text(json.dumps(meta))
    rebuilt = build(folder, cache)
    assert rebuilt.cache == "miss" and "cache entry ignored" in rebuilt.summary()
    assert_same_set(first, rebuilt)
    assert build(folder, cache).cache_hit


def test_swapped_npz_with_matching_checksum_is_still_refused(tmp_path: Path) -> None:
    """An .npz from another entry, with its checksum copied too, fails the shape/count checks."""
    folder, cache = image_folder(tmp_path / "imgs", 8), tmp_path / "cache"
    first = build(folder, cache)
    small = build_calibration_set(folder, spec(), count=2, holdout=1, cache_dir=cache)
    npz, sidecar = cache_files(cache, first)
    small_npz, small_json = cache_files(cache, small)
    npz.write_bytes(small_npz.read_bytes())
    meta = json.loads(sidecar.read_text())
    meta["npz_sha256"] = json.loads(small_json.read_text())["npz_sha256"]
    sidecar.write_text(json.dumps(meta))
    rebuilt = build(folder, cache)
    assert rebuilt.cache == "miss"
    assert_same_set(first, rebuilt)


# ---- feeds -------------------------------------------------------------------------------


def test_feeds_batches_include_the_last_partial_batch(tmp_path: Path) -> None:
    cs = build_calibration_set(image_folder(tmp_path, 10), spec(), count=7, holdout=3)
    batches = list(cs.feeds("images", batch=3))
    assert [b["images"].shape[0] for b in batches] == [3, 3, 1]
    assert all(list(b) == ["images"] for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["images"] for b in batches]), cs.calibration)
    singles = list(cs.feeds("x", "holdout"))
    assert len(singles) == 3 and singles[0]["x"].shape == (1, SIDE, SIDE, 3)
    np.testing.assert_array_equal(singles[2]["x"][0], cs.holdout[2])
    with pytest.raises(UsageError):
        cs.feeds("x", batch=0)
    with pytest.raises(UsageError):
        cs.feeds("x", "test")  # type: ignore[arg-type]
