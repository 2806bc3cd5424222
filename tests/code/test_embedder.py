"""Embedding index search and the two embedder kinds."""

from __future__ import annotations

import numpy as np
import pytest

from training.curation.index import EmbeddingIndex
from training.model.embedder import fit_embedder


@pytest.fixture
def clusters() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    return np.concatenate([c + rng.normal(size=(20, 16)) for c in centres]).astype(np.float32)


def test_pca_index_finds_same_cluster_neighbours_and_excludes_the_query(clusters: np.ndarray, tmp_path) -> None:
    embedder = fit_embedder("pca", clusters, 4, seed=0)
    ids = [f"img{i}" for i in range(len(clusters))]
    index = EmbeddingIndex.build(embedder, ids, ["train"] * 60, clusters)
    assert index.vectors.shape == (60, 4)
    hits = index.nearest(index.vector_of("img0"), 5, exclude="img0")
    assert "img0" not in [h[0] for h in hits]
    assert all(int(h[0][3:]) < 20 for h in hits)  # same cluster
    assert [d for _, d in hits] == sorted(d for _, d in hits)
    mask = np.array([i >= 40 for i in range(60)])
    assert all(int(h[0][3:]) >= 40 for h in index.nearest(index.vector_of("img0"), 3, candidates=mask))

    index.save(tmp_path / "index.npz")
    loaded = EmbeddingIndex.load(tmp_path / "index.npz")
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    assert loaded.image_ids.tolist() == ids


@pytest.mark.slow
def test_umap_embedder_transforms_new_points(clusters: np.ndarray) -> None:
    embedder = fit_embedder("umap", clusters, 2, seed=0)
    assert embedder.transform(clusters[:5]).shape == (5, 2)
