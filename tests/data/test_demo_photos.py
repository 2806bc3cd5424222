"""The photos demo: real photographs, deterministic, poisoned in train only, as documented."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import digest_tree
from training.data.demo_photos import PHOTO_CLASSES, PhotoDemoSpec, write_photo_dataset
from training.data.ground_truth import read_ground_truth

SMALL = PhotoDemoSpec(seed=5, train_copies=4, test_copies=2)


def test_same_seed_same_bytes_other_seed_other_photos(tmp_path: Path) -> None:
    write_photo_dataset(tmp_path / "a", SMALL)
    write_photo_dataset(tmp_path / "b", SMALL)
    write_photo_dataset(tmp_path / "c", PhotoDemoSpec(seed=6, train_copies=4, test_copies=2))
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b") != digest_tree(tmp_path / "c")


def test_layout_sizes_and_poison(tmp_path: Path) -> None:
    poisoned = write_photo_dataset(tmp_path, SMALL)
    n_photos = sum(map(len, PHOTO_CLASSES.values()))
    train = sorted((tmp_path / "train").rglob("*.jpg"))
    test = sorted((tmp_path / "test").rglob("*.jpg"))
    assert len(train) == n_photos * SMALL.train_copies and len(test) == n_photos * SMALL.test_copies
    for path in train + test:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert SMALL.min_side <= min(image.size) <= SMALL.max_side
    assert poisoned == read_ground_truth(tmp_path)
    assert len(poisoned) == SMALL.train_copies
    assert {(p.true_label, p.given_label, p.kind) for p in poisoned} == {("person", "space", "impostor")}
    assert all(p.path.startswith("train/space/") and (tmp_path / p.path).is_file() for p in poisoned)
    test_labels = Counter(p.parent.name for p in test)
    assert test_labels == {label: len(photos) * SMALL.test_copies for label, photos in PHOTO_CLASSES.items()}


def test_the_poison_must_be_another_class(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="another class"):
        write_photo_dataset(tmp_path, PhotoDemoSpec(poisoned_photo="astronaut", poisoned_label="person"))
    with pytest.raises(ValueError, match="unknown photo"):
        write_photo_dataset(tmp_path, PhotoDemoSpec(poisoned_photo="dog"))


def test_existing_data_is_not_replaced_without_force(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        write_photo_dataset(tmp_path, SMALL)
