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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.model.fit import TrainConfig, train_classifier
from training.model.network import build_classifier, feature_extractor, is_pretrained
from training.progress import ProgressSink, TrainingProgress

log = logging.getLogger(__name__)

FEATURE_BATCH = 128


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
    """(n, K) probabilities; row i comes from the fold model that held image i out.

    ``config`` is the fold models' recipe (see :func:`training.recipe.fold_config`).
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
    features = _backbone_features(images, config) if pretrained else None
    probabilities = np.zeros((len(images), len(class_names)), dtype=np.float32)
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
        logits = trained.model.predict(images[held_idx].astype(np.float32), batch_size=256, verbose=0)
        probabilities[held_idx] = _softmax(np.asarray(logits))
        log.info("%s: %d held out, %d epochs", label, len(held_idx), trained.epochs_run)
    return probabilities


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
