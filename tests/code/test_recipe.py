"""The training recipe adapts to the dataset: input size, batch size, augmentation, step budget."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from training.model.fit import SmoothedEarlyStopping, auto_batch_size, planned_epochs
from training.model.network import recompute_batchnorm_statistics, stem_reductions
from training.model.recipe import (
    AUTO_SIZE_MAX,
    AUTO_SIZE_MIN,
    auto_image_size,
    fold_config,
    looks_like_photos,
    resolve_recipe,
    sample_headers,
)
from training.settings import Settings


@pytest.mark.parametrize(("n", "batch"), [(10, 8), (200, 8), (520, 16), (1280, 64), (8000, 64)])
def test_batch_size_shrinks_with_the_dataset(n: int, batch: int) -> None:
    assert auto_batch_size(n) == batch


def test_small_datasets_get_more_epochs_not_three_steps_an_epoch() -> None:
    assert planned_epochs(200, 64, 15, 0) == 15  # the old recipe: 4 steps an epoch, 60 in all
    assert planned_epochs(200, 8, 15, 600) == 24  # 25 steps an epoch: 24 epochs reach 600
    assert planned_epochs(8000, 64, 15, 600) == 15  # big datasets are past the floor already


def _write(folder: Path, sizes: list[tuple[int, int]]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (i, 50, 100)).save(folder / f"{i}.jpg")
        paths.append(f"train/a/{i}.jpg")
    return paths


def test_the_input_size_is_the_median_shorter_side_clipped_and_rounded(tmp_path: Path) -> None:
    paths = _write(tmp_path / "train" / "a", [(120, 90), (300, 100), (100, 500), (4000, 3000), (95, 95)])
    size, why = auto_image_size(sample_headers(tmp_path, paths, seed=0))
    assert size == 96 and "median shorter side 100" in why  # sides 90, 100, 100, 3000, 95
    tiny = _write(tmp_path / "tiny" / "a", [(28, 28)] * 3)
    tiny_headers = sample_headers(tmp_path / "tiny", [p.replace("train/", "") for p in tiny], seed=0)
    assert auto_image_size(tiny_headers)[0] == AUTO_SIZE_MIN
    huge = _write(tmp_path / "huge" / "train" / "a", [(4032, 3024)] * 3)
    assert auto_image_size(sample_headers(tmp_path / "huge", huge, seed=0))[0] == AUTO_SIZE_MAX


def test_the_recipe_resolves_auto_settings_and_an_explicit_number_wins(tmp_path: Path) -> None:
    paths = _write(tmp_path / "train" / "a", [(120, 110)] * 40)
    auto = resolve_recipe(Settings(data_dir=tmp_path, image_size="auto", batch_size="auto", augment="auto"), paths)
    assert (auto.config.image_size, auto.config.batch_size, auto.config.augment) == (112, 8, "photo")
    assert auto.image_size_from.startswith("auto") and auto.params()["image_size"] == 112
    fixed = resolve_recipe(Settings(data_dir=tmp_path, image_size=32, batch_size=32, augment="auto"), paths)
    assert (fixed.config.image_size, fixed.config.batch_size, fixed.config.augment) == (32, 32, "light")
    assert fixed.image_size_from == "setting"
    assert (
        resolve_recipe(
            Settings(data_dir=tmp_path, backbone="cnn", backbone_weights="imagenet"), paths
        ).config.backbone_weights
        == "none"
    )


def test_fold_models_share_the_main_budget(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, out_of_fold_folds=3, min_train_steps=600, epochs=15)
    config = resolve_recipe(settings.model_copy(update={"image_size": 32}), []).config
    folds = fold_config(config, settings)
    assert (folds.epochs, folds.min_steps, folds.fine_tune_epochs) == (5, 200, 0)


@pytest.mark.parametrize(("size", "reductions"), [(32, 0), (40, 1), (64, 1), (112, 2), (160, 3)])
def test_the_cnn_stem_brings_any_input_down_to_its_working_size(size: int, reductions: int) -> None:
    assert stem_reductions(size) == reductions


def test_batchnorm_statistics_are_the_data_average_not_a_moving_one() -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.99)(inputs))
    data = np.random.default_rng(0).normal(loc=[1, -2, 3, 10], scale=[1, 2, 3, 4], size=(1000, 4)).astype(np.float32)
    batches = tf.data.Dataset.from_tensor_slices((data, np.zeros(1000))).batch(250)
    assert recompute_batchnorm_statistics(model, batches) == 1
    norm = model.layers[-1]
    np.testing.assert_allclose(norm.moving_mean.numpy(), data.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(norm.moving_variance.numpy(), data.var(axis=0), rtol=0.02)
    assert norm.momentum == 0.99  # restored


def test_early_stopping_follows_the_smoothed_loss_and_keeps_the_best_weights() -> None:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    stopper = SmoothedEarlyStopping("val_loss", patience=2, start_from_epoch=2)
    stopper.set_model(model)
    model.stop_training = False  # as model.fit sets it
    # averages: 1.0, 0.9, 0.75, 0.425 (best), 0.66, 0.68 -> two epochs without improvement: stop
    for epoch, loss in enumerate([1.0, 0.8, 0.6, 0.1, 0.9, 0.7, 0.7, 0.7]):
        model.layers[0].kernel.assign([[float(epoch)]])
        stopper.on_epoch_end(epoch, {"val_loss": loss})
        if model.stop_training:
            break
    assert model.stop_training and epoch == 5
    stopper.on_train_end()
    assert float(model.layers[0].kernel.numpy()[0, 0]) == 3.0  # the epoch where the average was lowest


def test_an_epoch_count_someone_gave_is_the_count_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """{"epochs": 3} trained 6 epochs (the step floor); now the floor applies only to the default count."""
    paths = _write(tmp_path / "train" / "a", [(40, 40)] * 4)
    monkeypatch.delenv("BOUNCER_MIN_TRAIN_STEPS", raising=False)
    monkeypatch.delenv("BOUNCER_EPOCHS", raising=False)
    monkeypatch.setenv("BOUNCER_DATA_DIR", str(tmp_path))
    assert resolve_recipe(Settings(), paths).config.min_steps == 600  # defaults: the floor
    assert resolve_recipe(Settings(), paths, epochs=3).config.min_steps == 0  # the API's or CLI's epochs
    monkeypatch.setenv("BOUNCER_EPOCHS", "3")
    assert resolve_recipe(Settings(), paths).config.min_steps == 0  # BOUNCER_EPOCHS
    monkeypatch.setenv("BOUNCER_MIN_TRAIN_STEPS", "100")
    assert resolve_recipe(Settings(), paths, epochs=3).config.min_steps == 100  # both given: the floor too


def test_auto_backbone_is_the_packaged_one_for_photos_and_the_cnn_for_drawings(tmp_path: Path) -> None:
    """Chosen from files alone (the installed package, a weights file given), never by trying a download."""
    from training.model.network import BACKBONES, choose_backbone

    assert choose_backbone("imagenet", photos=True)[:2] == ("efficientnet_lite0", "imagenet")
    assert choose_backbone("imagenet", photos=False, why_photos="not photos: 0% in colour")[:2] == ("cnn", "none")
    assert choose_backbone("none", photos=True)[:2] == ("cnn", "none")
    given = tmp_path / BACKBONES["efficientnet_b0"].weights_file
    given.write_bytes(b"weights")
    assert choose_backbone(str(given), photos=True)[:2] == ("efficientnet_b0", str(given))
    assert choose_backbone(str(tmp_path / "renamed.h5"), photos=True)[0] == "efficientnet_lite0"


def test_photos_are_told_from_drawings_by_their_headers(tmp_path: Path) -> None:
    photos = _write(tmp_path / "train" / "a", [(160, 120)] * 10)
    assert looks_like_photos(sample_headers(tmp_path, photos, seed=0))[0]
    drawings = tmp_path / "drawings"
    (drawings / "train" / "a").mkdir(parents=True)
    for i in range(10):
        Image.new("L", (28, 28), i).save(drawings / "train" / "a" / f"{i}.png")
    grey = sample_headers(drawings, [f"train/a/{i}.png" for i in range(10)], seed=0)
    photos_there, why = looks_like_photos(grey)
    assert not photos_there and "0% in colour" in why
    small = _write(tmp_path / "small" / "train" / "a", [(32, 32)] * 10)
    assert not looks_like_photos(sample_headers(tmp_path / "small", small, seed=0))[0]
