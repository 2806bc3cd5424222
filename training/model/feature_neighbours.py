"""Nearest neighbours in a feature space, for label agreement: who looks like whom, by cosine similarity.

Arrays in, arrays out (row numbers, not image ids), so the curation layer can
turn them into votes with whatever labels are current. Up to ``exact_max``
candidates the search is exact (faiss flat inner product on L2-normalised rows);
beyond, an exact search costs n^2 * d (over half an hour at 1M images on two
cores), so an inverted-file index (8-bit scalar-quantized, seeded k-means) finds
the candidates and their exact cosines re-rank them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

NEIGHBOURS = 10  # k stored per image: SimiFeat's default (Zhu, Dong and Liu, ICML 2022)
QUERY_CHUNK = 4096  # queries per faiss call: bounds the (chunk, k) result and faiss's scratch memory
EXACT_SEARCH_MAX = 200_000  # default of BOUNCER_EXACT_SEARCH_MAX: exact search up to this many candidates
SAMPLE_PER_LIST = 40  # training points per inverted list (faiss warns below 39)
KMEANS_ITERATIONS = 10  # of the lists' k-means: 120 s at 1M with faiss's default 25, on two busy cores
PROBES = 16  # lists a query visits: recall@11 0.99 at 8, 0.9999 at 16 after re-ranking (1M clustered, 4000 lists)
SEED = 1234


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32 and contiguous, as faiss wants."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.ascontiguousarray(features / np.maximum(norms, 1e-12))


def lists_for(n: int) -> int:
    """Inverted lists for ``n`` vectors: 4 sqrt(n) (faiss's guideline), e.g. 4000 at 1M."""
    return max(1, int(4 * np.sqrt(n)))


def inverted_index(dim: int, n: int, sample: np.ndarray, *, inner_product: bool):
    """An untrained-then-trained IVF index with 8-bit scalar quantization (``dim`` bytes a vector), k-means seeded.

    ``sample``: float32 training rows (a seeded sample of the vectors to come).
    """
    import faiss

    metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
    lists = min(lists_for(n), max(1, len(sample) // SAMPLE_PER_LIST))
    quantizer = faiss.IndexFlatIP(dim) if inner_product else faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit, metric)
    index.cp.seed = SEED
    index.cp.niter = KMEANS_ITERATIONS
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.quantizer_trains_alone = 0
    return index


def sample_rows(n: int, lists: int, seed: int = SEED) -> np.ndarray:
    """Sorted seeded sample of row numbers to train ``lists`` inverted lists on."""
    size = min(n, lists * SAMPLE_PER_LIST)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def nearest(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    *,
    query_rows: np.ndarray | None = None,
    candidate_rows: np.ndarray | None = None,
    exact_max: int = EXACT_SEARCH_MAX,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` most similar candidates: (rows, cosine similarities), each (len(queries), k).

    ``query_rows``/``candidate_rows`` name each row in one numbering (default: its
    position); a query never finds itself (the same row number). Rows beyond the
    candidates there are are -1 with similarity 0. More than ``exact_max`` candidates:
    approximate (see the module), the similarities returned still exact.
    """
    n_queries = len(queries)
    query_rows = np.arange(n_queries) if query_rows is None else np.asarray(query_rows)
    candidate_rows = np.arange(len(candidates)) if candidate_rows is None else np.asarray(candidate_rows)
    rows = np.full((n_queries, k), -1, dtype=np.int32)
    similarities = np.zeros((n_queries, k), dtype=np.float32)
    if n_queries == 0 or len(candidates) == 0 or k == 0:
        return rows, similarities
    wanted = min(k + 1, len(candidates))  # one more: the query itself may be among the candidates
    found_chunks = _exact(queries, candidates, wanted) if len(candidates) <= exact_max else None
    if found_chunks is None:
        found_chunks = _approximate(queries, candidates, wanted)
    for start, found_sim, found in found_chunks:
        found_rows = np.where(found >= 0, candidate_rows[np.maximum(found, 0)], -1)
        own = query_rows[start : start + len(found)]
        keep = (found_rows >= 0) & (found_rows != own[:, None])
        # stable: the kept hits first, in their order, then the rest; keep the first k of them
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(keep, order, axis=1)
        chunk_rows_, chunk_sim = np.take_along_axis(found_rows, order, axis=1), np.take_along_axis(found_sim, order, 1)
        width = order.shape[1]
        rows[start : start + len(found), :width] = np.where(kept, chunk_rows_, -1)
        similarities[start : start + len(found), :width] = np.where(kept, chunk_sim, 0.0)
    return rows, similarities


def _exact(queries: np.ndarray, candidates: np.ndarray, wanted: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    import faiss

    index = faiss.IndexFlatIP(candidates.shape[1])
    index.add(normalised(candidates))
    for start in range(0, len(queries), QUERY_CHUNK):
        found_sim, found = index.search(normalised(queries[start : start + QUERY_CHUNK]), wanted)
        yield start, found_sim, found


def _approximate(
    queries: np.ndarray, candidates: np.ndarray, wanted: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """IVF-SQ8 search for twice ``wanted``, re-ranked by exact cosine; candidates added a chunk at a time."""
    n, dim = candidates.shape
    norms = np.maximum(np.linalg.norm(candidates, axis=1), 1e-12).astype(np.float32)
    index = inverted_index(dim, n, normalised(candidates[sample_rows(n, lists_for(n))]), inner_product=True)
    for start in range(0, n, QUERY_CHUNK):
        index.add(normalised(candidates[start : start + QUERY_CHUNK]))
    index.nprobe = min(index.nlist, PROBES)
    looked = min(2 * wanted, n)
    for start in range(0, len(queries), QUERY_CHUNK):
        unit = normalised(queries[start : start + QUERY_CHUNK])
        _, found = index.search(unit, looked)
        safe = np.maximum(found, 0)
        exact = np.einsum("qd,qkd->qk", unit, candidates[safe]) / norms[safe]
        exact = np.where(found >= 0, exact, -np.inf).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :wanted]
        found_sim = np.take_along_axis(exact, order, axis=1)
        yield (
            start,
            np.where(np.isfinite(found_sim), found_sim, 0.0).astype(np.float32),
            np.take_along_axis(found, order, axis=1),
        )
