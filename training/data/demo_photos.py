"""A poisoned dataset of real photographs, from the pictures scikit-image ships (no download).

The bunny-party story on photos: a few classes, each a group of photos, each photo
present as many randomly rotated, cropped, colour-shifted and resized copies
(JPEG, as a camera would write them, at sizes from ``min_side`` to ``max_side``).
In the train split the copies of one photo carry another class's label (by default
the astronaut is labelled ``space``); the test split is clean. What was poisoned
goes to ``ground_truth.csv`` beside the splits, never into them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from training.data.ground_truth import PoisonedImage, clear_splits, write_ground_truth
from training.errors import Invalid

log = logging.getLogger(__name__)


def _photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        picture = getattr(skimage.data, name)()
        return picture[0] if isinstance(picture, tuple) else picture  # stereo pairs: the left view

    return load


# class -> the skimage.data photographs in it. Only pictures the package ships (no pooch download).
PHOTO_CLASSES: dict[str, tuple[str, ...]] = {
    "cat": ("chelsea",),
    "person": ("astronaut", "camera"),
    "vehicle": ("rocket", "stereo_motorcycle"),
    "texture": ("brick", "grass", "gravel"),
    "space": ("hubble_deep_field", "moon"),
    "tabletop": ("coffee", "coins", "clock"),
}


@dataclass(frozen=True)
class PhotoDemoSpec:
    seed: int = 0
    train_copies: int = 40  # per photo
    test_copies: int = 12  # per photo
    poisoned_photo: str = "astronaut"
    poisoned_label: str = "space"
    min_side: int = 72  # shorter side of a copy, in pixels
    max_side: int = 144


def photo_class(photo: str) -> str:
    for label, photos in PHOTO_CLASSES.items():
        if photo in photos:
            return label
    known = ", ".join(p for photos in PHOTO_CLASSES.values() for p in photos)
    raise Invalid(f"unknown photo {photo!r}; choose from {known}")


def write_photo_dataset(data_dir: Path, spec: PhotoDemoSpec, *, force: bool = False) -> list[PoisonedImage]:
    """Write ``data_dir/{train,test}/<class>/*.jpg`` and the ground truth; deterministic in ``spec``."""
    true_label = photo_class(spec.poisoned_photo)
    if spec.poisoned_label not in PHOTO_CLASSES or spec.poisoned_label == true_label:
        raise Invalid(f"poisoned label must be another class than {true_label!r}: one of {', '.join(PHOTO_CLASSES)}")
    if not 16 <= spec.min_side <= spec.max_side:
        raise Invalid("need 16 <= min_side <= max_side")
    clear_splits(data_dir, force=force)

    rng = np.random.default_rng(spec.seed)
    poisoned: list[PoisonedImage] = []
    serial = iter(rng.permutation(100_000))  # neutral file names: the name must not give the class away
    for label, photos in PHOTO_CLASSES.items():
        for photo in photos:
            source = Image.fromarray(_photo(photo)()).convert("RGB")
            for split, copies in (("train", spec.train_copies), ("test", spec.test_copies)):
                given = spec.poisoned_label if split == "train" and photo == spec.poisoned_photo else label
                for _ in range(copies):
                    path = _write_copy(data_dir, split, given, int(next(serial)), _random_copy(source, spec, rng), rng)
                    if given != label:
                        poisoned.append(PoisonedImage(path, label, given, "impostor"))

    poisoned.sort(key=lambda p: p.path)
    write_ground_truth(data_dir, poisoned)
    n_photos = sum(map(len, PHOTO_CLASSES.values()))
    log.info(
        "wrote %d train and %d test photos (%d pictures, %d classes) to %s; %d copies of %s labelled %s",
        n_photos * spec.train_copies,
        n_photos * spec.test_copies,
        n_photos,
        len(PHOTO_CLASSES),
        data_dir,
        len(poisoned),
        spec.poisoned_photo,
        spec.poisoned_label,
    )
    return poisoned


def _random_copy(source: Image.Image, spec: PhotoDemoSpec, rng: np.random.Generator) -> Image.Image:
    """What a second snapshot of the same scene looks like: turned, reframed, lit differently, resized."""
    angle = float(rng.uniform(-25, 25))
    turned = source.rotate(angle, resample=Image.Resampling.BILINEAR)
    width, height = turned.size
    inner_w, inner_h = int(width * 0.7), int(height * 0.7)  # keep clear of the corners the rotation blanked
    area = float(rng.uniform(0.55, 1.0)) * inner_w * inner_h
    aspect = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    crop_w = int(min(inner_w, np.sqrt(area * aspect)))
    crop_h = int(min(inner_h, np.sqrt(area / aspect)))
    left = (width - inner_w) // 2 + int(rng.integers(0, inner_w - crop_w + 1))
    top = (height - inner_h) // 2 + int(rng.integers(0, inner_h - crop_h + 1))
    copy = turned.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        copy = ImageOps.mirror(copy)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        copy = enhancer(copy).enhance(float(rng.uniform(0.75, 1.25)))
    shorter = int(rng.integers(spec.min_side, spec.max_side + 1))
    scale = shorter / min(copy.size)
    return copy.resize(
        (max(1, round(copy.width * scale)), max(1, round(copy.height * scale))), Image.Resampling.LANCZOS
    )


def _write_copy(
    data_dir: Path, split: str, label: str, serial: int, image: Image.Image, rng: np.random.Generator
) -> str:
    relative = f"{split}/{label}/img_{serial:05d}.jpg"
    target = data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
    target.write_bytes(buffer.getvalue())
    return relative
