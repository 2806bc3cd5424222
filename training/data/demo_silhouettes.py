"""Write the poisoned demo dataset from the images the ``animal-mnist`` package ships.

The story: a coherent group of one class (by default dogs that look alike) is
labelled as another class (cat), plus a little random label noise. What was
poisoned goes to ``ground_truth.csv`` beside the splits, never into them, so
detection can be scored without the tool seeing the answer.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.ground_truth import PoisonedImage, clear_splits, write_ground_truth
from training.errors import Invalid

log = logging.getLogger(__name__)

# Class order of the integer labels in animal-mnist 0.4 (checked by eye on a grid
# of samples: 0 are bears, 4 dogs, 9 zebras).
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
# Pinned digests of the pickles in animal-mnist 0.4: pickle runs code, so we only
# unpickle the exact bytes we reviewed.
_ARCHIVE_SHA256 = {
    "animal_data_version_3.gz": "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    "animal_label_version_3.gz": "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
}


@dataclass(frozen=True)
class DemoSpec:
    seed: int = 0
    test_per_class: int = 200
    impostor_source: str = "dog"
    impostor_target: str = "cat"
    impostor_count: int = 250
    noise_fraction: float = 0.05
    per_class_limit: int | None = None  # keep only this many images per class (tiny test sets)


class ArchiveIntegrityError(RuntimeError):
    pass


def load_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Images (10000, 28, 28) uint8 and integer labels, after checking their sha256."""
    folder = importlib.resources.files("animal_mnist") / "data" / "Animal_MNIST"
    arrays = []
    for name, expected in _ARCHIVE_SHA256.items():
        raw = (folder / name).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected:
            raise ArchiveIntegrityError(
                f"animal-mnist file {name} has sha256 {digest}, expected {expected}; "
                "refusing to unpickle it (install animal-mnist==0.4)"
            )
        arrays.append(pickle.loads(gzip.decompress(raw)))  # noqa: S301 - digest pinned above
    images, labels = (np.asarray(a) for a in arrays)
    return images.astype(np.uint8), labels.astype(np.int64)


def write_demo_dataset(data_dir: Path, spec: DemoSpec, *, force: bool = False) -> list[PoisonedImage]:
    """Write ``data_dir/{train,test}/<class>/*.png`` and the ground truth; deterministic in ``spec``."""
    for name in (spec.impostor_source, spec.impostor_target):
        if name not in ANIMAL_CLASSES:
            raise Invalid(f"unknown class {name!r}; choose from {', '.join(ANIMAL_CLASSES)}")
    if spec.impostor_source == spec.impostor_target:
        raise Invalid("impostor source and target must differ")
    if not 0.0 <= spec.noise_fraction < 1.0:
        raise Invalid("noise fraction must be in [0, 1)")
    clear_splits(data_dir, force=force)

    images, labels = load_animal_mnist()
    rng = np.random.default_rng(spec.seed)
    train_idx, test_idx = [], []
    for class_index in range(len(ANIMAL_CLASSES)):
        members = rng.permutation(np.flatnonzero(labels == class_index))
        if spec.per_class_limit is not None:
            members = members[: spec.per_class_limit]
        n_test = min(spec.test_per_class, len(members) // 2)
        test_idx.extend(members[:n_test])
        train_idx.extend(members[n_test:])
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)

    given = {int(i): ANIMAL_CLASSES[labels[i]] for i in train_idx}
    poisoned: list[PoisonedImage] = []
    source = ANIMAL_CLASSES.index(spec.impostor_source)
    impostors = _coherent_group(images, train_idx[labels[train_idx] == source], spec.impostor_count, rng)
    for i in impostors:
        given[int(i)] = spec.impostor_target
    clean = np.setdiff1d(train_idx, impostors)
    noisy = rng.choice(clean, size=int(round(spec.noise_fraction * len(train_idx))), replace=False)
    for i in np.sort(noisy):
        true_index = int(labels[i])
        shift = int(rng.integers(1, len(ANIMAL_CLASSES)))
        given[int(i)] = ANIMAL_CLASSES[(true_index + shift) % len(ANIMAL_CLASSES)]

    impostor_set = set(impostors.tolist())
    for i in train_idx:
        path = _write_png(data_dir, "train", given[int(i)], int(i), images[i])
        true_label = ANIMAL_CLASSES[labels[i]]
        if given[int(i)] != true_label:
            kind = "impostor" if int(i) in impostor_set else "noise"
            poisoned.append(PoisonedImage(path, true_label, given[int(i)], kind))
    for i in test_idx:
        _write_png(data_dir, "test", ANIMAL_CLASSES[labels[i]], int(i), images[i])

    write_ground_truth(data_dir, poisoned)
    log.info(
        "wrote %d train and %d test images to %s; %d poisoned (%d impostors)",
        len(train_idx),
        len(test_idx),
        data_dir,
        len(poisoned),
        sum(p.kind == "impostor" for p in poisoned),
    )
    return poisoned


def _coherent_group(images: np.ndarray, members: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """The ``count`` members nearest (in pixel space) to one random member: look-alikes."""
    count = min(count, len(members))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    pixels = images[members].reshape(len(members), -1).astype(np.float32) / 255.0
    seed = pixels[rng.integers(len(members))]
    distances = np.linalg.norm(pixels - seed, axis=1)
    return np.sort(members[np.argsort(distances, kind="stable")[:count]])


def _write_png(data_dir: Path, split: str, label: str, index: int, pixels: np.ndarray) -> str:
    relative = f"{split}/{label}/{index:05d}.png"
    target = data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(target, optimize=False)
    return relative
