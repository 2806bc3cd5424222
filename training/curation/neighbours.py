"""Neighbour search for the façade: index hits joined with the label store's current rows.

The index (:mod:`training.vectors`) answers with image ids and distances, filtered
on the labels as they are now; only the rows of the hits are read from the store,
never a whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.labels.records import ImageRecord
from training.labels.store import LabelStore
from training.vectors.base import Hit, VectorIndex, Where


@dataclass(frozen=True)
class Neighbour:
    image_id: str
    path: str
    split: str
    label: str  # the current (curated) label
    distance: float

    @classmethod
    def of(cls, record: ImageRecord, distance: float) -> Neighbour:
        return cls(record.image_id, record.path, record.split, record.label, distance)


def joined(store: LabelStore, hits: Sequence[Hit]) -> list[Neighbour]:
    """Hits with their current rows (a hit removed from the store since the search is dropped)."""
    records = store.queries.records([hit.image_id for hit in hits])
    return [Neighbour.of(records[hit.image_id], hit.distance) for hit in hits if hit.image_id in records]


def nearest_neighbours(
    index: VectorIndex, store: LabelStore, query: np.ndarray, k: int, where: Where
) -> list[Neighbour]:
    """The ``k`` images ``where`` allows closest to ``query``."""
    return joined(store, index.search(query[None], k, where)[0])


def nearest_to_any(index: VectorIndex, store: LabelStore, queries: np.ndarray, k: int, where: Where) -> list[Neighbour]:
    """The ``k`` images closest to any of ``queries`` (distance to the nearest), e.g. to grow a confirmed set.

    Exact: an image among the k closest to the set is among the k closest to its own
    nearest query, so the union of per-query top-k holds the answer.
    """
    if len(queries) == 0 or k <= 0:
        return []
    best: dict[str, float] = {}
    for found in index.search(queries, k, where):
        for hit in found:
            if hit.distance < best.get(hit.image_id, np.inf):
                best[hit.image_id] = hit.distance
    top = sorted(best.items(), key=lambda item: (item[1], item[0]))[:k]
    return joined(store, [Hit(image_id, distance) for image_id, distance in top])
