"""The embedded default: faiss in the worker's memory, exact (flat + bitmap filter) up to ``index_exact_max`` images.

Positions in faiss are the order vectors were added; beside them, position-aligned
arrays hold each image's current split, label, presence and review state, so a
filter is a bitmap faiss checks while it scans. The arrays follow the label store
through its revision counter: after a relabel a worker reads only the changed rows.

Above ``index_exact_max`` vectors the index is IVF (inverted lists over k-means
cells), its ``nprobe`` tuned when it is built to keep recall@10 >= 0.95 against
exact search. Filtered approximate search loses recall when the filter is
selective (issue 13 measured HNSW at 0.34 with a 10% filter), so a filter that
leaves at most ``brute_force_max`` candidates is answered exactly over them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from training.labels.records import ImageChange, ImageState
from training.labels.store import LabelStore
from training.vectors.base import Hit, VectorIndex, Where, register_backend

# One OpenMP thread: a search here is milliseconds of work, and faiss's spinning OpenMP
# threads made a trace of 200 errors 40x slower (2.6 -> 102 ms) on 2 busy cores (issue 13).
# OpenMP keeps the setting per thread, so every searching thread sets it (it is cheap).
faiss.omp_set_num_threads(1)

# The vectors in the layout every Bouncer release reads (ids, splits, vectors): an older
# Bouncer can still load a version this one registered. ``splits`` is kept empty: the
# label store has the current split of every image.
VECTORS_FILE = "index.npz"
FAISS_FILE = "vectors.faiss"  # only for IVF, whose k-means training is worth keeping
META_FILE = "vectors.json"


@register_backend("faiss")
class FaissIndex(VectorIndex):
    def __init__(
        self, dim: int, *, exact_max: int = 200_000, brute_force_max: int = 20_000, target_recall: float = 0.95
    ) -> None:
        self.dim = dim
        self.exact_max = exact_max
        self.brute_force_max = brute_force_max
        self.target_recall = target_recall
        self.nprobe = 0  # 0: flat
        self._faiss: faiss.Index = faiss.IndexFlatL2(dim)
        self._vectors = np.zeros((0, dim), np.float32)
        self._ids: list[str] = []
        self._position: dict[str, int] = {}
        self._alive = np.zeros(0, bool)
        self._lock = threading.RLock()
        # the label view, position-aligned
        self._store_url: str | None = None
        self._revision = -1
        self._splits: dict[str, int] = {}
        self._labels: dict[str, int] = {}
        self._split = np.zeros(0, np.int16)
        self._label = np.zeros(0, np.int32)
        self._present = np.zeros(0, bool)
        self._reviewed = np.zeros(0, bool)
        self._pending: dict[str, ImageState | ImageChange] = {}  # images in the store without a vector yet

    # --- building -------------------------------------------------------------------
    @classmethod
    def build(cls, image_ids: Sequence[str], vectors: np.ndarray, **options: int | float) -> FaissIndex:
        """An index over these vectors: flat while exact search is fast enough, IVF above ``exact_max``."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = cls(vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else 1, **options)  # type: ignore[arg-type]
        if len(vectors) > index.exact_max:
            index._faiss = index._train_ivf(vectors)
        index.add(image_ids, vectors)
        if index.nprobe:
            index._tune_nprobe()
        return index

    def _train_ivf(self, vectors: np.ndarray) -> faiss.Index:
        cells = int(min(max(4 * np.sqrt(len(vectors)), 64), 16_384))
        quantizer = faiss.IndexFlatL2(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, cells, faiss.METRIC_L2)
        sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), 64 * cells), replace=False)
        ivf.train(vectors[np.sort(sample)])
        self.nprobe = 8
        return ivf

    def _tune_nprobe(self, queries: int = 200, k: int = 10) -> None:
        """Double ``nprobe`` until recall@k against exact search reaches the target on a sample of the vectors."""
        n = len(self._ids)
        sample = self._vectors[np.random.default_rng(1).choice(n, min(n, queries), replace=False)]
        _, exact = faiss.knn(sample, self._vectors[:n], k)
        cells = self._faiss.nlist
        while True:
            _, found = self._faiss.search(sample, k, params=faiss.SearchParametersIVF(nprobe=self.nprobe))
            recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact, strict=True)])
            if recall >= self.target_recall + 0.02 or self.nprobe >= cells:
                return
            self.nprobe = min(self.nprobe * 2, cells)

    # --- the interface ----------------------------------------------------------------
    def add(self, image_ids: Sequence[str], vectors: np.ndarray) -> None:
        self._append(image_ids, vectors, into_faiss=True)

    def _append(self, image_ids: Sequence[str], vectors: np.ndarray, *, into_faiss: bool) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(image_ids), -1)
        if len(image_ids) and vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have {vectors.shape[1]} dimensions; this index holds {self.dim}")
        with self._lock:
            # a replaced vector: the old position is retired, its label state moves to the new one
            moved = {image_id: self._position[image_id] for image_id in image_ids if image_id in self._position}
            self.remove(list(moved))
            start = len(self._ids)
            self._grow(start + len(image_ids))
            self._vectors[start : start + len(image_ids)] = vectors
            if into_faiss:
                self._faiss.add(vectors)
            for offset, image_id in enumerate(image_ids):
                self._ids.append(image_id)
                self._position[image_id] = start + offset
                self._alive[start + offset] = True
                if (state := self._pending.pop(image_id, None)) is not None:
                    self._set_state(start + offset, state)
                elif (old := moved.get(image_id)) is not None:
                    for column in (self._split, self._label, self._present, self._reviewed):
                        column[start + offset] = column[old]

    def _grow(self, size: int) -> None:
        if size <= len(self._alive):
            return
        capacity = max(size, 2 * len(self._alive), 1024)

        def grown(array: np.ndarray, fill: object) -> np.ndarray:
            bigger = np.full((capacity, *array.shape[1:]), fill, dtype=array.dtype)
            bigger[: len(array)] = array
            return bigger

        self._vectors = grown(self._vectors, 0.0)
        self._alive = grown(self._alive, False)
        self._split = grown(self._split, -1)
        self._label = grown(self._label, -1)
        self._present = grown(self._present, False)
        self._reviewed = grown(self._reviewed, False)

    def remove(self, image_ids: Sequence[str]) -> None:
        with self._lock:
            for image_id in image_ids:
                position = self._position.pop(image_id, None)
                if position is not None:
                    self._alive[position] = False  # faiss keeps the row; the bitmap never selects it again

    def vectors_of(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            return {i: self._vectors[p].copy() for i in image_ids if (p := self._position.get(i)) is not None}

    def __len__(self) -> int:
        return len(self._position)

    def items(self) -> tuple[list[str], np.ndarray]:
        """Every held id and its vector, in add order (to copy the index into another backend)."""
        with self._lock:
            alive = np.flatnonzero(self._alive[: len(self._ids)])
            return [self._ids[p] for p in alive], self._vectors[alive].copy()

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> list[list[Hit]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        faiss.omp_set_num_threads(1)
        with self._lock:
            n = len(self._ids)
            mask = self._mask(where or Where(), n)
            candidates = int(mask.sum())
            k = min(k, candidates)
            if k <= 0 or len(queries) == 0:
                return [[] for _ in queries]
            if candidates <= self.brute_force_max:
                rows = np.flatnonzero(mask)
                distances, found = faiss.knn(queries, self._vectors[rows], k)
                positions = np.where(found >= 0, rows[np.maximum(found, 0)], -1)
            else:
                bits = np.packbits(mask, bitorder="little")
                selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
                params = (
                    faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
                    if self.nprobe
                    else faiss.SearchParameters(sel=selector)
                )
                distances, positions = self._faiss.search(queries, k, params=params)
            ids = self._ids
            return [
                [Hit(ids[p], float(np.sqrt(max(d, 0.0)))) for p, d in zip(row, dist, strict=True) if p >= 0]
                for row, dist in zip(positions, distances, strict=True)
            ]

    def _mask(self, where: Where, n: int) -> np.ndarray:
        mask = self._alive[:n] & self._present[:n]
        if where.split is not None:
            mask &= self._split[:n] == self._splits.get(where.split, -2)
        if where.labels is not None:
            codes = [self._labels[label] for label in where.labels if label in self._labels]
            mask &= np.isin(self._label[:n], codes) if len(codes) > 1 else self._label[:n] == (codes or [-2])[0]
        if where.unreviewed:
            mask &= ~self._reviewed[:n]
        for image_id in where.exclude:
            if (position := self._position.get(image_id)) is not None:
                mask[position] = False
        return mask

    # --- following the label store ------------------------------------------------------
    def refresh(self, store: LabelStore) -> None:
        url = store.database.url
        with self._lock:
            if url != self._store_url:  # another database: read every row
                self._store_url, self._revision = url, -1
                self._present[:] = False
                self._pending.clear()
            if self._revision >= 0 and store.queries.revision() == self._revision:
                return
            revision, changes = store.queries.changes_since(self._revision)
            self.set_states(changes)
            self._revision = revision

    def set_states(self, states: Iterable[ImageState | ImageChange]) -> None:
        """What filters see for these images (ids without a vector yet wait for their :meth:`add`)."""
        with self._lock:
            for state in states:
                position = self._position.get(state.image_id)
                if position is None:
                    self._pending[state.image_id] = state
                else:
                    self._set_state(position, state)

    def _set_state(self, position: int, state: ImageState | ImageChange) -> None:
        self._split[position] = self._splits.setdefault(state.split, len(self._splits))
        self._label[position] = self._labels.setdefault(state.label, len(self._labels))
        self._present[position] = state.present
        self._reviewed[position] = state.reviewed

    def missing(self, store: LabelStore) -> list[str]:
        self.refresh(store)
        with self._lock:
            return sorted(image_id for image_id, state in self._pending.items() if state.present)

    # --- storage --------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        with self._lock:
            alive = [p for p in range(len(self._ids)) if self._alive[p]]
            ids = np.asarray([self._ids[p] for p in alive], dtype=str)
            splits = np.full(len(ids), "", dtype=str)
            np.savez(folder / VECTORS_FILE, image_ids=ids, splits=splits, vectors=self._vectors[alive])
            meta = {"backend": self.backend, "dim": self.dim, "nprobe": self.nprobe, "exact_max": self.exact_max}
            (folder / META_FILE).write_text(json.dumps(meta))
            if self.nprobe and len(alive) == len(self._ids):
                faiss.write_index(self._faiss, str(folder / FAISS_FILE))

    @classmethod
    def load(cls, folder: Path, **options: int | float) -> FaissIndex:
        """The index saved in a model version's folder (versions from before the index have no metadata: built)."""
        with np.load(folder / VECTORS_FILE, allow_pickle=False) as data:
            image_ids, vectors = data["image_ids"].tolist(), data["vectors"]
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
        if (folder / FAISS_FILE).is_file():
            index = cls(vectors.shape[1], **options)  # type: ignore[arg-type]
            index._faiss = faiss.read_index(str(folder / FAISS_FILE))  # holds the vectors, in this order
            index.nprobe = int(meta.get("nprobe", 8))
            index._append(image_ids, vectors, into_faiss=False)
            return index
        return cls.build(image_ids, vectors, **options)
