"""Nearest neighbours in a feature space, for label agreement: who looks like whom, by cosine similarity.

Arrays in, arrays out (row numbers, not image ids), so the curation layer can
turn them into votes with whatever labels are current. Exact search (faiss flat
inner product on L2-normalised rows, in query chunks of bounded memory).
"""

from __future__ import annotations

import numpy as np

NEIGHBOURS = 10  # k stored per image: SimiFeat's default (Zhu, Dong and Liu, ICML 2022)
QUERY_CHUNK = 4096  # queries per faiss call: bounds the (chunk, k) result and faiss's scratch memory


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32 and contiguous, as faiss wants."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.ascontiguousarray(features / np.maximum(norms, 1e-12))


def nearest(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    *,
    query_rows: np.ndarray | None = None,
    candidate_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` most similar candidates: (rows, cosine similarities), each (len(queries), k).

    ``query_rows``/``candidate_rows`` name each row in one numbering (default: its
    position); a query never finds itself (the same row number). Rows beyond the
    candidates there are are -1 with similarity 0.
    """
    import faiss

    n_queries = len(queries)
    query_rows = np.arange(n_queries) if query_rows is None else np.asarray(query_rows)
    candidate_rows = np.arange(len(candidates)) if candidate_rows is None else np.asarray(candidate_rows)
    rows = np.full((n_queries, k), -1, dtype=np.int32)
    similarities = np.zeros((n_queries, k), dtype=np.float32)
    if n_queries == 0 or len(candidates) == 0 or k == 0:
        return rows, similarities
    index = faiss.IndexFlatIP(candidates.shape[1])
    index.add(normalised(candidates))
    wanted = min(k + 1, len(candidates))  # one more: the query itself may be among the candidates
    for start in range(0, n_queries, QUERY_CHUNK):
        chunk = slice(start, start + QUERY_CHUNK)
        found_sim, found = index.search(normalised(queries[chunk]), wanted)
        found_rows = np.where(found >= 0, candidate_rows[np.maximum(found, 0)], -1)
        for i, (hit_rows, hit_sim) in enumerate(zip(found_rows, found_sim, strict=True), start=start):
            keep = (hit_rows >= 0) & (hit_rows != query_rows[i])
            hit_rows, hit_sim = hit_rows[keep][:k], hit_sim[keep][:k]
            rows[i, : len(hit_rows)] = hit_rows
            similarities[i, : len(hit_rows)] = hit_sim
    return rows, similarities
