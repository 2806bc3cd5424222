"""The demo dataset: built from the shipped archive, deterministic, poisoned as documented."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import digest_tree
from training.data import demo_silhouettes as demo_data
from training.data.demo_silhouettes import ANIMAL_CLASSES, DemoSpec, write_demo_dataset
from training.data.ground_truth import read_ground_truth

SMALL = DemoSpec(seed=3, per_class_limit=30, impostor_count=6, noise_fraction=0.1)


def test_archive_is_the_reviewed_one() -> None:
    images, labels = demo_data.load_animal_mnist()
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert Counter(labels.tolist()) == {i: 1000 for i in range(len(ANIMAL_CLASSES))}


def test_a_tampered_archive_is_never_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(demo_data._ARCHIVE_SHA256, "animal_data_version_3.gz", "0" * 64)
    with pytest.raises(demo_data.ArchiveIntegrityError, match="refusing to unpickle"):
        demo_data.load_animal_mnist()


def test_same_seed_same_bytes_other_seed_other_dataset(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path / "a", SMALL)
    write_demo_dataset(tmp_path / "b", SMALL)
    write_demo_dataset(tmp_path / "c", DemoSpec(**{**SMALL.__dict__, "seed": 4}))
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    assert digest_tree(tmp_path / "a") != digest_tree(tmp_path / "c")


def test_poison_is_where_the_ground_truth_says_and_test_split_is_clean(tmp_path: Path) -> None:
    poisoned = write_demo_dataset(tmp_path, SMALL)
    assert read_ground_truth(tmp_path) == sorted(poisoned, key=lambda p: p.path)
    impostors = [p for p in poisoned if p.kind == "impostor"]
    assert len(impostors) == SMALL.impostor_count
    assert {(p.true_label, p.given_label) for p in impostors} == {("dog", "cat")}
    for item in poisoned:
        assert item.path.startswith(f"train/{item.given_label}/")
        assert item.true_label != item.given_label
        assert (tmp_path / item.path).is_file()
    n_train = sum(1 for _ in (tmp_path / "train").rglob("*.png"))
    assert sum(p.kind == "noise" for p in poisoned) == round(SMALL.noise_fraction * n_train)
    assert all(not p.path.startswith("test/") for p in poisoned)
    assert sorted(d.name for d in (tmp_path / "test").iterdir()) == sorted(ANIMAL_CLASSES)


def test_splits_do_not_share_images(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, SMALL)
    names = {split: {p.name for p in (tmp_path / split).rglob("*.png")} for split in ("train", "test")}
    assert names["train"] and names["test"] and not names["train"] & names["test"]


def test_existing_data_is_not_overwritten_without_force(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, SMALL)
    with pytest.raises(FileExistsError, match="--force"):
        write_demo_dataset(tmp_path, SMALL)
    write_demo_dataset(tmp_path, SMALL, force=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"impostor_source": "unicorn"}, "unknown class"), ({"impostor_target": "dog"}, "must differ")],
)
def test_bad_spec_is_refused(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_demo_dataset(tmp_path, DemoSpec(**{**SMALL.__dict__, **change}))
