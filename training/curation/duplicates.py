"""Duplicates that disagree: the same picture (exact bytes, or near-identical thumbnails) under different labels."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from training.data.decoded import DecodedImages, InMemoryImages, chunk_rows, chunks, subset
from training.model.feature_neighbours import EXACT_SEARCH_MAX, inverted_index, lists_for, sample_rows

THUMBNAIL = 16  # px a side: 256 grey levels an image
DUPLICATE_PROBES = 8  # inverted lists a range search visits: copies sit close, nearly always in the same list


def thumbnails(images: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
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


def near_duplicate_groups(
    images: np.ndarray | DecodedImages, *, tolerance: float, exact_max: int = EXACT_SEARCH_MAX
) -> np.ndarray:
    """Group id per image (-1: no near duplicate): connected components of thumbnails closer than ``tolerance``.

    ``tolerance`` is an RMS difference in 0..1 grey levels (BOUNCER_NEAR_DUPLICATE_TOLERANCE).
    A decoded file is read a chunk at a time. Up to ``exact_max`` images (BOUNCER_EXACT_SEARCH_MAX)
    every pair is compared (the thumbnails, 1 KB an image, held); beyond, that is quadratic, so the
    thumbnails go into an 8-bit IVF index (256 bytes an image) and a range search per chunk finds the pairs.
    """
    if len(images) == 0:
        return np.zeros(0, dtype=np.int64)
    images = InMemoryImages(images) if isinstance(images, np.ndarray) else images
    if len(images) <= exact_max:
        return _exact_groups(images, tolerance)
    return _approximate_groups(images, tolerance)


def _exact_groups(images: DecodedImages, tolerance: float) -> np.ndarray:
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors

    thumbs = np.concatenate([thumbnails(chunk) for chunk in chunks(images, chunk_rows(images.image_size))])
    radius = tolerance * np.sqrt(thumbs.shape[1])
    graph = NearestNeighbors(radius=radius).fit(thumbs).radius_neighbors_graph(thumbs, mode="connectivity")
    _, component = connected_components(graph, directed=False)
    return _groups(component)


def _approximate_groups(images: DecodedImages, tolerance: float) -> np.ndarray:
    """Each chunk added, then searched against all added so far: each pair is found once, from its later image.

    The index finds candidate pairs within the radius widened by the worst 8-bit rounding of both
    thumbnails (queries are quantized as the stored ones are); each candidate is then checked on the
    exact thumbnails, recomputed from its images, so a pair counts exactly when it does in the exact path.
    """
    import faiss

    n, step = len(images), chunk_rows(images.image_size)
    sample = np.concatenate([thumbnails(c) for c in chunks(subset(images, sample_rows(n, lists_for(n))), step)])
    dim = sample.shape[1]
    index = inverted_index(dim, n, sample, inner_product=False)
    del sample
    index.nprobe = min(index.nlist, DUPLICATE_PROBES)
    steps = faiss.vector_to_array(index.sq.trained)[dim:] / 255  # per dimension, of the trained residual range
    radius = tolerance * np.sqrt(dim)
    reach = (radius + float(np.linalg.norm(steps))) ** 2 + 1e-6  # squared L2: two roundings of half a step each
    component = np.arange(n)  # the smallest row of each image's group so far
    for start, chunk in zip(range(0, n, step), chunks(images, step), strict=True):
        exact = thumbnails(chunk)
        coded = index.sa_decode(index.sa_encode(np.ascontiguousarray(exact)))
        index.add(coded)
        limits, _, found = index.range_search(coded, reach)
        query = start + np.repeat(np.arange(len(exact)), np.diff(limits.astype(np.int64)))
        found = found.astype(np.int64)
        query, found = query[found < query], found[found < query]  # each pair once, from its later image
        if len(found) == 0:
            continue
        earlier, where = np.unique(found, return_inverse=True)
        theirs = _thumbnails_of(images, earlier, step)[where]
        close = np.linalg.norm(exact[query - start] - theirs, axis=1) <= radius
        component = _joined(component, query[close], found[close])
    return _groups(component)


def _thumbnails_of(images: DecodedImages, rows: np.ndarray, step: int) -> np.ndarray:
    """Exact thumbnails of some (sorted) rows, read ``step`` at a time."""
    return np.concatenate([thumbnails(images.take(rows[i : i + step])) for i in range(0, len(rows), step)])


def _joined(component: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``component`` with the groups of each pair (a[i], b[i]) merged, each labelled by its smallest row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = component[a], component[b]
    apart = a != b
    if not apart.any():
        return component
    nodes, pairs = np.unique(np.concatenate([a[apart], b[apart]]), return_inverse=True)
    half = len(pairs) // 2
    graph = coo_matrix((np.ones(half), (pairs[:half], pairs[half:])), shape=(len(nodes), len(nodes)))
    _, joined = connected_components(graph, directed=False)
    smallest = np.full(joined.max() + 1, len(component))
    np.minimum.at(smallest, joined, nodes)  # nodes are group labels, i.e. smallest rows
    relabel = np.arange(len(component))
    relabel[nodes] = smallest[joined]
    return relabel[component]


def _groups(component: np.ndarray) -> np.ndarray:
    """Group labels numbered 0.. by their first row (as connected_components numbers them); -1 for a lone image."""
    _, first, label = np.unique(component, return_index=True, return_inverse=True)
    label = np.argsort(np.argsort(first))[label]
    sizes = np.bincount(label)
    return np.where(sizes[label] > 1, label, -1).astype(np.int64)


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
