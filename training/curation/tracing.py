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

from training.labels.store import LabelStore
from training.vectors.base import VectorIndex, Where


def trace_votes(
    index: VectorIndex,
    error_vectors: np.ndarray,
    predicted: Sequence[str],
    true_labels: Sequence[str],
    *,
    k: int,
    split: str,
) -> dict[str, Counter[str]]:
    """Per misclassified image, its k nearest unreviewed ``split`` images labelled as the class it was mistaken for.

    Returns image id -> Counter of the true classes of the errors it pulled. One
    batched, filtered index search per mistaken-for class.
    """
    pulled: dict[str, Counter[str]] = defaultdict(Counter)
    for wrong_class in sorted(set(predicted)):
        rows = [i for i, p in enumerate(predicted) if p == wrong_class]
        where = Where.of(split=split, label=wrong_class, unreviewed=True)
        for row, hits in zip(rows, index.search(error_vectors[rows], k, where), strict=True):
            for hit in hits:
                pulled[hit.image_id][true_labels[row]] += 1
    return dict(pulled)


@dataclass(frozen=True)
class TracedImage:
    image_id: str
    path: str
    label: str  # the current (curated) label, the class it pulls errors to
    votes: int  # how many misclassified images it pulled
    suggested_label: str  # the most common true class among them


def trace_to_training(
    index: VectorIndex,
    store: LabelStore,
    error_vectors: np.ndarray,
    predicted: Sequence[str],
    true_labels: Sequence[str],
    *,
    k: int,
    split: str,
) -> list[TracedImage]:
    """Training images that pull misclassified images to the wrong class, most votes first."""
    pulled = trace_votes(index, error_vectors, predicted, true_labels, k=k, split=split)
    records = store.queries.records(list(pulled))
    traced = [
        TracedImage(
            image_id,
            records[image_id].path,
            records[image_id].label,
            sum(votes.values()),
            votes.most_common(1)[0][0],
        )
        for image_id, votes in pulled.items()
        if image_id in records
    ]
    return sorted(traced, key=lambda t: (-t.votes, t.path))
