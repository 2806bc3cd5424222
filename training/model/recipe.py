"""Turn the settings and the dataset into one concrete training recipe.

Settings may say ``auto`` (image size, batch size, augmentation); what ``auto`` became
for this dataset is decided here, once, and recorded with the run (MLflow params)
and the model version (metadata), so a model says how it was made.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.model.fit import TrainConfig, auto_batch_size
from training.model.network import choose_backbone, is_pretrained
from training.settings import Settings

log = logging.getLogger(__name__)

AUTO_SIZE_MIN, AUTO_SIZE_MAX = 32, 160  # below 32 the CNN's pooling runs out; above 160 2 cores crawl
AUTO_SIZE_STEP = 8
SIZE_SAMPLE = 500  # image headers read to decide the size: enough for a stable median, quick at 1M files
PHOTO_AUGMENT_FROM = 64  # auto augmentation: photo from this input size on, light (drawings, thumbnails) below
# BOUNCER_BACKBONE=auto: the pretrained backbone for train images mostly in colour and at least this large.
PHOTO_COLOUR_SHARE = 0.5
PHOTO_FROM_SIDE = 64


@dataclass(frozen=True)
class Recipe:
    config: TrainConfig
    image_size_from: str  # how the input size was chosen, for people reading the run
    backbone_from: str = "setting"  # likewise the backbone (BOUNCER_BACKBONE=auto)

    def params(self) -> dict[str, Any]:
        """Flat parameters for MLflow."""
        return {
            **{k: v for k, v in asdict(self.config).items() if k != "verbose"},
            "image_size_from": self.image_size_from,
            "backbone_from": self.backbone_from,
        }


@dataclass(frozen=True)
class HeaderSample:
    """What the headers of (a sample of) the train images say: their shorter sides and colour modes."""

    sides: list[int]
    colour: int  # how many are colour (not greyscale or 1-bit)

    @property
    def median_side(self) -> float:
        return statistics.median(self.sides) if self.sides else 0.0


GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def sample_headers(data_dir: Path, paths: Sequence[str], *, seed: int) -> HeaderSample:
    """The headers of up to SIZE_SAMPLE train images, a seeded sample (header reads only: quick at 1M files)."""
    rng = np.random.default_rng(seed)
    sample = [paths[i] for i in sorted(rng.choice(len(paths), size=min(SIZE_SAMPLE, len(paths)), replace=False))]
    sides, colour = [], 0
    for path in sample:
        try:
            with Image.open(data_dir / path) as image:  # reads the header only
                sides.append(min(image.size))
                colour += image.mode not in GREY_MODES
        except OSError:
            continue
    return HeaderSample(sides, colour)


def auto_image_size(headers: HeaderSample) -> tuple[int, str]:
    """The median shorter side of the sampled images, clipped and rounded; and how it was found."""
    if not headers.sides:
        return AUTO_SIZE_MIN, "auto: no readable image, smallest size"
    median = headers.median_side
    size = int(np.clip(round(median / AUTO_SIZE_STEP) * AUTO_SIZE_STEP, AUTO_SIZE_MIN, AUTO_SIZE_MAX))
    return size, f"auto: median shorter side {median:g} px of {len(headers.sides)} train images"


def looks_like_photos(headers: HeaderSample) -> tuple[bool, str]:
    """Photos (most in colour, median shorter side at least PHOTO_FROM_SIDE px) get the pretrained backbone.

    Greyscale drawings and thumbnails (animal-mnist's 28 px silhouettes, 8 px digits) measure
    better with the CNN from scratch: benchmarks/label_issues.py, docs/label-errors.md.
    """
    if not headers.sides:
        return False, "no readable train image"
    share = headers.colour / len(headers.sides)
    median = headers.median_side
    photos = share >= PHOTO_COLOUR_SHARE and median >= PHOTO_FROM_SIDE
    kind = "photos" if photos else "not photos"
    return photos, f"{kind}: {share:.0%} in colour, median shorter side {median:g} px"


def resolve_recipe(
    settings: Settings, train_paths: Sequence[str], *, epochs: int | None = None, verbose: int = 0
) -> Recipe:
    """The concrete recipe for training on ``train_paths`` (relative to DATA_DIR) with ``settings``."""
    headers = sample_headers(settings.data_dir, train_paths, seed=settings.seed)
    if settings.image_size == "auto":
        size, size_from = auto_image_size(headers)
    else:
        size, size_from = settings.image_size, "setting"
    batch_size = auto_batch_size(len(train_paths)) if settings.batch_size == "auto" else settings.batch_size
    augment = settings.augment
    if augment == "auto":
        augment = "photo" if size >= PHOTO_AUGMENT_FROM else "light"
    backbone, weights, backbone_from = settings.backbone, settings.backbone_weights, "setting"
    if backbone == "auto":
        photos, why = looks_like_photos(headers)
        backbone, weights, backbone_from = choose_backbone(weights, photos=photos, why_photos=why)
        log.info("backbone %s", backbone_from)
    weights = weights if backbone != "cnn" else "none"
    fine_tune_epochs = settings.fine_tune_epochs if is_pretrained(backbone, weights) else 0
    if settings.fine_tune_epochs and not fine_tune_epochs:
        log.warning(
            "BOUNCER_FINE_TUNE_EPOCHS=%d ignored: only a pretrained backbone is fine-tuned; %s (weights %s) "
            "trains every layer from the first epoch",
            settings.fine_tune_epochs,
            backbone,
            weights,
        )
    # An epoch count someone gave (the API's or CLI's epochs, BOUNCER_EPOCHS) is the count trained, unless
    # BOUNCER_MIN_TRAIN_STEPS was given too: {"epochs": 3} trained 6 epochs once, the floor's doing.
    given = settings.model_fields_set
    floor_waived = (epochs is not None or "epochs" in given) and "min_train_steps" not in given
    min_steps = 0 if floor_waived else settings.min_train_steps
    config = TrainConfig(
        image_size=size,
        epochs=epochs or settings.epochs,
        batch_size=batch_size,
        learning_rate=settings.learning_rate,
        validation_fraction=settings.validation_fraction,
        early_stopping_patience=settings.early_stopping_patience,
        seed=settings.seed,
        min_steps=min_steps,
        augment=augment,
        backbone=backbone,
        backbone_weights=weights,
        fine_tune_epochs=fine_tune_epochs,
        verbose=verbose,
    )
    log.info(
        "recipe: %s %dpx (%s), batch %d, augment %s, >= %d epochs and %d steps",
        config.backbone,
        size,
        size_from,
        batch_size,
        augment,
        config.epochs,
        config.min_steps,
    )
    return Recipe(config, size_from, backbone_from)


def fold_config(config: TrainConfig, settings: Settings) -> TrainConfig:
    """Fold models trained from scratch share the main model's budget: k of them cost about one more training.

    They only need to score their held-out images. With half the budget each, the 3 folds
    made a photos-demo training 2.7x as long as without them (49 s -> 135 s).
    """
    folds = max(1, settings.out_of_fold_folds)
    epochs = settings.out_of_fold_epochs or max(1, math.ceil(config.epochs / folds))
    return replace(config, epochs=epochs, min_steps=config.min_steps // folds, fine_tune_epochs=0, verbose=0)
