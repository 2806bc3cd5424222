"""A split's images at the model's input size, in memory or in one file decoded once, read by rows.

Before issue 26 a training decoded every image into one array and every later step
copied it (the validation split, the tf.data cache, the fold models' subsets, float32
casts): 390 KB of memory per 160 px photo, out of memory near 50,000 photos on 24 GB.
Now a split whose decoded pixels pass ``BOUNCER_INPUT_MEMORY_MB`` is decoded once into
``STATE_DIR/decoded/<key>.npy`` (a plain ``.npy``, ``np.load(mmap_mode="r")`` reads it)
and every pass reads the rows it needs from that file: memory is a chunk, not the dataset.

The file is named by what it holds: the image size and every file's path and sha256
(not the labels, so a relabelled dataset reuses it). It is written under a temporary
name and renamed when complete, so a training killed while decoding leaves nothing a
later run trusts; the next write removes such leftovers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import psutil

from training.data.folders import load_records
from training.data.images import load_model_input
from training.errors import Invalid
from training.settings import Settings

log = logging.getLogger(__name__)

# Bump when the decode path (training.data.images) changes what pixels a file gives: old files stop matching.
DECODE_VERSION = 1
DECODED_KEPT = 4  # decoded files kept in STATE_DIR/decoded (train and test of the last two datasets/sizes)
DECODE_CHUNK = 2048  # images decoded (in parallel) and written at a time
PARTIAL_SUFFIX = ".partial"
DEFAULT_MEMORY_MB = 256  # Settings.input_memory_mb's default, for callers without settings


@runtime_checkable
class DecodedImages(Protocol):
    """Images of shape (size, size, 3) uint8, read by row number."""

    image_size: int

    def __len__(self) -> int: ...

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The images of ``rows``, in that order: (len(rows), size, size, 3) uint8."""
        ...


@dataclass(frozen=True)
class InMemoryImages:
    """A decoded array: what a small dataset trains from, as before."""

    array: np.ndarray  # (n, size, size, 3) uint8

    @property
    def image_size(self) -> int:
        return int(self.array.shape[1])

    def __len__(self) -> int:
        return len(self.array)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.array[np.asarray(rows, dtype=np.int64)]


class DecodedFile:
    """A ``.npy`` file of (n, size, size, 3) uint8 images, read with ``pread``: nothing is mapped or cached here.

    Picklable (it holds a path): a Ray task on another node opens the same file on the shared mount.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            fmt = np.lib.format
            shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(
                handle
            )
            self.offset = handle.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
            raise Invalid(f"{self.path} does not hold (n, s, s, 3) uint8 images: {dtype} {shape}")
        self.count, self.image_size = int(shape[0]), int(shape[1])
        self.row_bytes = self.image_size * self.image_size * 3
        self._fd: int | None = None

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"])  # type: ignore[misc, arg-type]

    def __len__(self) -> int:
        return self.count

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.image_size, self.image_size, 3), np.uint8)
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.count:
            raise IndexError(f"rows outside 0..{self.count - 1}")
        fd, size = self._descriptor(), self.row_bytes
        if rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):  # a run: one read
            data = self._read(fd, len(rows) * size, self.offset + int(rows[0]) * size)
            out.reshape(-1)[:] = np.frombuffer(data, np.uint8)
            return out
        flat = out.reshape(len(rows), size)
        for i, row in enumerate(rows.tolist()):
            flat[i] = np.frombuffer(self._read(fd, size, self.offset + row * size), np.uint8)
        return out

    def _read(self, fd: int, size: int, offset: int) -> bytes:
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self.path} is shorter than its header says (truncated?)")
        return data


@dataclass(frozen=True)
class RowsOf:
    """Some rows of another source, renumbered from 0 (a fold's part, the validation split): no copy."""

    source: DecodedImages
    rows: np.ndarray

    @property
    def image_size(self) -> int:
        return self.source.image_size

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.source.take(self.rows[np.asarray(rows, dtype=np.int64)])


def subset(images: DecodedImages, rows: np.ndarray) -> DecodedImages:
    """``rows`` of ``images``: a copy of an in-memory array (as before), a view of a file."""
    if isinstance(images, InMemoryImages):
        return InMemoryImages(images.take(rows))
    return RowsOf(images, np.asarray(rows, dtype=np.int64))


def chunks(images: DecodedImages, size: int) -> Iterator[np.ndarray]:
    """Every image in order, ``size`` rows at a time."""
    for start in range(0, len(images), size):
        yield images.take(np.arange(start, min(start + size, len(images))))


def chunk_rows(image_size: int, memory_mb: int = DEFAULT_MEMORY_MB, *, least: int = 256, most: int = 4096) -> int:
    """Images of ``image_size`` px a pass takes at once: a chunk and its float32 copy within a tenth of the budget.

    At least ``least`` (a prediction batch), at most ``most``: 4096 at 32 px, 256 at 160 px with 256 MB.
    """
    per_image = image_size * image_size * 3 * 5  # uint8 + float32
    return int(max(least, min(most, memory_mb * 1024 * 1024 // 10 // per_image)))


def decoded_bytes(count: int, image_size: int) -> int:
    return count * image_size * image_size * 3


def decode_key(paths: Sequence[str], sha256s: Sequence[str], image_size: int) -> str:
    """What a decoded file holds, as a hex digest: the size, the decode path's version, every file's path and bytes."""
    digest = hashlib.sha256(f"decoded v{DECODE_VERSION} {image_size}px {len(paths)}\n".encode())
    for path, sha in zip(paths, sha256s, strict=True):
        digest.update(f"{path}\0{sha}\n".encode())
    return digest.hexdigest()[:32]


def decode_to_file(
    folder: Path,
    data_dir: Path,
    paths: Sequence[str],
    sha256s: Sequence[str],
    image_size: int,
    *,
    max_pixels: int,
) -> DecodedFile:
    """The decoded file of these images, written now unless a complete one exists; leftovers of killed runs go."""
    key = decode_key(paths, sha256s, image_size)
    target = folder / f"{key}.npy"
    if target.is_file():
        os.utime(target)  # recently used: kept by the clean-up below
        log.info("decoded images found: %s", target)
        return DecodedFile(target)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    needed = decoded_bytes(len(paths), image_size)
    free = shutil.disk_usage(folder).free
    if needed > free * 0.9:
        raise Invalid(
            f"decoding {len(paths):,} images at {image_size} px needs {needed / 1e9:.1f} GB in {folder}, "
            f"{free / 1e9:.1f} GB are free: free some, or point BOUNCER_STATE_DIR at a larger disk"
        )
    partial = folder / f"{key}.{os.getpid()}{PARTIAL_SUFFIX}"
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(paths), image_size, image_size, 3)}
    workers = min(8, (os.cpu_count() or 1) * 2)
    log.info("decoding %d images at %d px into %s", len(paths), image_size, target)
    with partial.open("wb") as handle, ThreadPoolExecutor(max_workers=workers) as pool:
        np.lib.format.write_array_header_2_0(handle, header)
        for start in range(0, len(paths), DECODE_CHUNK):
            chunk = paths[start : start + DECODE_CHUNK]
            for array in pool.map(lambda p: load_model_input(data_dir / p, image_size, max_pixels=max_pixels), chunk):
                handle.write(array.tobytes())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, target)  # complete, or absent
    _keep_newest(folder, DECODED_KEPT)
    return DecodedFile(target)


class HasPathAndDigest(Protocol):
    path: str  # relative to DATA_DIR
    sha256: str


def decode_records(
    settings: Settings, records: Sequence[HasPathAndDigest], image_size: int, *, to_file: bool
) -> DecodedImages:
    """The images of ``records`` at ``image_size``: one array in memory, or (``to_file``) the decoded file."""
    if not to_file:
        return InMemoryImages(load_records(settings, records, image_size))
    return decode_to_file(
        settings.runtime_dir / "decoded",
        settings.data_dir,
        [r.path for r in records],
        [r.sha256 for r in records],
        image_size,
        max_pixels=settings.max_image_pixels,
    )


def streams(settings: Settings, count: int, image_size: int) -> bool:
    """Whether a training of ``count`` images streams them from a decoded file (``BOUNCER_TRAIN_INPUT``)."""
    if settings.train_input != "auto":
        return settings.train_input == "stream"
    return decoded_bytes(count, image_size) > settings.input_memory_mb * 1024 * 1024


def _remove_leftovers(folder: Path) -> None:
    """Partial files of processes that are gone (a killed training): never read, only removed."""
    for partial in folder.glob(f"*{PARTIAL_SUFFIX}"):
        pid = partial.name.removesuffix(PARTIAL_SUFFIX).rsplit(".", 1)[-1]
        if not pid.isdigit() or not psutil.pid_exists(int(pid)):
            log.info("removing %s, left by a run that stopped while decoding", partial)
            partial.unlink(missing_ok=True)


def _keep_newest(folder: Path, kept: int) -> None:
    files = sorted(folder.glob("*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[kept:]:
        old.unlink(missing_ok=True)
