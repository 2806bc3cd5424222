"""Reduce CNN embeddings with PCA (default) or UMAP, and search the reduced space.

The embedder is fitted on training images only; the reduced vectors of every
train and test image are stored with their ids so a similarity query needs one
matrix product, not a pass over the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from training.settings import EmbedderKind


def fit_embedder(kind: EmbedderKind, embeddings: np.ndarray, dim: int, *, seed: int) -> Pipeline:
    """Standardise, then reduce to at most ``dim`` dimensions."""
    n, width = embeddings.shape
    if kind == "pca":
        reducer = PCA(n_components=max(1, min(dim, n, width)), random_state=seed)
    elif kind == "umap":
        import umap  # slow import (numba): only when asked for

        reducer = umap.UMAP(
            n_components=max(2, min(dim, width, n - 2)),
            n_neighbors=max(2, min(15, n - 1)),
            random_state=seed,
        )
    else:
        raise ValueError(f"unknown embedder {kind!r}; use 'pca' or 'umap'")
    return Pipeline([("scale", StandardScaler()), ("reduce", reducer)]).fit(embeddings)


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
