"""The two embedder kinds (the index over their vectors: test_vector_index.py)."""

from __future__ import annotations

import numpy as np
import pytest

from training.model.embedder import fit_embedder


@pytest.fixture
def clusters() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    return np.concatenate([c + rng.normal(size=(20, 16)) for c in centres]).astype(np.float32)


def test_pca_keeps_clusters_apart(clusters: np.ndarray) -> None:
    embedder = fit_embedder("pca", clusters, 4, seed=0)
    reduced = embedder.transform(clusters)
    assert reduced.shape == (60, 4)
    nearest = np.argsort(np.linalg.norm(reduced - reduced[0], axis=1))[1:6]
    assert all(i < 20 for i in nearest)  # same cluster


@pytest.mark.slow
def test_umap_embedder_transforms_new_points(clusters: np.ndarray) -> None:
    embedder = fit_embedder("umap", clusters, 2, seed=0)
    assert embedder.transform(clusters[:5]).shape == (5, 2)
