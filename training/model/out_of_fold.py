"""Out-of-fold class probabilities for the training split.

A model scores its own training images with the labels it memorised, wrong ones
included, so in-sample confidence hides label errors. Here every image is scored
by a model that never saw it: k stratified folds.

Two ways, by what the network is:

- a pretrained, frozen backbone never saw these labels, so its features are computed
  once and one logistic regression per fold learns the head (seconds, whatever k);
- a network trained from scratch (the CNN, or a backbone with weights ``none``) learns
  its features from the labels too: one network per fold, on half the main budget
  (they only have to score, not to serve).

Beside the probabilities, each image's nearest train images in a feature space its
own label did not shape (the embedding of the fold model that held it out, or the
frozen backbone's features): the neighbours whose labels vote on it (SimiFeat,
Zhu, Dong and Liu, ICML 2022), a second signal independent of the probabilities.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.data.decoded import DecodedImages, InMemoryImages, chunk_rows, chunks, subset
from training.model.feature_neighbours import EXACT_SEARCH_MAX, NEIGHBOURS, nearest
from training.model.fit import TrainConfig, train_classifier
from training.model.network import EMBEDDING_LAYER, build_classifier, feature_extractor, is_pretrained
from training.progress import ProgressSink, TrainingProgress

log = logging.getLogger(__name__)

FEATURE_BATCH = 128


@dataclass(frozen=True)
class OutOfFold:
    probabilities: np.ndarray  # (n, K): row i from the fold model that held image i out
    neighbours: np.ndarray  # (n, k) int32: rows of the train images most like image i (-1: none)
    similarities: np.ndarray  # (n, k) float32: their cosine similarity to image i
    test_neighbours: np.ndarray  # (n, k) int32: rows of the (trusted) test images most like image i (-1: none)
    test_similarities: np.ndarray  # (n, k) float32
    neighbour_seconds: float = 0.0  # what the neighbours cost beyond the probabilities (benchmarks/label_issues.py)
    fold_nodes: tuple[str, ...] = ()  # where each fold model was trained (hostname, or Ray node id), fold order


@dataclass(frozen=True)
class FoldInputs:
    """What every fold model needs, shared by the k of them (a Ray engine puts it in the object store once)."""

    images: DecodedImages
    targets: np.ndarray  # (n,) int32 rows of class_names
    class_names: list[str]
    config: TrainConfig  # the fold models' recipe; fold f is trained with seed config.seed + f
    test_images: DecodedImages
    neighbours: int
    folds: int
    exact_search_max: int = EXACT_SEARCH_MAX  # candidates searched exactly (BOUNCER_EXACT_SEARCH_MAX)


@dataclass(frozen=True)
class FoldResult:
    """One fold model's answers about the images it held out: rows of the train split, and what it found."""

    fold: int  # 1-based
    held_rows: np.ndarray  # (m,) int64
    probabilities: np.ndarray  # (m, K) float32
    neighbours: np.ndarray  # (m, k) int32
    similarities: np.ndarray  # (m, k) float32
    test_neighbours: np.ndarray  # (m, k) int32
    test_similarities: np.ndarray  # (m, k) float32
    epochs_run: int
    seconds: float
    neighbour_seconds: float
    node: str  # where it ran

    def save(self, path: Path) -> None:
        """Atomically: a fold file is whole or absent (a resumed run trusts what it finds)."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz", delete=False) as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(f.name, path)

    @classmethod
    def load(cls, path: Path) -> FoldResult:
        with np.load(path) as f:
            kinds = {"fold": int, "epochs_run": int, "seconds": float, "neighbour_seconds": float, "node": str}
            return cls(**{name: kinds[name](f[name]) if name in kinds else f[name] for name in f.files})


# The engine: given the fold jobs (fold number, the rows it fits on, the rows it holds out), their results in any order.
FoldJob = tuple[int, np.ndarray, np.ndarray]
FoldRunner = Callable[[FoldInputs, list[FoldJob]], Iterable[FoldResult]]


def fold_splits(targets: np.ndarray, folds: int, seed: int) -> list[FoldJob]:
    """k stratified folds (stratified when every class can appear in every fold; rare classes break it otherwise)."""
    counts = np.bincount(targets)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    split_on = targets if counts[counts > 0].min() >= folds else np.zeros_like(targets)
    return [(fold, fit, held) for fold, (fit, held) in enumerate(splitter.split(targets, split_on), start=1)]


def out_of_fold_probabilities(
    images: np.ndarray | DecodedImages,
    labels: Sequence[str],
    class_names: Sequence[str],
    config: TrainConfig,
    *,
    folds: int,
    test_images: np.ndarray | DecodedImages | None = None,
    neighbours: int = NEIGHBOURS,
    progress: TrainingProgress | None = None,
    sink: ProgressSink | None = None,
    runner: FoldRunner | None = None,
    exact_search_max: int = EXACT_SEARCH_MAX,
) -> OutOfFold:
    """Probabilities and feature-space neighbours of every image, each from a model that never saw its label.

    ``config`` is the fold models' recipe (see :func:`training.recipe.fold_config`). The
    neighbours of image i are searched among all the other train images, in the
    embedding of the fold model that held i out: i's label did not shape that space,
    so where i lands says what it looks like, not what it was called. Likewise its
    nearest ``test_images``, whose labels are trusted: a poisoned group teaches the
    fold models its wrong label, but the test images that look like it keep their own.

    ``runner`` trains the fold models (default: one after another here, with progress);
    the Ray engine's runs them as tasks on any node.
    """
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    class_names = list(class_names)
    images = InMemoryImages(images) if isinstance(images, np.ndarray) else images
    if test_images is None:
        test_images = InMemoryImages(np.zeros((0, images.image_size, images.image_size, 3), np.uint8))
    elif isinstance(test_images, np.ndarray):
        test_images = InMemoryImages(test_images)
    targets = np.array([class_names.index(label) for label in labels], dtype=np.int32)
    splits = fold_splits(targets, folds, config.seed)
    if is_pretrained(config.backbone, config.backbone_weights):
        return _pretrained_out_of_fold(
            images, targets, class_names, config, splits, test_images, neighbours, exact_search_max
        )
    inputs = FoldInputs(images, targets, class_names, config, test_images, neighbours, folds, exact_search_max)
    run = runner or partial(run_folds_here, progress=progress, sink=sink)
    n = len(images)
    probabilities = np.zeros((n, len(class_names)), dtype=np.float32)
    near = np.full((n, neighbours), -1, dtype=np.int32)
    similar = np.zeros((n, neighbours), dtype=np.float32)
    near_test, similar_test = near.copy(), similar.copy()
    nodes, neighbour_seconds = {}, 0.0
    for result in run(inputs, splits):
        held = result.held_rows
        probabilities[held], near[held], similar[held] = result.probabilities, result.neighbours, result.similarities
        near_test[held], similar_test[held] = result.test_neighbours, result.test_similarities
        nodes[result.fold] = result.node
        neighbour_seconds += result.neighbour_seconds
    if sorted(nodes) != list(range(1, folds + 1)):
        raise RuntimeError(f"the fold runner returned folds {sorted(nodes)}, expected 1..{folds}")
    fold_nodes = tuple(nodes[fold] for fold in sorted(nodes))
    return OutOfFold(probabilities, near, similar, near_test, similar_test, neighbour_seconds, fold_nodes)


def run_folds_here(
    inputs: FoldInputs,
    jobs: list[FoldJob],
    *,
    progress: TrainingProgress | None = None,
    sink: ProgressSink | None = None,
) -> Iterator[FoldResult]:
    """The local engine: the fold models one after another in this process."""
    for job in jobs:
        yield fit_fold(inputs, job, progress=progress, sink=sink)


def fit_fold(
    inputs: FoldInputs,
    job: FoldJob,
    *,
    progress: TrainingProgress | None = None,
    sink: ProgressSink | None = None,
    node: str | None = None,
) -> FoldResult:
    """Train fold ``job``'s model and score the images it held out: probabilities, and neighbours in its embedding."""
    fold, fit_rows, held_rows = job
    label = f"out-of-fold model {fold}/{inputs.folds}"
    if progress is not None and sink is not None:
        progress.message = label
        sink(progress)
    started = time.perf_counter()
    images, class_names = inputs.images, inputs.class_names
    trained = train_classifier(
        subset(images, fit_rows),
        [class_names[t] for t in inputs.targets[fit_rows]],
        class_names,
        replace(inputs.config, seed=inputs.config.seed + fold),
        progress=progress,
        sink=sink,
        label=label,
    )
    both = keras.Model(trained.model.input, [trained.model.output, trained.model.get_layer(EMBEDDING_LAYER).output])
    logits, queries = _logits_and_embeddings(both, subset(images, held_rows))
    probabilities = _softmax(logits)
    neighbours_started = time.perf_counter()  # the neighbours' own cost: embedding the rest, and the searches
    embedded = np.zeros((len(images), queries.shape[1]), np.float32)
    embedded[held_rows] = queries
    step = chunk_rows(images.image_size)
    for start in range(0, len(fit_rows), step):  # written in place: no second (n, D) array at 1M images
        rows = fit_rows[start : start + step]
        embedded[rows] = _logits_and_embeddings(both, subset(images, rows))[1]
    exact_max = inputs.exact_search_max
    near, similar = nearest(queries, embedded, inputs.neighbours, query_rows=held_rows, exact_max=exact_max)
    del embedded
    near_test = np.full((len(held_rows), inputs.neighbours), -1, dtype=np.int32)
    similar_test = np.zeros((len(held_rows), inputs.neighbours), dtype=np.float32)
    if len(inputs.test_images):
        test_embedded = _logits_and_embeddings(both, inputs.test_images)[1]
        near_test, similar_test = nearest(
            queries, test_embedded, inputs.neighbours, query_rows=_outside(queries), exact_max=exact_max
        )
    done = time.perf_counter()
    log.info("%s: %d held out, %d epochs", label, len(held_rows), trained.epochs_run)
    return FoldResult(
        fold,
        np.asarray(held_rows, dtype=np.int64),
        probabilities.astype(np.float32),
        near,
        similar,
        near_test,
        similar_test,
        trained.epochs_run,
        done - started,
        done - neighbours_started,
        node or socket.gethostname(),
    )


def _pretrained_out_of_fold(
    images: DecodedImages,
    targets: np.ndarray,
    class_names: list[str],
    config: TrainConfig,
    splits: list[FoldJob],
    test_images: DecodedImages,
    neighbours: int,
    exact_max: int,
) -> OutOfFold:
    """A frozen pretrained backbone: its features once, one logistic regression per fold, one neighbour space."""
    features = _backbone_features(images, config)
    started = time.perf_counter()
    near, similar = nearest(features, features, neighbours, exact_max=exact_max)
    near_test = np.full((len(images), neighbours), -1, dtype=np.int32)
    similar_test = np.zeros((len(images), neighbours), dtype=np.float32)
    if len(test_images):
        test_features = _backbone_features(test_images, config)
        near_test, similar_test = nearest(
            features, test_features, neighbours, query_rows=_outside(features), exact_max=exact_max
        )
    neighbour_seconds = time.perf_counter() - started
    probabilities = np.zeros((len(images), len(class_names)), dtype=np.float32)
    for _, fit_rows, held_rows in splits:
        probabilities[held_rows] = _head_probabilities(features, targets, fit_rows, held_rows, len(class_names))
    host = socket.gethostname()
    return OutOfFold(probabilities, near, similar, near_test, similar_test, neighbour_seconds, (host,) * len(splits))


def _outside(queries: np.ndarray) -> np.ndarray:
    """Query row numbers that match no candidate's (train queries among test candidates)."""
    return np.full(len(queries), -1)


def _logits_and_embeddings(both: keras.Model, images: DecodedImages) -> tuple[np.ndarray, np.ndarray]:
    """A fold network's logits and penultimate embedding (``both``: a model with the two outputs) of ``images``."""
    logits = [np.zeros((0, both.outputs[0].shape[-1]), np.float32)]
    embedded = [np.zeros((0, both.outputs[1].shape[-1]), np.float32)]
    for part in chunks(images, chunk_rows(images.image_size)):  # float32 copies of a chunk at a time, not of all
        found = both.predict(part.astype(np.float32), batch_size=FEATURE_BATCH, verbose=0)
        logits.append(np.asarray(found[0]))
        embedded.append(np.asarray(found[1]))
    return np.concatenate(logits), np.concatenate(embedded)


def _backbone_features(images: DecodedImages, config: TrainConfig) -> np.ndarray:
    """Pooled features of the pretrained backbone, which no label has touched."""
    network = feature_extractor(
        build_classifier(2, config.image_size, backbone=config.backbone, weights=config.backbone_weights)
    )
    found = [
        np.asarray(network.predict(part.astype(np.float32), batch_size=FEATURE_BATCH, verbose=0))
        for part in chunks(images, chunk_rows(images.image_size))
    ]
    return np.concatenate(found) if found else np.zeros((0, network.output.shape[-1]), np.float32)


def _head_probabilities(
    features: np.ndarray, targets: np.ndarray, fit_idx: np.ndarray, held_idx: np.ndarray, n_classes: int
) -> np.ndarray:
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    head.fit(features[fit_idx], targets[fit_idx])
    probabilities = np.zeros((len(held_idx), n_classes), dtype=np.float32)
    probabilities[:, head.classes_] = head.predict_proba(features[held_idx])  # classes absent from the fold stay 0
    return probabilities


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
