"""Run the exported ONNX graph: the exact thing that is served."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import onnxruntime as ort

# Names of the ONNX graph's input and outputs (the contract between export and serving).
INPUT_NAME = "image"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_EMBEDDING = "embedding"
# Optional: per-channel spatial means, then means of squares, of the network's first activation (the
# OOD score's low-level half, training.model.ood). Versions exported before issue 25 lack it.
OUTPUT_EARLY = "early_features"
# Optional: a frozen pretrained backbone's pooled features, which no label shaped. Where a graph has
# them, the embedder, the vector index (similar, trace, expand) and the drift vectors work on them;
# the OOD score stays on the head's embedding (its energy part reads logits = embedding @ kernel).
OUTPUT_FEATURES = "features"


class PredictionAnswer(TypedDict):
    """One served prediction, as the API answers it (``Prediction`` in the OpenAPI document).

    A plain dict at run time: predict serializes it straight to JSON on its hot path, where a
    dataclass's conversion would cost per image; the type checker still sees every field.
    """

    label: str
    confidence: float
    probabilities: dict[str, float]
    model_version: str
    ood_score: float | None
    ood: bool | None
    ood_warning: str | None


PREDICT_PIXELS = 32 * 160 * 160  # pixels in one batch of an offline pass: 32 at 160 px, 256 (the most) from 56 px
PREDICT_MAX_BATCH = 256


def predict_batch(image_size: int) -> int:
    """Images in one ONNX run of an offline pass at ``image_size`` px (see :meth:`OnnxClassifier.predict`)."""
    return max(1, min(PREDICT_MAX_BATCH, PREDICT_PIXELS // (image_size * image_size)))


@dataclass(frozen=True)
class Predictions:
    probabilities: np.ndarray  # (n, K) float32
    embeddings: np.ndarray  # (n, D) float32
    early: np.ndarray | None = None  # (n, E) float32, for graphs with the early_features output
    features: np.ndarray | None = None  # (n, F) float32, for graphs with the features output

    @property
    def similarity(self) -> np.ndarray:
        """What the embedder reduces into the index's space: the backbone's features where the graph has
        them, else the embedding."""
        return self.features if self.features is not None else self.embeddings


class OnnxClassifier:
    """An ONNX Runtime session plus what is needed to read its answers."""

    def __init__(self, model: Path | bytes, class_names: list[str], image_size: int, *, threads: int = 0) -> None:
        """``threads``: ORT's intra-op threads, 0 for all cores (training, batch jobs).

        A serving worker runs one thread that does not spin: a second intra-op thread
        busy-waited 2.4 CPU-ms per predict (30% of it) for a 0.5 ms model run (issue 13).
        """
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if threads == 1:
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.class_names = list(class_names)
        self.image_size = image_size
        names = {o.name for o in self.session.get_outputs()}
        self.has_early = OUTPUT_EARLY in names
        self.has_features = OUTPUT_FEATURES in names
        self._outputs = [OUTPUT_PROBABILITIES, OUTPUT_EMBEDDING]
        self._outputs += ([OUTPUT_EARLY] if self.has_early else []) + ([OUTPUT_FEATURES] if self.has_features else [])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities only (n, K) for one batch of (n, s, s, 3) images: what ``predict`` serves."""
        self._check(images)
        return self.session.run([OUTPUT_PROBABILITIES], {INPUT_NAME: images.astype(np.float32)})[0]

    def outputs(self, images: np.ndarray) -> Predictions:
        """Probabilities, embeddings (and early features) of one batch in one run: what ``predict`` serves
        with an OOD score."""
        self._check(images)
        run = self.session.run(self._outputs, {INPUT_NAME: images.astype(np.float32)})
        found = dict(zip(self._outputs, run, strict=True))
        return Predictions(
            found[OUTPUT_PROBABILITIES], found[OUTPUT_EMBEDDING], found.get(OUTPUT_EARLY), found.get(OUTPUT_FEATURES)
        )

    def _check(self, images: np.ndarray) -> None:
        expected = (self.image_size, self.image_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"expected images of shape (n, {expected[0]}, {expected[1]}, 3), got {images.shape}")

    def predict(self, images: np.ndarray, *, batch_size: int | None = None) -> Predictions:
        """Probabilities and embeddings for uint8/float images of shape (n, s, s, 3).

        ``batch_size`` default: as many images as :data:`PREDICT_PIXELS` allow. ONNX Runtime keeps
        the activations of its largest batch: 256 photos of 160 px held 1.17 GB and ran at 153-206
        images/s, 32 held 156 MB at 284-293/s (issue 26; ``bouncer evaluate``, the training's inference).
        """
        batch_size = batch_size or predict_batch(self.image_size)
        self._check(images)
        chunks = [self.outputs(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
        if not chunks:
            dims = {o.name: int(o.shape[-1]) for o in self.session.get_outputs()}
            return Predictions(
                np.zeros((0, len(self.class_names)), np.float32),
                np.zeros((0, dims[OUTPUT_EMBEDDING]), np.float32),
                np.zeros((0, dims[OUTPUT_EARLY]), np.float32) if self.has_early else None,
                np.zeros((0, dims[OUTPUT_FEATURES]), np.float32) if self.has_features else None,
            )
        return Predictions(
            np.concatenate([c.probabilities for c in chunks]),
            np.concatenate([c.embeddings for c in chunks]),
            np.concatenate([c.early for c in chunks]) if self.has_early else None,  # type: ignore[misc]
            np.concatenate([c.features for c in chunks]) if self.has_features else None,  # type: ignore[misc]
        )
