"""The Keras CNN: small enough to train on two CPU cores in minutes."""

from __future__ import annotations

import keras
from keras import layers

from training.inference import INPUT_NAME, OUTPUT_EMBEDDING, OUTPUT_PROBABILITIES

EMBEDDING_LAYER = "embedding"


def build_classifier(num_classes: int, image_size: int, *, embedding_width: int = 128) -> keras.Model:
    """CNN from RGB pixels in [0, 255] to class logits.

    Rescaling lives inside the model so the exported ONNX graph takes raw pixels
    and serving needs no preprocessing beyond resize + RGB.
    """
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes to train a classifier, got {num_classes}")
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for filters in (32, 64, 128):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            # momentum 0.9: the running statistics settle within tens of steps, so a small
            # dataset (few steps per epoch) validates on sensible statistics from epoch one
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    embedding = layers.Dense(embedding_width, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(0.3)(embedding)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="bouncer_cnn")


def inference_model(classifier: keras.Model) -> keras.Model:
    """Same weights, two named outputs: class probabilities and the penultimate embedding."""
    probabilities = layers.Softmax(name=OUTPUT_PROBABILITIES)(classifier.output)
    embedding = classifier.get_layer(EMBEDDING_LAYER).output
    return keras.Model(
        classifier.input,
        {OUTPUT_PROBABILITIES: probabilities, OUTPUT_EMBEDDING: embedding},
        name="bouncer_inference",
    )
