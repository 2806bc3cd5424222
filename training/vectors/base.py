"""The index interface, its filter and its hits, and the registry of backends by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np

from training.labels.store import LabelStore


@dataclass(frozen=True)
class Where:
    """Which images a search may return, by their current state in the label store (present images only)."""

    split: str | None = None
    labels: frozenset[str] | None = None  # any of these labels; None: any label
    unreviewed: bool = False  # leave out images a person relabelled or confirmed
    exclude: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls,
        *,
        split: str | None = None,
        label: str | None = None,
        labels: Collection[str] | None = None,
        unreviewed: bool = False,
        exclude: Collection[str] = (),
    ) -> Where:
        chosen = frozenset(labels) if labels is not None else (frozenset([label]) if label is not None else None)
        return cls(split, chosen, unreviewed, frozenset(exclude))


@dataclass(frozen=True)
class Hit:
    image_id: str
    distance: float  # Euclidean, in the reduced space


class VectorIndex(ABC):
    """Nearest neighbours among the images' vectors, restricted by :class:`Where` on the current labels.

    Implementations are thread-safe: a serving worker searches from several threads
    while a refresh adds the vectors of newly imported images.
    """

    backend: ClassVar[str]
    dim: int

    @abstractmethod
    def add(self, image_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add (or replace) the vectors of these images."""

    @abstractmethod
    def remove(self, image_ids: Sequence[str]) -> None:
        """Forget these images' vectors (unknown ids are ignored)."""

    @abstractmethod
    def vectors_of(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vector of each id the index holds (ids it does not hold are absent)."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> list[list[Hit]]:
        """The ``k`` nearest images to each query (rows of ``queries``) among those ``where`` allows, nearest first."""

    @abstractmethod
    def refresh(self, store: LabelStore) -> None:
        """Follow the label store: split/label/review state of every image, cheaply when little changed."""

    @abstractmethod
    def missing(self, store: LabelStore) -> list[str]:
        """Present images of ``store`` that have no vector yet (imported after the index was built)."""

    @abstractmethod
    def __len__(self) -> int:
        """How many vectors are held."""

    def save(self, folder: Path) -> None:  # noqa: B027  (optional: most backends live elsewhere)
        """Write the index into a model version's folder (backends that live elsewhere write nothing)."""


Backend = TypeVar("Backend", bound=type[VectorIndex])
BACKENDS: dict[str, type[VectorIndex]] = {}


def register_backend(name: str) -> Callable[[Backend], Backend]:
    """Class decorator: make a backend available as ``BOUNCER_VECTOR_INDEX=<name>``."""

    def register(cls: Backend) -> Backend:
        cls.backend = name
        BACKENDS[name] = cls
        return cls

    return register
