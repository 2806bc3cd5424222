"""Batch scores on disk: probabilities, embeddings and reduced vectors of every image of a dataset folder.

A score folder holds numbered shards ``part-00000.npz``, ... and one ``manifest.json``.
Each shard has, row for row:

- ``paths``: the image's path relative to DATA_DIR, POSIX separators (``train/dog/x.jpg``),
  the same string the label store keeps;
- ``sha256``: hex digest of the file's bytes, so a reader can tell a changed file;
- ``probabilities`` (n, K), ``embeddings`` (n, D), ``vectors`` (n, d): float32.

Rows are in no particular order across shards (engines finish chunks in any order):
:func:`read_scores` sorts them by path, and :func:`iter_shards` hands them over a shard
at a time for readers that must not hold millions of rows at once. The manifest is
written last: a folder without one is an unfinished run, and its shard count tells a
partial copy. Shards are plain ``.npz`` without pickles, readable by numpy alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import Invalid, Missing
from training.settings import Settings

MANIFEST_FILE = "manifest.json"
SHARD_GLOB = "part-*.npz"
ARRAYS = ("paths", "sha256", "probabilities", "embeddings", "vectors")


def shard_name(number: int) -> str:
    """``part-00042.npz``: zero-padded, so a plain sort is the write order."""
    return f"part-{number:05d}.npz"


def default_scores_dir(settings: Settings, version: str) -> Path:
    """Where ``bouncer score`` writes a model version's scores: beside the dataset's other state."""
    return settings.runtime_dir / "scores" / version


class ScoresMismatch(Invalid):
    """A score folder that is not what the caller needs: another model, unfinished, or shards missing."""


@dataclass(frozen=True)
class ScoreManifest:
    """What made a score folder, and how fast."""

    model_tag: str
    class_names: list[str]
    image_size: int
    engine: str  # "local" or "ray"
    images: int  # rows over all shards
    shards: int
    skipped: int  # files that are not readable images
    splits: list[str]
    seconds: float
    images_per_second: float
    created: str  # ISO 8601, UTC

    @property
    def version(self) -> str:
        return self.model_tag.split(":", 1)[-1]


@dataclass(frozen=True)
class Scores:
    """Every row of a score folder, sorted by path."""

    paths: np.ndarray  # (n,) str
    sha256: np.ndarray  # (n,) str
    probabilities: np.ndarray  # (n, K) float32
    embeddings: np.ndarray  # (n, D) float32
    vectors: np.ndarray  # (n, d) float32
    manifest: ScoreManifest

    def __len__(self) -> int:
        return len(self.paths)


def write_shard(
    folder: Path,
    number: int,
    *,
    paths: Sequence[str] | np.ndarray,
    sha256: Sequence[str] | np.ndarray,
    probabilities: np.ndarray,
    embeddings: np.ndarray,
    vectors: np.ndarray,
) -> Path:
    """Write shard ``number`` atomically (a reader never sees half a shard); its path."""
    arrays = {
        "paths": np.asarray(paths, dtype=str),
        "sha256": np.asarray(sha256, dtype=str),
        "probabilities": np.asarray(probabilities, dtype=np.float32),
        "embeddings": np.asarray(embeddings, dtype=np.float32),
        "vectors": np.asarray(vectors, dtype=np.float32),
    }
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"a shard's arrays need one row per image, got {lengths}")
    for name in ("probabilities", "embeddings", "vectors"):
        if arrays[name].ndim != 2:
            raise ValueError(f"{name} must be 2-D (n, width), got shape {arrays[name].shape}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / shard_name(number)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".part-", suffix=".npz", delete=False) as handle:
        np.savez(handle, **arrays)  # uncompressed: float vectors barely compress, and reads stay mmap-fast
    os.replace(handle.name, target)
    return target


def clear_scores(folder: Path) -> None:
    """Remove a previous run's shards and manifest, so stale shards never mix with new ones."""
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    for shard in folder.glob(SHARD_GLOB):
        shard.unlink()


def write_manifest(folder: Path, manifest: ScoreManifest) -> Path:
    """Write the manifest last: its presence marks the folder complete."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MANIFEST_FILE
    temporary = folder / f".{MANIFEST_FILE}.tmp"
    temporary.write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    os.replace(temporary, target)
    return target


def read_manifest(folder: Path) -> ScoreManifest:
    """The manifest of a finished score folder; FileNotFoundError for a folder never (or not fully) scored."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise Missing(f"no scores in {folder}: {MANIFEST_FILE} is missing (run `bouncer score`)")
    data: dict[str, Any] = json.loads(path.read_text())
    known = {f.name for f in fields(ScoreManifest)}
    missing = sorted(known - data.keys())
    if missing:
        raise ScoresMismatch(f"{path} lacks {', '.join(missing)}: written by another version of Bouncer?")
    return ScoreManifest(**{key: value for key, value in data.items() if key in known})  # newer keys ignored


def check_manifest(folder: Path, model_tag: str) -> ScoreManifest:
    """The folder's manifest if it was scored by ``model_tag``; ScoresMismatch otherwise (stale scores)."""
    manifest = read_manifest(folder)
    if manifest.model_tag != model_tag:
        raise ScoresMismatch(
            f"the scores in {folder} were made by {manifest.model_tag}, not {model_tag}: "
            f"run `bouncer score --model {model_tag}`"
        )
    return manifest


def iter_shards(folder: Path, *, model_tag: str | None = None) -> Iterator[Scores]:
    """Each shard of ``folder`` in turn (rows as written), for readers that must not hold every row at once.

    Checked as :func:`read_scores` checks (manifest, model, shard count) before the first shard.
    """
    manifest = check_manifest(folder, model_tag) if model_tag else read_manifest(folder)
    shards = sorted(folder.glob(SHARD_GLOB))
    if len(shards) != manifest.shards:
        raise ScoresMismatch(f"{folder} has {len(shards)} shards, its manifest says {manifest.shards}")
    return (_read_shard(shard, manifest) for shard in shards)


def read_scores(folder: Path, *, model_tag: str | None = None) -> Scores:
    """Every shard of ``folder`` as one set of arrays sorted by path, with the manifest.

    ``model_tag``: refuse scores made by another version. A shard count or row count
    that differs from the manifest's is a ScoresMismatch (a partial copy, a mixed folder).
    """
    shards = list(iter_shards(folder, model_tag=model_tag))
    manifest = shards[0].manifest if shards else read_manifest(folder)
    if not shards:
        return Scores(
            np.zeros(0, dtype=str),
            np.zeros(0, dtype=str),
            np.zeros((0, len(manifest.class_names)), np.float32),
            np.zeros((0, 0), np.float32),
            np.zeros((0, 0), np.float32),
            manifest,
        )
    arrays = {name: np.concatenate([getattr(shard, name) for shard in shards]) for name in ARRAYS}
    if len(arrays["paths"]) != manifest.images:
        raise ScoresMismatch(f"{folder} holds {len(arrays['paths'])} rows, its manifest says {manifest.images}")
    order = np.argsort(arrays["paths"], kind="stable")
    return Scores(**{name: array[order] for name, array in arrays.items()}, manifest=manifest)


def _read_shard(path: Path, manifest: ScoreManifest) -> Scores:
    with np.load(path, allow_pickle=False) as loaded:
        return Scores(**{name: loaded[name] for name in ARRAYS}, manifest=manifest)


def new_manifest(
    *,
    model_tag: str,
    class_names: Sequence[str],
    image_size: int,
    engine: str,
    images: int,
    shards: int,
    skipped: int,
    splits: Sequence[str],
    seconds: float,
) -> ScoreManifest:
    """A manifest stamped now, with the throughput worked out once."""
    return ScoreManifest(
        model_tag=model_tag,
        class_names=list(class_names),
        image_size=int(image_size),
        engine=engine,
        images=int(images),
        shards=int(shards),
        skipped=int(skipped),
        splits=list(splits),
        seconds=round(float(seconds), 3),
        images_per_second=round(images / seconds, 1) if seconds > 0 else 0.0,
        created=datetime.now(UTC).isoformat(),  # to the microsecond: readers may key caches on it
    )
