"""The training augmentation: one fused warp and a cheap colour jitter, with the Keras layers' ranges (issue 26).

Checked against Keras's own preprocessing layers with their random factor pinned to one
value: the fused warp puts a marked point where their three warps put it, and the colour
jitter gives their pixels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from training.model.augment import (  # noqa: E402
    BRIGHTNESS,
    CONTRAST,
    LIGHT_ZOOM,
    PHOTO_ROTATION_DEGREES,
    PHOTO_ZOOM,
    SATURATION_U,
    SHIFT,
    apply_augmentation,
    augment_batch,
    draw_parameters,
    jitter_colour,
)

SIDE = 64


def _photos(count: int, seed: int = 0) -> tf.Tensor:
    """Smooth random colour images in [0, 255], float32 (n, SIDE, SIDE, 3)."""
    coarse = np.random.default_rng(seed).uniform(0, 255, (count, 8, 8, 3)).astype(np.float32)
    return tf.image.resize(coarse, (SIDE, SIDE))


def _marked(count: int, at: tuple[float, float]) -> tf.Tensor:
    """Black images with one small grey blob centred at ``at`` (x, y)."""
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    blob = 200.0 * np.exp(-((xs - at[0]) ** 2 + (ys - at[1]) ** 2) / (2 * 1.5**2))
    return tf.constant(np.repeat(blob[None, :, :, None], 3, axis=3).repeat(count, axis=0), tf.float32)


def _where(images: tf.Tensor) -> np.ndarray:
    """(x, y) of each image's brightest pixel, (n, 2)."""
    flat = tf.reshape(tf.reduce_sum(images, axis=3), (images.shape[0], -1)).numpy().argmax(axis=1)
    return np.stack([flat % SIDE, flat // SIDE], axis=1).astype(float)


def _parameters(n: int, **given: float | bool) -> dict[str, tf.Tensor]:
    """The identity's parameters for ``n`` images, with ``given`` ones changed."""
    values = dict(
        flip=False, angle=0.0, zoom=1.0, shift_x=0.0, shift_y=0.0, brightness=0.0, contrast=1.0, saturation=1.0
    )
    values.update(given)
    return {k: tf.fill((n,), v) for k, v in values.items()}


@pytest.mark.parametrize("kind", ["light", "photo"])
def test_a_batch_keeps_its_shape_type_and_pixel_range_and_a_seed_gives_the_same_batch(kind: str) -> None:
    images = _photos(6)
    out = augment_batch(images, tf.constant([7, 3], tf.int64), kind)
    assert out.shape == images.shape and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0
    assert np.array_equal(out.numpy(), augment_batch(images, tf.constant([7, 3], tf.int64), kind).numpy())
    assert not np.allclose(out.numpy(), augment_batch(images, tf.constant([7, 4], tf.int64), kind).numpy())
    copies = augment_batch(tf.repeat(images[:1], 6, axis=0), tf.constant([7, 3], tf.int64), kind).numpy()
    assert len({copy.tobytes() for copy in copies}) == 6  # each image draws its own parameters


def test_no_augmentation_is_the_image_itself() -> None:
    images = _photos(2)
    assert augment_batch(images, tf.constant([0, 0], tf.int64), "none") is images


@pytest.mark.parametrize("kind", ["light", "photo"])
def test_the_identity_parameters_give_the_image_and_a_flip_mirrors_it(kind: str) -> None:
    images = _photos(3)
    same = apply_augmentation(images, _parameters(3), kind)
    np.testing.assert_allclose(same.numpy(), images.numpy(), atol=1e-3)
    flipped = apply_augmentation(images, _parameters(3, flip=True), kind)
    np.testing.assert_allclose(flipped.numpy(), images.numpy()[:, :, ::-1], atol=1e-3)


def test_the_drawn_parameters_stay_within_and_fill_the_documented_ranges() -> None:
    n = 4000
    for kind, zoom, angle in (("light", LIGHT_ZOOM, 0.0), ("photo", PHOTO_ZOOM, PHOTO_ROTATION_DEGREES)):
        drawn = {k: v.numpy() for k, v in draw_parameters(n, tf.constant([1, 2], tf.int64), kind).items()}
        assert 0.45 < drawn["flip"].mean() < 0.55
        ranges = {"zoom": zoom, "shift_x": (-SHIFT, SHIFT), "shift_y": (-SHIFT, SHIFT), "angle": (-angle, angle)}
        if kind == "photo":
            low, high = SATURATION_U
            ranges |= {
                "brightness": (-BRIGHTNESS, BRIGHTNESS),
                "contrast": CONTRAST,
                "saturation": (low / (1 - low), high / (1 - high)),
            }
        for name, (low, high) in ranges.items():
            values, span = drawn[name], high - low
            assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, name
            assert values.min() < low + 0.01 * span + 1e-9 and values.max() > high - 0.01 * span - 1e-9, name


def test_the_ranges_are_those_the_keras_layers_configured_as_the_recipe_was_drew_from() -> None:
    """Read from the layers' own parsed factors (Keras 3), as their ``get_random_transformation`` uses them."""
    layers = keras.layers
    rotation = layers.RandomRotation(0.07)
    assert (rotation.factor[0] * 360, rotation.factor[1] * 360) == pytest.approx(
        (-PHOTO_ROTATION_DEGREES, PHOTO_ROTATION_DEGREES)
    )
    for zoom, expected in ((layers.RandomZoom((-0.3, 0.1)), PHOTO_ZOOM), (layers.RandomZoom(0.1), LIGHT_ZOOM)):
        assert (1 + zoom.height_lower, 1 + zoom.height_upper) == pytest.approx(expected)
        assert zoom.width_factor is None  # one factor for both axes
    shift = layers.RandomTranslation(0.1, 0.1)
    assert (shift.height_lower, shift.height_upper, shift.width_lower, shift.width_upper) == pytest.approx(
        (-SHIFT, SHIFT, -SHIFT, SHIFT)
    )
    assert layers.RandomBrightness(0.2).factor == pytest.approx((-BRIGHTNESS, BRIGHTNESS))
    contrast = layers.RandomContrast(0.2).factor
    assert (1 - contrast[0], 1 + contrast[1]) == pytest.approx(CONTRAST)  # not (0.8, 1.2): see the module
    assert layers.RandomSaturation((0.3, 0.7)).factor == pytest.approx(SATURATION_U)


def test_photo_keeps_the_keras_layers_ranges_a_marked_point_moves_within_them() -> None:
    """A point at (x, y) lands at c + (1/zoom) * rotate(-angle) * flip(p - c) + shift: at most this far from c."""
    at = (SIDE / 2 + 10, SIDE / 2 - 5)
    n = 400
    moved = _where(augment_batch(_marked(n, at), tf.constant([5, 6], tf.int64), "photo"))
    centre = (SIDE - 1) / 2
    radius = np.hypot(at[0] - centre, at[1] - centre)
    reach = radius / PHOTO_ZOOM[0] + math.hypot(SHIFT * SIDE, SHIFT * SIDE) + 1.5  # 1.5: the blob's pixel grid
    distance = np.hypot(moved[:, 0] - centre, moved[:, 1] - centre)
    assert distance.max() <= reach
    assert distance.min() >= radius / PHOTO_ZOOM[1] - math.hypot(SHIFT * SIDE, SHIFT * SIDE) - 1.5
    assert (moved[:, 0] < centre).mean() > 0.25  # flipped to the left half about half of the time


@pytest.mark.parametrize(
    ("angle", "zoom", "shift", "flip"),
    [(20.0, 0.75, (0.08, -0.05), False), (-25.0, 1.08, (-0.1, 0.1), True), (0.0, 1.0, (0.0, 0.0), True)],
)
def test_the_fused_warp_moves_a_point_where_the_keras_layers_moved_it(
    angle: float, zoom: float, shift: tuple[float, float], flip: bool
) -> None:
    """Keras's RandomFlip, RandomRotation, RandomZoom, RandomTranslation (in the recipe's order), each pinned."""
    at = (SIDE / 2 + 9, SIDE / 2 - 6)
    images = _marked(1, at)
    layers = [
        keras.layers.RandomRotation((angle / 360, angle / 360), fill_mode="reflect"),
        keras.layers.RandomZoom((zoom - 1, zoom - 1), fill_mode="reflect"),
        keras.layers.RandomTranslation((shift[1], shift[1]), (shift[0], shift[0]), fill_mode="reflect"),
    ]
    expected = images.numpy()[:, :, ::-1] if flip else images
    for layer in layers:
        expected = layer(expected, training=True)
    fused = apply_augmentation(
        images, _parameters(1, flip=flip, angle=angle, zoom=zoom, shift_x=shift[0], shift_y=shift[1]), "photo"
    )
    assert np.abs(_where(fused) - _where(expected)).max() <= 1.0


@pytest.mark.parametrize(("brightness", "contrast", "u"), [(0.15, 1.15, 0.65), (-0.2, 1.0, 0.3), (0.05, 1.2, 0.5)])
def test_the_colour_jitter_gives_the_keras_layers_pixels(brightness: float, contrast: float, u: float) -> None:
    """RandomBrightness, RandomContrast, RandomSaturation (HSV) pinned: the same pixels within rounding."""
    images = _photos(2, seed=3)
    expected = keras.layers.RandomBrightness((brightness, brightness), value_range=(0, 255))(images, training=True)
    pinned = (1 - contrast, contrast - 1)  # Keras draws from [1 - lower, 1 + upper]
    expected = keras.layers.RandomContrast(pinned, value_range=(0, 255))(expected, training=True)
    expected = keras.layers.RandomSaturation((u, u), value_range=(0, 255))(expected, training=True)
    expected = tf.clip_by_value(expected, 0.0, 255.0)  # the recipe clipped after the layers
    n = images.shape[0]
    ours = jitter_colour(images, tf.fill((n,), brightness * 255), tf.fill((n,), contrast), tf.fill((n,), u / (1 - u)))
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), atol=0.05)
