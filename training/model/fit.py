"""Fit a network: a cached tf.data pipeline, augmentation, validation split, cosine decay, early stopping.

The recipe must learn on a user's 200 photos as well as on 8,000 drawings without
hand-tuning (issue 10), so the budget is a number of optimisation *steps*, not only
epochs (200 images at batch 64 were 3 steps an epoch, 45 in all: the model did not
learn), the batch shrinks with the dataset, and early stopping watches a smoothed
validation loss (20 validation images make the raw one jump between epochs).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split

from training.data.decoded import DecodedImages, InMemoryImages, chunk_rows, chunks, subset
from training.model.augment import AugmentKind, augment_batch
from training.model.network import (
    STATISTICS_BATCH,
    build_classifier,
    feature_extractor,
    head_model,
    is_pretrained,
    recompute_batchnorm_statistics,
    unfreeze_backbone,
)
from training.progress import ProgressSink, TrainingProgress

log = logging.getLogger(__name__)

# Batch size "auto": about this many steps an epoch, within [MIN_AUTO_BATCH, MAX_AUTO_BATCH].
TARGET_STEPS_PER_EPOCH = 20
MIN_AUTO_BATCH, MAX_AUTO_BATCH = 8, 64
# Early stopping watches an exponential moving average of val_loss with this weight on the newest epoch.
SMOOTHING = 0.5
FINE_TUNE_RATE_FACTOR = 0.1  # fine-tuning a pretrained backbone: a tenth of the head's learning rate
STREAM_PREFETCH = 4  # batches read ahead of the model when streaming
PREDICT_BATCH = 256


@dataclass(frozen=True)
class TrainConfig:
    image_size: int = 32
    epochs: int = 15  # at least; more when the step floor needs them
    batch_size: int = 64
    learning_rate: float = 2e-3
    validation_fraction: float = 0.1
    early_stopping_patience: int = 3
    seed: int = 42
    min_steps: int = 600
    augment: AugmentKind = "light"
    backbone: str = "cnn"
    backbone_weights: str = "none"
    fine_tune_epochs: int = 0
    verbose: int = 0  # keras progress bar: 0 silent, 1 bar, 2 line per epoch


@dataclass
class TrainedClassifier:
    model: keras.Model
    class_names: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    wall_time_s: float = 0.0
    epochs_planned: int = 0
    validation_accuracy: float | None = None  # on the held-out part of the train split, None without one


def auto_batch_size(n_train: int) -> int:
    """A power of two giving about TARGET_STEPS_PER_EPOCH steps an epoch (8 for 200 images, 64 from 1,280)."""
    wanted = max(1, n_train // TARGET_STEPS_PER_EPOCH)
    return int(min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, 2 ** int(math.log2(wanted)))))


def planned_epochs(n_train: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """``epochs``, or more when they would make fewer than ``min_steps`` optimisation steps."""
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(epochs, math.ceil(min_steps / steps_per_epoch))


class KerasProgress(keras.callbacks.Callback):
    """Forwards per-epoch metrics from ``model.fit`` into a progress sink.

    The main model's epochs go into ``progress.epoch``/``metrics``/``history`` (what a
    chart draws); a helper model's (out-of-fold) only into the message, with ``label``.
    """

    def __init__(
        self, progress: TrainingProgress, sink: ProgressSink, *, epochs: int, label: str | None = None
    ) -> None:
        super().__init__()
        self.progress = progress
        self.sink = sink
        self.epochs = epochs
        self.label = label

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float, np.floating))}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in ("loss", "accuracy", "val_accuracy"))
        if self.label is None:
            self.progress.epoch = epoch + 1
            self.progress.metrics = metrics
            self.progress.history.append({"epoch": epoch + 1, **metrics})
        self.progress.message = f"{self.label or 'model'} epoch {epoch + 1}/{self.epochs}: {shown}"
        self.sink(self.progress)


class SmoothedEarlyStopping(keras.callbacks.Callback):
    """Stop when the moving average of ``monitor`` has not improved for ``patience`` epochs.

    At the end the weights of the epoch with the best average are kept (stopped or
    not, as Keras's ``restore_best_weights``). Checked only from ``start_from_epoch``
    on: while the learning rate is high the signal is noisy and a stop there would
    keep an unsettled model.
    """

    def __init__(self, monitor: str, *, patience: int, start_from_epoch: int) -> None:
        super().__init__()
        self.monitor = monitor
        self.patience = patience
        self.start_from_epoch = start_from_epoch
        self.smoothed: float | None = None
        self.best = math.inf
        self.best_weights: list[np.ndarray] | None = None
        self.waited = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        self.smoothed = value if self.smoothed is None else SMOOTHING * value + (1 - SMOOTHING) * self.smoothed
        if epoch + 1 < self.start_from_epoch:
            return
        if self.smoothed < self.best:
            self.best, self.best_weights, self.waited = self.smoothed, self.model.get_weights(), 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def seed_everything(seed: int) -> None:
    """Same seed, same data, same weights (deterministic ops on CPU)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_dataset(
    images: np.ndarray | DecodedImages,
    targets: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    augment: AugmentKind,
    prefetch: int = STREAM_PREFETCH,
) -> tf.data.Dataset:
    """Decoded uint8 images -> shuffled, augmented float batches, read a batch at a time.

    One path whatever holds the images (an array in memory or a decoded file): the same
    seed gives the same batches, so a streamed training learns the same weights. Each
    epoch reads the rows in a new seeded order (a whole-dataset shuffle of row numbers,
    not a shuffle buffer of images); ``prefetch`` batches are read ahead of the model
    (not tf.data's autotuning, which may buffer up to half the machine's memory).
    """
    source = InMemoryImages(images) if isinstance(images, np.ndarray) else images
    dataset = streamed_batches(source, targets, batch_size=batch_size, seed=seed, shuffle=augment != "none")

    def prepared(x: tf.Tensor, y: tf.Tensor, number: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # A batch's random draws come from (seed, its number since the first epoch): stateless, so
        # the same seed gives the same batches however many map calls run in parallel.
        key = tf.stack([tf.constant(seed, tf.int64), number])
        return augment_batch(tf.cast(x, tf.float32), key, augment), y

    return dataset.map(prepared, num_parallel_calls=tf.data.AUTOTUNE).prefetch(prefetch)


class _EpochBatches:
    """The generator behind a streamed dataset: each call (each epoch) a new seeded order, a batch at a time.

    Each batch comes with its number counted from the first epoch on, which seeds its augmentation.
    """

    def __init__(self, images: DecodedImages, targets: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> None:
        self.images, self.targets = images, targets
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.epoch = 0

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.int64]]:
        n = len(self.images)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        first = self.epoch * math.ceil(n / self.batch_size)
        self.epoch += 1
        for number, start in enumerate(range(0, n, self.batch_size)):
            rows = order[start : start + self.batch_size]
            yield self.images.take(rows), self.targets[rows], np.int64(first + number)


def streamed_batches(
    images: DecodedImages, targets: np.ndarray, *, batch_size: int, seed: int, shuffle: bool
) -> tf.data.Dataset:
    """(uint8 images, targets, batch number) read from ``images`` (a whole-dataset shuffle of row numbers)."""
    size = images.image_size
    dataset = tf.data.Dataset.from_generator(
        _EpochBatches(images, np.asarray(targets, dtype=np.int32), batch_size, seed, shuffle),
        output_signature=(
            tf.TensorSpec((None, size, size, 3), tf.uint8),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((), tf.int64),
        ),
    )
    # Known length: the cosine schedule counts steps, and Keras shows progress, from it.
    return dataset.apply(tf.data.experimental.assert_cardinality(math.ceil(len(images) / batch_size)))


def train_classifier(
    images: np.ndarray | DecodedImages,
    labels: Sequence[str],
    class_names: Sequence[str],
    config: TrainConfig,
    *,
    progress: TrainingProgress | None = None,
    sink: ProgressSink | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    label: str | None = None,
) -> TrainedClassifier:
    """Train from decoded images (n, s, s, 3) uint8 (an array, or a :class:`DecodedImages` source) and string labels.

    ``label``: names a helper model (e.g. an out-of-fold one) in progress messages; its
    epochs do not count as the run's epochs.

    Long on purpose: one recipe read top to bottom (data, augmentation, network, schedule, callbacks).
    """
    class_names = list(class_names)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"labels not in class_names: {unknown}")
    if len(images) == 0:
        raise ValueError("no training images")
    seed_everything(config.seed)
    source = InMemoryImages(images) if isinstance(images, np.ndarray) else images
    targets = np.array([index[name] for name in labels], dtype=np.int32)
    train_rows, val_rows = hold_out(targets, len(class_names), config)
    x_train, y_train = subset(source, train_rows), targets[train_rows]
    x_val, y_val = (subset(source, val_rows), targets[val_rows]) if val_rows is not None else (None, None)
    validation = None
    if x_val is not None:
        validation = make_dataset(x_val, y_val, batch_size=config.batch_size, seed=config.seed, augment="none")
    epochs = planned_epochs(len(x_train), config.batch_size, config.epochs, config.min_steps)
    # Only a pretrained backbone is frozen first and then fine-tuned; one from scratch learns from the start.
    fine_tune_epochs = config.fine_tune_epochs if is_pretrained(config.backbone, config.backbone_weights) else 0
    total = epochs + fine_tune_epochs
    model = build_classifier(
        len(class_names), config.image_size, backbone=config.backbone, weights=config.backbone_weights
    )
    callbacks: list[keras.callbacks.Callback] = [*extra_callbacks]
    if validation is not None:
        stopper = SmoothedEarlyStopping(
            "val_loss", patience=config.early_stopping_patience, start_from_epoch=max(1, epochs // 2)
        )
        callbacks.append(stopper)
    if sink is not None:
        progress = progress or TrainingProgress()
        if label is None:
            progress.epochs = total
        callbacks.append(KerasProgress(progress, sink, epochs=total, label=label))

    started = time.perf_counter()
    if is_pretrained(config.backbone, config.backbone_weights) and not fine_tune_epochs:
        history = _fit_head_on_features(
            model,
            x_train=x_train,
            y_train=y_train,
            x_val=x_val,
            y_val=y_val,
            config=config,
            epochs=epochs,
            callbacks=callbacks,
        )
    else:
        history = _fit_network(
            model,
            x_train=x_train,
            y_train=y_train,
            validation=validation,
            config=config,
            epochs=epochs,
            fine_tune_epochs=fine_tune_epochs,
            callbacks=callbacks,
        )
    wall = time.perf_counter() - started
    validation_accuracy = None
    if x_val is not None:
        logits = predict_logits(model, x_val)
        validation_accuracy = float(np.mean(logits.argmax(axis=1) == y_val))
    log.info(
        "trained %d of %d epochs (batch %d, %d images) in %.1fs",
        len(history),
        total,
        config.batch_size,
        len(x_train),
        wall,
    )
    return TrainedClassifier(model, class_names, history, len(history), wall, total, validation_accuracy)


def _fit_network(
    model: keras.Model,
    *,
    x_train: DecodedImages,
    y_train: np.ndarray,
    validation: tf.data.Dataset | None,
    config: TrainConfig,
    epochs: int,
    fine_tune_epochs: int,
    callbacks: list[keras.callbacks.Callback],
) -> list[dict[str, float]]:
    """The whole network on augmented images (a pretrained backbone's head first, then ``fine_tune_epochs``)."""
    train_data = make_dataset(x_train, y_train, batch_size=config.batch_size, seed=config.seed, augment=config.augment)
    history = _fit(model, train_data, validation, config.learning_rate, epochs, callbacks, config.verbose)
    if fine_tune_epochs:
        unfreeze_backbone(model)
        rate = config.learning_rate * FINE_TUNE_RATE_FACTOR
        history += _fit(
            model,
            train_data,
            validation,
            rate,
            fine_tune_epochs,
            callbacks,
            config.verbose,
            first_epoch=len(history),
        )
    # on augmented images, as in training: "Rethinking Batch in BatchNorm" (Wu & Johnson, 2021)
    recompute_batchnorm_statistics(
        model, make_dataset(x_train, y_train, batch_size=STATISTICS_BATCH, seed=config.seed, augment=config.augment)
    )
    return history


def _fit_head_on_features(
    model: keras.Model,
    *,
    x_train: DecodedImages,
    y_train: np.ndarray,
    x_val: DecodedImages | None,
    y_val: np.ndarray | None,
    config: TrainConfig,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
) -> list[dict[str, float]]:
    """A frozen backbone's features computed once per image, then only the head trained on them.

    The backbone is what costs (EfficientNet-Lite0 ~20 ms an image at 160 px on 2 cores): once per
    image instead of once per image and epoch, so the step floor costs milliseconds, not epochs
    of forward passes. The images are not augmented: a feature is one view of its image.
    """
    extractor = feature_extractor(model)
    features = predict_logits(extractor, x_train)
    train_data = (
        tf.data.Dataset.from_tensor_slices((features, y_train))
        .shuffle(len(features), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
    )
    validation = None
    if x_val is not None and y_val is not None:
        validation = tf.data.Dataset.from_tensor_slices((predict_logits(extractor, x_val), y_val)).batch(PREDICT_BATCH)
    return _fit(head_model(model), train_data, validation, config.learning_rate, epochs, callbacks, config.verbose)


def predict_logits(model: keras.Model, images: DecodedImages) -> np.ndarray:
    """The model's output on every image, a chunk at a time cast to float32 (:func:`chunk_rows`)."""
    found = [
        np.asarray(model.predict(part.astype(np.float32), batch_size=PREDICT_BATCH, verbose=0))
        for part in chunks(images, chunk_rows(images.image_size))
    ]
    return np.concatenate(found) if found else np.zeros((0, model.output.shape[-1]), np.float32)


def hold_out(targets: np.ndarray, n_classes: int, config: TrainConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Row numbers of a stratified validation share of the train split (none when too few for one per class).

    The rows ``train_test_split`` picks depend only on the targets and the seed, so an
    array and a decoded file of the same images hold out the same ones.
    """
    n = len(targets)
    n_val = int(round(config.validation_fraction * n))
    if n_val < n_classes or n - n_val < n_classes:
        return np.arange(n), None
    counts = np.bincount(targets)
    stratify = targets if counts[counts > 0].min() >= 2 else None
    train_rows, val_rows = train_test_split(np.arange(n), test_size=n_val, random_state=config.seed, stratify=stratify)
    return train_rows, val_rows


def _fit(
    model: keras.Model,
    train_data: tf.data.Dataset,
    validation: tf.data.Dataset | None,
    learning_rate: float,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
    verbose: int,
    *,
    first_epoch: int = 0,
) -> list[dict[str, float]]:
    # Cosine decay over the whole budget: the last epochs take small steps, so the weights that
    # get exported have settled (with a flat rate, validation accuracy swung by 0.1-0.2 late on).
    steps = int(train_data.cardinality()) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps), alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    fit = model.fit(
        train_data,
        validation_data=validation,
        epochs=first_epoch + epochs,
        initial_epoch=first_epoch,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
    )
    ran = len(fit.history.get("loss", []))
    return [{"epoch": first_epoch + i + 1, **{k: float(v[i]) for k, v in fit.history.items()}} for i in range(ran)]
