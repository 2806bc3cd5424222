"""A user's own tiny folder: what it can support is said before training, and a training that can run does.

Issue 22: 6 train and 3 test photos trained for 167 s and then stopped on the OOD score's
minimum; `evaluate` on 9 test images said accuracy 1.0 with no warning.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from training.cli import app
from training.registry.store import load_registered
from training.settings import Settings

pytestmark = pytest.mark.slow

runner = CliRunner()


def _photos(folder: Path, colour: tuple[int, int, int], count: int, seed: int) -> None:
    """``count`` small JPEG 'photos' of one colour with noise: two such classes are easy to tell apart."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = np.clip(np.array(colour) + rng.normal(0, 25, (48, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"IMG_{seed}{i:03d}.jpg", quality=90)


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    _photos(data / "train" / "red", (200, 40, 40), 3, 1)
    _photos(data / "train" / "blue", (40, 40, 200), 3, 2)
    _photos(data / "test" / "red", (200, 40, 40), 2, 3)
    _photos(data / "test" / "blue", (40, 40, 200), 1, 4)
    (data / "train" / "red" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    return data


def test_import_says_what_a_tiny_folder_will_not_fit(tiny_folder: Path) -> None:
    result = runner.invoke(app, ["import", "-v"])
    assert result.exit_code == 0, result.output
    assert "a training will fit: the model, the embedder" in result.output
    assert "warning: out-of-fold models skipped: 3 folds need at least 30 train images" in result.output
    assert "warning: OOD score skipped" in result.output
    assert "warning: only 3 test images" in result.output


def test_a_tiny_folder_trains_without_what_it_cannot_fit(tiny_folder: Path, settings: Settings) -> None:
    started = time.monotonic()
    result = runner.invoke(app, ["-q", "train", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert any(note.startswith("OOD score skipped") for note in summary["notes"])
    assert any(note.startswith("out-of-fold models skipped") for note in summary["notes"])
    assert summary["epochs_run"] == 2 and summary["metrics"]["n_test"] == 3  # an int, not 3.0
    low, high = summary["test_accuracy_interval"]
    assert 0 <= low < high <= 1 and high - low > 0.2
    assert "only 3 test images" in summary["warning"]
    model = load_registered(summary["tag"], settings=settings)
    assert model.ood is None and model.audit is None  # nothing half-fitted
    print(f"tiny folder trained in {time.monotonic() - started:.0f} s")


def test_one_class_stops_at_once_naming_the_minimum(tiny_folder: Path) -> None:
    for path in (tiny_folder / "train" / "blue").iterdir():
        path.unlink()
    (tiny_folder / "train" / "blue").rmdir()
    started = time.monotonic()
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2
    assert "need training images of at least 2 classes" in result.output and "red (3)" in result.output
    assert time.monotonic() - started < 60  # stopped before any training, not after it


def test_six_real_photos_train_on_the_packaged_backbone_with_the_default_step_floor(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six of scikit-image's photos, two classes, BOUNCER_BACKBONE=auto and the 600-step floor: the frozen
    backbone's features are computed once, so the floor costs the head's steps, not 600 epochs of the network."""
    from skimage import data as photos

    folder = tmp_path / "data"
    picks = {"animal": ["chelsea", "cat"], "object": ["coffee", "rocket"]}
    for split, index in (("train", slice(0, 2)), ("test", slice(0, 1))):
        for label, names in picks.items():
            (folder / split / label).mkdir(parents=True)
            for name in names[index]:
                Image.fromarray(getattr(photos, name)()).convert("RGB").save(folder / split / label / f"{name}.jpg")
    for i, label in enumerate(picks):  # a third train photo of each class: a flipped copy
        first = sorted((folder / "train" / label).iterdir())[0]
        Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "train" / label / f"flip{i}.jpg")
    monkeypatch.setenv("BOUNCER_DATA_DIR", str(folder))
    monkeypatch.setenv("BOUNCER_BACKBONE", "auto")
    monkeypatch.setenv("BOUNCER_IMAGE_SIZE", "auto")
    monkeypatch.delenv("BOUNCER_MIN_TRAIN_STEPS", raising=False)  # the default floor of 600 steps
    started = time.monotonic()
    result = runner.invoke(app, ["-q", "train"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    model = load_registered(summary["tag"], settings=Settings())
    assert model.metadata.recipe["backbone"] == "efficientnet_lite0"
    assert summary["epochs_run"] >= 200  # the floor's steps, on features
    assert summary["metrics"]["test_accuracy"] == 1.0
    print(f"6 photos trained on the packaged backbone in {time.monotonic() - started:.0f} s")
