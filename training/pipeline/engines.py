"""Where a training's models are trained: this process (``local``) or a Ray cluster (``ray``).

An engine trains the main model (:meth:`Engine.fit`) and gives the out-of-fold step its
fold runner; everything else in a run (export, evaluation, embedding, registering) is the
same whatever the engine, and the engine is recorded with the version and in MLflow.
``BOUNCER_TRAIN_ENGINE`` (or ``bouncer train --engine``) chooses it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from training.settings import Settings

if TYPE_CHECKING:
    import keras

    from training.data.decoded import DecodedImages
    from training.model.fit import TrainConfig, TrainedClassifier
    from training.model.out_of_fold import FoldRunner
    from training.progress import ProgressSink, TrainingProgress


class Engine(Protocol):
    name: str
    needs_files: bool  # the images must be in a decoded file (workers elsewhere read it from the shared mount)

    def describe(self) -> dict[str, Any]: ...

    def fold_runner(self) -> FoldRunner | None: ...

    def fit(
        self,
        images: DecodedImages,
        labels: Sequence[str],
        class_names: Sequence[str],
        config: TrainConfig,
        *,
        progress: TrainingProgress,
        sink: ProgressSink,
        extra_callbacks: Sequence[keras.callbacks.Callback],
    ) -> TrainedClassifier: ...


class LocalEngine:
    """Everything in this process, the fold models one after another."""

    name = "local"
    needs_files = False

    def describe(self) -> dict[str, Any]:
        return {"train_engine": self.name}

    def fold_runner(self) -> FoldRunner | None:
        return None  # out_of_fold_probabilities' own: one after another, with progress

    def fit(
        self,
        images: DecodedImages,
        labels: Sequence[str],
        class_names: Sequence[str],
        config: TrainConfig,
        *,
        progress: TrainingProgress,
        sink: ProgressSink,
        extra_callbacks: Sequence[keras.callbacks.Callback],
    ) -> TrainedClassifier:
        from training.model.fit import train_classifier

        return train_classifier(
            images, labels, class_names, config, progress=progress, sink=sink, extra_callbacks=extra_callbacks
        )


@contextmanager
def open_engine(settings: Settings) -> Iterator[Engine]:
    """The engine ``settings`` name, ready for the run (Ray started or joined) and shut down after."""
    if settings.train_engine == "local":
        yield LocalEngine()
        return
    from training.pipeline.ray_training import ray_engine

    with ray_engine(settings) as engine:
        yield engine
