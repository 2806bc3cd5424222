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
