"""Fit the CNN: a cached tf.data pipeline, augmentation, validation split, cosine decay, early stopping."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split

from training.model import build_classifier
from training.progress import ProgressSink, TrainingProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    image_size: int = 32
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 2e-3
    validation_fraction: float = 0.1
    early_stopping_patience: int = 3
    seed: int = 42
    verbose: int = 0  # keras progress bar: 0 silent, 1 bar, 2 line per epoch


@dataclass
class TrainedClassifier:
    model: keras.Model
    class_names: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    wall_time_s: float = 0.0


class KerasProgress(keras.callbacks.Callback):
    """Forwards per-epoch metrics from ``model.fit`` into a progress sink."""

    def __init__(self, progress: TrainingProgress, sink: ProgressSink) -> None:
        super().__init__()
        self.progress = progress
        self.sink = sink

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float, np.floating))}
        self.progress.epoch = epoch + 1
        self.progress.metrics = metrics
        self.progress.history.append({"epoch": epoch + 1, **metrics})
        self.progress.message = f"epoch {epoch + 1}/{self.progress.epochs}"
        self.sink(self.progress)


def seed_everything(seed: int) -> None:
    """Same seed, same data, same weights (deterministic ops on CPU)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_dataset(
    images: np.ndarray, targets: np.ndarray, *, batch_size: int, seed: int, augment: bool
) -> tf.data.Dataset:
    """Decoded uint8 arrays -> cached, shuffled, augmented float batches."""
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).cache()
    if augment:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augment:
        augmenter = keras.Sequential(
            [
                keras.layers.RandomFlip("horizontal", seed=seed),
                keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 1),
                keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
            ],
            name="augmentation",
        )
        dataset = dataset.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def train_classifier(
    images: np.ndarray,
    labels: Sequence[str],
    class_names: Sequence[str],
    config: TrainConfig,
    *,
    progress: TrainingProgress | None = None,
    sink: ProgressSink | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainedClassifier:
    """Train from decoded images (n, s, s, 3) uint8 and their string labels."""
    class_names = list(class_names)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"labels not in class_names: {unknown}")
    if len(images) == 0:
        raise ValueError("no training images")
    targets = np.array([index[label] for label in labels], dtype=np.int32)
    seed_everything(config.seed)

    x_train, y_train, validation = images, targets, None
    n_val = int(round(config.validation_fraction * len(images)))
    if n_val >= len(class_names) and len(images) - n_val >= len(class_names):
        counts = np.bincount(targets, minlength=len(class_names))
        stratify = targets if counts.min() >= 2 else None
        x_train, x_val, y_train, y_val = train_test_split(
            images, targets, test_size=n_val, random_state=config.seed, stratify=stratify
        )
        validation = make_dataset(x_val, y_val, batch_size=config.batch_size, seed=config.seed, augment=False)
    monitor = "val_loss" if validation is not None else "loss"

    model = build_classifier(len(class_names), config.image_size)
    # Cosine decay over the whole epoch budget: the last epochs take small steps, so the
    # weights that get exported have settled (with a flat rate and ReduceLROnPlateau,
    # validation accuracy swung by 0.1-0.2 between late epochs on the demo data)
    steps = int(np.ceil(len(x_train) / config.batch_size)) * config.epochs
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps, alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks: list[keras.callbacks.Callback] = [
        # not in the first half: while the rate is high, validation is noisy and a
        # stop there would keep an unsettled model
        keras.callbacks.EarlyStopping(
            monitor=monitor,
            patience=config.early_stopping_patience,
            restore_best_weights=True,
            start_from_epoch=config.epochs // 2,
        ),
        *extra_callbacks,
    ]
    if sink is not None:
        progress = progress or TrainingProgress()
        progress.phase, progress.epochs = "training", config.epochs
        callbacks.append(KerasProgress(progress, sink))

    started = time.perf_counter()
    fit = model.fit(
        make_dataset(x_train, y_train, batch_size=config.batch_size, seed=config.seed, augment=True),
        validation_data=validation,
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=config.verbose,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
    )
    wall = time.perf_counter() - started
    epochs_run = len(fit.history.get("loss", []))
    history = [{"epoch": i + 1, **{k: float(v[i]) for k, v in fit.history.items()}} for i in range(epochs_run)]
    log.info("trained %d epochs in %.1fs on %d images", epochs_run, wall, len(x_train))
    return TrainedClassifier(model, class_names, history, epochs_run, wall)
