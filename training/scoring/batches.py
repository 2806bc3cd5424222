"""What both engines do: list a folder's images, and score a batch of them exactly as serving would.

:class:`Scorer` reads a file once (its bytes give the sha256 and the pixels), decodes it
with :func:`training.data.images.load_model_input` (the serving preprocessing), runs the
registered ONNX graph and applies the version's fitted embedder. The local engine calls it
from one thread per core; each Ray actor holds its own. A file that is not a readable image is
skipped with its reason, never fatal: one bad file in a million must not stop a run.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import joblib
import numpy as np
from sklearn.pipeline import Pipeline

from training.data.folders import find_split_folders
from training.data.images import ImageError, load_model_input
from training.errors import Invalid, Missing, quoted
from training.model.inference import OnnxClassifier
from training.model.scores import ScoreManifest, clear_scores, new_manifest, write_manifest
from training.settings import Settings

log = logging.getLogger(__name__)

# Images per shard (its ONNX runs are sized by pixels, inference.predict_batch): memory stays
# bounded at any dataset size (1024 x 32 px inputs are 3 MB, 79 MB at 160 px); a shard is a few MB.
CHUNK_SIZE = 1024
# Skipped files named one by one in the log; the rest are only counted.
SKIPPED_LOGGED = 10

Progress = Callable[[int, int], None]  # (images done, scored or skipped; images in all)


def list_images(settings: Settings, splits: Sequence[str]) -> list[str]:
    """Every file under ``DATA_DIR/<split folder>/<class>/`` (sub-folders too), as POSIX paths relative to DATA_DIR.

    The walk of :func:`training.data.folders.scan_folder` (split folders by their names in
    the wild, hidden files and folders left out, files beside the class folders ignored),
    without its validating decode: scoring decodes every file anyway, once.
    """
    data_dir = settings.data_dir
    unknown = [s for s in splits if s not in settings.splits]
    if unknown:
        raise Invalid(f"unknown split {quoted(unknown[0])}; the splits are {', '.join(settings.splits)}")
    if not data_dir.is_dir():
        raise Missing(f"data directory {data_dir} does not exist")
    folders = find_split_folders(data_dir, settings.train_split, settings.test_split).by_split(*settings.splits)
    paths: list[str] = []
    for split in dict.fromkeys(splits):
        folder = folders.get(split)
        if folder is None:
            log.warning("%s has no %s split folder; no %s images", data_dir, split, split)
            continue
        split_dir = data_dir / folder
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for root, dirs, names in os.walk(class_dir):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                relative = Path(root).relative_to(data_dir)
                paths += [(relative / name).as_posix() for name in sorted(names) if not name.startswith(".")]
    if not paths:
        raise Missing(f"no images to score in {data_dir} (splits: {', '.join(splits)})")
    return paths


@dataclass(frozen=True)
class DecodedBatch:
    """The readable images of a batch, as the model's input, and the files that were not."""

    paths: list[str]
    sha256: list[str]
    images: np.ndarray  # (n, s, s, 3) uint8
    skipped: list[tuple[str, str]]  # (path, reason)


@dataclass(frozen=True)
class ScoredBatch:
    paths: list[str]
    sha256: list[str]
    probabilities: np.ndarray  # (n, K) float32
    embeddings: np.ndarray  # (n, D) float32
    vectors: np.ndarray  # (n, d) float32
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.paths)


class Scorer:
    """One ONNX session and embedder, scoring batches of paths relative to ``data_dir``."""

    def __init__(self, classifier: OnnxClassifier, embedder: Pipeline, data_dir: Path, *, max_pixels: int) -> None:
        self.classifier = classifier
        self.embedder = embedder
        self.data_dir = data_dir
        self.max_pixels = max_pixels

    @classmethod
    def from_files(
        cls,
        model: bytes | Path,
        embedder: bytes | Path,
        *,
        class_names: list[str],
        image_size: int,
        data_dir: Path,
        max_pixels: int,
        threads: int,
    ) -> Scorer:
        """From the version's two files, or their bytes (what a Ray actor on another machine gets)."""
        classifier = OnnxClassifier(model, class_names, image_size, threads=threads)
        fitted = joblib.load(io.BytesIO(embedder) if isinstance(embedder, bytes) else embedder)
        return cls(classifier, fitted, data_dir, max_pixels=max_pixels)

    @cached_property
    def widths(self) -> tuple[int, int, int]:
        """(K, D, d): the row widths of probabilities, embeddings and vectors, from one blank image."""
        size = self.classifier.image_size
        predictions = self.classifier.predict(np.zeros((1, size, size, 3), np.uint8))
        vectors = self.embedder.transform(predictions.similarity)
        return predictions.probabilities.shape[1], predictions.embeddings.shape[1], vectors.shape[1]

    def read(self, path: str) -> tuple[str, np.ndarray]:
        """(sha256 of the file's bytes, the model's input) for one path; ImageError or OSError if unusable."""
        data = (self.data_dir / path).read_bytes()
        return hashlib.sha256(data).hexdigest(), load_model_input(
            data, self.classifier.image_size, max_pixels=self.max_pixels
        )

    def _read_or_reason(self, path: str) -> tuple[str, np.ndarray] | str:
        try:
            return self.read(path)
        except (ImageError, OSError) as exc:  # a bad or vanished file: skipped, the run goes on
            return str(exc) or type(exc).__name__

    def decode(self, paths: Sequence[str]) -> DecodedBatch:
        """Read and decode ``paths`` in this thread (an engine runs one chunk per core)."""
        kept, digests, arrays, skipped = [], [], [], []
        for path in paths:
            outcome = self._read_or_reason(path)
            if isinstance(outcome, str):
                skipped.append((path, outcome))
            else:
                kept.append(path)
                digests.append(outcome[0])
                arrays.append(outcome[1])
        size = self.classifier.image_size
        images = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
        return DecodedBatch(kept, digests, images, skipped)

    def predict(self, decoded: DecodedBatch) -> ScoredBatch:
        """Probabilities and embeddings from the ONNX graph, vectors from the embedder: float32 rows."""
        if not decoded.paths:
            k, d_embedding, d_vector = self.widths
            empty = (np.zeros((0, k), np.float32), np.zeros((0, d_embedding), np.float32))
            return ScoredBatch([], [], *empty, np.zeros((0, d_vector), np.float32), decoded.skipped)
        predictions = self.classifier.predict(decoded.images)  # ONNX runs sized by pixels, not the whole chunk
        vectors = np.asarray(self.embedder.transform(predictions.similarity), dtype=np.float32)
        return ScoredBatch(
            decoded.paths,
            decoded.sha256,
            np.asarray(predictions.probabilities, dtype=np.float32),
            np.asarray(predictions.embeddings, dtype=np.float32),
            vectors,
            decoded.skipped,
        )

    def score(self, paths: Sequence[str]) -> ScoredBatch:
        return self.predict(self.decode(paths))


@dataclass(frozen=True)
class ModelFiles:
    """Where a registered version keeps what scoring needs, and how to read its answers."""

    tag: str
    model: Path
    embedder: Path
    class_names: list[str]
    image_size: int


def model_files(tag: str) -> ModelFiles:
    """The ONNX graph and embedder of ``tag`` in the BentoML store: the files serving loads.

    Not :func:`training.registry.store.load_registered`: that also loads the version's
    embedding index and audit, which scoring does not use and which grow with the dataset.
    """
    import bentoml

    from training.registry.metadata import VersionMetadata
    from training.registry.store import EMBEDDER_FILE, MODEL_FILE

    model = bentoml.models.get(tag)
    metadata = VersionMetadata.of(model.info.metadata)
    return ModelFiles(
        str(model.tag),
        Path(model.path_of(MODEL_FILE)),
        Path(model.path_of(EMBEDDER_FILE)),
        metadata.class_names,
        metadata.image_size,
    )


class ProgressLog:
    """Logs progress about every ``every`` seconds and at the end: a line per chunk would flood a million-image run."""

    def __init__(self, logger: logging.Logger = log, *, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        self.started = time.perf_counter()
        self.last = self.started

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        rate = done / (now - self.started) if now > self.started else 0.0
        self.logger.info("scored %d/%d images (%.0f%%), %.0f images/s", done, total, 100 * done / total, rate)


def log_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    """Name the first few unreadable files and count the rest: a warning count, not a crash."""
    for path, reason in skipped[:SKIPPED_LOGGED]:
        log.warning("skipped %s: %s", path, reason)
    if len(skipped) > SKIPPED_LOGGED:
        log.warning("skipped %d more unreadable files", len(skipped) - SKIPPED_LOGGED)


@dataclass
class ScoringRun:
    """An engine run's inputs and tally; :meth:`finish` writes the manifest last: a folder without one is unfinished."""

    out: Path
    files: ModelFiles
    splits: list[str]
    paths: list[str]
    report: Progress
    started: float
    scored: int = 0
    shards: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def begin(
        cls,
        settings: Settings,
        model_tag: str,
        out: Path,
        splits: Sequence[str] | None,
        progress: Progress | None,
        *,
        started: float | None = None,
    ) -> ScoringRun:
        """List the images and the model's files, and clear ``out`` of a previous run's shards."""
        started = time.perf_counter() if started is None else started
        chosen = list(splits or settings.splits)
        paths = list_images(settings, chosen)
        files = model_files(model_tag)
        clear_scores(out)
        return cls(out, files, chosen, paths, progress or ProgressLog(), started)

    def scorer(self, settings: Settings) -> Scorer:
        """A scorer of this run's model with one intra-op thread: engines use cores by running several."""
        return Scorer.from_files(
            self.files.model,
            self.files.embedder,
            class_names=self.files.class_names,
            image_size=self.files.image_size,
            data_dir=settings.data_dir,
            max_pixels=settings.max_image_pixels,
            threads=1,
        )

    def count(self, rows: int, skipped: Sequence[tuple[str, str]], *, shards: int = 0) -> None:
        self.scored += rows
        self.shards += shards
        self.skipped += skipped
        self.report(self.scored + len(self.skipped), len(self.paths))

    def finish(self, engine: str) -> ScoreManifest:
        """Report the skipped files, then write the manifest."""
        log_skipped(self.skipped)
        manifest = new_manifest(
            model_tag=self.files.tag,
            class_names=self.files.class_names,
            image_size=self.files.image_size,
            engine=engine,
            images=self.scored,
            shards=self.shards,
            skipped=len(self.skipped),
            splits=self.splits,
            seconds=time.perf_counter() - self.started,
        )
        write_manifest(self.out, manifest)
        return manifest


def chunked(paths: Sequence[str], size: int) -> list[Sequence[str]]:
    if size < 1:
        raise Invalid(f"chunk size must be at least 1, got {size}")
    return [paths[start : start + size] for start in range(0, len(paths), size)]
