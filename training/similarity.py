"""Nearest images in the embedding index, restricted to what the label store currently says."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.embedder import EmbeddingIndex
from training.label_store import ImageRecord


@dataclass(frozen=True)
class Neighbour:
    record: ImageRecord
    distance: float


def nearest_neighbours(
    index: EmbeddingIndex,
    query: np.ndarray,
    candidates: list[ImageRecord],
    k: int,
    *,
    exclude: str | None = None,
) -> list[Neighbour]:
    """The ``k`` candidates closest to ``query``.

    ``candidates`` come from the label store (current split/label filter, present
    files only), so a relabel is reflected at once without touching the index.
    Candidates the index does not know (added after the model was trained) are
    skipped: they have no stored vector yet.
    """
    by_id = {r.image_id: r for r in candidates}
    mask = np.isin(index.image_ids, list(by_id))
    hits = index.nearest(query, k, candidates=mask, exclude=exclude)
    return [Neighbour(by_id[image_id], distance) for image_id, distance in hits]


def nearest_to_any(
    index: EmbeddingIndex, queries: np.ndarray, candidates: list[ImageRecord], k: int
) -> list[Neighbour]:
    """The ``k`` candidates closest to any of ``queries`` (distance to the nearest), e.g. to grow a confirmed set."""
    by_id = {r.image_id: r for r in candidates}
    rows = np.flatnonzero(np.isin(index.image_ids, list(by_id)))
    if len(rows) == 0 or len(queries) == 0 or k <= 0:
        return []
    vectors = index.vectors[rows]
    distances = np.full(len(rows), np.inf, dtype=np.float32)
    for query in queries:  # one pass per query keeps memory at O(candidates)
        np.minimum(distances, np.linalg.norm(vectors - query, axis=1), out=distances)
    top = np.argsort(distances, kind="stable")[:k]
    return [Neighbour(by_id[str(index.image_ids[rows[i]])], float(distances[i])) for i in top]
