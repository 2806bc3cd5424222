"""Duplicates that disagree: the same picture (exact bytes, or near-identical thumbnails) under different labels."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from training.data.decoded import DecodedImages, chunk_rows, chunks


def thumbnails(images: np.ndarray, size: int = 16) -> np.ndarray:
    """(n, size*size) grey thumbnails of (n, s, s, 3) images, mean-centred.

    Block means make them blind to re-encoding and resizing noise, centring to a
    uniform brightness shift, so copies of one picture land within a small distance.
    """
    grey = images.astype(np.float32).mean(axis=3) / 255.0
    n, s, _ = grey.shape
    size = min(size, s)
    step = s // size
    small = grey[:, : step * size, : step * size].reshape(n, size, step, size, step).mean(axis=(2, 4)).reshape(n, -1)
    return small - small.mean(axis=1, keepdims=True)


def near_duplicate_groups(images: np.ndarray | DecodedImages, *, tolerance: float) -> np.ndarray:
    """Group id per image (-1: no near duplicate): connected components of thumbnails closer than ``tolerance``.

    ``tolerance`` is an RMS difference in 0..1 grey levels (BOUNCER_NEAR_DUPLICATE_TOLERANCE).
    A decoded file is read a chunk at a time: only the thumbnails (1 KB an image) are held.
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors

    if len(images) == 0:
        return np.zeros(0, dtype=np.int64)
    if isinstance(images, np.ndarray):
        thumbs = thumbnails(images)
    else:
        thumbs = np.concatenate([thumbnails(chunk) for chunk in chunks(images, chunk_rows(images.image_size))])
    radius = tolerance * np.sqrt(thumbs.shape[1])
    graph = NearestNeighbors(radius=radius).fit(thumbs).radius_neighbors_graph(thumbs, mode="connectivity")
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    return np.where(sizes[component] > 1, component, -1).astype(np.int64)


def duplicate_conflicts(keys: Sequence[Sequence[str]], labels: Sequence[int]) -> list[list[int]]:
    """Groups of indices that share any key (e.g. sha256 or near-duplicate group) but not one label."""
    parent = list(range(len(labels)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key_column in keys:
        first_seen: dict[str, int] = {}
        for i, key in enumerate(key_column):
            if not key:  # no key: in no group
                continue
            if key in first_seen:
                parent[find(i)] = find(first_seen[key])
            else:
                first_seen[key] = i
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(labels)):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1 and len({labels[i] for i in g}) > 1]
