"""Keras -> ONNX with tf2onnx, and a parity check before anything is registered."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np
import onnx
import tensorflow as tf
import tf2onnx

from training.model.inference import (
    INPUT_NAME,
    OUTPUT_EARLY,
    OUTPUT_EMBEDDING,
    OUTPUT_FEATURES,
    OUTPUT_PROBABILITIES,
    OnnxClassifier,
)
from training.model.network import all_layers

log = logging.getLogger(__name__)

ONNX_OPSET = 17  # supported by every onnxruntime we pin and by tf2onnx 1.17


class ParityError(RuntimeError):
    """The ONNX graph does not compute what the Keras model computes."""


@dataclass(frozen=True)
class ParityReport:
    n_images: int
    max_abs_diff_probabilities: float
    max_abs_diff_embedding: float
    tolerance: float
    max_abs_diff_early: float | None = None  # relative to the largest early feature (they reach thousands)
    max_abs_diff_features: float | None = None

    @property
    def ok(self) -> bool:
        return self.max_abs_diff_probabilities <= self.tolerance


def export_onnx(inference: keras.Model, image_size: int) -> onnx.ModelProto:
    """Convert with an explicit input signature (Keras 3 models have no saved spec)."""
    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_NAME)]
    _constant_normalization(inference)

    @tf.function(input_signature=signature)
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return inference(image, training=False)

    # tf2onnx's transpose optimizer trips over MobileNetV3's scalar additions (hard-swish) and logs a
    # traceback, then carries on without that optimisation: the graph stays right (the parity check runs next)
    optimizer_log = logging.getLogger("tf2onnx.optimizer")
    level = optimizer_log.level
    optimizer_log.setLevel(logging.ERROR)
    try:
        model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=ONNX_OPSET)
    finally:
        optimizer_log.setLevel(level)
    outputs = {o.name for o in model_proto.graph.output}
    if outputs - {OUTPUT_FEATURES} != {OUTPUT_PROBABILITIES, OUTPUT_EMBEDDING, OUTPUT_EARLY}:
        raise ParityError(f"exported graph has outputs {sorted(outputs)}")
    onnx.checker.check_model(model_proto)
    return model_proto


def _constant_normalization(model: keras.Model) -> None:
    """Make Normalization layers' mean/variance numpy arrays, so tracing embeds them as constants.

    EfficientNet's input Normalization keeps them as eager tensors computed once; a
    tf.function captures those as *inputs*, and the ONNX graph then asked for
    ``.../normalization/Sub/y:0`` and ``.../Sqrt/x:0`` at inference.
    """
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.Normalization) and getattr(layer, "mean", None) is not None:
            layer.mean, layer.variance = np.asarray(layer.mean), np.asarray(layer.variance)


def check_parity(
    inference: keras.Model, classifier: OnnxClassifier, images: np.ndarray, *, tolerance: float
) -> ParityReport:
    """Compare Keras and ONNX Runtime on real images; raise if they disagree."""
    expected = inference.predict(images.astype(np.float32), verbose=0, batch_size=256)
    actual = classifier.predict(images)
    early = None
    if actual.early is not None and OUTPUT_EARLY in expected:
        reference = np.asarray(expected[OUTPUT_EARLY])
        early = float(np.max(np.abs(actual.early - reference)) / max(float(np.max(np.abs(reference))), 1e-12))
    report = ParityReport(
        n_images=len(images),
        max_abs_diff_probabilities=float(np.max(np.abs(actual.probabilities - expected[OUTPUT_PROBABILITIES]))),
        max_abs_diff_embedding=float(np.max(np.abs(actual.embeddings - expected[OUTPUT_EMBEDDING]))),
        tolerance=tolerance,
        max_abs_diff_early=early,
        max_abs_diff_features=(
            float(np.max(np.abs(actual.features - expected[OUTPUT_FEATURES]), initial=0.0))
            if actual.features is not None and OUTPUT_FEATURES in expected
            else None
        ),
    )
    log.info(
        "ONNX parity on %d images: max |diff| probabilities %.3g, embedding %.3g, early features %s (relative)",
        report.n_images,
        report.max_abs_diff_probabilities,
        report.max_abs_diff_embedding,
        "-" if early is None else f"{early:.3g}",
    )
    if not report.ok:
        raise ParityError(
            f"ONNX and Keras disagree: max |diff| of probabilities {report.max_abs_diff_probabilities:.3g} "
            f"> tolerance {tolerance}"
        )
    return report
