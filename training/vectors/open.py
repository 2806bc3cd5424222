"""Choosing and opening a model version's index by the configured backend name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.settings import Settings
from training.vectors.base import BACKENDS, VectorIndex
from training.vectors.faiss_index import FaissIndex


def faiss_options(settings: Settings) -> dict[str, int]:
    return {"exact_max": settings.index_exact_max, "brute_force_max": settings.index_brute_force_max}


def build_index(settings: Settings, image_ids: Sequence[str], vectors: np.ndarray) -> FaissIndex:
    """The index stored with a new model version: always the embedded one, whatever serves it later."""
    return FaissIndex.build(image_ids, vectors, **faiss_options(settings))


def load_index(folder: Path, tag: str, settings: Settings) -> VectorIndex:
    """The index a worker searches for the version stored in ``folder``, by ``settings.vector_index``."""
    stored = FaissIndex.load(folder, **faiss_options(settings))
    if settings.vector_index == "faiss":
        return stored
    if settings.vector_index not in BACKENDS:
        from training.vectors import pgvector_index  # noqa: F401  (registers itself; needs psycopg)
    return BACKENDS[settings.vector_index].attach(settings, tag, stored)  # type: ignore[attr-defined]
