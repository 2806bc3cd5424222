"""Where a training's models are trained: this process (``local``) or a Ray cluster (``ray``).

An engine gives the out-of-fold step its fold runner; the main model trains in this
process whatever the engine (see :mod:`training.pipeline.ray_training` on Ray Train), as
does everything else in a run (export, evaluation, embedding, registering). The engine is
recorded with the version and in MLflow.
``BOUNCER_TRAIN_ENGINE`` (or ``bouncer train --engine``) chooses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from training.settings import Settings

if TYPE_CHECKING:
    from training.model.out_of_fold import FoldRunner


class Engine(Protocol):
    name: str
    needs_files: bool  # the images must be in a decoded file (workers elsewhere read it from the shared mount)

    def describe(self) -> dict[str, Any]: ...

    def fold_runner(self) -> FoldRunner | None: ...


class LocalEngine:
    """Everything in this process, the fold models one after another."""

    name = "local"
    needs_files = False

    def describe(self) -> dict[str, Any]:
        return {"train_engine": self.name}

    def fold_runner(self) -> FoldRunner | None:
        return None  # out_of_fold_probabilities' own: one after another, with progress


@contextmanager
def open_engine(settings: Settings) -> Iterator[Engine]:
    """The engine ``settings`` name, ready for the run (Ray started or joined) and shut down after."""
    if settings.train_engine == "local":
        yield LocalEngine()
        return
    from training.pipeline.ray_training import ray_engine

    with ray_engine(settings) as engine:
        yield engine
