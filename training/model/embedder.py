"""Reduce the network's embeddings with PCA (default) or UMAP, fitted on training images only.

The reduced vectors of every image go into the embedding index
(:mod:`training.curation.index`), stored with the model version.
"""

from __future__ import annotations

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
