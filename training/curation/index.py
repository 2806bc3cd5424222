"""The embedding index: every train/test image's reduced vector, and neighbour search in it.

Built at training time and stored with the model version, so a similarity query
needs one matrix product, not a pass over the images. Search is restricted to what
the label store currently says (split, label, present files), so a relabel is
reflected at once without touching the index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from training.labels.store import ImageRecord


@dataclass(frozen=True)
class EmbeddingIndex:
    image_ids: np.ndarray  # (n,) str
    splits: np.ndarray  # (n,) str
    vectors: np.ndarray  # (n, d) float32

    @classmethod
    def build(
        cls, embedder: Pipeline, image_ids: list[str], splits: list[str], embeddings: np.ndarray
    ) -> EmbeddingIndex:
        vectors = embedder.transform(embeddings).astype(np.float32) if len(embeddings) else np.zeros((0, 1), np.float32)
        return cls(np.asarray(image_ids, dtype=str), np.asarray(splits, dtype=str), vectors)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, image_ids=self.image_ids, splits=self.splits, vectors=self.vectors)

    @classmethod
    def load(cls, path: Path) -> EmbeddingIndex:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["image_ids"], data["splits"], data["vectors"])

    def rows_of(self, image_ids: list[str]) -> np.ndarray:
        """Row of each id in ``vectors``, -1 for ids the index does not hold."""
        row = {image_id: i for i, image_id in enumerate(self.image_ids.tolist())}
        return np.array([row.get(image_id, -1) for image_id in image_ids], dtype=np.int64)

    def vector_of(self, image_id: str) -> np.ndarray | None:
        hits = np.flatnonzero(self.image_ids == image_id)
        return self.vectors[hits[0]] if len(hits) else None

    def nearest(
        self, query: np.ndarray, k: int, *, candidates: np.ndarray | None = None, exclude: str | None = None
    ) -> list[tuple[str, float]]:
        """The k closest (Euclidean) indexed images, optionally among a boolean mask."""
        mask = np.ones(len(self.image_ids), dtype=bool) if candidates is None else candidates.copy()
        if exclude is not None:
            mask &= self.image_ids != exclude
        rows = np.flatnonzero(mask)
        if len(rows) == 0 or k <= 0:
            return []
        distances = np.linalg.norm(self.vectors[rows] - query.astype(np.float32), axis=1)
        top = np.argsort(distances, kind="stable")[:k]
        return [(str(self.image_ids[rows[i]]), float(distances[i])) for i in top]


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
    return [Neighbour.of(by_id[image_id], distance) for image_id, distance in hits]


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
    return [Neighbour.of(by_id[str(index.image_ids[rows[i]])], float(distances[i])) for i in top]
