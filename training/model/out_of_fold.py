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
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.model.feature_neighbours import NEIGHBOURS, nearest
from training.model.fit import TrainConfig, train_classifier
from training.model.network import EMBEDDING_LAYER, build_classifier, feature_extractor, is_pretrained
from training.progress import ProgressSink, TrainingProgress

log = logging.getLogger(__name__)

FEATURE_BATCH = 128
PREDICT_CHUNK = 4096  # images cast to float32 at once when a fold model scores the whole train split


@dataclass(frozen=True)
class OutOfFold:
    probabilities: np.ndarray  # (n, K): row i from the fold model that held image i out
    neighbours: np.ndarray  # (n, k) int32: rows of the train images most like image i (-1: none)
    similarities: np.ndarray  # (n, k) float32: their cosine similarity to image i
    test_neighbours: np.ndarray  # (n, k) int32: rows of the (trusted) test images most like image i (-1: none)
    test_similarities: np.ndarray  # (n, k) float32
    neighbour_seconds: float = 0.0  # what the neighbours cost beyond the probabilities (benchmarks/label_issues.py)


def out_of_fold_probabilities(
    images: np.ndarray,
    labels: Sequence[str],
    class_names: Sequence[str],
    config: TrainConfig,
    *,
    folds: int,
    test_images: np.ndarray | None = None,
    neighbours: int = NEIGHBOURS,
    progress: TrainingProgress | None = None,
    sink: ProgressSink | None = None,
) -> OutOfFold:
    """Probabilities and feature-space neighbours of every image, each from a model that never saw its label.

    ``config`` is the fold models' recipe (see :func:`training.recipe.fold_config`). The
    neighbours of image i are searched among all the other train images, in the
    embedding of the fold model that held i out: i's label did not shape that space,
    so where i lands says what it looks like, not what it was called. Likewise its
    nearest ``test_images``, whose labels are trusted: a poisoned group teaches the
    fold models its wrong label, but the test images that look like it keep their own.
    """
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    class_names = list(class_names)
    targets = np.array([class_names.index(label) for label in labels])
    counts = np.bincount(targets, minlength=len(class_names))
    # Stratify when every class can appear in every fold; rare classes otherwise break StratifiedKFold.
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    split_on = targets if counts[counts > 0].min() >= folds else np.zeros_like(targets)
    splits = list(splitter.split(images, split_on))
    pretrained = is_pretrained(config.backbone, config.backbone_weights)
    test_images = images[:0] if test_images is None else test_images
    features = _backbone_features(images, config) if pretrained else None
    probabilities = np.zeros((len(images), len(class_names)), dtype=np.float32)
    near = np.full((len(images), neighbours), -1, dtype=np.int32)
    similar = np.zeros((len(images), neighbours), dtype=np.float32)
    near_test, similar_test = near.copy(), similar.copy()
    started, neighbour_seconds = time.perf_counter(), 0.0
    if features is not None:  # one space for all: no label touched the frozen backbone
        near, similar = nearest(features, features, neighbours)
        if len(test_images):
            test_features = _backbone_features(test_images, config)
            near_test, similar_test = nearest(features, test_features, neighbours, query_rows=_outside(features))
        neighbour_seconds = time.perf_counter() - started
    for fold, (fit_idx, held_idx) in enumerate(splits, start=1):
        label = f"out-of-fold model {fold}/{folds}"
        if progress is not None and sink is not None:
            progress.message = label
            sink(progress)
        if features is not None:
            probabilities[held_idx] = _head_probabilities(features, targets, fit_idx, held_idx, len(class_names))
            continue
        trained = train_classifier(
            images[fit_idx],
            [labels[i] for i in fit_idx],
            class_names,
            replace(config, seed=config.seed + fold),
            progress=progress,
            sink=sink,
            label=label,
        )
        both = keras.Model(trained.model.input, [trained.model.output, trained.model.get_layer(EMBEDDING_LAYER).output])
        logits, queries = _logits_and_embeddings(both, images[held_idx])
        probabilities[held_idx] = _softmax(logits)
        started = time.perf_counter()  # the neighbours' own cost: embedding the rest, and the searches
        embedded = np.zeros((len(images), queries.shape[1]), np.float32)
        embedded[held_idx], embedded[fit_idx] = queries, _logits_and_embeddings(both, images[fit_idx])[1]
        near[held_idx], similar[held_idx] = nearest(queries, embedded, neighbours, query_rows=held_idx)
        if len(test_images):
            test_embedded = _logits_and_embeddings(both, test_images)[1]
            near_test[held_idx], similar_test[held_idx] = nearest(
                queries, test_embedded, neighbours, query_rows=_outside(queries)
            )
        neighbour_seconds += time.perf_counter() - started
        log.info("%s: %d held out, %d epochs", label, len(held_idx), trained.epochs_run)
    return OutOfFold(probabilities, near, similar, near_test, similar_test, neighbour_seconds)


def _outside(queries: np.ndarray) -> np.ndarray:
    """Query row numbers that match no candidate's (train queries among test candidates)."""
    return np.full(len(queries), -1)


def _logits_and_embeddings(both: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fold network's logits and penultimate embedding (``both``: a model with the two outputs) of ``images``."""
    logits = [np.zeros((0, both.outputs[0].shape[-1]), np.float32)]
    embedded = [np.zeros((0, both.outputs[1].shape[-1]), np.float32)]
    for start in range(0, len(images), PREDICT_CHUNK):  # float32 copies of a chunk at a time, not of all
        chunk = images[start : start + PREDICT_CHUNK].astype(np.float32)
        found = both.predict(chunk, batch_size=FEATURE_BATCH, verbose=0)
        logits.append(np.asarray(found[0]))
        embedded.append(np.asarray(found[1]))
    return np.concatenate(logits), np.concatenate(embedded)


def _backbone_features(images: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Pooled features of the pretrained backbone, which no label has touched."""
    network = build_classifier(2, config.image_size, backbone=config.backbone, weights=config.backbone_weights)
    return np.asarray(
        feature_extractor(network).predict(images.astype(np.float32), batch_size=FEATURE_BATCH, verbose=0)
    )


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
