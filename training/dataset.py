"""Scan a Keras image-folder dataset and load a split into arrays.

Layout: ``DATA_DIR/<split>/<class>/<file>`` (files may sit in sub-folders of the
class folder, as with ``keras.utils.image_dataset_from_directory``). The folder a
file sits in is only its *initial* label: the label store holds the curated one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.images import ImageError, load_model_input, open_image

log = logging.getLogger(__name__)

# Import checks that every file decodes; a JPEG may be decoded at reduced scale for that (still every byte).
VALIDATION_SIZE = 32


@dataclass(frozen=True)
class ScannedFile:
    path: str  # relative to DATA_DIR, POSIX separators
    split: str
    folder_label: str
    sha256: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
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


def scan_folder(
    data_dir: Path,
    splits: Iterable[str],
    *,
    max_pixels: int,
    known: Mapping[str, Fingerprint] | None = None,
) -> ScanResult:
    """List every readable image under ``data_dir/<split>/<class>/``.

    Files whose size and mtime match ``known`` are trusted without decoding again;
    everything else is fully decoded, and files Pillow cannot read are reported in
    ``skipped`` instead of raising.
    """
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist")
    known = known or {}
    result = ScanResult()
    classes: set[str] = set()
    candidates: list[tuple[Path, str, str]] = []
    for split in splits:
        split_dir = data_dir / split
        if not split_dir.is_dir():
            log.warning("split folder %s is missing; no %s images", split_dir, split)
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            classes.add(class_dir.name)
            for root, dirs, names in os.walk(class_dir):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if not name.startswith("."):
                        candidates.append((Path(root) / name, split, class_dir.name))
        for stray in sorted(p for p in split_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            result.skipped.append((_relative(stray, data_dir), "file is not inside a class folder"))

    def inspect(item: tuple[Path, str, str]) -> ScannedFile | tuple[str, str]:
        path, split, label = item
        relative = _relative(path, data_dir)
        stat = path.stat()
        previous = known.get(relative)
        if previous and previous.size == stat.st_size and previous.mtime_ns == stat.st_mtime_ns:
            digest = previous.sha256
        else:
            data = path.read_bytes()
            try:
                open_image(data, max_pixels=max_pixels, shrink_to=VALIDATION_SIZE)
            except ImageError as exc:
                return (relative, str(exc))
            digest = hashlib.sha256(data).hexdigest()
        return ScannedFile(relative, split, label, digest, stat.st_size, stat.st_mtime_ns)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        for outcome in pool.map(inspect, candidates):
            if isinstance(outcome, ScannedFile):
                result.files.append(outcome)
            else:
                result.skipped.append(outcome)
    for path, reason in result.skipped:
        log.warning("skipped %s: %s", path, reason)
    result.classes = sorted(classes)
    return result


def load_images(data_dir: Path, paths: Iterable[str], size: int, *, max_pixels: int) -> np.ndarray:
    """Decode images once into a uint8 array of shape (n, size, size, 3)."""
    paths = list(paths)
    if not paths:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = list(pool.map(lambda p: load_model_input(data_dir / p, size, max_pixels=max_pixels), paths))
    return np.stack(arrays)


def resolve_inside(data_dir: Path, relative: str) -> Path:
    """Absolute path of a stored relative path, refusing anything that escapes data_dir."""
    root = data_dir.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise PermissionError(f"path {relative!r} is outside the data directory")
    return candidate


def _relative(path: Path, data_dir: Path) -> str:
    return path.relative_to(data_dir).as_posix()
