"""Reading a folder of sample images for calibration and verification.

Framework-free (numpy + Pillow only). Every problem a user can cause (missing
folder, no images, corrupt or huge files, too few images for the sample size)
is an ``InputFileError`` that says what to do; individual bad files are skipped
and reported with a reason rather than aborting a long run.
"""

from __future__ import annotations

import contextlib
import os
import random
import stat
import warnings
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from calibration.spec import PreprocessSpec
from toolchain.errors import InputFileError, UsageError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# Decoders tried, by content not suffix. Restricting them keeps a stray file named
# .jpg from reaching plugins such as EPS (which runs Ghostscript). JPEG also opens
# multi-picture (MPO) camera files.
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "WEBP", "TIFF", "GIF")

DEFAULT_MAX_PIXELS = 64_000_000
_SHOWN_SKIPPED = 3

# Bounds on one folder walk, so a folder that reaches far (a link to /, a deep tree) fails in
# seconds instead of listing the whole disk. Read at call time so tests can lower them.
MAX_WALK_ENTRIES = 100_000
MAX_WALK_DEPTH = 32

# Opt-in to follow links whose target is outside the folder (off: such a link is refused).
FOLLOW_LINKS_ENV = "EDGEKILN_CALIB_FOLLOW_LINKS"

_Walked = tuple[list[Path], list[tuple[Path, str]], int]
# Walks done inside ``listings_reused()``, by folder and options; None (the default) outside any such block,
# so a plain call always walks the disk and nothing is kept between commands.
_REUSED: ContextVar[dict[tuple[object, ...], _Walked] | None] = ContextVar("edgekiln_reused_listings",
                                                                          default=None)


@dataclass
class ImageListing:
    """Image files found under a folder (sorted) and the entries passed over, with reasons."""

    files: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    folder: Path | None = None

    def summary(self) -> str:
        where = f" in '{self.folder}'" if self.folder else ""
        text = f"{len(self.files)} image{'s' if len(self.files) != 1 else ''}{where}"
        if not self.skipped:
            return text
        return f"{text}; skipped {len(self.skipped)}: {_skipped_text(self.skipped, self.folder)}"


def list_images(folder: Path, *, recursive: bool = True) -> ImageListing:
    """Image files under ``folder`` in sorted order; raises ``InputFileError`` when there are none."""
    folder = Path(folder)
    if not folder.exists():
        raise InputFileError(f"image folder '{folder}' does not exist")
    if not folder.is_dir():
        raise InputFileError(f"'{folder}' is a file, expected a folder of images")
    files, skipped, seen = _walk(folder, recursive)
    if not files:
        detail = f"; {_skipped_text(skipped, folder)}" if skipped else ""
        raise InputFileError(
            f"no images found in '{folder}' (saw {seen} file{'' if seen == 1 else 's'}, "
            f"skipped {len(skipped)}{detail})",
            hint=f"Put {', '.join(IMAGE_SUFFIXES)} files there.",
        )
    return ImageListing(files=files, skipped=skipped, folder=folder)


def open_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image fully (first frame, EXIF orientation applied); refuse oversize ones before decoding."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"image '{path}' does not exist or is not a file")
    if path.stat().st_size == 0:
        raise InputFileError(f"image '{path}' is empty (0 bytes)")
    # Pillow's own bomb check warns (rather than fails) between 1x and 2x its limit;
    # make that an error here only, leaving the global filters and limit alone.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=_decoders()) as image:
                _check_pixels(image, path, max_pixels)
                image.seek(0)
                image.load()
                return _upright(image)
        except InputFileError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputFileError(
                f"image '{path}' is too large to decode safely ({exc})",
                hint="Shrink the image; Pillow refuses it as a possible decompression bomb.",
            ) from exc
        except UnidentifiedImageError as exc:
            raise InputFileError(
                f"'{path}' is not a JPEG, PNG, BMP, WebP, TIFF or GIF image (its content was not recognised)"
            ) from exc
        except PermissionError as exc:
            raise InputFileError(f"image '{path}' is not readable (permission denied)") from exc
        except Exception as exc:  # noqa: BLE001 - decoders raise many types on corrupt data
            raise InputFileError(f"image '{path}' is corrupt or truncated: {_reason(exc)}") from exc


def load_images(
    files: Sequence[Path],
    spec: PreprocessSpec,
    *,
    skip_bad: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Preprocess ``files`` into one (N, ...) array in ``spec.dtype``, plus the skipped files with reasons."""
    batch = np.empty((len(files), *spec.output_shape), dtype=spec.dtype)
    skipped: list[tuple[Path, str]] = []
    count = 0
    for path in files:
        try:
            batch[count] = spec.apply(open_image(Path(path), max_pixels=max_pixels))
        except InputFileError as exc:
            if not skip_bad:
                raise
            skipped.append((Path(path), exc.one_line().rstrip(".")))
            continue
        count += 1
    if count == 0:
        first = f"; first problem: {skipped[0][1]}" if skipped else ""
        raise InputFileError(f"none of the {len(files)} images could be used{first}")
    return batch[:count].copy() if count < len(files) else batch, skipped


def sample_files(files: Sequence[Path], count: int, *, seed: int = 0) -> list[Path]:
    """A seeded, order-independent choice of ``count`` distinct files, returned sorted."""
    if count < 1:
        raise UsageError(f"the calibration sample size must be at least 1, got {count}")
    pool = sorted({Path(f) for f in files})
    if count > len(pool):
        raise InputFileError(
            f"asked for {count} calibration images but only {len(pool)} are available",
            hint=f"Lower --calib-size to {len(pool)} or add more images.",
        )
    return sorted(random.Random(seed).sample(pool, count))


def labelled_folder(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """torchvision ``ImageFolder`` layout: one sub-folder per class, classes sorted by name.

    Unlike torchvision, hidden sub-folders (``.ipynb_checkpoints``) are not classes,
    and an empty class folder keeps its index instead of failing, so indices stay
    those of the full training set.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"labelled image folder '{folder}' does not exist or is not a folder")
    classes = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and _is_dir(e))
    if not classes:
        raise InputFileError(
            f"'{folder}' has no class sub-folders",
            hint=f"Arrange labelled images as {folder / 'CLASS_NAME' / 'image.jpg'}, one sub-folder per class.",
        )
    boundary = folder.resolve()  # a class folder linked elsewhere is outside the labelled folder
    samples = [
        (path, index)
        for index, name in enumerate(classes)
        for path in _walk(folder / name, True, boundary=boundary)[0]
    ]
    if not samples:
        raise InputFileError(
            f"the {len(classes)} class sub-folders of '{folder}' contain no images",
            hint=f"Put {', '.join(IMAGE_SUFFIXES)} files in them.",
        )
    return samples, classes


@contextlib.contextmanager
def listings_reused() -> Iterator[None]:
    """Inside the block, listing a folder again with the same options returns the first listing.

    Planning a fleet lists its shared calibration folder several times per model; this makes it once.
    The memo lives only as long as the block (a ``ContextVar``, so other threads and contexts walk as
    usual): a file added or removed is seen by the next block, or by any listing outside one. Keep the
    block around work that does not change the folder. Nested blocks share the outer block's memo.
    Listings that fail (no images, a link outside the folder, a walk limit) are not kept.
    """
    outer = _REUSED.get()
    token = _REUSED.set({} if outer is None else outer)
    try:
        yield
    finally:
        _REUSED.reset(token)


# ---- helpers -----------------------------------------------------------------


def _walk(root: Path, recursive: bool, *, boundary: Path | None = None) -> _Walked:
    """``_walk_disk``, or inside ``listings_reused()`` a copy of an earlier identical walk.

    The key has the folder as given (file paths are spelled from it) and resolved (a link repointed
    inside the block is a different folder), and every option and setting that changes the result.
    """
    memo = _REUSED.get()
    if memo is None:
        return _walk_disk(root, recursive, boundary=boundary)
    key = (os.fspath(root), os.path.realpath(root), recursive, boundary, os.environ.get(FOLLOW_LINKS_ENV) == "1",
           MAX_WALK_ENTRIES, MAX_WALK_DEPTH)
    if key in memo:
        files, skipped, seen = memo[key]
        return list(files), list(skipped), seen  # copies: a caller editing its lists must not change the memo
    walked = _walk_disk(root, recursive, boundary=boundary)
    if walked[0]:  # an empty walk is an error for list_images: the next call looks at the disk again
        memo[key] = (list(walked[0]), list(walked[1]), walked[2])
    return walked


def _walk_disk(root: Path, recursive: bool, *, boundary: Path | None = None) -> _Walked:
    """Files under ``root`` (sorted), skipped entries, and how many file entries were seen.

    Iterative (no recursion limit), follows directory links but visits each real
    directory once, so link loops end. A link whose target is outside ``boundary``
    (default: ``root`` resolved) is refused unless ``EDGEKILN_CALIB_FOLLOW_LINKS=1``;
    more than ``MAX_WALK_ENTRIES`` entries or ``MAX_WALK_DEPTH`` levels is refused.
    """
    inside = root.resolve() if boundary is None else boundary
    follow_outside = os.environ.get(FOLLOW_LINKS_ENV) == "1"
    if not follow_outside:
        _check_inside(root, inside)
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    visited: set[tuple[int, int]] = set()
    seen = 0
    entries_seen = 0
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            info = directory.stat()
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((directory, f"folder not readable ({_reason(exc)})"))
            continue
        if (info.st_dev, info.st_ino) in visited:
            skipped.append((directory, "folder already searched (a link loop or second link to it)"))
            continue
        visited.add((info.st_dev, info.st_ino))
        entries_seen += len(entries)
        if entries_seen > MAX_WALK_ENTRIES:
            raise InputFileError(
                f"'{root}' has more than {MAX_WALK_ENTRIES:,} entries; stopped searching it",
                hint="Point --calib at a folder of just the calibration images.",
            )
        subfolders: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            if _is_dir(entry):
                if entry.name.startswith("."):
                    skipped.append((path, "hidden folder"))
                elif not recursive:
                    skipped.append((path, "sub-folder not searched (not recursive)"))
                elif depth + 1 > MAX_WALK_DEPTH:
                    raise InputFileError(
                        f"'{path}' is more than {MAX_WALK_DEPTH} folders deep in '{root}'; stopped searching",
                        hint="Point --calib at a shallower folder of images.",
                    )
                else:
                    if not follow_outside:
                        _check_inside(path, inside)
                    subfolders.append(path)
                continue
            seen += 1
            problem = _file_problem(entry)
            if problem:
                skipped.append((path, problem))
                continue
            if not follow_outside:
                _check_inside(path, inside)
            files.append(path)
        stack.extend((folder, depth + 1) for folder in reversed(subfolders))  # depth-first, in name order
    return sorted(files), sorted(skipped), seen


def refuse_link_outside(path: Path, folder: Path) -> None:
    """Refuse ``path`` when it resolves outside ``folder``, unless following such links was opted into."""
    if os.environ.get(FOLLOW_LINKS_ENV) != "1":
        _check_inside(Path(path), Path(folder).resolve())


def _check_inside(path: Path, inside: Path) -> None:
    """Refuse ``path`` when links take it outside ``inside`` (a link to / would list the whole disk)."""
    target = Path(os.path.realpath(path))
    if target == inside or target.is_relative_to(inside):
        return
    raise InputFileError(
        f"'{path}' is a link that points to '{target}', outside the calibration folder '{inside}'; "
        "it is not followed",
        hint=f"Copy the files into the folder, or set {FOLLOW_LINKS_ENV}=1 to follow links out of it.",
    )


def _file_problem(entry: os.DirEntry[str]) -> str | None:
    """Why a directory entry is not a usable image file, or None; no file is opened."""
    if entry.name.startswith("."):
        return "hidden file"
    suffix = os.path.splitext(entry.name)[1].lower()
    if suffix not in IMAGE_SUFFIXES:
        return f"not an image file (suffix '{suffix}')" if suffix else "not an image file (no suffix)"
    try:
        info = entry.stat()  # follows links
    except FileNotFoundError:
        return "broken symbolic link"
    except OSError as exc:
        return f"cannot be inspected ({_reason(exc)})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"  # a FIFO or device would block or never end
    if info.st_size == 0:
        return "empty file (0 bytes)"
    if not os.access(entry.path, os.R_OK):
        return "not readable (permission denied)"
    return None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def _check_pixels(image: Image.Image, path: Path, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise InputFileError(
            f"image '{path}' is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; it is refused unread as a possible decompression bomb",
            hint="Shrink the image, or raise the pixel limit if it is genuine.",
        )


def _upright(image: Image.Image) -> Image.Image:
    """Current frame as an in-memory image, rotated per its EXIF orientation tag."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF: the pixels are still good
        return image.copy()


def _decoders() -> tuple[str, ...]:
    """``_PIL_FORMATS`` this Pillow build has (Image.open raises KeyError for an unknown one)."""
    Image.init()  # loads the plugins once; later calls return at once
    return tuple(name for name in _PIL_FORMATS if name in Image.OPEN)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _skipped_text(skipped: Sequence[tuple[Path, str]], folder: Path | None) -> str:
    shown = [f"{_short(path, folder)} ({reason})" for path, reason in skipped[:_SHOWN_SKIPPED]]
    more = len(skipped) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _short(path: Path, folder: Path | None) -> str:
    if folder is not None:
        try:
            return str(path.relative_to(folder))
        except ValueError:
            pass
    return str(path)
