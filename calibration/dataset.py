"""The one preprocessed sample set that INT8 calibration, verification and accuracy checks share.

``build_calibration_set`` turns a folder of images (through a ``PreprocessSpec``)
or a ``.npy``/``.npz`` file of already-preprocessed samples into a
``CalibrationSet``: a seeded, disjoint split into *calibration* samples (used to
compute activation ranges) and *holdout* samples (never used for ranges, kept
for checking accuracy after quantization), with class labels when the folder is
labelled (one sub-folder per class).

Image sets can be cached on disk. An entry is used only when its key matches
(format, chosen files and their content hashes, spec, labels, sizes, seed) and
every stored byte checks out; anything else is rebuilt and overwritten.

Framework-free: numpy, Pillow, stdlib and ``toolchain`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import PIL

from calibration.folder import (IMAGE_SUFFIXES, labelled_folder, list_images, load_images, refuse_link_outside,
                               sample_files)
from calibration.spec import PreprocessSpec
from toolchain.errors import InputFileError, OutputError, ToolchainError, UsageError
from toolchain.fileio import atomic_file, check_array_file, sha256_file

# Part of every cache key: bump it whenever the stored layout, or code that changes
# what a given key should produce (preprocessing, split rule), changes.
CACHE_FORMAT = "edgekiln-calibration-set/1"
ARRAY_SPEC: dict[str, Any] = {"source": "arrays"}

Part = Literal["calibration", "holdout"]
CacheState = Literal["hit", "miss", "off"]

_SHOWN_SKIPPED = 3
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile)


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is not a bool
class CalibrationSet:
    """Preprocessed calibration and holdout samples plus what is needed to report them.

    The arrays are read-only: calibration, verification and accuracy checks share
    them, so none may change them under the others.
    """

    calibration: np.ndarray
    holdout: np.ndarray
    calibration_files: tuple[str, ...]
    holdout_files: tuple[str, ...]
    holdout_labels: np.ndarray | None
    class_names: tuple[str, ...] | None
    spec: dict[str, Any]
    skipped: tuple[tuple[str, str], ...]
    key: str
    cache: CacheState = "off"
    notes: tuple[str, ...] = field(default=())

    @property
    def cache_hit(self) -> bool:
        return self.cache == "hit"

    def feeds(
        self, input_name: str, part: Part = "calibration", batch: int = 1
    ) -> Iterator[dict[str, np.ndarray]]:
        """``{input_name: samples[i:i + batch]}`` over one part; the last batch may be smaller."""
        data = self._part(part)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise UsageError(f"the batch size must be a whole number of at least 1, got {batch!r}")
        # Validated above, iterated below: a generator function would defer the errors to first use.
        return ({input_name: data[start : start + batch]} for start in range(0, len(data), batch))

    def summary(self) -> str:
        """One line: counts, sample shape, classes, skipped files, notes and the cache outcome."""
        shape = "x".join(str(d) for d in self.calibration.shape[1:]) or "scalar"
        parts = [
            f"{len(self.calibration)} calibration + {len(self.holdout)} holdout samples "
            f"({shape} {self.calibration.dtype}, {'arrays' if self.spec == ARRAY_SPEC else 'images'})"
        ]
        if self.spec != ARRAY_SPEC:  # say how images were turned into inputs, whether declared or inferred
            parts.append(f"preprocessed {PreprocessSpec.from_dict(self.spec).describe()}")
        if self.class_names is not None:
            parts.append(f"{len(self.class_names)} classes")
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)}: {_skipped_text(self.skipped)}")
        parts.extend(self.notes)
        parts.append({"hit": "cache hit", "miss": "cache miss, built", "off": "built, not cached"}[self.cache])
        return "; ".join(parts)

    def _part(self, part: str) -> np.ndarray:
        if part == "calibration":
            return self.calibration
        if part == "holdout":
            return self.holdout
        raise UsageError(f"unknown sample set part '{part}'; use 'calibration' or 'holdout'")


def build_calibration_set(
    source: Path,
    spec: PreprocessSpec | None,
    *,
    count: int | None = None,
    holdout: int | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    labelled: bool | None = None,
) -> CalibrationSet:
    """Choose, split and preprocess ``count`` calibration + ``holdout`` holdout samples from ``source``.

    ``source``: a folder of images (recursive; needs ``spec``), a ``.npy`` file of
    (N, ...) samples, a ``.npz`` file holding one such array, or a folder whose
    top-level ``.npy`` files are one sample each (``spec`` is ignored for arrays).
    ``count``/``holdout`` None: chosen from the number of samples (``choose_split``).
    ``labelled``: None detects a class-per-sub-folder layout, True requires it,
    False never uses it. ``cache_dir`` caches image sets (array sources are read
    directly: a cache would only copy them).
    """
    _check_sizes(count, holdout, seed)
    found = _find_samples(Path(source), spec, labelled)
    split = choose_split(len(found.items), count, holdout, source=found.source, kind=_kind_word(found),
                         npy_folder=found.kind == "npy-folder")
    notes: tuple[str, ...] = (split.describe(),) if split.chosen else ()
    cal_items, hold_items = _split(_choose(found, split.count + split.holdout, seed), split.count, seed)
    key = _cache_key(found, cal_items, hold_items, split.count, split.holdout, seed)

    if found.kind != "images":
        built, state = _load_arrays(found, cal_items, hold_items), "off"
    elif cache_dir is None:
        built, state = _decoded_in_this_process(key, found, cal_items, hold_items), "off"
    else:
        built, state, cache_notes = _cached_images(Path(cache_dir), key, found, cal_items, hold_items)
        notes += cache_notes
    return _assemble(found, built, key, state, notes)


def is_array_source(source: Path) -> bool:
    """Whether ``build_calibration_set`` reads ``source`` as arrays (so it needs no ``PreprocessSpec``)."""
    source = Path(source)
    if source.is_file():
        return source.suffix.lower() in (".npy", ".npz")
    return source.is_dir() and bool(_npy_files(source))


# ---- what the source holds ----------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One sample: a whole file (``index`` None) or row ``index`` of an array file."""

    rel: str  # file path relative to the source root, POSIX style
    path: Path
    index: int | None = None

    @property
    def name(self) -> str:
        return self.rel if self.index is None else f"{self.rel}[{self.index}]"

    def order(self) -> tuple[str, int]:
        return (self.rel, -1 if self.index is None else self.index)


@dataclass
class _Found:
    source: Path
    kind: Literal["images", "array-file", "npy-folder"]
    items: list[_Item]
    skipped: list[tuple[str, str]]
    spec: PreprocessSpec | None = None
    labels: dict[str, int] | None = None  # relative path -> class index
    class_names: tuple[str, ...] | None = None
    array: np.ndarray | None = None  # array-file only: all rows (memory-mapped for .npy)

    @property
    def spec_dict(self) -> dict[str, Any]:
        return self.spec.to_dict() if self.spec is not None else dict(ARRAY_SPEC)


def _check_sizes(count: int | None, holdout: int | None, seed: int) -> None:
    for name, value in (("count", count), ("holdout", holdout), ("seed", seed)):
        if value is None and name != "seed":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{name} must be a whole number, got {value!r}")
    if count is not None and count < 1:
        raise UsageError(f"the calibration sample size must be at least 1, got {count}", hint="Raise --calib-size.")
    if holdout is not None and holdout < 0:
        raise UsageError(f"the holdout size must be 0 or more, got {holdout}")


def _find_samples(source: Path, spec: PreprocessSpec | None, labelled: bool | None, *,
                  need_spec: bool = True) -> _Found:
    if not source.exists():
        raise InputFileError(f"calibration data '{source}' does not exist")
    if source.is_file():
        if source.suffix.lower() not in (".npy", ".npz"):
            raise InputFileError(
                f"'{source}' is neither a folder of images nor a .npy/.npz file of preprocessed samples"
            )
        found = _array_file(source)
    elif _npy_files(source):
        found = _npy_folder(source)
    else:
        return _image_folder(source, spec, labelled, need_spec)
    if labelled:
        raise UsageError(
            f"'{source}' holds arrays, which carry no class labels",
            hint="Labels come from an image folder with one sub-folder per class.",
        )
    return found


def _image_folder(folder: Path, spec: PreprocessSpec | None, labelled: bool | None, need_spec: bool = True) -> _Found:
    if spec is None and need_spec:
        raise UsageError(
            f"calibrating from the images in '{folder}' needs a preprocessing spec",
            hint="Pass a PreprocessSpec, or give a .npy/.npz file of already-preprocessed samples.",
        )
    listing = list_images(folder)
    skipped = [(_rel(path, folder), reason) for path, reason in listing.skipped]
    classes = _classes(folder, listing.files, labelled)
    if classes is None:
        items = [_Item(_rel(path, folder), path) for path in listing.files]
        return _Found(folder, "images", items, skipped, spec)
    labels, names = classes
    items = sorted((_Item(rel, folder / rel) for rel in labels), key=_Item.order)
    return _Found(folder, "images", items, skipped, spec, labels, names)


def _classes(
    folder: Path, files: Sequence[Path], labelled: bool | None
) -> tuple[dict[str, int], tuple[str, ...]] | None:
    """Labels by relative path and class names for a class-per-sub-folder layout, or None."""
    if labelled is False:
        return None
    loose = [path for path in files if path.parent == folder]
    if loose and labelled:
        raise InputFileError(
            f"'{folder}' is not a labelled folder: {len(loose)} images (e.g. '{loose[0].name}') lie outside "
            "class sub-folders",
            hint="Move every image into a sub-folder named after its class, or do not ask for labels.",
        )
    if loose:
        return None
    try:
        samples, names = labelled_folder(folder)
    except InputFileError:
        if labelled:
            raise
        return None
    # Auto-detection wants every class folder to hold images, and two classes at least:
    # one sub-folder of images is far more often just where the images live.
    if labelled is None and (len(names) < 2 or len({index for _, index in samples}) < len(names)):
        return None
    return {_rel(path, folder): index for path, index in samples}, tuple(names)


def _npy_files(folder: Path) -> list[Path]:
    """Top-level .npy files; an unreadable folder has none here (the image reader then explains it)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return sorted(
        Path(entry.path)
        for entry in entries
        if entry.name.lower().endswith(".npy") and not entry.name.startswith(".") and entry.is_file()
    )


def _npy_folder(folder: Path) -> _Found:
    files = _npy_files(folder)
    for path in files:
        refuse_link_outside(path, folder)  # as for images: a link must not read samples from elsewhere
    npy = set(files)
    others = sorted(
        path
        for path in (Path(entry.path) for entry in os.scandir(folder) if not entry.name.startswith("."))
        if path not in npy
    )
    images = [path for path in others if path.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        raise InputFileError(
            f"'{folder}' holds both .npy files and images (e.g. '{images[0].name}')",
            hint="Keep one kind of calibration data per folder.",
        )
    skipped = [(path.name, "not a .npy file (only top-level .npy files are read)") for path in others]
    return _Found(folder, "npy-folder", [_Item(path.name, path) for path in files], skipped)


def _array_file(path: Path) -> _Found:
    array = _read_array(path)
    if array.ndim < 1:
        raise InputFileError(f"'{path}' holds a single number; expected (N, ...) samples along the first axis")
    items = [_Item(path.name, path, row) for row in range(len(array))]
    return _Found(path, "array-file", items, [], array=array)


def _read_array(path: Path) -> np.ndarray:
    """The numeric array in a .npy (memory-mapped) or single-array .npz; pickles are refused unread."""
    check_array_file(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.files)
                if len(keys) != 1:
                    raise _npz_keys_error(path, keys)
                array = archive[keys[0]]
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except _READ_ERRORS as exc:
        raise InputFileError(f"'{path}' {_array_problem(exc)}") from exc
    _check_numeric(array, path)
    return array


def _npz_keys_error(path: Path, keys: list[str]) -> ToolchainError:
    if not keys:
        return InputFileError(f"'{path}' holds no arrays")
    return UsageError(
        f"'{path}' holds {len(keys)} arrays ({', '.join(keys)}); it must hold only the input samples",
        hint="Save the one input array alone (np.savez(path, samples)) or as a .npy file.",
    )


def _array_problem(exc: BaseException) -> str:
    text = str(exc)
    if "pickle" in text or "Python objects" in text:
        return (
            "holds Python objects (pickled data), which are refused because loading them runs code; "
            "save a numeric array"
        )
    return f"is not a readable .npy/.npz array file ({type(exc).__name__}: {text.strip() or 'no detail'})"


def _check_numeric(array: np.ndarray, path: Path) -> None:
    if array.dtype.kind not in "biuf":
        raise InputFileError(
            f"'{path}' holds {array.dtype} values; model inputs need a numeric (bool, int or float) array"
        )


def _check_finite(array: np.ndarray, where: str) -> None:
    """Refuse a sample holding NaN or Inf: every model output on it would be NaN, and the model blamed."""
    if array.dtype.kind != "f":
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    first = tuple(int(i) for i in np.argwhere(~finite)[0])
    counts = " and ".join(f"{n} {kind} value{'' if n == 1 else 's'}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)
    raise InputFileError(f"calibration sample {where} holds {counts} (the first at index {first}), so no model "
                         "output on it can be compared", hint="Fix or remove that sample.")


# ---- choosing and splitting ---------------------------------------------------------


# The default split (``choose_split``): enough held-out samples that the accuracy check means
# something, the rest for ranges. One flipped image in 16 held out is 6 points; in 128, 0.8.
MIN_SAMPLES = 16
MAX_CALIBRATION = 256
MAX_HOLDOUT = 128
HOLDOUT_FRACTION = 0.4


@dataclass(frozen=True)
class SampleSplit:
    """How many of ``available`` samples measure ranges (``count``) and how many are held out."""

    available: int
    count: int
    holdout: int
    chosen: bool
    """True when edgekiln chose at least one of the two numbers (the user left it out)."""
    kind: str = "samples"
    rule: str = ""
    """How the chosen number(s) were chosen, for ``describe``."""

    def describe(self, where: str = "") -> str:
        """``calibrating on 55 of 91 images [in photos/], 36 held out (how they were chosen)``."""
        place = f" in {where}" if where else ""
        text = f"calibrating on {self.count} of {self.available} {self.kind}{place}, {self.holdout} held out"
        return f"{text} ({self.rule})" if self.chosen and self.rule else text

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "calibration": self.count, "holdout": self.holdout,
                "chosen": self.chosen}


def default_holdout(available: int) -> int:
    """The held-out part of a default split: 40% of the samples, at least 16, at most 128 and at most half."""
    return min(MAX_HOLDOUT, max(MIN_SAMPLES, int(HOLDOUT_FRACTION * available)), available // 2)


def choose_split(available: int, count: int | None = None, holdout: int | None = None, *,
                 source: Path | str = "the samples", kind: str = "samples", npy_folder: bool = False) -> SampleSplit:
    """The calibration/holdout sizes for ``available`` samples; None means "choose it".

    Both None: ``default_holdout`` held out, the rest (up to 256) for calibration; fewer than
    ``MIN_SAMPLES`` samples is an error. One given: it is respected and the other takes the rest
    (up to 256 calibration or 128 held out). Both given: respected, or an error if they do not fit.
    """
    _check_sizes(count, holdout, 0)
    where = f"'{source}'"
    per_file = " (each .npy file in a folder is one sample; give the file itself if it holds N samples)" \
        if npy_folder else ""
    if count is None and holdout is None:
        if available < MIN_SAMPLES:
            raise InputFileError(
                f"{where} has only {available} {kind}; calibration needs at least {MIN_SAMPLES} (some to measure "
                "activation ranges, the rest held out to check accuracy)",
                hint=f"Add samples{per_file}, or choose both sizes yourself with --calib-size and --holdout.")
        held = default_holdout(available)
        return SampleSplit(available, min(MAX_CALIBRATION, available - held), held, True, kind,
                           f"the default for {available} {kind}: 40% held out, 16 to 128, the rest up to 256 for "
                           "calibration; --calib-size/--holdout to choose")
    if holdout is None:
        assert count is not None
        if count > available:
            raise InputFileError(f"{where} has only {available} {kind} for --calib-size {count}",
                                 hint=f"{_suggest(available)}{per_file}.")
        return SampleSplit(available, count, min(MAX_HOLDOUT, available - count), True, kind,
                           "held out: the samples --calib-size leaves, up to 128")
    if count is None:
        if holdout >= available:
            raise InputFileError(f"{where} has only {available} {kind}: --holdout {holdout} leaves none for "
                                 "calibration", hint=f"{_suggest(available)}{per_file}.")
        return SampleSplit(available, min(MAX_CALIBRATION, available - holdout), holdout, True, kind,
                           "calibration: the samples --holdout leaves, up to 256")
    if count + holdout > available:
        raise InputFileError(f"{where} has only {available} {kind} for --calib-size {count} plus --holdout {holdout}",
                             hint=f"{_suggest(available)}{per_file}.")
    return SampleSplit(available, count, holdout, False, kind)


def _suggest(available: int) -> str:
    """What the user could ask for instead: the default split, or a small one under 16 samples."""
    if available >= MIN_SAMPLES:
        held = default_holdout(available)
        return (f"Lower --calib-size/--holdout (e.g. --calib-size {min(MAX_CALIBRATION, available - held)} "
                f"--holdout {held}, or leave both out to let edgekiln choose) or add more samples")
    if available >= 2:
        held = max(1, available // 3)
        return f"Lower --calib-size/--holdout (e.g. --calib-size {available - held} --holdout {held}) or add more samples"
    return "Add more samples"


def _kind_word(found: _Found) -> str:
    return "images" if found.kind == "images" else "samples"


def available_samples(source: Path) -> tuple[int, str]:
    """How many samples ``source`` holds and what they are ("images" or "samples"), without decoding any.

    The count ``build_calibration_set`` splits, so a plan can choose and announce the split up front.
    """
    found = _find_samples(Path(source), None, None, need_spec=False)
    return len(found.items), _kind_word(found)


def check_varied(samples: CalibrationSet, source: Path | str) -> None:
    """Refuse a set whose samples are all identical: ranges and accuracy measured on it mean nothing."""
    rows = [part for part in (samples.calibration, samples.holdout) if len(part)]
    total = sum(len(part) for part in rows)
    if total < 2:
        return
    first = rows[0][:1]
    if all(np.array_equal(part, np.broadcast_to(first, part.shape)) for part in rows):
        kind = "samples" if samples.spec == ARRAY_SPEC else "images"
        raise InputFileError(
            f"all {total} {kind} chosen from '{source}' are identical after preprocessing; calibrating and "
            "checking accuracy on copies of one input is meaningless",
            hint="Use varied, representative samples of what the model will see.")


def _choose(found: _Found, total: int, seed: int) -> list[_Item]:
    if found.kind == "array-file":
        # Rows of one file: the draw sample_files makes, on row numbers.
        rows = random.Random(seed).sample(range(len(found.items)), total)
        return [found.items[row] for row in sorted(rows)]
    by_path = {item.path: item for item in found.items}
    return [by_path[path] for path in sample_files(list(by_path), total, seed=seed)]


def _split(chosen: list[_Item], count: int, seed: int) -> tuple[list[_Item], list[_Item]]:
    """Disjoint calibration / holdout parts, each sorted.

    A second seeded stream (not the one that chose the files), so the holdout is a
    random part of the choice rather than, say, the last files by name.
    """
    order = list(range(len(chosen)))
    random.Random(f"edgekiln-holdout-split:{seed}").shuffle(order)
    calibration = sorted((chosen[i] for i in order[:count]), key=_Item.order)
    holdout = sorted((chosen[i] for i in order[count:]), key=_Item.order)
    return calibration, holdout


# ---- the cache key ------------------------------------------------------------------


def _cache_key(
    found: _Found, cal: list[_Item], hold: list[_Item], count: int, holdout: int, seed: int
) -> str:
    hashes: dict[Path, str] = {}
    for item in (*cal, *hold):
        if item.path not in hashes:
            hashes[item.path] = _content_hash(item.path)
    payload = {
        "format": CACHE_FORMAT,
        # Decoders and resize filters can change between Pillow releases.
        "pillow": PIL.__version__,
        "calibration": [[item.name, hashes[item.path]] for item in cal],
        "holdout": [[item.name, hashes[item.path]] for item in hold],
        # Labels follow from the paths and the class list; labelled and unlabelled
        # sets of the same files must not share an entry.
        "class_names": list(found.class_names) if found.class_names is not None else None,
        "spec": found.spec_dict,
        "count": count,
        "holdout_requested": holdout,
        "seed": seed,
    }
    return hashlib.sha256(_canonical_json(payload).encode()).hexdigest()


def _content_hash(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:  # it will be skipped when decoding; the key still must not collide with content
        return f"unreadable: {exc.strerror or type(exc).__name__}"


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


# ---- building -----------------------------------------------------------------------


@dataclass
class _Built:
    calibration: np.ndarray
    holdout: np.ndarray
    calibration_files: list[str]
    holdout_files: list[str]
    holdout_labels: np.ndarray | None
    skipped: list[tuple[str, str]]  # chosen samples that could not be read


# Decoded image sets of this process by key (content hashes included), so one build's targets share
# one decode even without a disk cache (--no-cache). The arrays are read-only, so sharing is safe.
_DECODED: OrderedDict[str, _Built] = OrderedDict()
_DECODED_LIMIT = 4


def _decoded_in_this_process(key: str, found: _Found, cal: list[_Item], hold: list[_Item]) -> _Built:
    if key in _DECODED:
        _DECODED.move_to_end(key)
        return _DECODED[key]
    built = _decode_images(found, cal, hold)
    for array in (built.calibration, built.holdout):
        array.flags.writeable = False
    _DECODED[key] = built
    while len(_DECODED) > _DECODED_LIMIT:
        _DECODED.popitem(last=False)
    return built


def _decode_images(found: _Found, cal: list[_Item], hold: list[_Item]) -> _Built:
    assert found.spec is not None
    ordered = [*cal, *hold]
    batch, bad = load_images([item.path for item in ordered], found.spec)
    failed = {Path(path): reason for path, reason in bad}
    kept = [item for item in ordered if item.path not in failed]
    n_cal = sum(1 for item in cal if item.path not in failed)
    skipped = [(item.name, failed[item.path]) for item in ordered if item.path in failed]
    return _split_rows(found, batch, kept, n_cal, skipped, len(cal))


def _load_arrays(found: _Found, cal: list[_Item], hold: list[_Item]) -> _Built:
    ordered = [*cal, *hold]
    if found.kind == "array-file":
        assert found.array is not None
        rows = np.asarray([item.index for item in ordered], dtype=np.intp)
        batch = np.ascontiguousarray(found.array[rows])  # copies just the chosen rows out of the map
        for item, row in zip(ordered, batch):
            _check_finite(row, f"{item.index} of '{found.source.name}'")
        return _split_rows(found, batch, ordered, len(cal), [], len(cal))
    samples: list[np.ndarray] = []
    kept: list[_Item] = []
    skipped: list[tuple[str, str]] = []
    for item in ordered:
        try:
            sample = _read_sample(item.path)
        except InputFileError as exc:
            skipped.append((item.name, exc.one_line().rstrip(".")))
            continue
        _check_finite(sample, f"'{item.name}'")
        if samples and (sample.shape, sample.dtype) != (samples[0].shape, samples[0].dtype):
            raise InputFileError(
                f"'{item.path}' holds a {sample.shape} {sample.dtype} sample but '{kept[0].path}' "
                f"holds {samples[0].shape} {samples[0].dtype}; all samples must match"
            )
        samples.append(sample)
        kept.append(item)
    if not samples:
        raise InputFileError(f"none of the {len(ordered)} chosen .npy files in '{found.source}' could be read")
    n_cal = sum(1 for item in kept if item in cal)
    return _split_rows(found, np.stack(samples), kept, n_cal, skipped, len(cal))


def _read_sample(path: Path) -> np.ndarray:
    check_array_file(path)
    try:
        sample = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise InputFileError(f"'{path.name}' {_array_problem(exc)}") from exc
    if not isinstance(sample, np.ndarray):  # a .npz renamed .npy
        sample.close()
        raise InputFileError(f"'{path.name}' is a .npz archive, not a .npy array")
    _check_numeric(sample, path)
    return sample


def _split_rows(
    found: _Found, batch: np.ndarray, kept: list[_Item], n_cal: int, skipped: list[tuple[str, str]], wanted: int
) -> _Built:
    """Cut a batch whose rows are ``kept`` (calibration items first) into the two parts."""
    if n_cal == 0:
        first = f"; first problem: {skipped[0][1]}" if skipped else ""
        raise InputFileError(f"none of the {wanted} chosen calibration samples could be read{first}")
    hold_items = kept[n_cal:]
    return _Built(
        calibration=batch[:n_cal].copy() if n_cal < len(batch) else batch,
        holdout=batch[n_cal:].copy(),
        calibration_files=[item.name for item in kept[:n_cal]],
        holdout_files=[item.name for item in hold_items],
        holdout_labels=_labels(found, [item.name for item in hold_items]),
        skipped=skipped,
    )


def _labels(found: _Found, names: Sequence[str]) -> np.ndarray | None:
    if found.labels is None:
        return None
    return np.asarray([found.labels[name] for name in names], dtype=np.int64)


def _assemble(found: _Found, built: _Built, key: str, state: CacheState, notes: tuple[str, ...]) -> CalibrationSet:
    if built.skipped:
        n = len(built.skipped)
        verb = "was" if n == 1 else "were"
        notes += (f"{n} chosen sample{'' if n == 1 else 's'} could not be read and {verb} not replaced",)
    for array in (built.calibration, built.holdout, built.holdout_labels):
        if array is not None:
            array.setflags(write=False)
    return CalibrationSet(
        calibration=built.calibration,
        holdout=built.holdout,
        calibration_files=tuple(built.calibration_files),
        holdout_files=tuple(built.holdout_files),
        holdout_labels=built.holdout_labels,
        class_names=found.class_names,
        spec=found.spec_dict,
        skipped=tuple(sorted([*found.skipped, *built.skipped])),
        key=key,
        cache=state,
        notes=notes,
    )


# ---- the disk cache -----------------------------------------------------------------


def _cached_images(
    cache_dir: Path, key: str, found: _Found, cal: list[_Item], hold: list[_Item]
) -> tuple[_Built, CacheState, tuple[str, ...]]:
    npz_path, json_path = _cache_paths(cache_dir, key)
    built, problem = _read_cache(npz_path, json_path, key, found, cal, hold)
    if built is not None:
        return built, "hit", ()
    notes = (f"cache entry ignored ({problem}) and rebuilt",) if problem else ()
    built = _decode_images(found, cal, hold)
    try:
        _write_cache(npz_path, json_path, key, found, built)
    except (OSError, OutputError) as exc:
        # The cache only saves time: a failed write must not fail a calibration run.
        notes += (f"cache not written ({exc})",)
    return built, "miss", notes


def _cache_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key[:16]}.npz", cache_dir / f"{key[:16]}.json"


def _write_cache(npz_path: Path, json_path: Path, key: str, found: _Found, built: _Built) -> None:
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"calibration": built.calibration, "holdout": built.holdout}
    if built.holdout_labels is not None:
        arrays["holdout_labels"] = built.holdout_labels
    with atomic_file(npz_path) as tmp:
        # A handle, not a name: np.savez appends ".npz" to names that lack it.
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        digest = sha256_file(tmp)
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "npz_sha256": digest,
        "spec": found.spec_dict,
        "class_names": list(found.class_names) if found.class_names is not None else None,
        "calibration_files": built.calibration_files,
        "holdout_files": built.holdout_files,
        "skipped": [list(entry) for entry in built.skipped],
    }
    # Written last: an entry only counts once its metadata (with the .npz checksum) exists.
    with atomic_file(json_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _read_cache(
    npz_path: Path, json_path: Path, key: str, found: _Found, cal: list[_Item], hold: list[_Item]
) -> tuple[_Built | None, str | None]:
    """The stored set if every check passes, else None and why (None for no entry at all)."""
    if not json_path.exists() and not npz_path.exists():
        return None, None
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        problem = _meta_problem(meta, key, found, cal, hold)
        if problem:
            return None, problem
        with open(npz_path, "rb") as handle:
            # Hash and load through one handle, so both see the same file even if it is replaced meanwhile.
            if _sha256_handle(handle) != meta["npz_sha256"]:
                return None, "its .npz does not match the recorded checksum"
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
    except _READ_ERRORS as exc:
        return None, f"unreadable: {type(exc).__name__}"
    return _arrays_check(meta, arrays, found)


def _meta_problem(meta: Any, key: str, found: _Found, cal: list[_Item], hold: list[_Item]) -> str | None:
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
        return "its metadata is for another key or format"
    classes = list(found.class_names) if found.class_names is not None else None
    if meta.get("spec") != found.spec_dict or meta.get("class_names") != classes:
        return "its metadata records another spec or class list"
    skipped = meta.get("skipped")
    if not isinstance(skipped, list) or not all(_is_str_pair(entry) for entry in skipped):
        return "its skipped-file list is malformed"
    bad = {entry[0] for entry in skipped}
    if not bad <= {item.name for item in (*cal, *hold)}:
        return "its skipped-file list names files that were not chosen"
    # The stored file lists must be exactly the chosen ones minus the skipped ones.
    if meta.get("calibration_files") != [item.name for item in cal if item.name not in bad]:
        return "its calibration file list does not match the chosen files"
    if meta.get("holdout_files") != [item.name for item in hold if item.name not in bad]:
        return "its holdout file list does not match the chosen files"
    if not isinstance(meta.get("npz_sha256"), str):
        return "its metadata has no .npz checksum"
    return None


def _arrays_check(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], found: _Found
) -> tuple[_Built | None, str | None]:
    assert found.spec is not None
    expected = {"calibration", "holdout"} | ({"holdout_labels"} if found.labels is not None else set())
    if set(arrays) != expected:
        return None, f"its .npz holds {sorted(arrays)}, expected {sorted(expected)}"
    cal, hold = arrays["calibration"], arrays["holdout"]
    shape, dtype = tuple(found.spec.output_shape), np.dtype(found.spec.dtype)
    parts = (("calibration", cal, meta["calibration_files"]), ("holdout", hold, meta["holdout_files"]))
    for part, array, files in parts:
        if array.ndim < 1 or array.shape[1:] != shape or array.dtype != dtype or len(array) != len(files):
            return None, f"its {part} array is {array.shape} {array.dtype}, expected {(len(files), *shape)} {dtype}"
    if len(cal) == 0:
        return None, "it holds no calibration samples"
    labels = _labels(found, meta["holdout_files"])
    stored = arrays.get("holdout_labels")
    if labels is not None and (stored is None or stored.dtype != np.int64 or not np.array_equal(stored, labels)):
        return None, "its holdout labels do not match the class folders"
    skipped = [(entry[0], entry[1]) for entry in meta["skipped"]]
    return _Built(cal, hold, meta["calibration_files"], meta["holdout_files"], labels, skipped), None


def _sha256_handle(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


# ---- small helpers ------------------------------------------------------------------


def _is_str_pair(entry: Any) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _skipped_text(skipped: Sequence[tuple[str, str]]) -> str:
    shown = [f"{name} ({reason})" for name, reason in skipped[:_SHOWN_SKIPPED]]
    more = len(skipped) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
