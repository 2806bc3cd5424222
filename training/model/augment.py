"""Training augmentation: one fused affine warp and a cheap colour jitter per image, vectorised over a batch.

The ranges are those of the Keras 3 preprocessing layers the recipe used before (issue 26),
read from Keras 3.15's code (``keras/src/layers/preprocessing/image_preprocessing``), not
from their docstrings. Images are float32 in [0, 255], (n, h, w, 3).

``light`` (drawings, thumbnails), ``RandomFlip("horizontal")``, ``RandomTranslation(0.1, 0.1,
fill_mode="constant")``, ``RandomZoom(0.1, fill_mode="constant")``:

- flip: left-right with probability 1/2;
- shift: dx ~ U(-0.1, 0.1) * width, dy ~ U(-0.1, 0.1) * height (pixels, independent);
- zoom: z ~ U(0.9, 1.1), one factor for both axes: the output reads a z-times-as-large region
  about the centre, so z < 1 magnifies (crops) and z > 1 shrinks;
- points outside the image read 0.

``photo`` (from 64 px), ``RandomFlip``, ``RandomRotation(0.07, fill_mode="reflect")``,
``RandomZoom((-0.3, 0.1), fill_mode="reflect")``, ``RandomTranslation(0.1, 0.1,
fill_mode="reflect")``, ``RandomColorJitter(brightness 0.2, contrast 0.2, saturation (0.3, 0.7))``:

- flip as above; rotation about the centre by U(-0.07, 0.07) * 360 degrees (+-25.2);
- zoom z ~ U(0.7, 1.1) (mostly crops); shift as above; points outside reflect the image;
- brightness: + U(-0.2, 0.2) * 255 on every pixel, then clipped to [0, 255];
- contrast: (x - m) * c + m with m the image's mean per channel and c ~ U(1.0, 1.2), clipped.
  Keras documents U(0.8, 1.2) for ``contrast_factor=0.2``, but its ``RandomContrast`` clips the
  factor's lower bound to its bounds (0, 1) before computing ``1 - lower``, so it only ever
  raised contrast; kept as it trained;
- saturation: Keras scales HSV's S by f = u / (1 - u), u ~ U(0.3, 0.7) (f in [0.43, 2.33]) and
  converts back. With V = max(r, g, b) unchanged, each channel x becomes V - f (V - x): a blend
  with the image's per-pixel maximum, the same arithmetic without the HSV round trip; clipped.

The geometric layers each resampled the image (bilinear), three times in ``photo``; here their
matrices are composed into one (output pixel -> input pixel, flip . rotation . zoom . shift, the
order the layers ran in) and applied once with ``ImageProjectiveTransformV3``: the same
geometry, one interpolation instead of three (a little less blur), and reflection done once
at the end instead of after each step (differs only in the reflected border).

Random draws are stateless, from ``seed`` (two integers): the same seed gives the same batch.
"""

from __future__ import annotations

import math
from typing import Literal

import tensorflow as tf

AugmentKind = Literal["none", "light", "photo"]

FLIP_PROBABILITY = 0.5
SHIFT = 0.1  # fraction of the side, either way
LIGHT_ZOOM = (0.9, 1.1)
PHOTO_ZOOM = (0.7, 1.1)
PHOTO_ROTATION_DEGREES = 0.07 * 360
BRIGHTNESS = 0.2  # fraction of 255, either way
CONTRAST = (1.0, 1.2)
SATURATION_U = (0.3, 0.7)  # f = u / (1 - u)
PIXEL_MAX = 255.0


def augment_batch(images: tf.Tensor, seed: tf.Tensor, kind: AugmentKind) -> tf.Tensor:
    """``images`` (n, h, w, 3) float32 in [0, 255] augmented by ``kind``, drawn from ``seed`` (a pair of integers)."""
    if kind == "none":
        return images
    return apply_augmentation(images, draw_parameters(tf.shape(images)[0], seed, kind), kind)


def draw_parameters(n: tf.Tensor, seed: tf.Tensor, kind: AugmentKind) -> dict[str, tf.Tensor]:
    """Each image's parameters, (n,) each: flip (bool), angle (degrees), zoom, shift_x and shift_y (fractions
    of the side), brightness (fraction of 255), contrast and saturation (factors)."""
    if kind not in ("light", "photo"):
        raise ValueError(f"unknown augmentation {kind!r}; use none, light or photo")
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)

    def uniform(index: int, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform((n,), seed=seeds[index], minval=low, maxval=high)

    photo = kind == "photo"
    saturation = uniform(7, *SATURATION_U)
    return {
        "flip": uniform(0, 0.0, 1.0) < FLIP_PROBABILITY,
        "angle": uniform(1, -PHOTO_ROTATION_DEGREES, PHOTO_ROTATION_DEGREES) if photo else tf.zeros((n,)),
        "zoom": uniform(2, *(PHOTO_ZOOM if photo else LIGHT_ZOOM)),
        "shift_x": uniform(3, -SHIFT, SHIFT),
        "shift_y": uniform(4, -SHIFT, SHIFT),
        "brightness": uniform(5, -BRIGHTNESS, BRIGHTNESS) if photo else tf.zeros((n,)),
        "contrast": uniform(6, *CONTRAST) if photo else tf.ones((n,)),
        "saturation": saturation / (1.0 - saturation) if photo else tf.ones((n,)),
    }


def apply_augmentation(images: tf.Tensor, parameters: dict[str, tf.Tensor], kind: AugmentKind) -> tf.Tensor:
    """One warp of each image by its parameters' matrix, then (``photo``) its colour jitter."""
    warped = warp(images, parameters, "REFLECT" if kind == "photo" else "CONSTANT")
    if kind != "photo":
        return warped
    return jitter_colour(warped, parameters["brightness"] * PIXEL_MAX, parameters["contrast"], parameters["saturation"])


def warp(images: tf.Tensor, parameters: dict[str, tf.Tensor], fill_mode: Literal["REFLECT", "CONSTANT"]) -> tf.Tensor:
    """Each image resampled once (bilinear) through its flip, rotation, zoom and shift; outside per ``fill_mode``."""
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    matrices = affine_matrices(
        parameters["flip"],
        parameters["angle"] * (math.pi / 180.0),
        parameters["zoom"],
        parameters["shift_x"] * width,
        parameters["shift_y"] * height,
        height,
        width,
    )
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=matrices,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=fill_mode,
    )
    return tf.ensure_shape(warped, images.shape)


def affine_matrices(
    flip: tf.Tensor,
    angle: tf.Tensor,
    zoom: tf.Tensor,
    dx: tf.Tensor,
    dy: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
) -> tf.Tensor:
    """Per image, the 8 numbers of the output -> input map flip . rotation . zoom . shift (Keras's conventions).

    Pixel coordinates run 0..side-1 with the centre at (side-1)/2: flip x -> w-1-x; rotation
    by ``angle`` (radians) and zoom by ``zoom`` about the centre; shift moves the content by
    (dx, dy), so it reads at (x - dx, y - dy).
    """
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    ones, zeros = tf.ones_like(zoom), tf.zeros_like(zoom)

    def matrix(a0: tf.Tensor, a1: tf.Tensor, a2: tf.Tensor, b0: tf.Tensor, b1: tf.Tensor, b2: tf.Tensor) -> tf.Tensor:
        return tf.reshape(tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros, ones], axis=1), (-1, 3, 3))

    sign = tf.where(flip, -ones, ones)
    flipping = matrix(sign, zeros, tf.where(flip, ones * (width - 1.0), zeros), zeros, ones, zeros)
    cos, sin = tf.cos(angle), tf.sin(angle)
    rotation = matrix(cos, -sin, cx - cx * cos + cy * sin, sin, cos, cy - cx * sin - cy * cos)
    zooming = matrix(zoom, zeros, cx * (1.0 - zoom), zeros, zoom, cy * (1.0 - zoom))
    shift = matrix(ones, zeros, -dx, zeros, ones, -dy)
    composed = flipping @ rotation @ zooming @ shift
    return tf.reshape(composed, (-1, 9))[:, :8]


def jitter_colour(images: tf.Tensor, brightness: tf.Tensor, contrast: tf.Tensor, saturation: tf.Tensor) -> tf.Tensor:
    """Brightness (added), contrast (about each channel's mean), saturation (about each pixel's max), each clipped.

    Written as blends, x * k + anchor * (1 - k): the Keras layers' arithmetic in fewer passes over the batch.
    Compiled by XLA it ran 3.4x as fast (docs/scale.md), but its rounding alone changed which poisoned
    photos the photos notebook's loop found (38 of 40 instead of 40): left uncompiled until that test is robust.
    """
    per_image = (-1, 1, 1, 1)
    images = tf.clip_by_value(images + tf.reshape(brightness, per_image), 0.0, PIXEL_MAX)
    contrast = tf.reshape(contrast, per_image)
    mean = tf.reduce_mean(images, axis=(1, 2), keepdims=True)
    images = tf.clip_by_value(images * contrast + mean * (1.0 - contrast), 0.0, PIXEL_MAX)
    saturation = tf.reshape(saturation, per_image)
    value = tf.reduce_max(images, axis=3, keepdims=True)
    return tf.clip_by_value(images * saturation + value * (1.0 - saturation), 0.0, PIXEL_MAX)
