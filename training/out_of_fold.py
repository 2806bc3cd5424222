"""Out-of-fold class probabilities for the training split.

A model scores its own training images with the labels it memorised, wrong ones
included, so in-sample confidence hides label errors. Here every image is scored
by a model that never saw it: k stratified folds, one CNN per fold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from sklearn.model_selection import StratifiedKFold

from training.progress import ProgressSink, TrainingProgress
from training.train import TrainConfig, train_classifier

log = logging.getLogger(__name__)


def out_of_fold_probabilities(
    images: np.ndarray,
    labels: Sequence[str],
    class_names: Sequence[str],
    config: TrainConfig,
    *,
    folds: int,
    progress: TrainingProgress | None = None,
    sink: ProgressSink | None = None,
) -> np.ndarray:
    """(n, K) probabilities; row i comes from the fold model that held image i out."""
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    class_names = list(class_names)
    targets = np.array([class_names.index(label) for label in labels])
    counts = np.bincount(targets, minlength=len(class_names))
    # Stratify when every class can appear in every fold; rare classes otherwise break StratifiedKFold.
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    split_on = targets if counts[counts > 0].min() >= folds else np.zeros_like(targets)
    probabilities = np.zeros((len(images), len(class_names)), dtype=np.float32)
    for fold, (fit_idx, held_idx) in enumerate(splitter.split(images, split_on), start=1):
        if progress is not None and sink is not None:
            progress.message = f"out-of-fold model {fold}/{folds}"
            sink(progress)
        trained = train_classifier(
            images[fit_idx],
            [labels[i] for i in fit_idx],
            class_names,
            replace(config, seed=config.seed + fold),
        )
        logits = trained.model.predict(images[held_idx].astype(np.float32), batch_size=256, verbose=0)
        probabilities[held_idx] = _softmax(np.asarray(logits))
        log.info("out-of-fold %d/%d: %d held out, %d epochs", fold, folds, len(held_idx), trained.epochs_run)
    return probabilities


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
