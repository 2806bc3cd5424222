"""Scan a Keras image-folder dataset and load a split into arrays.

Layout: ``DATA_DIR/<split>/<class>/<file>`` (files may sit in sub-folders of the
class folder, as with ``keras.utils.image_dataset_from_directory``). The folder a
file sits in is only its *initial* label: the label store holds the curated one.

Split folders go by the names datasets use in the wild, in any case: ``train``,
``training``; ``test``, ``testing``; and ``val``, ``validation``, ``valid`` as the
test split when there is no test folder. Stored paths are the real ones on disk;
the split stored with them is the canonical name (``Settings.train_split`` /
``Settings.test_split``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from training.data.images import ImageError, load_model_input, open_image
from training.errors import Invalid, Missing
from training.settings import Settings

log = logging.getLogger(__name__)

# Import checks that every file decodes; a JPEG may be decoded at reduced scale for that (still every byte).
VALIDATION_SIZE = 32
# Folder names (compared lower-cased) understood as each split, besides the canonical names themselves.
TRAIN_FOLDER_NAMES = ("train", "training")
TEST_FOLDER_NAMES = ("test", "testing")
# A validation folder stands in for a missing test folder: both are held out from training.
VALIDATION_FOLDER_NAMES = ("val", "validation", "valid")
# Files handed to the hashing threads at a time (their futures live until the slice is done).
INSPECT_BATCH = 4096


@dataclass(frozen=True, slots=True)  # slots: a scan holds one per image (1M at issue 26's scale)
class ScannedFile:
    path: str  # relative to DATA_DIR, POSIX separators
    split: str
    folder_label: str
    sha256: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What a previous scan knew about a file; lets a rescan skip unchanged files."""

    sha256: str
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    files: list[ScannedFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # about folders: empty classes, ignored splits
    split_folders: dict[str, str] = field(default_factory=dict)  # canonical split -> folder name on disk


class MissingSplitError(Missing):
    """A split with no images (e.g. a dataset without a test folder): nothing to evaluate, not accuracy 0."""

    def __init__(self, data_dir: Path, split: str, *, test_split: str = "test") -> None:
        names = (split, *(TRAIN_FOLDER_NAMES if split != test_split else TEST_FOLDER_NAMES + VALIDATION_FOLDER_NAMES))
        folders = ", ".join(f"{name}/" for name in dict.fromkeys(names))
        super().__init__(
            f"no {split} split in DATA_DIR {data_dir}: no images in a {folders} folder there. "
            f"Put labelled images in {split}/<class>/ and run `bouncer import`"
        )


@dataclass(frozen=True)
class SplitFolders:
    """The folder on disk (its real name) that holds each split, if any, and what was set aside."""

    train: str | None
    test: str | None
    warnings: tuple[str, ...] = ()

    def by_split(self, train_split: str, test_split: str) -> dict[str, str]:
        """Canonical split name -> folder name, for the splits that have a folder."""
        found = {train_split: self.train, test_split: self.test}
        return {split: folder for split, folder in found.items() if folder is not None}


def find_split_folders(data_dir: Path, train_split: str = "train", test_split: str = "test") -> SplitFolders:
    """Which sub-folders of ``data_dir`` are the train and test splits (names compared in any case).

    ``val``/``validation``/``valid`` is the test split when no test folder exists (logged),
    and is ignored with a warning when one does. Two folders for one split (``train`` and
    ``Training``) are a ValueError: which one is meant is the user's call.
    """
    folders = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def matching(names: Iterable[str]) -> list[str]:
        wanted = {n.lower() for n in names}
        return [f for f in folders if f.lower() in wanted]

    def one(split: str, names: Iterable[str]) -> str | None:
        found = matching(names)
        if len(found) > 1:
            raise Invalid(f"{data_dir} has {len(found)} folders for the {split} split ({', '.join(found)}); keep one")
        return found[0] if found else None

    train = one(train_split, (train_split, *TRAIN_FOLDER_NAMES))
    test = one(test_split, (test_split, *TEST_FOLDER_NAMES))
    warnings: list[str] = []
    validation = matching(VALIDATION_FOLDER_NAMES)
    if test is not None:
        warnings += [f"{v}/ ignored: {test}/ is the {test_split} split" for v in validation]
    elif validation:
        test = one(test_split, VALIDATION_FOLDER_NAMES)
        log.info("using %s/ as the %s split (there is no test folder)", test, test_split)
    return SplitFolders(train, test, tuple(warnings))


def has_class_folders(folder: Path) -> bool:
    """A split folder that can be read: it holds at least one (non-hidden) class folder."""
    return any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def folder_contents(data_dir: Path, *, limit: int = 12) -> list[str]:
    """What a user put in ``data_dir`` (folders end with ``/``), without hidden entries and READMEs.

    An empty answer means the folder is free for the demo data: the repository's own
    ``data/`` holds only a README and DVC's ``.gitignore``.
    """
    entries = sorted(
        f"{p.name}/" if p.is_dir() else p.name
        for p in data_dir.iterdir()
        if not p.name.startswith(".") and not p.name.lower().startswith("readme")
    )
    return entries if len(entries) <= limit else [*entries[:limit], f"... ({len(entries) - limit} more)"]


def scan_folder(
    data_dir: Path,
    splits: tuple[str, str],
    *,
    max_pixels: int,
    known: Mapping[str, Fingerprint] | None = None,
) -> ScanResult:
    """List every readable image under ``data_dir/<split folder>/<class>/``.

    ``splits`` are the canonical (train, test) names; the folders holding them are
    found by :func:`find_split_folders`. Files whose size and mtime match ``known``
    are trusted without decoding again; everything else is fully decoded, and files
    Pillow cannot read are reported in ``skipped`` instead of raising. A class folder
    without one readable image is reported in ``warnings`` and is not a class.
    """
    if not data_dir.is_dir():
        raise Missing(f"data directory {data_dir} does not exist")
    train_split, test_split = splits
    known = known or {}
    split_folders = find_split_folders(data_dir, train_split, test_split)
    result = ScanResult(warnings=list(split_folders.warnings))
    result.split_folders = split_folders.by_split(train_split, test_split)
    class_folders: list[tuple[str, str, str]] = []  # (split, folder on disk, class)
    for split in splits:
        folder = result.split_folders.get(split)
        if folder is None:
            log.warning("%s has no %s split folder; no %s images", data_dir, split, split)
            continue
        split_dir = data_dir / folder
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            class_folders.append((split, folder, class_dir.name))
        for stray in sorted(p for p in split_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            result.skipped.append((_relative(stray, data_dir), "file is not inside a class folder"))
    root = str(data_dir)

    def inspect(item: tuple[str, str, str]) -> ScannedFile | tuple[str, str]:
        return _inspect(item, root, known, max_pixels)

    files = _files(data_dir, class_folders)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        # a slice at a time: Executor.map makes every future up front (~1.8 KB each with its work item)
        while batch := list(itertools.islice(files, INSPECT_BATCH)):
            for outcome in pool.map(inspect, batch):
                if isinstance(outcome, ScannedFile):
                    result.files.append(outcome)
                else:
                    result.skipped.append(outcome)
    result.classes, class_warnings = _classes(result.files, class_folders, train_split, result.split_folders)
    result.warnings += class_warnings
    for path, reason in result.skipped:
        log.warning("skipped %s: %s", path, reason)
    for warning in result.warnings:
        log.warning("%s", warning)
    return result


def _files(data_dir: Path, class_folders: list[tuple[str, str, str]]) -> Iterator[tuple[str, str, str]]:
    """(path relative to data_dir, split, class) of every file in the class folders, in a stable order, as walked.

    Strings, not Paths (a Path was ~430 bytes, 3 times the string and its tuple), and never all listed at once.
    """
    for split, folder, name in class_folders:
        label = sys.intern(name)
        for walked, dirs, names in os.walk(data_dir / folder / name):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            prefix = _relative(Path(walked), data_dir) + "/"
            yield from ((prefix + file, split, label) for file in sorted(names) if not file.startswith("."))


def _inspect(
    item: tuple[str, str, str], root: str, known: Mapping[str, Fingerprint], max_pixels: int
) -> ScannedFile | tuple[str, str]:
    """A file's record, or (path, why it is skipped); a file `known` at the same size and mtime is not decoded."""
    relative, split, label = item
    path = os.path.join(root, relative)
    stat = os.stat(path)
    previous = known.get(relative)
    if previous and previous.size == stat.st_size and previous.mtime_ns == stat.st_mtime_ns:
        return ScannedFile(relative, split, label, previous.sha256, previous.size, previous.mtime_ns)  # shared
    else:
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            open_image(data, max_pixels=max_pixels, shrink_to=VALIDATION_SIZE)
        except ImageError as exc:
            return (relative, str(exc))
        digest = hashlib.sha256(data).hexdigest()
    return ScannedFile(relative, split, label, digest, stat.st_size, stat.st_mtime_ns)


def _classes(
    files: list[ScannedFile], class_folders: list[tuple[str, str, str]], train_split: str, split_folders: dict[str, str]
) -> tuple[list[str], list[str]]:
    """The classes with at least one readable image, and warnings about the folders that are not."""
    counts: dict[tuple[str, str], int] = {}
    for scanned in files:
        key = (scanned.split, scanned.folder_label)
        counts[key] = counts.get(key, 0) + 1
    classes = sorted({label for _, label in counts})
    warnings = [
        f"{folder}/{label}/ holds no readable image" + ("" if label in classes else f": {label!r} is not a class")
        for split, folder, label in class_folders
        if (split, label) not in counts
    ]
    trained = {label for split, label in counts if split == train_split}
    train_folder = split_folders.get(train_split, train_split)
    warnings += [
        f"class {label!r} has {split} images but no {train_folder}/{label}/ images: no model learns it"
        for split, label in sorted(counts)
        if split != train_split and label not in trained
    ]
    return classes, warnings


def load_images(data_dir: Path, paths: Iterable[str], size: int, *, max_pixels: int) -> np.ndarray:
    """Decode images once into a uint8 array of shape (n, size, size, 3)."""
    paths = list(paths)
    if not paths:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = list(pool.map(lambda p: load_model_input(data_dir / p, size, max_pixels=max_pixels), paths))
    return np.stack(arrays)


class HasPath(Protocol):
    path: str  # relative to DATA_DIR


def load_records(settings: Settings, records: Iterable[HasPath], size: int) -> np.ndarray:
    """Decode the images of ``records`` (e.g. label-store records) at the model's input size."""
    return load_images(settings.data_dir, [r.path for r in records], size, max_pixels=settings.max_image_pixels)


def resolve_inside(data_dir: Path, relative: str) -> Path:
    """Absolute path of a stored relative path, refusing anything that escapes data_dir."""
    root = data_dir.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise PermissionError(f"path {relative!r} is outside the data directory")
    return candidate


def _relative(path: Path, data_dir: Path) -> str:
    return path.relative_to(data_dir).as_posix()
