"""Error tracing: the training images that pull misclassified images towards the wrong class.

For each misclassified image, its nearest training neighbours (in the embedding
space) that carry the class the model mistook it for get a vote; a poisoned group
collects many, and the true classes of the errors it pulled say what it should be.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.labels.store import ImageRecord


def trace_errors(
    error_vectors: np.ndarray,
    predicted: Sequence[int],
    true_labels: Sequence[int],
    train_vectors: np.ndarray,
    train_labels: np.ndarray,
    *,
    k: int,
) -> dict[int, Counter[int]]:
    """For each misclassified image, its k nearest training images labelled with the class it was mistaken for.

    Returns train index -> Counter of the true classes of the errors it pulled. A
    poisoned cluster collects many votes, and the true classes say what it should be.
    """
    pulled: dict[int, Counter[int]] = defaultdict(Counter)
    for vector, wrong_class, true_class in zip(error_vectors, predicted, true_labels, strict=True):
        candidates = np.flatnonzero(train_labels == wrong_class)
        if len(candidates) == 0:
            continue
        distances = np.linalg.norm(train_vectors[candidates] - vector, axis=1)
        for i in candidates[np.argsort(distances, kind="stable")[:k]]:
            pulled[int(i)][int(true_class)] += 1
    return dict(pulled)


@dataclass(frozen=True)
class TracedImage:
    image_id: str
    path: str
    label: str  # the current (curated) label, the class it pulls errors to
    votes: int  # how many misclassified images it pulled
    suggested_label: str  # the most common true class among them


def trace_to_training(
    error_vectors: np.ndarray,
    predicted: Sequence[str],
    true_labels: Sequence[str],
    train_vectors: np.ndarray,
    train_records: Sequence[ImageRecord],
    class_names: Sequence[str],
    *,
    k: int,
) -> list[TracedImage]:
    """Training images that pull misclassified images to the wrong class, most votes first."""
    index = {name: i for i, name in enumerate(class_names)}
    train_labels = np.array([index.get(r.label, -1) for r in train_records])
    pulled = trace_errors(
        error_vectors,
        [index[p] for p in predicted],
        [index[t] for t in true_labels],
        train_vectors,
        train_labels,
        k=k,
    )
    traced = [
        TracedImage(
            train_records[i].image_id,
            train_records[i].path,
            train_records[i].label,
            sum(votes.values()),
            class_names[votes.most_common(1)[0][0]],
        )
        for i, votes in pulled.items()
    ]
    return sorted(traced, key=lambda t: (-t.votes, t.path))
